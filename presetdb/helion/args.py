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
# On a GPU, larger inputs are uninitialised device tensors (no fill) while they fit in this
# share of free memory, meta beyond: with torch 2.11 on an H100, Helion could not lower a
# reduction on meta inputs (softmax's amax, rms_norm's mean: InductorLoweringError;
# benchmarks/results/nvidia_h100/coverage/heldout_eval_h100/README.md).
DEVICE_VALIDATION_SHARE = 4


def validation_kind(nbytes: int, device: str, free_bytes: Callable[[], int]) -> str:
    """What `validation_args` binds to: "example" (real example inputs), "empty"
    (uninitialised on `device`) or "meta". `free_bytes` is asked only when it matters."""
    if device == "cpu":
        return "meta"  # a CPU-only machine: nothing runs, shapes are enough
    if nbytes <= MAX_VALIDATION_BYTES:
        return "example"
    return "empty" if nbytes <= free_bytes() // DEVICE_VALIDATION_SHARE else "meta"


def empty_like_on(args: tuple[Any, ...], device: str) -> tuple[Any, ...]:
    """`args` with each tensor replaced by an uninitialised one of its shape, strides and
    dtype on `device`; other arguments as they are."""
    import torch

    return tuple(
        torch.empty_strided(a.shape, a.stride(), dtype=a.dtype, device=device) if isinstance(a, torch.Tensor) else a
        for a in args
    )


def _free_bytes(device: str) -> int:
    import torch

    return int(torch.cuda.mem_get_info(torch.device(device))[0]) if device.startswith("cuda") else 0


def validation_args(example_inputs: Callable[..., Any], key: dict[str, Any], device: str) -> tuple[Any, ...]:
    """Example inputs for validating a config against `key` (`validation_kind`)."""
    meta = tuple(example_inputs(key, device="meta"))
    nbytes = sum(a.numel() * a.element_size() for a in meta if hasattr(a, "element_size"))
    kind = validation_kind(nbytes, device, lambda: _free_bytes(device))
    if kind == "example":
        return tuple(example_inputs(key, device=device))
    return empty_like_on(meta, device) if kind == "empty" else meta


def size_class(args: tuple[Any, ...]) -> tuple[Any, ...]:
    """What a dynamic-shape Helion kernel's defaults depend on, per argument: a tensor's
    dtype, device type and sizes rounded up to a power of two (0 and 1 stay: Helion
    specializes on them); another argument's value where it is a plain scalar.

    Helion binds a ``static_shapes=False`` kernel once per specialization (dtype, rank,
    size 0/1/2+) and takes its ConfigSpec from the sizes of that first call: the default
    config (silu_mul's block sizes follow num_tokens up to 32) and what normalizing a
    config keeps (a softmax ``reduction_loops`` of 4096 becomes None, a persistent
    reduction, when the first call had rows of 1,000). Within one size class these agree
    (tests/test_size_class.py), so presetdb binds once per class, never per first call."""
    out: list[Any] = []
    for a in args:
        if hasattr(a, "shape") and hasattr(a, "dtype"):
            sizes = tuple(s if s < 2 else 1 << (int(s) - 1).bit_length() for s in a.shape)
            out.append((str(a.dtype), a.device.type, sizes))
        elif a is None or isinstance(a, (bool, int, float, str)):
            out.append(a)
        else:
            out.append(type(a).__name__)
    return tuple(out)


class SizeClassBinds:
    """Helion kernels bound once per size class (`size_class`) of their arguments: `make`
    builds a fresh kernel for each new class, bound to the first arguments of that class."""

    def __init__(self, make: Callable[[], Any]) -> None:
        self.make = make
        self.bounds: dict[tuple[Any, ...], Any] = {}

    def __call__(self, kargs: tuple[Any, ...]) -> Any:
        cls = size_class(kargs)
        bound = self.bounds.get(cls)
        if bound is None:
            bound = self.bounds[cls] = self.make().bind(kargs)
        return bound


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
