"""GPU check of the Helion integration (run on a CUDA machine).

1. builds a db with a stored config for every example kernel (PRESETDB_ON_MISS=strict, so
   anything not served from the store fails loudly);
2. runs each kernel through torch.ops.presetdb.* on tuned and untuned (nearest / ceil)
   shapes, checks Helion compiled the stored config, compares with the float32 reference;
3. captures each op in a CUDA graph, refills the inputs, replays, compares;
4. torch.compile(fullgraph=True) (inductor) of a small model around each op, compares;
5. times stored config vs Helion's default config (do_bench) and host us per call;
6. with GPU_CHECK_AUTOTUNE=1: a missed key under PRESETDB_ON_MISS=autotune runs Helion's
   real autotuner (effort quick: minutes), stores the winner, and serves it afterwards;
7. writes gpu_check_helion.json and gpu_check_helion.txt to $OUT (default ./out).

Exit status 1 when any check failed.

    OUT=benchmarks/results/h100 python benchmarks/gpu_check_helion.py
"""

from __future__ import annotations

import json
import os
import platform
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path
from typing import Any

PLATFORM = "gpucheck"

# Stored configs (kernel -> [(shape key, config)]), plausible for Hopper-class GPUs.
PRESETS: dict[str, list[tuple[dict[str, Any], dict[str, Any]]]] = {
    "rms_norm": [
        ({"dtype": "bfloat16", "hidden": 4096, "num_tokens": 32}, {"block_sizes": [1], "num_warps": 4}),
        ({"dtype": "bfloat16", "hidden": 4096, "num_tokens": 4096}, {"block_sizes": [2], "num_warps": 8}),
        ({"dtype": "float32", "hidden": 1024, "num_tokens": 256}, {"block_sizes": [4], "num_warps": 4}),
    ],
    "silu_mul": [
        ({"dtype": "bfloat16", "d": 4096, "num_tokens": 256}, {"block_sizes": [4, 256], "num_warps": 4}),
    ],
    "softmax": [
        ({"dtype": "bfloat16", "n": 4096, "num_rows": 256}, {"block_sizes": [1], "num_warps": 8}),
        ({"dtype": "float32", "n": 1000, "num_rows": 512}, {"block_sizes": [2], "num_warps": 4}),
    ],
    "matmul": [
        ({"dtype": "bfloat16", "n": 1024, "k": 1024, "m": 1024},
         {"block_sizes": [64, 128, 64], "num_warps": 8, "num_stages": 3}),
        ({"dtype": "float16", "n": 512, "k": 256, "m": 256},
         {"block_sizes": [64, 64, 32], "num_warps": 4, "num_stages": 2}),
    ],
}
# Call shapes: tuned keys, and untuned ones served by nearest/ceil matching.
CALLS: dict[str, list[dict[str, Any]]] = {
    "rms_norm": [
        {"dtype": "bfloat16", "hidden": 4096, "num_tokens": 32},
        {"dtype": "bfloat16", "hidden": 4000, "num_tokens": 77},
        {"dtype": "float32", "hidden": 1024, "num_tokens": 1},
    ],
    "silu_mul": [{"dtype": "bfloat16", "d": 4096, "num_tokens": 256}, {"dtype": "bfloat16", "d": 2816, "num_tokens": 3}],
    "softmax": [{"dtype": "bfloat16", "n": 4096, "num_rows": 256}, {"dtype": "float32", "n": 1000, "num_rows": 300}],
    "matmul": [
        {"dtype": "bfloat16", "n": 1024, "k": 1024, "m": 1024},
        {"dtype": "bfloat16", "n": 1024, "k": 1024, "m": 100},
        {"dtype": "float16", "n": 512, "k": 256, "m": 256},
    ],
}
TOLERANCE = {"float32": 2e-2, "float16": 2e-2, "bfloat16": 6e-2}


class Report:
    def __init__(self) -> None:
        self.checks: list[dict[str, Any]] = []
        self.timings: list[dict[str, Any]] = []

    def check(self, kernel: str, name: str, fn: Callable[[], dict[str, Any] | None]) -> None:
        start = time.perf_counter()
        try:
            detail = fn() or {}
            ok, error = True, None
        except Exception as exc:  # noqa: BLE001  (record and carry on)
            detail, ok = {}, False
            error = f"{type(exc).__name__}: {exc}"[:2000]
            traceback.print_exc()
        self.checks.append(
            {"kernel": kernel, "check": name, "ok": ok, "error": error,
             "seconds": round(time.perf_counter() - start, 3), **detail}
        )
        print(f"[{'ok' if ok else 'FAIL'}] {kernel:<9} {name}" + (f": {error}" if error else ""), flush=True)


