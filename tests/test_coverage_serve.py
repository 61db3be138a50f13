"""Far matches and re-ranking at run time, with real Helion kernels in the Triton
interpreter and real SQLite files: each PRESETDB_ON_FAR policy, the online rerank
(real compiles, injected timings) storing its winner in the overlay once and serving it
exactly after, near misses counted per call (memoized calls too) without SQL, and the
loop: serve far -> queue -> refine -> import -> served exactly. Also tune/refine --from-queue."""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helion_fixtures import (
    DEVICE,
    assert_close,
    block_sizes_of,
    install_interpreter_shims,
    preset_store_fixture,  # noqa: F401  (provides the preset_store fixture)
    require_interpreter,
    settle,
)

require_interpreter()
install_interpreter_shims()

import torch
from picker_fixtures import read_repository
from test_picker import StatementCounter
from typer.testing import CliRunner

import presetdb.kernels  # noqa: F401  (registers the kernels)
from presetdb.cli import app
from presetdb.helion import rerank
from presetdb.helion._accel.dispatch import exact_key
from presetdb.helion.hooks import DEFAULT_TOKEN
from presetdb.helion.registry import get_kernel
from presetdb.keys import canonical_key
from presetdb.offline import queue as queueing
from presetdb.offline import refine as refining
from presetdb.runtime import ledger as ledger_module
from presetdb.runtime.picker import get_picker, reset_picker
from presetdb.store import migrate
from presetdb.store.repository import Repository

EPS = 1e-6
NEAR8 = {"dtype": "float32", "hidden": 16, "num_tokens": 8}
FAR64 = {"dtype": "float32", "hidden": 16, "num_tokens": 64}
CALLED = {"dtype": "float32", "hidden": 16, "num_tokens": 3}  # ceil 8 is 1.42 (log2) away: far
CONFIG8, CONFIG64 = {"block_sizes": [2]}, {"block_sizes": [1]}  # Helion's default here: [4]


