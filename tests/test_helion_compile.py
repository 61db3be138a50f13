"""torch.compile(fullgraph=True) through the custom ops' (inferred) fake implementation."""

from __future__ import annotations

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
# inductor/AOT touch torch.jit internally; not ours to fix
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")

import torch
from torch._dynamo.testing import CompileCounterWithBackend
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.fx.experimental.symbolic_shapes import ShapeEnv

import presetdb.kernels  # noqa: F401  (registers the kernels)
from presetdb.helion.registry import get_kernel

ARGS = {
    "rms_norm": lambda rows: (torch.randn(rows, 16, device=DEVICE), torch.randn(16, device=DEVICE), 1e-6),
    "silu_mul": lambda rows: (torch.randn(rows, 12, device=DEVICE),),
    "softmax": lambda rows: (torch.randn(rows, 12, device=DEVICE),),
    "matmul": lambda rows: (torch.randn(rows, 24, device=DEVICE), torch.randn(24, 16, device=DEVICE)),
}
CONFIGS = {
    "rms_norm": ({"dtype": "float32", "hidden": 16, "num_tokens": 8}, {"block_sizes": [2]}),
    "silu_mul": ({"dtype": "float32", "d": 8, "num_tokens": 8}, {"block_sizes": [4, 2]}),
    "softmax": ({"dtype": "float32", "n": 16, "num_rows": 8}, {"block_sizes": [2]}),
    "matmul": ({"dtype": "float32", "n": 16, "k": 32, "m": 32}, {"block_sizes": [32, 16, 16]}),
}


def _store(store: Any, name: str) -> Any:
    rk = get_kernel(name)
    key, config = CONFIGS[name]
    store.add(name, rk.key_spec, key, config)
    return rk


@pytest.mark.parametrize("name", sorted(ARGS))
def test_inferred_fake_matches_the_real_output(name: str, preset_store) -> None:
    rk = _store(preset_store, name)
    args = ARGS[name](5)
    real = rk(*args)
    mode = FakeTensorMode(shape_env=ShapeEnv())
    with mode:
        fake_args = tuple(mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args)
        fake_out = getattr(torch.ops.presetdb, name)(*fake_args)
    assert [int(s) for s in fake_out.shape] == list(real.shape)
    assert fake_out.dtype == real.dtype and fake_out.device == real.device
    assert [int(s) for s in fake_out.stride()] == list(real.stride())
    # meta tensors go through the same implementation
    meta_args = tuple(a.to("meta") if isinstance(a, torch.Tensor) else a for a in ARGS[name](3))
    meta_out = getattr(torch.ops.presetdb, name)(*meta_args)
    assert meta_out.device.type == "meta" and meta_out.shape == rk.reference(*ARGS[name](3)).shape


@pytest.mark.parametrize("name", sorted(ARGS))
def test_fullgraph_compile_each_kernel(name: str, preset_store) -> None:
    rk = _store(preset_store, name)
    op = getattr(torch.ops.presetdb, name)
    counter = CompileCounterWithBackend("aot_eager")

    def model(*args: Any) -> torch.Tensor:
        return op(*args) * 2.0 + 1.0

    compiled = torch.compile(model, backend=counter, fullgraph=True)
    args = ARGS[name](5)
    out = compiled(*args)
    assert_close(out, rk.reference(*args) * 2.0 + 1.0, torch.float32, dot=name == "matmul")
    assert counter.frame_count == 1
    targets = {str(n.target) for g in counter.graphs for n in g.graph.nodes}
    assert f"presetdb.{name}" in targets, targets  # one opaque node, not a graph break


def test_dynamic_shapes_and_registered_kernel_inside_compile(preset_store) -> None:
    rk = _store(preset_store, "rms_norm")
    counter = CompileCounterWithBackend("aot_eager")

    def model(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return rk(x.relu(), w, 1e-6)  # the RegisteredKernel routes to its op when traced

    compiled = torch.compile(model, backend=counter, fullgraph=True, dynamic=True)
    for rows in (3, 6, 9):
        x, w = torch.randn(rows, 16, device=DEVICE), torch.randn(16, device=DEVICE)
        assert_close(compiled(x, w), rk.reference(x.relu(), w, 1e-6), torch.float32)
    assert counter.frame_count == 1  # one graph for every row count


def test_inductor_compile(preset_store) -> None:
    rk = _store(preset_store, "rms_norm")
    compiled = torch.compile(lambda x, w: torch.ops.presetdb.rms_norm(x, w, 1e-6) + x, fullgraph=True)
    x, w = ARGS["rms_norm"](5)[:2]
    assert_close(compiled(x, w), rk.reference(x, w, 1e-6) + x, torch.float32)
