"""Writing parsed, validated rows into a database: validate first, then one short
write transaction, all or nothing.

Phase 1 reads only: rows stream from the parsers through `validate` (the slow part:
Helion's ConfigSpec per row) and every problem is collected; the db is read through a
read-only connection, so kernel processes writing their ledger are never locked out.
Any problem ends the import there: nothing was written. Phase 2 writes the checked rows
with `Repository.upsert_preset` in a single transaction. A file whose rows are all
unchanged leaves no tuning run behind, so re-importing a file is a no-op. ``dry_run``
works on a private copy of the database, so the file itself is never opened for writing.
"""

from __future__ import annotations

import shutil
import sqlite3
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from presetdb._text import clip
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
    provenance_problems,
    specialization_problem,
)
from presetdb.runtime.platforms import derive_platform_name
from presetdb.store import migrate
from presetdb.store.engine import connect_sqlite
from presetdb.store.repository import PresetInput, Repository, config_sha256

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
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    run_ids: list[int] = field(default_factory=list)
    file_problems: int = 0  # problems of a whole file (header, provenance), not of a row

    @property
    def ok(self) -> bool:
        return not self.problems

    def add_file_problem(self, problem: str) -> None:
        self.file_problems += 1
        self.problems.append(problem)

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
        if c.get("skipped"):
            text += f", {c['skipped']} valid but not written"
        if self.file_problems:
            text += f", {self.file_problems} file problem(s)"
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
    db: Path,
    paths: Sequence[Path],
    *,
    fmt: str = "auto",
    platform: str | None = None,
    kernel: str | None = None,
    key: Mapping[str, Any] | None = None,
    dry_run: bool = False,
    resolver: Resolver | None = None,
    on_row: Callable[[RowOutcome], None] | None = None,
    on_checked: Callable[[int], None] | None = None,
) -> ImportReport:
    """Import `paths` into the db at `db`. Raises ImportValidationError (nothing written)
    when a row is invalid; with `dry_run` returns the report and writes nothing.
    `on_checked(n)` is called as rows are validated (a progress bar)."""
    report = ImportReport(dry_run=dry_run)
    resolver = resolver or RegistryResolver()
    parsed_files = [parse_file(Path(p), fmt, kernel=kernel, key=key) for p in paths]
    with _target(Path(db), dry_run) as target:
        reader = migrate.open_store(target, "ro")
        try:
            with reader.read() as session:
                checked = [
                    _check_file(Repository(session), parsed, report, resolver, platform, kernel, on_checked)
                    for parsed in parsed_files
                ]
        finally:
            reader.dispose()
        if report.problems and not dry_run:
            for pending in checked:
                for row in pending.rows:
                    _outcome(report, pending, row, "skipped", on_row)
        else:
            store = migrate.open_store(target, "rw")
            try:
                with store.transaction() as session:
                    repo = Repository(session)
                    for pending in checked:
                        _write_file(repo, pending, report, on_row)
                    if dry_run:  # the copy shows what the valid rows would do
                        raise _Abort
            except _Abort:
                pass
            finally:
                store.dispose()
    if report.problems and not dry_run:
        raise ImportValidationError(
            f"import refused: {report.counts['invalid']} invalid row(s) and "
            f"{report.file_problems} file problem(s); nothing was written",
            report.problems,
        )
    return report


class _target:
    """The db itself, or for a dry run a private copy made through SQLite's backup API
    from a read-only connection (the original is never opened for writing)."""

    def __init__(self, db: Path, dry_run: bool) -> None:
        self.db, self.dry_run = db, dry_run
        self._tmp: str | None = None

    def __enter__(self) -> Path:
        if not self.dry_run:
            return self.db
        migrate.open_store(self.db, "ro").dispose()  # the usual clear errors first
        self._tmp = tempfile.mkdtemp(prefix="presetdb-dry-run-")
        copy = Path(self._tmp) / "copy.db"
        src = connect_sqlite(self.db, "ro")
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


@dataclass(frozen=True)
class _CheckedRow:
    row_no: int
    where: str
    checker: KernelChecker
    key_text: str
    item: PresetInput
    sha: str
    raw_config: Mapping[str, Any]  # as the file holds it, before Helion's normalization


@dataclass
class _CheckedFile:
    parsed: ParsedFile
    platform: str
    kernels: dict[str, KernelChecker] = field(default_factory=dict)
    rows: list[_CheckedRow] = field(default_factory=list)


def _outcome(
    report: ImportReport, pending: _CheckedFile, row: _CheckedRow, what: str,
    on_row: Callable[[RowOutcome], None] | None,
) -> None:
    item = RowOutcome(
        pending.parsed.name, row.row_no, row.where, row.checker.name, pending.platform, row.key_text, what, row.sha
    )
    report.record(item)
    if on_row is not None:
        on_row(item)


