"""Matrix multiply ``a @ b`` (a: [..., k], b: [k, n]) with a float32 accumulator."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import helion.language as hl
import torch

from presetdb.helion.registry import flatten_leading, key_fields, register_kernel
from presetdb.kernels.common import dtype_name, pick_dtype, randn
from presetdb.keys import KeySpec


def features(a: torch.Tensor, b: torch.Tensor) -> tuple[str, int, int, int]:
    """Key values of a (2-D) kernel call: dtype, n, k, m."""
    return dtype_name(a.dtype), b.shape[1], a.shape[1], a.shape[0]


KEY_SPEC = KeySpec(
    key_fields(
        features,
        ("dtype", "exact", "input dtype"),
        ("n", "nearest", "output columns"),
        ("k", "nearest", "reduction dim"),
        ("m", "ceil", "output rows (all leading dims of a)"),
    )
)


def reference(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a.float() @ b.float()).to(a.dtype)


def baseline(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """What a PyTorch user calls (cuBLAS on a GPU): timed as reference_ms."""
    return a @ b


def example_inputs(
    shape_key: dict[str, Any], device: str | torch.device = "cpu", dtype: torch.dtype | str | None = None
) -> tuple[Any, ...]:
    dt = pick_dtype(shape_key, dtype)
    m, n, k = (int(shape_key.get(f, 1024)) for f in ("m", "n", "k"))
    return (randn((m, k), dt, device, 4), randn((k, n), dt, device, 5))


def shapes_for(model: Any, tokens: Sequence[int]) -> list[dict[str, Any]]:
    """`presetdb shapes`: a decoder layer's projections, a [tokens, k] @ b [k, n]: qkv
    (hidden -> (heads + 2 kv_heads) x head_dim), o (heads x head_dim -> hidden), gate_up
    (hidden -> 2 x intermediate), down (intermediate -> hidden) and lm_head (hidden ->
    vocab). MoE: the router (hidden -> experts) on every token; each expert's gate_up and
    down on its share of the routed tokens, m = ceil(tokens x experts_per_token / experts)
    (balanced routing); shared experts on every token."""
    h = model.hidden
    pairs = [(model.qkv_size, h), (h, model.q_size), (model.vocab, h)]  # (n, k) on every token
    if model.intermediate:
        pairs += [(2 * model.intermediate, h), (h, model.intermediate)]
    if model.shared_intermediate:
        pairs += [(2 * model.shared_intermediate, h), (h, model.shared_intermediate)]
    if model.experts:
        pairs.append((model.experts, h))
    keys = []
    for t in tokens:
        keys += [{"dtype": model.dtype, "n": n, "k": k, "m": t} for n, k in pairs]
        if model.experts:
            m = -(-t * model.experts_per_token // model.experts)
            width = model.expert_intermediate
            keys += [{"dtype": model.dtype, "n": n, "k": k, "m": m} for n, k in ((2 * width, h), (h, width))]
    return keys

@register_kernel(
    name="matmul",
    key_spec=KEY_SPEC,
    reference=reference,
    baseline=baseline,
    example_inputs=example_inputs,
    adapt=flatten_leading(0),
    features=features,
    description="a @ b with a float32 accumulator",
)
def matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    m, k = a.size()
    _, n = b.size()
    out = torch.empty([m, n], dtype=a.dtype, device=a.device)
    for tile_m, tile_n in hl.tile([m, n]):
        acc = hl.zeros([tile_m, tile_n], dtype=torch.float32)
        for tile_k in hl.tile(k):
            acc = torch.addmm(acc, a[tile_m, tile_k], b[tile_k, tile_n])
        out[tile_m, tile_n] = acc.to(out.dtype)
    return out


# Attached after registration, not passed to the decorator: the decorator's text is part of
# the hashed kernel source (rk.source_hash(), Helion's cache key), which stored presets pin.
matmul.shapes_for = shapes_for
