"""The migration checks (pytest-alembic's four, written with Alembic's own APIs) plus
data safety: foreign keys, row counts, views and all-or-nothing migrations.

Every check walks `presetdb.store.migrate.revisions()`, so a new revision is covered without
editing this file.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, inspect

from presetdb.errors import IntegrityCheckError
from presetdb.offline.build import content_digest
from presetdb.store import migrate
from presetdb.store.engine import make_engine
from presetdb.store.models import Base

VIEWS = ("v_active_presets", "v_coverage", "v_preset_history")
# Tables that only tuning results and imports fill: schema migrations never add rows to
# them, and data migrations are skipped by seed_data=False.
RESULT_TABLES = (
    "kernels",
    "tuning_runs",
    "configs",
    "presets",
    "preset_candidates",
    "preset_misses",
)


def script() -> ScriptDirectory:
    return ScriptDirectory.from_config(migrate.alembic_config())


def run_alembic(
    path: Path, action: Callable[[Config], None], *, seed_data: bool = True
) -> None:
    """Run an Alembic command on `path` the way presetdb does: foreign keys off, the
    connection handed to env.py, one transaction."""
    engine = make_engine(path, "rw", pooled=False, foreign_keys=False)
    try:
        with engine.connect() as conn:
            conn.begin()
            action(migrate.alembic_config(conn, seed_data=seed_data))
            conn.commit()
    finally:
        engine.dispose()


def alembic_revision(path: Path) -> str | None:
    engine = create_engine(f"sqlite:///{path}")
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()


def schema_objects(path: Path) -> dict[tuple[str, str], str]:
    """(type, name) -> whitespace-normalised SQL of every table, index and view."""
    with sqlite3.connect(path) as conn:
        rows = conn.execute(
            "SELECT type, name, sql FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'"
        ).fetchall()
    return {(t, n): " ".join((sql or "").split()) for t, n, sql in rows}


def foreign_key_problems(path: Path) -> list[tuple[object, ...]]:
    with sqlite3.connect(path) as conn:
        return conn.execute("PRAGMA foreign_key_check").fetchall()


def counts(path: Path) -> dict[str, int]:
    with sqlite3.connect(path) as conn:
        tables = [
            r[0]
            for r in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
            )
        ]
        return {
            t: conn.execute(f'SELECT COUNT(*) FROM "{t}"').fetchone()[0] for t in tables
        }


# ------------------------------------------------------------------ the four checks


def test_exactly_one_head_and_one_base() -> None:
    sd = script()
    assert len(sd.get_heads()) == 1, (
        f"migrations have several heads {sd.get_heads()}: make the newest revision's "
        "down_revision the previous head (presetdb's revisions are linear)"
    )
    assert len(sd.get_bases()) == 1, f"migrations have several bases {sd.get_bases()}"
    ids = [r.id for r in migrate.revisions()]
    assert ids[-1] == sd.get_current_head() == migrate.head()
    assert len(set(ids)) == len(ids)
    for rev in migrate.revisions():
        assert rev.kind in ("schema", "data"), (
            f"revision {rev.id}: presetdb_kind must be 'schema' or 'data', got {rev.kind!r}"
        )


def test_revisions_are_linear() -> None:
    walked = list(script().walk_revisions("base", "heads"))
    for sc in walked:
        assert not isinstance(sc.down_revision, (tuple, list)), (
            f"{sc.revision} is a merge point"
        )
        assert not sc.branch_labels, (
            f"{sc.revision} has branch labels {sc.branch_labels}"
        )


def test_upgrade_from_empty_to_head(tmp_path: Path) -> None:
    path = tmp_path / "empty.db"
    path.touch()  # a zero-length file is how `touch x.db; presetdb db upgrade` starts
    run_alembic(path, lambda cfg: command.upgrade(cfg, "head"))
    assert alembic_revision(path) == script().get_current_head()
    objects = schema_objects(path)
    for table in Base.metadata.tables:
        assert ("table", table) in objects, f"table {table} missing after upgrade"
    for view in VIEWS:
        assert ("view", view) in objects
    assert foreign_key_problems(path) == []


def assert_schema_at(
    path: Path, revision: str | None, snapshots: dict[str, dict[tuple[str, str], str]]
) -> None:
    if revision is None:
        assert set(schema_objects(path)) == {("table", "alembic_version")}, (
            "downgrade to base left objects behind: a downgrade() misses a drop"
        )
    else:
        assert schema_objects(path) == snapshots[revision], (
            f"the schema at {revision} differs from when {revision} was first reached: "
            "a downgrade() does not undo its upgrade()"
        )


def test_up_down_consistency_one_step_at_a_time(tmp_path: Path) -> None:
    path = tmp_path / "steps.db"
    ids = [r.id for r in migrate.revisions()]
    previous: str | None = None
    snapshots: dict[str, dict[tuple[str, str], str]] = {}
    for rev in ids:
        # up one step, down one step, up again: the same schema each time
        run_alembic(path, lambda cfg, rev=rev: command.upgrade(cfg, rev))
        assert alembic_revision(path) == rev
        snapshots[rev] = schema_objects(path)
        digest = content_digest(path)
        run_alembic(path, lambda cfg: command.downgrade(cfg, "-1"))
        assert alembic_revision(path) == previous, (
            f"downgrade of {rev} did not reach {previous}"
        )
        assert_schema_at(path, previous, snapshots)
        run_alembic(path, lambda cfg, rev=rev: command.upgrade(cfg, rev))
        assert schema_objects(path) == snapshots[rev], (
            f"{rev}: downgrade + upgrade changed the schema"
        )
        assert content_digest(path) == digest, (
            f"{rev}: downgrade + upgrade changed the rows"
        )
        previous = rev

    # all the way down, one step at a time, then up again
    for expected in reversed([None, *ids[:-1]]):
        run_alembic(path, lambda cfg: command.downgrade(cfg, "-1"))
        assert alembic_revision(path) == expected
        assert_schema_at(path, expected, snapshots)
    run_alembic(path, lambda cfg: command.upgrade(cfg, "head"))
    assert schema_objects(path) == snapshots[ids[-1]]
    assert foreign_key_problems(path) == []


def test_models_match_migrated_schema(fresh_db: Path) -> None:
    engine = create_engine(f"sqlite:///{fresh_db}")
    try:
        with engine.connect() as conn:
            ctx = MigrationContext.configure(
                conn, opts={"compare_type": True, "render_as_batch": True}
            )
            diff = compare_metadata(ctx, Base.metadata)
    finally:
        engine.dispose()
    assert not diff, (
        "presetdb/store/models.py and the schema the migrations create differ:\n"
        + "\n".join(f"  {d}" for d in diff)
        + "\nIf models.py is right, add a schema revision under migrations/versions/ "
        "(presetdb_kind = 'schema') that makes this change; if the migrations are right, "
        "fix models.py. Never edit a released revision."
    )


def _declared(path: Path) -> dict[str, object]:
    engine = create_engine(f"sqlite:///{path}")
    try:
        insp = inspect(engine)
        tables = sorted(t for t in insp.get_table_names() if t != "alembic_version")
        return {
            "checks": {
                t: sorted(
                    (c["name"], " ".join(c["sqltext"].split()))
                    for c in insp.get_check_constraints(t)
                )
                for t in tables
            },
            "foreign_keys": {
                t: sorted(
                    (
                        fk["name"],
                        tuple(fk["constrained_columns"]),
                        fk["referred_table"],
                        tuple(fk["referred_columns"]),
                        tuple(sorted(fk["options"].items())),
                    )
                    for fk in insp.get_foreign_keys(t)
                )
                for t in tables
            },
            "indexes": {
                (t, n): s for (t, n), s in schema_objects(path).items() if t == "index"
            },
        }
    finally:
        engine.dispose()


def test_constraints_match_models(fresh_db: Path, tmp_path: Path) -> None:
    """What autogenerate does not compare: CHECK constraints, foreign key options and
    the partial unique index's WHERE clause."""
    from_models = tmp_path / "models.db"
    engine = create_engine(f"sqlite:///{from_models}")
    Base.metadata.create_all(engine)
    engine.dispose()
    migrated, declared = _declared(fresh_db), _declared(from_models)
    for part in ("checks", "foreign_keys", "indexes"):
        assert migrated[part] == declared[part], (
            f"{part} in the migrated schema differ from presetdb/store/models.py:\n"
            f"  migrations: {migrated[part]}\n  models:     {declared[part]}\n"
            "Add a schema revision that makes the change, or fix models.py."
        )
    index_sql = migrated["indexes"][("index", "uq_presets_active_key")]
    assert "WHERE status = 'active'" in str(index_sql)


