"""Writing parsed, validated rows into a database: validate first, then one short
write transaction, all or nothing.

Phase 1 only reads. Rows stream from the parsers through `validate` (the slow part:
Helion's ConfigSpec per row); every problem is collected, and the db is read in short
read-only transactions (platforms, kernels), never across the validation, so kernel
processes writing their miss ledger to the same file (or a registry's other writers)
are never locked out. Kernels, key schemas and tuning runs to create are only planned.
Any problem ends the import there: nothing was written.

Phase 2 does only fast db work in a single write transaction (every file of a vLLM
tree included): kernel rows, one tuning run per distinct row provenance, and
`Repository.upsert_preset` per row. A file whose rows are all unchanged leaves no tuning
run behind, so re-importing a file is a no-op. ``dry_run`` works on a private copy of a
SQLite file, so the file itself is never opened for writing; on a registry phase 2 runs
in a transaction that is rolled back. A dry run writes the valid rows of files without
file problems, so its report says what each would do.

Into a registry, phase 2 queues on the registry's writer lock (see
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
from presetdb.errors import ImportValidationError, KeySpecError, UnknownKernelError, UnknownPlatformError
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
from presetdb.runtime.platforms import derive_platform_name, family_names
from presetdb.store import migrate
from presetdb.store.engine import Store, Target, connect_sqlite, parse_target
from presetdb.store.helion_cache import store_entry
from presetdb.store.records import PresetInput, config_sha256
from presetdb.store.repository import Repository

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

    def record(self, outcome: RowOutcome, summary: FileSummary | None = None) -> None:
        """Count `outcome`, also in its file's `summary` (None: a multi-kernel AOT file)."""
        self.counts[outcome.outcome] = self.counts.get(outcome.outcome, 0) + 1
        if summary is not None:
            summary.counts[outcome.outcome] = summary.counts.get(outcome.outcome, 0) + 1
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
        families = family_names(spaced)
        if len(families) > 1:  # e.g. nvidia_b200_h100.json: refuse to guess
            raise ImportValidationError(
                f"{parsed.name}: the platform is ambiguous: {where} {candidate!r} names "
                f"{' and '.join(families)}; pass --platform NAME"
            )
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
        reader = migrate.open_store(target, "ro")
        try:
            kernels = _Kernels(reader)
            checked = [
                _check_file(reader, kernels, parsed, report, resolver, options, on_checked)
                for parsed in parsed_files
            ]
        finally:
            reader.dispose()  # no connection of phase 1 stays open while writing
        _check_key_policies_used(options, report)
        if report.problems and not dry_run:
            # Refused: the file is never opened for writing; the valid rows are "skipped".
            for pending in checked:
                _record_unwritten(pending, report, on_row)
        else:
            writer = migrate.open_store(target, "rw")
            try:
                _write_all(writer, checked, report, options, on_row, dry_run=dry_run)
            finally:
                writer.dispose()
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


# ---------------------------------------------------------------- phase 1: check


@dataclass(frozen=True)
class _CheckedRow:
    """A valid row, ready to write: everything phase 2 needs, nothing it must compute."""

    row_no: int
    where: str
    kernel: str
    key_text: str
    item: PresetInput
    sha: str
    raw_config: Any  # as the file holds it, before Helion's normalization
    provenance: Mapping[str, Any] | None  # the row's own run fields


@dataclass
class _CheckedFile:
    """One parsed file after phase 1: its rows in file order (valid ones to write,
    invalid ones already decided) and the kernel rows to create or adopt first."""

    parsed: ParsedFile
    platform: str
    source_path: str | None
    summary: FileSummary | None = None
    kernel_writes: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)  # (op, kernel, schema)
    entries: list[_CheckedRow | RowOutcome] = field(default_factory=list)
    has_file_problem: bool = False
    cache_only: bool = False  # a Helion .best_config imported as a cache entry only


class _Kernels:
    """Kernel key schemas as phase 2 will leave them: the db's (each read once, in its
    own short read-only transaction) with the creations and adoptions this import plans.
    Phase 1 reads only; a kernel a file creates is seen by the next file all the same."""

    def __init__(self, reader: Store) -> None:
        self._reader = reader
        self._schemas: dict[str, dict[str, Any] | None] = {}

    def schema(self, name: str) -> dict[str, Any] | None:
        if name not in self._schemas:
            with self._reader.read() as session:
                found = Repository(session).find_kernel(name)
            self._schemas[name] = None if found is None else dict(found.key_schema)
        return self._schemas[name]

    def plan(self, name: str, schema: dict[str, Any]) -> None:
        self._schemas[name] = schema


