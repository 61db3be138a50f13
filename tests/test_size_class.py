"""Helion's default config and config normalization follow the sizes of the call a
dynamic-shape kernel binds first; presetdb binds once per size class instead
(`presetdb.helion.args.size_class`, `RegisteredKernel.bound_for`), so what a call gets
does not depend on what the process called before. Real Helion binds and compiles, the
Triton interpreter, real SQLite files.

What it guards against (found on the CPU, 2026-12-07): a softmax over 128,256 columns
gets ``reduction_loops=[4096]`` as Helion's default, but a process that had first bound a
softmax over 1,000 columns served it a persistent reduction (its default, and every stored
looped config normalized to None); silu_mul's default block sizes follow num_tokens (2 rows
-> [2, 32], 64 rows -> [32, 32])."""

from __future__ import annotations

from typing import Any

import pytest
from helion_fixtures import (
    DEVICE,
    assert_close,
    install_interpreter_shims,
    preset_store_fixture,  # noqa: F401  (provides the preset_store fixture)
    require_interpreter,
)

require_interpreter()
install_interpreter_shims()

import helion
import torch
from helion.runtime.ref_mode import RefMode

import presetdb.kernels  # noqa: F401  (registers the kernels)
from presetdb.helion.args import size_class
from presetdb.helion.registry import get_kernel
from presetdb.helion.rerank import DEFAULT_ORIGIN, Candidate
from presetdb.offline import refine as refining

VOCAB = 128256  # Llama-3's vocabulary: rows this long get a looped reduction by default
LOOPED = {"block_sizes": [1], "reduction_loops": [4096], "num_warps": 4}


def fresh_spec(rk: Any, kargs: tuple[Any, ...]) -> Any:
    """The ConfigSpec a new Helion kernel binds for exactly these arguments: what plain
    Helion would use for a process whose first call this is."""
    kernel = helion.kernel(rk.body, static_shapes=False, autotune_effort="none", ref_mode=RefMode.OFF)
    return kernel.bind(kargs).config_spec


def softmax_input(rows: int, n: int) -> torch.Tensor:
    return torch.randn(rows, n, device=DEVICE, dtype=torch.float32)


@pytest.fixture
def softmax(preset_store: Any) -> Any:
    rk = get_kernel("softmax")
    rk.reset_runtime()
    yield rk
    rk.reset_runtime()


def test_size_class_rounds_sizes_up_to_powers_of_two_and_keeps_scalars() -> None:
    a = torch.empty(3, 1000)
    assert size_class((a, 1e-6, None)) == (("torch.float32", "cpu", (4, 1024)), 1e-6, None)
    assert size_class((torch.empty(1, 1024),)) == (("torch.float32", "cpu", (1, 1024)),)
    assert size_class((torch.empty(0, 5, dtype=torch.bfloat16),)) == (("torch.bfloat16", "cpu", (0, 8)),)
    assert size_class((torch.empty(4, 600),)) == size_class((torch.empty(3, 1000),))
    assert size_class((torch.empty(4, 1025),)) != size_class((torch.empty(4, 1024),))
    assert size_class(([1, 2],)) == ("list",)


@pytest.mark.parametrize(
    ("kernel", "keys"),
    [
        ("softmax", [{"n": 600, "num_rows": 3}, {"n": 1000, "num_rows": 4}, {"n": 100000, "num_rows": 2},
                     {"n": VOCAB, "num_rows": 3}]),
        ("silu_mul", [{"d": 256, "num_tokens": 2}, {"d": 300, "num_tokens": 37}, {"d": 512, "num_tokens": 64}]),
        ("rms_norm", [{"hidden": 100, "num_tokens": 3}, {"hidden": 3000, "num_tokens": 4}]),
    ],
)
def test_bound_for_gives_each_shape_helions_own_default_whatever_was_bound_before(kernel: str, keys: list[Any]) -> None:
    rk = get_kernel(kernel)
    for key in [*keys, *reversed(keys)]:  # the same answers in either order
        kargs = tuple(rk.adapt_args(rk.example_inputs({"dtype": "float32", **key}, DEVICE))[0])
        spec, own = rk.bound_for(kargs).config_spec, fresh_spec(rk, kargs)
        assert dict(spec.default_config()) == dict(own.default_config()), key
        if kernel != "silu_mul":  # reductions: what normalizing keeps of a loop
            looped = helion.Config(**LOOPED)
            assert dict(spec.normalized_config(looped)) == dict(own.normalized_config(looped)), key


