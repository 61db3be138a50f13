"""Datasette serves the seeded db immutable with the generated metadata: every canned
query (presetdb/audit/sql/*.sql) answers with rows, and column descriptions from the models
show on table pages. Uses datasette's own test client (no server, no network)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from audit_fixtures import seed_example_db, sha256_file, ship_copy
from datasette.app import Datasette

from presetdb import audit

# Values for canned queries that take parameters (the others run as they are).
QUERY_PARAMS = {"stale": {"helion_version": "9.9.9"}, "history": {"kernel": "matmul"}}


@pytest.fixture(scope="module")
def metadata() -> dict[str, Any]:
    return audit.datasette_metadata("presets")


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("datasette")
    # Named presets.db: datasette names the database after the file's stem.
    return ship_copy(seed_example_db(folder / "example.db"), folder / "presets.db")


def _get_all(path: Path, metadata: dict[str, Any], urls: list[str]) -> list[tuple[int, str]]:
    async def fetch() -> list[tuple[int, str]]:
        ds = Datasette(immutables=[str(path)], metadata=metadata)
        await ds.invoke_startup()
        assert not ds.get_database("presets").is_mutable
        out = []
        for url in urls:
            response = await ds.client.get(url)
            out.append((response.status_code, response.text))
        return out

    return asyncio.run(fetch())


def test_metadata_holds_every_audit(metadata: dict[str, Any]) -> None:
    queries = metadata["databases"]["presets"]["queries"]
    assert set(queries) == set(audit.audits())
    for name, query in queries.items():
        canned = audit.get_audit(name)
        assert query["sql"] == canned.sql and query["params"] == list(canned.params)
        assert query["title"] == canned.title and canned.purpose in query["description"]
    json.dumps(metadata)  # serialisable as the metadata file


def test_every_canned_query_serves_rows(served: Path, metadata: dict[str, Any]) -> None:
    before = sha256_file(served)
    names = list(audit.audits())
    urls = [
        f"/presets/{name}.json?" + urlencode({"_shape": "array", **QUERY_PARAMS.get(name, {})})
        for name in names
    ]
    for name, (status, body) in zip(names, _get_all(served, metadata, urls), strict=True):
        assert status == 200, (name, body[:300])
        rows = json.loads(body)
        assert rows, f"canned query {name} returned no rows"
        assert list(rows[0]) == list(audit.get_audit(name).columns), name
    assert sha256_file(served) == before


def test_canned_query_parameters_filter(served: Path, metadata: dict[str, Any]) -> None:
    ((status, body),) = _get_all(
        served,
        metadata,
        ["/presets/history.json?_shape=array&kernel=rms_norm&platform=nvidia_h200"],
    )
    assert status == 200
    assert {(r["kernel"], r["platform"]) for r in json.loads(body)} == {("rms_norm", "nvidia_h200")}


def test_column_descriptions_on_table_and_view_pages(
    served: Path, metadata: dict[str, Any]
) -> None:
    tables = metadata["databases"]["presets"]["tables"]
    latency = tables["presets"]["columns"]["latency_ms"]
    assert latency == "the stored config, median"  # the comment in presetdb/store/models.py
    assert tables["v_active_presets"]["columns"]["latency_ms"] == latency
    pages = _get_all(served, metadata, ["/presets/presets", "/presets/v_active_presets"])
    for status, html in pages:
        assert status == 200 and latency in html


def test_schema_docs_follow_the_models() -> None:
    from presetdb.store.models import Base

    tables, columns = audit.schema_docs()
    assert set(columns) == set(Base.metadata.tables)
    for name, table in Base.metadata.tables.items():
        assert set(columns[name]) == {c.name for c in table.columns}, name
    assert tables["presets"].startswith("The config chosen for one (kernel, platform, shape key)")
    assert columns["presets"]["tuning_seconds"] == "wall time of the search"  # trailing comment
    assert "how shape keys are matched" in columns["kernels"]["key_schema"]  # comment above
    assert columns["presets"]["run_id"] == "references tuning_runs.id"  # from the schema
    assert "import-vllm" in columns["tuning_runs"]["source"]  # RUN_SOURCES, expanded


def test_view_columns_are_described(metadata: dict[str, Any]) -> None:
    tables = metadata["databases"]["presets"]["tables"]
    expected = {
        "v_active_presets": [
            "preset_id",
            "kernel",
            "platform",
            "shape_key",
            "config",
            "config_sha256",
            "latency_ms",
            "tuned_at",
            "source",
        ],
        "v_preset_history": ["preset_id", "kernel", "status_reason", "superseded_by"],
        "v_coverage": ["kernel", "platform", "active_presets", "has_default"],
    }
    for view, names in expected.items():
        assert tables[view]["description"], view
        for name in names:
            assert tables[view]["columns"].get(name), (view, name)
