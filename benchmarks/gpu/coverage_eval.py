"""Far matches on held-out shapes, measured on a GPU (issue [coverage]).

For held-out real-model shapes (benchmarks/shapes/heldout_coverage.json: chosen before
any tuning, never tuned or refined), what each PRESETDB_ON_FAR policy would serve, timed
as a server runs it (triton.testing.do_bench_cudagraph median: CUDA-graph replay, warm
L2, no host time):

- nearest: the config of the key the picker matched, far or not;
- default: Helion's default config when the match is far (or nothing matched), else the
  matched config (the shipped default policy);
- rerank:  the fastest of the k nearest stored configs and Helion's default timed on the
  shape (`presetdb.helion.rerank.rank_configs`, what ``PRESETDB_ON_FAR=rerank`` does on a
  first call) when the match is far, else the matched config;

against Helion's default config and the PyTorch baseline. Target: no shape below 0.95x
Helion's default config with the default policy. Also: refine's cost per shape (seconds,
compiles included) vs a quick autotune's (`--autotune N` shapes, each capped by
`--autotune-budget` seconds: a capped search reports at least that).

    python3 -P benchmarks/gpu/coverage_eval.py --db presetdb/data/default.db --out $OUT/coverage

Runs in under 8 minutes on one H100: `--per-kernel` shapes of each kernel are taken at
evenly spaced positions of the held-out list (deterministic; recorded in the results as
`chosen`), and work stops at `--deadline` seconds (what was skipped is recorded).
Writes coverage_eval.json and coverage_eval.md to --out. PRESETDB_MAX_DISTANCE applies
as at run time (set it to try other limits).

Timing per shape: each candidate once, then the 3 fastest and Helion's default 3 more
times, round robin, median (refine's method); a config slower than the third fastest is
timed once.

A shape that hangs (one compile can outlast the per-shape budget, which is checked between
compiles) costs at most `--shape-hard-limit` seconds: the file names the shape in progress
before it starts, a watchdog ends the process (exit 4) when the limit passes, and a rerun
with --resume records that shape as failed ("did not finish") and goes on with the next.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
import traceback
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from presetdb._util import hard_limit as ending_after
from presetdb._util import write_atomic  # stdlib only: safe before the env is set

ROOT = Path(__file__).resolve().parents[2]
KERNELS = ("rms_norm", "silu_mul", "softmax", "matmul")
POLICIES = ("nearest", "default", "rerank")
TARGET = 0.95
LOST_CONTEXT = 3  # exit code: the CUDA context broke; rerun with --resume


def shape_id(kernel: str, key: dict[str, Any]) -> str:
    """A held-out shape's name in results and resumes: kernel and key, keys sorted."""
    return f"{kernel} {json.dumps(key, sort_keys=True)}"


def parse_shape_id(text: str) -> tuple[str, dict[str, Any]]:
    """(head, key) of a `shape_id` or of a `skipped` entry ('[autotune ]kernel {key}')."""
    head, key = text.split(" {", 1)
    return head, json.loads("{" + key)


def geomean(xs: list[float]) -> float:
    xs = [x for x in xs if x > 0 and math.isfinite(x)]
    return math.exp(sum(map(math.log, xs)) / len(xs)) if xs else float("nan")


def spaced(items: list[Any], n: int) -> list[int]:
    """`n` evenly spaced indices of `items` (all when there are fewer)."""
    if len(items) <= n:
        return list(range(len(items)))
    return sorted({round(i * (len(items) - 1) / (n - 1)) for i in range(n)}) if n > 1 else [0]


