"""GPU-only checks (skipped without CUDA): the example kernels with stored configs on a
real device, CUDA graph capture/replay and torch.compile, via benchmarks/gpu_check_helion.py,
plus one in-process CUDA graph test through the fast-dispatch path."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from helion_fixtures import assert_close, block_sizes_of, preset_store_fixture  # noqa: F401  (provides the preset_store fixture)

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1",
        reason="needs a CUDA device (and no TRITON_INTERPRET)",
    ),
]

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_script_passes(tmp_path: Path) -> None:
    env = dict(os.environ, OUT=str(tmp_path))
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_check_helion.py")],
        env=env, check=False, capture_output=True, text=True, timeout=1800,
    )
    report = json.loads((tmp_path / "gpu_check_helion.json").read_text())
    failed = [c for c in report["checks"] if not c["ok"]]
    assert done.returncode == 0 and not failed, (failed, done.stdout[-4000:], done.stderr[-4000:])
    assert report["passed"] >= 4 * 3  # eager, graph, compile for every kernel at least


def test_cuda_graph_replays_the_fast_path(preset_store) -> None:
    import presetdb.kernels  # noqa: F401  (registers the kernels)
    from presetdb.helion.registry import get_kernel

    rk = get_kernel("rms_norm")
    key = {"dtype": "bfloat16", "hidden": 1024, "num_tokens": 64}
    preset_store.add("rms_norm", rk.key_spec, key, {"block_sizes": [2], "num_warps": 4})
    x, w, eps = rk.example_inputs(key, device="cuda")
    rk(x, w, eps)  # compile + publish outside the capture
    assert rk.entry_for(x, w, eps) is not None
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        rk(x, w, eps)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = torch.ops.presetdb.rms_norm(x, w, eps)
    x.copy_(torch.randn_like(x))
    graph.replay()
    torch.cuda.synchronize()
    assert_close(out, rk.reference(x, w, eps), torch.bfloat16)
    assert block_sizes_of(rk.bound(x, w, eps)) == [2]


def test_fast_launcher_reuses_compiled_kernels_only_where_triton_would(preset_store, monkeypatch) -> None:
    """The published runner launches Triton's compiled kernel directly; a new pointer
    alignment or integer divisibility goes through Triton once (a new specialization),
    and every result matches the reference."""

    import presetdb.kernels  # noqa: F401  (registers the kernels)
    from presetdb.helion._accel.dispatch import launcher_of
    from presetdb.helion._accel.launch import FastLauncher
    from presetdb.helion.registry import get_kernel

    rk = get_kernel("rms_norm")
    key = {"dtype": "bfloat16", "hidden": 1024, "num_tokens": 64}
    preset_store.add("rms_norm", rk.key_spec, key, {"block_sizes": [2], "num_warps": 4})
    x, w, eps = rk.example_inputs(key, device="cuda")
    for _ in range(2):  # Helion's path publishes the runner; its first launch caches the kernel
        assert_close(rk(x, w, eps), rk.reference(x, w, eps), torch.bfloat16)
    entry = rk.entry_for(x, w, eps)
    assert entry is not None
    launcher = launcher_of(entry.run)
    assert isinstance(launcher, FastLauncher)
    through_triton: list[object] = []
    real = launcher._fallback
    monkeypatch.setattr(launcher, "_fallback", lambda *a, **k: through_triton.append(a[0]) or real(*a, **k))

    for _ in range(3):  # same specialization: no Triton launch path at all
        assert_close(rk(x, w, eps), rk.reference(x, w, eps), torch.bfloat16)
    assert through_triton == []

    # 17 rows (not divisible by 16) and a misaligned start (offset of one element).
    # Each call's first fast launch goes through Triton once (it returns the compiled
    # kernel to cache), then the cached kernel is launched directly.
    odd = torch.randn(17, 1024, device="cuda", dtype=torch.bfloat16)
    base = torch.randn(64 * 1024 + 1, device="cuda", dtype=torch.bfloat16)
    misaligned = base[1:].view(64, 1024)
    inputs = {"x": x, "odd": odd, "misaligned": misaligned}
    for _ in range(2):
        for t in inputs.values():
            assert_close(rk(t, w, eps), rk.reference(t, w, eps), torch.bfloat16)
    launchers = {}
    for name, t in inputs.items():
        e = rk.entry_for(t, w, eps)
        assert e is not None
        launchers[name] = launcher_of(e.run)
    # Triton specializes on pointer alignment (and integers divisible by 16): the
    # misaligned input never shares x's compiled kernel, even when it shares the runner
    compiled = {id(v[3]) for la in launchers.values() for v in la._kernels.values()}
    assert len(compiled) >= 2
    through_triton.clear()  # x's launcher may be shared: it saw odd's and misaligned's first launches
    for la in {id(la): la for la in launchers.values()}.values():
        fallback = la._fallback
        monkeypatch.setattr(la, "_fallback", lambda *a, _f=fallback, **k: through_triton.append(a[0]) or _f(*a, **k))
    for _ in range(2):
        for t in inputs.values():
            assert_close(rk(t, w, eps), rk.reference(t, w, eps), torch.bfloat16)
    assert through_triton == []


def test_refine_compiles_its_candidates_in_one_helion_batch() -> None:
    """On a GPU refine hands its candidates to Helion's parallel precompile (FiniteSearch's
    one batch): every candidate comes back compiled, nothing falls back to one by one."""
    import warnings

    import presetdb.kernels  # noqa: F401  (registers the kernels)
    from presetdb.helion.registry import get_kernel
    from presetdb.helion.rerank import BatchCompileWarning, Candidate
    from presetdb.offline import refine as refining

    rk = get_kernel("softmax")
    key = {"dtype": "bfloat16", "n": 4096, "num_rows": 64}
    candidates = [
        Candidate({"block_sizes": [4], "num_warps": 8, "reduction_loops": [None]}, "persistent"),
        Candidate({"block_sizes": [2], "num_warps": 4, "reduction_loops": [1024]}, "looped"),
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("error", BatchCompileWarning)
        result = refining.refine_shape(rk, key, candidates, device="cuda", timing="graph")
    assert result.entry["configs_tried"] == 3 and result.failed == ()

