"""Writing parsed, validated rows into a database: one transaction, all or nothing.

Rows stream from the parsers through `validate` into `Repository.upsert_preset` inside a
single write transaction. Once any row is invalid nothing more is written, the remaining
rows are still checked (so every problem is reported at once) and the transaction is
rolled back. A file whose rows are all unchanged leaves no tuning run behind, so
re-importing a file is a no-op. ``dry_run`` works on a private copy of a SQLite file, so
the file itself is never opened for writing; on a registry it runs in a transaction that
is rolled back.

Into a registry, concurrent imports queue on the registry's writer lock (see
`presetdb.store.engine`): overlapping files never collide on a unique index.
"""

from __future__ import annotations

import shutil
import sqlite3
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from presetdb.errors import ImportValidationError, UnknownKernelError, UnknownPlatformError
from presetdb.keys import canonical_key
from presetdb.offline.importers.detect import parse_file
from presetdb.offline.importers.records import ParsedFile
from presetdb.offline.importers.validate import (
    KernelChecker,
    RegistryResolver,
    Resolver,
    check_row,
    find_checker,
    problem_line,
)
from presetdb.runtime.platforms import derive_platform_name
from presetdb.store import migrate
from presetdb.store.engine import Target, parse_target
from presetdb.store.helion_cache import store_entry
from presetdb.store.repository import Repository, config_sha256

# Rows kept in a report for printing; counts are always complete.
MAX_REPORT_ROWS = 10_000


@dataclass(frozen=True)
class RowOutcome:
    file: str
    row: int  # 1-based
    where: str
    kernel: str
    platform: str
    shape_key: str
    outcome: str  # added | superseded | unchanged | invalid | skipped
    config_sha256: str | None = None


@dataclass
class ImportReport:
    dry_run: bool
    files: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(
        default_factory=lambda: {"added": 0, "superseded": 0, "unchanged": 0, "invalid": 0}
    )
    rows: list[RowOutcome] = field(default_factory=list)
    # Helion cache entries (helion_cache_entries rows) of .best_config files
    cache_entries: dict[str, int] = field(
        default_factory=lambda: {"added": 0, "replaced": 0, "unchanged": 0}
    )
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    run_ids: list[int] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def record(self, outcome: RowOutcome) -> None:
        self.counts[outcome.outcome] = self.counts.get(outcome.outcome, 0) + 1
        if len(self.rows) < MAX_REPORT_ROWS:
            self.rows.append(outcome)

    def summary(self) -> str:
        c = self.counts
        text = (
            f"{c['added']} added, {c['superseded']} superseded, {c['unchanged']} unchanged, "
            f"{c['invalid']} invalid"
        )
        e = self.cache_entries
        if any(e.values()):
            text += (
                f"; Helion cache entries: {e['added']} added, {e['replaced']} replaced, "
                f"{e['unchanged']} unchanged"
            )
        return text


class _Abort(Exception):
    """Leaves the transaction so it rolls back (dry run, or invalid rows)."""


def resolve_platform(repo: Repository, parsed: ParsedFile, override: str | None) -> str:
    """Canonical platform for a file: --platform, the file's name for it, or its device
    string through the db's aliases (vLLM SKU slugs like nvidia_h100_80gb_hbm3 too)."""
    if override is not None:
        if parsed.format == "presetdb" and parsed.platform not in (None, override):
            raise ImportValidationError(
                f"{parsed.name}: --platform {override} contradicts the file's platform {parsed.platform!r}"
            )
        return _known(repo, parsed, override)
    for candidate in (parsed.platform, parsed.platform_hint):
        if not candidate:
            continue
        if repo.find_platform(candidate) is not None:
            return candidate
        spaced = candidate.replace("_", " ")
        for name in (repo.platform_for_alias(candidate), repo.platform_for_alias(spaced)):
            if name:
                return name
        derived = derive_platform_name(spaced)
        if repo.find_platform(derived) is not None:
            return derived
    hint = parsed.platform or parsed.platform_hint or "(none)"
    return _known(repo, parsed, hint)


