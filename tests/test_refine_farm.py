"""`presetdb refine` on a real local Ray cluster (2 CPUs, 2 fake H200 GPUs): the driver
reads the nearest stored configs from a real db, each shape is a Ray task in a fresh
worker process that compiles and times them with real Helion in the Triton interpreter,
and the results file carries each worker's provenance. Skipped with the install command
without Ray (failed in CI)."""

from __future__ import annotations

import json
import os
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from import_fixtures import active, load, registry
from ray_fixtures import local_cluster, require_ray
from refine_work import OriginTimer
from typer.testing import CliRunner

from presetdb.cli import app
from presetdb.errors import FarmError
from presetdb.keys import canonical_key
from presetdb.offline import farm_ray
from presetdb.offline import refine as refining
from presetdb.offline.importers import import_files, presetdb_results
from presetdb.store import migrate

require_ray()

F32 = {"dtype": "float32"}
NEAR = F32 | {"hidden": 64, "num_tokens": 4}
MIDDLE = F32 | {"hidden": 128, "num_tokens": 4}
FAR = F32 | {"hidden": 1024, "num_tokens": 64}
CONFIGS = {
    canonical_key(NEAR): {"block_sizes": [1], "num_warps": 2},
    canonical_key(MIDDLE): {"block_sizes": [2], "num_warps": 4},
    canonical_key(FAR): {"block_sizes": [4], "num_warps": 1},
}
SHAPES = [F32 | {"hidden": 64, "num_tokens": 8}, F32 | {"hidden": 64, "num_tokens": 16}]
GRID = "dtype=float32;hidden=64;num_tokens=8,16"
# The farthest key's config is the fastest: only a worker that got the driver's
# candidates (with their origins) can pick it.
TIMES = ((canonical_key(FAR), 1.0), (canonical_key(MIDDLE), 2.0), (canonical_key(NEAR), 3.0), ("helion-default", 4.0))


# A project's own kernel, in a module only --module names (test_kernel_modules.py's relu).
USER_MODULE = "userkernels_refine_farm"
USER_KERNEL = textwrap.dedent(
    """
    import torch, helion.language as hl
    from presetdb import register_kernel
    from presetdb.keys import KeyField, KeySpec

    spec = KeySpec((KeyField("dtype", "exact", lambda x: str(x.dtype).removeprefix("torch.")),
                    KeyField("n", "nearest", lambda x: x.shape[1]),
                    KeyField("rows", "ceil", lambda x: x.shape[0])))

    @register_kernel(name="user_relu_farm", key_spec=spec, reference=torch.relu,
                     example_inputs=lambda key, device="cpu", dtype=None: (torch.randn(key["rows"], key["n"], device=device),))
    def user_relu(x: torch.Tensor) -> torch.Tensor:
        out = torch.empty_like(x)
        for tile in hl.tile(x.size()):
            out[tile] = torch.relu(x[tile])
        return out
    """
)


