"""Summary, targets and the short Markdown tables of seed_eval_v2.py's results."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from coverage_eval import geomean

from presetdb._util import write_atomic

KERNELS = ("rms_norm", "silu_mul", "softmax", "matmul")
# The issue's targets (held-out shapes, CUDA-graph timing, ratios from one run).
TARGET_VS_DEFAULT = 0.95
TARGET_VS_TORCH = {"rms_norm": 1.5, "silu_mul": 1.5, "softmax": 1.5, "matmul": 0.95}
MATMUL_MIN_M = 16  # the matmul target covers m >= 16
MATMUL_STRETCH = 1.0


def _geomean(xs: list[float]) -> float | None:
    """The geometric mean, None when there is nothing to average (JSON has no NaN)."""
    value = geomean(xs)
    return value if math.isfinite(value) else None


def _measured(result: dict[str, Any], kernel: str | None = None) -> list[dict[str, Any]]:
    return [r for r in result["rows"] if "error" not in r and (kernel is None or r["kernel"] == kernel)]


def _target(name: str, target: float, value: float | None, shapes: int, of: int, ok: bool = True,
            **extra: Any) -> dict[str, Any]:
    met = value is not None and _finite(value) and value >= target and ok and shapes > 0
    return {"target": name, "threshold": target, "value": value, "met": bool(met), "shapes": shapes, "of": of,
            "complete": shapes >= of, **extra}


def summarize(result: dict[str, Any]) -> dict[str, Any]:
    """Per-kernel geomeans, the worst shape vs Helion's default, and the issue's targets
    (`met` counts only measured shapes; `complete` says whether every held-out one was)."""
    per_kernel: dict[str, Any] = {}
    for k in KERNELS:
        rows = _measured(result, k)
        matches: dict[str, int] = {}
        for r in rows:
            matches[r["match"]] = matches.get(r["match"], 0) + 1
        worst = min(rows, key=lambda r: r["vs_default"], default=None)
        per_kernel[k] = {
            "shapes": len(rows), "of": result["heldout_total"].get(k, 0),
            "errors": sum(1 for r in result["rows"] if r["kernel"] == k and "error" in r),
            "wrong_output": sum(1 for r in rows if r["check"] != "ok"),
            "geomean_vs_torch": _geomean([r["vs_torch"] for r in rows]),
            "geomean_vs_default": _geomean([r["vs_default"] for r in rows]),
            "worst_vs_default": None if worst is None else {"key": worst["key"], "vs_default": worst["vs_default"]},
            "matches": matches,
        }
    mm = [r for r in _measured(result, "matmul") if r["key"].get("m", 0) >= MATMUL_MIN_M]
    per_kernel["matmul"]["geomean_vs_torch_m16"] = _geomean([r["vs_torch"] for r in mm])
    every = _measured(result)
    worst = min(every, key=lambda r: r["vs_default"], default=None)
    total = sum(result["heldout_total"].values())
    all_ok = all(r["check"] == "ok" for r in every) and len(every) == len(result["rows"])
    targets = [_target(f"every held-out shape >= {TARGET_VS_DEFAULT}x Helion's default config", TARGET_VS_DEFAULT,
                       None if worst is None else worst["vs_default"], len(every), total, all_ok,
                       below=[{"kernel": r["kernel"], "key": r["key"], "vs_default": r["vs_default"]}
                              for r in every if r["vs_default"] < TARGET_VS_DEFAULT])]
    for k in ("rms_norm", "silu_mul", "softmax"):
        pk = per_kernel[k]
        targets.append(_target(f"{k}: geomean >= {TARGET_VS_TORCH[k]}x PyTorch", TARGET_VS_TORCH[k],
                               pk["geomean_vs_torch"], pk["shapes"], pk["of"]))
    mm_total = result["heldout_matmul_m16"]
    value = per_kernel["matmul"]["geomean_vs_torch_m16"]
    targets.append(_target(f"matmul: geomean >= {TARGET_VS_TORCH['matmul']}x cuBLAS (PyTorch @) for m >= "
                           f"{MATMUL_MIN_M} (stretch {MATMUL_STRETCH}x)", TARGET_VS_TORCH["matmul"], value, len(mm),
                           mm_total, stretch_met=bool(_finite(value) and value >= MATMUL_STRETCH)))
    e2e = result.get("e2e", {})
    mlp = [r for r in e2e.get("rows", []) if r["block"] == "mlp"]
    wanted = len(result.get("e2e_tokens", [])) or len(mlp)
    targets.append(_target("MLP block: >= 1.0x PyTorch at every token count", 1.0,
                           min((r["vs_torch"] for r in mlp), default=None), len(mlp), wanted,
                           all(r["check"] == "ok" for r in mlp)))
    return {
        "per_kernel": per_kernel,
        "worst_vs_default": None if worst is None else
        {"kernel": worst["kernel"], "key": worst["key"], "vs_default": worst["vs_default"], "match": worst["match"]},
        "measured": len(every), "heldout_total": total, "targets": targets,
    }


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _num(value: Any, digits: int = 2) -> str:
    if not _finite(value):
        return "-"
    if digits == 2 and 0 < abs(value) < 0.1:
        return f"{value:.2g}"  # a ratio far below 1 (CPU smoke runs) keeps two figures
    return f"{value:.{digits}f}"


def _key_text(key: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in key.items() if k != "dtype")


def write(result: dict[str, Any], out: Path) -> None:
    write_atomic(out / "seed_eval_v2.json", json.dumps(result, indent=1, default=str) + "\n")  # replaces the progress file
    s = result["summary"]
    lines = [f"# Seed presets v2 on held-out shapes: {result['device']} ({result['platform']})", "",
             (f"torch {result['torch']}, triton {result['triton']}, helion {result['helion']}, "
              f"presetdb {result['presetdb']}; db {result['db']} (content digest {result['db_digest'][:16]})"), "",
             f"method: {result['method']}", "",
             f"shapes measured: {s['measured']} of {s['heldout_total']} held-out "
             f"(per kernel: {result['per_kernel'] or 'all'}; calls: "
             + "; ".join(f"part {c['part']} {'+'.join(c['sections'])}" for c in result["calls"]) + ")", "",
             "## Targets", "", "| target | value | met | shapes |", "|---|---|---|---|"]
    for t in s["targets"]:
        met = ("yes" if t["met"] else "NO") + ("" if t["complete"] else " (partial)")
        lines.append(f"| {t['target']} | {_num(t['value'])} | {met} | {t['shapes']} of {t['of']} |")
    lines += ["", "## Per kernel (speed-up: above 1 is faster than the other)", "",
              "| kernel | shapes | geomean vs PyTorch | geomean vs Helion default | worst vs default | matches | wrong |",
              "|---|---|---|---|---|---|---|"]
    for k, pk in s["per_kernel"].items():
        worst = pk["worst_vs_default"]
        worst_text = "-" if worst is None else f"{_num(worst['vs_default'])} ({_key_text(worst['key'])})"
        matches = ", ".join(f"{m} {n}" for m, n in sorted(pk["matches"].items()))
        lines.append(f"| {k} | {pk['shapes']} of {pk['of']} | {_num(pk['geomean_vs_torch'])} | "
                     f"{_num(pk['geomean_vs_default'])} | {worst_text} | {matches} | {pk['wrong_output']} |")
    lines += ["", "## Shapes", "", ("| kernel | key | match | served key | served ms | default ms | PyTorch ms "
                                     "| vs PyTorch | vs default | check |"), "|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        if "error" in r:
            lines.append(f"| {r['kernel']} | {_key_text(r['key'])} | error: {r['error'][:120]} |||||||")
            continue
        lines.append(f"| {r['kernel']} | {_key_text(r['key'])} | {r['match']} | {r['served_key'] or '-'} | "
                     f"{_num(r['served_ms'], 4)} | {_num(r['default_ms'], 4)} | {_num(r['torch_ms'], 4)} | "
                     f"{_num(r['vs_torch'])} | {_num(r['vs_default'])} | {r['check'][:60]} |")
    e2e = result.get("e2e", {})
    if e2e.get("rows"):
        lines += ["", f"## End to end ({json.dumps(e2e.get('dims', {}))})", "", e2e.get("method", ""), "",
                  "| block | tokens | presetdb ms | PyTorch ms | PyTorch / presetdb | check |", "|---|---|---|---|---|---|"]
        for r in e2e["rows"]:
            lines.append(f"| {r['block']} | {r['tokens']} | {_num(r['presetdb_ms'], 4)} | {_num(r['torch_ms'], 4)} | "
                         f"{_num(r['vs_torch'])} | {r['check'][:60]} |")
    if e2e.get("note"):
        lines += ["", f"end to end: {e2e['note']}"]
    if result.get("not_measured"):
        lines += ["", f"not measured yet: {len(result['not_measured'])} shape(s) (rerun with --resume of this file)"]
    skipped = result["skipped"] + [f"e2e {x}" for x in e2e.get("skipped", [])]
    if skipped:
        lines += ["", f"skipped (deadline): {len(skipped)}: " + "; ".join(skipped)]
    lines += ["", f"wall: {result.get('wall_seconds')} s"]
    (out / "seed_eval_v2.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines[: 12 + len(s["targets"])]), flush=True)