def _known(repo: Repository, parsed: ParsedFile, name: str) -> str:
    try:
        return repo.get_platform(name).name
    except UnknownPlatformError as exc:
        raise UnknownPlatformError(f"{parsed.name}: {exc} Or pass --platform NAME.") from None


def import_files(
    db: Path | str | Target,
    paths: Sequence[Path],
    *,
    fmt: str = "auto",
    platform: str | None = None,
    kernel: str | None = None,
    key: Mapping[str, Any] | None = None,
    dry_run: bool = False,
    resolver: Resolver | None = None,
    on_row: Callable[[RowOutcome], None] | None = None,
) -> ImportReport:
    """Import `paths` into the db at `db`. Raises ImportValidationError (nothing written)
    when a row is invalid; with `dry_run` returns the report and writes nothing."""
    report = ImportReport(dry_run=dry_run)
    resolver = resolver or RegistryResolver()
    parsed_files = [parse_file(Path(p), fmt, kernel=kernel, key=key) for p in paths]
    with _target(parse_target(db), dry_run) as target:
        store = migrate.open_store(target, "rw")
        try:
            with store.transaction() as session:
                repo = Repository(session)
                for parsed in parsed_files:
                    _import_one(repo, parsed, report, resolver, platform, kernel, on_row)
                if dry_run or report.problems:
                    raise _Abort
        except _Abort:
            pass
        finally:
            store.dispose()
    if report.problems and not dry_run:
        raise ImportValidationError(
            f"import refused: {report.counts['invalid']} invalid row(s) or file problem(s); "
            "nothing was written",
            report.problems,
        )
    return report


class _target:
    """The db itself, or for a dry run a private copy made through SQLite's backup API
    from a read-only connection (the original is never opened for writing)."""

    def __init__(self, db: Target, dry_run: bool) -> None:
        self.db, self.dry_run = db, dry_run
        self._tmp: str | None = None

    def __enter__(self) -> Target:
        if not self.dry_run or not isinstance(self.db, Path):
            return self.db  # a registry's dry run is rolled back instead
        migrate.open_store(self.db, "ro").dispose()  # the usual clear errors first
        self._tmp = tempfile.mkdtemp(prefix="presetdb-dry-run-")
        copy = Path(self._tmp) / "copy.db"
        src = sqlite3.connect(f"file:{quote(str(self.db.resolve()))}?mode=ro", uri=True)
        dst = sqlite3.connect(copy)
        try:
            src.backup(dst)
        finally:
            src.close()
            dst.close()
        return copy

    def __exit__(self, *exc: object) -> None:
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)


