"""benchmarks/gpu/seed_eval_v2.py and benchmarks/plot_seed_eval.py on the CPU: a smoke run
(Triton interpreter, tiny float32 shapes, wall-clock figures that mean nothing) against a
db built by `presetdb build` plus a few CPU presets imported by `presetdb import`, in two
calls (`--part 1/2`, then `--part 2/2 --resume`), then the plots of its results."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest
from conftest import CLEARED_VARIABLES
from helion_fixtures import require_interpreter
from typer.testing import CliRunner

from presetdb.cli import app
from presetdb.keys import canonical_key
from presetdb.offline.build import content_digest

require_interpreter()

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks/gpu/seed_eval_v2.py"
PLOT = ROOT / "benchmarks/plot_seed_eval.py"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
ROUNDS = 2
TOKENS = (1, 4)
# Two shapes per kernel: the first is stored for the "cpu" platform (an exact match); the
# second is near it (a stored config served), except softmax's, which is far (Helion's
# default config served, as the default far policy says).
SHAPES = {
    "rms_norm": [{"dtype": "float32", "hidden": 16, "num_tokens": 4}, {"dtype": "float32", "hidden": 24, "num_tokens": 3}],
    "silu_mul": [{"dtype": "float32", "d": 16, "num_tokens": 4}, {"dtype": "float32", "d": 32, "num_tokens": 3}],
    "softmax": [{"dtype": "float32", "n": 16, "num_rows": 4}, {"dtype": "float32", "n": 64, "num_rows": 3}],
    "matmul": [{"dtype": "float32", "n": 16, "k": 16, "m": 4}, {"dtype": "float32", "n": 32, "k": 16, "m": 3}],
}
SECOND = {"rms_norm": ("nearest", "stored"), "silu_mul": ("nearest", "stored"),
          "softmax": ("far", "helion-default"), "matmul": ("nearest", "stored")}
CONFIGS = {"rms_norm": {"block_sizes": [2]}, "silu_mul": {"block_sizes": [2, 16]},
           "softmax": {"block_sizes": [2]}, "matmul": {"block_sizes": [16, 16, 8]}}


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in CLEARED_VARIABLES}
    env["TRITON_INTERPRET"] = "1"
    return env


def _run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([sys.executable, "-P", *map(str, args)], env=_env(), capture_output=True, text=True,
                          timeout=300, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


@pytest.fixture(scope="module")
def evaluation(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("seed-eval-v2")
    db = tmp / "presets.db"
    runner = CliRunner()
    built = runner.invoke(app, ["build", "--out", str(db)])
    assert built.exit_code == 0, built.output
    files = []
    for kernel, config in CONFIGS.items():
        doc = {"format": "presetdb-results/1", "run": {"source": "manual"}, "kernel": {"name": kernel},
               "platform": "cpu", "entries": [{"key": SHAPES[kernel][0], "config": config, "latency_ms": 0.01}]}
        files.append(tmp / f"{kernel}.json")
        files[-1].write_text(json.dumps(doc))
    imported = runner.invoke(app, ["import", *map(str, files), "--db", str(db)])
    assert imported.exit_code == 0, imported.output
    shapes = tmp / "shapes.json"
    shapes.write_text(json.dumps(SHAPES))
    common = ("--device", "cpu", "--db", db, "--shapes", shapes, "--rounds", str(ROUNDS),
              "--e2e-tokens", ",".join(map(str, TOKENS)))
    _run(SCRIPT, *common, "--part", "1/2", "--sections", "heldout", "--out", tmp / "part1")
    _run(SCRIPT, *common, "--part", "2/2", "--resume", tmp / "part1/seed_eval_v2.json", "--out", tmp / "all")
    return {
        "db": db, "tmp": tmp,
        "part1": json.loads((tmp / "part1/seed_eval_v2.json").read_text()),
        "result": json.loads((tmp / "all/seed_eval_v2.json").read_text()),
        "markdown": (tmp / "all/seed_eval_v2.md").read_text(),
    }


def test_every_shape_has_its_match_three_timings_and_a_checked_output(evaluation: dict[str, Any]) -> None:
    result = evaluation["result"]
    part1 = evaluation["part1"]
    assert len(part1["rows"]) == 4 and {r["kernel"] for r in part1["rows"]} == set(SHAPES)  # every 2nd shape
    rows = {(r["kernel"], canonical_key(r["key"])): r for r in result["rows"]}
    assert len(rows) == len(result["rows"]) == 8
    for kernel, (exact, second) in SHAPES.items():
        first = rows[(kernel, canonical_key(exact))]
        assert (first["match"], first["served"]) == ("exact", "stored")
        assert first["served_key"] == canonical_key(exact) and first["served_platform"] == "cpu"
        assert set(first["distances"].values()) == {0.0}
        near = rows[(kernel, canonical_key(second))]
        assert (near["match"], near["served"]) == SECOND[kernel]
        assert near["served_key"] == canonical_key(exact)  # the picker's matched key, served or not
        assert max(near["distances"].values()) > 0
        assert bool(near["far_fields"]) == (kernel == "softmax")
    for row in result["rows"]:
        assert row["check"] == "ok", row  # the served output matched the float32 reference
        assert row["served_choice_matches"], row
        for name in ("served", "default", "torch"):
            assert row[f"{name}_ms"] > 0 and len(row["samples_ms"][name]) == ROUNDS
        assert row["vs_torch"] == pytest.approx(row["torch_ms"] / row["served_ms"])
        assert row["vs_default"] == pytest.approx(row["default_ms"] / row["served_ms"])


def test_the_results_say_what_was_run_and_judge_the_targets(evaluation: dict[str, Any]) -> None:
    result = evaluation["result"]
    for package in ("torch", "triton", "helion", "presetdb"):
        assert result[package] == version(package)
    assert result["db_digest"] == content_digest(evaluation["db"])
    assert result["platform"] == "cpu" and result["device_kind"] == "cpu"
    assert [c["part"] for c in result["calls"]] == ["1/2", "2/2"]
    assert result["skipped"] == []
    summary = result["summary"]
    assert summary["measured"] == summary["heldout_total"] == 8
    for kernel in SHAPES:
        assert summary["per_kernel"][kernel]["shapes"] == 2
        assert summary["per_kernel"][kernel]["matches"] == {"exact": 1, SECOND[kernel][0]: 1}
    targets = {t["target"].split(":")[0]: t for t in summary["targets"]}
    worst = min(r["vs_default"] for r in result["rows"])
    every = next(t for t in summary["targets"] if t["target"].startswith("every held-out shape"))
    assert every["value"] == pytest.approx(worst) and every["met"] == (worst >= 0.95)
    assert {"rms_norm", "silu_mul", "softmax", "matmul", "MLP block"} <= set(targets)
    assert targets["matmul"]["shapes"] == 0 and targets["matmul"]["met"] is False  # no m >= 16 here
    assert (targets["MLP block"]["shapes"], targets["MLP block"]["of"]) == (len(TOKENS), len(TOKENS))
    part1 = {t["target"].split(":")[0]: t for t in evaluation["part1"]["summary"]["targets"]}
    assert part1["MLP block"]["of"] == len(TOKENS) and not part1["MLP block"]["complete"]  # e2e not run yet
    assert not part1["rms_norm"]["complete"] and len(evaluation["part1"]["not_measured"]) == 4
    assert "## Targets" in evaluation["markdown"] and "| matmul | n=16, k=16, m=4 | exact |" in evaluation["markdown"]


def test_the_end_to_end_blocks_ran_on_every_token_count(evaluation: dict[str, Any]) -> None:
    e2e = evaluation["result"]["e2e"]
    assert e2e["dims"]["source"].startswith("tiny dims")
    assert sorted((r["block"], r["tokens"]) for r in e2e["rows"]) == sorted(
        (b, t) for b in ("mlp", "softmax") for t in TOKENS)
    for row in e2e["rows"]:
        assert row["check"] == "ok" and row["presetdb_ms"] > 0 and row["torch_ms"] > 0
        kernels = [s["kernel"] for s in row["served"]]
        assert kernels == (["rms_norm", "matmul", "silu_mul", "matmul"] if row["block"] == "mlp" else ["softmax"])
        assert all(s["key"]["num_tokens" if s["kernel"] in ("rms_norm", "silu_mul") else
                            "m" if s["kernel"] == "matmul" else "num_rows"] == row["tokens"] for s in row["served"])


def test_resume_refuses_results_of_another_db_and_part_is_checked(evaluation: dict[str, Any]) -> None:
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import seed_eval_v2
    finally:
        sys.path.remove(str(SCRIPT.parent))
    path = evaluation["tmp"] / "part1/seed_eval_v2.json"
    part1 = evaluation["part1"]
    kept = seed_eval_v2.load_resumed([path], part1["device"], part1["db_digest"])
    assert len(kept["rows"]) == 4
    with pytest.raises(SystemExit, match="db_digest .* cannot be combined"):
        seed_eval_v2.load_resumed([path], part1["device"], "0" * 64)
    with pytest.raises(SystemExit):
        seed_eval_v2.options(["--part", "3/2"])


def test_plots_are_png_files_per_kernel_and_end_to_end(evaluation: dict[str, Any]) -> None:
    out = evaluation["tmp"] / "plots"
    tmp = evaluation["tmp"]
    _run(PLOT, tmp / "all/seed_eval_v2.json", tmp / "part1/seed_eval_v2.json", "--out", out)
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted([f"seed_eval_v2_{k}.png" for k in SHAPES] + ["seed_eval_v2_e2e.png"])
    for name in names:
        data = (out / name).read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 1000, name


def test_a_hung_shape_ends_the_call_and_a_resumed_call_records_it_and_measures_the_rest(
    evaluation: dict[str, Any],
) -> None:
    tmp, out = evaluation["tmp"], evaluation["tmp"] / "hung"
    common = (SCRIPT, "--device", "cpu", "--db", evaluation["db"], "--shapes", tmp / "shapes.json",
              "--rounds", "1", "--part", "1/2", "--sections", "heldout", "--out", out)
    hung = subprocess.run([sys.executable, "-P", *map(str, (*common, "--shape-hard-limit", "0.05"))], env=_env(),
                          capture_output=True, text=True, timeout=300, check=False)
    first = f"rms_norm {json.dumps(SHAPES['rms_norm'][0], sort_keys=True)}"
    assert hung.returncode == 4, hung.stdout[-2000:] + hung.stderr[-2000:]
    partial = json.loads((out / "seed_eval_v2.json").read_text())
    assert partial["rows"] == [] and partial["in_progress"]["key"] == SHAPES["rms_norm"][0]

    _run(*common, "--resume", out / "seed_eval_v2.json")
    result = json.loads((out / "seed_eval_v2.json").read_text())
    assert "in_progress" not in result
    by_kernel = {(r["kernel"], json.dumps(r["key"], sort_keys=True)): r for r in result["rows"]}
    failed = by_kernel[("rms_norm", first.split(" ", 1)[1])]
    assert failed["error"].startswith("did not finish")
    measured = [r for r in result["rows"] if "error" not in r]
    assert {r["kernel"] for r in measured} == {"silu_mul", "softmax", "matmul"}  # part 1/2: each kernel's first shape
    assert len(result["calls"]) == 2  # the cut-short call and the resumed one, each once
