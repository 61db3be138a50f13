"""Miss policies (default / strict / autotune), quarantine of bad stored configs, and
the environment variables that must not route around the store."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import textwrap
import warnings
from importlib.metadata import version
from pathlib import Path

import pytest
from helion_fixtures import (
    DEVICE,
    assert_close,
    block_sizes_of,
    candidate_search,
    install_interpreter_shims,
    preset_store_fixture,  # noqa: F401  (provides the preset_store fixture)
    recorded_misses,
    require_interpreter,
    set_policy,
)

require_interpreter()
install_interpreter_shims()

import helion.exc
import torch

import presetdb.kernels  # noqa: F401  (registers the kernels)
from presetdb.errors import PresetMissError
from presetdb.helion.hooks import (
    PresetMissWarning,
    QuarantineWarning,
    set_autotune_search,
)
from presetdb.helion.registry import get_kernel
from presetdb.runtime.picker import reset_picker

RMS = "rms_norm"
STORED_KEY = {"dtype": "float32", "hidden": 16, "num_tokens": 8}


def _call(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return torch.ops.presetdb.rms_norm(x, w, 1e-6)


def _inputs(rows: int, hidden: int = 16, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(rows, hidden, device=DEVICE).to(dtype), torch.randn(hidden, device=DEVICE).to(dtype)


def _recorded(record: list[warnings.WarningMessage], category: type[Warning]) -> list[str]:
    return [str(w.message) for w in record if issubclass(w.category, category)]


def test_default_policy_warns_once_per_key_and_counts_misses(preset_store) -> None:
    rk = get_kernel(RMS)
    preset_store.add(RMS, rk.key_spec, STORED_KEY, {"block_sizes": [2]})
    a, wa = _inputs(3, dtype=torch.float16)  # dtype is matched exactly: a miss
    b, wb = _inputs(5, dtype=torch.float16)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        for _ in range(3):
            out = _call(a, wa)
        _call(b, wb)
    misses = _recorded(record, PresetMissWarning)
    assert len(misses) == 2, misses  # one per key, not one per call
    assert "rms_norm" in misses[0] and '"num_tokens":3' in misses[0] and "cpu" in misses[0]
    assert_close(out, rk.reference(a, wa, 1e-6), torch.float16)
    bound = rk.bound(a, wa, 1e-6)
    assert bound._config == bound.config_spec.default_config()  # Helion's default, per specialization
    counts = {f: m.count for f, m in recorded_misses(preset_store.overlay, RMS).items()}
    assert counts == {
        '{"dtype":"float16","hidden":16,"num_tokens":3}': 3,
        '{"dtype":"float16","hidden":16,"num_tokens":5}': 1,
    }


def test_strict_policy_names_kernel_platform_features_and_nearest_keys(preset_store, monkeypatch) -> None:
    rk = get_kernel(RMS)
    preset_store.add(RMS, rk.key_spec, STORED_KEY, {"block_sizes": [2]})
    set_policy(monkeypatch, "strict")
    x, w = _inputs(3, dtype=torch.float16)
    with pytest.raises(PresetMissError) as info:
        _call(x, w)
    err = info.value
    assert (err.kernel, err.platform) == ("rms_norm", "cpu")
    assert err.features == {"dtype": "float16", "hidden": 16, "num_tokens": 3}
    assert err.nearest == ['cpu:{"dtype":"float32","hidden":16,"num_tokens":8}']
    text = str(err)
    assert "rms_norm" in text and "cpu" in text and '"dtype":"float16"' in text and '"num_tokens":8' in text
    # a stored key still serves (nearest/ceil) in strict mode
    x32, w32 = _inputs(6)
    assert_close(_call(x32, w32), rk.reference(x32, w32, 1e-6), torch.float32)


def test_autotune_policy_searches_stores_with_provenance_and_is_reused(preset_store, monkeypatch) -> None:
    rk = get_kernel(RMS)
    candidates = [{"block_sizes": [1]}, {"block_sizes": [4]}]
    search = candidate_search(candidates)
    previous = set_autotune_search(search)
    try:
        set_policy(monkeypatch, "autotune")
        x, w = _inputs(7, hidden=24)  # a key no other test tunes
        out = _call(x, w)
        assert_close(out, rk.reference(x, w, 1e-6), torch.float32)
        assert search.calls == 1
        # Helion's real search copies and pickles the bound kernel's settings: the kernel
        # it searches must not carry presetdb's hooks (they reach the picker's locks)
        (searched,) = search.bounds
        assert searched.kernel is not rk.helion_kernel
        assert pickle.loads(pickle.dumps(searched.settings)).autotune_effort == "quick"
        stored = preset_store.overlay_presets(RMS, status="active")
        assert len(stored) == 1
        preset = stored[0]
        assert preset.source == "autotune"
        assert preset.key == {"dtype": "float32", "hidden": 24, "num_tokens": 7}
        assert preset.config in candidates
        assert preset.configs_tried == 2 and preset.latency_ms > 0 and preset.tuning_seconds >= 0
        assert preset.kernel_source_hash == rk.source_hash()
        run = next(r for r in preset_store.overlay_runs() if r.id == preset.run_id)
        assert run.helion_version == version("helion") and run.torch_version == torch.__version__
        assert run.host and run.device_name and run.autotune_effort == "quick"
        assert run.started_at and run.finished_at and run.benchmark_method
        # the same process now serves it from the overlay, without searching again
        _call(x, w)
        assert search.calls == 1
        choice = rk.resolution(x, w, 1e-6).choice
        assert choice is not None and choice.layer == "overlay"
        assert block_sizes_of(rk.bound(x, w, 1e-6)) == preset.config["block_sizes"]
        # "the next process": a new picker over the same files, strict mode
        set_policy(monkeypatch, "strict")
        assert_close(_call(x, w), rk.reference(x, w, 1e-6), torch.float32)
        assert search.calls == 1
    finally:
        set_autotune_search(previous)


@pytest.mark.parametrize(
    ("config", "reason"),
    [({"block_sizes": [2, 2]}, "block_sizes"), ({"block_sizes": [2], "bogus_knob": 1}, "bogus_knob")],
)
def test_invalid_stored_config_is_quarantined_and_falls_back(preset_store, config, reason) -> None:
    rk = get_kernel(RMS)
    preset_store.add(RMS, rk.key_spec, STORED_KEY, config)
    x, w = _inputs(5)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        out = _call(x, w)
        out2 = _call(x, w)
    assert_close(out, rk.reference(x, w, 1e-6), torch.float32)
    torch.testing.assert_close(out, out2)
    quarantined = _recorded(record, QuarantineWarning)
    assert len(quarantined) == 1 and reason in quarantined[0]
    assert len(_recorded(record, PresetMissWarning)) == 1  # then served as a miss
    rows = preset_store.overlay_presets(RMS, status="quarantined")
    assert len(rows) == 1 and rows[0].config == config and reason in (rows[0].status_reason or "")
    assert rk.resolution(x, w, 1e-6).choice is None
    reset_picker()  # a later process skips the quarantined row too
    assert rk.resolution(x, w, 1e-6).choice is None


def test_config_failing_at_launch_is_quarantined(preset_store) -> None:
    rk = get_kernel(RMS)
    # validates and generates code, but a 2**20-row tile cannot run
    preset_store.add(RMS, rk.key_spec, STORED_KEY, {"block_sizes": [2**20]})
    x, w = _inputs(5)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        out = _call(x, w)
    assert_close(out, rk.reference(x, w, 1e-6), torch.float32)
    quarantined = _recorded(record, QuarantineWarning)
    assert len(quarantined) == 1 and "launch failed" in quarantined[0]
    assert len(preset_store.overlay_presets(RMS, status="quarantined")) == 1


def test_strict_policy_raises_after_quarantine(preset_store, monkeypatch) -> None:
    rk = get_kernel(RMS)
    preset_store.add(RMS, rk.key_spec, STORED_KEY, {"block_sizes": [2, 2, 2]})
    set_policy(monkeypatch, "strict")
    x, w = _inputs(5)
    with pytest.warns(QuarantineWarning), pytest.raises(PresetMissError, match="quarantined"):
        _call(x, w)
    assert len(preset_store.overlay_presets(RMS, status="quarantined")) == 1


def test_caller_errors_do_not_quarantine_good_configs(preset_store) -> None:
    rk = get_kernel(RMS)
    preset_store.add(RMS, rk.key_spec, STORED_KEY, {"block_sizes": [2]})
    x = torch.randn(5, 16, device=DEVICE)
    bad_weight = torch.randn(16, 2, device=DEVICE)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        with pytest.raises(helion.exc.RankMismatch):
            rk(x, bad_weight, 1e-6)
    assert not _recorded(record, QuarantineWarning)
    assert rk.resolution(x, torch.randn(16), 1e-6).choice is not None


def test_helion_disallow_autotuning_does_not_block_the_store(preset_store, monkeypatch) -> None:
    rk = get_kernel(RMS)
    config = {"block_sizes": [1], "num_warps": 2}  # unique here: a new Helion bound kernel
    preset_store.add(RMS, rk.key_spec, STORED_KEY, config)
    monkeypatch.setenv("HELION_DISALLOW_AUTOTUNING", "1")
    x, w = _inputs(5)
    assert_close(rk(x, w, 1e-6), rk.reference(x, w, 1e-6), torch.float32)
    assert rk.bound(x, w, 1e-6)._config.config["num_warps"] == 2


def test_direct_helion_kernel_call_goes_through_the_hooks(preset_store) -> None:
    rk = get_kernel(RMS)
    config = {"block_sizes": [2], "num_warps": 1}
    preset_store.add(RMS, rk.key_spec, STORED_KEY, config)
    x, w = _inputs(5)
    out = rk.helion_kernel(x, w, 1e-6)  # what tuning scripts do: no presetdb wrapper
    assert_close(out, rk.reference(x, w, 1e-6), torch.float32)
    bound = rk.helion_kernel.bind((x, w, 1e-6))
    assert bound._config.config["num_warps"] == 1 and block_sizes_of(bound) == [2]


def test_helion_environment_cannot_bypass_the_store(tmp_path: Path, preset_store) -> None:
    rk = get_kernel(RMS)
    preset_store.add(RMS, rk.key_spec, STORED_KEY, {"block_sizes": [2], "num_warps": 8})
    script = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        import helion_fixtures
        helion_fixtures.install_interpreter_shims()
        import torch
        import presetdb.kernels
        from presetdb.helion.registry import get_kernel
        rk = get_kernel("rms_norm")
        x, w = torch.randn(5, 16), torch.randn(16)
        out = torch.ops.presetdb.rms_norm(x, w, 1e-6)
        torch.testing.assert_close(out, rk.reference(x, w, 1e-6), rtol=1e-4, atol=1e-5)
        s = rk.helion_kernel.settings
        print(s.autotune_effort, s.static_shapes, s.ref_mode.value, rk.bound(x, w, 1e-6)._config.config["num_warps"])
        """
    )
    env = dict(os.environ)
    env.update(
        HELION_AUTOTUNE_EFFORT="none", HELION_STATIC_SHAPES="1", HELION_INTERPRET="1", TRITON_INTERPRET="1",
    )
    done = subprocess.run([sys.executable, "-c", script], env=env, check=False, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["quick", "False", "off", "8"]
