"""Fitting a config stored for another key to the shape it is timed on
(`presetdb.helion.footprint`): a persistent reduction that would hold more than
MAX_VALUES_PER_THREAD values a thread (it spills, runs 3-6x slower and takes Triton
minutes to compile) is looped; nothing else changes. Real Helion ConfigSpecs of the real
softmax kernel bound in the Triton interpreter, real compiles in refine and tune."""

from __future__ import annotations

import math
from typing import Any

import pytest
from helion_fixtures import (
    DEVICE,
    install_interpreter_shims,
    preset_store_fixture,  # noqa: F401  (provides the preset_store fixture)
    require_interpreter,
)
from hypothesis import given, settings
from hypothesis import strategies as st

require_interpreter()
install_interpreter_shims()

import helion
import torch

import presetdb.kernels  # noqa: F401  (registers the kernels)
from presetdb.helion.autotune import plain_kernel
from presetdb.helion.footprint import MAX_VALUES_PER_THREAD, MIN_LOOP_BLOCK, fit_reductions, values_per_thread
from presetdb.helion.registry import get_kernel
from presetdb.helion.rerank import DEFAULT_ORIGIN, Candidate
from presetdb.offline import refine as refining
from presetdb.offline import tune as tuning

COLUMNS = (1000, 4096, 32000, 152064)  # 152,064: Qwen2's vocabulary, where a GPU refine hung


def bound_softmax(n: int, rows: int = 2) -> Any:
    rk = get_kernel("softmax")
    x = torch.randn(rows, n, device=DEVICE, dtype=torch.float32)
    return plain_kernel(rk, effort="none", seed=None, budget_seconds=None).bind((x,))


@pytest.fixture(scope="module")
def specs() -> dict[int, Any]:
    return {n: bound_softmax(n).config_spec for n in COLUMNS}


def normalized(spec: Any, **config: Any) -> dict[str, Any]:
    return dict(spec.normalized_config(helion.Config(**config)))


def test_a_persistent_config_that_would_spill_on_long_rows_is_looped(specs: dict[int, Any]) -> None:
    # tuned on 32,000 columns: block of 2 rows, 4 warps, persistent (512 values a thread there)
    tuned = {"block_sizes": [2], "num_warps": 4, "reduction_loops": [None], "num_stages": 1}
    long = normalized(specs[152064], **tuned)
    assert values_per_thread(specs[152064], long) == 2 * 262144 // 128  # 4,096: over 400 s to compile
    fitted, note = fit_reductions(specs[152064], long)
    # 128 values a thread x 128 threads / 2 rows: a loop of 8,192 columns
    assert fitted["reduction_loops"] == [8192]
    assert {k: v for k, v in fitted.items() if k != "reduction_loops"} == {
        k: v for k, v in long.items() if k != "reduction_loops"
    }
    assert "looped at 8,192" in note and "4,096 values a thread" in note
    assert normalized(specs[152064], **fitted) == fitted  # Helion keeps it as it is: a valid config


def test_configs_within_the_limit_and_looped_ones_are_left_as_they_are(specs: dict[int, Any]) -> None:
    for n, config in (
        (4096, {"block_sizes": [2], "num_warps": 4, "reduction_loops": [None]}),  # 64 values a thread
        (32000, {"block_sizes": [1], "num_warps": 32, "reduction_loops": [None]}),  # 32
        (32000, {"block_sizes": [1], "num_warps": 8, "reduction_loops": [None]}),  # 128: at the limit
    ):
        stored = normalized(specs[n], **config)
        assert stored["reduction_loops"] == [None]
        assert fit_reductions(specs[n], stored) == (stored, "")
    looped = normalized(specs[152064], block_sizes=[4], num_warps=1, reduction_loops=[4096])
    assert fit_reductions(specs[152064], looped) == (looped, "")  # a loop is never changed
    assert values_per_thread(specs[152064], looped) == 0


