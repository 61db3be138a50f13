"""Warm-started vs cold Helion search, same shapes, same seed (issue [coverage], item 6).

`presetdb tune` seeds Helion's search with the stored configs of the nearest keys
(``autotune_seed_configs``); `--no-warm-start` searches cold. For each shape this runs
three searches, each in its own process as a user would:

- cold, budget B;
- warm, budget B;
- warm, budget B / 4: does a warm start reach the cold search's result in a quarter of
  the time?

then times the three chosen configs and Helion's default side by side on the same GPU
(CUDA-graph replay, interleaved rounds, median) and records each search's wall seconds
and configs tried. Writes warm_vs_cold.json and warm_vs_cold.md into OUT_DIR.

    HELION_AUTOTUNE_BENCHMARK_SUBPROCESS=0 python3 -P benchmarks/gpu/warm_vs_cold.py OUT_DIR \
        [--budget-seconds 30] [--rounds 5]

The shapes are fixed below (real model layers: Qwen2.5-14B and Llama-2-13B hidden sizes,
odd token counts), not tuned anywhere else.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from farm_vs_local import time_side_by_side

SHAPES = {
    "rms_norm": [{"dtype": "bfloat16", "hidden": 5120, "num_tokens": 96}],
    "silu_mul": [{"dtype": "bfloat16", "d": 13824, "num_tokens": 48}],
}


def search(kernel: str, shapes: Path, out: Path, budget: int, warm: bool, log: Path) -> float:
    """Wall seconds of one `presetdb tune` process."""
    command = [
        sys.executable, "-P", "-m", "presetdb", "tune", kernel, "--shapes", str(shapes), "--effort", "quick",
        "--budget-seconds", str(budget), "--seed", "1234", "--timing", "graph", "--out", str(out),
        "--warm-start" if warm else "--no-warm-start",
    ]
    out.unlink(missing_ok=True)
    start = time.perf_counter()
    with log.open("w") as fh:
        proc = subprocess.run(command, stdout=fh, stderr=subprocess.STDOUT, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"presetdb tune exited {proc.returncode}; see {log}")
    return time.perf_counter() - start


def write_report(out: Path, rows: list[dict[str, Any]], opts: argparse.Namespace, variants: dict[str, tuple[int, bool]]) -> None:
    """warm_vs_cold.json and .md for the kernels done so far (written after each kernel, so
    a call cut short keeps them)."""
    from importlib.metadata import version

    import torch

    result = {
        "device": torch.cuda.get_device_name(),
        "host": platform.node(),
        "versions": {p: version(p) for p in ("torch", "triton", "helion", "presetdb")},
        "budget_seconds": opts.budget_seconds,
        "timing": f"CUDA-graph replay (triton do_bench_cudagraph median), {opts.rounds} interleaved rounds, median",
        "rows": rows,
        "geomean_warm_over_cold": math.exp(statistics.fmean(math.log(r["warm_over_cold"]) for r in rows)),
        "geomean_warm_quarter_over_cold": math.exp(statistics.fmean(math.log(r["warm_quarter_over_cold"]) for r in rows)),
    }
    (out / "warm_vs_cold.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        f"# warm vs cold search, {result['device']}, budget {opts.budget_seconds} s (quarter: {variants['warm_quarter'][0]} s)",
        "",
        "chosen configs timed side by side (ms; <1 ratio = warm faster); wall s and configs tried per search",
        "",
        "| kernel | key | cold ms | warm ms | warm/4 ms | warm/cold | warm/4 / cold | wall s cold / warm / warm/4 | configs cold / warm / warm/4 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        w, c = r["wall_seconds"], r["configs_tried"]
        lines.append(
            f"| {r['kernel']} | {json.dumps(r['key'], separators=(',', ':'))} | {r['ms']['cold']:.4f} | "
            f"{r['ms']['warm']:.4f} | {r['ms']['warm_quarter']:.4f} | {r['warm_over_cold']:.3f} | "
            f"{r['warm_quarter_over_cold']:.3f} | {w['cold']:.0f} / {w['warm']:.0f} / {w['warm_quarter']:.0f} | "
            f"{c['cold']} / {c['warm']} / {c['warm_quarter']} |"
        )
    (out / "warm_vs_cold.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--budget-seconds", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--kernels", default=",".join(SHAPES), help="comma-separated kernels")
    opts = parser.parse_args()
    out: Path = opts.out_dir
    out.mkdir(parents=True, exist_ok=True)
    variants = {"cold": (opts.budget_seconds, False), "warm": (opts.budget_seconds, True),
                "warm_quarter": (max(1, opts.budget_seconds // 4), True)}
    rows: list[dict[str, Any]] = []
    for kernel, keys in SHAPES.items():
        if kernel not in opts.kernels.split(","):
            continue
        shapes = out / f"{kernel}_shapes.json"
        shapes.write_text(json.dumps(keys))
        entries: dict[str, dict[str, Any]] = {}
        wall: dict[str, float] = {}
        for name, (budget, warm) in variants.items():
            path = out / f"{kernel}_{name}.json"
            wall[name] = search(kernel, shapes, path, budget, warm, out / f"{kernel}_{name}.log")
            doc = json.loads(path.read_text())
            if not doc["entries"]:
                raise SystemExit(f"{kernel} {name}: nothing tuned; see {out / f'{kernel}_{name}.log'}")
            entries[name] = doc["entries"][0]
            print(f"{kernel} {name}: {wall[name]:.1f} s, {entries[name].get('configs_tried')} configs", flush=True)
        key = entries["cold"]["key"]
        configs = {name: e["config"] for name, e in entries.items()}
        ms = time_side_by_side(kernel, key, configs, opts.rounds, "cuda")
        rows.append({
            "kernel": kernel,
            "key": key,
            "ms": ms,
            "default_ms": {name: e.get("default_ms") for name, e in entries.items()},
            "wall_seconds": wall,
            "tuning_seconds": {name: e.get("tuning_seconds") for name, e in entries.items()},
            "configs_tried": {name: e.get("configs_tried") for name, e in entries.items()},
            "warm_over_cold": ms["warm"] / ms["cold"],
            "warm_quarter_over_cold": ms["warm_quarter"] / ms["cold"],
        })
        write_report(out, rows, opts, variants)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
