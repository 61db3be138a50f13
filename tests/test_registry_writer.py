"""`presetdb.offline.registry_writer.write_entry`: one tuned shape into a SQLite file or a
real PostgreSQL registry as it lands (what `presetdb tune --db` calls per shape)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from import_fixtures import RESULTS, registry

from presetdb.errors import ImportValidationError
from presetdb.offline.importers import import_files
from presetdb.offline.registry_writer import write_entry
from presetdb.store import migrate
from presetdb.store.repository import Repository


@pytest.fixture(params=["sqlite", "postgresql"])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        path = tmp_path / "registry.db"
        migrate.upgrade(path, seed_data=False)
        return str(path)
    return str(request.getfixturevalue("registry_url"))


def contents(target: str) -> tuple[list[tuple[Any, ...]], list[Any]]:
    """Active presets (kernel, platform, key, config, timings, run) and the runs."""
    store = migrate.open_store(target, "ro")
    try:
        with store.read() as session:
            repo = Repository(session)
            presets = [
                (p.kernel, p.platform, p.shape_key, p.config, p.latency_ms, p.default_ms, p.run_id,
                 p.kernel_source_hash)
                for p in repo.all_presets(status="active")
            ]
            return sorted(presets, key=repr), repo.list_runs()
    finally:
        store.dispose()


def test_each_shape_lands_as_a_preset_of_one_run(target: str, tmp_path: Path) -> None:
    doc = json.loads(RESULTS.read_text())
    resolver = registry()
    outcomes = []
    for i, entry in enumerate(doc["entries"]):
        # the run's finish time moves with every shape, as a tuner saves it
        run = dict(doc["run"], finished_at=f"2026-11-20T09:0{i}:00.000000Z")
        outcomes.append(write_entry(target, doc["kernel"], entry, run, platform=doc["platform"], resolver=resolver))
    assert outcomes == ["added"] * len(doc["entries"])
    presets, runs = contents(target)
    assert len(presets) == len(doc["entries"])
    (run,) = runs  # one tuning run for the whole file
    assert run.source == "tune" and run.host == doc["run"]["host"] and run.seed == doc["run"]["seed"]
    assert run.finished_at == f"2026-11-20T09:0{len(doc['entries']) - 1}:00.000000Z"
    assert {p[6] for p in presets} == {run.id}

    # The same rows `presetdb import` of the whole file makes.
    imported = tmp_path / "imported.db"
    migrate.upgrade(imported, seed_data=False)
    import_files(imported, [RESULTS], resolver=resolver)
    expected, _ = contents(str(imported))
    assert [p[:6] + p[7:] for p in presets] == [p[:6] + p[7:] for p in expected]

    # Again: unchanged. A new config for a key supersedes the stored one.
    first = doc["entries"][0]
    assert write_entry(target, doc["kernel"], first, doc["run"], platform=doc["platform"], resolver=resolver) == (
        "unchanged"
    )
    changed = dict(first, config=dict(first["config"], num_warps=8))
    assert write_entry(target, doc["kernel"], changed, doc["run"], platform=doc["platform"], resolver=resolver) == (
        "superseded"
    )


def test_a_bad_entry_names_the_field_and_writes_nothing(target: str) -> None:
    doc = json.loads(RESULTS.read_text())
    entry = dict(doc["entries"][1], latency_ms=-1.0, config=dict(doc["entries"][1]["config"], pid_type="sideways"))
    with pytest.raises(ImportValidationError) as info:
        write_entry(target, doc["kernel"], entry, doc["run"], platform=doc["platform"], resolver=registry())
    text = "\n".join(info.value.problems)
    assert "latency_ms: must be > 0" in text and "pid_type" in text
    presets, runs = contents(target)
    assert presets == [] and runs == []


def test_the_platform_comes_from_the_device_name(target: str) -> None:
    doc = json.loads(RESULTS.read_text())
    write_entry(target, "rms_norm", doc["entries"][0], doc["run"], resolver=registry())
    presets, _ = contents(target)
    assert [p[1] for p in presets] == ["nvidia_h100"]  # "NVIDIA H100 80GB HBM3" is its alias


def test_tune_with_a_registry_url_writes_each_shape_as_it_lands(registry_url: str, tmp_path: Path) -> None:
    """`presetdb tune --db postgresql+psycopg://...` (CPU, Triton interpreter): every finished
    shape is in the registry when the run ends, with the results file's provenance."""
    import os

    from typer.testing import CliRunner

    from presetdb.cli import app

    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("tune on CPU needs TRITON_INTERPRET=1")
    out = tmp_path / "tuned.json"
    args = ["tune", "rms_norm", "--grid", "dtype=float32;hidden=64;num_tokens=2,8", "--device", "cpu",
            "--out", str(out), "--seed", "3", "--db", registry_url]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    doc = json.loads(out.read_text())
    presets, runs = contents(registry_url)
    stored = {(p[2], json.dumps(p[3], sort_keys=True)) for p in presets if p[0] == "rms_norm" and p[1] == "cpu"}
    written = {(json.dumps(e["key"], sort_keys=True, separators=(",", ":")), json.dumps(e["config"], sort_keys=True))
               for e in doc["entries"]}
    assert len(doc["entries"]) == 2 and written <= stored, (written, stored)
    assert any(r.source == "tune" and r.seed == 3 for r in runs)


def test_refine_with_a_registry_url_writes_each_shape_as_it_lands(registry_url: str, tmp_path: Path) -> None:
    """`presetdb refine --db postgresql+psycopg://...` (CPU, Triton interpreter): candidates
    come from the registry, and every refined shape is written back into it."""
    import os

    from typer.testing import CliRunner

    from presetdb.cli import app

    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("refine on CPU needs TRITON_INTERPRET=1")
    import_files(registry_url, [RESULTS])
    out = tmp_path / "refined.json"
    args = ["refine", "rms_norm", "--grid", "dtype=bfloat16;hidden=4096;num_tokens=20", "--device", "cpu",
            "--platform", "nvidia_h100", "--k", "2", "--no-check", "--db", registry_url, "--out", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    (entry,) = json.loads(out.read_text())["entries"]
    presets, _ = contents(registry_url)
    served = [p for p in presets if p[2] == '{"dtype":"bfloat16","hidden":4096,"num_tokens":20}']
    assert len(served) == 1 and served[0][1] == "nvidia_h100" and served[0][4] == entry["latency_ms"]
