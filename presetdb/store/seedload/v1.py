"""Seed loader, version 1: what data migrations made by ``presetdb new-migration`` call.

FROZEN. Released migrations import this module, so it must keep doing exactly what it
did when they were written: it declares its own table stubs (``sa.table``) instead of
importing the live models, reads only ``presetdb-results/1`` with its own few lines of
code instead of the importers, and computes canonical keys and config hashes itself.
A change of behaviour is a new module (``v2``) used by new migrations only.

- ``upgrade(revision, files)`` checks every pinned sha256 first (a changed seed file
  raises `SeedDataTamperedError` before anything is written), then inserts each file as
  one tuning run tagged with the revision. A key whose active config is the same is left
  alone; a different config supersedes it (history kept). Timestamps come from the file
  (``run.finished_at``) so two builds of the same migrations hold the same rows.
- ``downgrade(revision)`` deletes exactly the rows tagged with the revision and puts back
  the rows they superseded.
- User overlays are created schema-only (``config.attributes["seed_data"] = False``):
  then nothing is inserted.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from presetdb.errors import PresetDBError, SeedDataTamperedError

SEED_PACKAGE = "presetdb.seed_data"
FORMAT_ID = "presetdb-results/1"
EPOCH = "1970-01-01T00:00:00.000000Z"
SOURCES = (
    "tune",
    "autotune",
    "import-presetdb",
    "import-vllm",
    "import-helion-cache",
    "import-helion-aot",
    "manual",
)
RUN_COLUMNS = (
    "tuned_by",
    "host",
    "device_name",
    "sm_count",
    "driver_version",
    "cuda_version",
    "torch_version",
    "triton_version",
    "helion_version",
    "presetdb_version",
    "autotune_effort",
    "seed",
    "benchmark_method",
    "started_at",
    "finished_at",
)
BATCH = 500

kernels = sa.table(
    "kernels",
    sa.column("id", sa.Integer),
    sa.column("name", sa.String),
    sa.column("key_schema", sa.Text),
    sa.column("description", sa.Text),
    sa.column("created_at", sa.String),
)
platforms = sa.table("platforms", sa.column("id", sa.Integer), sa.column("name", sa.String))
tuning_runs = sa.table(
    "tuning_runs",
    sa.column("id", sa.Integer),
    sa.column("source", sa.String),
    sa.column("source_file", sa.Text),
    sa.column("source_sha256", sa.String),
    sa.column("revision", sa.String),
    sa.column("imported_at", sa.String),
    *(sa.column(name) for name in RUN_COLUMNS),
)
configs = sa.table(
    "configs",
    sa.column("id", sa.Integer),
    sa.column("sha256", sa.String),
    sa.column("config_json", sa.Text),
    sa.column("created_at", sa.String),
)
presets = sa.table(
    "presets",
    sa.column("id", sa.Integer),
    sa.column("kernel_id", sa.Integer),
    sa.column("platform_id", sa.Integer),
    sa.column("shape_key", sa.Text),
    sa.column("config_id", sa.Integer),
    sa.column("run_id", sa.Integer),
    sa.column("kernel_source_hash", sa.String),
    sa.column("latency_ms", sa.Float),
    sa.column("default_ms", sa.Float),
    sa.column("reference_ms", sa.Float),
    sa.column("configs_tried", sa.Integer),
    sa.column("tuning_seconds", sa.Float),
    sa.column("status", sa.String),
    sa.column("status_reason", sa.Text),
    sa.column("superseded_by", sa.Integer),
    sa.column("created_at", sa.String),
)
candidates = sa.table(
    "preset_candidates",
    sa.column("id", sa.Integer),
    sa.column("preset_id", sa.Integer),
    sa.column("config_id", sa.Integer),
    sa.column("rank", sa.Integer),
    sa.column("latency_ms", sa.Float),
)


def _compact(value: Mapping[str, Any]) -> str:
    return json.dumps(dict(value), sort_keys=True, separators=(",", ":"))


# ---------------------------------------------------------------- alembic entry points


def upgrade(revision: str, files: Mapping[str, str], *, seed_dir: str | None = None) -> None:
    """Called from a data migration's ``upgrade()``. `seed_dir`: a folder holding the
    files (a user's data migrations, outside the package); default: presetdb.seed_data."""
    from alembic import op

    context = op.get_context()
    seed = True if context.config is None else context.config.attributes.get("seed_data", True)
    if not seed:
        return
    load(op.get_bind(), revision, files, seed_dir=seed_dir)


def downgrade(revision: str) -> None:
    """Called from a data migration's ``downgrade()``."""
    from alembic import op

    unload(op.get_bind(), revision)


# ---------------------------------------------------------------- loading


def read_verified(
    revision: str, files: Mapping[str, str], package: str = SEED_PACKAGE, *, seed_dir: str | None = None
) -> dict[str, bytes]:
    """Every pinned file's bytes, or SeedDataTamperedError naming the first bad one."""
    root: Any = Path(seed_dir) if seed_dir is not None else importlib.resources.files(package)
    if seed_dir is not None:
        package = seed_dir
    found: dict[str, bytes] = {}
    for name, expected in files.items():
        try:
            data = (root / name).read_bytes()
        except (FileNotFoundError, OSError):
            raise SeedDataTamperedError(
                f"seed file {name} pinned by migration {revision} is missing from {package} "
                "(seed files are never removed: restore it from version control)"
            ) from None
        actual = hashlib.sha256(data).hexdigest()
        if actual != expected:
            raise SeedDataTamperedError(
                f"seed file {name} was modified: migration {revision} pinned sha256 {expected}, "
                f"the file has sha256 {actual}. Seed files are never edited: restore it (e.g. "
                f"`git checkout -- seed_data/{name}`) and put new results in a new migration "
                "(`presetdb new-migration FILE -m MESSAGE`)."
            )
        found[name] = data
    return found


def load(
    conn: Connection, revision: str, files: Mapping[str, str], package: str = SEED_PACKAGE,
    *, seed_dir: str | None = None,
) -> None:
    contents = read_verified(revision, files, package, seed_dir=seed_dir)
    for name, data in contents.items():
        _load_file(conn, revision, name, hashlib.sha256(data).hexdigest(), json.loads(data))


def _load_file(conn: Connection, revision: str, name: str, sha: str, doc: Mapping[str, Any]) -> None:
    if not isinstance(doc, Mapping) or doc.get("format") != FORMAT_ID:
        raise PresetDBError(f"seed file {name}: not a {FORMAT_ID} file (seedload v1 reads only that)")
    run = doc.get("run") or {}
    stamp = run.get("finished_at") or run.get("started_at") or EPOCH
    kernel = doc["kernel"]
    kernel_id = conn.execute(sa.select(kernels.c.id).where(kernels.c.name == kernel["name"])).scalar()
    if kernel_id is None:
        kernel_id = conn.execute(
            kernels.insert()
            .values(
                name=kernel["name"],
                key_schema=json.dumps(kernel.get("key_schema") or {"fields": []}, sort_keys=True),
                description="",
                created_at=stamp,
            )
            .returning(kernels.c.id)
        ).scalar_one()
    platform_id = conn.execute(sa.select(platforms.c.id).where(platforms.c.name == doc["platform"])).scalar()
    if platform_id is None:
        raise PresetDBError(
            f"seed file {name}: platform {doc['platform']!r} is not in the database at migration "
            f"{revision}; add it to the platform catalog in a schema migration first"
        )
    source = run.get("source") if run.get("source") in SOURCES else "tune"
    run_id = conn.execute(
        tuning_runs.insert()
        .values(
            source=source,
            source_file=name,
            source_sha256=sha,
            revision=revision,
            imported_at=stamp,
            **{c: run.get(c) for c in RUN_COLUMNS},
        )
        .returning(tuning_runs.c.id)
    ).scalar_one()
    config_ids: dict[str, int] = {}
    entries = doc.get("entries") or []
    for start in range(0, len(entries), BATCH):
        for entry in entries[start : start + BATCH]:
            _load_entry(
                conn,
                entry,
                kernel_id,
                platform_id,
                run_id,
                kernel.get("source_hash"),
                stamp,
                revision,
                config_ids,
            )


def _config_id(conn: Connection, config: Mapping[str, Any], stamp: str, cache: dict[str, int]) -> int:
    text = _compact(config)
    sha = hashlib.sha256(text.encode()).hexdigest()
    if sha not in cache:
        found = conn.execute(sa.select(configs.c.id).where(configs.c.sha256 == sha)).scalar()
        if found is None:
            found = conn.execute(
                configs.insert()
                .values(sha256=sha, config_json=text, created_at=stamp)
                .returning(configs.c.id)
            ).scalar_one()
        cache[sha] = found
    return cache[sha]


def _load_entry(
    conn: Connection,
    entry: Mapping[str, Any],
    kernel_id: int,
    platform_id: int,
    run_id: int,
    source_hash: str | None,
    stamp: str,
    revision: str,
    cache: dict[str, int],
) -> None:
    shape_key = _compact(entry["key"])
    config_id = _config_id(conn, entry["config"], stamp, cache)
    current = conn.execute(
        sa.select(presets.c.id, presets.c.config_id).where(
            presets.c.kernel_id == kernel_id,
            presets.c.platform_id == platform_id,
            presets.c.shape_key == shape_key,
            presets.c.status == "active",
        )
    ).first()
    if current is not None and current.config_id == config_id:
        return
    if current is not None:
        # Retire first: one active row per key (partial unique index).
        conn.execute(
            presets.update()
            .where(presets.c.id == current.id)
            .values(status="superseded", status_reason=f"superseded by migration {revision}")
        )
    new_id = conn.execute(
        presets.insert()
        .values(
            kernel_id=kernel_id,
            platform_id=platform_id,
            shape_key=shape_key,
            config_id=config_id,
            run_id=run_id,
            kernel_source_hash=source_hash,
            latency_ms=entry.get("latency_ms"),
            default_ms=entry.get("default_ms"),
            reference_ms=entry.get("reference_ms"),
            configs_tried=entry.get("configs_tried"),
            tuning_seconds=entry.get("tuning_seconds"),
            status="active",
            created_at=stamp,
        )
        .returning(presets.c.id)
    ).scalar_one()
    for rank, runner in enumerate(entry.get("runners_up") or [], start=1):
        conn.execute(
            candidates.insert().values(
                preset_id=new_id,
                config_id=_config_id(conn, runner["config"], stamp, cache),
                rank=rank,
                latency_ms=runner.get("latency_ms"),
            )
        )
    if current is not None:
        conn.execute(presets.update().where(presets.c.id == current.id).values(superseded_by=new_id))


# ---------------------------------------------------------------- unloading


def unload(conn: Connection, revision: str) -> None:
    run_ids = list(
        conn.execute(sa.select(tuning_runs.c.id).where(tuning_runs.c.revision == revision)).scalars()
    )
    if not run_ids:
        return
    doomed = conn.execute(
        sa.select(presets.c.id, presets.c.superseded_by).where(presets.c.run_id.in_(run_ids))
    ).all()
    doomed_ids = {row.id for row in doomed}
    successor = {row.id: row.superseded_by for row in doomed}

    def surviving_successor(preset_id: int) -> int | None:
        # Follow the supersede chain past rows that are about to go.
        nxt: int | None = preset_id
        hops = 0
        while nxt is not None and nxt in doomed_ids and hops <= len(doomed_ids):
            nxt, hops = successor.get(nxt), hops + 1
        return nxt if nxt not in doomed_ids else None

    predecessors = conn.execute(
        sa.select(presets.c.id, presets.c.superseded_by).where(
            presets.c.superseded_by.in_(doomed_ids), presets.c.id.not_in(doomed_ids)
        )
    ).all()
    orphaned: list[int] = []
    for row in predecessors:
        after = surviving_successor(row.superseded_by)
        conn.execute(presets.update().where(presets.c.id == row.id).values(superseded_by=after))
        if after is None:
            orphaned.append(row.id)
    conn.execute(presets.update().where(presets.c.id.in_(doomed_ids)).values(superseded_by=None))
    conn.execute(candidates.delete().where(candidates.c.preset_id.in_(doomed_ids)))
    conn.execute(presets.delete().where(presets.c.id.in_(doomed_ids)))
    for preset_id in orphaned:
        # The row this one was retired for is gone: it is the key's config again,
        # unless some other row is active for the key.
        kept = conn.execute(
            sa.select(presets.c.kernel_id, presets.c.platform_id, presets.c.shape_key).where(
                presets.c.id == preset_id
            )
        ).one()
        active = conn.execute(
            sa.select(presets.c.id).where(
                presets.c.kernel_id == kept.kernel_id,
                presets.c.platform_id == kept.platform_id,
                presets.c.shape_key == kept.shape_key,
                presets.c.status == "active",
            )
        ).first()
        if active is None:
            conn.execute(
                presets.update().where(presets.c.id == preset_id).values(status="active", status_reason=None)
            )
    conn.execute(tuning_runs.delete().where(tuning_runs.c.id.in_(run_ids)))
    # Content-addressed configs and kernels that nothing refers to any more.
    conn.execute(
        configs.delete().where(
            configs.c.id.not_in(sa.select(presets.c.config_id)),
            configs.c.id.not_in(sa.select(candidates.c.config_id)),
        )
    )
    conn.execute(kernels.delete().where(kernels.c.id.not_in(sa.select(presets.c.kernel_id))))
