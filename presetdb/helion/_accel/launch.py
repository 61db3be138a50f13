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
map to the cached kernel the binder found for them before. Triton's
specialization is a function of exactly these (pointer dtype and 16-byte alignment,
integer values, constexpr values), so the memo refines it and skips the binder's
per-argument work on repeated launches; any new value, dtype or alignment asks the
binder again. The memo's key and the launch's arguments come from one small function
generated per kernel (`_plan_for`: the binder is generated the same way in Triton),
because a loop over the arguments costs more than the launch it prepares.

Memoized launches pass a CUDA tensor to the C launcher as its address (an int), which
it takes as is: the address the C launcher would otherwise ask for with ``data_ptr()``
and then check with the driver. That check only catches memory the GPU cannot reach
(a CPU tensor); a CUDA tensor's address is device memory, and any other tensor is
passed as the tensor itself.

Triton knobs that change compile options at run time (``TRITON_DEBUG``,
instrumentation) are read when a kernel is first cached, not per launch.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any

from presetdb.helion._accel import internals

Launcher = Callable[..., Any]
# A kernel's plan: (device, num_warps, num_stages, *launch args) -> (exact-values memo
# key, the arguments for the C launcher).
Plan = Callable[..., tuple[tuple[Hashable, ...], tuple[Any, ...]]]

MAX_KERNELS = 256  # per launcher; beyond it new specializations are not cached
MAX_EXACT = 8192  # exact-values memo entries per kernel (cleared when full)


class FastLauncher:
    """One per compiled runner (see the module docstring)."""

    __slots__ = ("_device", "_fallback", "_hooks", "_kernels", "_plans", "_stream")

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
        self._hooks = internals.launch_hooks(knobs.runtime)  # (enter, exit) hook chains
        # key -> (C launcher, function handle, packed metadata, CompiledKernel, JITFunction,
        #         the kernel's used globals with the values they had)
        self._kernels: dict[Hashable, tuple[Any, ...]] = {}
        # The exact-values memo, per kernel: id(kernel) -> (kernel, its plan, memo key ->
        # an entry of _kernels). The plan is generated at the kernel's first launch.
        self._plans: dict[int, tuple[Any, Plan, dict[Hashable, tuple[Any, ...]]]] = {}

    def __call__(
        self, triton_kernel: Any, grid: tuple[int, ...], *args: Any, num_warps: int, num_stages: int, **kwargs: Any
    ) -> Any:
        if kwargs or type(grid) is not tuple:
            return self._fallback(triton_kernel, grid, *args, num_warps=num_warps, num_stages=num_stages, **kwargs)
        device = self._device()
        cached = fine = None
        plan = self._plans.get(id(triton_kernel))
        if plan is not None and plan[0] is triton_kernel:  # the exact-values memo
            try:
                fine, launch_args = plan[1](device, num_warps, num_stages, *args)
                cached = plan[2].get(fine)
            except Exception:  # noqa: BLE001  (unhashable value, other arguments than planned)
                fine = None
        if cached is None:
            launch_args = args  # the binder's result is valid for these objects only
            try:
                binder = internals.jit_binder(triton_kernel, device)
                _, specialization, _ = binder(*args)
                key = (id(triton_kernel), device, num_warps, num_stages, *specialization)
                cached = self._kernels.get(key)
            except Exception:  # noqa: BLE001  (interpreter, unhashable values, other Triton versions)
                return self._fallback(triton_kernel, grid, *args, num_warps=num_warps, num_stages=num_stages)
            if cached is None:
                compiled = self._fallback(triton_kernel, grid, *args, num_warps=num_warps, num_stages=num_stages)
                self._remember(key, triton_kernel, compiled, args)
                return compiled
            if fine is not None and plan is not None:
                _remember_exact(plan[2], fine, args, cached)
        enter, exit_ = self._hooks
        if cached[4] is not triton_kernel or enter.calls or exit_.calls or internals.pre_run_hooks(triton_kernel):
            return self._fallback(triton_kernel, grid, *args, num_warps=num_warps, num_stages=num_stages)
        run, function, packed, compiled, _, global_values = cached
        for name, value, namespace in global_values:  # written out: a call per launch costs
            current = namespace.get(name, _MISSING)
            if current is not value and current != value:
                return self._fallback(triton_kernel, grid, *args, num_warps=num_warps, num_stages=num_stages)
        internals.c_launch(run, grid, self._stream(device), function, packed, launch_args)
        return compiled

    def _remember(self, key: Hashable, triton_kernel: Any, compiled: Any, args: tuple[Any, ...]) -> None:
        """Cache a kernel Triton just launched, when the plain fast path can replay it."""
        if len(self._kernels) >= MAX_KERNELS or compiled is None or hasattr(compiled, "result"):
            return  # an async compile future, or too many specializations
        # Triton re-checks the globals a kernel read on every launch; so does the fast path.
        global_values = internals.used_globals(triton_kernel)
        try:
            self._kernels[key] = (*internals.compiled_launch_parts(compiled), compiled, triton_kernel, global_values)
        except Exception:  # noqa: BLE001  (not a CompiledKernel we know how to launch)
            return
        if id(triton_kernel) not in self._plans:
            self._plans[id(triton_kernel)] = (triton_kernel, _plan_for(args), {})

    def __len__(self) -> int:
        return len(self._kernels)


