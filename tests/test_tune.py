"""`presetdb tune` on CPU (TRITON_INTERPRET=1) with the injected search: a few real
candidate configs compiled by Helion and run in Triton's interpreter, timed by a CPU
timer. Checks the file, provenance, resume, Ctrl-C and failures."""

from __future__ import annotations

import importlib.metadata
import re
from pathlib import Path
from typing import Any

import pytest
from import_fixtures import load, registry
from typer.testing import CliRunner

from presetdb.cli import app
from presetdb.helion.rerank import FINAL_ROUNDS
from presetdb.offline import tune as tuning
from presetdb.offline.importers import import_files
from presetdb.offline.importers.presetdb_results import _header_validator, schema_problems
from presetdb.store import migrate

SHAPES = [
    {"dtype": "float32", "hidden": 64, "num_tokens": 4},
    {"dtype": "float32", "hidden": 128, "num_tokens": 2},
]
STAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")


@pytest.fixture
def resolver() -> Any:
    return registry()


@pytest.fixture(scope="module")
def rk() -> Any:
    import presetdb.kernels  # noqa: F401  (registers the example kernels)
    from presetdb.helion.registry import get_kernel

    return get_kernel("rms_norm")


class Counting:
    """The CPU search, counting calls; raises `fail_with` on call number `fail_on`."""

    def __init__(self, fail_on: int | None = None, fail_with: BaseException | None = None) -> None:
        self.inner = tuning.sample_search(count=2, timer=tuning.cpu_timer(1))
        self.calls: list[dict[str, Any]] = []
        self.fail_on, self.fail_with = fail_on, fail_with

    def __call__(self, request: tuning.SearchRequest) -> tuning.SearchOutcome:
        self.calls.append(request.key)
        if self.fail_on == len(self.calls) and self.fail_with is not None:
            raise self.fail_with
        return self.inner(request)


def make_tuner(rk: Any, out: Path, search: Any) -> tuning.Tuner:
    return tuning.Tuner(
        rk,
        out,
        effort="quick",
        search=search,
        timer=tuning.cpu_timer(1),
        device="cpu",
        seed=7,
        progress=False,
        benchmark_method="cpu timer (tests)",
    )


def test_tune_writes_a_valid_file_with_timings_and_provenance(rk: Any, resolver: Any, tmp_path: Path) -> None:
    out = tmp_path / "rms_norm_cpu.json"
    summary = make_tuner(rk, out, Counting()).run(SHAPES)
    assert (summary.done, summary.skipped, summary.failed, summary.interrupted) == (2, 0, [], False)
    doc = load(out)
    assert schema_problems(_header_validator(), doc) == []
    assert doc["platform"] == "cpu" and doc["kernel"]["name"] == "rms_norm"
    assert doc["kernel"]["source_hash"] == rk.source_hash()
    assert doc["kernel"]["key_schema"] == rk.key_spec.to_schema()
    assert [e["key"] for e in doc["entries"]] == SHAPES
    for entry in doc["entries"]:
        assert entry["latency_ms"] > 0 and entry["default_ms"] > 0 and entry["reference_ms"] > 0
        assert entry["configs_tried"] == 2 and entry["tuning_seconds"] >= 0
        assert rk.validate_config(entry["config"], entry["key"]) == entry["config"]
        assert len(entry.get("runners_up", [])) <= 1
    run = doc["run"]
    assert run["source"] == "tune" and run["device_name"] == "cpu" and "@" in run["tuned_by"]
    assert run["helion_version"] == importlib.metadata.version("helion")
    assert run["presetdb_version"] and run["torch_version"]
    assert run["triton_version"] and run["host"]
    assert (run["autotune_effort"], run["seed"], run["benchmark_method"]) == ("quick", 7, "cpu timer (tests)")
    assert STAMP.match(run["started_at"]) and STAMP.match(run["finished_at"])
    assert run["started_at"] <= run["finished_at"]
    # Per-row provenance: the machine that tuned each row and how it timed.
    for entry in doc["entries"]:
        assert entry["run"]["host"] == run["host"] and entry["run"]["device_name"] == "cpu"
        assert entry["run"]["benchmark_method"] == "cpu timer (tests)"
    # What tune writes, import reads.
    db = tmp_path / "t.db"
    migrate.upgrade(db, seed_data=False)
    assert import_files(db, [out], resolver=resolver).counts["added"] == 2


