"""The PostgreSQL registry: imports (supersede history, concurrent writers), the CLI with
a registry URL, `sql` refusals on the server, audits/diffs of a registry, and releases
built from it with the same content digest as from a SQLite db holding the same imports.

Every test runs against a real throwaway PostgreSQL server (tests/pg_fixtures.py)."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest
from import_fixtures import RESULTS, edited, registry
from sqlalchemy import create_engine, text
from test_sql_readonly import REFUSED
from typer.testing import CliRunner

from presetdb.audit.readonly import run_sql
from presetdb.cli import app
from presetdb.errors import ReadOnlySQLError, StoreError
from presetdb.offline.build import build_database, content_digest
from presetdb.offline.importers import import_files
from presetdb.store import migrate
from presetdb.store.repository import Repository

CONTESTED = {"dtype": "bfloat16", "hidden": 4096, "num_tokens": 777}


@pytest.fixture
def resolver() -> Any:
    return registry()


def query(url: str, sql: str, **params: Any) -> list[tuple[Any, ...]]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return [tuple(r) for r in conn.execute(text(sql), params)]
    finally:
        engine.dispose()


def results_file(path: Path, *, entries: list[dict[str, Any]], run: dict[str, Any] | None = None) -> Path:
    def edit(doc: dict[str, Any]) -> None:
        doc["entries"] = entries
        if run:
            doc["run"].update(run)

    return edited(RESULTS, path, edit)


def with_block(config: dict[str, Any], size: int) -> dict[str, Any]:
    return {**config, "block_sizes": [size], "num_warps": 4}


def invoke(*args: str) -> Any:
    result = CliRunner().invoke(app, list(args))
    return result


# ------------------------------------------------------------------ imports


def test_import_and_supersede_history(registry_url: str, resolver: Any, tmp_path: Path) -> None:
    report = import_files(registry_url, [RESULTS], resolver=resolver)
    assert report.counts["added"] == 4 and report.ok
    doc = json.loads(RESULTS.read_text())
    entry = doc["entries"][2]
    first = entry["config"]
    changed = with_block(first, 16)
    newer = results_file(tmp_path / "newer.json", entries=[{**entry, "config": changed}])
    report = import_files(registry_url, [newer], resolver=resolver)
    assert report.counts == {"added": 0, "superseded": 1, "unchanged": 0, "invalid": 0}
    # The same file again changes nothing.
    assert import_files(registry_url, [newer], resolver=resolver).counts["unchanged"] == 1
    store = migrate.open_store(registry_url, "ro")
    try:
        with store.read() as session:
            history = Repository(session).history("rms_norm", "nvidia_h100", entry["key"])
    finally:
        store.dispose()
    assert [h.status for h in history] == ["superseded", "active"]
    assert history[0].superseded_by == history[1].id
    assert history[0].config["block_sizes"] == first["block_sizes"]
    assert history[1].config["block_sizes"] == [16]
    (active,) = query(
        registry_url,
        "SELECT COUNT(*) FROM presets WHERE shape_key = :k AND status = 'active'",
        k=json.dumps(entry["key"], sort_keys=True, separators=(",", ":")),
    )
    assert active == (1,)


def test_eight_concurrent_importers_lose_nothing(registry_url: str, resolver: Any, tmp_path: Path) -> None:
    """8 writers at once, overlapping keys and configs, and one key all of them contest:
    no errors, and exactly the rows a one-at-a-time import would leave."""
    doc = json.loads(RESULTS.read_text())
    common = doc["entries"]  # the same 4 keys and configs in every file
    base = common[2]["config"]
    writers = 8
    files = []
    for i in range(writers):
        own = [
            {**common[1], "key": {"dtype": "bfloat16", "hidden": 2048, "num_tokens": 1000 + 2 * i + j}}
            for j in range(2)
        ]  # new keys, a config every file shares
        contested = {**common[2], "key": CONTESTED, "config": with_block(base, 2**i)}
        files.append(results_file(tmp_path / f"w{i}.json", entries=[*common, *own, contested]))
    start = threading.Barrier(writers)
    reports: list[Any] = [None] * writers
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            start.wait()
            reports[i] = import_files(registry_url, [files[i]], resolver=resolver)
        except BaseException as exc:  # noqa: BLE001  (collected and asserted below)
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors
    assert all(r is not None and r.ok for r in reports)
    totals = {k: sum(r.counts[k] for r in reports) for k in ("added", "superseded", "unchanged")}
    # common keys: added once, unchanged 7 times; own keys: 16 added; contested: the
    # first writer adds it, each later one supersedes it.
    assert totals == {"added": 4 + 16 + 1, "superseded": writers - 1, "unchanged": 4 * (writers - 1)}
    counts = dict(
        query(
            registry_url,
            "SELECT status, COUNT(*) FROM presets GROUP BY status",
        )
    )
    assert counts == {"active": 4 + 16 + 1, "superseded": writers - 1}
    expected_configs = {json.dumps(e["config"], sort_keys=True) for e in common}
    expected_configs |= {json.dumps(with_block(base, 2**i), sort_keys=True) for i in range(writers)}
    runner_ups = {
        json.dumps(r["config"], sort_keys=True) for e in common for r in e.get("runners_up", [])
    }
    (configs,) = query(registry_url, "SELECT COUNT(*) FROM configs")[0]
    assert configs == len(expected_configs | runner_ups)
    assert query(registry_url, "SELECT COUNT(*) FROM tuning_runs") == [(writers,)]
    # The contested key's history is one chain: 8 rows, each superseded by the next.
    chain = query(
        registry_url,
        "SELECT id, status, superseded_by FROM presets WHERE shape_key = :k ORDER BY id",
        k=json.dumps(CONTESTED, sort_keys=True, separators=(",", ":")),
    )
    assert len(chain) == writers
    assert [s for _, s, _ in chain] == ["superseded"] * (writers - 1) + ["active"]
    assert [n for _, _, n in chain[:-1]] == [i for i, _, _ in chain[1:]]


def test_overlong_provenance_is_refused_on_both_dialects(
    registry_url: str, fresh_db: Path, resolver: Any, tmp_path: Path
) -> None:
    # The results schema caps lengths; a Helion cache entry's hardware string is free text.
    from presetdb.store.engine import parse_target

    for target in (registry_url, fresh_db):
        store = migrate.open_store(parse_target(str(target)), "rw")
        try:
            too_long = r"host is 201 characters, the column holds at most 200"
            with pytest.raises(StoreError, match=too_long), store.transaction() as session:
                Repository(session).add_run("manual", host="h" * 201)
            with store.read() as session:
                assert Repository(session).list_runs() == []
        finally:
            store.dispose()


# ------------------------------------------------------------------ the CLI


def test_cli_with_a_registry_url(registry_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    result = invoke("db", "current", "--db", registry_url)
    assert result.exit_code == 0 and f"revision {migrate.head()}" in result.output
    result = invoke("db", "check", "--db", registry_url)
    assert result.exit_code == 0 and result.output.rstrip().endswith("ok"), result.output
    result = invoke("import", str(RESULTS), "--db", registry_url)
    assert result.exit_code == 0 and "4 added" in result.output, result.output
    # PRESETDB_REGISTRY is the default database of every command.
    monkeypatch.setenv("PRESETDB_REGISTRY", registry_url)
    result = invoke("list", "--kernel", "rms_norm", "--platform", "nvidia_h100")
    assert result.exit_code == 0 and "4 active preset(s)" in result.output, result.output
    (preset_id,) = query(registry_url, "SELECT id FROM presets WHERE shape_key = '{}'")[0]
    result = invoke("show", str(preset_id))
    assert result.exit_code == 0 and "rms_norm on nvidia_h100" in result.output, result.output
    shape = '{"dtype":"bfloat16","hidden":4096,"num_tokens":20}'
    result = invoke("pick", "--kernel", "rms_norm", "--platform", "nvidia_h100", "--shape", shape,
                    "--db", registry_url)
    assert result.exit_code == 0, result.output
    assert "chosen:     preset" in result.output and "postgresql+psycopg://" in result.output
    result = invoke("audit", "coverage", "--format", "json")
    assert result.exit_code == 0, result.output
    coverage = {(r["kernel"], r["platform"]): r for r in json.loads(result.output)}
    assert coverage[("rms_norm", "nvidia_h100")]["active_presets"] == 4
    assert coverage[("rms_norm", "nvidia_h100")]["has_default"] == 1
    result = invoke("sql", "SELECT COUNT(*) AS n FROM presets WHERE status = :s", "-P", "s=active",
                    "--format", "json")
    assert result.exit_code == 0 and json.loads(result.output) == [{"n": 4}], result.output
    out = tmp_path / "exported"
    result = invoke("export", "--kernel", "rms_norm", "--platform", "nvidia_h100", "--out", str(out))
    assert result.exit_code == 0, result.output
    exported = json.loads((out / "rms_norm" / "nvidia_h100.json").read_text())
    assert len(exported["entries"]) == 4
    release = tmp_path / "release.db"
    result = invoke("build", "--out", str(release), "--from", registry_url)
    assert result.exit_code == 0, result.output
    result = invoke("diff", registry_url, str(release), "--format", "json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["summary"] == {"added": 0, "removed": 0, "changed": 0, "unchanged": 4}


def test_unreachable_registry_is_one_clear_error(tmp_path: Path) -> None:
    url = f"postgresql+psycopg://nobody@/nowhere?host={tmp_path}&port=1"
    result = invoke("list", "--db", url)
    assert result.exit_code != 0
    assert "cannot reach the registry" in str(result.exception) or "cannot reach" in result.output


def test_other_drivers_are_refused() -> None:
    with pytest.raises(StoreError, match=r"postgresql\+psycopg://"):
        migrate.open_store("postgresql+asyncpg://u@h/db")


# ------------------------------------------------------------------ sql on the server

PG_REFUSED = [
    "SELECT set_config('transaction_read_only', 'off', false)",
    "SELECT pg_advisory_lock(1)",
    "SELECT pg_terminate_backend(1)",
    "SELECT pg_read_file('/etc/passwd')",
    "SELECT lo_import('/etc/passwd')",
    "SELECT nextval('presets_id_seq')",
    "SELECT * FROM presets FOR UPDATE",
    "SELECT * INTO copied FROM presets",
    "COPY presets TO STDOUT",
    "TRUNCATE presets",
    "SET transaction_read_only = off",
    "LOCK TABLE presets",
    "CALL some_procedure()",
]


@pytest.mark.parametrize("statement", REFUSED + PG_REFUSED)
def test_sql_refusals_on_the_registry(registry_url: str, statement: str) -> None:
    before = query(registry_url, "SELECT COUNT(*) FROM platforms")
    with pytest.raises(ReadOnlySQLError, match="refused|no SQL statement"):
        run_sql(registry_url, statement)
    assert query(registry_url, "SELECT COUNT(*) FROM platforms") == before
    assert query(registry_url, "SELECT to_regclass('copied')") == [(None,)]


def test_sql_reads_and_the_server_refuses_writes_it_was_not_told_about(registry_url: str) -> None:
    assert run_sql(registry_url, "SELECT COUNT(*) FROM platforms").rows == query(
        registry_url, "SELECT COUNT(*) FROM platforms"
    )
    # A function that writes, called from a SELECT: past every text check, stopped by the
    # READ ONLY transaction.
    admin = create_engine(registry_url)
    with admin.begin() as conn:
        conn.exec_driver_sql(
            "CREATE FUNCTION sneaky() RETURNS int LANGUAGE sql AS "
            "$$ DELETE FROM platform_aliases; SELECT 1 $$"
        )
    admin.dispose()
    before = query(registry_url, "SELECT COUNT(*) FROM platform_aliases")
    with pytest.raises(ReadOnlySQLError, match="read-only transaction"):
        run_sql(registry_url, "SELECT sneaky()")
    assert query(registry_url, "SELECT COUNT(*) FROM platform_aliases") == before != [(0,)]


# ------------------------------------------------------------------ releases


def test_build_from_registry_has_the_digest_of_a_build_from_sqlite(
    registry_url: str, tmp_path: Path, resolver: Any
) -> None:
    doc = json.loads(RESULTS.read_text())
    entry = doc["entries"][3]
    newer = results_file(
        tmp_path / "newer.json", entries=[{**entry, "config": with_block(entry["config"], 8)}],
        run={"seed": 2**32 - 1},  # Helion's largest seed: a BIGINT on PostgreSQL
    )
    sqlite_db = tmp_path / "team.db"
    migrate.upgrade(sqlite_db, seed_data=False)
    for target in (registry_url, sqlite_db):
        import_files(target, [RESULTS], resolver=resolver)
        import_files(target, [newer], resolver=resolver)
    # A rolled-back registry write leaves a gap in the id sequences: the release
    # renumbers, so it does not show.
    engine = create_engine(registry_url)
    with engine.connect() as conn:
        conn.exec_driver_sql("SELECT nextval('presets_id_seq'), nextval('configs_id_seq')")
        conn.rollback()
    engine.dispose()
    from_registry = build_database(tmp_path / "a" / "presets.db", source=registry_url)
    from_sqlite = build_database(tmp_path / "b" / "presets.db", source=sqlite_db)
    assert from_registry.content_digest == from_sqlite.content_digest
    assert from_registry.counts == from_sqlite.counts == {"rms_norm/nvidia_h100": 4}
    assert from_registry.head_revision == migrate.head()
    assert from_registry.source.startswith("postgresql+psycopg://") and from_sqlite.source == str(sqlite_db)
    # The release is a normal shipped file: it opens immutable and holds the history.
    store = migrate.open_store(tmp_path / "a" / "presets.db", "immutable")
    try:
        with store.read() as session:
            repo = Repository(session)
            assert repo.count_presets(status=None) == 5
            assert [r.seed for r in repo.list_runs()] == [1234, 2**32 - 1]
    finally:
        store.dispose()
    # Different content, different digest (the digest is not blind).
    import_files(registry_url, [results_file(tmp_path / "x.json", entries=[doc["entries"][0] | {
        "key": {"dtype": "bfloat16", "hidden": 8192, "num_tokens": 1}}])], resolver=resolver)
    again = build_database(tmp_path / "c" / "presets.db", source=registry_url)
    assert again.content_digest != from_sqlite.content_digest
    assert content_digest(tmp_path / "a" / "presets.db") == from_registry.content_digest