@pytest.fixture(scope="module")
def user_modules(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("usermodules")
    (folder / f"{USER_MODULE}.py").write_text(USER_KERNEL)
    return folder


@pytest.fixture(scope="module")
def cluster(user_modules: Path) -> Iterator[dict[str, float]]:
    with local_cluster(pythonpath=[user_modules]) as resources:
        yield resources


@pytest.fixture(scope="module")
def rk() -> Any:
    from presetdb.helion.registry import get_kernel, load_kernel_modules

    load_kernel_modules()
    return get_kernel("rms_norm")


@pytest.fixture(scope="module")
def stored_db(rk: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real db holding three tuned rms_norm presets on the 'cpu' platform."""
    tmp = tmp_path_factory.mktemp("stored")
    entries = []
    for text, config in CONFIGS.items():
        key = json.loads(text)
        entries.append({"key": key, "config": rk.validate_config(config, key), "latency_ms": 0.5, "default_ms": 0.6})
    doc = presetdb_results.document(
        run={"source": "tune", "device_name": "cpu", "autotune_effort": "quick"},
        kernel={"name": "rms_norm", "source_hash": rk.source_hash(), "key_schema": rk.key_spec.to_schema()},
        platform="cpu",
        entries=entries,
    )
    presetdb_results.write(tmp / "tuned.json", doc)
    db = tmp / "stored.db"
    migrate.upgrade(db, seed_data=False)
    assert import_files(db, [tmp / "tuned.json"], resolver=registry()).counts["added"] == 3
    return db


def refiner(rk: Any, out: Path, db: Path, timer: Any, platform: str | None = None) -> refining.Refiner:
    executor = farm_ray.RayExecutor(device="cpu", platform=platform, max_retries=1)
    return refining.Refiner(rk, out, db=db, timer=timer, device="cpu", executor=executor, progress=False)


def test_refine_on_ray_workers_picks_from_the_drivers_candidates_and_records_failures(
    cluster: dict[str, float], rk: Any, stored_db: Path, tmp_path: Path
) -> None:
    out = tmp_path / "ray.json"
    timer = OriginTimer(TIMES, fail_tokens=16)
    summary = refiner(rk, out, stored_db, timer).run(SHAPES)
    assert (summary.done, summary.submitted, summary.interrupted) == (1, 2, False)
    # Each shape ran in a Ray worker process (not this one) with a GPU of its own.
    workers = [o.worker for o in summary.outcomes]
    assert all(w is not None and w.pid != os.getpid() and w.gpus in ("0", "1") for w in workers)
    assert len({w.pid for w in workers if w is not None}) == 2  # a fresh process per shape
    doc = load(out)
    (entry,) = doc["entries"]
    assert entry["key"] == SHAPES[0]
    assert entry["config"] == rk.validate_config(CONFIGS[canonical_key(FAR)], SHAPES[0])
    assert entry["configs_tried"] == 4 and [r["latency_ms"] for r in entry["runners_up"]] == [2.0, 3.0, 4.0]
    assert entry["run"]["device_name"] == "cpu" and entry["run"]["host"]
    assert entry["run"]["benchmark_method"] == "injected timer"
    assert doc["run"]["source"] == "refine" and doc["run"]["host"] == entry["run"]["host"]
    # A shape none of whose candidates ran: its failure, with the worker's traceback tail.
    (failure,) = doc["failures"]
    assert failure["key"] == SHAPES[1] and "none of 4 candidate(s) ran" in failure["error"]
    assert "no timing for 16 tokens" in failure["error"] and "rank_configs" in failure["traceback"]


def test_cli_refine_with_executor_ray_resumes_and_imports(
    cluster: dict[str, float], rk: Any, stored_db: Path, tmp_path: Path
) -> None:
    out = tmp_path / "cli.json"
    args = ["refine", "rms_norm", "--grid", GRID, "--db", str(stored_db), "--device", "cpu", "--k", "2",
            "--executor", "ray", "--gpus-per-task", "1", "--cpus-per-task", "1", "--max-retries", "1",
            "--out", str(out)]  # fmt: skip
    result = CliRunner().invoke(app, args, env={"COLUMNS": "300"})
    assert result.exit_code == 0, result.output
    assert "2 refined, 0 already there, 0 failed, of 2 shape(s)" in result.output
    doc = load(out)
    assert sorted(e["key"]["num_tokens"] for e in doc["entries"]) == [8, 16]
    for entry in doc["entries"]:
        assert entry["configs_tried"] == 3  # the 2 nearest stored configs and Helion's default
        assert entry["run"]["host"] and entry["run"]["device_name"] == "cpu"
        assert entry["run"]["benchmark_method"] == refining.CPU_METHOD  # the worker's own timer
    assert doc["run"]["benchmark_method"].startswith("refine: the 2 nearest stored configs (rms_norm on cpu, stored.db)")

    again = CliRunner().invoke(app, args, env={"COLUMNS": "300"})
    assert again.exit_code == 0, again.output
    assert "0 refined, 2 already there, 0 failed, of 2 shape(s)" in again.output
    assert load(out)["entries"] == doc["entries"]

    target = tmp_path / "target.db"
    migrate.upgrade(target, seed_data=False)
    imported = CliRunner().invoke(app, ["import", str(out), "--db", str(target)])
    assert imported.exit_code == 0, imported.output
    assert "2 added" in imported.output
    rows = active(target)
    for entry in doc["entries"]:
        assert rows[("rms_norm", "cpu", canonical_key(entry["key"]))]["config"] == entry["config"]


def test_refine_for_a_platform_the_cluster_lacks_fails_before_the_file(
    cluster: dict[str, float], rk: Any, stored_db: Path, tmp_path: Path
) -> None:
    out = tmp_path / "p.json"
    with pytest.raises(FarmError, match=r"no GPU of platform nvidia_h100: it has nvidia_h200 \(accelerator_type:H200\)"):
        refiner(rk, out, stored_db, OriginTimer(TIMES), platform="nvidia_h100").run(SHAPES)
    assert not out.exists()
    args = ["refine", "rms_norm", "--grid", GRID, "--db", str(stored_db), "--device", "cpu",
            "--executor", "ray", "--platform", "nvidia_h100", "--out", str(out)]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert isinstance(result.exception, FarmError) and not out.exists()


def test_workers_import_the_kernel_modules_named_by_module(
    cluster: dict[str, float], user_modules: Path, stored_db: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A kernel only `--module` registers: the driver imports it to read its key spec, each
    worker imports it itself (nothing ships the kernel), and refines the shape (no stored
    presets for it: Helion's default config alone is timed)."""
    from presetdb.helion.registry import unregister_kernel

    monkeypatch.syspath_prepend(str(user_modules))
    out = tmp_path / "user.json"
    args = ["refine", "user_relu_farm", "--grid", "dtype=float32;n=64;rows=8", "--db", str(stored_db),
            "--device", "cpu", "--executor", "ray", "--module", USER_MODULE, "--out", str(out)]  # fmt: skip
    try:
        result = CliRunner().invoke(app, args, env={"COLUMNS": "300"})
    finally:
        unregister_kernel("user_relu_farm")
        sys.modules.pop(USER_MODULE, None)
    assert result.exit_code == 0, result.output
    assert "no active user_relu_farm presets on cpu" in result.output
    (entry,) = load(out)["entries"]
    assert entry["key"] == {"dtype": "float32", "n": 64, "rows": 8} and entry["configs_tried"] == 1
    assert entry["run"]["host"] and load(out)["kernel"]["name"] == "user_relu_farm"