# ------------------------------------------------------------------ data safety


def _insert_results_at_first_revision(path: Path) -> None:
    """Rows in every table of the first schema revision, foreign keys enforced."""
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA foreign_keys = ON")
    ts = "2026-01-01T00:00:00.000000Z"
    with conn:
        conn.execute(
            "INSERT INTO kernels (id, name, key_schema, description, created_at) VALUES "
            """(1, 'rms_norm', '{"fields":[{"name":"hidden","policy":"nearest"}]}', '', ?)""",
            (ts,),
        )
        conn.executemany(
            "INSERT INTO platforms (id, name, vendor, device_name, compute_capability, "
            "sm_count, created_at) VALUES (?, ?, 'nvidia', ?, '9.0', 132, ?)",
            [
                (1, "nvidia_h100", "NVIDIA H100 80GB HBM3", ts),
                (2, "test_gpu", "Test GPU", ts),
            ],
        )
        conn.execute(
            "INSERT INTO platform_aliases (alias, platform_id) VALUES ('Test GPU', 2)"
        )
        conn.execute(
            "INSERT INTO platform_fallbacks (platform_id, rank, fallback_platform_id) VALUES (2, 1, 1)"
        )
        conn.execute(
            "INSERT INTO tuning_runs (id, source, imported_at) VALUES (1, 'manual', ?)",
            (ts,),
        )
        conn.executemany(
            "INSERT INTO configs (id, sha256, config_json, created_at) VALUES (?, ?, ?, ?)",
            [
                (1, "a" * 64, '{"block_sizes":[1]}', ts),
                (2, "b" * 64, '{"block_sizes":[2]}', ts),
            ],
        )
        conn.executemany(
            "INSERT INTO presets (id, kernel_id, platform_id, shape_key, config_id, run_id, "
            "latency_ms, status, superseded_by, created_at) VALUES (?, 1, ?, ?, ?, 1, ?, ?, ?, ?)",
            [
                (1, 1, '{"hidden":4096}', 1, 0.5, "superseded", None, ts),
                (2, 1, '{"hidden":4096}', 2, 0.4, "active", None, ts),
                (3, 2, "{}", 1, 0.7, "active", None, ts),
            ],
        )
        conn.execute("UPDATE presets SET superseded_by = 2 WHERE id = 1")
        conn.execute(
            "INSERT INTO preset_candidates (preset_id, config_id, rank, latency_ms) VALUES (2, 1, 1, 0.5)"
        )
        conn.execute(
            "INSERT INTO preset_misses (kernel, platform, features, reason, count, "
            """first_seen_at, last_seen_at) VALUES ('rms_norm', 'test_gpu', '{"hidden":5}', """
            "'no-match', 3, ?, ?)",
            (ts, ts),
        )
    conn.close()