def _check_file(
    reader: Store,
    kernels: _Kernels,
    parsed: ParsedFile,
    report: ImportReport,
    resolver: Resolver,
    options: _Options,
    on_checked: Callable[[int], None] | None,
) -> _CheckedFile:
    """Phase 1 for one file: every row validated, every problem reported, nothing
    written. The db is read in short read-only transactions only, never across the
    rows' validation (a long read would keep a rollback-journal file's writers out)."""
    report.files.append(str(parsed.path))
    report.warnings.extend(clip(w, 1_000) for w in parsed.warnings)
    file_problems_before = report.file_problems
    for problem in provenance_problems(parsed.name, parsed.provenance):
        report.add_file_problem(problem)
    if not parsed.presets:  # a Helion cache entry only: stored in phase 2
        return _CheckedFile(parsed, "", None, cache_only=True)
    with reader.read() as session:
        platform, platform_from = platform_and_origin(Repository(session), parsed, options.platform)
    source_path = vllm.repository_path(parsed.path) if parsed.format == "vllm" else None
    pending = _CheckedFile(parsed, platform, source_path)
    seen: dict[tuple[str, str], int] = {}  # (kernel, key) -> first row number
    kernels_ready: set[str] = set()

    def invalid(row_no: int, where: str, kname: str, key_text: str) -> None:
        pending.entries.append(RowOutcome(parsed.name, row_no, where, kname, platform, key_text, "invalid"))

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
            file_checker = _unverified_checker(kernels, name, rows, source_path or parsed.name, options)
    label = source_path or parsed.name
    if parsed.member is not None:
        label += f" [{parsed.member}]"
    if file_checker is not None:
        pending.summary = FileSummary(
            label, file_checker.name, platform, platform_from,
            not isinstance(file_checker, UnverifiedChecker), parsed.layout,
        )
        report.file_summaries.append(pending.summary)
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
                invalid(row_no, row.where, clip(row.kernel), "")
                continue
            if found is None:  # another kernel's entry in a multi-kernel AOT file
                continue
            checker = found
        else:
            checker = file_checker
        if checker.name not in kernels_ready:
            kernel_problem = _prepare_kernel(kernels, pending, parsed, checker)
            if kernel_problem:
                report.add_file_problem(kernel_problem)
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
            invalid(row_no, row.where, checker.name, key_text)
            continue
        item = checked.item
        if parsed.format == "vllm":
            item = _with_layout(item, row, verified=not isinstance(checker, UnverifiedChecker))
        pending.entries.append(
            _CheckedRow(
                row_no, row.where, checker.name, key_text, item, config_sha256(item.config),
                row.config, row.provenance,
            )
        )
    if count == 0:
        report.add_file_problem(
            f"{parsed.name}: holds no entries; nothing to import (a tune run whose every shape "
            "failed writes such a file: see its output)"
        )
    # A file problem (provenance, key schema) keeps the whole file out of a dry run's
    # writes too; a row's problem only that row.
    pending.has_file_problem = report.file_problems > file_problems_before
    return pending


def _unverified_checker(
    kernels: _Kernels, name: str, rows: list[Row], source: str, options: _Options
) -> UnverifiedChecker:
    """The checker of a kernel no module registers: the stored kernel's key spec when the
    db has it (or an earlier file of this import creates it), else one inferred from the
    file's first non-default key."""
    stored = kernels.schema(name)
    spec = KeySpec.from_schema(stored) if stored is not None else None
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


def _prepare_kernel(
    kernels: _Kernels, pending: _CheckedFile, parsed: ParsedFile, checker: KernelChecker
) -> str | None:
    """Plan the kernel row (created or checked in phase 2); a results file's key schema
    must agree. A kernel first stored unverified (its schema inferred from a file) adopts
    the registered kernel's key spec when the field names agree. Returns a file problem."""
    stored = kernels.schema(checker.name)
    if isinstance(checker, UnverifiedChecker):
        schema = checker.schema()
        if stored is None:
            kernels.plan(checker.name, schema)
        pending.kernel_writes.append(("ensure", checker.name, schema))
        return None
    schema = checker.key_spec.to_schema()
    if stored is not None and "inferred_from" in stored:
        if sorted(f["name"] for f in stored.get("fields", [])) != sorted(checker.key_spec.names):
            return (
                f"{parsed.name}: kernel {checker.name!r} was stored unverified with key fields "
                f"{[f['name'] for f in stored.get('fields', [])]}; the registered kernel "
                f"has {list(checker.key_spec.names)}"
            )
        pending.kernel_writes.append(("adopt", checker.name, schema))
        kernels.plan(checker.name, schema)
        stored = schema
    if parsed.key_schema is not None:

        def fields(s: Mapping[str, Any]) -> list[tuple[str, str]]:
            return [(f.get("name"), f.get("policy")) for f in s.get("fields", [])]

        if fields(parsed.key_schema) != fields(schema):
            return (
                f"{parsed.name}: kernel.key_schema {fields(parsed.key_schema)} differs from the "
                f"registered kernel {checker.name!r} {fields(schema)}"
            )
    if stored is not None and _field_policies(stored) != _field_policies(schema):
        # What `Repository.ensure_kernel` would refuse in phase 2, found before validating.
        raise KeySpecError(
            f"kernel {checker.name!r}: key fields {_field_policies(schema)} differ from the "
            f"stored key schema {_field_policies(stored)}; a changed key spec needs a new "
            "kernel name (or a schema migration)."
        )
    if stored is None:
        kernels.plan(checker.name, schema)
    pending.kernel_writes.append(("ensure", checker.name, schema))
    return None


