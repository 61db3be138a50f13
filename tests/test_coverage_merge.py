"""benchmarks/gpu/coverage_merge.py: held-out coverage runs of one device merged into one
report (a GPU call is at most 10 minutes, so the held-out set is measured in parts)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

SCRIPTS = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu"


@pytest.fixture(scope="module")
def coverage_merge() -> Any:
    sys.path.insert(0, str(SCRIPTS))
    try:
        import coverage_merge
    finally:
        sys.path.remove(str(SCRIPTS))
    return coverage_merge


def _row(kernel: str, key: dict[str, Any], default: float) -> dict[str, Any]:
    return {
        "kernel": kernel, "key": key, "served_key": "nvidia_h100:{}", "match": "nearest", "far": False,
        "far_fields": {}, "distances": {}, "default_ms": 0.01, "torch_ms": 0.02, "refine_seconds": 3.0,
        "vs_default": {"nearest": default, "default": default, "rerank": default},
        "vs_torch": {"nearest": 2 * default, "default": 2 * default, "rerank": 2 * default},
    }


def _run(path: Path, rows: list[dict[str, Any]], skipped: list[str], device: str = "NVIDIA H100 80GB HBM3") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({
        "device": device, "platform": "nvidia_h100", "db": f"/dbs/{path.parent.name}.db", "torch": "2.11.0",
        "shapes_file": "benchmarks/shapes/heldout_coverage.json", "chosen": {}, "k": 6, "limits": {},
        "method": "graph", "rows": rows, "autotune": [], "skipped": skipped, "wall_seconds": 100.0,
    }))
    return path


A = {"dtype": "bfloat16", "n": 3072, "k": 3072, "m": 8}
B = {"dtype": "bfloat16", "n": 4096, "num_rows": 98304}
C = {"dtype": "bfloat16", "hidden": 3072, "num_tokens": 8}


def test_a_shape_measured_in_any_run_replaces_its_failure_and_the_first_measurement_wins(tmp_path: Path, coverage_merge: Any) -> None:
    first = _run(tmp_path / "one" / "coverage_eval.json",
                 [_row("rms_norm", C, 1.06), {"kernel": "matmul", "key": A, "error": "capture failed"},
                  {"kernel": "softmax", "key": B, "error": "InductorLoweringError"}],
                 skipped=['matmul {"dtype": "bfloat16", "n": 16384, "k": 3072, "m": 8}'])
    second = _run(tmp_path / "two" / "coverage_eval.json",
                  [_row("matmul", A, 1.39), _row("rms_norm", C, 0.5),
                   _row("matmul", {"dtype": "bfloat16", "n": 16384, "k": 3072, "m": 8}, 1.0)], skipped=[])
    merged = coverage_merge.merge([first, second])

    by_shape = {(r["kernel"], json.dumps(r["key"], sort_keys=True)): r for r in merged["rows"]}
    assert by_shape[("rms_norm", json.dumps(C, sort_keys=True))]["vs_default"]["default"] == 1.06
    assert by_shape[("matmul", json.dumps(A, sort_keys=True))]["vs_default"]["default"] == 1.39
    assert by_shape[("matmul", json.dumps(A, sort_keys=True))]["run"].endswith("two/coverage_eval.json")
    assert "error" in by_shape[("softmax", json.dumps(B, sort_keys=True))]
    assert len(merged["rows"]) == 4
    assert merged["skipped"] == []  # the shape the first run skipped was measured by the second
    assert merged["db"] == [f"{first}: /dbs/one.db", f"{second}: /dbs/two.db"]

    coverage_merge.write(merged, tmp_path / "out")
    report = (tmp_path / "out" / "coverage_eval.md").read_text()
    assert "| default | 1.138 | 1.000 | 0 of 3 |" in report  # geomean of 1.06, 1.39, 1.0
    assert "failed shapes: 1" in report


def test_runs_of_different_devices_are_not_merged(tmp_path: Path, coverage_merge: Any) -> None:
    first = _run(tmp_path / "one" / "coverage_eval.json", [_row("rms_norm", C, 1.0)], [])
    second = _run(tmp_path / "two" / "coverage_eval.json", [_row("rms_norm", C, 1.0)], [], device="NVIDIA H200")
    with pytest.raises(SystemExit, match="different devices"):
        coverage_merge.merge([first, second])


def test_the_plot_shows_a_merged_report_and_names_what_was_not_measured(tmp_path: Path, coverage_merge: Any) -> None:
    sys.path.insert(0, str(SCRIPTS.parent))
    try:
        import plot_coverage
    finally:
        sys.path.remove(str(SCRIPTS.parent))
    late = {"dtype": "bfloat16", "n": 256000, "num_rows": 4096}
    run = _run(tmp_path / "one" / "coverage_eval.json",
               [_row("rms_norm", C, 1.06), {**_row("matmul", A, 0.9), "far": True},
                {"kernel": "softmax", "key": B, "error": "InductorLoweringError"}],
               skipped=[f"softmax {json.dumps(late)}", f"autotune rms_norm {json.dumps(C)}"])
    merged = coverage_merge.merge([run])
    assert plot_coverage.unmeasured(merged) == ["softmax n=4096,num_rows=98304", "softmax n=256000,num_rows=4096"]
    path = plot_coverage.plot(merged, tmp_path / "img")
    assert path == tmp_path / "img" / "coverage_nvidia_h100.png"
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    with pytest.raises(SystemExit, match="no measured rows"):
        plot_coverage.plot({**merged, "rows": [r for r in merged["rows"] if "error" in r]}, tmp_path / "img")


def test_a_chosen_shape_without_any_row_counts_as_not_measured(tmp_path: Path) -> None:
    # A shape whose process was killed by the GPU call's time limit leaves neither a row nor a
    # `skipped` entry; the run's `chosen` list still names it.
    sys.path.insert(0, str(SCRIPTS.parent))
    try:
        import plot_coverage
    finally:
        sys.path.remove(str(SCRIPTS.parent))
    late = {"dtype": "bfloat16", "n": 256000, "num_rows": 4096}
    result = json.loads(_run(tmp_path / "one" / "coverage_eval.json", [_row("rms_norm", C, 1.0)], []).read_text())
    result["chosen"] = {"rms_norm": [C], "softmax": [late]}
    assert plot_coverage.unmeasured(result) == ["softmax n=256000,num_rows=4096"]
