"""How a call's arguments reach a kernel body and its key: argument adapters and key
fields built from one features function."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from presetdb.keys import KeyField, KeyValue, Policy

# Validating a stored config binds the kernel to example inputs of the key's size; above
# this many bytes they are meta tensors (shape and dtype, no storage), so a hostile key
# (65536 x 65536) costs nothing. Helion specializes on shapes and dtypes, not values.
MAX_VALIDATION_BYTES = 64 << 20


def validation_args(example_inputs: Callable[..., Any], key: dict[str, Any], device: str) -> tuple[Any, ...]:
    """Example inputs for validating a config against `key`: real ones on `device` when
    small, else meta tensors. On a CPU-only machine always meta: nothing to run there."""
    meta = example_inputs(key, device="meta")
    nbytes = sum(a.numel() * a.element_size() for a in meta if hasattr(a, "element_size"))
    if device == "cpu" or nbytes > MAX_VALIDATION_BYTES:
        return tuple(meta)
    return tuple(example_inputs(key, device=device))


# adapt(*args) -> (kernel args, restore or None): reshapes a call for the kernel body.
Adapter = Callable[..., tuple[tuple[Any, ...], Callable[[Any], Any] | None]]


def flatten_leading(index: int = 0) -> Adapter:
    """Adapter folding the leading dims of argument `index` into rows (2-D for the
    kernel); the output gets those leading dims back around its last dim."""

    def adapt(*args: Any) -> tuple[tuple[Any, ...], Callable[[Any], Any] | None]:
        x = args[index]
        if x.dim() == 2:
            return args, None
        lead = tuple(x.shape[:-1])
        flat = x.reshape(-1, x.shape[-1])
        return (*args[:index], flat, *args[index + 1 :]), lambda out: out.reshape(*lead, out.shape[-1])

    return adapt


def key_fields(
    features: Callable[..., tuple[KeyValue, ...]],
    *fields: tuple[str, Policy, str] | tuple[str, Policy, str, float],
) -> tuple[KeyField, ...]:
    """KeyFields (name, policy, description[, max_distance]) whose extractors are the
    items of one `features` function, so the spec and the hot path cannot disagree."""
    return tuple(
        KeyField(item[0], item[1], _item_of(features, i), item[2], *item[3:])
        for i, item in enumerate(fields)
    )


def _item_of(features: Callable[..., tuple[KeyValue, ...]], index: int) -> Callable[..., KeyValue]:
    return lambda *args: features(*args)[index]