def test_the_default_policy_serves_a_long_row_its_own_default_after_a_short_one(softmax: Any) -> None:
    short, long = softmax_input(3, 64), softmax_input(2, VOCAB)
    own = dict(fresh_spec(softmax, (long,)).default_config())
    assert own["reduction_loops"] != [None]  # Helion loops over rows this long by default
    for x in (short, long):  # no presets: both miss, PRESETDB_ON_MISS=default
        assert_close(softmax(x), softmax.reference(x), torch.float32)
    assert softmax.last_choice is None
    served = dict(softmax.bound(long)._config)
    assert served["reduction_loops"] == own["reduction_loops"]
    assert dict(softmax.bound(short)._config)["reduction_loops"] == [None]  # its own default: persistent


def test_a_stored_looped_config_keeps_its_loop_after_a_short_row_was_served(softmax: Any, preset_store: Any) -> None:
    key = {"dtype": "float32", "n": VOCAB, "num_rows": 2}
    preset_store.add("softmax", softmax.key_spec, key, softmax.validate_config(dict(LOOPED), key))
    short, long = softmax_input(3, 64), softmax_input(2, VOCAB)
    assert_close(softmax(short), softmax.reference(short), torch.float32)  # a miss, bound first
    assert_close(softmax(long), softmax.reference(long), torch.float32)
    assert softmax.last_choice is not None and softmax.last_choice.kind == "exact"
    assert dict(softmax.bound(long)._config)["reduction_loops"] == [4096]


def test_validating_a_config_normalizes_it_for_its_own_key(softmax: Any) -> None:
    short = {"dtype": "float32", "n": 1000, "num_rows": 4}
    long = {"dtype": "float32", "n": VOCAB, "num_rows": 4}
    assert softmax.validate_config(dict(LOOPED), short)["reduction_loops"] == [None]  # 1,000 fit one block
    assert softmax.validate_config(dict(LOOPED), long)["reduction_loops"] == [4096]


class DefaultFirst:
    """An injected timer: Helion's default config is the fastest, every other config 2 ms."""

    def __call__(self, call: Any) -> float:
        call()
        return 1.0 if call.origin == DEFAULT_ORIGIN else 2.0


def test_refine_ranks_each_shapes_own_default_and_candidates(softmax: Any) -> None:
    persistent = Candidate({"block_sizes": [1], "reduction_loops": [None], "num_warps": 4}, "stored-persistent")
    # on long rows, 32 warps: 128 values a thread at VOCAB's 131,072, so it is timed as it
    # is; 4 warps would be looped first (tests/test_footprint.py)
    wide = Candidate({"block_sizes": [1], "reduction_loops": [None], "num_warps": 32}, "stored-persistent")
    short = {"dtype": "float32", "n": 1000, "num_rows": 2}
    long = {"dtype": "float32", "n": VOCAB, "num_rows": 2}
    first = refining.refine_shape("softmax", short, [persistent], device="cpu", timer=DefaultFirst())
    second = refining.refine_shape("softmax", long, [wide], device="cpu", timer=DefaultFirst())
    kargs = tuple(softmax.adapt_args(softmax.example_inputs(long, DEVICE))[0])
    own = dict(fresh_spec(softmax, kargs).default_config())
    assert second.winner_origin == DEFAULT_ORIGIN and second.entry["config"]["reduction_loops"] == own["reduction_loops"]
    assert second.default_config is not None and second.default_config["reduction_loops"] == own["reduction_loops"]
    # the persistent candidate was timed as itself (a runner-up), not folded into the default
    assert [r["config"]["reduction_loops"] for r in second.entry["runners_up"]] == [[None]]
    assert first.entry["config"]["reduction_loops"] == [None] and "runners_up" not in first.entry
