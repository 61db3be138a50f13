"""One GPU: `presetdb tune --executor ray` vs `--executor local`, same shapes, same budget.

Runs the same tune command twice (each in its own process, as a user would), then
re-measures both runs' chosen configs side by side on the same GPU (CUDA-graph replay,
interleaved rounds, median), and writes `farm_vs_local.json` and `farm_vs_local.md` into
OUT_DIR (plus both results files and their logs).

    HELION_AUTOTUNE_BENCHMARK_SUBPROCESS=0 python benchmarks/gpu/farm_vs_local.py OUT_DIR \
        [--kernel rms_norm] [--budget-seconds 8] [--rounds 5]

`--device cpu` is a smoke run of this script (Triton interpreter, sampled configs, wall
time): its figures say nothing about the farm on a GPU.

`--worker gpu` (default here) runs the ray side on one long-lived worker per GPU, `--worker
shape` on a fresh worker process per shape.

Targets (issue [farm]): wall-time ratio ray/local <= 1.1; the farm's configs no slower.
About 5-7 minutes on an H100 with the defaults (8 rms_norm shapes, 8 s search budget).
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

SHAPES = {
    "rms_norm": [
        {"dtype": "bfloat16", "hidden": hidden, "num_tokens": tokens}
        for hidden in (2048, 4096, 8192, 16384)
        for tokens in (1, 256)
    ],
    "silu_mul": [
        {"dtype": "bfloat16", "d": d, "num_tokens": tokens}
        for d in (4096, 8192, 14336, 28672)
        for tokens in (1, 256)
    ],
}


def tune(kernel: str, executor: str, shapes: Path, out: Path, budget: int, log: Path, device: str,
         limit: float | None = None, worker: str = "shape") -> tuple[float, bool]:
    """(wall seconds, whether it finished) of one `presetdb tune` process. Past `limit`
    seconds it gets Ctrl-C, which keeps the shapes it finished."""
    command = [
        sys.executable, "-m", "presetdb", "tune", kernel, "--shapes", str(shapes), "--executor", executor,
        "--effort", "quick", "--budget-seconds", str(budget), "--seed", "1234", "--no-warm-start",
        "--timing", "graph", "--device", device, "--out", str(out),
    ]
    if executor == "ray":
        command += ["--worker", worker]
    if executor == "ray" and device == "cpu":
        command += ["--gpus-per-task", "0"]  # the smoke run's machine has no GPU
    env = {**os.environ, "HELION_AUTOTUNE_BENCHMARK_SUBPROCESS": os.environ.get("HELION_AUTOTUNE_BENCHMARK_SUBPROCESS", "0")}
    # Each run compiles from an empty Triton cache: the second run must not reuse the first's.
    env["TRITON_CACHE_DIR"] = str(out.parent / f"{executor}_triton_cache")
    start = time.perf_counter()
    with log.open("w") as fh:
        proc = subprocess.Popen(command, stdout=fh, stderr=subprocess.STDOUT, env=env)
        try:
            proc.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            return time.perf_counter() - start, False
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{executor}: presetdb tune exited {proc.returncode}; see {log}")
    return seconds, True


def worker_setup_seconds(log: Path) -> list[float]:
    """The farm's worker setup (spawn to work) from its `done` lines: every shape's with
    --worker shape, each worker's first shape's with --worker gpu."""
    return [float(m) for m in re.findall(r"worker setup ([0-9.]+) s", log.read_text(errors="replace"))]


def time_side_by_side(kernel: str, key: dict[str, Any], configs: dict[str, dict[str, Any]], rounds: int,
                      device: str) -> dict[str, float]:
    """Median ms of each named config on `key`'s shape, timed side by side (graph replay on a
    GPU, interleaved rounds)."""
    import helion

    from presetdb.helion.autotune import plain_kernel
    from presetdb.helion.registry import get_kernel, load_kernel_modules
    from presetdb.offline.tune import cpu_timer, graph_timer

    timer = graph_timer if device == "cuda" else cpu_timer(1)
    load_kernel_modules()
    rk = get_kernel(kernel)
    plain = plain_kernel(rk, effort="quick", seed=1, budget_seconds=None)
    args = tuple(rk.adapt_args(tuple(rk.example_inputs(key, device)))[0])
    bound = plain.bind(args)
    runs = {name: bound.compile_config(helion.Config(**cfg)) for name, cfg in configs.items()}
    samples: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, fn in runs.items():
            samples[name].append(timer(functools.partial(fn, *args)))
    return {name: statistics.median(times) for name, times in samples.items()}


def remeasure(
    kernel: str, local: dict[str, Any], farm: dict[str, Any], rounds: int, device: str
) -> list[dict[str, Any]]:
    """Both runs' configs per shape, timed side by side (graph replay, interleaved)."""
    from presetdb.keys import canonical_key

    by_key = {canonical_key(e["key"]): e for e in farm["entries"]}
    rows = []
    for entry in local["entries"]:
        key = entry["key"]
        other = by_key.get(canonical_key(key))
        if other is None:
            continue
        ms = time_side_by_side(kernel, key, {"local": entry["config"], "ray": other["config"]}, rounds, device)
        rows.append({
            "key": key,
            "local_ms": ms["local"],
            "ray_ms": ms["ray"],
            "ray_over_local": ms["ray"] / ms["local"],
            "same_config": entry["config"] == other["config"],
            "local_tuning_seconds": entry.get("tuning_seconds"),
            "ray_tuning_seconds": other.get("tuning_seconds"),
            "local_configs_tried": entry.get("configs_tried"),
            "ray_configs_tried": other.get("configs_tried"),
        })
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--kernel", default="rms_norm", choices=sorted(SHAPES))
    parser.add_argument("--budget-seconds", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--shapes", type=int, default=8, help="how many of the kernel's 8 shapes")
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--worker", default="gpu", choices=("shape", "gpu"),
                        help="the ray run's workers: a fresh process per shape, or one long-lived per GPU")
    parser.add_argument("--run-limit", type=float, default=None,
                        help="seconds per tune run; past it the run gets Ctrl-C and keeps its finished shapes")
    opts = parser.parse_args()
    out: Path = opts.out_dir
    out.mkdir(parents=True, exist_ok=True)
    shapes = out / "shapes.json"
    chosen = SHAPES[opts.kernel][: opts.shapes]
    if opts.device == "cpu":  # the interpreter: small shapes of the same kernel
        width = "hidden" if opts.kernel == "rms_norm" else "d"
        chosen = [dict(k, dtype="float32", **{width: k[width] // 256}) for k in chosen]
    shapes.write_text(json.dumps(chosen, indent=1))
    files = {name: out / f"{opts.kernel}_{name}.json" for name in ("local", "ray")}
    for path in files.values():
        path.unlink(missing_ok=True)  # a fresh run each, never a resume
    wall, complete = {}, {}
    for name in ("local", "ray"):  # local first; each with its own empty Triton cache
        wall[name], complete[name] = tune(
            opts.kernel, name, shapes, files[name], opts.budget_seconds, out / f"{name}.log", opts.device, opts.run_limit,
            opts.worker,
        )
        print(f"{name}: {wall[name]:.1f} s{'' if complete[name] else ' (cut short: --run-limit)'}", flush=True)
    docs = {name: json.loads(path.read_text()) for name, path in files.items()}
    done = {name: len(d["entries"]) for name, d in docs.items()}
    # Wall time per finished shape minus its search: what each executor adds per shape.
    overhead = {
        name: (wall[name] - sum(e.get("tuning_seconds") or 0 for e in d["entries"])) / max(1, done[name])
        for name, d in docs.items()
    }
    setups = worker_setup_seconds(out / "ray.log")
    rows = remeasure(opts.kernel, docs["local"], docs["ray"], opts.rounds, opts.device)

    import torch

    ratios = [r["ray_over_local"] for r in rows]
    result = {
        "device": torch.cuda.get_device_name() if opts.device == "cuda" else "cpu (smoke run)",
        "host": platform.node(),
        "versions": {k: v for k, v in docs["local"]["run"].items() if k.endswith("_version")},
        "ray_version": __import__("ray").__version__,
        "ray_worker": opts.worker,
        "kernel": opts.kernel,
        "shapes": len(chosen),
        "budget_seconds": opts.budget_seconds,
        "wall_seconds": wall,
        "complete": complete,
        "wall_ratio_ray_over_local": wall["ray"] / wall["local"] if all(complete.values()) else None,
        "per_shape_wall_ratio_ray_over_local": (wall["ray"] / max(1, done["ray"])) / (wall["local"] / max(1, done["local"])),
        "overhead_seconds_per_shape": overhead,
        "ray_worker_setup_seconds": {"median": statistics.median(setups), "max": max(setups)} if setups else None,
        "tuned": {name: len(d["entries"]) for name, d in docs.items()},
        "failed": {name: len(d.get("failures", [])) for name, d in docs.items()},
        "config_timing_geomean_ray_over_local": math.exp(statistics.fmean(math.log(r) for r in ratios)) if ratios else None,
        "config_timing_worst_ray_over_local": max(ratios) if ratios else None,
        "timing": (
            "CUDA-graph replay (triton do_bench_cudagraph median)" if opts.device == "cuda" else "CPU wall time"
        ) + f", {opts.rounds} interleaved rounds, median",
        "rows": rows,
    }
    (out / "farm_vs_local.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        (
            f"# farm (--worker {opts.worker}) vs local, {result['device']}, {opts.kernel}, {result['shapes']} shapes, "
            f"budget {opts.budget_seconds} s"
        ),
        "",
        (
            f"wall: local {wall['local']:.1f} s ({done['local']} shapes), ray {wall['ray']:.1f} s ({done['ray']} shapes), "
            + (f"ratio {result['wall_ratio_ray_over_local']:.3f}" if result["wall_ratio_ray_over_local"] else "a run was cut short")
            + f"; per shape {result['per_shape_wall_ratio_ray_over_local']:.3f} (target <= 1.1)"
        ),
        (
            f"added per shape beyond the search: local {overhead['local']:.1f} s, ray {overhead['ray']:.1f} s"
            + (f"; ray worker setup median {result['ray_worker_setup_seconds']['median']:.1f} s" if setups else "")
        ),
        (
            "chosen configs re-measured side by side (ray/local, >1 = farm slower): geomean "
            f"{result['config_timing_geomean_ray_over_local']:.3f}, "
            f"worst {result['config_timing_worst_ray_over_local']:.3f}"
        ),
        "",
        "| key | local ms | ray ms | ray/local | same config | tuning s local / ray |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {json.dumps(r['key'], separators=(',', ':'))} | {r['local_ms']:.4f} | {r['ray_ms']:.4f} | "
            f"{r['ray_over_local']:.3f} | {r['same_config']} | {r['local_tuning_seconds']} / {r['ray_tuning_seconds']} |"
        )
    (out / "farm_vs_local.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