_MISSING = object()


def _remember_exact(
    memo: dict[Hashable, tuple[Any, ...]], fine: tuple[Hashable, ...], args: tuple[Any, ...], cached: tuple[Any, ...]
) -> None:
    """Let the exact values of this launch find `cached` without the binder. Not when a
    value is itself a tensor (the key would keep it alive)."""
    if any(hasattr(v, "data_ptr") for v in fine):
        return
    if len(memo) >= MAX_EXACT:
        memo.clear()  # bounded: a stream of new sizes cannot grow memory
    memo[fine] = cached


def _plan_for(args: tuple[Any, ...]) -> Plan:
    """Generate a kernel's plan from its first launch: Helion's host code passes the
    same kinds of arguments at the same positions. For tensors at 0 and 2 of
    (x, n, out):

        def plan(device, num_warps, num_stages, a0, a1, a2):
            c0 = a0.is_cuda; p0 = a0.data_ptr(); c2 = a2.is_cuda; p2 = a2.data_ptr()
            return ((device, num_warps, num_stages, a1, type(a1),
                     a0.dtype, p0 & 15, a2.dtype, p2 & 15),
                    (p0 if c0 else a0, a1, p2 if c2 else a2))

    A call with other arguments fails inside the plan (wrong count, or no data_ptr
    where a tensor was) and takes the binder's path."""
    names = [f"a{i}" for i in range(len(args))]
    tensors = [i for i, a in enumerate(args) if hasattr(a, "data_ptr")]
    values = [names[i] for i in range(len(args)) if i not in tensors]
    body = [f"c{i} = a{i}.is_cuda; p{i} = a{i}.data_ptr()" for i in tensors]
    key = ["device", "num_warps", "num_stages", *values, *(f"type({v})" for v in values)]
    key += [part for i in tensors for part in (f"a{i}.dtype", f"p{i} & 15")]
    launch = [f"p{i} if c{i} else a{i}" if i in tensors else names[i] for i in range(len(args))]
    source = (
        f"def plan(device, num_warps, num_stages, {', '.join(names)}):\n"
        + "".join(f"    {line}\n" for line in body)
        + f"    return ({', '.join(key)},), ({''.join(part + ', ' for part in launch)})\n"
    )
    namespace: dict[str, Any] = {}
    exec(compile(source, "<presetdb launch plan>", "exec"), namespace)  # noqa: S102  (names only, no input)
    plan: Plan = namespace["plan"]
    return plan


def _cheaper_current_device(get_device: Callable[[], int]) -> Callable[[], int]:
    """Triton (3.6) asks torch.cuda.current_device, which re-checks CUDA's lazy init
    per call; a FastLauncher only launches after Triton has, so CUDA is initialised and
    torch's C getter answers the same."""
    import torch

    if get_device is torch.cuda.current_device:
        return internals.cuda_current_device_getter()
    return get_device


def fast_launcher_for(fallback: Launcher) -> Launcher:
    """A `FastLauncher` when Triton runs on a GPU driver, else `fallback` itself."""
    try:
        from triton import knobs

        if knobs.runtime.interpret:  # Triton's own reading of TRITON_INTERPRET
            return fallback
        launcher = FastLauncher(fallback)
        if not all(isinstance(hook.calls, list) for hook in launcher._hooks):
            return fallback  # a Triton whose launch hooks are not hook chains
    except Exception:  # noqa: BLE001  (no GPU driver, or a Triton without these internals)
        return fallback
    return launcher
