"""`presetdb refine` on CPU (TRITON_INTERPRET=1): real stored configs from a real db,
compiled by Helion and run in Triton's interpreter, timed by an injected timer that
names each candidate's time. Checks the choice, runners-up, provenance, import and resume."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from import_fixtures import active, load, registry
from typer.testing import CliRunner

from presetdb.cli import app
from presetdb.errors import FarmError
from presetdb.helion.rerank import BatchCompileWarning
from presetdb.keys import canonical_key
from presetdb.offline import farm
from presetdb.offline import refine as refining
from presetdb.offline.importers import import_files, presetdb_results
from presetdb.offline.importers.presetdb_results import _header_validator, schema_problems
from presetdb.store import migrate

F32 = {"dtype": "float32"}
NEAR = F32 | {"hidden": 64, "num_tokens": 4}  # 1 (log2) from the refined shape
MIDDLE = F32 | {"hidden": 128, "num_tokens": 4}  # 2 away
FAR = F32 | {"hidden": 1024, "num_tokens": 64}  # 7 away
SHAPE = F32 | {"hidden": 64, "num_tokens": 8}
SHAPE2 = F32 | {"hidden": 64, "num_tokens": 16}
CONFIGS = {
    canonical_key(NEAR): {"block_sizes": [1], "num_warps": 2},
    canonical_key(MIDDLE): {"block_sizes": [2], "num_warps": 4},
    canonical_key(FAR): {"block_sizes": [4], "num_warps": 1},
}
# The farthest key's config is the fastest: refine must time, not trust distance.
TIMES = {canonical_key(FAR): 1.0, canonical_key(MIDDLE): 2.0, canonical_key(NEAR): 3.0, "helion-default": 4.0, "reference": 5.0}


@pytest.fixture(scope="module")
def rk() -> Any:
    import presetdb.kernels  # noqa: F401  (registers the example kernels)
    from presetdb.helion.registry import get_kernel

    return get_kernel("rms_norm")


@pytest.fixture
def stored_db(rk: Any, tmp_path: Path) -> Path:
    """A real db holding three tuned rms_norm presets on the 'cpu' platform."""
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
    results = tmp_path / "tuned.json"
    presetdb_results.write(results, doc)
    db = tmp_path / "stored.db"
    migrate.upgrade(db, seed_data=False)
    assert import_files(db, [results], resolver=registry()).counts["added"] == 3
    return db


class TableTimer:
    """Runs each call once (the real compiled kernel) and returns its time from TIMES."""

    def __init__(self, interrupt_on_tokens: int | None = None) -> None:
        self.calls: list[tuple[int, str]] = []  # (num_tokens, origin)
        self.interrupt_on_tokens = interrupt_on_tokens

    def __call__(self, call: refining.TimedCall) -> float:
        tokens = int(call.args[0].shape[0])
        if tokens == self.interrupt_on_tokens:
            raise KeyboardInterrupt
        call()
        self.calls.append((tokens, call.origin))
        return TIMES[call.origin]


def refiner(rk: Any, out: Path, db: Path, timer: Any, k: int = 8) -> refining.Refiner:
    return refining.Refiner(rk, out, db=db, k=k, timer=timer, device="cpu", progress=False)


def test_refine_keeps_the_fastest_and_every_candidates_time(rk: Any, stored_db: Path, tmp_path: Path) -> None:
    out = tmp_path / "refined.json"
    timer = TableTimer()
    summary = refiner(rk, out, stored_db, timer).run([SHAPE])
    assert (summary.done, summary.failed, summary.interrupted) == (1, [], False)
    doc = load(out)
    assert schema_problems(_header_validator(), doc) == []
    (entry,) = doc["entries"]
    assert entry["key"] == SHAPE
    assert entry["config"] == rk.validate_config(CONFIGS[canonical_key(FAR)], SHAPE)
    assert (entry["latency_ms"], entry["default_ms"], entry["reference_ms"]) == (1.0, 4.0, 5.0)
    assert entry["configs_tried"] == 4  # three stored configs + Helion's default
    assert [r["latency_ms"] for r in entry["runners_up"]] == [2.0, 3.0, 4.0]
    assert entry["runners_up"][0]["config"] == rk.validate_config(CONFIGS[canonical_key(MIDDLE)], SHAPE)
    # every candidate was timed once, the 3 fastest and the default 3 more times, then the reference
    origins = [o for _, o in timer.calls]
    assert origins.count("helion-default") == 4 and origins.count(canonical_key(NEAR)) == 4
    assert origins[-1] == "reference"
    run = doc["run"]
    assert run["source"] == "refine" and run["autotune_effort"] == "none" and "seed" not in run
    assert run["benchmark_method"].startswith("refine: the 8 nearest stored configs (rms_norm on cpu, stored.db)")
    assert run["device_name"] == "cpu" and doc["platform"] == "cpu"
    assert doc["kernel"]["source_hash"] == rk.source_hash()


def test_k_limits_the_stored_configs_to_the_nearest(rk: Any, stored_db: Path, tmp_path: Path) -> None:
    timer = TableTimer()
    refiner(rk, tmp_path / "k1.json", stored_db, timer, k=1).run([SHAPE])
    assert {o for _, o in timer.calls} == {canonical_key(NEAR), "helion-default", "reference"}
    (entry,) = load(tmp_path / "k1.json")["entries"]
    assert entry["config"] == rk.validate_config(CONFIGS[canonical_key(NEAR)], SHAPE) and entry["configs_tried"] == 2
    assert [r["latency_ms"] for r in entry["runners_up"]] == [4.0]


def test_candidates_from_another_platform_are_timed_for_this_one(rk: Any, stored_db: Path, tmp_path: Path) -> None:
    """--candidates-from: one GPU's presets as the candidates of another (an H200 refining
    with the H100's); the rows are this platform's, the provenance names where they came from."""
    own = tmp_path / "own.json"
    timer = TableTimer()
    refining.Refiner(rk, own, db=stored_db, timer=timer, device="cpu", platform="nvidia_h200", progress=False).run([SHAPE])
    (entry,) = load(own)["entries"]  # nothing stored for nvidia_h200: Helion's default only
    assert entry["configs_tried"] == 1 and {o for _, o in timer.calls} == {"helion-default", "reference"}

    borrowed = tmp_path / "borrowed.json"
    timer = TableTimer()
    refining.Refiner(
        rk, borrowed, db=stored_db, timer=timer, device="cpu", platform="nvidia_h200", candidates_from="cpu",
        progress=False,
    ).run([SHAPE])
    doc = load(borrowed)
    (entry,) = doc["entries"]
    assert doc["platform"] == "nvidia_h200" and entry["configs_tried"] == 4
    assert entry["config"] == rk.validate_config(CONFIGS[canonical_key(FAR)], SHAPE)
    assert doc["run"]["benchmark_method"].startswith("refine: the 8 nearest stored configs (rms_norm on cpu, stored.db)")


def test_refine_shape_is_callable_with_plain_data(rk: Any) -> None:
    """What a Ray worker gets: a kernel name, a key and candidate configs."""
    candidates = [refining.Candidate(CONFIGS[canonical_key(MIDDLE)], canonical_key(MIDDLE))]
    result = refining.refine_shape("rms_norm", SHAPE2, candidates, device="cpu", timer=TableTimer())
    assert result.winner_origin == canonical_key(MIDDLE) and result.entry["latency_ms"] == 2.0
    assert result.entry["key"] == SHAPE2 and result.failed == ()
    # Where the shape's time went, per phase, printed on its console line.
    assert set(result.phases) == {"compile", "time", "check"} and min(result.phases.values()) >= 0
    assert sum(result.phases.values()) <= result.entry["tuning_seconds"] + 0.01
    assert result.phases["compile"] > 0  # two real compiles (the candidate, Helion's default)
    line = refining.describe_result(result)
    assert line.endswith(", ".join(f"{n} {s:.1f} s" for n, s in result.phases.items()) + ")")
    # A stored config that does not fit the shape is left out with its reason, not a crash.
    bad = [refining.Candidate({"block_sizes": [1, 2, 3]}, "bad-key")]
    result = refining.refine_shape(rk, SHAPE2, bad, device="cpu", timer=TableTimer())
    assert result.winner_origin == "helion-default" and result.failed[0][0] == "bad-key"


def test_a_failed_batch_compile_says_so_and_refines_one_by_one(rk: Any) -> None:
    """Helion's batch compile (parallel precompile) needs a GPU; asked for on a CPU it fails
    for real, and refine must say so (a silent fallback hid that it never ran on the H100)
    and still refine every candidate."""
    candidates = [refining.Candidate(CONFIGS[canonical_key(MIDDLE)], canonical_key(MIDDLE))]
    with pytest.warns(BatchCompileWarning, match=r"batch compile failed \(\w+.*compiling the 2 candidate\(s\) one by one"):
        result = refining.refine_shape(
            "rms_norm", SHAPE2, candidates, device="cpu", timer=TableTimer(), parallel_compile=True
        )
    assert result.winner_origin == canonical_key(MIDDLE) and result.entry["configs_tried"] == 2 and result.failed == ()


def test_refined_file_imports_with_presetdb_import(rk: Any, stored_db: Path, tmp_path: Path) -> None:
    out = tmp_path / "refined.json"
    refiner(rk, out, stored_db, TableTimer()).run([SHAPE])
    target = tmp_path / "target.db"
    migrate.upgrade(target, seed_data=False)
    result = CliRunner().invoke(app, ["import", str(out), "--db", str(target)])
    assert result.exit_code == 0, result.output
    row = active(target)[("rms_norm", "cpu", canonical_key(SHAPE))]
    assert row["config"] == rk.validate_config(CONFIGS[canonical_key(FAR)], SHAPE)
    assert (row["latency_ms"], row["default_ms"], row["reference_ms"], row["configs_tried"]) == (1.0, 4.0, 5.0, 4)
    assert [ms for _, ms in row["runners_up"]] == [2.0, 3.0, 4.0]


def test_resume_after_ctrl_c(rk: Any, stored_db: Path, tmp_path: Path) -> None:
    out = tmp_path / "resume.json"
    summary = refiner(rk, out, stored_db, TableTimer(interrupt_on_tokens=16)).run([SHAPE, SHAPE2])
    assert summary.interrupted and summary.done == 1
    first = load(out)
    assert [e["key"] for e in first["entries"]] == [SHAPE]
    timer = TableTimer()
    summary = refiner(rk, out, stored_db, timer).run([SHAPE, SHAPE2])
    assert (summary.done, summary.skipped) == (1, 1)
    assert {t for t, _ in timer.calls} == {16}  # only the unfinished shape was timed
    doc = load(out)
    assert [e["key"] for e in doc["entries"]] == [SHAPE, SHAPE2]
    assert doc["run"]["started_at"] == first["run"]["started_at"]
    # Other settings would mix two methods in one file: refused.
    with pytest.raises(refining.RefineError, match="other settings"):
        refiner(rk, out, stored_db, TableTimer(), k=2).run([SHAPE])


def test_cli_refine_on_cpu(stored_db: Path, tmp_path: Path) -> None:
    shapes = tmp_path / "held.json"
    shapes.write_text(json.dumps({"rms_norm": [SHAPE], "matmul": []}))  # `presetdb shapes` layout
    out = tmp_path / "cli.json"
    args = ["refine", "rms_norm", "--shapes", str(shapes), "--db", str(stored_db), "--out", str(out), "--device", "cpu"]
    result = CliRunner().invoke(app, args, env={"COLUMNS": "300"})
    assert result.exit_code == 0, result.output
    assert "1 refined, 0 already there, 0 failed, of 1 shape(s)" in result.output
    (entry,) = load(out)["entries"]
    assert entry["configs_tried"] == 4 and len(entry["runners_up"]) == 3
    assert entry["latency_ms"] <= min(r["latency_ms"] for r in entry["runners_up"])
    assert load(out)["run"]["benchmark_method"].endswith(refining.CPU_METHOD)
    result = CliRunner().invoke(app, ["refine", "softmax", "--shapes", str(shapes), "--db", str(stored_db), "--out", str(out)])
    assert isinstance(result.exception, refining.RefineError)
    assert "held.json: no 'softmax' member; it has matmul, rms_norm" in str(result.exception)


def test_cli_refine_executor_options(stored_db: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--executor is tune's option: an unknown one is a usage error; ray without Ray
    installed stops before the results file, saying how to install it."""
    out = tmp_path / "x.json"
    base = ["refine", "rms_norm", "--grid", "dtype=float32;hidden=64;num_tokens=8", "--db", str(stored_db),
            "--device", "cpu", "--out", str(out)]  # fmt: skip
    bogus = CliRunner().invoke(app, [*base, "--executor", "bogus"], env={"COLUMNS": "300"})
    assert bogus.exit_code == 2 and "use local or ray" in bogus.output
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` fails as if not installed
    result = CliRunner().invoke(app, [*base, "--executor", "ray"])
    assert isinstance(result.exception, FarmError)
    assert "--executor ray needs Ray, which is not installed: pip install 'presetdb[farm]'" in str(result.exception)
    assert not out.exists()
    help_text = " ".join(CliRunner().invoke(app, ["refine", "--help"], env={"COLUMNS": "300"}).output.split())
    for option in ("--executor", "--address", "--gpus-per-task", "--cpus-per-task", "--max-retries"):
        assert option in help_text


def test_a_shape_past_the_hard_limit_is_abandoned_for_good_and_the_rerun_goes_on(
    stored_db: Path, tmp_path: Path
) -> None:
    """--shape-hard-limit: the watchdog records the shape still running as failed with
    retry false and ends the process (exit 4: a hung compile cannot be interrupted, so a
    real process must end); the rerun skips it and refines the rest. A real CLI process
    each time; refining one key in the interpreter (4 compiles) takes well over 1 s."""
    out = tmp_path / "hung.json"
    grid = "dtype=float32;hidden=64;num_tokens=8,16"
    base = [sys.executable, "-m", "presetdb", "refine", "rms_norm", "--grid", grid, "--db", str(stored_db),
            "--device", "cpu", "--out", str(out)]  # fmt: skip
    env = {**os.environ, "TRITON_INTERPRET": "1", "COLUMNS": "300"}
    first = subprocess.run([*base, "--shape-hard-limit", "1"], check=False, capture_output=True, text=True, env=env, timeout=600)
    assert first.returncode == farm.HUNG, first.stdout + first.stderr
    assert "still running after 1 s; ending the process (exit 4)" in " ".join(first.stderr.split())
    doc = load(out)
    assert doc["entries"] == []
    (failure,) = doc["failures"]
    assert failure["key"] == SHAPE and failure["retry"] is False
    assert "did not finish within --shape-hard-limit 1 s" in failure["error"]
    again = subprocess.run(base, check=False, capture_output=True, text=True, env=env, timeout=600)
    assert again.returncode == 0, again.stdout + again.stderr
    said = " ".join(again.stdout.split())
    assert "1 refined, 0 already there, 0 failed, 1 abandoned earlier (--shape-hard-limit), of 2 shape(s)" in said
    doc = load(out)
    assert [e["key"] for e in doc["entries"]] == [SHAPE2]  # SHAPE was not started again
    assert [(f["key"], f["retry"]) for f in doc["failures"]] == [(SHAPE, False)]
    assert not schema_problems(_header_validator(), doc)  # retry: false is in the format


def test_the_hard_limit_is_for_the_local_executor(stored_db: Path, tmp_path: Path) -> None:
    args = ["refine", "rms_norm", "--grid", "dtype=float32;hidden=64;num_tokens=8", "--db", str(stored_db),
            "--device", "cpu", "--out", str(tmp_path / "x.json"), "--executor", "ray", "--shape-hard-limit", "60"]  # fmt: skip
    result = CliRunner().invoke(app, args, env={"COLUMNS": "300"})
    assert result.exit_code == 2 and "only with --executor local" in " ".join(result.output.split())


def test_an_invalidated_graph_capture_is_measured_again_and_other_errors_raise() -> None:
    from presetdb.helion.rerank import CAPTURE_ATTEMPTS, retry_capture

    calls: list[str] = []
    outcomes: list[Any] = [RuntimeError("CUDA error: operation failed due to a previous error during capture"), 0.25]

    def measure() -> float:
        calls.append("measure")
        outcome = outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    assert retry_capture(measure, lambda: calls.append("sync")) == 0.25
    assert calls == ["measure", "sync", "measure"]

    def always_invalidated() -> float:
        calls.append("again")
        raise RuntimeError("operation failed due to a previous error during capture")

    calls.clear()
    with pytest.raises(RuntimeError, match="during capture"):
        retry_capture(always_invalidated, lambda: None)
    assert calls == ["again"] * CAPTURE_ATTEMPTS

    def illegal_address() -> float:
        calls.append("other")
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    calls.clear()
    with pytest.raises(RuntimeError, match="illegal memory access"):
        retry_capture(illegal_address, lambda: None)
    assert calls == ["other"]
