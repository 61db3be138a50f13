"""The example kernels through torch.ops.presetdb.* with configs from a real SQLite db.

Each test stores a config that differs from Helion's default, calls the op, and checks
that (1) Helion compiled exactly the stored config and (2) the result matches the
float32 PyTorch reference on random inputs.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
from helion_fixtures import (
    DEVICE,
    assert_close,
    block_sizes_of,
    install_interpreter_shims,
    preset_store_fixture,  # noqa: F401  (provides the preset_store fixture)
    require_interpreter,
)

require_interpreter()
install_interpreter_shims()

import torch

import presetdb.kernels  # noqa: F401  (registers the kernels)
from presetdb.errors import InvalidConfigError, UnknownKernelError
from presetdb.helion.registry import get_kernel, registered_kernels

# (kernel, stored shape key, stored config, call args builder); configs differ from
# Helion's defaults for these shapes (rms/softmax [8], silu [8, 8], matmul [16]*3).
CASES = {
    "rms_norm": (
        {"dtype": "float32", "hidden": 16, "num_tokens": 8},
        {"block_sizes": [2]},
        lambda: (torch.randn(5, 16, device=DEVICE), torch.randn(16, device=DEVICE), 1e-6),
    ),
    "silu_mul": (
        {"dtype": "float32", "d": 8, "num_tokens": 8},
        {"block_sizes": [4, 2]},
        lambda: (torch.randn(5, 12, device=DEVICE),),
    ),
    "softmax": (
        {"dtype": "float32", "n": 16, "num_rows": 8},
        {"block_sizes": [2]},
        lambda: (torch.randn(5, 12, device=DEVICE) * 3,),
    ),
    "matmul": (
        {"dtype": "float32", "n": 16, "k": 32, "m": 32},
        {"block_sizes": [32, 16, 16]},
        lambda: (torch.randn(20, 24, device=DEVICE), torch.randn(24, 18, device=DEVICE)),
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_op_runs_the_stored_config_and_matches_reference(name: str, preset_store) -> None:
    rk = get_kernel(name)
    shape_key, config, make_args = CASES[name]
    preset_store.add(name, rk.key_spec, shape_key, config)
    args = make_args()

    out = getattr(torch.ops.presetdb, name)(*args)

    assert_close(out, rk.reference(*args), torch.float32, dot=name == "matmul")
    res = rk.resolution(*args)
    assert res.choice is not None and res.choice.config == config
    assert res.choice.layer == "deployment"
    bound = rk.bound(*args)
    assert block_sizes_of(bound) == config["block_sizes"]
    code = bound.to_triton_code(bound._config)
    assert f"_BLOCK_SIZE_0 = tl.constexpr({config['block_sizes'][0]})" in code


@pytest.mark.parametrize("name", ["rms_norm", "silu_mul", "softmax", "matmul"])
def test_leading_dims_are_folded_into_rows(name: str, preset_store) -> None:
    rk = get_kernel(name)
    shape_key, config, make_args = CASES[name]
    preset_store.add(name, rk.key_spec, shape_key, config)
    args = list(make_args())
    x = args[0]
    args[0] = torch.cat([x, x * 0.5]).reshape(2, *x.shape)  # rank 3
    out = getattr(torch.ops.presetdb, name)(*args)
    expected = rk.reference(*args)
    assert out.shape == expected.shape
    assert_close(out, expected, torch.float32, dot=name == "matmul")
    # the key is taken from the folded 2-D call: rows = all leading dims
    features = rk.features(*args)
    assert list(features.values())[-1] == 2 * x.shape[0]


def test_rms_norm_bf16_and_half(preset_store) -> None:
    rk = get_kernel("rms_norm")
    for dtype in (torch.bfloat16, torch.float16):
        name = str(dtype).removeprefix("torch.")
        preset_store.add("rms_norm", rk.key_spec, {"dtype": name, "hidden": 32, "num_tokens": 4}, {"block_sizes": [4]})
        x = torch.randn(3, 32, device=DEVICE).to(dtype)
        w = torch.randn(32, device=DEVICE).to(dtype)
        out = torch.ops.presetdb.rms_norm(x, w, 1e-5)
        assert out.dtype == dtype
        assert_close(out, rk.reference(x, w, 1e-5), dtype)
        assert block_sizes_of(rk.bound(x, w, 1e-5)) == [4]


def test_matmul_bf16(preset_store) -> None:
    rk = get_kernel("matmul")
    key = {"dtype": "bfloat16", "n": 16, "k": 32, "m": 32}
    preset_store.add("matmul", rk.key_spec, key, {"block_sizes": [16, 16, 32]})
    a = torch.randn(20, 32, device=DEVICE).bfloat16()
    b = torch.randn(32, 16, device=DEVICE).bfloat16()
    out = torch.ops.presetdb.matmul(a, b)
    assert out.dtype == torch.bfloat16
    assert_close(out, rk.reference(a, b), torch.bfloat16)
    assert block_sizes_of(rk.bound(a, b)) == [16, 16, 32]


def test_different_stored_configs_compile_different_kernels(preset_store, monkeypatch) -> None:
    monkeypatch.setenv("PRESETDB_MAX_DISTANCE", "num_tokens=3")  # 9 rows -> the 64-row key (2.83 away) serves
    rk = get_kernel("rms_norm")
    preset_store.add("rms_norm", rk.key_spec, {"dtype": "float32", "hidden": 16, "num_tokens": 2}, {"block_sizes": [1]})
    preset_store.add("rms_norm", rk.key_spec, {"dtype": "float32", "hidden": 16, "num_tokens": 64}, {"block_sizes": [4]})
    w = torch.randn(16, device=DEVICE)
    small, large = torch.randn(2, 16, device=DEVICE), torch.randn(9, 16, device=DEVICE)
    for x in (small, large):
        assert_close(rk(x, w, 1e-6), rk.reference(x, w, 1e-6), torch.float32)
    b_small, b_large = rk.bound(small, w, 1e-6), rk.bound(large, w, 1e-6)
    assert b_small is not b_large
    assert (block_sizes_of(b_small), block_sizes_of(b_large)) == ([1], [4])
    tokens = {rk.resolution(x, w, 1e-6).token for x in (small, large)}
    assert len(tokens) == 2  # the key= hook tells Helion the configs apart


def test_registry_and_example_inputs() -> None:
    names = set(registered_kernels())
    assert {"rms_norm", "silu_mul", "softmax", "matmul"} <= names
    with pytest.raises(UnknownKernelError, match="rms_norm"):
        get_kernel("no_such_kernel")
    for name in ("rms_norm", "silu_mul", "softmax", "matmul"):
        rk = get_kernel(name)
        assert rk.op is getattr(torch.ops.presetdb, name)
        assert len(rk.source_hash()) == 64
        key = {f: v for f, v in zip(rk.key_spec.names, ["float32", 16, 8, 8][: len(rk.key_spec.names)], strict=True)}
        args = rk.example_inputs(key, device=DEVICE)
        assert rk.features(*args) == key
        assert rk.reference(*args).abs().max() > 0


def test_validate_config_normalizes_and_names_the_problem() -> None:
    rk = get_kernel("rms_norm")
    key = {"dtype": "float32", "hidden": 16, "num_tokens": 8}
    normalized = rk.validate_config({"block_sizes": [4]}, key)
    assert normalized["block_sizes"] == [4] and "num_warps" in normalized
    with pytest.raises(InvalidConfigError, match="block_sizes"):
        rk.validate_config({"block_sizes": [4, 4]}, key)
    with pytest.raises(InvalidConfigError, match="bogus"):
        rk.validate_config({"block_sizes": [4], "bogus": 1}, key)
    with pytest.raises(InvalidConfigError, match="power of two"):
        rk.validate_config({"block_sizes": [3]}, key)


def test_import_presetdb_does_not_import_torch() -> None:
    script = textwrap.dedent(
        """
        import sys
        import presetdb
        assert "torch" not in sys.modules and "helion" not in sys.modules, "heavy import"
        register = presetdb.register_kernel
        assert callable(register) and "torch" in sys.modules
        print("ok")
        """
    )
    done = subprocess.run([sys.executable, "-c", script], check=False, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
