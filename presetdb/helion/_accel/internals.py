"""Every private Helion and Triton name the fast path uses, named once, here.

Helion and Triton promise nothing about these names. presetdb reads them only while
`status()` says the fast path is on: for (helion, triton) versions a GPU run verified
(`VERIFIED`), or when ``PRESETDB_ACCEL=1`` forces it. Everywhere else a kernel call takes
the public path (a plain Helion kernel per stored config). tests/test_accel_tripwire.py
checks each accessor below against the installed packages with real objects (a real
bound Helion kernel, a real Triton ``JITFunction``), so an upgrade that renames one of
them fails a test, not a user's model.

The accessors are plain functions on purpose: the hot path pays one call for each, and
the names live in one file.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from typing import Any

# (helion version, triton major.minor) pairs on which benchmarks/gpu_check_helion.py and
# the dispatch benchmark passed on an H100/H200 (docs/benchmarks.md, "Dispatch").
VERIFIED: frozenset[tuple[str, str]] = frozenset({("1.5.0", "3.6")})

# --------------------------------------------------------------------------- Helion
# helion.runtime.kernel.Kernel: per-signature guard extractors, and the counters Helion
# bumps when it learns a guard (specialization) or forgets everything (reset()).


def specialization_generation(kernel: Any) -> int:
    return kernel._specialization_generation  # type: ignore[no-any-return]


def reset_generation(kernel_or_bound: Any) -> int:
    return kernel_or_bound._reset_generation  # type: ignore[no-any-return]


def specialize_extra(kernel: Any) -> dict[Hashable, Any]:
    return kernel._specialize_extra  # type: ignore[no-any-return]


def seed_specialize_extra(kernel: Any) -> dict[Hashable, Any]:
    return kernel._compiler_seed_specialize_extra  # type: ignore[no-any-return]


def has_constexpr_params(kernel: Any) -> bool:
    """Whether a kernel body declares ``hl.constexpr`` parameters (keyed by value)."""
    from helion.language.constexpr import ConstExpr  # type: ignore[import-untyped]

    return any(a is ConstExpr for a in getattr(kernel, "_annotations", ()))


# helion.runtime.kernel.BoundKernel: its compiled host function and signature.


def bound_runner(bound: Any) -> Callable[..., Any] | None:
    return bound._run  # type: ignore[no-any-return]


def bound_signature(bound: Any) -> Hashable | None:
    return getattr(bound, "_base_spec_key", None)


def bound_config(bound: Any) -> Any:
    return getattr(bound, "_config", None)


# Guard extractors Helion records per signature.
GUARDED_INPUT_FACT = "_GuardedInputFact"  # a size/stride relation: lhs ==/!= rhs
METADATA_SEED_FACT = "input_tensor_metadata"  # compiler seed fact: exact tensor metadata
TD_GUARD_NAMES = frozenset({"td_layout_extractor", "td_alignment_extractor"})


@dataclass(frozen=True)
class SizeFact:
    """A `_GuardedInputFact`, read: ``lhs (==|!=) rhs`` over sources of named params;
    `block`: the lhs is a reduction extent rounded up to a power of two."""

    param_names: tuple[str, ...]
    sources: tuple[tuple[Any, Any], ...]  # (sympy symbol, torch._dynamo source)
    lhs: Any
    rhs: Any
    equal: bool
    block: bool


def size_fact(extractor: Any) -> SizeFact | None:
    fact: Any = getattr(extractor, "extractor", None)
    if fact is None or type(fact).__name__ != GUARDED_INPUT_FACT:
        return None
    return SizeFact(
        tuple(fact.param_names), tuple(fact.sources), fact.lhs, fact.rhs, bool(fact.equal), bool(fact.block)
    )


def is_metadata_seed(extractor: Any) -> bool:
    return getattr(extractor, "fact", None) == METADATA_SEED_FACT


def is_td_guard(extractor: Any) -> bool:
    """Helion's tensor-descriptor layout/alignment guards (active only for a config that
    indexes the guarded operation with tensor descriptors)."""
    inner = getattr(extractor, "extractor", extractor)
    return getattr(inner, "__name__", "") in TD_GUARD_NAMES


# Helion's generated host function: ``def f(..., *, _launcher=default_launcher)``; its
# module imports ``triton`` as a global.
LAUNCHER_KWARG = "_launcher"
HOST_TRITON_GLOBAL = "triton"


def default_launcher() -> Callable[..., Any]:
    from helion.runtime import default_launcher as launcher

    return launcher  # type: ignore[no-any-return]


def backend_specific_keys() -> frozenset[str]:
    """Config keys whose support depends on the device (e.g. Hopper-only options)."""
    from helion.autotuner.config_spec import BACKEND_SPECIFIC_KEYS  # type: ignore[import-untyped]

    return frozenset(BACKEND_SPECIFIC_KEYS)


# --------------------------------------------------------------------------- Triton
# triton.runtime.jit.JITFunction: per device, a tuple whose item 4 is the argument
# binder (args -> (bound args, specialization, options)); the globals a kernel read.
JIT_BINDER_INDEX = 4


def jit_binder(triton_kernel: Any, device: int) -> Callable[..., Any]:
    return triton_kernel.device_caches[device][JIT_BINDER_INDEX]  # type: ignore[no-any-return]


def used_globals(triton_kernel: Any) -> tuple[tuple[str, Any, dict[str, Any]], ...]:
    """(name, value when compiled, namespace) of each global a kernel reads."""
    return tuple(
        (name, value, namespace) for (name, _), (value, namespace) in triton_kernel.used_global_vals.items()
    )


def pre_run_hooks(triton_kernel: Any) -> list[Any]:
    return triton_kernel.pre_run_hooks  # type: ignore[no-any-return]


def launch_hooks(runtime_knobs: Any) -> tuple[Any, Any]:
    """Triton's launch enter/exit hook chains (their `.calls` lists)."""
    return runtime_knobs.launch_enter_hook, runtime_knobs.launch_exit_hook


