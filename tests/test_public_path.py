"""The public path: with the fast path off (unverified Helion/Triton versions, or
PRESETDB_ACCEL=0) a call runs a plain Helion kernel per stored config, through Helion's
own public call, with the same answers: stored config, nearest key, miss, quarantine."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings

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
from presetdb.helion import call
from presetdb.helion._accel import dispatch
from presetdb.helion.hooks import PresetMissWarning, QuarantineWarning
from presetdb.helion.registry import get_kernel
from presetdb.runtime.picker import get_picker

EPS = 1e-6


@pytest.fixture
def rms():
    rk = get_kernel("rms_norm")
    rk.use_accel(False)
    yield rk
    rk.use_accel(True)


def test_stored_configs_are_served_without_the_fast_path(rms, preset_store, monkeypatch) -> None:
    for tokens, blocks in ((2, [1]), (64, [4])):
        preset_store.add("rms_norm", rms.key_spec, {"dtype": "float32", "hidden": 16, "num_tokens": tokens},
                         {"block_sizes": blocks})
    published: list[object] = []
    monkeypatch.setattr(dispatch.RunnerCache, "publish", lambda *a: published.append(a))
    w = torch.randn(16, device=DEVICE)
    for rows, blocks in ((2, [1]), (40, [4]), (1, [1])):  # num_tokens matches by ceil
        x = torch.randn(rows, 16, device=DEVICE)
        for _ in range(2):
            assert_close(torch.ops.presetdb.rms_norm(x, w, EPS), rms.reference(x, w, EPS), torch.float32)
        assert block_sizes_of(rms.bound(x, w, EPS)) == blocks
        assert rms.entry_for(x, w, EPS) is None  # no runner of presetdb's own
    assert not rms.accel and published == []
    # the call memo serves repeated metadata on the public path too: no picker, no policy
    x = torch.randn(40, 16, device=DEVICE)
    rms(x, w, EPS)
    resolved: list[object] = []
    picker = get_picker()
    real = picker.resolve
    monkeypatch.setattr(picker, "resolve", lambda *a: resolved.append(a) or real(*a))
    # ... and runs the compiled config (public compile_config) without re-entering Helion's call
    from helion.runtime.kernel import Kernel

    entered: list[object] = []
    real_call = Kernel.__call__
    monkeypatch.setattr(Kernel, "__call__", lambda self, *a, **k: entered.append(a) or real_call(self, *a, **k))
    for _ in range(3):
        xi = torch.randn(40, 16, device=DEVICE)  # new data, same metadata
        assert_close(rms(xi, w, EPS), rms.reference(xi, w, EPS), torch.float32)
    assert resolved == [] and entered == [] and len(rms.memo.calls) >= 1
    # one plain Helion kernel per stored config served, built once each
    assert {k for k in rms.config_kernels if isinstance(k, str)} == {
        rms.resolution(torch.randn(2, 16), w, EPS).token, rms.resolution(torch.randn(40, 16), w, EPS).token
    }


def test_misses_and_quarantines_behave_the_same(rms, preset_store) -> None:
    preset_store.add("rms_norm", rms.key_spec, {"dtype": "float32", "hidden": 16, "num_tokens": 8},
                     {"block_sizes": [2**20]})  # generates code, cannot launch
    x, w = torch.randn(5, 16, device=DEVICE), torch.randn(16, device=DEVICE)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        out = rms(x, w, EPS)
        again = rms(x, w, EPS)
    assert_close(out, rms.reference(x, w, EPS), torch.float32)
    torch.testing.assert_close(out, again)
    kinds = [w.category for w in record]
    assert kinds.count(QuarantineWarning) == 1 and kinds.count(PresetMissWarning) == 1
    assert rms.last_choice is None
    assert len(preset_store.overlay_presets("rms_norm", status="quarantined")) == 1


def test_a_failing_call_that_is_not_the_rows_fault_raises(rms, preset_store) -> None:
    preset_store.add("rms_norm", rms.key_spec, {"dtype": "float32", "hidden": 16, "num_tokens": 8},
                     {"block_sizes": [2]})
    x, w = torch.randn(5, 16, device=DEVICE), torch.randn(8, device=DEVICE)  # weight of the wrong size
    with pytest.raises(Exception):  # noqa: B017  (whatever Helion raises for the caller's mistake)
        rms(x, w, EPS)
    assert preset_store.overlay_presets("rms_norm", status="quarantined") == []


def test_presetdb_accel_0_turns_the_fast_path_off_in_a_new_process() -> None:
    code = (
        "import presetdb.kernels\n"
        "from presetdb.helion.registry import get_kernel\n"
        "rk = get_kernel('rms_norm')\n"
        "print(not rk.accel, rk.accel_status.reason)\n"
    )
    env = {**os.environ, "PRESETDB_ACCEL": "0", "TRITON_INTERPRET": "1"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.startswith("True off: PRESETDB_ACCEL=0"), out.stdout + out.stderr
    assert call.call.__module__ == "presetdb.helion.call"