def _field_policies(schema: Mapping[str, Any]) -> list[tuple[str, str]]:
    return [(f["name"], f["policy"]) for f in schema.get("fields", [])]


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


# ---------------------------------------------------------------- phase 2: write


def _write_all(
    writer: Store,
    checked: Sequence[_CheckedFile],
    report: ImportReport,
    options: _Options,
    on_row: Callable[[RowOutcome], None] | None,
    *,
    dry_run: bool,
) -> None:
    """Phase 2: the one write transaction (on a registry it holds the writer lock), only
    fast db work. A dry run writes what it can (into its private copy, or rolled back) so
    the report says what each valid row would do."""
    try:
        with writer.transaction() as session:
            repo = Repository(session)
            for pending in checked:
                _write_file(repo, pending, report, options, on_row)
            if dry_run or report.problems:
                raise _Abort
    except _Abort:
        pass


def _write_file(
    repo: Repository,
    pending: _CheckedFile,
    report: ImportReport,
    options: _Options,
    on_row: Callable[[RowOutcome], None] | None,
) -> None:
    parsed, platform = pending.parsed, pending.platform
    if parsed.cache_entry is not None:
        # Helion's own cache entry, under its cache key (presetdb.store.helion_cache).
        stored = store_entry(repo.session, parsed.cache_entry, "import-helion-cache", {"source_file": parsed.name})
        report.cache_entries[stored] += 1
    if pending.cache_only:
        return
    for op, name, schema in pending.kernel_writes:
        if op == "adopt":
            repo.replace_key_schema(name, schema)
        repo.ensure_kernel(name, schema)
    if pending.has_file_problem:  # a dry run with a bad header: its rows are not tried
        _record_unwritten(pending, report, on_row)
        return
    run_ids: dict[str, int] = {}  # a row's provenance (canonical JSON) -> its tuning run
    for entry in pending.entries:
        if isinstance(entry, RowOutcome):
            _record(report, pending, entry, on_row)
            continue
        item = entry.item
        current = repo.find_preset(entry.kernel, platform, item.shape_key)
        if current is not None and (
            current.config_sha256 == entry.sha
            or same_config(current.config, item.config)
            # The file holds exactly the stored config; this machine's ConfigSpec would only
            # respell it (e.g. CPU raises a GPU block size to its own minimum).
            or same_config(current.config, entry.raw_config)
        ):
            # A vLLM row keeps its file layout up to date, and any row may become verified;
            # other rows (tuned, with provenance) are left exactly as they are.
            if current.config_sha256 == entry.sha and (
                current.source == "import-vllm" or (item.verified and not current.verified)
            ):
                repo.upsert_preset(entry.kernel, platform, current.run_id, item)
            _record(report, pending, _outcome(pending, entry, "unchanged"), on_row)
            continue
        # Rows made on other machines (a tuning farm) carry their own provenance: one run each.
        provenance = {**parsed.provenance, **(entry.provenance or {})}
        run_key = json.dumps(provenance, sort_keys=True, default=str)
        run_id = run_ids.get(run_key)
        if run_id is None:
            run = repo.add_run(
                parsed.source,
                source_file=parsed.name,
                source_sha256=parsed.sha256,
                source_path=pending.source_path,
                source_rev=options.source_rev,
                **provenance,
            )
            run_id = run_ids[run_key] = run.id
            report.run_ids.append(run_id)
        result = repo.upsert_preset(entry.kernel, platform, run_id, item)
        _record(report, pending, _outcome(pending, entry, result.outcome), on_row)


def _record_unwritten(
    pending: _CheckedFile, report: ImportReport, on_row: Callable[[RowOutcome], None] | None
) -> None:
    """The file's outcomes when nothing of it is written: valid rows are "skipped"."""
    for entry in pending.entries:
        outcome = entry if isinstance(entry, RowOutcome) else _outcome(pending, entry, "skipped")
        _record(report, pending, outcome, on_row)


def _outcome(pending: _CheckedFile, row: _CheckedRow, what: str) -> RowOutcome:
    return RowOutcome(
        pending.parsed.name, row.row_no, row.where, row.kernel, pending.platform, row.key_text, what, row.sha
    )


def _record(
    report: ImportReport, pending: _CheckedFile, outcome: RowOutcome,
    on_row: Callable[[RowOutcome], None] | None,
) -> None:
    report.record(outcome, pending.summary)
    if on_row is not None:
        on_row(outcome)



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
