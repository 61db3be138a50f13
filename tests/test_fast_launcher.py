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

from presetdb.helion._accel.launch import FastLauncher, fast_launcher_for

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

    binds = 0  # binder calls (the exact-values memo skips it)

    def bind(self, *args: Any, **options: Any) -> tuple[dict[str, Any], list[tuple[Any, ...]], dict[str, Any]]:
        self.binds += 1
        spec = [_specialize(a) for a in args]
        return {}, spec, options

    def run(self, *args: Any, grid: tuple[int, ...], num_warps: int, num_stages: int) -> Compiled:
        key = (tuple(_specialize(a) for a in args), num_warps, num_stages)
        compiled = self.compiled.setdefault(key, Compiled(key))
        compiled.launches.append(("via triton", grid, *args))
        return compiled


def _specialize(a: Any) -> tuple[Any, ...]:
    """Triton's rules, in short: pointers by dtype and 16-byte alignment, bools as i1,
    ints by divisibility by 16 (and == 1), floats as fp32."""
    if hasattr(a, "data_ptr"):
        return (f"*{a.dtype}", "D" if a.data_ptr() % 16 == 0 else "")
    if isinstance(a, bool):
        return ("i1", None)
    if isinstance(a, int):
        return ("i32", "1" if a == 1 else "D" if a % 16 == 0 else "")
    return ("fp32", None)


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


def test_exact_values_skip_the_binder_but_never_cross_a_specialization(launcher) -> None:
    """Repeated launches with the same non-tensor values and the same pointer dtypes and
    alignments are found without Triton's binder; anything that could change Triton's
    specialization (alignment, dtype, a value, its type) consults the binder again."""
    torch = pytest.importorskip("torch")
    fast, fallback = launcher
    jit = Jit()
    x = torch.randn(64, dtype=torch.float32)
    fast(jit, (1,), x, 32, 1.5, num_warps=4, num_stages=2)  # through Triton: cached, layout learned
    fast(jit, (1,), x, 32, 1.5, num_warps=4, num_stages=2)  # binder, then the exact memo
    binds = jit.binds
    for _ in range(3):
        fast(jit, (1,), torch.randn(64), 32, 1.5, num_warps=4, num_stages=2)  # new tensor, same class
    assert jit.binds == binds and fallback.calls == 1
    (compiled,) = jit.compiled.values()
    assert len(compiled.launches) == 5

    base = torch.randn(65)
    misaligned = base[1:]  # 4 bytes past a 16-byte boundary
    assert misaligned.data_ptr() % 16 != 0
    variants = [
        (misaligned, 32, 1.5),  # alignment
        (x.double(), 32, 1.5),  # pointer dtype
        (x, 33, 1.5),  # an int's value (divisibility)
        (x, 32, 2.5),  # a float's value (consulted; Triton shares the kernel)
        (x, 32.0, 1.5),  # float where an int was (32 == 32.0 and hashes alike)
    ]
    for args in variants:
        before = jit.binds
        fast(jit, (1,), *args, num_warps=4, num_stages=2)
        assert jit.binds == before + 1, args
    for _ in range(2):
        fast(jit, (1,), x, 1, 1.5, num_warps=4, num_stages=2)  # memoized: the int 1
    before = jit.binds
    fast(jit, (1,), x, True, 1.5, num_warps=4, num_stages=2)  # True == 1 and hashes alike
    assert jit.binds == before + 1
    # each launch ran the kernel compiled for its own specialization
    for compiled in jit.compiled.values():
        for launch in compiled.launches:
            specialization = tuple(_specialize(a) for a in launch[-3:])
            assert compiled.spec[0] == specialization


