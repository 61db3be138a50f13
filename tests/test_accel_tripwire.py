"""Tripwire: every private Helion/Triton name in presetdb.helion._accel.internals, checked
against the installed packages with real objects (a real bound Helion kernel compiled by
real Triton in the interpreter, a real JITFunction, Triton's own source where a GPU would
be needed). An upgrade that renames or reshapes one of them fails here, not in a model."""

from __future__ import annotations

import inspect
from typing import Any

import pytest
from helion_fixtures import DEVICE, install_interpreter_shims, require_interpreter

require_interpreter()
install_interpreter_shims()

import helion
import helion.language as hl
import torch
import triton
from triton.runtime import jit as triton_jit

import presetdb.kernels  # noqa: F401  (registers the kernels)
from presetdb.helion._accel import internals
from presetdb.helion.registry import get_kernel


def _scaled_by_constexpr(x: torch.Tensor, n: hl.constexpr) -> torch.Tensor:
    out = torch.empty_like(x)
    for tile in hl.tile(x.size()):
        out[tile] = x[tile] * n
    return out


def _copied(x: torch.Tensor) -> torch.Tensor:
    out = torch.empty_like(x)
    for tile in hl.tile(x.size()):
        out[tile] = x[tile]
    return out


@pytest.fixture(scope="module")
def served() -> tuple[Any, Any, tuple[Any, ...]]:
    """rms_norm's plain config kernel, called once for real; (kernel, bound, args)."""
    rms = get_kernel("rms_norm")
    args = (torch.randn(5, 16, device=DEVICE), torch.randn(16, device=DEVICE), 1e-6)
    target = rms.config_kernel(("tripwire", 2), {"block_sizes": [2]}, args)
    out = target.kernel(*args)
    torch.testing.assert_close(out, rms.reference(*args), rtol=1e-4, atol=1e-4)
    return target.kernel, target.kernel.bind(args), args


def test_helion_kernel_state(served) -> None:
    kernel, bound, _ = served
    assert isinstance(internals.specialization_generation(kernel), int)
    assert isinstance(internals.reset_generation(kernel), int)
    assert isinstance(internals.reset_generation(bound), int)
    extra, seed = internals.specialize_extra(kernel), internals.seed_specialize_extra(kernel)
    assert isinstance(extra, dict) and isinstance(seed, dict)
    signature = internals.bound_signature(bound)
    assert signature is not None and signature in extra, "the bound kernel's signature keys its guard list"
    before = internals.specialization_generation(kernel)
    kernel.reset()  # the counters the fast path watches move when Helion forgets
    assert internals.specialization_generation(kernel) > before


def test_bound_kernel_runner_and_config(served) -> None:
    kernel, _, args = served
    bound = kernel.bind(args)
    bound(*args)  # compile again after the reset above
    run = internals.bound_runner(bound)
    assert callable(run)
    assert isinstance(internals.bound_config(bound), helion.Config)
    defaults = run.__kwdefaults__
    assert internals.LAUNCHER_KWARG in defaults, "Helion's host function takes its launcher as a keyword"
    assert defaults[internals.LAUNCHER_KWARG] is internals.default_launcher()
    assert run.__globals__[internals.HOST_TRITON_GLOBAL] is triton


def test_guard_facts_are_read_as_size_relations(served) -> None:
    kernel, bound, _ = served
    extractors = internals.specialize_extra(kernel)[internals.bound_signature(bound)]
    facts = [internals.size_fact(e) for e in extractors]
    readable = [f for f in facts if f is not None]
    assert readable, "rms_norm carries a size relation guard (weight.size(0) == x.size(1))"
    for fact in readable:
        assert fact.param_names and fact.sources
    seeds = internals.seed_specialize_extra(kernel).get(internals.bound_signature(bound)) or []
    assert all(isinstance(internals.is_metadata_seed(e), bool) for e in seeds)
    source = inspect.getsource(inspect.getmodule(type(kernel)))
    assert f"class {internals.GUARDED_INPUT_FACT}" in source
    assert f'"{internals.METADATA_SEED_FACT}"' in source
    for name in internals.TD_GUARD_NAMES:
        assert f"def {name}(" in source, name


def test_constexpr_parameters_are_detected() -> None:
    assert internals.has_constexpr_params(helion.kernel(_scaled_by_constexpr))
    assert not internals.has_constexpr_params(helion.kernel(_copied))


def test_backend_specific_config_keys() -> None:
    keys = internals.backend_specific_keys()
    assert keys and all(isinstance(k, str) for k in keys)


def test_triton_jit_function_internals() -> None:
    def add_one(x_ptr, n):  # a real JITFunction (not launched: no GPU here)
        pass

    fn = triton_jit.JITFunction(add_one)
    assert isinstance(fn.used_global_vals, dict)
    assert internals.used_globals(fn) == ()
    assert internals.pre_run_hooks(fn) == []
    assert hasattr(fn, "device_caches")
    source = inspect.getsource(triton_jit.JITFunction)
    # device_caches[device] is (kernel cache, key cache, target, backend, binder)
    assert "return {}, {}, target, backend, binder" in source
    assert internals.JIT_BINDER_INDEX == 4
    # the C launcher's positional layout, as JITFunction.run calls it
    assert "kernel.run(grid_0, grid_1, grid_2, stream, kernel.function, kernel.packed_metadata, launch_metadata," in source
    assert "knobs.runtime.launch_enter_hook, knobs.runtime.launch_exit_hook, *bound_args.values())" in source


def test_triton_launch_hooks_and_compiled_kernel() -> None:
    from triton import knobs
    from triton.compiler import compiler

    enter, exit_ = internals.launch_hooks(knobs.runtime)
    assert isinstance(enter.calls, list) and isinstance(exit_.calls, list)
    source = inspect.getsource(compiler.CompiledKernel)
    for attribute in ("self.packed_metadata =", "self.function", "def run("):
        assert attribute in source, attribute


def test_triton_host_helpers_and_torch_device_getter() -> None:
    kind = internals.constexpr_function_type()
    assert kind is not None and isinstance(triton.next_power_of_2, kind) and callable(triton.next_power_of_2.fn)
    if torch.cuda.is_available():  # a CPU build of torch has no CUDA getters at all
        assert callable(internals.cuda_current_device_getter())


def test_the_gate_names_versions_and_the_override() -> None:
    from importlib.metadata import version

    off = internals.status("0")
    assert not off.on and "PRESETDB_ACCEL=0" in off.reason
    forced = internals.status("1")
    assert forced.on and forced.helion == version("helion") and forced.triton == version("triton")
    auto = internals.status("auto")
    pair = (version("helion"), ".".join(version("triton").split(".")[:2]))
    assert auto.on == (pair in internals.VERIFIED)
    assert pair[0] in auto.reason and pair[1] in auto.reason
