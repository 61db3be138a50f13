"""FastLauncher's caching rules, on any machine.

The GPU half (real Triton kernels, alignment and divisibility specializations, CUDA
graphs) is tests/test_helion_gpu.py. Here a JITFunction stand-in with Triton's own
attributes shows which launches reuse a cached compiled kernel and which go through
Triton's path."""

from __future__ import annotations

from typing import Any

import pytest

pytest.importorskip("triton")
from triton import knobs

from presetdb.integrations.launch import FastLauncher, fast_launcher_for

STREAM = 1234


class Compiled:
    """A CompiledKernel stand-in: records the C launcher calls."""

    def __init__(self, spec: tuple[Any, ...]) -> None:
        self.spec = spec
        self.function = object()
        self.packed_metadata = object()
        self.launches: list[tuple[Any, ...]] = []

    def run(self, *args: Any) -> None:
        self.launches.append(args)


class Jit:
    """A JITFunction stand-in: Triton's binder specializes ints by value % 16."""

    def __init__(self) -> None:
        self.device_caches = {0: ({}, {}, None, None, self.bind)}
        self.used_global_vals: dict[Any, Any] = {}
        self.pre_run_hooks: list[Any] = []
        self.compiled: dict[tuple[Any, ...], Compiled] = {}

    def bind(self, *args: Any, **options: Any) -> tuple[dict[str, Any], list[tuple[Any, ...]], dict[str, Any]]:
        spec = [("i32", "D" if a % 16 == 0 else "") if isinstance(a, int) else ("fp32", None) for a in args]
        return {}, spec, options

    def run(self, *args: Any, grid: tuple[int, ...], num_warps: int, num_stages: int) -> Compiled:
        _, spec, _ = self.bind(*args)
        key = (tuple(spec), num_warps, num_stages)
        compiled = self.compiled.setdefault(key, Compiled(key))
        compiled.launches.append(("via triton", grid, *args))
        return compiled


class Fallback:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, kernel: Jit, grid: tuple[int, ...], *args: Any, num_warps: int, num_stages: int, **kw: Any) -> Any:
        self.calls += 1
        return kernel.run(*args, grid=grid, num_warps=num_warps, num_stages=num_stages)


@pytest.fixture
def launcher() -> tuple[FastLauncher, Fallback]:
    fallback = Fallback()
    return FastLauncher(fallback, device=lambda: 0, stream=lambda device: STREAM), fallback


def test_same_specialization_launches_the_cached_kernel_directly(launcher) -> None:
    fast, fallback = launcher
    jit = Jit()
    fast(jit, (4,), 32, 1.5, num_warps=4, num_stages=2)
    assert fallback.calls == 1
    fast(jit, (8, 2), 48, 2.5, num_warps=4, num_stages=2)  # 48 % 16 == 0: same specialization
    assert fallback.calls == 1
    (compiled,) = jit.compiled.values()
    # the C launcher gets the full 3-d grid, the current stream, no hooks, then the args
    assert compiled.launches[-1] == (8, 2, 1, STREAM, compiled.function, compiled.packed_metadata, None, None, None, 48, 2.5)


def test_a_new_specialization_or_options_go_through_triton_once(launcher) -> None:
    fast, fallback = launcher
    jit = Jit()
    for _ in range(3):
        fast(jit, (1,), 32, 1.0, num_warps=4, num_stages=2)
        fast(jit, (1,), 33, 1.0, num_warps=4, num_stages=2)  # not divisible by 16
        fast(jit, (1,), 32, 1.0, num_warps=8, num_stages=2)  # other options
    assert fallback.calls == 3
    assert len(fast) == 3
    assert len(jit.compiled) == 3
    # each launch ran the kernel Triton compiled for exactly those arguments
    for compiled in jit.compiled.values():
        assert all(launch[-2] in ((32,) if compiled.spec[0][0][1] == "D" else (33,)) for launch in compiled.launches)


def test_two_kernels_never_share_a_cache_entry(launcher) -> None:
    fast, fallback = launcher
    a, b = Jit(), Jit()
    fast(a, (1,), 16, num_warps=4, num_stages=2)
    fast(b, (1,), 16, num_warps=4, num_stages=2)
    fast(b, (1,), 16, num_warps=4, num_stages=2)
    assert fallback.calls == 2
    assert len(b.compiled) == 1 and len(next(iter(b.compiled.values())).launches) == 2


def test_extra_launcher_options_and_callable_grids_always_take_tritons_path(launcher) -> None:
    fast, fallback = launcher
    jit = Jit()
    fast(jit, (1,), 16, num_warps=4, num_stages=2)
    fast(jit, (1,), 16, num_warps=4, num_stages=2)
    assert fallback.calls == 1
    fast(jit, (1,), 16, num_warps=4, num_stages=2, ptx_options="x")
    assert fallback.calls == 2
    fast(jit, [1], 16, num_warps=4, num_stages=2)  # not a tuple
    assert fallback.calls == 3


def test_launch_hooks_and_pre_run_hooks_take_tritons_path(launcher) -> None:
    fast, fallback = launcher
    jit = Jit()
    fast(jit, (1,), 16, num_warps=4, num_stages=2)

    def hook(metadata: Any) -> None:
        pass

    knobs.runtime.launch_enter_hook.add(hook)
    try:
        fast(jit, (1,), 16, num_warps=4, num_stages=2)
    finally:
        knobs.runtime.launch_enter_hook.remove(hook)
    assert fallback.calls == 2
    jit.pre_run_hooks.append(lambda *a, **k: None)
    fast(jit, (1,), 16, num_warps=4, num_stages=2)
    assert fallback.calls == 3
    jit.pre_run_hooks.clear()
    fast(jit, (1,), 16, num_warps=4, num_stages=2)
    assert fallback.calls == 3


def test_a_changed_kernel_global_takes_tritons_path(launcher) -> None:
    fast, fallback = launcher
    jit = Jit()
    namespace = {"SCALE": 2}
    jit.used_global_vals = {("SCALE", 0): (2, namespace)}
    fast(jit, (1,), 16, num_warps=4, num_stages=2)
    fast(jit, (1,), 16, num_warps=4, num_stages=2)
    assert fallback.calls == 1
    namespace["SCALE"] = 3  # Triton raises on this; the fast path must let it
    fast(jit, (1,), 16, num_warps=4, num_stages=2)
    assert fallback.calls == 2


def test_binder_failures_and_async_compiles_are_not_cached(launcher) -> None:
    fast, fallback = launcher
    jit = Jit()

    def broken(*args: Any) -> Any:
        raise TypeError("another Triton")

    jit.device_caches = {0: ({}, {}, None, None, broken)}
    fast(jit, (1,), 16, num_warps=4, num_stages=2)
    fast(jit, (1,), 16, num_warps=4, num_stages=2)
    assert fallback.calls == 2 and len(fast) == 0

    class Future:
        def result(self) -> None:
            return None

    jit = Jit()
    fast._fallback = lambda *a, **k: Future()
    fast(jit, (1,), 16, num_warps=4, num_stages=2)
    assert len(fast) == 0


def test_no_fast_launcher_under_the_interpreter(monkeypatch) -> None:
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    fallback = Fallback()
    assert fast_launcher_for(fallback) is fallback
