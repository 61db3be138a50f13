"""SwiGLU activation: ``silu(x[..., :d]) * x[..., d:]`` with ``d = x.shape[-1] // 2``.

Tiles over (rows, d); the "up" half is read at a column offset of d. Math in float32.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import helion.language as hl
import torch

from presetdb.helion.registry import flatten_leading, key_fields, register_kernel
from presetdb.kernels.common import dtype_name, pick_dtype, randn
from presetdb.keys import KeySpec


def features(x: torch.Tensor) -> tuple[str, int, int]:
    """Key values of a (2-D) kernel call: dtype, d, num_tokens."""
    return dtype_name(x.dtype), x.shape[1] // 2, x.shape[0]


KEY_SPEC = KeySpec(
    key_fields(
        features,
        ("dtype", "exact", "input dtype"),
        ("d", "nearest", "output width (half the input's last dim)"),
        ("num_tokens", "ceil", "rows (all leading dims)"),
    )
)


def reference(x: torch.Tensor) -> torch.Tensor:
    d = x.shape[-1] // 2
    xf = x.float()
    return (torch.nn.functional.silu(xf[..., :d]) * xf[..., d : 2 * d]).to(x.dtype)


def baseline(x: torch.Tensor) -> torch.Tensor:
    """What a PyTorch user calls: timed as reference_ms."""
    d = x.shape[-1] // 2
    return torch.nn.functional.silu(x[..., :d]) * x[..., d:]


def example_inputs(
    shape_key: dict[str, Any], device: str | torch.device = "cpu", dtype: torch.dtype | str | None = None
) -> tuple[Any, ...]:
    dt = pick_dtype(shape_key, dtype)
    d, tokens = int(shape_key.get("d", 4096)), int(shape_key.get("num_tokens", 32))
    return (randn((tokens, 2 * d), dt, device, 2),)


def shapes_for(model: Any, tokens: Sequence[int]) -> list[dict[str, Any]]:
    """`presetdb shapes`: the MLP's activation, d = the intermediate size (its input, gate
    and up side by side, is 2 x d wide). MoE: routed tokens meet `experts_per_token`
    experts, so an expert-batched activation sees tokens x experts_per_token rows of the
    expert width; shared experts see every token."""
    keys = []
    for t in tokens:
        if model.intermediate:
            keys.append({"dtype": model.dtype, "d": model.intermediate, "num_tokens": t})
        if model.experts:
            keys.append({"dtype": model.dtype, "d": model.expert_intermediate, "num_tokens": t * model.experts_per_token})
        if model.shared_intermediate:
            keys.append({"dtype": model.dtype, "d": model.shared_intermediate, "num_tokens": t})
    return keys

@register_kernel(
    name="silu_mul",
    key_spec=KEY_SPEC,
    reference=reference,
    baseline=baseline,
    example_inputs=example_inputs,
    adapt=flatten_leading(0),
    features=features,
    description="silu(x[..., :d]) * x[..., d:] (SwiGLU)",
)
def silu_mul(x: torch.Tensor) -> torch.Tensor:
    m, n2 = x.size()
    d = n2 // 2
    out = torch.empty([m, d], dtype=x.dtype, device=x.device)
    for tile_m, tile_d in hl.tile([m, d]):
        gate = x[tile_m, tile_d].to(torch.float32)
        up = x[tile_m, tile_d.index + d].to(torch.float32)
        out[tile_m, tile_d] = (gate * torch.sigmoid(gate) * up).to(out.dtype)
    return out


# Attached after registration, not passed to the decorator: the decorator's text is part of
# the hashed kernel source (rk.source_hash(), Helion's cache key), which stored presets pin.
silu_mul.shapes_for = shapes_for
