"""Plots of seed_eval_v2.py results (one file per GPU, e.g. H100 and H200) for docs/benchmarks.md.

    python3 benchmarks/plot_seed_eval.py benchmarks/results/nvidia_h100/seed_eval_v2/seed_eval_v2.json \
        benchmarks/results/nvidia_h200/seed_eval_v2/seed_eval_v2.json --out docs/img/seed_eval_v2

Writes, with stable names (docs embed them):
- seed_eval_v2_<kernel>.png: per held-out shape, the served config's speed-up vs PyTorch (top)
  and vs Helion's default config (bottom), one colour per GPU, one marker per match kind;
  log scale, a line at 1.0 and one at the issue's target;
- seed_eval_v2_e2e.png: the MLP block and the logits softmax step, PyTorch time / presetdb
  time per token count, one line per GPU.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: no display on a GPU host or in CI
import matplotlib.pyplot as plt

sys.path.insert(0, str(Path(__file__).resolve().parent / "gpu"))
from seed_eval_v2_report import KERNELS, MATMUL_MIN_M, TARGET_VS_DEFAULT, TARGET_VS_TORCH

ROOT = Path(__file__).resolve().parents[1]
MARKERS = {"exact": "o", "nearest": "^", "ceil": "^", "floor": "v", "fallback-platform": "D", "far": "x", "miss": "s"}
COLOURS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple")


def label(result: dict[str, Any]) -> str:
    return f"{result['device']} ({result['platform']})"


def key_text(key: dict[str, Any]) -> str:
    return ",".join(f"{k}={v}" for k, v in key.items() if k != "dtype")


def _order(rows: list[dict[str, Any]]) -> list[str]:
    """Every key any file measured, in one order for all files (numeric fields, in key order)."""
    keys = {json.dumps(r["key"], sort_keys=True): r["key"] for r in rows}
    return sorted(keys, key=lambda k: tuple(v for n, v in keys[k].items() if n != "dtype"))


def plot_kernel(kernel: str, results: list[dict[str, Any]], out: Path) -> Path:
    rows = [r for res in results for r in res["rows"] if r["kernel"] == kernel and "error" not in r]
    order = _order(rows)
    where = {k: i for i, k in enumerate(order)}
    width = max(8.0, 0.2 * len(order) + 2)
    fig, axes = plt.subplots(2, 1, figsize=(width, 7.5), sharex=True)
    panels = (("vs_torch", "speed-up vs PyTorch", TARGET_VS_TORCH[kernel]),
              ("vs_default", "speed-up vs Helion's default config", TARGET_VS_DEFAULT))
    for ax, (field, title, target) in zip(axes, panels, strict=True):
        seen: set[str] = set()
        for colour, res in zip(COLOURS, results, strict=False):
            mine = [r for r in res["rows"] if r["kernel"] == kernel and "error" not in r and r.get(field)]
            for kind in sorted({r["match"] for r in mine}):
                pts = [r for r in mine if r["match"] == kind]
                name = f"{label(res)}: {kind}"
                ax.scatter([where[json.dumps(r["key"], sort_keys=True)] for r in pts], [r[field] for r in pts],
                           color=colour, marker=MARKERS.get(kind, "*"), s=28, label=name if name not in seen else None)
                seen.add(name)
        ax.axhline(1.0, color="grey", linestyle="--", linewidth=1)
        note = f" (m >= {MATMUL_MIN_M})" if kernel == "matmul" and field == "vs_torch" else ""
        ax.axhline(target, color="red", linestyle=":", linewidth=1, label=f"target {target}x{note}")
        ax.set_yscale("log")
        ax.set_ylabel(title)
        ax.grid(True, which="both", axis="y", alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    axes[-1].set_xticks(range(len(order)))
    axes[-1].set_xticklabels([key_text(json.loads(k)) for k in order], rotation=90, fontsize=6)
    axes[-1].set_xlim(-0.5, len(order) - 0.5)
    timing = "CUDA-graph timing" if all(r.get("device_kind") == "cuda" for r in results) else "CPU smoke run: no meaning"
    axes[0].set_title(f"{kernel}: held-out shapes, the config presetdb serves ({timing})")
    fig.tight_layout()
    path = out / f"seed_eval_v2_{kernel}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_e2e(results: list[dict[str, Any]], out: Path) -> Path:
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    for ax, block, title in zip(axes, ("mlp", "softmax"), ("decoder MLP block", "logits softmax step"), strict=True):
        for colour, res in zip(COLOURS, results, strict=False):
            pts = sorted((r["tokens"], r["vs_torch"]) for r in res.get("e2e", {}).get("rows", []) if r["block"] == block)
            if pts:
                ax.plot([t for t, _ in pts], [v for _, v in pts], marker="o", color=colour, label=label(res))
        ax.axhline(1.0, color="red" if block == "mlp" else "grey", linestyle=":" if block == "mlp" else "--",
                   linewidth=1, label="target 1.0x" if block == "mlp" else None)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("tokens")
        ax.set_ylabel("PyTorch time / presetdb time")
        dims = next((r.get("e2e", {}).get("dims") for r in results if r.get("e2e", {}).get("dims")), None) or {}
        ax.set_title(f"{title}" + (f" ({dims.get('source', '')})" if dims else ""), fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.tight_layout()
    path = out / "seed_eval_v2_e2e.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def read_results(parser: argparse.ArgumentParser, paths: list[Path], name: str) -> list[dict[str, Any]]:
    """Each results file as JSON; one that cannot be read ends the script with its path."""
    results = []
    for path in paths:
        try:
            results.append(json.loads(path.read_text()))
        except (OSError, ValueError) as exc:
            parser.error(f"{path}: cannot read it ({exc}); pass {name} files")
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", type=Path, nargs="+", help="seed_eval_v2.json files (one per GPU)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs/img/seed_eval_v2")
    opts = parser.parse_args(argv)
    results = read_results(parser, opts.results, "seed_eval_v2.json")
    opts.out.mkdir(parents=True, exist_ok=True)
    written = [plot_kernel(k, results, opts.out) for k in KERNELS] + [plot_e2e(results, opts.out)]
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