def _same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", type=Path, required=True, help="the presets served (e.g. presetdb/data/default.db)")
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "out")))
    parser.add_argument("--platform", default=None, help="default: the GPU's own (as a server resolves it)")
    parser.add_argument("--shapes", type=Path, default=ROOT / "benchmarks/shapes/heldout_coverage.json")
    parser.add_argument("--per-kernel", type=int, default=6, help="held-out shapes per kernel (evenly spaced)")
    parser.add_argument("--k", type=int, default=6, help="stored configs a rerank times besides Helion's default")
    parser.add_argument("--autotune", type=int, default=2, help="shapes to quick-autotune for the cost comparison")
    parser.add_argument("--autotune-budget", type=int, default=45, help="seconds per autotuned shape (Helion's budget)")
    parser.add_argument("--shape-budget", type=float, default=60.0,
                        help="seconds one shape's rerank may spend; later candidates are left out (recorded)")
    parser.add_argument("--shape-hard-limit", type=float, default=240.0,
                        help="seconds after which a shape still running ends the process (exit 4; rerun with --resume)")
    parser.add_argument("--deadline", type=float, default=440.0, help="seconds; later work is skipped")
    parser.add_argument("--kernels", default=",".join(KERNELS), help="comma-separated kernels to evaluate")
    parser.add_argument("--resume", type=Path, default=None,
                        help="an earlier coverage_eval.json: its rows are kept and their shapes not run again")
    parser.add_argument("--device", default="cuda", help="cpu: a smoke run in the Triton interpreter (CPU timings, no autotune)")
    opts = parser.parse_args()
    started = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="coverage-eval-"))
    if opts.platform is None:
        import torch

        from presetdb.runtime.platforms import derive_platform_name

        opts.platform = derive_platform_name(torch.cuda.get_device_name()) if opts.device == "cuda" else "cpu"
    os.environ.update(
        PRESETDB_PATH=str(opts.db.resolve()), PRESETDB_PLATFORM=opts.platform,
        PRESETDB_USER_DB=str(tmp / "overlay.db"), PRESETDB_CACHE_DIR=str(tmp / "cache"),
        PRESETDB_ON_MISS="default", PRESETDB_ON_FAR="default",
    )
    import torch

    import presetdb.kernels  # noqa: F401
    from presetdb.helion.registry import get_kernel
    from presetdb.helion.rerank import Candidate, distinct_nearest, graph_timer
    from presetdb.offline.refine import refine_shape
    from presetdb.runtime.picker import get_picker

    picker = get_picker()
    heldout = json.loads(opts.shapes.read_text())
    chosen = {k: [heldout[k][i] for i in spaced(heldout.get(k, []), opts.per_kernel)] for k in KERNELS}
    result: dict[str, Any] = {
        "device": torch.cuda.get_device_name() if opts.device == "cuda" else "cpu (Triton interpreter: a smoke run)", "platform": opts.platform, "db": str(opts.db),
        "torch": torch.__version__, "shapes_file": str(opts.shapes.relative_to(ROOT) if opts.shapes.is_relative_to(ROOT) else opts.shapes),
        "chosen": chosen, "k": opts.k,
        "limits": {k: picker.limits(k, get_kernel(k).key_spec) for k in KERNELS},
        "max_distance_setting": os.environ.get("PRESETDB_MAX_DISTANCE", ""),
        "method": "triton.testing.do_bench_cudagraph median (rep 100 ms) after one warm-up call; each candidate once, "
                  "the 3 fastest and Helion's default 3 more times round robin, median",
        "rows": [], "autotune": [], "skipped": [],
    }

    done_keys: set[str] = set()
    if opts.resume is not None and opts.resume.exists():
        earlier = json.loads(opts.resume.read_text())
        if earlier["device"] != result["device"] or earlier["db"] != result["db"]:
            raise SystemExit(f"{opts.resume}: measured on {earlier['device']} with {earlier['db']}; start a new --out")
        for part in ("rows", "autotune"):
            result[part] = earlier[part]
        result["lost_context"] = earlier.get("lost_context", [])
        if earlier.get("in_progress"):
            result["rows"].append(unfinished(earlier["in_progress"]))
        done_keys = {shape_id(r["kernel"], r["key"]) for r in result["rows"]}
    kernels = [k for k in KERNELS if k in opts.kernels.split(",")]

    def left() -> float:
        return opts.deadline - (time.perf_counter() - started)

    reserve = opts.autotune * (opts.autotune_budget + 25)  # the autotune part runs last
    for name in kernels:
        rk = get_kernel(name)
        for key in chosen[name]:
            if shape_id(name, key) in done_keys:
                continue
            if left() < reserve + 15:
                result["skipped"].append(f"{name} {json.dumps(key)}")
                continue
            features = tuple(key[n] for n in rk.key_spec.names)
            choice = picker.resolve(name, rk.key_spec, features)
            served: dict[str, Any] | None = None
            result["in_progress"] = in_progress(name, key, opts.shape_hard_limit)
            write(result, opts.out, quiet=True)
            t0 = time.perf_counter()
            try:
                try:
                    with hard_limit(opts.shape_hard_limit, shape_id(name, key)):
                        candidates: list[Candidate] = []
                        if choice is not None:
                            served = rk.validate_config(dict(choice.config), key)
                            candidates.append(Candidate(served, f"served:{choice.platform}:{choice.preset.shape_key}"))
                        candidates += distinct_nearest(picker.neighbours(name, rk.key_spec, features), opts.k)
                        candidates = distinct_nearest(((c.origin, c.config) for c in candidates), opts.k + 1)
                        ranked = refine_shape(rk, key, candidates, device=opts.device, timing="graph", check=True,
                                              deadline=time.perf_counter() + opts.shape_budget)
                finally:
                    del result["in_progress"]  # finished or failed: no longer "did not finish"
            except Exception as exc:  # noqa: BLE001  (one shape's failure is recorded, not fatal)
                result["rows"].append({"kernel": name, "key": key, "error": f"{type(exc).__name__}: {exc}"[:500],
                                       "traceback_tail": traceback.format_exc()[-2500:]})
                print(f"{name} {json.dumps(key)}: FAILED {exc}", flush=True)
                if opts.device == "cuda" and not context_ok(torch):
                    # a failed CUDA-graph capture can leave the context unusable: stop here;
                    # run again with --resume to go on in a fresh process
                    result.setdefault("lost_context", []).append(f"{name} {json.dumps(key)}")
                    write(result, opts.out, quiet=True)
                    print("CUDA context lost: rerun with --resume", flush=True)
                    return LOST_CONTEXT
                write(result, opts.out, quiet=True)
                continue
            seconds = time.perf_counter() - t0
            entry = ranked.entry
            timed = [(entry["config"], entry["latency_ms"])] + [(r["config"], r["latency_ms"]) for r in entry.get("runners_up", [])]
            default_ms = entry.get("default_ms")
            served_ms = None
            if served is not None:
                served_ms = next((ms for cfg, ms in timed if _same(cfg, served)), None)
                if served_ms is None and not any(o.startswith("served:") for o, _ in ranked.failed):
                    served_ms = default_ms  # the served config is Helion's default one
            far = choice is None or choice.far
            nearest_ms = served_ms if choice is not None else default_ms  # a miss gets Helion's default
            policy_ms = {
                "nearest": nearest_ms,
                "default": default_ms if far else nearest_ms,
                "rerank": entry["latency_ms"] if far else nearest_ms,
            }
            row = {
                "kernel": name, "key": key,
                "served_key": None if choice is None else f"{choice.platform}:{choice.preset.shape_key}",
                "match": "miss" if choice is None else choice.kind,
                "distances": {} if choice is None else choice.distances,
                "far": far, "far_fields": {} if choice is None else choice.far_fields,
                "default_ms": default_ms, "torch_ms": entry.get("reference_ms"), "served_ms": served_ms,
                "rerank_ms": entry["latency_ms"], "rerank_winner": ranked.winner_origin,
                "default_config": ranked.default_config,  # Helion's default for this shape's size class
                "policy_ms": policy_ms,
                "vs_default": {p: (default_ms / ms if default_ms and ms else None) for p, ms in policy_ms.items()},
                "vs_torch": {p: (entry["reference_ms"] / ms if entry.get("reference_ms") and ms else None) for p, ms in policy_ms.items()},
                "refine_seconds": round(seconds, 2), "configs_timed": entry["configs_tried"],
                "failed_candidates": [list(f) for f in ranked.failed],
            }
            result["rows"].append(row)
            write(result, opts.out, quiet=True)  # a cut-short run keeps every finished shape
            print(f"{name} {json.dumps(key)}: {row['match']} far={far} vs default "
                  + " ".join(f"{p} {v:.2f}" for p, v in row["vs_default"].items() if v) + f" refine {seconds:.1f}s", flush=True)
    # refine's cost vs a quick autotune's, on the first shapes that were refined
    from presetdb.offline.tune import plain_kernel

    done = [r for r in result["rows"] if "error" not in r]
    targets = [done[i] for i in spaced(done, opts.autotune)][: opts.autotune] if done and opts.device == "cuda" else []
    if result["autotune"]:
        targets = []  # measured by the run this one resumes
    for row in targets:
        if left() < opts.autotune_budget + 20:
            result["skipped"].append(f"autotune {row['kernel']} {json.dumps(row['key'])}")
            continue
        rk = get_kernel(row["kernel"])
        args = rk.example_inputs(row["key"], device="cuda")
        kargs = tuple(rk.adapt_args(tuple(args))[0])
        t0 = time.perf_counter()
        try:
            bound = plain_kernel(rk, effort="quick", seed=0, budget_seconds=opts.autotune_budget).bind(kargs)
            config = bound.autotune(kargs, force=True)
            seconds = time.perf_counter() - t0
            fn = bound.compile_config(config)
            ms = graph_timer(lambda f=fn, a=kargs: f(*a))
            result["autotune"].append({
                "kernel": row["kernel"], "key": row["key"], "autotune_seconds": round(seconds, 1),
                "budget_seconds": opts.autotune_budget, "autotuned_ms": ms, "rerank_ms": row["rerank_ms"],
                "refine_seconds": row["refine_seconds"], "default_ms": row["default_ms"],
            })
            print(f"autotune {row['kernel']} {json.dumps(row['key'])}: {seconds:.0f}s, {ms:.4f} ms "
                  f"(rerank {row['rerank_ms']:.4f} ms in {row['refine_seconds']:.1f}s)", flush=True)
        except Exception as exc:  # noqa: BLE001
            result["autotune"].append({"kernel": row["kernel"], "key": row["key"], "error": f"{type(exc).__name__}: {exc}"[:500]})
    result["wall_seconds"] = round(time.perf_counter() - started, 1)
    write(result, opts.out)
    return 0


