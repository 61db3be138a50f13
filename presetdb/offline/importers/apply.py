"""Writing parsed, validated rows into a database: one transaction, all or nothing.

Rows stream from the parsers through `validate` into `Repository.upsert_preset` inside a
single write transaction (every file of a vLLM tree included). Once any row is invalid
nothing more is written, the remaining rows are still checked (so every problem is
reported at once) and the transaction is rolled back. A file whose rows are all
unchanged leaves no tuning run behind, so re-importing a file is a no-op. ``dry_run``
works on a private copy of a SQLite file, so the file itself is never opened for
writing; on a registry it runs in a transaction that is rolled back.

Into a registry, concurrent imports queue on the registry's writer lock (see
`presetdb.store.engine`): overlapping files never collide on a unique index.

A vLLM file of a kernel no registered module provides is imported *unverified*
(see `unverified`); vLLM rows keep their file layout (position, key and config field
order) so `export` can write the file back byte for byte.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from presetdb._text import clip
from presetdb.errors import ImportValidationError, UnknownKernelError, UnknownPlatformError
from presetdb.keys import KeySpec, canonical_key
from presetdb.offline.importers import vllm
from presetdb.offline.importers.detect import parse_paths
from presetdb.offline.importers.records import ParsedFile, Row
from presetdb.offline.importers.unverified import UnverifiedChecker
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
from presetdb.store.engine import Target, connect_sqlite, parse_target
from presetdb.store.helion_cache import store_entry
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
class FileSummary:
    """What one kernel x platform part of a file did."""

    file: str  # the file's path in its repository (per-kernel vLLM files: and the member)
    kernel: str
    platform: str
    platform_from: str  # how the platform was found, e.g. "file name nvidia_h100.json"
    verified: bool  # False: the kernel is not registered; rows stored unverified
    layout: str | None = None  # vLLM layout: current | string-keyed | per-kernel
    counts: dict[str, int] = field(
        default_factory=lambda: {"added": 0, "superseded": 0, "unchanged": 0, "invalid": 0}
    )

    def line(self) -> str:
        c = self.counts
        state = "" if self.verified else ", UNVERIFIED (kernel not registered; `presetdb verify` checks it)"
        layout = f", {self.layout} layout" if self.layout and self.layout != vllm.LAYOUT_CURRENT else ""
        return (
            f"{self.file}: {self.kernel} on {self.platform} (platform from {self.platform_from}"
            f"{layout}{state}): {c['added']} added, {c['superseded']} superseded, "
            f"{c['unchanged']} unchanged, {c['invalid']} invalid"
        )


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
    file_problems: int = 0  # problems of a whole file (header, provenance), not of a row
    file_summaries: list[FileSummary] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def add_file_problem(self, problem: str) -> None:
        self.file_problems += 1
        self.problems.append(problem)

    def record(self, outcome: RowOutcome) -> None:
        self.counts[outcome.outcome] = self.counts.get(outcome.outcome, 0) + 1
        if self.file_summaries:
            current = self.file_summaries[-1].counts
            current[outcome.outcome] = current.get(outcome.outcome, 0) + 1
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
    return platform_and_origin(repo, parsed, override)[0]


def platform_and_origin(repo: Repository, parsed: ParsedFile, override: str | None) -> tuple[str, str]:
    """(canonical platform, how it was found). A name is taken from a file only when it
    is a known platform or one of its device-string aliases; anything else needs
    --platform (the error lists the known ones)."""
    if override is not None:
        if parsed.format == "presetdb" and parsed.platform not in (None, override):
            raise ImportValidationError(
                f"{parsed.name}: --platform {override} contradicts the file's platform {parsed.platform!r}"
            )
        return _known(repo, parsed, override), "--platform"
    where = _origin_word(parsed)
    for candidate in (parsed.platform, parsed.platform_hint):
        if not candidate:
            continue
        if repo.find_platform(candidate) is not None:
            return candidate, f"{where} {candidate!r}"
        spaced = candidate.replace("_", " ")
        for name in (repo.platform_for_alias(candidate), repo.platform_for_alias(spaced)):
            if name:
                return name, f"{where} {candidate!r}, a device alias of {name}"
        derived = derive_platform_name(spaced)
        if repo.find_platform(derived) is not None:
            return derived, f"{where} {candidate!r}, read as {derived}"
    hint = parsed.platform or parsed.platform_hint or "(none)"
    return _known(repo, parsed, hint), where


def _origin_word(parsed: ParsedFile) -> str:
    if parsed.format != "vllm":
        return "the file"
    return "member" if parsed.member is not None else "file name"


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
    key_policies: Mapping[str, str] | None = None,
    source_rev: str | None = None,
    on_checked: Callable[[int], None] | None = None,
) -> ImportReport:
    """Import `paths` (files, or vLLM configs/ trees) into the db at `db`. Raises
    ImportValidationError (nothing written) when a row is invalid; with `dry_run` returns
    the report and writes nothing. `key_policies` (field -> policy) override the
    inferred key policies of unregistered kernels; `source_rev` is the source
    repository's commit, kept in tuning_runs; `on_checked(n)` is called as rows are
    validated (a progress bar)."""
    report = ImportReport(dry_run=dry_run)
    resolver = resolver or RegistryResolver()
    parsed_files = parse_paths([Path(p) for p in paths], fmt, kernel=kernel, key=key)
    _refuse_ambiguous_platform(parsed_files, platform)
    options = _Options(platform, kernel, dict(key_policies or {}), source_rev)
    with _target(parse_target(db), dry_run) as target:
        store = migrate.open_store(target, "rw")
        try:
            with store.transaction() as session:
                repo = Repository(session)
                for parsed in parsed_files:
                    _import_one(repo, parsed, report, resolver, options, on_row, on_checked)
                _check_key_policies_used(options, report)
                if dry_run or report.problems:
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


@dataclass
class _Options:
    platform: str | None
    kernel: str | None
    key_policies: dict[str, str]
    source_rev: str | None
    policies_used: set[str] = field(default_factory=set)


def _refuse_ambiguous_platform(parsed_files: Sequence[ParsedFile], platform: str | None) -> None:
    """--platform names one platform: refused when the files name several (a tree)."""
    if platform is None:
        return
    named = {p.platform for p in parsed_files if p.format == "vllm"}
    if len(named) > 1:
        raise ImportValidationError(
            f"--platform {platform}: the files name {len(named)} platforms ({', '.join(sorted(map(str, named)))}); "
            "import a tree without --platform (each file's name says its platform)"
        )


def _check_key_policies_used(options: _Options, report: ImportReport) -> None:
    unused = sorted(set(options.key_policies) - options.policies_used)
    if unused:
        report.problems.append(
            f"--key-policy {', '.join(unused)}: no unregistered kernel imported here has such "
            "a key field (registered kernels keep their own key spec)"
        )


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


def _import_one(
    repo: Repository,
    parsed: ParsedFile,
    report: ImportReport,
    resolver: Resolver,
    options: _Options,
    on_row: Callable[[RowOutcome], None] | None,
    on_checked: Callable[[int], None] | None = None,
) -> None:
    report.files.append(str(parsed.path))
    report.warnings.extend(clip(w, 1_000) for w in parsed.warnings)
    for problem in provenance_problems(parsed.name, parsed.provenance):
        report.add_file_problem(problem)
    if parsed.cache_entry is not None:
        # Helion's own cache entry, under its cache key (presetdb.store.helion_cache).
        stored = store_entry(
            repo.session, parsed.cache_entry, "import-helion-cache", {"source_file": parsed.name}
        )
        report.cache_entries[stored] += 1
    if not parsed.presets:
        return
    platform, platform_from = platform_and_origin(repo, parsed, options.platform)
    source_path = vllm.repository_path(parsed.path) if parsed.format == "vllm" else None
    run_ids: dict[str, int] = {}  # a row's provenance (canonical JSON) -> its tuning run
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
    rows: Iterable[Row] = parsed.rows
    if parsed.format != "helion-aot":
        # One kernel per file: an unknown one is a file-level error, named once, except
        # in vLLM files, whose unknown kernels are imported unverified.
        name = options.kernel or parsed.kernel
        try:
            file_checker = find_checker(resolver, name, helion_hash=parsed.kernel_source_hash)
        except UnknownKernelError as exc:
            if parsed.format != "vllm" or not name:
                raise UnknownKernelError(f"{parsed.name}: {exc}") from None
            rows = list(parsed.rows)  # vLLM files are small; the key schema needs a key first
            file_checker = _unverified_checker(repo, name, rows, source_path or parsed.name, options)
    label = source_path or parsed.name
    if parsed.member is not None:
        label += f" [{parsed.member}]"
    if file_checker is not None:
        report.file_summaries.append(
            FileSummary(
                label, file_checker.name, platform, platform_from,
                not isinstance(file_checker, UnverifiedChecker), parsed.layout,
            )
        )
    by_name: dict[str | None, KernelChecker | None | Exception] = {}
    count = 0

    for row in rows:
        count += 1
        if on_checked is not None:
            on_checked(1)
        row_no = row.index + 1
        if file_checker is None:
            if row.kernel not in by_name:
                try:
                    by_name[row.kernel] = _aot_checker(resolver, row.kernel, options.kernel)
                except UnknownKernelError as exc:
                    by_name[row.kernel] = exc
            found = by_name[row.kernel]
            if isinstance(found, Exception):
                report.problems.append(problem_line(parsed.name, row, "kernel", str(found)))
                outcome(row_no, row.where, clip(row.kernel), "", "invalid")
                continue
            if found is None:  # another kernel's entry in a multi-kernel AOT file
                continue
            checker = found
        else:
            checker = file_checker
        if checker.name not in kernels_ready:
            problem = _prepare_kernel(repo, parsed, checker)
            if problem:
                report.add_file_problem(problem)
            kernels_ready.add(checker.name)
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
            outcome(row_no, row.where, checker.name, key_text, "invalid")
            continue
        item = checked.item
        if parsed.format == "vllm":
            item = _with_layout(item, row, verified=not isinstance(checker, UnverifiedChecker))
        sha = config_sha256(item.config)
        if report.problems:
            # Already doomed: keep checking, stop writing.
            outcome(row_no, row.where, checker.name, key_text, "skipped", sha)
            continue
        current = repo.find_preset(checker.name, platform, item.shape_key)
        if current is not None and (
            current.config_sha256 == sha
            or same_config(current.config, item.config)
            # The file holds exactly the stored config; this machine's ConfigSpec would only
            # respell it (e.g. CPU raises a GPU block size to its own minimum).
            or same_config(current.config, row.config)
        ):
            # A vLLM row keeps its file layout up to date, and any row may become verified;
            # other rows (tuned, with provenance) are left exactly as they are.
            if current.config_sha256 == sha and (
                current.source == "import-vllm" or (item.verified and not current.verified)
            ):
                repo.upsert_preset(checker.name, platform, current.run_id, item)
            outcome(row_no, row.where, checker.name, key_text, "unchanged", sha)
            continue
        # Rows made on other machines (a tuning farm) carry their own provenance: one run each.
        provenance = {**parsed.provenance, **(row.provenance or {})}
        run_key = json.dumps(provenance, sort_keys=True, default=str)
        run_id = run_ids.get(run_key)
        if run_id is None:
            run = repo.add_run(
                parsed.source,
                source_file=parsed.name,
                source_sha256=parsed.sha256,
                source_path=source_path,
                source_rev=options.source_rev,
                **provenance,
            )
            run_id = run_ids[run_key] = run.id
            report.run_ids.append(run_id)
        result = repo.upsert_preset(checker.name, platform, run_id, item)
        outcome(row_no, row.where, checker.name, key_text, result.outcome, sha)
    if count == 0:
        report.add_file_problem(
            f"{parsed.name}: holds no entries; nothing to import (a tune run whose every shape "
            "failed writes such a file: see its output)"
        )


def same_config(stored: Any, new: Any) -> bool:
    """One config, whatever its spelling: an option set to null is the option left out
    (Helion's normalization drops `"maxnreg": null`, which exports write back), so
    re-importing an export, or a vLLM file of the same configs, changes nothing and never
    replaces a provenanced row by one without provenance."""
    if not isinstance(stored, Mapping) or not isinstance(new, Mapping):
        return False

    def meaning(config: Mapping[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in config.items() if v is not None}

    return meaning(stored) == meaning(new)


def _with_layout(item: PresetInput, row: Row, *, verified: bool) -> PresetInput:
    """The row's place in its vLLM file and the file's field order: the stored config
    (normalized when its kernel is registered) with the file's fields first, in order."""
    config = dict(item.config)
    written = row.config if isinstance(row.config, Mapping) else {}
    ordered = {k: config[k] for k in written if k in config}
    ordered.update((k, v) for k, v in config.items() if k not in ordered)
    key = row.key if isinstance(row.key, Mapping) else item.shape_key
    return replace(
        item,
        verified=verified,
        source_position=row.index,
        source_key=vllm.compact(key),
        source_config=vllm.compact(ordered),
    )


def _unverified_checker(
    repo: Repository, name: str, rows: list[Row], source: str, options: _Options
) -> UnverifiedChecker:
    """The checker of a kernel no module registers: the stored kernel's key spec when the
    db has it, else one inferred from the file's first non-default key."""
    stored = repo.find_kernel(name)
    spec = KeySpec.from_schema(stored.key_schema) if stored is not None else None
    checker = UnverifiedChecker(name, spec, options.key_policies)
    if spec is None:
        first = next((r.key for r in rows if isinstance(r.key, Mapping) and r.key), None)
        if first is not None:
            checker.learn(first, source)
    names = set(checker.key_spec.names)
    for field_name, policy in options.key_policies.items():
        if field_name not in names:
            continue
        options.policies_used.add(field_name)
        have = next(f.policy for f in checker.key_spec.fields if f.name == field_name)
        if have != policy:
            raise ImportValidationError(
                f"{source}: --key-policy {field_name}={policy}: kernel {name!r} is already stored "
                f"with {field_name}={have}; a changed key spec needs a new kernel name"
            )
    return checker


def _aot_checker(resolver: Resolver, row_kernel: str | None, override: str | None) -> KernelChecker | None:
    """The kernel of an AOT entry (Helion names it after the function); with --kernel,
    entries of other kernels are left out (None)."""
    if override is not None:
        checker = find_checker(resolver, override)
        return checker if row_kernel is None or row_kernel in checker.aliases() else None
    return find_checker(resolver, row_kernel)


def _prepare_kernel(repo: Repository, parsed: ParsedFile, checker: KernelChecker) -> str | None:
    """Create the kernel row (or check it); a results file's key schema must agree. A
    kernel first stored unverified (its schema inferred from a file) adopts the registered
    kernel's key spec when the field names agree."""
    if isinstance(checker, UnverifiedChecker):
        repo.ensure_kernel(checker.name, checker.schema())
        return None
    schema = checker.key_spec.to_schema()
    stored = repo.find_kernel(checker.name)
    if stored is not None and "inferred_from" in stored.key_schema:
        if sorted(f["name"] for f in stored.key_schema.get("fields", [])) != sorted(checker.key_spec.names):
            return (
                f"{parsed.name}: kernel {checker.name!r} was stored unverified with key fields "
                f"{[f['name'] for f in stored.key_schema.get('fields', [])]}; the registered kernel "
                f"has {list(checker.key_spec.names)}"
            )
        repo.replace_key_schema(checker.name, schema)
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
