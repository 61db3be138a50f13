"""The embedded default db ships inside the package: it is the packaged migrations built
into one file (`presetdb build --embedded`), and must stay exactly that."""

from __future__ import annotations

import json
from pathlib import Path

from sqlalchemy import text

from presetdb.offline.build import build_database, content_digest
from presetdb.store import default_db, migrate


def test_the_embedded_db_equals_a_fresh_build(tmp_path: Path) -> None:
    embedded = default_db.default_db_path()
    fresh = build_database(tmp_path / "fresh.db")
    assert content_digest(embedded) == fresh.content_digest, (
        "presetdb/data/default.db is stale: the migrations or seed data changed. "
        "Run `presetdb build --embedded` and commit presetdb/data/default.db"
    )
    assert migrate.revision_of(embedded) == migrate.head()
    manifest = json.loads((embedded.parent / "default.db.manifest.json").read_text())
    assert manifest["content_digest"] == fresh.content_digest and manifest["path"] == "default.db"


def test_the_embedded_db_is_a_rollback_journal_file_opened_immutable() -> None:
    embedded = default_db.default_db_path()
    with embedded.open("rb") as fh:
        header = fh.read(20)
    assert header[18:20] == b"\x01\x01", "file format 1/1: a rollback journal, not WAL"
    before = embedded.stat().st_mtime_ns
    store = migrate.open_store(embedded, "immutable")
    try:
        with store.read() as session:
            assert session.execute(text("SELECT count(*) FROM presets")).scalar_one() > 0
    finally:
        store.dispose()
    assert embedded.stat().st_mtime_ns == before
    assert not Path(str(embedded) + "-wal").exists() and not Path(str(embedded) + "-journal").exists()