def in_progress(kernel: str, key: dict[str, Any], limit_seconds: float) -> dict[str, Any]:
    """The results file's note of the shape being measured, written before it starts."""
    return {"shape": shape_id(kernel, key), "kernel": kernel, "key": key, "limit_seconds": limit_seconds}


def unfinished(note: dict[str, Any]) -> dict[str, Any]:
    """The failed row of the shape an `in_progress` note names in a resumed file: its process
    ended while it ran, and it is not tried again."""
    return {"kernel": note["kernel"], "key": note["key"], "error": (
        f"did not finish: the process ended {note['limit_seconds']:g} s or less after the shape started "
        "(the watchdog, or the call's time limit); not retried")}


def hard_limit(seconds: float, shape: str) -> AbstractContextManager[None]:
    """Ends the process (exit HUNG) if the block, measuring `shape`, still runs after
    `seconds`; the results file already names the shape (`in_progress`)."""
    def say() -> None:
        print(f"{shape}: still running after {seconds:.0f} s; ending the process (rerun with --resume)", flush=True)

    return ending_after(seconds, say)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def context_ok(torch: Any) -> bool:
    try:
        torch.cuda.synchronize()
        torch.empty(1, device="cuda").add_(1)
        torch.cuda.synchronize()
        return True
    except Exception:  # noqa: BLE001
        return False


