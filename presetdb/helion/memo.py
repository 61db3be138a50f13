"""The call memo: a call whose exact metadata was seen before skips the shape key, the
picker and the miss policy, and runs what served that metadata last time.

Valid because a kernel's features are a function of the exact metadata (a kernel
author's contract, docs/architecture.md) and the picker's answer only changes with its
epoch. An entry is (picker epoch, choice, run, fast-path entry or None): with the fast
path on, `run` is the published runner and the entry also checks that Helion has learned
nothing since (its specialization generation); on the public path `run` is the
compiled config of that exact metadata (Helion's public ``BoundKernel.compile_config``).
Misses are never memoized.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from typing import Any

import torch

# Exact call signatures remembered per kernel: a serving engine sees one per distinct token
# count; beyond the limit the memo starts over.
CALL_MEMO_LIMIT = 16384
# Module constants: the hot path reads them without attribute lookups on `torch`.
_TENSOR, _PARAMETER, _DTYPE = torch.Tensor, torch.nn.Parameter, torch.dtype

Hit = tuple[object, Any, Callable[..., Any], Any]


def exact_key(args: Sequence[object], floats_by_value: bool = False) -> tuple[Hashable, ...] | None:
    """The call memo's key: exact tensor metadata, scalars by value (floats by type, so
    a per-call float such as a scale does not defeat the memo, unless the kernel has
    constexpr parameters); None when only the bucketed path is safe (aliasing, tensor
    subclasses, unknown argument types).

    A kernel's features may read tensor metadata and non-float scalars, never a float's
    value (docs/architecture.md)."""
    key: tuple[Hashable, ...] = ()  # grown by concatenation: cheaper than a list for a few args
    previous = None
    tensors = 0
    for a in args:
        t = type(a)
        if t is _TENSOR or t is _PARAMETER:
            if a is previous:
                return None  # aliasing: Helion keys it; leave it to the bucketed path
            previous = a
            tensors += 1
            key += (a.shape, a.stride(), a.dtype, a.device)  # type: ignore[attr-defined]
        elif t is float and not floats_by_value:
            key += (t,)
        elif t is int or t is bool or t is float or t is str or t is _DTYPE or a is None:
            key += (t, a)  # the type too: 1, 1.0 and True hash alike
        else:
            return None
    if tensors > 2 and len({id(a) for a in args if isinstance(a, torch.Tensor)}) < tensors:
        return None  # a tensor passed twice, not side by side
    return key


class CallMemo:
    """The call memo of one registered kernel (see the module docstring)."""

    __slots__ = ("calls",)

    def __init__(self) -> None:
        self.calls: dict[tuple[Hashable, ...], Hit] = {}

    def get(self, exact: tuple[Hashable, ...], epoch: object) -> Hit | None:
        hit = self.calls.get(exact)
        if hit is not None and hit[0] is epoch and (hit[3] is None or hit[3].current()):
            return hit
        return None

    def remember(self, exact: tuple[Hashable, ...], hit: Hit) -> None:
        calls = self.calls
        if len(calls) >= CALL_MEMO_LIMIT:
            calls.clear()  # bounded: a stream of new shapes cannot grow memory
        calls[exact] = hit

    def clear(self) -> None:
        self.calls = {}


__all__ = ["CALL_MEMO_LIMIT", "CallMemo", "exact_key"]