def test_values_that_are_tensors_are_never_kept_by_the_memo(launcher) -> None:
    torch = pytest.importorskip("torch")
    fast, _ = launcher
    jit = Jit()
    x = torch.randn(16)
    fast(jit, (1,), x, 16, num_warps=4, num_stages=2)  # layout: a tensor, then a value
    for _ in range(3):
        fast(jit, (1,), x, torch.randn(16), num_warps=4, num_stages=2)  # a tensor where a value was
    fast(jit, (1,), x, 16, num_warps=4, num_stages=2)  # the kinds of the first launch: memoized
    ((_, _, memo),) = fast._plans.values()
    assert memo and all(not hasattr(v, "data_ptr") for key in memo for v in key)


def test_the_exact_values_memo_is_bounded(launcher, monkeypatch) -> None:
    from presetdb.helion._accel import launch

    monkeypatch.setattr(launch, "MAX_EXACT", 3)
    fast, fallback = launcher
    jit = Jit()
    for value in range(16, 16 * 10, 16):  # nine values, one specialization (all divisible by 16)
        for _ in range(2):
            fast(jit, (1,), value, num_warps=4, num_stages=2)
        assert all(len(memo) <= 3 for _, _, memo in fast._plans.values())
    assert fallback.calls == 1 and len(fast) == 1


class DeviceBuffer:
    """A CUDA tensor stand-in: what the plan reads from a tensor."""

    def __init__(self, address: int, is_cuda: bool = True) -> None:
        self.address = address
        self.is_cuda = is_cuda
        self.dtype = "float32"

    def data_ptr(self) -> int:
        return self.address


def test_memoized_launches_pass_cuda_addresses_and_anything_else_as_is(launcher) -> None:
    """The C launcher gets a CUDA tensor's address (an int) on memoized launches; a tensor
    that is not on a CUDA device is always passed as the tensor, so Triton's own check
    (which rejects memory the GPU cannot reach) still sees it."""
    fast, fallback = launcher
    jit = Jit()
    first = DeviceBuffer(4096)
    fast(jit, (1,), first, 32, num_warps=4, num_stages=2)  # through Triton, with the object
    (compiled,) = jit.compiled.values()
    assert compiled.launches[-1][2] is first
    fast(jit, (1,), DeviceBuffer(8192), 32, num_warps=4, num_stages=2)  # binder: the object
    assert isinstance(compiled.launches[-1][-2], DeviceBuffer)
    for address in (12288, 16384):
        fast(jit, (1,), DeviceBuffer(address), 32, num_warps=4, num_stages=2)  # memoized
        assert compiled.launches[-1][-2:] == (address, 32)
    host = DeviceBuffer(20480, is_cuda=False)  # same dtype and alignment, not CUDA memory
    for _ in range(3):
        fast(jit, (1,), host, 32, num_warps=4, num_stages=2)
        assert compiled.launches[-1][-2] is host
    fast(jit, (1,), DeviceBuffer(4100), 32, num_warps=4, num_stages=2)  # misaligned: its own kernel
    assert len(jit.compiled) == 2 and fallback.calls == 2


def test_a_launch_unlike_the_plan_takes_the_binders_path(launcher) -> None:
    """The plan is generated from a kernel's first launch; other argument counts or a
    non-tensor where a tensor was are specialized by Triton's binder as before."""
    fast, fallback = launcher
    jit = Jit()
    fast(jit, (1,), DeviceBuffer(4096), 32, num_warps=4, num_stages=2)
    fast(jit, (1,), 16, 32, num_warps=4, num_stages=2)  # an int where a tensor was
    fast(jit, (1,), DeviceBuffer(4096), 32, 48, num_warps=4, num_stages=2)  # one more argument
    assert fallback.calls == 3 and len(jit.compiled) == 3
    binds = jit.binds
    fast(jit, (1,), 16, 32, num_warps=4, num_stages=2)
    assert jit.binds == binds + 1  # not memoized: unlike the plan
    for compiled in jit.compiled.values():
        for launch in compiled.launches:
            launched = launch[2:] if launch[0] == "via triton" else launch[9:]  # Triton's path / the C launcher
            assert compiled.spec[0] == tuple(_specialize(a) for a in launched)