def write(result: dict[str, Any], out: Path, quiet: bool = False) -> None:
    write_atomic(out / "coverage_eval.json", json.dumps(result, indent=1, default=str))
    if quiet:
        return
    rows = [r for r in result["rows"] if "error" not in r]
    lines = [f"# Far matches on held-out shapes, {result['device']} ({result['platform']})", "",
             f"method: {result['method']}", f"limits (log2): {json.dumps(result['limits'])}", ""]
    lines += ["## Speed relative to Helion's default config (above 1: faster), per PRESETDB_ON_FAR policy", "",
              "| policy | geomean | worst | shapes below 0.95 | geomean vs PyTorch |", "|---|---|---|---|---|"]
    for p in POLICIES:
        ratios = [r["vs_default"][p] for r in rows if r["vs_default"][p]]
        torch_ratios = [r["vs_torch"][p] for r in rows if r["vs_torch"][p]]
        below = sum(1 for x in ratios if x < TARGET)
        lines.append(f"| {p} | {geomean(ratios):.3f} | {min(ratios, default=float('nan')):.3f} | {below} of {len(ratios)} | {geomean(torch_ratios):.3f} |")
    lines += ["", "| kernel | key | served key | match | far | Helion default ms | PyTorch ms | nearest | default | rerank | refine s |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        far = ", ".join(f"{k} {v[0]:.2f}>{v[1]:.2f}" for k, v in r["far_fields"].items()) or ("miss" if r["match"] == "miss" else "")
        lines.append(
            f"| {r['kernel']} | {json.dumps(r['key'])} | {r['served_key']} | {r['match']} | {far} | "
            f"{_ms(r['default_ms'])} | {_ms(r['torch_ms'])} | "
            + " | ".join(f"{r['vs_default'][p]:.2f}" if r['vs_default'][p] else "-" for p in POLICIES)
            + f" | {r['refine_seconds']:.1f} |")
    slow_near = [r for r in rows if not r["far"] and r["vs_default"]["nearest"] and r["vs_default"]["nearest"] < TARGET]
    if slow_near:
        lines += ["", "Matches within the limits that ran below 0.95x Helion's default (candidates for tighter limits):"]
        lines += [f"- {r['kernel']} {json.dumps(r['key'])}: {r['vs_default']['nearest']:.2f}x, distances "
                  f"{json.dumps({k: round(v, 2) for k, v in r['distances'].items()})}" for r in slow_near]
    secs = [r["refine_seconds"] for r in rows]
    if secs:
        lines += ["", (f"refine per shape: median {statistics.median(secs):.1f} s, max {max(secs):.1f} s over {len(secs)} shapes "
                  f"(k={result['k']} stored configs + Helion's default, compiles included)")]
    for a in result["autotune"]:
        if "error" in a:
            lines.append(f"- quick autotune {a['kernel']} {json.dumps(a['key'])}: failed: {a['error']}")
        else:
            lines.append(f"- quick autotune {a['kernel']} {json.dumps(a['key'])}: {a['autotune_seconds']} s (budget {a['budget_seconds']} s) "
                         f"-> {_ms(a['autotuned_ms'])} ms; refine {a['refine_seconds']} s -> {_ms(a['rerank_ms'])} ms; Helion default {_ms(a['default_ms'])} ms")
    errors = [r for r in result["rows"] if "error" in r]
    if errors:
        lines += ["", f"failed shapes: {len(errors)}"] + [f"- {r['kernel']} {json.dumps(r['key'])}: {r['error']}" for r in errors]
    if result.get("lost_context"):
        lines += ["", "CUDA context lost after (each rerun in a fresh process with --resume): " + "; ".join(result["lost_context"])]
    if result["skipped"]:
        lines += ["", f"skipped (deadline): {len(result['skipped'])}: " + "; ".join(result["skipped"])]
    lines += ["", f"wall: {result.get('wall_seconds')} s"]
    (out / "coverage_eval.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
