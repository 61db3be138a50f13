"""`presetdb sql` and every audit connection are read-only: writes, ATTACH, writing
pragmas and chained statements are refused with ReadOnlySQLError, and the file's bytes
(and its directory) are unchanged afterwards, for a shipped rollback-journal file, a
WAL-mode file, a WAL file with a live writer, and a `presetdb build` output."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from audit_fixtures import seed_example_db, sha256_file, ship_copy
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from presetdb.audit.readonly import ReadOnlyDB, _Guard, run_sql, split_statements
from presetdb.cli import app
from presetdb.errors import ReadOnlySQLError
from presetdb.offline.build import build_database

REFUSED = [
    "INSERT INTO kernels (name, key_schema, description, created_at) VALUES ('x', '{}', '', '')",
    (
        "insert into preset_misses (kernel, platform, features, reason, count, first_seen_at, "
        "last_seen_at) values ('k', 'p', '{}', 'r', 1, '', '') returning id"
    ),
    "UPDATE presets SET latency_ms = 1",
    "DELETE FROM presets",
    "REPLACE INTO configs (sha256, config_json, created_at) VALUES ('a', '{}', '')",
    "WITH x AS (SELECT 1) DELETE FROM presets",
    "WITH x AS (SELECT 1) INSERT INTO kernels SELECT * FROM kernels",
    "EXPLAIN DELETE FROM presets",
    "DROP TABLE presets",
    "DROP VIEW v_coverage",
    "CREATE TABLE t (x)",
    "CREATE TEMP TABLE t (x)",
    "CREATE VIEW v AS SELECT 1",
    "CREATE INDEX ix_latency ON presets (latency_ms)",
    "ALTER TABLE presets ADD COLUMN x",
    "ATTACH DATABASE ':memory:' AS other",
    "ATTACH 'other.db' AS other",
    "DETACH main",
    "PRAGMA writable_schema=ON",
    "PRAGMA writable_schema = 1",
    "pragma query_only = off",
    "PRAGMA journal_mode=DELETE",
    "PRAGMA user_version=7",
    "PRAGMA main.user_version = 7",
    "PRAGMA foreign_keys=OFF",
    "VACUUM",
    "VACUUM INTO 'copy.db'",
    "REINDEX",
    "ANALYZE",
    "BEGIN",
    "COMMIT",
    "SAVEPOINT s1",
    "SELECT 1; DELETE FROM presets",
    "SELECT 1; SELECT 2",
    "SELECT 1;\n-- a comment\nSELECT 2;",
    "SELECT load_extension('libevil')",
    "",
    "  ;  ; ",
    "-- only a comment",
]

ALLOWED = {
    "SELECT COUNT(*) FROM presets": [(13,)],
    "select kernel from v_coverage order by 1;": [
        ("matmul",),
        ("rms_norm",),
        ("rms_norm",),
        ("silu_mul",),
    ],
    "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 3) SELECT i FROM n": [
        (1,),
        (2,),
        (3,),
    ],
    "VALUES (1, 'a')": [(1, "a")],
    "SELECT ';' AS semi -- DELETE FROM presets; still one statement": [(";",)],
    "/* DROP TABLE presets; */ SELECT 'UPDATE presets SET x = 1'": [("UPDATE presets SET x = 1",)],
    "SELECT COUNT(*) FROM pragma_table_info('presets')": [(20,)],
    "SELECT COUNT(*) FROM json_each((SELECT config FROM v_active_presets WHERE preset_id = 1))": [
        (3,)
    ],
    "PRAGMA user_version": [(0,)],
}


@pytest.fixture(scope="module")
def example(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return seed_example_db(tmp_path_factory.mktemp("example") / "example.db")


def _files(folder: Path) -> dict[str, str]:
    return {p.name: sha256_file(p) for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.fixture(params=["shipped", "wal", "built"])
def db_file(request: pytest.FixtureRequest, example: Path, tmp_path: Path) -> Path:
    """A file in a folder of its own, in one of the ways presetdb files exist."""
    folder = tmp_path / request.param
    folder.mkdir()
    if request.param == "shipped":  # rollback journal, as `presetdb build` writes it
        return ship_copy(example, folder / "presets.db")
    if request.param == "wal":  # a user overlay / import target: WAL mode, no writer
        path = folder / "presets.db"
        path.write_bytes(example.read_bytes())
        assert path.read_bytes()[18:20] == b"\x02\x02"  # header: WAL mode
        return path
    path = folder / "presets.db"
    build_database(path)
    (folder / "presets.db.manifest.json").unlink()
    return path


@pytest.mark.parametrize("statement", REFUSED)
def test_refused_and_file_unchanged(db_file: Path, statement: str) -> None:
    before = _files(db_file.parent)
    with pytest.raises(ReadOnlySQLError, match="refused|no SQL statement"):
        run_sql(db_file, statement)
    assert _files(db_file.parent) == before


def test_allowed_statements_read(example: Path, tmp_path: Path) -> None:
    path = ship_copy(example, tmp_path / "presets.db")
    before = _files(tmp_path)
    for statement, rows in ALLOWED.items():
        assert run_sql(path, statement).rows == rows, statement
    assert run_sql(path, "SELECT :k || '!' AS shout", {"k": "hi"}).rows == [("hi!",)]
    assert _files(tmp_path) == before


def test_immutable_open_makes_no_sidecar_files(example: Path, tmp_path: Path) -> None:
    path = tmp_path / "presets.db"
    path.write_bytes(example.read_bytes())  # WAL mode in the header
    with ReadOnlyDB(path) as db:
        assert db.mode == "immutable"
        assert db.query("SELECT COUNT(*) FROM kernels").rows == [(3,)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["presets.db"]


@pytest.fixture
def live_writer(example: Path, tmp_path: Path) -> Iterator[tuple[Path, sqlite3.Connection]]:
    """A WAL file with a writer holding it open and a commit still in the -wal file."""
    path = tmp_path / "live.db"
    path.write_bytes(example.read_bytes())
    writer = sqlite3.connect(path, isolation_level=None)
    writer.execute("PRAGMA wal_autocheckpoint=0")  # keep the commit out of the main file
    writer.execute(
        "INSERT INTO preset_misses (kernel, platform, features, reason, count, first_seen_at, "
        "last_seen_at) VALUES ('matmul', 'nvidia_h100', '{\"m\":1}', 'no-match', 1, 'a', 'b')"
    )
    yield path, writer
    writer.close()


def test_wal_with_live_writer_sees_commits_and_changes_nothing(
    live_writer: tuple[Path, sqlite3.Connection],
) -> None:
    path, _writer = live_writer
    wal = Path(f"{path}-wal")
    assert wal.exists() and wal.stat().st_size > 0
    main_before, wal_before = sha256_file(path), sha256_file(wal)
    with ReadOnlyDB(path) as db:
        assert db.mode == "ro"  # immutable would miss the commit in the -wal file
        assert db.query("SELECT COUNT(*) FROM preset_misses").rows == [(5,)]
        for statement in ("DELETE FROM preset_misses", "PRAGMA wal_checkpoint(TRUNCATE)"):
            with pytest.raises(ReadOnlySQLError):
                db.query(statement)
    assert sha256_file(path) == main_before
    assert sha256_file(wal) == wal_before


def test_each_layer_refuses_on_its_own(example: Path, tmp_path: Path) -> None:
    path = ship_copy(example, tmp_path / "presets.db")
    before = sha256_file(path)
    # The authorizer alone, on a writable connection.
    conn = sqlite3.connect(path, isolation_level=None)
    guard = _Guard()
    conn.set_authorizer(guard)
    for statement in (
        "DELETE FROM presets",
        "ATTACH ':memory:' AS x",
        "PRAGMA writable_schema=ON",
        "CREATE TEMP TABLE t (x)",
        "PRAGMA query_only=OFF",
    ):
        with pytest.raises(sqlite3.DatabaseError, match="not authorized"):
            conn.execute(statement)
    assert any("DELETE" in d for d in guard.denied)
    conn.close()
    # Read-only open + query_only alone, with the authorizer removed.
    with ReadOnlyDB(path) as db:
        db.conn.set_authorizer(None)
        assert db.conn.execute("PRAGMA query_only").fetchone() == (1,)
        with pytest.raises(sqlite3.OperationalError, match="readonly|read-only"):
            db.conn.execute("DELETE FROM presets")
    assert sha256_file(path) == before


def test_error_names_what_was_refused(example: Path, tmp_path: Path) -> None:
    path = ship_copy(example, tmp_path / "presets.db")
    with pytest.raises(ReadOnlySQLError, match="PRAGMA writable_schema = ON"):
        run_sql(path, "PRAGMA writable_schema = ON")
    with pytest.raises(ReadOnlySQLError, match="2 statements"):
        run_sql(path, "SELECT 1; DROP TABLE presets")
    with pytest.raises(ReadOnlySQLError, match="ATTACH"):
        run_sql(path, "ATTACH 'x.db' AS x")
    with pytest.raises(ReadOnlySQLError, match="DELETE"):
        run_sql(path, "WITH a AS (SELECT 1) DELETE FROM presets")


def test_cli_sql_refuses_with_exit_1_and_clear_message(example: Path, tmp_path: Path) -> None:
    path = ship_copy(example, tmp_path / "presets.db")
    before = sha256_file(path)
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "from presetdb.cli import main; main()",
            "sql",
            "DELETE FROM presets",
            "--db",
            str(path),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
        timeout=60,
        check=False,
    )
    assert proc.returncode == 1
    assert "error:" in proc.stderr and "refused: DELETE" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert sha256_file(path) == before


def test_cli_sql_formats(example: Path, tmp_path: Path) -> None:
    path = ship_copy(example, tmp_path / "presets.db")
    runner = CliRunner()
    query = "SELECT kernel, COUNT(*) AS n FROM v_active_presets GROUP BY kernel ORDER BY kernel"
    csv_out = runner.invoke(app, ["sql", query, "--db", str(path), "--format", "csv"])
    assert csv_out.exit_code == 0, csv_out.output
    assert csv_out.output.splitlines() == ["kernel,n", "matmul,2", "rms_norm,7", "silu_mul,1"]
    json_out = runner.invoke(
        app, ["sql", "SELECT :x AS x", "--db", str(path), "-f", "json", "--param", "x=7"]
    )
    assert json_out.exit_code == 0, json_out.output
    assert '"x": "7"' in json_out.output
    missing = runner.invoke(app, ["sql", "SELECT :x", "--db", str(path)])
    assert missing.exit_code != 0 and "--param for: x" in str(missing.exception)


def test_sql_on_missing_file_says_so(tmp_path: Path) -> None:
    with pytest.raises(Exception, match="no such database file"):
        run_sql(tmp_path / "nope.db", "SELECT 1")
    assert not (tmp_path / "nope.db").exists()


# Statements whose text holds `;` inside strings, identifiers and comments.
_piece = st.sampled_from(
    [
        "SELECT 1",
        "SELECT ';'",
        'SELECT "a;b" FROM t',
        "SELECT [x;y] FROM t",
        "SELECT 1 -- ; trailing\n",
        "SELECT /* ; */ 2",
        "SELECT 'it''s;'",
    ]
)


@settings(max_examples=200, deadline=None)
@given(st.lists(_piece, min_size=1, max_size=5))
def test_split_counts_statements(pieces: list[str]) -> None:
    assert len(split_statements(";\n".join(pieces))) == len(pieces)
    assert len(split_statements(";".join(pieces) + ";  ")) == len(pieces)
