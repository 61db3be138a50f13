"""presetdb.helion.autotune: the one search builder and provenance capture shared by the
on-miss autotune policy and `presetdb tune`; warm-started search; the timing methods.
CPU (TRITON_INTERPRET=1), real Helion kernels, real SQLite files."""

from __future__ import annotations

import ast
import importlib.metadata
import json
import socket
import sys
from pathlib import Path
from typing import Any

import pytest
from helion_fixtures import (
    install_interpreter_shims,
    preset_store_fixture,  # noqa: F401  (provides the preset_store fixture)
    require_interpreter,
    set_policy,
)
from import_fixtures import load
from typer.testing import CliRunner

require_interpreter()
install_interpreter_shims()

import helion
import torch

import presetdb
import presetdb.kernels
from presetdb.cli import app
from presetdb.errors import FarmError, SettingsError
from presetdb.helion import autotune
from presetdb.helion.hooks import set_autotune_search
from presetdb.helion.registry import get_kernel
from presetdb.offline import farm, farm_ray
from presetdb.offline import tune as tuning
from presetdb.offline.importers import import_files
from presetdb.store import migrate

ROOT = Path(__file__).resolve().parents[1]
STAMP = r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$"


def test_helion_package_does_not_import_offline_code() -> None:
    for path in sorted((ROOT / "presetdb" / "helion").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            assert not [n for n in names if n.startswith("presetdb.offline")], f"{path} imports {names}"


def test_provenance_names_this_machine_and_the_installed_software() -> None:
    run = autotune.capture_provenance("cpu", autotune_effort="quick", seed=3, started_at=autotune.utc_now(), x=None)
    assert run["host"] == socket.gethostname() and run["tuned_by"].endswith("@" + socket.gethostname())
    assert run["device_name"] == "cpu" and "sm_count" not in run and "x" not in run
    assert run["torch_version"] == torch.__version__
    for package in ("triton", "helion"):
        assert run[f"{package}_version"] == importlib.metadata.version(package)
    assert run["presetdb_version"] == presetdb.__version__
    assert (run["autotune_effort"], run["seed"]) == ("quick", 3)
    assert __import__("re").match(STAMP, run["started_at"])


def test_unknown_helion_autotuner_is_a_clear_error_in_tune(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HELION_AUTOTUNER", "NoSuchSearch")
    with pytest.raises(SettingsError, match=r"HELION_AUTOTUNER='NoSuchSearch' is not a Helion search;.*LFBOTreeSearch"):
        tuning.Tuner("rms_norm", tmp_path / "t.json", device="cpu", progress=False)
    rk = get_kernel("rms_norm")
    args = rk.adapt_args(tuple(rk.example_inputs({"dtype": "float32", "hidden": 16, "num_tokens": 2}, "cpu")))[0]
    plain = autotune.plain_kernel(rk, effort="quick", seed=1, budget_seconds=None)
    with pytest.raises(SettingsError, match="NoSuchSearch"):
        autotune.build_search(plain.bind(tuple(args)), args)
    monkeypatch.delenv("HELION_AUTOTUNER")
    assert type(autotune.build_search(plain.bind(tuple(args)), args)).__name__ == "LFBOTreeSearch"


def test_unknown_helion_autotuner_is_a_clear_error_on_miss(preset_store, monkeypatch: pytest.MonkeyPatch) -> None:
    previous = set_autotune_search(None)  # Helion's own search, built by autotune.build_search
    try:
        set_policy(monkeypatch, "autotune")
        monkeypatch.setenv("HELION_AUTOTUNER", "NoSuchSearch")
        x, w = torch.randn(5, 40), torch.randn(40)  # a key nothing stores or tuned
        with pytest.raises(SettingsError, match="HELION_AUTOTUNER='NoSuchSearch'"):
            torch.ops.presetdb.rms_norm(x, w, 1e-6)
        assert preset_store.overlay_presets("rms_norm", status="active") == []
    finally:
        set_autotune_search(previous)


# ---------------------------------------------------------------- warm start

NEAR = {"dtype": "float32", "hidden": 64, "num_tokens": 4}
FAR = {"dtype": "float32", "hidden": 512, "num_tokens": 4}
NEW = {"dtype": "float32", "hidden": 128, "num_tokens": 4}


def _stored_db(tmp_path: Path) -> tuple[Path, dict[str, Any], dict[str, Any]]:
    """A db with two tuned keys of rms_norm on cpu (written the way users do: tune, import)."""
    out = tmp_path / "first.json"
    made = tuning.Tuner(
        "rms_norm", out, search=tuning.sample_search(count=2, timer=tuning.cpu_timer(1)),
        timer=tuning.cpu_timer(1), device="cpu", seed=11, progress=False,
    )
    assert made.run([NEAR, FAR]).done == 2
    db = tmp_path / "stored.db"
    migrate.upgrade(db, seed_data=False)
    import_files(db, [out])
    configs = {e["key"]["hidden"]: e["config"] for e in load(out)["entries"]}
    return db, configs[64], configs[512]


def test_warm_start_seeds_the_real_bound_kernel_with_the_neighbours_configs(tmp_path: Path) -> None:
    db, near, far = _stored_db(tmp_path)
    rk = get_kernel("rms_norm")
    neighbours = tuning.stored_neighbours(rk, "cpu", db=db)
    assert neighbours(NEW)[0] == near  # nearest key first
    assert neighbours(NEAR)[0] == near  # the key's own current preset first
    assert far in neighbours(NEW) or near == far

    seen: list[Any] = []
    inner = tuning.sample_search(count=2, timer=tuning.cpu_timer(1))

    def search(request: tuning.SearchRequest) -> tuning.SearchOutcome:
        seen.append(request.plain.bind(request.args).settings.autotune_seed_configs)
        return inner(request)

    warm = tuning.Tuner(
        rk, tmp_path / "warm.json", search=search, timer=tuning.cpu_timer(1), device="cpu",
        seed=12, progress=False, warm_start=neighbours,
    )
    assert warm.run([NEW]).done == 1
    (seeds,) = seen
    assert [dict(c) for c in seeds] == neighbours(NEW)
    assert all(isinstance(c, helion.Config) for c in seeds)
    # sample_search tries the seeds first, as Helion's search does
    assert load(tmp_path / "warm.json")["entries"][0]["configs_tried"] == len(seeds) + 2

    cold = tuning.Tuner(
        rk, tmp_path / "cold.json", search=search, timer=tuning.cpu_timer(1), device="cpu",
        seed=12, progress=False,
    )
    cold.run([NEW])
    assert seen[-1] is None  # --no-warm-start: no seeds


def test_tune_cli_warm_starts_from_db_unless_told_not_to(tmp_path: Path) -> None:
    db, _, _ = _stored_db(tmp_path)
    base = ["tune", "rms_norm", "--grid", "dtype=float32;hidden=128;num_tokens=4", "--device", "cpu",
            "--search", "sample", "--db", str(db)]
    warm = CliRunner().invoke(app, [*base, "--out", str(tmp_path / "w.json")])
    assert warm.exit_code == 0, warm.output
    cold = CliRunner().invoke(app, [*base, "--no-warm-start", "--out", str(tmp_path / "c.json")])
    assert cold.exit_code == 0, cold.output
    tried = [load(tmp_path / f)["entries"][0]["configs_tried"] for f in ("w.json", "c.json")]
    assert tried[0] > tried[1]  # the stored neighbours were tried on top of the sample



def test_seed_configs_file_is_tried_in_every_search_after_the_warm_start(tmp_path: Path) -> None:
    db, _, _ = _stored_db(tmp_path)
    rk = get_kernel("rms_norm")
    own = {"block_sizes": [2], "reduction_loops": [None], "num_warps": 2, "num_stages": 1}
    seeds_file = tmp_path / "seeds.json"
    seeds_file.write_text(json.dumps({"configs": [own]}))
    seeds = tuning.load_seed_configs(seeds_file, rk, NEW)
    assert seeds == [own]

    seen: list[Any] = []
    inner = tuning.sample_search(count=2, timer=tuning.cpu_timer(1))

    def search(request: tuning.SearchRequest) -> tuning.SearchOutcome:
        seen.append([dict(c) for c in request.plain.bind(request.args).settings.autotune_seed_configs or ()])
        return inner(request)

    neighbours = tuning.stored_neighbours(rk, "cpu", db=db)
    tuner = tuning.Tuner(
        rk, tmp_path / "seeded.json", search=search, timer=tuning.cpu_timer(1), device="cpu",
        seed=12, progress=False, warm_start=neighbours, seed_configs=seeds,
    )
    assert tuner.run([NEW, NEAR]).done == 2
    assert seen[0] == [*neighbours(NEW), own] and seen[1][-1] == own  # every shape, after the warm start
    # a seed equal to a neighbour's config is tried once
    tuner.seed_configs = [neighbours(NEW)[0]]
    assert tuner.seeds_for(NEW) == neighbours(NEW)


def test_tune_cli_seed_configs_are_tried_and_bad_ones_refused_before_any_work(tmp_path: Path) -> None:
    base = ["tune", "rms_norm", "--grid", "dtype=float32;hidden=128;num_tokens=4", "--device", "cpu",
            "--search", "sample", "--no-warm-start"]
    good = tmp_path / "good.json"
    good.write_text(json.dumps([{"block_sizes": [2], "num_warps": 2}, {"block_sizes": [1], "num_warps": 1}]))
    seeded = CliRunner().invoke(app, [*base, "--seed-configs", str(good), "--out", str(tmp_path / "s.json")])
    assert seeded.exit_code == 0, seeded.output
    plain = CliRunner().invoke(app, [*base, "--out", str(tmp_path / "p.json")])
    assert plain.exit_code == 0, plain.output
    tried = [load(tmp_path / f)["entries"][0]["configs_tried"] for f in ("s.json", "p.json")]
    assert tried[0] == tried[1] + 2

    cases = {
        "warps.json": ([{"block_sizes": [2]}, {"block_sizes": [2], "num_warps": 3}], ["entry 1", "num_warps must be a power of two"]),
        "shape.json": ([{"block_sizes": [1, 2, 3, 4, 5]}], ["entry 0", "is invalid for shape key"]),
        "list.json": ([], ["non-empty JSON array of configs"]),
        "item.json": (["num_warps=2"], ["entry 0 is str"]),
    }
    for name, (content, expected) in cases.items():
        bad = tmp_path / name
        bad.write_text(json.dumps(content))
        out = tmp_path / f"{name}.out.json"
        result = CliRunner().invoke(app, [*base, "--seed-configs", str(bad), "--out", str(out)])
        text = " ".join(result.output.split())
        assert result.exit_code == 2, (name, result.output)
        assert str(bad) in text.replace(" ", "") or name in text, text
        assert all(e in text for e in expected), (name, text)
        assert not out.exists()  # refused before any work
    broken = tmp_path / "broken.json"
    broken.write_text("[{")
    result = CliRunner().invoke(app, [*base, "--seed-configs", str(broken), "--out", str(tmp_path / "b.json")])
    assert result.exit_code == 2 and "not JSON" in result.output


# ---------------------------------------------------------------- timing


def test_timing_method_is_chosen_recorded_per_row_and_shown(tmp_path: Path) -> None:
    for timing in tuning.TIMINGS:
        made = tuning.Tuner("rms_norm", tmp_path / f"{timing}.json", timing=timing, device="cuda", progress=False)
        assert made.benchmark_method == tuning.BENCHMARK_METHODS[timing]
        assert made.work().benchmark_method == made.benchmark_method
    assert "do_bench_cudagraph" in tuning.BENCHMARK_METHODS["graph"]
    assert "L2 flushed" in tuning.BENCHMARK_METHODS["flush"]
    assert tuning.TIMERS == {"graph": tuning.graph_timer, "flush": tuning.flush_timer}
    bad = CliRunner().invoke(app, ["tune", "rms_norm", "--grid", "hidden=64", "--timing", "cold", "--out", "x.json"])
    assert bad.exit_code == 2 and "--timing" in bad.output
    # On the CPU the interpreter's wall time is what there is: the file says so, per row,
    # and `presetdb show` prints it with the run.
    out = tmp_path / "cpu.json"
    args = ["tune", "rms_norm", "--grid", "dtype=float32;hidden=64;num_tokens=2", "--device", "cpu",
            "--no-warm-start", "--out", str(out)]
    assert CliRunner().invoke(app, args).exit_code == 0
    (entry,) = load(out)["entries"]
    assert entry["run"]["benchmark_method"] == tuning.CPU_METHOD == load(out)["run"]["benchmark_method"]
    db = tmp_path / "t.db"
    migrate.upgrade(db, seed_data=False)
    import_files(db, [out])
    shown = CliRunner().invoke(app, ["show", "1", "--db", str(db)], env={"COLUMNS": "400"})
    assert shown.exit_code == 0 and "benchmark_method" in shown.output
    assert tuning.CPU_METHOD in " ".join(shown.output.split())


@pytest.mark.gpu
def test_graph_and_flush_timing_on_the_gpu(tmp_path: Path) -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    for timing in tuning.TIMINGS:
        out = tmp_path / f"{timing}.json"
        made = tuning.Tuner(
            "rms_norm", out, search=tuning.sample_search(count=3), timing=timing, device="cuda",
            seed=1, progress=False,
        )
        assert made.run([{"dtype": "bfloat16", "hidden": 4096, "num_tokens": 16}]).done == 1
        (entry,) = load(out)["entries"]
        assert entry["run"]["benchmark_method"] == tuning.BENCHMARK_METHODS[timing]
        assert entry["latency_ms"] > 0 and entry["default_ms"] > 0 and entry["reference_ms"] > 0


# ---------------------------------------------------------------- without Ray


def test_executor_ray_without_ray_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` fails as if not installed
    with pytest.raises(FarmError, match=r"pip install 'presetdb\[farm\]'"):
        farm_ray.RayExecutor().prepare()
    args = ["tune", "rms_norm", "--grid", "dtype=float32;hidden=64;num_tokens=2", "--device", "cpu",
            "--executor", "ray", "--no-warm-start", "--out", str(tmp_path / "r.json")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2 and "pip install 'presetdb[farm]'" in " ".join(result.output.split())
    assert not (tmp_path / "r.json").exists()


def test_results_file_refuses_another_effort_and_keeps_the_run_on_resume(tmp_path: Path) -> None:
    rk = get_kernel("rms_norm")
    kernel = {"name": rk.name, "source_hash": rk.source_hash(), "key_schema": rk.key_spec.to_schema()}
    path = tmp_path / "r.json"
    first = farm.ResultsFile(path, kernel=kernel, platform="cpu", run={"source": "tune", "autotune_effort": "quick", "seed": 1}, resume_same=("autotune_effort",))
    first.open()
    first.add({"key": NEAR, "config": {"block_sizes": [1]}, "run": {"host": "worker-7", "device_name": "NVIDIA H100", "seed": 99}})
    first.save()
    doc = json.loads(path.read_text())
    assert doc["run"]["host"] == "worker-7" and doc["run"]["seed"] == 1  # machine fields only
    again = farm.ResultsFile(path, kernel=kernel, platform="cpu", run={"source": "tune", "autotune_effort": "quick", "seed": 2})
    assert again.open()["seed"] == 1 and again.finished_keys() == {json.dumps(NEAR, sort_keys=True, separators=(",", ":"))}
    other = farm.ResultsFile(path, kernel=kernel, platform="cpu", run={"autotune_effort": "full"}, resume_same=("autotune_effort",))
    with pytest.raises(tuning.TuneError, match="autotune_effort 'quick'"):
        other.open()


def test_committed_seed_configs_fit_every_key_they_seed() -> None:
    """benchmarks/shapes/seed_configs_v2_<kernel>.json (run_search_refine.sh passes it to
    `presetdb tune --seed-configs`) is valid for each key of the search it seeds."""
    files = sorted((ROOT / "benchmarks" / "shapes").glob("seed_configs_v2_*.json"))
    assert files, "benchmarks/shapes/seed_configs_v2_matmul.json is gone"
    for path in files:
        kernel = path.stem.removeprefix("seed_configs_v2_")
        rk = get_kernel(kernel)
        for key in tuning.load_shapes(ROOT / "benchmarks" / "shapes" / f"search_v2_{kernel}.json"):
            configs = tuning.load_seed_configs(path, rk, key)
            assert len({json.dumps(c, sort_keys=True) for c in configs}) == len(configs) >= 2
