"""The opening rules: every file that is not a usable presetdb store gets an error that
names the file and says what to do; read-only openings never write."""

from __future__ import annotations

import hashlib
import os
import sqlite3
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import OperationalError

from presetdb.errors import (
    NotADatabaseError,
    PresetDBError,
    ReadOnlyStoreError,
    SchemaTooNewError,
    SchemaTooOldError,
    StoreNotFoundError,
)
from presetdb.offline.build import build_database
from presetdb.store import migrate
from presetdb.store.engine import sqlite_url
from presetdb.store.records import PresetInput
from presetdb.store.repository import Repository

MODES = ("rw", "ro", "immutable")


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def stamp(path: Path, revision: str) -> None:
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE alembic_version SET version_num = ?", (revision,))
    conn.close()


def siblings(path: Path) -> set[str]:
    return {p.name for p in path.parent.iterdir()}


@pytest.mark.parametrize("mode", MODES)
def test_missing_file(tmp_path: Path, mode: str) -> None:
    path = tmp_path / "nowhere" / "presets.db"
    with pytest.raises(StoreNotFoundError) as info:
        migrate.open_store(path, mode)  # type: ignore[arg-type]
    message = str(info.value)
    assert str(path) in message
    assert f"presetdb db upgrade --db {path}" in message
    assert not path.exists() and not path.parent.exists(), (
        "opening must not create the file"
    )


def test_zero_length_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.db"
    path.touch()
    with pytest.raises(NotADatabaseError) as info:
        migrate.open_store(path, "ro")
    message = str(info.value)
    assert (
        str(path) in message and "empty" in message and "presetdb db upgrade" in message
    )
    assert path.stat().st_size == 0
    # ... and `db upgrade` turns it into a store
    migrate.upgrade(path, seed_data=False)
    migrate.open_store(path, "ro").dispose()


@pytest.mark.parametrize("mode", MODES)
def test_random_bytes(tmp_path: Path, mode: str) -> None:
    path = tmp_path / "noise.db"
    path.write_bytes(os.urandom(4096))
    before = sha(path)
    with pytest.raises(NotADatabaseError) as info:
        migrate.open_store(path, mode)  # type: ignore[arg-type]
    message = str(info.value)
    assert str(path) in message and "not a SQLite database" in message
    with pytest.raises(NotADatabaseError):
        migrate.upgrade(path)
    with pytest.raises(NotADatabaseError):
        migrate.check(path)
    assert sha(path) == before


def test_text_file_with_sqlite_suffix(tmp_path: Path) -> None:
    path = tmp_path / "notes.db"
    path.write_text("kernel,platform\nrms_norm,nvidia_h100\n")
    with pytest.raises(NotADatabaseError, match="not a SQLite database"):
        migrate.open_store(path)


