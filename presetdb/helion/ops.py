"""torch.library registration: every presetdb kernel is also `torch.ops.presetdb.<name>`.

The op is defined from the kernel body's signature (`torch.library.infer_schema`), its
implementation is the presetdb call (fast dispatch), and its fake implementation lets
torch.compile(fullgraph=True) trace it as one opaque node.

Fake implementation, when none is given: Helion's generated *host* code already holds
the kernel's output logic (allocations, views, grid arithmetic). presetdb binds a plain
copy of the kernel (no hooks, Helion's default config) to the fake inputs and runs its
compiled host function with a launcher that does nothing, so output shapes, dtypes,
strides and devices are exactly what the real call produces, for symbolic sizes too.
Pass `fake_impl=` to `register_kernel` for a kernel whose host code inspects data.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import torch
import torch.fx.traceback as fx_traceback
from torch.fx.experimental import proxy_tensor
from torch.utils._python_dispatch import _disable_current_modes

from presetdb.errors import KernelRegistrationError

if TYPE_CHECKING:
    from presetdb.helion.registry import RegisteredKernel

NAMESPACE = "presetdb"
_libraries: dict[str, torch.library.Library] = {}


def no_launch(*args: object, **kwargs: object) -> None:
    """A Helion launcher that launches nothing (fake tensors, host-overhead benchmarks)."""


@contextmanager
def _outside_callers_tracing() -> Iterator[None]:
    """Run Helion's own tracing as if no torch.compile/make_fx trace were in progress:
    no active dispatch modes, no TracingContext (whose fake mode Helion would adopt) and
    no inherited FX node metadata or in-flight op (which would mislabel Helion's nodes)."""
    saved_meta = fx_traceback.current_meta
    fx_traceback.current_meta = {}
    # make_fx records "original_aten" only when no op is being dispatched already: a
    # ContextVar in recent torch, a module global in older releases (torch 2.11).
    in_flight = getattr(proxy_tensor, "ORIGINAL_ATEN", None)
    if isinstance(in_flight, contextvars.ContextVar):
        token = in_flight.set(None)
    else:
        proxy_tensor.ORIGINAL_ATEN = None  # type: ignore[assignment]
    try:
        with _disable_current_modes(), torch._guards.tracing(None):
            yield
    finally:
        if isinstance(in_flight, contextvars.ContextVar):
            in_flight.reset(token)
        else:
            proxy_tensor.ORIGINAL_ATEN = in_flight  # type: ignore[assignment]
        fx_traceback.current_meta = saved_meta


def infer_fake(rk: RegisteredKernel) -> Callable[..., Any]:
    """The fake implementation described in the module docstring."""

    def fake(*args: Any) -> Any:
        kargs, restore = rk.adapt_args(args)
        # Helion traces the body with its own fake tensors and FX graphs; the caller's
        # modes (make_fx proxy, functionalization) must not see that. Only the host
        # function below runs under them, as the op's fake implementation should.
        with _outside_callers_tracing():
            bound = rk.shape_kernel.bind(kargs)
            runner = bound.compile_config(bound.config_spec.default_config(), allow_print=False)
        out = runner(*kargs, _launcher=no_launch)
        return out if restore is None else restore(out)

    fake.__name__ = f"{rk.name}_fake"
    return fake


def register_op(rk: RegisteredKernel, fake_impl: Callable[..., Any] | None) -> Any:
    """Define `presetdb::<name>`; returns the `torch.ops.presetdb.<name>` packet."""
    qualname = f"{NAMESPACE}::{rk.name}"
    if rk.name in _libraries or hasattr(getattr(torch.ops, NAMESPACE), rk.name):
        raise KernelRegistrationError(
            f"torch.ops.{NAMESPACE}.{rk.name} is already defined; pick another kernel name"
        )
    schema = torch.library.infer_schema(rk.body, mutates_args=rk.mutates_args)
    lib = torch.library.Library(NAMESPACE, "FRAGMENT")  # one per op, so tests can drop one
    try:
        lib.define(rk.name + schema)
        # One implementation for every backend: presetdb dispatches by device itself.
        lib.impl(rk.name, rk.call_eager, "CompositeExplicitAutograd")
        torch.library.register_fake(qualname, fake_impl or infer_fake(rk), lib=lib)
    except Exception:
        lib._destroy()
        raise
    _libraries[rk.name] = lib
    return getattr(getattr(torch.ops, NAMESPACE), rk.name)


def unregister_op(name: str) -> None:
    lib = _libraries.pop(name, None)
    if lib is not None:
        lib._destroy()
