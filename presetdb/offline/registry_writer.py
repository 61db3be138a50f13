"""Writing one tuned shape into a database as it lands: `presetdb tune --db` / a farm's
workers fill a team's registry (or a SQLite file) shape by shape.

`write_entry` takes what a tuning run already has for the results file (the
``presetdb-results/1`` ``kernel`` member, one entry, the ``run`` member) and stores it
with the same checks as `presetdb import` (key against the key spec, config against the
kernel's ConfigSpec, timings), in one transaction of its own. All shapes of one tuning
run share one ``tuning_runs`` row: the run is found again by its source, host, device,
seed and start time, and its ``finished_at`` moves forward with each shape.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sqlalchemy import URL, select, update

from presetdb.errors import ImportValidationError
from presetdb.offline.importers.presetdb_results import entry_row
from presetdb.offline.importers.records import PROVENANCE_FIELDS
from presetdb.offline.importers.validate import RegistryResolver, Resolver, check_row, problem_line
from presetdb.runtime.platforms import derive_platform_name
from presetdb.store import migrate
from presetdb.store.engine import parse_target
from presetdb.store.models import TuningRun
from presetdb.store.repository import Repository

SOURCE = "tune"
# What identifies one tuning run among the rows of tuning_runs.
RUN_IDENTITY = ("host", "device_name", "seed", "started_at")


def write_entry(
    target: str | Path | URL,
    kernel: Any,
    entry: Mapping[str, Any],
    provenance: Mapping[str, Any],
    *,
    platform: str | None = None,
    resolver: Resolver | None = None,
) -> str:
    """Store one tuned shape in `target` (a SQLite file or a registry URL at this
    package's schema). Returns "added", "superseded" or "unchanged".

    `kernel`: the registered kernel, its name, or the results file's ``kernel`` member
    ({"name", "source_hash", ...}); `entry`: one ``presetdb-results/1`` entry (as
    ``Tuner.tune_shape`` returns it); `provenance`: the file's ``run`` member; `platform`:
    the file's platform (default: the run's device name through the db's aliases).
    Raises ImportValidationError (nothing written) when the entry does not check."""
    name, source_hash = _kernel_identity(kernel)
    checker = (resolver or RegistryResolver()).get(name)
    source_hash = source_hash or checker.source_hash()
    where = f"{name} entry"
    row = entry_row(0, where, name, dict(entry), source_hash)
    checked = check_row(row, checker, source_hash=source_hash)
    if checked.problems or checked.item is None:
        problems = [problem_line(where, row, f, r) for f, r in checked.problems]
        raise ImportValidationError(f"{where}: not written", problems)
    run = {k: provenance[k] for k in PROVENANCE_FIELDS if provenance.get(k) is not None}
    store = migrate.open_store(parse_target(target), "rw")
    try:
        with store.transaction() as session:
            repo = Repository(session)
            repo.ensure_kernel(name, checker.key_spec.to_schema())
            chosen = platform or _platform_of(repo, run.get("device_name"))
            result = repo.upsert_preset(name, chosen, _run_id(repo, run), checked.item)
            return result.outcome
    finally:
        store.dispose()


def _kernel_identity(kernel: Any) -> tuple[str, str | None]:
    if isinstance(kernel, str):
        return kernel, None
    if isinstance(kernel, Mapping):
        return str(kernel["name"]), kernel.get("source_hash")
    return str(kernel.name), str(kernel.source_hash())


def _platform_of(repo: Repository, device_name: str | None) -> str:
    if not device_name:
        raise ImportValidationError("the run names no device_name: pass platform=")
    found = repo.platform_for_alias(device_name)
    if found is not None:
        return found
    derived = derive_platform_name(device_name)
    return repo.get_platform(derived).name  # UnknownPlatformError lists the known ones


def _run_id(repo: Repository, run: Mapping[str, Any]) -> int:
    """The tuning run these provenance fields describe: found again (and its finish time
    moved forward) when an earlier shape of the same run wrote it, else added."""
    if all(run.get(k) is not None for k in RUN_IDENTITY):
        query = select(TuningRun.id).where(
            TuningRun.source == SOURCE, *(getattr(TuningRun, k) == run[k] for k in RUN_IDENTITY)
        )
        found = repo.session.scalar(query.order_by(TuningRun.id))
        if found is not None:
            finished = run.get("finished_at")
            if finished is not None:
                repo.session.execute(
                    update(TuningRun)
                    .where(TuningRun.id == found, (TuningRun.finished_at.is_(None)) | (TuningRun.finished_at < finished))
                    .values(finished_at=finished)
                )
            return int(found)
    return repo.add_run(SOURCE, **run).id
