"""A Triton launcher for fast dispatch: the compiled kernel is launched directly.

Helion's generated host function ends in ``_launcher(triton_kernel, grid, *args,
num_warps=..., num_stages=...)``; its default launcher calls ``JITFunction.run``,
which on every launch re-reads Triton's knobs, rebuilds an options string for its
cache key, walks hooks and global-variable checks and builds launch metadata, before
calling the compiled kernel's C launcher. On a small, launch-bound kernel that is a
large share of the host time.

`FastLauncher` keeps, per (device, Triton's own argument specialization, num_warps,
num_stages), the `CompiledKernel` that a normal launch returned, and later launches
it with the same C launcher call Triton makes. The specialization is computed by
Triton's own binder (the same code `JITFunction.run` uses: dtypes, 16-byte alignment,
integer divisibility / ==1 / range, constexpr values), so a cached kernel is reused
only where Triton would pick the same one. Anything unusual takes Triton's normal path:
the Triton interpreter, launch hooks, pre-run hooks, extra launcher options (Helion's
distributed and persistent-state arguments, ptx options), unhashable specializations,
kernels still compiling asynchronously.

In front of the binder sits an exact-values memo: the launch's non-tensor values (with
their types: 1, 1.0 and True hash alike) and each tensor's dtype and address modulo 16
map to the cached kernel the binder found for them before. Triton's specialization is
a function of exactly these (pointer dtype and 16-byte alignment, integer values,
constexpr values), so the memo refines it and skips the binder's per-argument work on
repeated launches; any new value, dtype or alignment asks the binder again.

Triton knobs that change compile options at run time (``TRITON_DEBUG``,
instrumentation) are read when a kernel is first cached, not per launch.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Hashable
from typing import Any

Launcher = Callable[..., Any]

MAX_KERNELS = 256  # per launcher; beyond it new specializations are not cached
MAX_EXACT = 8192  # exact-values memo entries per launcher (cleared when full)


class FastLauncher:
    """One per compiled runner (see the module docstring)."""

    __slots__ = ("_device", "_fallback", "_fine", "_kernels", "_knobs", "_layouts", "_stream")

    def __init__(
        self,
        fallback: Launcher,
        device: Callable[[], int] | None = None,
        stream: Callable[[int], int] | None = None,
    ) -> None:
        from triton import knobs

        if device is None or stream is None:
            from triton.runtime.driver import driver

            active = driver.active  # the GPU driver Triton launches with
            device, stream = _cheaper_current_device(active.get_current_device), active.get_current_stream
        self._fallback = fallback
        self._device = device
        self._stream = stream
        self._knobs = knobs.runtime
        # key -> (C launcher, function handle, packed metadata, CompiledKernel, JITFunction,
        #         the kernel's used globals with the values they had)
        self._kernels: dict[Hashable, tuple[Any, ...]] = {}
        # The exact-values memo: id(kernel) -> (tensor arguments getter, other arguments
        # getter), learned at its first launch; exact key -> an entry of _kernels.
        self._layouts: dict[int, tuple[Callable[[tuple[Any, ...]], tuple[Any, ...]], ...]] = {}
        self._fine: dict[Hashable, tuple[Any, ...]] = {}

    def __call__(
        self, triton_kernel: Any, grid: tuple[int, ...], *args: Any, num_warps: int, num_stages: int, **kwargs: Any
    ) -> Any:
        if kwargs or type(grid) is not tuple:
            return self._fallback(triton_kernel, grid, *args, num_warps=num_warps, num_stages=num_stages, **kwargs)
        device = self._device()
        cached = fine = None
        layout = self._layouts.get(id(triton_kernel))
        if layout is not None:  # the exact-values memo in front of Triton's binder
            tensors_of, values_of = layout
            try:
                values = values_of(args)
                fine = (id(triton_kernel), device, num_warps, num_stages, len(args), values, *map(type, values))
                for t in tensors_of(args):
                    fine += (t.dtype, t.data_ptr() & 15)
                cached = self._fine.get(fine)
            except Exception:  # noqa: BLE001  (unhashable value, a non-tensor where a tensor was)
                fine = None
        if cached is None:
            try:
                binder = triton_kernel.device_caches[device][4]
                _, specialization, _ = binder(*args)
                key = (id(triton_kernel), device, num_warps, num_stages, *specialization)
                cached = self._kernels.get(key)
            except Exception:  # noqa: BLE001  (interpreter, unhashable values, other Triton versions)
                return self._fallback(triton_kernel, grid, *args, num_warps=num_warps, num_stages=num_stages)
            if cached is None:
                compiled = self._fallback(triton_kernel, grid, *args, num_warps=num_warps, num_stages=num_stages)
                self._remember(key, triton_kernel, compiled, args)
                return compiled
            if fine is not None:
                self._remember_fine(fine, values, cached)
        knobs = self._knobs
        if (
            cached[4] is not triton_kernel
            or knobs.launch_enter_hook.calls
            or knobs.launch_exit_hook.calls
            or triton_kernel.pre_run_hooks
        ):
            return self._fallback(triton_kernel, grid, *args, num_warps=num_warps, num_stages=num_stages)
        run, function, packed, compiled, _, global_values = cached
        for name, value, namespace in global_values:  # written out: a call per launch costs
            current = namespace.get(name, _MISSING)
            if current is not value and current != value:
                return self._fallback(triton_kernel, grid, *args, num_warps=num_warps, num_stages=num_stages)
        n = len(grid)
        run(
            grid[0], grid[1] if n > 1 else 1, grid[2] if n > 2 else 1, self._stream(device),
            function, packed, None, None, None, *args,
        )
        return compiled

    def _remember(self, key: Hashable, triton_kernel: Any, compiled: Any, args: tuple[Any, ...]) -> None:
        """Cache a kernel Triton just launched, when the plain fast path can replay it."""
        if len(self._kernels) >= MAX_KERNELS or compiled is None or hasattr(compiled, "result"):
            return  # an async compile future, or too many specializations
        # Triton re-checks the globals a kernel read on every launch; so does the fast path.
        global_values = tuple(
            (name, value, namespace) for (name, _), (value, namespace) in triton_kernel.used_global_vals.items()
        )
        try:
            self._kernels[key] = (
                compiled.run, compiled.function, compiled.packed_metadata, compiled, triton_kernel, global_values,
            )
        except Exception:  # noqa: BLE001  (not a CompiledKernel we know how to launch)
            return
        if id(triton_kernel) not in self._layouts:
            self._layouts[id(triton_kernel)] = _layout(args)

    def _remember_fine(self, fine: tuple[Any, ...], values: tuple[Any, ...], cached: tuple[Any, ...]) -> None:
        """Let the exact values of this launch find `cached` without the binder. Not when
        a value is itself a tensor (the key would keep it alive)."""
        if any(hasattr(v, "data_ptr") for v in values):
            return
        if len(self._fine) >= MAX_EXACT:
            self._fine.clear()  # bounded: a stream of new sizes cannot grow memory
        self._fine[fine] = cached

    def __len__(self) -> int:
        return len(self._kernels)


_MISSING = object()


def _layout(args: tuple[Any, ...]) -> tuple[Callable[[tuple[Any, ...]], tuple[Any, ...]], ...]:
    """Getters for a kernel's pointer (tensor) arguments and its other arguments, by
    position: Helion's host code passes the same kinds at the same positions."""
    tensors = [i for i, a in enumerate(args) if hasattr(a, "data_ptr")]
    others = [i for i, a in enumerate(args) if not hasattr(a, "data_ptr")]
    return _getter(tensors), _getter(others)