def test_resume_skips_shapes_already_in_the_file(rk: Any, tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    make_tuner(rk, out, Counting()).run(SHAPES[:1])
    started = load(out)["run"]["started_at"]
    second = Counting()
    summary = make_tuner(rk, out, second).run(SHAPES)
    assert second.calls == [SHAPES[1]]
    assert (summary.done, summary.skipped) == (1, 1)
    doc = load(out)
    assert [e["key"] for e in doc["entries"]] == SHAPES
    assert doc["run"]["started_at"] == started


def test_ctrl_c_keeps_finished_shapes(rk: Any, tmp_path: Path) -> None:
    out = tmp_path / "c.json"
    search = Counting(fail_on=2, fail_with=KeyboardInterrupt())
    summary = make_tuner(rk, out, search).run(SHAPES)
    assert summary.interrupted and summary.done == 1
    doc = load(out)
    assert [e["key"] for e in doc["entries"]] == SHAPES[:1]
    assert schema_problems(_header_validator(), doc) == []
    assert not list(tmp_path.glob(".*.tmp"))  # no temp file left behind


def test_a_failing_shape_is_recorded_and_retried(rk: Any, tmp_path: Path) -> None:
    out = tmp_path / "f.json"
    summary = make_tuner(rk, out, Counting(fail_on=1, fail_with=RuntimeError("out of registers"))).run(SHAPES)
    assert summary.done == 1 and summary.failed[0][1] == "RuntimeError: out of registers"
    doc = load(out)
    (failure,) = doc["failures"]
    assert (failure["key"], failure["error"]) == (SHAPES[0], "RuntimeError: out of registers")
    # the traceback's tail, ending with the error
    assert failure["traceback"].rstrip().endswith("RuntimeError: out of registers")
    retry = Counting()
    make_tuner(rk, out, retry).run(SHAPES)
    assert retry.calls == [SHAPES[0]]
    doc = load(out)
    assert "failures" not in doc and len(doc["entries"]) == 2


def test_resume_refuses_another_kernels_file(rk: Any, tmp_path: Path) -> None:
    out = tmp_path / "x.json"
    make_tuner(rk, out, Counting()).run(SHAPES[:1])
    other = tuning.Tuner(
        rk,
        out,
        device="cpu",
        platform="nvidia_h100",
        search=Counting(),
        timer=tuning.cpu_timer(1),
        progress=False,
    )
    with pytest.raises(tuning.TuneError, match="holds rms_norm on cpu"):
        other.run(SHAPES)


def test_shapes_from_grid_and_file(tmp_path: Path) -> None:
    grid = tuning.parse_grid("dtype=bfloat16; hidden=2048,4096; num_tokens=1,16")
    assert len(grid) == 4 and grid[0] == {"dtype": "bfloat16", "hidden": 2048, "num_tokens": 1}
    with pytest.raises(tuning.TuneError, match="NAME=V1"):
        tuning.parse_grid("hidden")
    path = tmp_path / "shapes.jsonl"
    path.write_text(
        '{"hidden": 64, "num_tokens": 2, "dtype": "float32"}\n\n{"hidden": 128, "num_tokens": 1, "dtype": "float32"}\n'
    )
    assert [s["hidden"] for s in tuning.load_shapes(path)] == [64, 128]


def test_tune_cli_on_cpu(tmp_path: Path) -> None:
    out = tmp_path / "cli.json"
    args = [
        "tune",
        "rms_norm",
        "--grid",
        "dtype=float32;hidden=64;num_tokens=2",
        "--device",
        "cpu",
        "--out",
        str(out),
        "--seed",
        "3",
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "1 tuned, 0 already there, 0 failed" in " ".join(result.output.split())
    assert load(out)["run"]["seed"] == 3
    again = CliRunner().invoke(app, args)
    assert "0 tuned, 1 already there" in " ".join(again.output.split())


def test_one_lucky_timing_does_not_make_a_config_the_preset(rk: Any, tmp_path: Path) -> None:
    """The search winner looks fastest once (1.0) but its re-timings are slow (3.0):
    the runner-up's median (1.4) wins."""
    first_pass = [1.0, 2.0, 1.5]  # search winner, Helion default, runner-up
    one_round = [3.0, 1.4, 2.0]  # finalists in first-pass order: winner, runner-up, default
    script = iter([*first_pass, *one_round * FINAL_ROUNDS, 9.0])  # 9.0: PyTorch reference

    def timer(fn: Any) -> float:
        return next(script)

    search = tuning.sample_search(count=2, timer=tuning.cpu_timer(1))
    outcomes: list[tuning.SearchOutcome] = []

    def recording(request: tuning.SearchRequest) -> tuning.SearchOutcome:
        outcomes.append(search(request))
        return outcomes[-1]

    tuner = make_tuner(rk, tmp_path / "t.json", recording)
    tuner.timer = timer
    tuner.run(SHAPES[:1])
    (entry,) = load(tmp_path / "t.json")["entries"]
    (outcome,) = outcomes
    assert len(outcome.runners_up) == 1 and outcome.runners_up[0] != outcome.config
    assert entry["config"] == rk.validate_config(dict(outcome.runners_up[0]), entry["key"])
    assert (entry["latency_ms"], entry["default_ms"], entry["reference_ms"]) == (1.4, 2.0, 9.0)
    # the lucky first timing is gone: every runner-up reports its median
    assert {r["latency_ms"] for r in entry["runners_up"]} <= {2.0, 3.0}
