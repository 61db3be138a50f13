"""RMS normalisation over the last dim: ``x / sqrt(mean(x**2) + eps) * weight``.

Tiles over rows only; each tile reads whole rows (Helion's ``reduction_loops`` config
can loop over the hidden dim instead). Math in float32, output in x's dtype.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import helion.language as hl
import torch

from presetdb.helion.registry import flatten_leading, key_fields, register_kernel
from presetdb.kernels.common import dtype_name, pick_dtype, randn
from presetdb.keys import KeySpec


def features(x: torch.Tensor, weight: torch.Tensor, eps: float) -> tuple[str, int, int]:
    """Key values of a (2-D) kernel call: dtype, hidden, num_tokens."""
    return dtype_name(x.dtype), x.shape[1], x.shape[0]


KEY_SPEC = KeySpec(
    key_fields(
        features,
        ("dtype", "exact", "input dtype"),
        ("hidden", "nearest", "normalised (last) dim"),
        ("num_tokens", "ceil", "rows (all leading dims)"),
    )
)


def reference(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    xf = x.float()
    out = xf / torch.sqrt(xf.pow(2).mean(dim=-1, keepdim=True) + eps) * weight.float()
    return out.to(x.dtype)


def baseline(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """What a PyTorch user calls: timed as reference_ms."""
    return torch.nn.functional.rms_norm(x, (x.shape[-1],), weight, eps)


def example_inputs(
    shape_key: dict[str, Any], device: str | torch.device = "cpu", dtype: torch.dtype | str | None = None
) -> tuple[Any, ...]:
    dt = pick_dtype(shape_key, dtype)
    hidden, tokens = int(shape_key.get("hidden", 4096)), int(shape_key.get("num_tokens", 32))
    return (randn((tokens, hidden), dt, device, 0), randn((hidden,), dt, device, 1), 1e-6)


def shapes_for(model: Any, tokens: Sequence[int]) -> list[dict[str, Any]]:
    """`presetdb shapes`: a decoder layer's two norms and the final norm normalise
    `hidden` wide rows, one per token (`model` is a `presetdb.offline.models.ModelDims`)."""
    return [{"dtype": model.dtype, "hidden": model.hidden, "num_tokens": t} for t in tokens]

@register_kernel(
    name="rms_norm",
    key_spec=KEY_SPEC,
    reference=reference,
    baseline=baseline,
    example_inputs=example_inputs,
    adapt=flatten_leading(0),
    features=features,
    description="RMS norm over the last dim with a weight",
)
def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    m, _ = x.size()
    out = torch.empty_like(x)
    for tile_m in hl.tile(m):
        row = x[tile_m, :].to(torch.float32)
        mean_sq = torch.mean(row * row, dim=-1, keepdim=True)
        inv = 1.0 / torch.sqrt(mean_sq + eps)  # not rsqrt: the Triton interpreter lacks it
        out[tile_m, :] = (row * inv * weight[:].to(torch.float32)).to(out.dtype)
    return out


# Attached after registration, not passed to the decorator: the decorator's text is part of
# the hashed kernel source (rk.source_hash(), Helion's cache key), which stored presets pin.
rms_norm.shapes_for = shapes_for