def _import_one(
    repo: Repository,
    parsed: ParsedFile,
    report: ImportReport,
    resolver: Resolver,
    platform_override: str | None,
    kernel_override: str | None,
    on_row: Callable[[RowOutcome], None] | None,
) -> None:
    report.files.append(str(parsed.path))
    report.warnings.extend(parsed.warnings)
    if parsed.cache_entry is not None:
        # Helion's own cache entry, under its cache key (presetdb.store.helion_cache).
        stored = store_entry(
            repo.session, parsed.cache_entry, "import-helion-cache", {"source_file": parsed.name}
        )
        report.cache_entries[stored] += 1
    if not parsed.presets:
        return
    platform = resolve_platform(repo, parsed, platform_override)
    run_id: int | None = None
    seen: dict[tuple[str, str], int] = {}  # (kernel, key) -> first row number
    kernels_ready: set[str] = set()

    def outcome(
        row_no: int, where: str, kname: str, key_text: str, what: str, sha: str | None = None
    ) -> None:
        item = RowOutcome(parsed.name, row_no, where, kname, platform, key_text, what, sha)
        report.record(item)
        if on_row is not None:
            on_row(item)

    file_checker: KernelChecker | None = None
    if parsed.format != "helion-aot":
        # One kernel per file: an unknown one is a file-level error, named once.
        name = kernel_override or parsed.kernel
        try:
            file_checker = find_checker(resolver, name, helion_hash=parsed.kernel_source_hash)
        except UnknownKernelError as exc:
            raise UnknownKernelError(f"{parsed.name}: {exc}") from None
    by_name: dict[str | None, KernelChecker | None | Exception] = {}

    for row in parsed.rows:
        row_no = row.index + 1
        if file_checker is None:
            if row.kernel not in by_name:
                try:
                    by_name[row.kernel] = _aot_checker(resolver, row.kernel, kernel_override)
                except UnknownKernelError as exc:
                    by_name[row.kernel] = exc
            found = by_name[row.kernel]
            if isinstance(found, Exception):
                report.problems.append(problem_line(parsed.name, row, "kernel", str(found)))
                outcome(row_no, row.where, str(row.kernel), "", "invalid")
                continue
            if found is None:  # another kernel's entry in a multi-kernel AOT file
                continue
            checker = found
        else:
            checker = file_checker
        if checker.name not in kernels_ready:
            problem = _prepare_kernel(repo, parsed, checker)
            if problem:
                report.problems.append(problem)
            kernels_ready.add(checker.name)
        source_hash = _source_hash(parsed, checker, report)
        checked = check_row(row, checker, source_hash=source_hash)
        key_text = canonical_key(checked.key) if checked.key is not None else ""
        if checked.key is not None:
            first = seen.setdefault((checker.name, key_text), row_no)
            if first != row_no:
                checked.add("key", f"duplicate of row {first} (one config per key and file)")
        if checked.problems or checked.item is None:
            report.problems.extend(problem_line(parsed.name, row, f, r) for f, r in checked.problems)
            outcome(row_no, row.where, checker.name, key_text, "invalid")
            continue
        sha = config_sha256(checked.item.config)
        if report.problems:
            # Already doomed: keep checking, stop writing.
            outcome(row_no, row.where, checker.name, key_text, "skipped", sha)
            continue
        current = repo.find_preset(checker.name, platform, checked.item.shape_key)
        if current is not None and current.config_sha256 == sha:
            outcome(row_no, row.where, checker.name, key_text, "unchanged", sha)
            continue
        if run_id is None:
            run = repo.add_run(
                parsed.source, source_file=parsed.name, source_sha256=parsed.sha256, **parsed.provenance
            )
            run_id = run.id
            report.run_ids.append(run_id)
        result = repo.upsert_preset(checker.name, platform, run_id, checked.item)
        outcome(row_no, row.where, checker.name, key_text, result.outcome, sha)


def _aot_checker(resolver: Resolver, row_kernel: str | None, override: str | None) -> KernelChecker | None:
    """The kernel of an AOT entry (Helion names it after the function); with --kernel,
    entries of other kernels are left out (None)."""
    if override is not None:
        checker = find_checker(resolver, override)
        return checker if row_kernel is None or row_kernel in checker.aliases() else None
    return find_checker(resolver, row_kernel)


def _prepare_kernel(repo: Repository, parsed: ParsedFile, checker: KernelChecker) -> str | None:
    """Create the kernel row (or check it); a results file's key schema must agree."""
    schema = checker.key_spec.to_schema()
    if parsed.key_schema is not None:

        def fields(s: Mapping[str, Any]) -> list[tuple[str, str]]:
            return [(f.get("name"), f.get("policy")) for f in s.get("fields", [])]

        if fields(parsed.key_schema) != fields(schema):
            return (
                f"{parsed.name}: kernel.key_schema {fields(parsed.key_schema)} differs from the "
                f"registered kernel {checker.name!r} {fields(schema)}"
            )
    repo.ensure_kernel(checker.name, schema)
    return None


def _source_hash(parsed: ParsedFile, checker: KernelChecker, report: ImportReport) -> str | None:
    """The kernel source hash to store: the file's, in presetdb's scheme when the file
    used Helion's (cache files), with a warning when it is not the current source."""
    file_hash = parsed.kernel_source_hash
    if file_hash is None:
        return None
    current = checker.source_hash()
    if parsed.format == "helion-cache" and file_hash == checker.helion_source_hash():
        return current
    if file_hash != current:
        warning = (
            f"{parsed.name}: tuned for a different source of kernel {checker.name!r} "
            f"(file {file_hash[:12]}, registered {str(current)[:12]}); configs were checked "
            "against the current ConfigSpec"
        )
        if warning not in report.warnings:
            report.warnings.append(warning)
    return file_hash
