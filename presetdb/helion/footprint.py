"""Fitting a config tuned on one shape to another: persistent reductions that would spill.

A reduction loop of ``None`` is Helion's persistent reduction: each program holds whole
rows of the reduced dimension (its next power of two) in registers. A softmax config
tuned on 32,000 columns with 32 warps holds 32 fp32 values a thread; handed to a row of
152,064 columns it holds 256. On an H100 such configs ran 3-6x slower than Helion's
looped default (benchmarks/results/nvidia_h100/seed_v2/refine_softmax.json, runners-up
of n 152,064 x 1), and Triton takes seconds to minutes to compile them: 3 s at 256 values
a thread, 45 s at 1,024, over 400 s at 4,096 (sm_90 on a CPU,
benchmarks/results/cpu/compile_footprint/). One such candidate held a GPU refine call for
its whole 10 minutes.

So a config transplanted from another key (refine's and the run-time rerank's
candidates, a search's warm-start seeds) is fitted first: each persistent reduction that
would hold more than `MAX_VALUES_PER_THREAD` becomes a loop over the largest power-of-two
block that keeps within it. Everything else in the config stays as tuned. The estimate
counts every tile of the config as live with the reduction (true of a kernel with one
tile loop, such as softmax and rms_norm) and 32 threads a warp.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

# 128 fp32 values a thread ran at full speed on an H100 (softmax n 32,768 with 8 warps,
# within 2 % of the best); 256 spilled (3x slower than looped). Registers: 255 a thread.
MAX_VALUES_PER_THREAD = 128
THREADS_PER_WARP = 32
MIN_LOOP_BLOCK = 8  # Helion's smallest reduction loop block


def _pow2_at_least(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def _tile_and_threads(config: Mapping[str, Any]) -> tuple[int, int]:
    tile = math.prod(int(b) for b in config.get("block_sizes") or [] if b)
    return max(1, tile), THREADS_PER_WARP * int(config.get("num_warps") or 4)


def values_per_thread(spec: Any, config: Mapping[str, Any]) -> int:
    """The most fp32 values a thread holds for any persistent reduction of `config` on
    the shape `spec` (a bound kernel's ConfigSpec) was made for; 0 if none is persistent."""
    loops = list(config.get("reduction_loops") or [])
    tile, threads = _tile_and_threads(config)
    most = 0
    for value, loop in zip(loops, spec.reduction_loops, strict=False):
        if value is None:
            most = max(most, tile * _pow2_at_least(loop.size_hint) // threads)
    return most


def fit_reductions(spec: Any, config: Mapping[str, Any]) -> tuple[dict[str, Any], str]:
    """(`config` fitted to the shape of `spec`, a note saying what changed or "").

    `config` is a plain normalized config. Each persistent reduction over more than
    `MAX_VALUES_PER_THREAD` values a thread is looped instead, at the largest power-of-two
    block within that many (at least `MIN_LOOP_BLOCK`)."""
    fitted = dict(config)
    loops = list(fitted.get("reduction_loops") or [])
    tile, threads = _tile_and_threads(fitted)
    notes = []
    for i, (value, loop) in enumerate(zip(loops, spec.reduction_loops, strict=False)):
        rows = _pow2_at_least(loop.size_hint)
        held = tile * rows // threads
        if value is not None or held <= MAX_VALUES_PER_THREAD or rows <= MIN_LOOP_BLOCK:
            continue
        within = max(1, MAX_VALUES_PER_THREAD * threads // tile)
        loops[i] = min(rows // 2, max(MIN_LOOP_BLOCK, 1 << (within.bit_length() - 1)))
        notes.append(f"persistent reduction {i} of {rows:,} ({held:,} values a thread) looped at {loops[i]:,}")
    if not notes:
        return fitted, ""
    fitted["reduction_loops"] = loops
    return fitted, "; ".join(notes)
