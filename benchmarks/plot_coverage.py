"""Plot of a held-out coverage evaluation (`benchmarks/gpu/coverage_eval.py`, or a merged
report from `coverage_merge.py`) for docs/benchmarks.md.

    python3 benchmarks/plot_coverage.py benchmarks/results/nvidia_h100/coverage/heldout_eval_h100/coverage_eval.json \
        --out docs/img/coverage

Writes coverage_<platform>.png (a stable name: docs embed it): per held-out shape, grouped by
kernel, what each far policy (nearest, default, rerank) runs at relative to Helion's default
config (top) and to PyTorch (bottom), log scale; far matches are shaded, a line marks 1.0
and the issue's 0.95x target. Shapes that were not measured are listed in the title.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: no display on a GPU host or in CI
import matplotlib.pyplot as plt

sys.path.insert(0, str(Path(__file__).resolve().parent))
from plot_seed_eval import key_text, read_results

sys.path.insert(0, str(Path(__file__).resolve().parent / "gpu"))
from coverage_eval import parse_shape_id

ROOT = Path(__file__).resolve().parents[1]
POLICIES = {"nearest": ("tab:orange", "v"), "default": ("tab:blue", "o"), "rerank": ("tab:green", "^")}
TARGET_VS_DEFAULT = 0.95
KERNEL_ORDER = ("rms_norm", "silu_mul", "softmax", "matmul")


def _ordered(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    def rank(row: dict[str, Any]) -> tuple[Any, ...]:
        kernel = row["kernel"]
        first = KERNEL_ORDER.index(kernel) if kernel in KERNEL_ORDER else len(KERNEL_ORDER)
        return (first, kernel, tuple(v for n, v in row["key"].items() if n != "dtype"))

    return sorted(rows, key=rank)


def unmeasured(result: dict[str, Any]) -> list[str]:
    """The chosen shapes without a measurement: failed rows, shapes skipped at the deadline and
    shapes with no row at all (a process killed by its step's time limit records nothing)."""
    missing = [f"{r['kernel']} {key_text(r['key'])}" for r in result["rows"] if "error" in r]
    for entry in result.get("skipped", []):  # 'kernel {key}'; 'autotune kernel {key}' is not a shape
        kernel, key = parse_shape_id(entry)
        if not kernel.startswith("autotune "):
            missing.append(f"{kernel} {key_text(key)}")
    has_row = {f"{r['kernel']} {key_text(r['key'])}" for r in result["rows"]}
    for kernel, keys in result.get("chosen", {}).items():
        for key in keys:
            name = f"{kernel} {key_text(key)}"
            if name not in has_row and name not in missing:
                missing.append(name)
    return missing


def plot(result: dict[str, Any], out: Path) -> Path:
    rows = _ordered([r for r in result["rows"] if "error" not in r])
    missing = unmeasured(result)
    if not rows:
        raise SystemExit("no measured rows to plot")
    fig, axes = plt.subplots(2, 1, figsize=(max(8.0, 0.35 * len(rows) + 2), 8), sharex=True)
    xs = range(len(rows))
    for ax, field, title in ((axes[0], "vs_default", "speed-up vs Helion's default config"),
                             (axes[1], "vs_torch", "speed-up vs PyTorch")):
        for x, row in zip(xs, rows, strict=True):
            if row["far"]:
                ax.axvspan(x - 0.5, x + 0.5, color="grey", alpha=0.12, linewidth=0)
        for policy, (colour, marker) in POLICIES.items():
            pts = [(x, r[field].get(policy)) for x, r in zip(xs, rows, strict=True) if r[field].get(policy)]
            label = f"{policy}" + (" (shipped)" if policy == "default" else "")
            ax.scatter([x for x, _ in pts], [v for _, v in pts], color=colour, marker=marker, s=30, label=label,
                       alpha=0.85)
        ax.axhline(1.0, color="grey", linestyle="--", linewidth=1)
        if field == "vs_default":
            ax.axhline(TARGET_VS_DEFAULT, color="red", linestyle=":", linewidth=1, label=f"target {TARGET_VS_DEFAULT}x")
        ax.set_yscale("log")
        ax.set_ylabel(title)
        ax.grid(True, which="both", axis="y", alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    axes[1].set_xticks(list(xs))
    axes[1].set_xticklabels([f"{r['kernel']} {key_text(r['key'])}" for r in rows], rotation=90, fontsize=6)
    axes[1].set_xlim(-0.5, len(rows) - 0.5)
    head = f"held-out shapes on {result['device']}, CUDA-graph timing; shaded: far match"
    if missing:
        head += f"\nnot measured: {'; '.join(missing)}"
    axes[0].set_title(head, fontsize=9)
    fig.tight_layout()
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"coverage_{result['platform']}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", type=Path, nargs="+", help="coverage_eval.json files (one per GPU)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs/img/coverage")
    opts = parser.parse_args(argv)
    for result in read_results(parser, opts.results, "coverage_eval.json"):
        print(plot(result, opts.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