def _build_db(tmp: Path) -> Path:
    from presetdb.helion.registry import get_kernel
    from presetdb.store import migrate
    from presetdb.store.records import PresetInput
    from presetdb.store.repository import Repository

    db = tmp / "gpucheck.db"
    migrate.upgrade(db, seed_data=False)
    store = migrate.open_store(db, "rw")
    with store.transaction() as session:
        repo = Repository(session)
        repo.ensure_platform(PLATFORM, vendor="nvidia")
        run = repo.add_run("manual", tuned_by="gpu_check_helion")
        for name, presets in PRESETS.items():
            rk = get_kernel(name)
            repo.ensure_kernel(name, rk.key_spec.to_schema(), rk.description)
            for key, config in presets:
                rk.validate_config(config, key)  # fail here, not in a kernel call
                repo.upsert_preset(name, PLATFORM, run.id, PresetInput(key, config, kernel_source_hash=rk.source_hash()))
    store.dispose()
    return db


def _max_err(out: Any, ref: Any) -> float:
    return float((out.float() - ref.float()).abs().max().item())


def _compare(out: Any, ref: Any, dtype: str) -> dict[str, Any]:
    import torch

    err = _max_err(out, ref)
    scale = float(ref.float().abs().max().item())
    assert scale > 0, "reference is all zeros"
    assert out.shape == ref.shape, f"shape {tuple(out.shape)} != {tuple(ref.shape)}"
    assert not torch.isnan(out.float()).any(), "NaN in output"
    tol = TOLERANCE[dtype] * max(1.0, scale)
    assert err <= tol, f"max abs error {err:.3g} > {tol:.3g}"
    return {"max_abs_err": err}


def run_checks(out_dir: Path) -> Report:
    import torch
    from triton.testing import do_bench

    import presetdb.kernels  # noqa: F401  (registers the kernels)
    from presetdb.helion.registry import get_kernel

    report = Report()
    for name in PRESETS:
        rk = get_kernel(name)
        op = getattr(torch.ops.presetdb, name)
        for i, key in enumerate(CALLS[name]):
            args = rk.example_inputs(key, device="cuda")

            def eager(rk: Any = rk, op: Any = op, args: Any = args, key: dict[str, Any] = key) -> dict[str, Any]:
                res = rk.resolution(*args)
                assert res.choice is not None, "not served from the store"
                out = op(*args)
                torch.cuda.synchronize()
                detail = _compare(out, rk.reference(*args), key["dtype"])
                bound = rk.bound(*args)
                compiled = dict(bound._config.config)
                stored = res.choice.config
                assert all(compiled.get(k) == v for k, v in stored.items()), f"compiled {compiled} != stored {stored}"
                detail.update(shape_key=key, served_by=res.choice.describe(), config=stored)
                return detail

            report.check(name, f"eager op {i} {json.dumps(key)}", eager)

        args = rk.example_inputs(CALLS[name][0], device="cuda")
        dtype = CALLS[name][0]["dtype"]

        def graph(rk: Any = rk, op: Any = op, args: Any = args, dtype: str = dtype) -> dict[str, Any]:
            static = [a.clone() if isinstance(a, torch.Tensor) else a for a in args]
            op(*static)  # warm: compile and publish the fast path outside capture
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                for _ in range(2):
                    op(*static)
            torch.cuda.current_stream().wait_stream(stream)
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g):
                out = op(*static)
            for a in static:
                if isinstance(a, torch.Tensor):
                    a.copy_(torch.randn_like(a.float()).to(a.dtype))
            g.replay()
            torch.cuda.synchronize()
            detail = _compare(out, rk.reference(*static), dtype)
            start = time.perf_counter()
            for _ in range(100):
                g.replay()
            torch.cuda.synchronize()
            detail["replay_us"] = (time.perf_counter() - start) / 100 * 1e6
            return detail

        report.check(name, "cuda graph capture + replay", graph)

        def compiled(rk: Any = rk, op: Any = op, args: Any = args, dtype: str = dtype) -> dict[str, Any]:
            torch._dynamo.reset()

            def model(*xs: Any) -> Any:
                return op(*xs) * 2.0

            fn = torch.compile(model, fullgraph=True)
            out = fn(*args)
            torch.cuda.synchronize()
            return _compare(out, rk.reference(*args) * 2.0, dtype)

        report.check(name, "torch.compile(fullgraph=True)", compiled)

        def timing(rk: Any = rk, op: Any = op, args: Any = args) -> dict[str, Any]:
            bound = rk.bound(*args)
            kargs, _ = rk.adapt_args(tuple(args))
            default_runner = bound.compile_config(bound.config_spec.default_config(), allow_print=False)
            stored_ms = do_bench(lambda: op(*args), return_mode="median")
            default_ms = do_bench(lambda: default_runner(*kargs), return_mode="median")
            reference_ms = do_bench(lambda: rk.reference(*args), return_mode="median")
            for _ in range(20):
                op(*args)
            torch.cuda.synchronize()
            start = time.perf_counter()
            for _ in range(500):
                op(*args)
            torch.cuda.synchronize()
            host_us = (time.perf_counter() - start) / 500 * 1e6
            row = {"kernel": rk.name, "shape_key": CALLS[rk.name][0], "stored_ms": stored_ms, "default_ms": default_ms,
                   "reference_fp32_ms": reference_ms, "op_us_per_call": host_us}
            report.timings.append(row)
            return {k: v for k, v in row.items() if k != "kernel"}

        report.check(name, "timing", timing)

    def reduce_overhead() -> dict[str, Any]:
        rk = get_kernel("rms_norm")
        args = rk.example_inputs(CALLS["rms_norm"][0], device="cuda")
        torch._dynamo.reset()
        fn = torch.compile(lambda x, w: torch.ops.presetdb.rms_norm(x, w, 1e-6) + x, mode="reduce-overhead", fullgraph=True)
        for _ in range(3):
            out = fn(args[0], args[1])
        torch.cuda.synchronize()
        return _compare(out, rk.reference(args[0], args[1], 1e-6) + args[0], "bfloat16")

    report.check("rms_norm", "torch.compile(mode=reduce-overhead) (cudagraph trees)", reduce_overhead)
    if os.environ.get("GPU_CHECK_AUTOTUNE") == "1":
        report.check("rms_norm", "PRESETDB_ON_MISS=autotune with Helion's real search", autotune_miss)
    return report