def compiled_launch_parts(compiled: Any) -> tuple[Callable[..., Any], Any, Any]:
    """(C launcher, function handle, packed metadata) of a ``CompiledKernel``."""
    return compiled.run, compiled.function, compiled.packed_metadata


# The C launcher's positional arguments, as Triton's JITFunction.run passes them:
# grid x, y, z, stream, function, packed metadata, launch metadata, enter hook, exit
# hook, then the kernel's arguments. presetdb passes None for the last three of those
# (no launch hooks: checked per launch).
def c_launch(
    run: Callable[..., Any], grid: tuple[int, ...], stream: int, function: Any, packed: Any, args: Sequence[Any]
) -> None:
    n = len(grid)
    run(grid[0], grid[1] if n > 1 else 1, grid[2] if n > 2 else 1, stream, function, packed, None, None, None, *args)


def constexpr_function_type() -> type | None:
    from triton.runtime import jit

    return getattr(jit, "ConstexprFunction", None)


def cuda_current_device_getter() -> Callable[[], int]:
    """torch's C getter for the current CUDA device (no lazy-init re-check per call)."""
    import torch

    return torch._C._cuda_getDevice  # type: ignore[no-any-return]


# --------------------------------------------------------------------------- the gate


def _version(package: str) -> str | None:
    try:
        return version(package)
    except PackageNotFoundError:
        return None


@dataclass(frozen=True)
class Status:
    on: bool
    reason: str
    helion: str | None
    triton: str | None


@functools.cache
def _status(setting: str) -> Status:
    helion_v, triton_v = _version("helion"), _version("triton")
    triton_mm = ".".join((triton_v or "").split(".")[:2])
    pair = (helion_v or "?", triton_mm or "?")
    if setting == "0":
        return Status(False, "off: PRESETDB_ACCEL=0", helion_v, triton_v)
    if setting == "1":
        return Status(True, f"on: forced by PRESETDB_ACCEL=1 (helion {pair[0]}, triton {pair[1]})", helion_v, triton_v)
    if pair in VERIFIED:
        return Status(True, f"on: helion {pair[0]} with triton {pair[1]} is verified", helion_v, triton_v)
    verified = ", ".join(f"helion {h} + triton {t}" for h, t in sorted(VERIFIED))
    return Status(
        False,
        f"off: helion {pair[0]} with triton {pair[1]} is not verified (verified: {verified}); "
        "PRESETDB_ACCEL=1 forces it on",
        helion_v,
        triton_v,
    )


def status(setting: str = "auto") -> Status:
    """Whether the fast path is on for this setting and the installed versions, and why."""
    return _status(setting)
