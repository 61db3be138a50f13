"""Where does presetdb's per-call host time go? Times each stage of a tiny rms_norm call
(4 x 4096 bf16) on its own, with timeit (best of 5), no profiler (cProfile inflates
builtin calls). Diagnostic for bench_dispatch; runs on a GPU, or on CPU with --cpu-noop.

    python benchmarks/gpu/dispatch_probe.py --out $OUT/probe
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import timeit
from pathlib import Path
from typing import Any

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--cpu-noop", action="store_true")
    parser.add_argument("--number", type=int, default=20000)
    opts = parser.parse_args()
    if opts.cpu_noop:
        os.environ.setdefault("TRITON_INTERPRET", "1")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from bench_dispatch import EPS, SHAPE, _sample_us, _setup_store  # type: ignore[import-not-found]

    _setup_store(Path(tempfile.mkdtemp()))
    import helion.runtime
    import torch

    from presetdb.helion.ops import no_launch

    if opts.cpu_noop:
        helion.runtime.default_launcher = no_launch  # type: ignore[assignment]
    import presetdb.kernels  # noqa: F401
    from presetdb.helion._accel.dispatch import dispatch_key, exact_key, launcher_of
    from presetdb.helion.registry import get_kernel
    from presetdb.runtime.picker import get_picker

    device = "cpu" if opts.cpu_noop else "cuda"
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    rk = get_kernel("rms_norm")
    x = torch.randn(SHAPE, device=device, dtype=torch.bfloat16)
    w = torch.randn(SHAPE[1], device=device, dtype=torch.bfloat16)
    args = (x, w, EPS)
    for _ in range(100):
        rk(*args)
    sync()
    picker = get_picker()
    features = rk._features(*args)
    choice = picker.resolve("rms_norm", rk.key_spec, features)
    token = choice.preset.config_sha256
    meta = dispatch_key(args)
    exact = exact_key(args)
    entry = rk.entry_for(*args)
    runners = rk.config_kernels[token].runners
    run, raw_run = entry.run, entry.raw_run
    launched: list[Any] = []

    def record(kernel: Any, grid: Any, *largs: Any, **kw: Any) -> None:
        launched[:] = [kernel, grid, largs, kw]

    raw_run(*args, _launcher=record)
    op = torch.ops.presetdb.rms_norm
    # torch's own cost for an op with the same schema whose implementation does nothing
    probe_lib = torch.library.Library("presetdb_probe", "FRAGMENT")
    probe_lib.define("rms_norm(Tensor x, Tensor weight, float eps) -> Tensor")
    probe_lib.impl("rms_norm", lambda x, weight, eps: x, "CompositeExplicitAutograd")
    empty_op = torch.ops.presetdb_probe.rms_norm
    import triton  # noqa: F401  (the timeit statements below use it through scope)

    from presetdb.helion._accel.host_triton import host_triton

    host = host_triton()
    scope: dict[str, Any] = dict(globals())
    scope.update(locals())
    stages = {
        "rk(*args)": "rk(*args)",
        "rk.call_eager(*args)": "rk.call_eager(*args)",
        "torch.ops packet": "op(*args)",
        "torch.ops .default": "op.default(*args)",
        "torch.ops, do-nothing op, same schema": "empty_op(*args)",
        "entry.run (published runner)": "run(*args)",
        "raw runner, Helion launcher": "raw_run(*args)",
        "raw runner, no-op launcher": "raw_run(*args, _launcher=no_launch)",
        "adapt": "rk.adapt(*args)",
        "get_picker().epoch() (call memo)": "get_picker().epoch()",
        "exact_key (call memo)": "exact_key(args, False)",
        "runners.calls.get (call memo)": "rk.memo.calls.get(exact)",
        "features": "rk._features(*args)",
        "picker.resolve": "picker.resolve('rms_norm', rk.key_spec, features)",
        "dispatch_key": "dispatch_key(args, False)",
        "runners.lookup": "runners.lookup(meta, args)",
        "torch.compiler.is_compiling": "torch.compiler.is_compiling()",
        "x.device": "x.device",
        "x.shape": "x.shape",
        "x.stride()": "x.stride()",
        "x.data_ptr()": "x.data_ptr()",
        "(shape, stride, dtype, device)": "(x.shape, x.stride(), x.dtype, x.device)",
        "torch.empty_like": "torch.empty_like(x)",
        "triton.next_power_of_2 (Triton's)": "triton.next_power_of_2(4096)",
        "host_triton().next_power_of_2": "host.next_power_of_2(4096)",
    }
    if device == "cuda":
        from triton.runtime.driver import driver

        kernel, grid, largs, kw = launched
        dev = torch.cuda.current_device()
        binder = kernel.device_caches[dev][4]
        launcher = launcher_of(run)
        cached = next(iter(launcher._kernels.values())) if launcher is not None else None
        scope.update(kernel=kernel, grid=grid, largs=largs, kw=kw, binder=binder, driver=driver, dev=dev, launcher=launcher)
        stages.update(
            {
                "torch.cuda.current_device": "torch.cuda.current_device()",
                "torch._C._cuda_getDevice": "torch._C._cuda_getDevice()",
                "driver get_current_stream": "driver.active.get_current_stream(dev)",
                "triton binder(*args)": "binder(*largs)",
                "FastLauncher call": "launcher(kernel, grid, *largs, **kw)" if launcher is not None else "None",
            }
        )
        plan = launcher._plans.get(id(kernel)) if launcher is not None else None
        if plan is not None:  # the generated key + launch-arguments function alone
            scope["plan"] = plan[1]
            stages["FastLauncher plan(*args)"] = "plan(dev, kw['num_warps'], kw['num_stages'], *largs)"
        if cached is not None:
            c_run, function, packed = cached[0], cached[1], cached[2]
            stream = driver.active.get_current_stream(dev)
            scope.update(c_run=c_run, function=function, packed=packed, stream=stream)
            stages["C launch only"] = "c_run(grid[0], 1, 1, stream, function, packed, None, None, None, *largs)"
            # the same launch with device pointers as ints: Triton's C launcher then skips
            # calling data_ptr() and validating each pointer with the driver
            scope["int_largs"] = tuple(a.data_ptr() if isinstance(a, torch.Tensor) else a for a in largs)
            stages["C launch, pointers as ints"] = (
                "c_run(grid[0], 1, 1, stream, function, packed, None, None, None, *int_largs)"
            )
    results = {}
    for name, stmt in stages.items():
        best = min(timeit.repeat(stmt, number=opts.number, repeat=5, globals=scope))
        sync()
        results[name] = best / opts.number * 1e6
    # timeit switches the garbage collector off; bench_dispatch (like a user's process)
    # runs with it on. Time the whole call both ways, bench-style (sync per 2,000 calls).
    import gc

    def loop(fn: Any, calls: int = 2000, samples: int = 5) -> tuple[float, int]:
        before = sum(s["collections"] for s in gc.get_stats())
        best = min(_sample_us(fn, sync, calls) for _ in range(samples))
        return best, sum(s["collections"] for s in gc.get_stats()) - before

    for label, fn in (("rk", lambda: rk(*args)), ("entry.run", lambda: run(*args)), ("op", lambda: op(*args))):
        for enabled in (True, False):
            gc.enable() if enabled else gc.disable()
            us, collections = loop(fn)
            results[f"{label} loop, gc {'on' if enabled else 'off'} ({collections} collections)"] = us
    gc.enable()
    lines = [f"host code sees {host!r}"]
    lines += [f"{'stage':<34}{'us':>8}"]
    lines += [f"{k:<34}{v:>8.2f}" for k, v in results.items()]
    name = torch.cuda.get_device_name() if device == "cuda" else "cpu (no-op launcher)"
    text = f"dispatch_probe on {name}, torch {torch.__version__}\n" + "\n".join(lines)
    print(text)
    if opts.out is not None:
        opts.out.mkdir(parents=True, exist_ok=True)
        (opts.out / "dispatch_probe.txt").write_text(text + "\n")
        (opts.out / "dispatch_probe.json").write_text(json.dumps({"device": name, "us": results}, indent=2) + "\n")