@settings(max_examples=150, deadline=None)
@given(
    n=st.sampled_from(COLUMNS),
    rows=st.sampled_from([1, 2, 4, 8, 16, 32]),
    warps=st.sampled_from([1, 2, 4, 8, 16, 32]),
    persistent=st.booleans(),
)
def test_fitted_configs_are_within_the_limit_and_loop_no_finer_than_needed(
    specs: dict[int, Any], n: int, rows: int, warps: int, persistent: bool
) -> None:
    spec = specs[n]
    config = normalized(spec, block_sizes=[rows], num_warps=warps, reduction_loops=[None if persistent else 64])
    fitted, note = fit_reductions(spec, config)
    threads, width = 32 * warps, 1 << (n - 1).bit_length()
    held = rows * width // threads
    if config["reduction_loops"] != [None] or held <= MAX_VALUES_PER_THREAD:
        assert (fitted, note) == (config, "")
        return
    (loop,) = fitted["reduction_loops"]
    assert loop is not None and note and math.log2(loop).is_integer() and MIN_LOOP_BLOCK <= loop < width
    assert rows * loop // threads <= MAX_VALUES_PER_THREAD or loop == MIN_LOOP_BLOCK
    assert rows * 2 * loop // threads > MAX_VALUES_PER_THREAD or 2 * loop >= width  # the largest that fits
    assert normalized(spec, **fitted) == fitted
    assert {k: v for k, v in fitted.items() if k != "reduction_loops"} == {
        k: v for k, v in config.items() if k != "reduction_loops"
    }


class SpillLoses:
    """An injected timer: a config still holding a persistent reduction of 152,064-column
    rows runs 5 ms, anything else 1 ms, Helion's default 2 ms. Records what it timed."""

    def __init__(self) -> None:
        self.timed: list[tuple[str, list[Any]]] = []

    def __call__(self, call: Any) -> float:
        call()
        if call.config is None:
            return 3.0  # the PyTorch reference
        self.timed.append((call.origin, list(call.config["reduction_loops"])))
        if call.origin == DEFAULT_ORIGIN:
            return 2.0
        return 5.0 if call.config["reduction_loops"] == [None] else 1.0


def test_refine_times_a_long_rows_candidates_fitted_and_stores_the_fitted_winner(preset_store: Any) -> None:
    key = {"dtype": "float32", "n": 152064, "num_rows": 2}
    spilling = Candidate({"block_sizes": [1], "num_warps": 4, "reduction_loops": [None]}, "stored n 32,000")
    fits = Candidate({"block_sizes": [1], "num_warps": 32, "reduction_loops": [None]}, "stored n 8,192")
    timer = SpillLoses()
    result = refining.refine_shape("softmax", key, [spilling, fits], device="cpu", timer=timer)
    origins = {origin: loops for origin, loops in timer.timed}
    assert origins["stored n 32,000 (persistent reduction 0 of 262,144 (2,048 values a thread) looped at 16,384)"] == [16384]
    # 256 values a thread with 32 warps: over the limit too, looped at 131,072
    assert next(loops for origin, loops in timer.timed if origin.startswith("stored n 8,192")) == [131072]
    assert all(loops != [None] for _, loops in timer.timed)  # no spilling config was compiled
    assert result.winner_origin.startswith("stored n 32,000") and result.entry["config"]["reduction_loops"] == [16384]
    assert result.entry["config"]["num_warps"] == 4  # the rest of the stored config, as tuned


def test_tune_seeds_are_fitted_to_the_searched_rows() -> None:
    rk = get_kernel("softmax")
    key = {"dtype": "float32", "n": 152064, "num_rows": 2}
    short = {"dtype": "float32", "n": 1000, "num_rows": 2}
    seed = {"block_sizes": [1], "num_warps": 4, "reduction_loops": [None], "num_stages": 1}
    seen: list[list[dict[str, Any]]] = []

    def search(request: tuning.SearchRequest) -> tuning.SearchOutcome:
        seen.append([dict(c) for c in request.plain.bind(request.args).settings.autotune_seed_configs or ()])
        return tuning.SearchOutcome(dict(request.plain.bind(request.args).config_spec.default_config()), 1)

    work = tuning.ShapeTuner(effort="none", seed=1, budget_seconds=None, device="cpu", search=search,
                             timer=tuning.cpu_timer(1), check=False)
    work.tune(rk, key, [seed])
    work.tune(rk, short, [seed])
    assert [c["reduction_loops"] for c in seen[0]] == [[16384]] and seen[0][0]["num_warps"] == 4
    assert seen[1] == [seed]  # 1,000 columns: persistent is fine, the seed is passed on as given
