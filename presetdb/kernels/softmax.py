"""Softmax over the last dim (max-subtracted). Tiles over rows; math in float32."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import helion.language as hl
import torch

from presetdb.helion.registry import flatten_leading, key_fields, register_kernel
from presetdb.kernels.common import dtype_name, pick_dtype, randn
from presetdb.keys import KeySpec


def features(x: torch.Tensor) -> tuple[str, int, int]:
    """Key values of a (2-D) kernel call: dtype, n, num_rows."""
    return dtype_name(x.dtype), x.shape[1], x.shape[0]


KEY_SPEC = KeySpec(
    key_fields(
        features,
        ("dtype", "exact", "input dtype"),
        ("n", "nearest", "softmax (last) dim"),
        ("num_rows", "ceil", "rows (all leading dims)"),
    )
)


def reference(x: torch.Tensor) -> torch.Tensor:
    return torch.softmax(x.float(), dim=-1).to(x.dtype)


def baseline(x: torch.Tensor) -> torch.Tensor:
    """What a PyTorch user calls: timed as reference_ms."""
    return torch.softmax(x, dim=-1)


def example_inputs(
    shape_key: dict[str, Any], device: str | torch.device = "cpu", dtype: torch.dtype | str | None = None
) -> tuple[Any, ...]:
    dt = pick_dtype(shape_key, dtype)
    n, rows = int(shape_key.get("n", 4096)), int(shape_key.get("num_rows", 32))
    return (randn((rows, n), dt, device, 3),)


# Eager attention scores: prefill of one sequence of t tokens in this range; shorter and
# longer sequences go to fused attention kernels in a server.
ATTENTION_TOKENS = (128, 4096)


def shapes_for(model: Any, tokens: Sequence[int]) -> list[dict[str, Any]]:
    """`presetdb shapes`: the logits, one row per token over the vocabulary (sampling);
    MoE routers, one row per token over the experts; eager attention in prefill, heads x t
    rows of t scores (t in ATTENTION_TOKENS)."""
    low, high = ATTENTION_TOKENS
    keys = []
    for t in tokens:
        keys.append({"dtype": model.dtype, "n": model.vocab, "num_rows": t})
        if model.experts:
            keys.append({"dtype": model.dtype, "n": model.experts, "num_rows": t})
        if low <= t <= high:
            keys.append({"dtype": model.dtype, "n": t, "num_rows": model.heads * t})
    return keys

@register_kernel(
    name="softmax",
    key_spec=KEY_SPEC,
    reference=reference,
    baseline=baseline,
    example_inputs=example_inputs,
    adapt=flatten_leading(0),
    features=features,
    description="softmax over the last dim",
)
def softmax(x: torch.Tensor) -> torch.Tensor:
    m, _ = x.size()
    out = torch.empty_like(x)
    for tile_m in hl.tile(m):
        row = x[tile_m, :].to(torch.float32)
        shifted = row - torch.amax(row, dim=-1, keepdim=True)
        e = torch.exp(shifted)
        out[tile_m, :] = (e / torch.sum(e, dim=-1, keepdim=True)).to(out.dtype)
    return out


# Attached after registration, not passed to the decorator: the decorator's text is part of
# the hashed kernel source (rk.source_hash(), Helion's cache key), which stored presets pin.
softmax.shapes_for = shapes_for