def _check_file(
    repo: Repository,
    parsed: ParsedFile,
    report: ImportReport,
    resolver: Resolver,
    platform_override: str | None,
    kernel_override: str | None,
    on_checked: Callable[[int], None] | None,
) -> _CheckedFile:
    """Phase 1 for one file: every row validated, nothing written."""
    report.files.append(str(parsed.path))
    report.warnings.extend(clip(w, 1_000) for w in parsed.warnings)
    platform = resolve_platform(repo, parsed, platform_override)
    pending = _CheckedFile(parsed, platform)
    for problem in provenance_problems(parsed.name, parsed.provenance):
        report.add_file_problem(problem)
    seen: dict[tuple[str, str], int] = {}  # (kernel, key) -> first row number
    file_checker: KernelChecker | None = None
    if parsed.format != "helion-aot":
        # One kernel per file: an unknown one is a file-level error, named once.
        name = kernel_override or parsed.kernel
        try:
            file_checker = find_checker(resolver, name, helion_hash=parsed.kernel_source_hash)
        except UnknownKernelError as exc:
            raise UnknownKernelError(f"{parsed.name}: {exc}") from None
    by_name: dict[str | None, KernelChecker | None | Exception] = {}
    count = 0

    def invalid(row_no: int, where: str, kname: str, key_text: str) -> None:
        report.record(RowOutcome(parsed.name, row_no, where, kname, platform, key_text, "invalid"))

    for row in parsed.rows:
        count += 1
        if on_checked is not None:
            on_checked(1)
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
                invalid(row_no, row.where, clip(row.kernel), "")
                continue
            if found is None:  # another kernel's entry in a multi-kernel AOT file
                continue
            checker = found
        else:
            checker = file_checker
        if checker.name not in pending.kernels:
            schema_problem = _kernel_schema_problem(parsed, checker)
            if schema_problem:
                report.add_file_problem(schema_problem)
            pending.kernels[checker.name] = checker
        source_hash = _source_hash(parsed, checker, report)
        checked = check_row(row, checker, source_hash=source_hash)
        if parsed.specialization_key and checked.key is not None:
            mismatch = specialization_problem(parsed.specialization_key, checker, checked.key)
            if mismatch:
                checked.add("key", mismatch)
        key_text = canonical_key(checked.key) if checked.key is not None else ""
        if checked.key is not None:
            first = seen.setdefault((checker.name, key_text), row_no)
            if first != row_no:
                checked.add("key", f"duplicate of row {first} (one config per key and file)")
        if checked.problems or checked.item is None:
            report.problems.extend(problem_line(parsed.name, row, f, r) for f, r in checked.problems)
            invalid(row_no, row.where, checker.name, key_text)
            continue
        sha = config_sha256(checked.item.config)
        pending.rows.append(_CheckedRow(row_no, row.where, checker, key_text, checked.item, sha, row.config))
    if count == 0:
        report.add_file_problem(
            f"{parsed.name}: holds no entries; nothing to import (a tune run whose every shape "
            "failed writes such a file: see its output)"
        )
    return pending


def _write_file(
    repo: Repository, pending: _CheckedFile, report: ImportReport,
    on_row: Callable[[RowOutcome], None] | None,
) -> None:
    """Phase 2 for one file, inside the one write transaction: only fast db work."""
    parsed = pending.parsed
    for checker in pending.kernels.values():
        repo.ensure_kernel(checker.name, checker.key_spec.to_schema())
    run_id: int | None = None
    for row in pending.rows:
        current = repo.find_preset(row.checker.name, pending.platform, row.item.shape_key)
        if current is not None and (
            current.config_sha256 == row.sha
            or same_config(current.config, row.item.config)
            # The file holds exactly the stored config; this machine's ConfigSpec would only
            # respell it (e.g. CPU raises a GPU block size to its own minimum).
            or same_config(current.config, row.raw_config)
        ):
            _outcome(report, pending, row, "unchanged", on_row)
            continue
        if run_id is None:
            run = repo.add_run(
                parsed.source, source_file=parsed.name, source_sha256=parsed.sha256, **parsed.provenance
            )
            run_id = run.id
            report.run_ids.append(run_id)
        result = repo.upsert_preset(row.checker.name, pending.platform, run_id, row.item)
        _outcome(report, pending, row, result.outcome, on_row)


def same_config(stored: Any, new: Mapping[str, Any]) -> bool:
    """One config, whatever its spelling: an option set to null is the option left out
    (Helion's normalization drops `"maxnreg": null`, which exports write back), so
    re-importing an export, or a vLLM file of the same configs, changes nothing and never
    replaces a provenanced row by one without provenance."""
    if not isinstance(stored, Mapping):
        return False

    def meaning(config: Mapping[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in config.items() if v is not None}

    return meaning(stored) == meaning(new)


def _aot_checker(resolver: Resolver, row_kernel: str | None, override: str | None) -> KernelChecker | None:
    """The kernel of an AOT entry (Helion names it after the function); with --kernel,
    entries of other kernels are left out (None)."""
    if override is not None:
        checker = find_checker(resolver, override)
        return checker if row_kernel is None or row_kernel in checker.aliases() else None
    return find_checker(resolver, row_kernel)


def _kernel_schema_problem(parsed: ParsedFile, checker: KernelChecker) -> str | None:
    """A results file's key schema must agree with the registered kernel's."""
    schema = checker.key_spec.to_schema()
    if parsed.key_schema is not None:

        def fields(s: Mapping[str, Any]) -> list[tuple[str, str]]:
            return [(f.get("name"), f.get("policy")) for f in s.get("fields", [])]

        if fields(parsed.key_schema) != fields(schema):
            return (
                f"{parsed.name}: kernel.key_schema {fields(parsed.key_schema)} differs from the "
                f"registered kernel {checker.name!r} {fields(schema)}"
            )
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
