"""Fast dispatch: after the first call, presetdb calls Helion's compiled runner directly.
Each case checks that the right runner is chosen (a new one where Helion would compile
a new specialization) and that results equal Helion's own path."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from helion_fixtures import (
    DEVICE,
    assert_close,
    install_interpreter_shims,
    preset_store_fixture,  # noqa: F401  (provides the preset_store fixture)
    require_interpreter,
)

require_interpreter()
install_interpreter_shims()

import helion.language as hl
import torch

import presetdb.kernels  # noqa: F401  (registers the kernels)
from presetdb.helion._accel.dispatch import INT32_INDEX_LIMIT, dispatch_key, fast_guard
from presetdb.helion.registry import get_kernel, register_kernel, unregister_kernel
from presetdb.keys import KeyField, KeySpec


def _dtype(t: torch.Tensor) -> str:
    return str(t.dtype).removeprefix("torch.")


def scale_add(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    out = torch.empty_like(x)
    for tile in hl.tile(x.size()):
        out[tile] = x[tile] * 2.0 + y[tile]
    return out


def head_add(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    n = y.size(0)
    out = torch.empty_like(y)
    for tile in hl.tile(n):
        out[tile] = x[tile] + y[tile]
    return out


SCALE_SPEC = KeySpec(
    (
        KeyField("dtype", "exact", lambda x, y: _dtype(x)),
        KeyField("rank", "exact", lambda x, y: x.dim()),
        KeyField("numel", "ceil", lambda x, y: x.numel()),
    )
)
HEAD_SPEC = KeySpec((KeyField("dtype", "exact", lambda x, y: _dtype(y)), KeyField("n", "ceil", lambda x, y: y.size(0))))


def _example(shape_key: dict[str, Any], device: str = "cpu", dtype: Any = None) -> tuple[Any, ...]:
    x = torch.randn(4, 4, device=device)
    return x, torch.randn_like(x)


@pytest.fixture(autouse=True)
def _no_far_guard(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests store a few keys for calls of every size: the far-match guard (tested in
    tests/test_coverage_guard.py) would serve them Helion's default config instead."""
    monkeypatch.setenv("PRESETDB_MAX_DISTANCE", "*=inf")


@pytest.fixture(scope="module")
def kernels() -> Iterator[tuple[Any, Any]]:
    scale = register_kernel(
        name="test_scale_add", key_spec=SCALE_SPEC, reference=lambda x, y: x * 2 + y, example_inputs=_example
    )(scale_add)
    head = register_kernel(
        name="test_head_add", key_spec=HEAD_SPEC, reference=lambda x, y: x[: y.size(0)] + y, example_inputs=_example
    )(head_add)
    yield scale, head
    unregister_kernel("test_scale_add")
    unregister_kernel("test_head_add")


def _store_scale_configs(store: Any, rk: Any) -> None:
    for dtype in ("float32", "float16"):
        for rank, blocks in ((1, [8]), (2, [2, 4]), (3, [1, 2, 4])):
            store.add(rk.name, rk.key_spec, {"dtype": dtype, "rank": rank, "numel": 4096}, {"block_sizes": blocks})