def test_upgrade_keeps_rows_and_references(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    first = migrate.revisions()[0].id
    migrate.upgrade(path, first, seed_data=False)
    _insert_results_at_first_revision(path)
    before = counts(path)

    migrate.upgrade(path, seed_data=False)

    assert migrate.revision_of(path) == migrate.head()
    assert foreign_key_problems(path) == []
    after = counts(path)
    for table in RESULT_TABLES:
        assert after[table] == before[table], (
            f"upgrade changed the row count of {table}"
        )
    for table in ("platforms", "platform_aliases", "platform_fallbacks"):
        assert after[table] >= before[table], f"upgrade lost rows of {table}"
    with sqlite3.connect(path) as conn:
        # the user's own platform, alias and fallback survive with their ids
        assert conn.execute(
            "SELECT id FROM platforms WHERE name = 'test_gpu'"
        ).fetchall() == [(2,)]
        assert conn.execute(
            "SELECT platform_id FROM platform_aliases WHERE alias = 'Test GPU'"
        ).fetchall() == [(2,)]
        assert conn.execute(
            "SELECT fallback_platform_id FROM platform_fallbacks WHERE platform_id = 2"
        ).fetchall() == [(1,)]
        # a catalog platform that already existed is reused, not duplicated
        assert conn.execute(
            "SELECT id FROM platforms WHERE name = 'nvidia_h100'"
        ).fetchall() == [(1,)]
        assert conn.execute(
            "SELECT id, status, superseded_by FROM presets ORDER BY id"
        ).fetchall() == [(1, "superseded", 2), (2, "active", None), (3, "active", None)]


def test_failed_foreign_key_check_rolls_the_whole_migration_back(
    tmp_path: Path,
) -> None:
    ids = [r.id for r in migrate.revisions()]
    if len(ids) < 2:
        pytest.skip("needs a revision after the first")
    path = tmp_path / "dangling.db"
    migrate.upgrade(path, ids[0], seed_data=False)
    # A dangling reference that foreign keys (on in the store) would have refused.
    conn = sqlite3.connect(path)
    with conn:
        conn.execute(
            "INSERT INTO platform_aliases (alias, platform_id) VALUES ('ghost', 999)"
        )
    conn.close()
    before_objects, before_counts = schema_objects(path), counts(path)

    with pytest.raises(IntegrityCheckError) as info:
        migrate.upgrade(path, seed_data=False)

    message = str(info.value)
    assert (
        str(path) in message
        and "platform_aliases" in message
        and "rolled back" in message
    )
    assert migrate.revision_of(path) == ids[0], (
        "a failed migration must leave the revision as it was"
    )
    assert schema_objects(path) == before_objects
    assert counts(path) == before_counts


def test_views_exist_and_are_queryable(rw_store) -> None:  # type: ignore[no-untyped-def]
    from presetdb.store.records import PresetInput
    from presetdb.store.repository import Repository

    with rw_store.transaction() as session:
        repo = Repository(session)
        repo.ensure_kernel(
            "rms_norm", {"fields": [{"name": "hidden", "policy": "nearest"}]}
        )
        run = repo.add_run(
            "manual", device_name="NVIDIA H100 80GB HBM3", helion_version="1.5.0"
        )
        repo.upsert_preset(
            "rms_norm",
            "nvidia_h100",
            run.id,
            PresetInput({"hidden": 4096}, {"a": 1}, latency_ms=0.5),
        )
        repo.upsert_preset(
            "rms_norm",
            "nvidia_h100",
            run.id,
            PresetInput({"hidden": 4096}, {"a": 2}, latency_ms=0.4),
        )
        repo.upsert_preset("rms_norm", "nvidia_h100", run.id, PresetInput({}, {"a": 3}))
    with sqlite3.connect(rw_store.path) as conn:
        names = {
            r[0]
            for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'view'")
        }
        assert set(VIEWS) <= names
        active = conn.execute(
            "SELECT kernel, platform, shape_key, config, latency_ms, device_name, helion_version "
            "FROM v_active_presets ORDER BY preset_id"
        ).fetchall()
        assert active == [
            (
                "rms_norm",
                "nvidia_h100",
                '{"hidden":4096}',
                '{"a":2}',
                0.4,
                "NVIDIA H100 80GB HBM3",
                "1.5.0",
            ),
            (
                "rms_norm",
                "nvidia_h100",
                "{}",
                '{"a":3}',
                None,
                "NVIDIA H100 80GB HBM3",
                "1.5.0",
            ),
        ]
        history = conn.execute(
            "SELECT status, superseded_by IS NOT NULL, config FROM v_preset_history "
            """WHERE shape_key = '{"hidden":4096}' ORDER BY preset_id"""
        ).fetchall()
        assert history == [("superseded", 1, '{"a":1}'), ("active", 0, '{"a":2}')]
        coverage = conn.execute(
            "SELECT kernel, platform, active_presets, has_default FROM v_coverage"
        ).fetchall()
        assert coverage == [("rms_norm", "nvidia_h100", 2, 1)]


# ------------------------------------------------------------------ both dialects


SNAPSHOT = Path(__file__).parent / "fixtures" / "schema" / "sqlite_master_0006.json"


def test_sqlite_ddl_is_byte_for_byte_the_snapshot() -> None:
    """The migrations became dialect-aware without moving SQLite's DDL: sqlite_master of
    a fresh upgrade to 0006 equals the snapshot taken from the code before that change."""
    import json
    import sys

    sys.path.insert(0, str(SNAPSHOT.parent))
    try:
        from make_snapshot import snapshot
    finally:
        sys.path.remove(str(SNAPSHOT.parent))
    expected = json.loads(SNAPSHOT.read_text())
    actual = snapshot("0006")
    by_name = {(o["type"], o["name"]): o for o in expected["objects"]}
    for obj in actual["objects"]:
        want = by_name.get((obj["type"], obj["name"]))
        assert want == obj, (
            f"SQLite DDL of {obj['type']} {obj['name']} moved:\n  now:      {obj['sql']!r}\n"
            f"  snapshot: {want and want['sql']!r}\nSQLite's DDL must stay byte-for-byte; "
            "branch on the dialect in the revision instead."
        )
    assert actual == expected


def _pg_diff(url: str) -> list[object]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            ctx = MigrationContext.configure(conn, opts={"compare_type": True})
            return list(compare_metadata(ctx, Base.metadata))
    finally:
        engine.dispose()


def test_models_match_migrated_schema_on_postgresql(registry_url: str) -> None:
    diff = _pg_diff(registry_url)
    assert not diff, (
        "presetdb/store/models.py and the schema the migrations create on PostgreSQL "
        "differ:\n" + "\n".join(f"  {d}" for d in diff)
        + "\nBranch on op.get_bind().dialect.name in the revision (or fix models.py) so "
        "both dialects get the models' schema."
    )


def _pg_declared(url: str) -> dict[str, object]:
    """CHECKs, foreign keys and index definitions as PostgreSQL itself prints them."""
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            constraints = conn.exec_driver_sql(
                "SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid) "
                "FROM pg_constraint WHERE connamespace = 'public'::regnamespace "
                "ORDER BY 1, 2"
            ).fetchall()
            indexes = conn.exec_driver_sql(
                "SELECT tablename, indexname, indexdef FROM pg_indexes "
                "WHERE schemaname = 'public' AND tablename <> 'alembic_version' ORDER BY 1, 2"
            ).fetchall()
        return {
            "constraints": [tuple(r) for r in constraints if r[0] != "alembic_version"],
            "indexes": [tuple(r) for r in indexes],
        }
    finally:
        engine.dispose()


def test_constraints_match_models_on_postgresql(registry_url: str, pg_empty_url: str) -> None:
    """What autogenerate does not compare (CHECKs, FK options, the partial index's WHERE),
    PostgreSQL side: the migrated registry against `create_all` from the models."""
    engine = create_engine(pg_empty_url)
    Base.metadata.create_all(engine)
    engine.dispose()
    migrated, declared = _pg_declared(registry_url), _pg_declared(pg_empty_url)
    assert migrated == declared
    indexdef = {name: sql for _, name, sql in migrated["indexes"]}["uq_presets_active_key"]  # type: ignore[misc]
    assert indexdef.endswith("WHERE ((status)::text = 'active'::text)"), indexdef


def _pg_objects(url: str) -> dict[str, object]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            tables = sorted(inspect(conn).get_table_names())
            views = sorted(inspect(conn).get_view_names())
            counts = {
                t: conn.exec_driver_sql(f'SELECT COUNT(*) FROM "{t}"').scalar()  # sql: reflected names
                for t in tables
            }
        return {"tables": tables, "views": views, "counts": counts, **_pg_declared(url)}
    finally:
        engine.dispose()


def test_postgresql_upgrade_downgrade_to_base_and_back(pg_empty_url: str) -> None:
    """Every revision, seed data included, one step up and down at a time on PostgreSQL:
    each downgrade restores exactly the previous schema and rows."""
    ids = [r.id for r in migrate.revisions()]
    snapshots: dict[str | None, dict[str, object]] = {}
    migrate.upgrade(pg_empty_url, "base")
    snapshots[None] = _pg_objects(pg_empty_url)
    assert snapshots[None]["tables"] == ["alembic_version"] and snapshots[None]["views"] == []
    previous: str | None = None
    for rev in ids:
        assert migrate.upgrade(pg_empty_url, rev) == rev
        snapshots[rev] = _pg_objects(pg_empty_url)
        migrate.downgrade(pg_empty_url, "-1")
        assert migrate.revision_of(pg_empty_url) == previous
        assert _pg_objects(pg_empty_url) == snapshots[previous], f"downgrade of {rev} left differences"
        migrate.upgrade(pg_empty_url, rev)
        assert _pg_objects(pg_empty_url) == snapshots[rev]
        previous = rev
    assert set(Base.metadata.tables) <= set(snapshots[ids[-1]]["tables"])  # type: ignore[arg-type]
    assert snapshots[ids[-1]]["views"] == list(VIEWS)
    assert snapshots[ids[-1]]["counts"]["presets"] > 0  # type: ignore[index]
    assert migrate.downgrade(pg_empty_url, "base") == "base"
    assert _pg_objects(pg_empty_url) == snapshots[None]
    assert migrate.upgrade(pg_empty_url) == ids[-1]
    assert _pg_objects(pg_empty_url) == snapshots[ids[-1]]


def test_views_agree_across_dialects(tmp_path: Path, pg_empty_url: str) -> None:
    """The seed data through both dialects: every audit view returns the same rows."""
    sqlite_db = tmp_path / "seeded.db"
    migrate.upgrade(sqlite_db)
    migrate.upgrade(pg_empty_url)
    for view in VIEWS:
        rows = {}
        for name, url in (("sqlite", f"sqlite:///{sqlite_db}"), ("postgresql", pg_empty_url)):
            engine = create_engine(url)
            try:
                with engine.connect() as conn:
                    result = conn.exec_driver_sql(f"SELECT * FROM {view}")  # sql: constant names
                    columns = list(result.keys())
                    drop = [i for i, c in enumerate(columns) if c in ("preset_id", "created_at", "superseded_by")]
                    rows[name] = sorted(
                        tuple(v for i, v in enumerate(r) if i not in drop) for r in result
                    )
            finally:
                engine.dispose()
        assert rows["sqlite"] == rows["postgresql"], f"{view} differs between the dialects"
        assert rows["sqlite"], f"{view} is empty: the comparison would prove nothing"
