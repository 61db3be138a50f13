"""How a call's arguments reach a kernel body and its key: argument adapters and key
fields built from one features function."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from presetdb.keys import KeyField, KeyValue, Policy

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
    features: Callable[..., tuple[KeyValue, ...]], *fields: tuple[str, Policy, str]
) -> tuple[KeyField, ...]:
    """KeyFields (name, policy, description) whose extractors are the items of one
    `features` function, so the spec and the hot path cannot disagree."""
    return tuple(
        KeyField(name, policy, _item_of(features, i), description)
        for i, (name, policy, description) in enumerate(fields)
    )


def _item_of(features: Callable[..., tuple[KeyValue, ...]], index: int) -> Callable[..., KeyValue]:
    return lambda *args: features(*args)[index]