class SlowCounter:
    """Counts calls that missed the runner cache (went through Helion)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, rk: Any) -> None:
        from presetdb.helion import call

        self.calls = 0
        original = call.through_helion

        def counted(*args: Any) -> Any:
            self.calls += 1
            return original(*args)

        monkeypatch.setattr(call, "through_helion", counted)


def _check(rk: Any, *args: Any) -> torch.Tensor:
    """presetdb's result equals Helion's own keyed path and the reference."""
    out = rk(*args)
    helion_out = rk.helion_kernel(*args)
    torch.testing.assert_close(out, helion_out, rtol=0, atol=0)
    expected = rk.reference(*args)
    assert_close(out.float(), expected.float(), out.dtype)
    return out


def test_second_call_uses_the_compiled_runner(kernels, preset_store, monkeypatch) -> None:
    scale, _ = kernels
    _store_scale_configs(preset_store, scale)
    slow = SlowCounter(monkeypatch, scale)
    x, y = torch.randn(3, 5, device=DEVICE), torch.randn(3, 5, device=DEVICE)
    _check(scale, x, y)
    assert slow.calls == 1
    for rows in (3, 6, 9):  # other sizes of the same class reuse the runner
        x, y = torch.randn(rows, 5, device=DEVICE), torch.randn(rows, 5, device=DEVICE)
        _check(scale, x, y)
    assert slow.calls == 1
    entry = scale.entry_for(x, y)
    assert entry is not None and list(entry.bound._config.config["block_sizes"]) == [2, 4]


def test_dtype_change_gets_its_own_runner(kernels, preset_store, monkeypatch) -> None:
    scale, _ = kernels
    _store_scale_configs(preset_store, scale)
    x32, y32 = torch.randn(4, 6, device=DEVICE), torch.randn(4, 6, device=DEVICE)
    x16, y16 = x32.half(), y32.half()
    assert dispatch_key((x32, y32)) != dispatch_key((x16, y16))
    out32, out16 = _check(scale, x32, y32), _check(scale, x16, y16)
    assert (out32.dtype, out16.dtype) == (torch.float32, torch.float16)
    token = scale.resolution(x32, y32).token
    assert token == scale.resolution(x16, y16).token  # same stored config ...
    e32, e16 = scale.entry_for(x32, y32), scale.entry_for(x16, y16)
    assert e32 is not None and e16 is not None and e32.bound is not e16.bound  # ... two compilations
    slow = SlowCounter(monkeypatch, scale)
    _check(scale, x32, y32)
    _check(scale, x16, y16)
    assert slow.calls == 0


def test_rank_change_gets_its_own_runner(kernels, preset_store, monkeypatch) -> None:
    scale, _ = kernels
    _store_scale_configs(preset_store, scale)
    shapes = [(7,), (3, 5), (2, 3, 4)]
    calls = [(torch.randn(s, device=DEVICE), torch.randn(s, device=DEVICE)) for s in shapes]
    assert len({dispatch_key(c) for c in calls}) == 3
    for c in calls:
        _check(scale, *c)
    slow = SlowCounter(monkeypatch, scale)
    for c in calls:
        _check(scale, *c)
    assert slow.calls == 0


def test_sizes_zero_and_one(kernels, preset_store, monkeypatch) -> None:
    scale, _ = kernels
    _store_scale_configs(preset_store, scale)
    shapes = [(5, 5), (1, 5), (5, 1), (0, 5), (1, 1)]
    calls = [(torch.randn(s, device=DEVICE), torch.randn(s, device=DEVICE)) for s in shapes]
    assert len({dispatch_key(c) for c in calls}) == len(shapes)
    for _ in range(2):  # each new class teaches Helion a guard; the second round settles
        for c in calls:
            out = scale(*c)
            torch.testing.assert_close(out, c[0] * 2 + c[1])
    # Helion specializes a size-1 dim; those runners are distinct compilations
    bounds = [scale.entry_for(*c) for c in calls if c[0].numel()]
    assert len({id(e.bound) for e in bounds if e is not None}) >= 3
    # now alternate: every call must pick the runner of its own class
    slow = SlowCounter(monkeypatch, scale)
    for c in calls + calls[::-1]:
        if c[0].numel():
            _check(scale, *c)
        else:
            assert scale(*c).shape == c[0].shape
    assert slow.calls == 0
    # another size in an existing class reuses that runner
    x1, y1 = torch.randn(1, 9, device=DEVICE), torch.randn(1, 9, device=DEVICE)
    _check(scale, x1, y1)
    assert slow.calls == 0


def test_non_contiguous_inputs(kernels, preset_store) -> None:
    scale, _ = kernels
    _store_scale_configs(preset_store, scale)
    base = torch.randn(6, 4, device=DEVICE)
    transposed = base.t()  # strides (1, 4)
    broadcast = torch.randn(4, 1, device=DEVICE).expand(4, 6)  # stride 0
    contiguous = torch.randn(4, 6, device=DEVICE)
    keys = {dispatch_key(c) for c in [(contiguous, contiguous.clone()), (transposed, contiguous), (contiguous, broadcast)]}
    assert len(keys) == 3
    for args in [(contiguous, contiguous.clone()), (transposed, contiguous), (contiguous, broadcast), (transposed, broadcast)]:
        _check(scale, *args)
        _check(scale, *args)
    # rms_norm on a strided row view (through the op, 2-D input is not copied)
    rms = get_kernel("rms_norm")
    preset_store.add("rms_norm", rms.key_spec, {"dtype": "float32", "hidden": 16, "num_tokens": 8}, {"block_sizes": [2]})
    x = torch.randn(5, 32, device=DEVICE)[:, ::2]
    w = torch.randn(16, device=DEVICE)
    assert not x.is_contiguous()
    _check(rms, x, w, 1e-6)


def test_aliased_arguments_take_helions_path(kernels, preset_store, monkeypatch) -> None:
    scale, _ = kernels
    _store_scale_configs(preset_store, scale)
    x = torch.randn(3, 4, device=DEVICE)
    assert dispatch_key((x, x)) is None
    slow = SlowCounter(monkeypatch, scale)
    for _ in range(2):
        torch.testing.assert_close(scale(x, x), 3 * x)
    assert slow.calls == 2


def test_64_bit_indexing_gets_its_own_runner(kernels, preset_store) -> None:
    _, head = kernels
    preset_store.add(head.name, head.key_spec, {"dtype": "float32", "n": 64}, {"block_sizes": [4]})
    y = torch.randn(6, device=DEVICE)
    huge = torch.randn(1, device=DEVICE).expand(INT32_INDEX_LIMIT + 8)  # numel > 2**31, 4 bytes
    small = torch.randn(16, device=DEVICE)
    key_small, key_huge = dispatch_key((small, y)), dispatch_key((huge, y))
    assert key_small is not None and key_huge is not None
    assert key_small[-1] is False and key_huge != key_small  # the int64 flag differs
    torch.testing.assert_close(head(small, y), small[:6] + y)
    torch.testing.assert_close(head(huge, y), huge[:6] + y)
    e_small, e_huge = head.entry_for(small, y), head.entry_for(huge, y)
    assert e_small is not None and e_huge is not None and e_small.bound is not e_huge.bound
    assert "tl.int64" in e_huge.bound.to_triton_code(e_huge.bound._config)
    assert "tl.int64" not in e_small.bound.to_triton_code(e_small.bound._config)
    # the 64-bit runner also computes correctly on small inputs (a cheap functional check)
    torch.testing.assert_close(e_huge.run(small, y), small[:6] + y)
    torch.testing.assert_close(head(huge, y), huge[:6] + y)  # and stays selected


def test_fast_guards_agree_with_helions_extractors(preset_store) -> None:
    rms = get_kernel("rms_norm")
    preset_store.add("rms_norm", rms.key_spec, {"dtype": "float32", "hidden": 16, "num_tokens": 8}, {"block_sizes": [2]})
    x, w = torch.randn(5, 16, device=DEVICE), torch.randn(16, device=DEVICE)
    rms(x, w, 1e-6)
    bound = rms.bound(x, w, 1e-6)
    kernel = bound.kernel  # the plain Helion kernel of the served config
    extractors = kernel._specialize_extra[bound._base_spec_key]
    assert extractors, "rms_norm is expected to carry a guard fact (weight.size(0) == x.size(1))"
    probes = [
        (x, w, 1e-6),
        (torch.randn(3, 8), torch.randn(8), 1e-6),
        (torch.randn(3, 8), torch.randn(4), 1e-6),
        (torch.randn(1, 1), torch.randn(1), 1e-6),
        (torch.randn(4, 2).t(), torch.randn(4), 1e-6),
    ]
    compiled = 0
    for extractor in extractors:
        fast = fast_guard(extractor, 3)
        if fast is None:
            continue
        compiled += 1
        for args in probes:
            assert fast(args) == extractor(args)
    assert compiled >= 1


def test_switching_between_stored_configs_never_mixes_runners(preset_store, monkeypatch) -> None:
    rms = get_kernel("rms_norm")
    preset_store.add("rms_norm", rms.key_spec, {"dtype": "float32", "hidden": 16, "num_tokens": 2}, {"block_sizes": [1]})
    preset_store.add("rms_norm", rms.key_spec, {"dtype": "float32", "hidden": 16, "num_tokens": 64}, {"block_sizes": [4]})
    w = torch.randn(16, device=DEVICE)
    small, large = torch.randn(2, 16, device=DEVICE), torch.randn(11, 16, device=DEVICE)
    for x in (small, large):
        _check(rms, x, w, 1e-6)
    slow = SlowCounter(monkeypatch, rms)
    for x in (small, large, small, large):
        _check(rms, x, w, 1e-6)
    assert slow.calls == 0
    e_small = rms.entry_for(small, w, 1e-6)
    e_large = rms.entry_for(large, w, 1e-6)
    assert e_small is not None and e_large is not None
    assert (e_small.bound._config.config["block_sizes"], e_large.bound._config.config["block_sizes"]) == ([1], [4])


def test_published_runner_keeps_helions_host_code_with_its_own_launcher(preset_store) -> None:
    """published_runner copies Helion's generated host function with another `_launcher`
    default and presetdb's `triton` for host code: same code, same results, the launcher
    sees every launch, and Helion's own function keeps its default and globals."""
    import triton

    from presetdb.helion._accel.dispatch import launcher_of, published_runner
    from presetdb.helion._accel.host_triton import HostTriton

    rms = get_kernel("rms_norm")
    preset_store.add("rms_norm", rms.key_spec, {"dtype": "float32", "hidden": 16, "num_tokens": 8}, {"block_sizes": [2]})
    x, w = torch.randn(5, 16, device=DEVICE), torch.randn(16, device=DEVICE)
    rms(x, w, 1e-6)
    entry = rms.entry_for(x, w, 1e-6)
    assert entry is not None
    raw = entry.raw_run
    assert isinstance(entry.run.__globals__["triton"], HostTriton)  # what the fast path calls
    default = raw.__kwdefaults__["_launcher"]
    seen: list[tuple[Any, ...]] = []

    def recording(kernel: Any, grid: Any, *args: Any, **kw: Any) -> Any:
        seen.append((kernel, grid))
        return default(kernel, grid, *args, **kw)

    run = published_runner(raw, recording)
    assert run.__code__ is raw.__code__ and launcher_of(run) is recording
    torch.testing.assert_close(run(x, w, 1e-6), raw(x, w, 1e-6), rtol=0, atol=0)
    assert len(seen) == 1 and seen[0][1] == (3,)  # one launch of cdiv(5 rows, block 2) programs
    assert raw.__kwdefaults__["_launcher"] is default
    assert raw.__globals__["triton"] is triton and isinstance(run.__globals__["triton"], HostTriton)
    for hidden in (1, 3, 16, 33, 100):  # the host code's next_power_of_2 sizes the reduction
        xs, ws = torch.randn(3, hidden, device=DEVICE), torch.randn(hidden, device=DEVICE)
        torch.testing.assert_close(run(xs, ws, 1e-6), rms.reference(xs, ws, 1e-6), rtol=1e-5, atol=1e-5)
