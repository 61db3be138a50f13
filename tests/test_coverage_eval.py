"""benchmarks/gpu/coverage_eval.py in the Triton interpreter (its `--device cpu` smoke mode):
a shape that outlasts `--shape-hard-limit` ends the process with exit 4, the results file
naming it, and a rerun with --resume records it as failed and measures the rest (on the GPU,
one softmax shape over 256,000 columns outlasted two 9-minute call steps and took every later
shape of the run with it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import CLEARED_VARIABLES

ROOT = Path(__file__).resolve().parents[1]
SHAPES = {"rms_norm": [{"dtype": "float32", "hidden": 64, "num_tokens": 2},
                       {"dtype": "float32", "hidden": 128, "num_tokens": 4}]}


def _run(tmp_path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    out = tmp_path / "out"
    args = [sys.executable, "-P", str(ROOT / "benchmarks/gpu/coverage_eval.py"), "--db", str(tmp_path / "presets.db"),
            "--out", str(out), "--shapes", str(tmp_path / "shapes.json"), "--kernels", "rms_norm",
            "--device", "cpu", "--autotune", "0", "--resume", str(out / "coverage_eval.json"), *extra]
    env = {**{k: v for k, v in os.environ.items() if k not in CLEARED_VARIABLES}, "TRITON_INTERPRET": "1"}
    return subprocess.run(args, check=False, capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)


def test_a_hung_shape_ends_the_process_and_the_resumed_run_records_it_and_goes_on(tmp_path: Path) -> None:
    from presetdb.store import migrate

    migrate.upgrade(tmp_path / "presets.db", seed_data=False)  # no presets: every shape is a miss
    (tmp_path / "shapes.json").write_text(json.dumps(SHAPES))
    first, second = (json.dumps(k) for k in SHAPES["rms_norm"])

    hung = _run(tmp_path, "--shape-hard-limit", "0.05")
    assert hung.returncode == 4, hung.stdout + hung.stderr
    assert f"rms_norm {first}: still running after" in hung.stdout
    partial = json.loads((tmp_path / "out" / "coverage_eval.json").read_text())
    assert partial["rows"] == []
    assert partial["in_progress"]["shape"] == f"rms_norm {json.dumps(SHAPES['rms_norm'][0], sort_keys=True)}"

    resumed = _run(tmp_path)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    result = json.loads((tmp_path / "out" / "coverage_eval.json").read_text())
    assert "in_progress" not in result
    failed, measured = result["rows"]
    assert failed["key"] == SHAPES["rms_norm"][0] and failed["error"].startswith("did not finish")
    assert measured["key"] == SHAPES["rms_norm"][1] and "error" not in measured
    assert measured["match"] == "miss" and measured["vs_default"]["default"] == 1.0
    assert f"- rms_norm {first}: did not finish" in (tmp_path / "out" / "coverage_eval.md").read_text()
    assert second in (tmp_path / "out" / "coverage_eval.md").read_text()
