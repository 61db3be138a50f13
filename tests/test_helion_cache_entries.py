"""Helion cache entries (`helion_cache_entries`) through `presetdb import --format
helion-cache` and the remote-cache backend, on a SQLite file and a real PostgreSQL
registry: what a row is, that both writers agree on it, bad entries, releases."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from import_fixtures import BEST_CONFIG, CACHE_KEY, registry

from presetdb.errors import ImportValidationError, StoreError
from presetdb.offline.build import build_database, content_digest
from presetdb.offline.importers import import_files
from presetdb.store import helion_cache, migrate

KEY = BEST_CONFIG.stem  # the sample is named by its cache key, as Helion names them
WRITER_COLUMNS = ("source", "source_file", "host", "torch_version", "triton_version",
                  "helion_version", "presetdb_version", "created_at", "updated_at", "id", "config_id")


@pytest.fixture(params=["sqlite", "postgresql"])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        path = tmp_path / "cache.db"
        migrate.upgrade(path, seed_data=False)
        return str(path)
    return str(request.getfixturevalue("registry_url"))


def entries(target: str) -> list[dict[str, Any]]:
    from sqlalchemy import select

    from presetdb.store.models import Config, HelionCacheEntry

    store = migrate.open_store(target, "ro")
    try:
        with store.read() as session:
            query = select(HelionCacheEntry.__table__, Config.config_json).join(
                Config, Config.id == HelionCacheEntry.config_id
            )
            return [dict(r._mapping) for r in session.execute(query.order_by(HelionCacheEntry.id))]
    finally:
        store.dispose()


def table_count(target: str, table: str) -> int:
    from sqlalchemy import text

    store = migrate.open_store(target, "ro")
    try:
        with store.read() as session:
            return int(session.execute(text(f"SELECT count(*) FROM {table}")).scalar_one())  # sql: test constant
    finally:
        store.dispose()


def test_a_cache_file_without_key_is_a_cache_entry_only(target: str, tmp_path: Path) -> None:
    file = tmp_path / BEST_CONFIG.name
    shutil.copy(BEST_CONFIG, file)
    text = file.read_text()
    data = json.loads(text)
    report = import_files(target, [file], resolver=registry())
    assert report.cache_entries == {"added": 1, "replaced": 0, "unchanged": 0}
    assert report.counts["added"] == 0 and "Helion cache entries: 1 added" in report.summary()
    (row,) = entries(target)
    fields = data["key"]["fields"]
    assert row["cache_key"] == KEY and row["entry_json"] == text
    assert (row["hardware"], row["runtime_name"], row["backend"]) == (
        fields["hardware"], fields["runtime_name"], fields["backend"]
    )
    assert row["kernel_source_hash"] == fields["kernel_source_hash"]
    assert row["specialization_key"] == fields["specialization_key"]
    assert row["config_spec_hash"] == fields["config_spec_hash"]
    assert json.loads(row["key_fields"]) == fields and row["key_type"] == "LooseAutotuneCacheKey"
    assert json.loads(row["config_json"]) == json.loads(data["config"])
    assert (row["source"], row["source_file"], row["helion_version"]) == ("import-helion-cache", file.name, None)
    # no kernel, no preset, no tuning run: a plain Helion kernel's entry needs none
    assert [table_count(target, t) for t in ("presets", "tuning_runs", "kernels")] == [0, 0, 0]

    again = import_files(target, [file], resolver=registry())
    assert again.cache_entries["unchanged"] == 1
    config = json.loads(data["config"])
    data["config"] = json.dumps(dict(config, num_warps=4), indent=2)
    file.write_text(json.dumps(data, indent=2))
    changed = import_files(target, [file], resolver=registry())
    assert changed.cache_entries["replaced"] == 1
    (row2,) = entries(target)
    assert row2["id"] == row["id"] and row2["created_at"] == row["created_at"]
    assert row2["updated_at"] >= row["updated_at"] and json.loads(row2["config_json"])["num_warps"] == 4


def test_with_key_the_file_also_makes_a_preset(target: str, tmp_path: Path) -> None:
    data = json.loads(BEST_CONFIG.read_text())
    data["key"]["fields"]["kernel_source_hash"] = registry().get("rms_norm").helion_source_hash()
    file = tmp_path / BEST_CONFIG.name
    file.write_text(json.dumps(data, indent=2))
    report = import_files(target, [file], key=CACHE_KEY, resolver=registry())
    assert report.counts["added"] == 1 and report.cache_entries["added"] == 1
    assert table_count(target, "presets") == 1 and len(entries(target)) == 1


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        (lambda d: d["key"]["fields"].pop("hardware"), "key.fields.hardware: missing"),
        (lambda d: d["key"].pop("type"), "key.type: missing"),
        (lambda d: d["key"]["fields"].update(best_of_k=1), "key.fields: values must be strings"),
        (lambda d: d.update(config='["not", "an object"]'), "config: not a JSON object"),
        (lambda d: d.update(config={"block_sizes": [2]}), "config: must be Config.to_json()'s JSON string"),
    ],
)
def test_a_bad_entry_names_file_and_field_and_writes_nothing(
    target: str, tmp_path: Path, edit: Any, field: str
) -> None:
    data = json.loads(BEST_CONFIG.read_text())
    edit(data)
    file = tmp_path / BEST_CONFIG.name
    file.write_text(json.dumps(data))
    with pytest.raises(ImportValidationError) as info:
        import_files(target, [file], resolver=registry())
    assert any(p.startswith(f"{file.name}: row 1 (config): ") and field in p for p in info.value.problems), (
        info.value.problems
    )
    assert entries(target) == []


def test_the_backend_and_the_importer_agree_on_a_row(target: str, tmp_path: Path) -> None:
    from presetdb.helion import remote_cache

    text = BEST_CONFIG.read_text()
    imported = tmp_path / "imported.db"
    migrate.upgrade(imported, seed_data=False)
    import_files(imported, [BEST_CONFIG], resolver=registry())

    remote_cache.reset()
    pytest.MonkeyPatch().setenv("PRESETDB_REMOTE_CACHE_DB", target)
    try:
        backend = remote_cache.Backend()
        backend.put(KEY, text)
        assert backend.get(KEY) == text
    finally:
        remote_cache.reset()
    (put,), (read,) = entries(target), entries(str(imported))
    assert {k: v for k, v in put.items() if k not in WRITER_COLUMNS} == {
        k: v for k, v in read.items() if k not in WRITER_COLUMNS
    }
    assert put["source"] == "remote-cache" and put["host"] and put["helion_version"]


def test_overlong_key_fields_are_refused_on_both_dialects(target: str) -> None:
    data = json.loads(BEST_CONFIG.read_text())
    data["key"]["fields"]["hardware"] = "H" * 300
    entry = helion_cache.parse_entry(KEY, json.dumps(data), where="test entry")
    store = migrate.open_store(target, "rw")
    try:
        with (
            pytest.raises(StoreError, match="hardware is 300 characters, the column holds at most 200"),
            store.transaction() as session,
        ):
            helion_cache.store_entry(session, entry, "remote-cache")
    finally:
        store.dispose()
    assert entries(target) == []


def test_a_release_built_from_the_registry_carries_the_entries(
    registry_url: str, tmp_path: Path
) -> None:
    sqlite_db = tmp_path / "same.db"
    migrate.upgrade(sqlite_db, seed_data=False)
    second = tmp_path / ("0" * 63 + "1.best_config")
    data = json.loads(BEST_CONFIG.read_text())
    data["key"]["fields"]["hardware"] = "NVIDIA H200"
    second.write_text(json.dumps(data, indent=2))
    for db in (registry_url, str(sqlite_db)):
        import_files(db, [BEST_CONFIG, second], resolver=registry())
    from_registry = build_database(tmp_path / "a.db", source=registry_url)
    from_sqlite = build_database(tmp_path / "b.db", source=sqlite_db)
    assert [r["cache_key"] for r in entries(str(tmp_path / "a.db"))] == [KEY, second.stem]
    assert from_registry.content_digest == from_sqlite.content_digest == content_digest(tmp_path / "b.db")