def _getter(positions: list[int]) -> Callable[[tuple[Any, ...]], tuple[Any, ...]]:
    if len(positions) > 1:
        return operator.itemgetter(*positions)  # type: ignore[return-value]
    if positions:
        (only,) = positions
        return lambda args: (args[only],)
    return lambda args: ()


def _cheaper_current_device(get_device: Callable[[], int]) -> Callable[[], int]:
    """Triton (3.6) asks torch.cuda.current_device, which re-checks CUDA's lazy init
    per call; a FastLauncher only launches after Triton has, so CUDA is initialised and
    torch's C getter answers the same."""
    import torch

    if get_device is torch.cuda.current_device:
        return torch._C._cuda_getDevice
    return get_device


def fast_launcher_for(fallback: Launcher) -> Launcher:
    """A `FastLauncher` when Triton runs on a GPU driver, else `fallback` itself."""
    try:
        from triton import knobs

        if knobs.runtime.interpret:  # Triton's own reading of TRITON_INTERPRET
            return fallback
        launcher = FastLauncher(fallback)
        knobs = launcher._knobs
        if not (isinstance(knobs.launch_enter_hook.calls, list) and isinstance(knobs.launch_exit_hook.calls, list)):
            return fallback  # a Triton whose launch hooks are not hook chains
    except Exception:  # noqa: BLE001  (no GPU driver, or a Triton without these internals)
        return fallback
    return launcher