@pytest.fixture
def rms(preset_store: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    monkeypatch.setattr(ledger_module, "FLUSH_SECONDS", 3600)  # the tests flush by hand
    rk = get_kernel("rms_norm")
    rk.reset_runtime()
    preset_store.add("rms_norm", rk.key_spec, NEAR8, CONFIG8)
    preset_store.add("rms_norm", rk.key_spec, FAR64, CONFIG64)
    rerank.reset()
    previous = rerank.set_timer(None)
    yield rk
    rerank.set_timer(previous)
    rerank.reset()
    rk.reset_runtime()


def _policy(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    monkeypatch.setenv(name, value)
    reset_picker()


def _inputs(rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(rows, 16, device=DEVICE), torch.randn(16, device=DEVICE)


def _call(rk: Any, rows: int, times: int = 1) -> list[str]:
    """Call rms_norm `times` times on `rows` rows; the warnings it gave."""
    x, w = _inputs(rows)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        for _ in range(times):
            assert_close(rk(x, w, EPS), rk.reference(x, w, EPS), torch.float32)
    return [f"{w.category.__name__}: {w.message}" for w in record]


def _near_misses(path: Path) -> dict[str, Any]:
    return {r.requested_key: r for r in read_repository(path, Repository.near_misses)}


class OriginTimer:
    """An injected timer: runs each real compiled candidate once in the interpreter and
    returns its time from a table keyed by the candidate's origin."""

    def __init__(self, times: dict[str, float]) -> None:
        self.times = times
        self.calls: list[str] = []

    def __call__(self, call: Any) -> float:
        call()
        self.calls.append(call.origin)
        for prefix, ms in self.times.items():
            if call.origin.endswith(prefix) or call.origin == prefix:
                return ms
        raise AssertionError(f"no time for {call.origin}")


TIMES = {
    canonical_key(FAR64): 1.0,  # the farther key's config is the fastest: rerank must time
    canonical_key(NEAR8): 2.0,
    rerank.DEFAULT_ORIGIN: 3.0,
    "reference": 4.0,
}


# ---------------------------------------------------------------- PRESETDB_ON_FAR


def test_far_default_runs_helions_default_config_and_says_why(rms: Any) -> None:
    said = _call(rms, 3, times=3)
    far = [s for s in said if s.startswith("FarMatchWarning")]
    assert len(far) == 1, said  # once per key
    assert ('no stored key is within every limit; the nearest, {"dtype":"float32","hidden":16,"num_tokens":8} '
            "(cpu), is far: num_tokens 1.42 > max 1 (log2 distance); running Helion's default config instead") in far[0]
    x, w = _inputs(3)
    res = rms.resolution(x, w, EPS)
    assert res.choice is None and res.far is not None and res.far.preset.key == NEAR8
    assert res.token == DEFAULT_TOKEN and res.config is None  # Helion's default config kernel
    # (the one default config kernel of this rank: Helion's default for the first shape it served)
    assert block_sizes_of(rms.bound(x, w, EPS)) != CONFIG8["block_sizes"]
    assert rms.last_choice is None
    # a call 1.0 (log2) away (ceil 8 for 4 rows) is not far: the stored config serves it
    assert _call(rms, 4) == []
    assert rms.last_choice is not None and rms.last_choice.preset.key == NEAR8 and not rms.last_choice.far


def test_far_nearest_serves_the_far_config_with_a_warning(rms: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    _policy(monkeypatch, "PRESETDB_ON_FAR", "nearest")
    said = _call(rms, 3, times=2)
    assert len(said) == 1 and "serving it anyway (PRESETDB_ON_FAR=nearest)" in said[0]
    assert rms.last_choice is not None and rms.last_choice.far and rms.last_choice.preset.key == NEAR8
    assert block_sizes_of(rms.bound(*_inputs(3), EPS)) == CONFIG8["block_sizes"]


def test_far_rerank_without_a_gpu_serves_the_nearest_once_warned(rms: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    _policy(monkeypatch, "PRESETDB_ON_FAR", "rerank")
    said = _call(rms, 3, times=2) + _call(rms, 2)
    reranks = [s for s in said if s.startswith("RerankWarning")]
    assert len(reranks) == 1 and "rerank needs a GPU to time candidates" in reranks[0], said
    assert "the nearest stored config instead" in reranks[0]
    assert rms.last_choice is not None and rms.last_choice.preset.key == NEAR8
    overlay = get_picker().overlay_path
    assert overlay is None or not overlay.exists() or _stored(overlay) == []  # nothing stored


def _stored(overlay: Any) -> list[Any]:
    store = migrate.open_store(overlay, "ro")
    try:
        with store.read() as session:
            return [p for p in Repository(session).all_presets() if p.kernel == "rms_norm"]
    finally:
        store.dispose()


def test_far_rerank_stores_the_winner_once_and_serves_it_exactly(
    rms: Any, preset_store: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    _policy(monkeypatch, "PRESETDB_ON_FAR", "rerank")
    timer = OriginTimer(TIMES)
    rerank.set_timer(timer)
    _call(rms, 3)
    timed = len(timer.calls)
    assert timed >= 3 and {o.split(":", 1)[-1] for o in timer.calls} >= {canonical_key(NEAR8), canonical_key(FAR64), "helion-default"}
    (preset,) = preset_store.overlay_presets("rms_norm", status="active")
    assert preset.key == CALLED and preset.config == rms.validate_config(CONFIG64, CALLED)
    assert (preset.latency_ms, preset.default_ms, preset.reference_ms, preset.configs_tried) == (1.0, 3.0, 4.0, 3)
    (run,) = [r for r in preset_store.overlay_runs() if r.id == preset.run_id]
    assert run.source == "autotune" and run.benchmark_method.startswith("rerank at run time: the 8 nearest stored configs")
    store = migrate.open_store(preset_store.overlay, "ro")
    try:
        with store.read() as session:
            runners = [c.latency_ms for c in Repository(session).candidates(preset.id)]
    finally:
        store.dispose()
    assert runners == [2.0, 3.0]
    # from now on: the overlay's row, exactly; no second rerank
    for _ in range(3):
        assert _call(rms, 3) == []
    choice = rms.last_choice
    assert choice is not None and (choice.match, choice.layer, choice.far) == ("exact", "overlay", False)
    assert len(timer.calls) == timed
    assert block_sizes_of(rms.bound(*_inputs(3), EPS)) == CONFIG64["block_sizes"]


def test_miss_rerank_stores_a_key_nothing_matched(rms: Any, preset_store: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    _policy(monkeypatch, "PRESETDB_ON_MISS", "rerank")
    timer = OriginTimer(TIMES)
    rerank.set_timer(timer)
    x, w = torch.randn(8, 16, device=DEVICE).half(), torch.randn(16, device=DEVICE).half()
    assert_close(rms(x, w, EPS), rms.reference(x, w, EPS), torch.float16)
    (preset,) = preset_store.overlay_presets("rms_norm", status="active")
    assert preset.key == {"dtype": "float16", "hidden": 16, "num_tokens": 8}
    rms(x, w, EPS)
    assert rms.last_choice is not None and rms.last_choice.match == "exact" and rms.last_choice.layer == "overlay"


# ---------------------------------------------------------------- counting


def test_every_non_exact_call_is_counted_memoized_ones_too(rms: Any, preset_store: Any) -> None:
    assert rms.memo is not None  # the fast path (tests/conftest.py): calls after the first are memoized
    _call(rms, 6)  # ceil 8: near, served, memoized
    _call(rms, 8)  # exact: not counted
    sql = StatementCounter()
    try:
        _call(rms, 6, times=4)
        _call(rms, 8, times=2)
        assert len(sql) == 0, f"a served call ran SQL: {sql.statements}"
    finally:
        sql.remove()
    assert rms.last_choice is not None and rms.last_choice.match == "exact"
    x, w = _inputs(6)
    near_hit, exact_hit = rms.memo.calls[exact_key((x, w, EPS))], rms.memo.calls[exact_key((_inputs(8)[0], w, EPS))]
    assert near_hit[2] is not near_hit[3].run  # the memo counts this one's calls ...
    assert exact_hit[2] is exact_hit[3].run  # ... and keeps the exact one's runner untouched
    _call(rms, 3, times=2)  # far (policy default): counted too
    settle()
    rows = _near_misses(preset_store.overlay)
    near = rows[canonical_key({"dtype": "float32", "hidden": 16, "num_tokens": 6})]
    assert (near.count, near.match, near.far) == (5, "ceil", False)
    far = rows[canonical_key(CALLED)]
    assert far.count == 2 and far.far and json.loads(far.far_fields)["num_tokens"][1] == 1.0
    assert canonical_key(NEAR8) not in rows  # the exact calls


# ---------------------------------------------------------------- the loop


def test_serve_far_then_queue_refine_import_then_served_exactly(
    rms: Any, preset_store: Any, tmp_path: Path
) -> None:
    said = _call(rms, 3, times=4)
    assert any("is far" in s for s in said)
    settle()
    runner = CliRunner()
    queued = runner.invoke(app, ["queue", "--db", str(preset_store.overlay), "--format", "json"])
    assert queued.exit_code == 0, queued.output
    queue_file = tmp_path / "queue.json"
    queue_file.write_text(queued.output)
    (item,) = json.loads(queued.output)["items"]
    assert (item["key"], item["count"], item["far"]) == (CALLED, 4, True)
    # refine in the interpreter with injected timings (a GPU would time for real)
    out = tmp_path / "refined.json"
    keys = queueing.shapes_from_queue([queue_file], "rms_norm")
    timer = OriginTimer(TIMES)
    summary = refining.Refiner(rms, out, db=preset_store.db, timer=timer, device="cpu", progress=False).run(keys)
    assert summary.done == 1 and summary.failed == []
    imported = runner.invoke(app, ["import", str(out), "--db", str(preset_store.db)])
    assert imported.exit_code == 0, imported.output
    reset_picker()  # the deployment layer is immutable: a new process (or picker) sees the import
    assert _call(rms, 3) == []
    choice = rms.last_choice
    assert choice is not None and (choice.match, choice.layer, choice.far) == ("exact", "deployment", False)
    assert choice.preset.key == CALLED and choice.preset.config == rms.validate_config(CONFIG64, CALLED)


def test_refine_and_tune_take_the_queue(rms: Any, preset_store: Any, tmp_path: Path) -> None:
    _call(rms, 3)
    settle()
    runner = CliRunner()
    refined = tmp_path / "refined.json"
    args = ["refine", "rms_norm", "--from-queue", str(preset_store.overlay), "--db", str(preset_store.db),
            "--device", "cpu", "--out", str(refined)]
    result = runner.invoke(app, args, env={"COLUMNS": "300"})
    assert result.exit_code == 0, result.output
    assert [e["key"] for e in json.loads(refined.read_text())["entries"]] == [CALLED]
    tuned = tmp_path / "tuned.json"
    args = ["tune", "rms_norm", "--from-queue", str(preset_store.overlay), "--device", "cpu", "--out", str(tuned)]
    result = runner.invoke(app, args, env={"COLUMNS": "300"})
    assert result.exit_code == 0, result.output
    assert [e["key"] for e in json.loads(tuned.read_text())["entries"]] == [CALLED]
    both = runner.invoke(app, ["tune", "rms_norm", "--from-queue", "q.json", "--grid", "dtype=float32", "--out", "x.json"],
                        env={"COLUMNS": "300"})
    assert both.exit_code == 2 and "give exactly one of --shapes FILE, --grid SPEC or --from-queue" in both.output
    none = runner.invoke(app, ["refine", "softmax", "--from-queue", str(preset_store.overlay), "--out", "x.json"],
                         env={"COLUMNS": "300"})
    assert none.exit_code == 2 and "the queue has no softmax keys" in none.output