def test_sqlite_file_of_another_application(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE songs (id INTEGER PRIMARY KEY, title TEXT)")
        conn.execute("CREATE TABLE albums (id INTEGER PRIMARY KEY)")
        conn.execute("INSERT INTO songs (title) VALUES ('x')")
    conn.close()
    before = sha(path)
    for mode in MODES:
        with pytest.raises(NotADatabaseError) as info:
            migrate.open_store(path, mode)  # type: ignore[arg-type]
        message = str(info.value)
        assert str(path) in message and "not a presetdb database" in message
        assert "albums" in message and "songs" in message
    # none of the commands that write may touch it
    with pytest.raises(NotADatabaseError):
        migrate.upgrade(path)
    with pytest.raises(NotADatabaseError):
        migrate.downgrade(path, "base")
    assert sha(path) == before, "another application's file was modified"
    assert siblings(path) == {"other.db"}


def test_schema_older_than_the_package(fresh_db: Path) -> None:
    old = migrate.revisions()[0].id
    if old == migrate.schema_head():
        pytest.skip("only one schema revision")
    stamp(fresh_db, old)
    for mode in MODES:
        with pytest.raises(SchemaTooOldError) as info:
            migrate.open_store(fresh_db, mode)  # type: ignore[arg-type]
        message = str(info.value)
        assert f"presetdb db upgrade --db {fresh_db}" in message
        assert old in message and migrate.schema_head() in message
    report = migrate.check(fresh_db)
    assert not report.ok and "presetdb db upgrade" in (report.schema_problem or "")


def test_database_at_base_revision_says_upgrade(fresh_db: Path) -> None:
    migrate.downgrade(fresh_db, "base")
    with pytest.raises(SchemaTooOldError) as info:
        migrate.open_store(fresh_db)
    assert f"presetdb db upgrade --db {fresh_db}" in str(info.value)


def test_newer_or_unknown_revision(fresh_db: Path) -> None:
    stamp(fresh_db, "9999")
    for mode in MODES:
        with pytest.raises(SchemaTooNewError) as info:
            migrate.open_store(fresh_db, mode)  # type: ignore[arg-type]
        message = str(info.value)
        assert str(fresh_db) in message and "9999" in message
        assert "upgrade the package" in message and "pip install -U presetdb" in message
        assert "db upgrade --db" not in message, (
            "a newer db must not be 'upgraded' by an old package"
        )
    before = sha(fresh_db)
    with pytest.raises(SchemaTooNewError):
        migrate.upgrade(fresh_db)
    with pytest.raises(SchemaTooNewError):
        migrate.downgrade(fresh_db, "base")
    assert sha(fresh_db) == before
    report = migrate.check(fresh_db)
    assert not report.ok and "9999" in (report.schema_problem or "")


def test_errors_share_one_root(tmp_path: Path) -> None:
    with pytest.raises(PresetDBError):
        migrate.open_store(tmp_path / "missing.db")


@pytest.mark.parametrize("mode", ["ro", "immutable"])
def test_write_on_read_only_store(fresh_db: Path, mode: str) -> None:
    store = migrate.open_store(fresh_db, mode)  # type: ignore[arg-type]
    try:
        assert not store.writable
        with pytest.raises(ReadOnlyStoreError) as info, store.transaction() as session:
            Repository(session).ensure_kernel("k", {"fields": []})
        assert str(fresh_db) in str(info.value) and mode in str(info.value)
        # even a raw write through a read session is refused by SQLite itself
        with (
            store.read() as session,
            pytest.raises(OperationalError, match="readonly|read-only"),
        ):
            session.execute(
                text(
                    "INSERT INTO kernels (name, key_schema, description, created_at) VALUES ('k', '{}', '', 'x')"
                )
            )
    finally:
        store.dispose()
    store = migrate.open_store(fresh_db, "ro")
    with store.read() as session:
        assert Repository(session).list_kernels() == []
    store.dispose()


@pytest.mark.parametrize(
    "name", ["my presets #1?.db", "a%20b?mode=rw&x=#y.db", "ünïcode presets.db"]
)
def test_path_with_url_characters(tmp_path: Path, name: str) -> None:
    folder = tmp_path / "dir with space #2 ?q=1"
    folder.mkdir()
    path = folder / name
    migrate.upgrade(path, seed_data=False)
    assert path.is_file()
    assert migrate.revision_of(path) == migrate.head()
    store = migrate.open_store(path, "rw")
    try:
        with store.transaction() as session:
            repo = Repository(session)
            repo.ensure_kernel("k", {"fields": [{"name": "n", "policy": "ceil"}]})
            repo.upsert_preset(
                "k", "cpu", repo.add_run("manual").id, PresetInput({"n": 1}, {"v": 1})
            )
    finally:
        store.dispose()
    for mode in ("ro", "immutable"):
        store = migrate.open_store(path, mode)  # type: ignore[arg-type]
        try:
            with store.read() as session:
                assert [
                    p.config for p in Repository(session).active_presets("k", "cpu")
                ] == [{"v": 1}]
        finally:
            store.dispose()
    # nothing was created next to it under a truncated or unquoted name
    assert {n for n in siblings(path) if not n.endswith(("-wal", "-shm"))} == {name}
    assert migrate.check(path).ok


@pytest.mark.parametrize(
    ("mode", "suffix"), [("rw", ""), ("ro", "?mode=ro"), ("immutable", "?immutable=1")]
)
def test_url_is_quoted(mode: str, suffix: str) -> None:
    url = sqlite_url(Path("/tmp/a b#c?d%.db"), mode)  # type: ignore[arg-type]
    # what pysqlite is handed: a file: URI with the path percent-quoted
    args, kwargs = create_engine(url).dialect.create_connect_args(url)
    assert args == ["file:/tmp/a%20b%23c%3Fd%25.db" + suffix]
    assert kwargs["uri"] is True


def test_immutable_open_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "ship" / "presets.db"
    build_database(path)  # a shippable rollback-journal file
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    conn.close()
    before_bytes, before_mtime = sha(path), path.stat().st_mtime_ns
    before_files = siblings(path)

    for _ in range(2):
        store = migrate.open_store(path, "immutable")
        try:
            with store.read() as session:
                repo = Repository(session)
                assert repo.list_platforms()
                repo.all_presets()
                session.execute(text("SELECT * FROM v_coverage")).all()
            assert store.data_version() >= 0
        finally:
            store.dispose()

    assert siblings(path) == before_files, (
        "immutable open left -wal/-shm/-journal files"
    )
    assert sha(path) == before_bytes
    assert path.stat().st_mtime_ns == before_mtime


def test_immutable_open_of_read_only_file(tmp_path: Path) -> None:
    """A shipped file may sit on a read-only mount: immutable opening must still work."""
    path = tmp_path / "ro" / "presets.db"
    build_database(path)
    path.chmod(0o444)
    path.parent.chmod(0o555)
    try:
        if os.access(path, os.W_OK):
            pytest.skip("running as a user that ignores file permissions")
        store = migrate.open_store(path, "immutable")
        try:
            with store.read() as session:
                assert Repository(session).list_platforms()
        finally:
            store.dispose()
    finally:
        path.parent.chmod(0o755)
        path.chmod(0o644)
