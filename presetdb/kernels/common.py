"""Small helpers shared by the example kernels (feature extraction, example inputs)."""

from __future__ import annotations

from typing import Any

import torch

_NAMES: dict[torch.dtype, str] = {}


def dtype_name(dtype: torch.dtype) -> str:
    """'bfloat16' for torch.bfloat16: the spelling stored in shape keys."""
    name = _NAMES.get(dtype)
    if name is None:
        name = _NAMES[dtype] = str(dtype).removeprefix("torch.")
    return name


def torch_dtype(name: str | torch.dtype) -> torch.dtype:
    if isinstance(name, torch.dtype):
        return name
    dtype = getattr(torch, str(name), None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"unknown dtype {name!r}; use a torch dtype name such as 'bfloat16'")  # noqa: TRY004
    return dtype


def pick_dtype(shape_key: dict[str, Any], dtype: torch.dtype | str | None) -> torch.dtype:
    return torch_dtype(dtype if dtype is not None else shape_key.get("dtype", "bfloat16"))


def randn(shape: tuple[int, ...], dtype: torch.dtype, device: str | torch.device, seed: int) -> torch.Tensor:
    """Deterministic random input (never zeros), generated in float32 then cast. On the
    meta device: shape and dtype only, nothing allocated (import validation)."""
    if torch.device(device).type == "meta":
        return torch.empty(shape, dtype=dtype, device="meta")
    gen = torch.Generator(device="cpu").manual_seed(seed)
    return torch.randn(shape, generator=gen, dtype=torch.float32).to(device=device, dtype=dtype)