def autotune_miss() -> dict[str, Any]:
    """A key no preset covers (float16): Helion's autotuner runs (effort quick, minutes),
    the winner lands in the overlay with provenance and serves the next process."""
    import torch

    from presetdb.helion.registry import get_kernel
    from presetdb.runtime.picker import get_picker, reset_picker
    from presetdb.store.repository import Repository

    rk = get_kernel("rms_norm")
    os.environ["PRESETDB_ON_MISS"] = "autotune"
    reset_picker()
    try:
        key = {"dtype": "float16", "hidden": 2048, "num_tokens": 64}
        args = rk.example_inputs(key, device="cuda")
        start = time.perf_counter()
        out = torch.ops.presetdb.rms_norm(*args)
        torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        detail = _compare(out, rk.reference(*args), "float16")
        picker = get_picker()
        assert picker.overlay_path is not None, "no writable overlay"
        picker.flush_misses()  # the ledger's thread has written the result (store_result waited for it)
        from presetdb.store import migrate

        store = migrate.open_store(picker.overlay_path, "ro")
        try:
            with store.read() as session:
                rows = [
                    p for p in Repository(session).all_presets() if p.kernel == "rms_norm" and p.source == "autotune"
                ]
        finally:
            store.dispose()
        assert rows, "the autotuned config was not stored"
        os.environ["PRESETDB_ON_MISS"] = "strict"
        reset_picker()  # "the next process"
        choice = rk.resolution(*args).choice
        assert choice is not None and choice.layer == "overlay", "the stored result does not serve"
        detail.update(autotune_seconds=round(seconds, 1), stored=rows[0].config, latency_ms=rows[0].latency_ms,
                      default_ms=rows[0].default_ms, configs_tried=rows[0].configs_tried)
        return detail
    finally:
        os.environ["PRESETDB_ON_MISS"] = "strict"
        reset_picker()


def main() -> int:
    import torch

    out_dir = Path(os.environ.get("OUT", "out"))
    out_dir.mkdir(parents=True, exist_ok=True)
    if not torch.cuda.is_available():
        print("no CUDA device; this script checks the GPU path", file=sys.stderr)
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="presetdb-gpucheck-"))
    os.environ.update(
        PRESETDB_USER_DB=str(tmp / "overlay.db"), PRESETDB_CACHE_DIR=str(tmp / "cache"),
        PRESETDB_PLATFORM=PLATFORM, PRESETDB_ON_MISS="strict",
    )
    import presetdb.kernels  # noqa: F401  (registers the kernels: needed to validate configs)
    from presetdb.runtime.picker import reset_picker

    os.environ["PRESETDB_PATH"] = str(_build_db(tmp))
    reset_picker()
    started = time.time()
    report = run_checks(out_dir)
    failed = [c for c in report.checks if not c["ok"]]
    result = {
        "script": "gpu_check_helion",
        "device": torch.cuda.get_device_name(),
        "host": platform.node(),
        "versions": {name: version(name) for name in ("torch", "triton", "helion", "presetdb")},
        "cuda": torch.version.cuda,
        "seconds": round(time.time() - started, 1),
        "passed": len(report.checks) - len(failed),
        "failed": len(failed),
        "checks": report.checks,
        "timings": report.timings,
    }
    (out_dir / "gpu_check_helion.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    lines = [f"gpu_check_helion on {result['device']} ({result['versions']})", ""]
    lines += [f"{'ok' if c['ok'] else 'FAIL':<5}{c['kernel']:<10}{c['check']:<60}{c.get('max_abs_err', ''):>12}"
              + (f"  {c['error']}" if c["error"] else "") for c in report.checks]
    lines += ["", f"{'kernel':<10}{'stored ms':>12}{'default ms':>12}{'torch fp32 ms':>15}{'op us/call':>12}"]
    lines += [f"{t['kernel']:<10}{t['stored_ms']:>12.4f}{t['default_ms']:>12.4f}{t['reference_fp32_ms']:>15.4f}"
              f"{t['op_us_per_call']:>12.1f}" for t in report.timings]
    lines += ["", f"{result['passed']} passed, {result['failed']} failed"]
    (out_dir / "gpu_check_helion.txt").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
