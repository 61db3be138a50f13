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

Triton knobs that change compile options at run time (``TRITON_DEBUG``,
instrumentation) are read when a kernel is first cached, not per launch.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any

Launcher = Callable[..., Any]

MAX_KERNELS = 256  # per launcher; beyond it new specializations are not cached


class FastLauncher:
    """One per compiled runner (see the module docstring)."""

    __slots__ = ("_device", "_fallback", "_kernels", "_knobs", "_stream")

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
            device, stream = active.get_current_device, active.get_current_stream
        self._fallback = fallback
        self._device = device
        self._stream = stream
        self._knobs = knobs.runtime
        # key -> (C launcher, function handle, packed metadata, CompiledKernel, JITFunction,
        #         the kernel's used globals with the values they had)
        self._kernels: dict[Hashable, tuple[Any, ...]] = {}

    def __call__(
        self, triton_kernel: Any, grid: tuple[int, ...], *args: Any, num_warps: int, num_stages: int, **kwargs: Any
    ) -> Any:
        if kwargs or type(grid) is not tuple:
            return self._fallback(triton_kernel, grid, *args, num_warps=num_warps, num_stages=num_stages, **kwargs)
        device = self._device()
        try:
            binder = triton_kernel.device_caches[device][4]
            _, specialization, _ = binder(*args)
            key = (id(triton_kernel), device, num_warps, num_stages, *specialization)
            cached = self._kernels.get(key)
        except Exception:  # noqa: BLE001  (interpreter, unhashable values, other Triton versions)
            return self._fallback(triton_kernel, grid, *args, num_warps=num_warps, num_stages=num_stages)
        knobs = self._knobs
        if (
            cached is None
            or cached[4] is not triton_kernel
            or knobs.launch_enter_hook.calls
            or knobs.launch_exit_hook.calls
            or triton_kernel.pre_run_hooks
        ):
            compiled = self._fallback(triton_kernel, grid, *args, num_warps=num_warps, num_stages=num_stages)
            if cached is None:
                self._remember(key, triton_kernel, compiled)
            return compiled
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

    def _remember(self, key: Hashable, triton_kernel: Any, compiled: Any) -> None:
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

    def __len__(self) -> int:
        return len(self._kernels)


_MISSING = object()


def fast_launcher_for(fallback: Launcher) -> Launcher:
    """A `FastLauncher` when Triton runs on a GPU driver, else `fallback` itself."""
    import os

    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        return fallback
    try:
        launcher = FastLauncher(fallback)
        knobs = launcher._knobs
        if not (isinstance(knobs.launch_enter_hook.calls, list) and isinstance(knobs.launch_exit_hook.calls, list)):
            return fallback  # a Triton whose launch hooks are not hook chains
    except Exception:  # noqa: BLE001  (no GPU driver, or a Triton without these internals)
        return fallback
    return launcher
