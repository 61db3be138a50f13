"""The v2 presets as served, on held-out real-model shapes (issue [seed-v2], item 4).

For every held-out shape (benchmarks/shapes/heldout_v2.json: chosen before any v2 tuning,
never tuned or refined), three things are timed side by side in one process:

- served:  ``torch.ops.presetdb.<kernel>`` with PRESETDB_PATH=--db, the GPU's own platform
  as a server resolves it and the default miss/far policies (a far match or a miss runs
  Helion's default config); the picker's match kind, matched key and distances are kept;
- default: Helion's default config for the shape (compiled from the kernel's ConfigSpec);
- torch:   the PyTorch baseline a user would call (``rk.baseline``: cuBLAS for matmul).

Timing: `presetdb.helion.rerank.graph_timer` (triton.testing.do_bench_cudagraph median:
CUDA-graph replay, warm L2, no host time), `--rounds` interleaved rounds (the order rotates
each round), the median of the rounds. The served output is checked against the float32
reference (`rk.reference`). End to end (`seed_eval_v2_e2e.py`): a Llama-3-8B decoder MLP
block and a logits softmax step through torch.ops.presetdb vs the same in PyTorch, each
captured in a CUDA graph, at token counts 1..4096.

    python3 -P benchmarks/gpu/seed_eval_v2.py --out $OUT/h100 --part 1/3 --sections heldout
    python3 -P benchmarks/gpu/seed_eval_v2.py --out $OUT/h100 --part 2/3 --sections heldout \
        --resume benchmarks/results/nvidia_h100/seed_eval_v2/seed_eval_v2.json

Each call measures one part of the held-out shapes (`--part i/n`: every n-th shape of each
kernel, from the i-th, of the `--per-kernel` evenly spaced ones; 0 = all) and stops starting
work after `--deadline` seconds (skipped shapes are listed). `--resume FILE` keeps the rows
of earlier calls (same device and db), so the last call's seed_eval_v2.json holds them all
and its targets cover every shape measured. Writes seed_eval_v2.json and seed_eval_v2.md;
the json also before and after every shape, so a call cut short keeps what it measured. A
shape still running after `--shape-hard-limit` seconds ends the process (exit 4), the file
naming it; `--resume` of that file records it as failed ("did not finish") and goes on.

`--device cpu`: a smoke run in the Triton interpreter (tiny shapes, wall-clock timing;
its figures mean nothing, but every code path runs).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # sibling scripts (python -P drops it)
import seed_eval_v2_e2e as e2e
from coverage_eval import hard_limit, in_progress, shape_id, spaced, unfinished
from seed_eval_v2_report import KERNELS, MATMUL_MIN_M, summarize, write

from presetdb._util import HUNG, write_atomic

ROOT = Path(__file__).resolve().parents[2]
SECTIONS = ("heldout", "e2e")
SHAPE_RESERVE_S = 25.0  # do not start a shape with less time than this left


def parse_part(text: str) -> tuple[int, int]:
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--part {text!r}: write it as i/n, e.g. 1/3") from None
    if not 1 <= i <= n:
        raise argparse.ArgumentTypeError(f"--part {text!r}: need 1 <= i <= n")
    return i, n


def options(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", type=Path, default=None, help="the presets served (default: the embedded default db)")
    parser.add_argument("--shapes", type=Path, default=ROOT / "benchmarks/shapes/heldout_v2.json")
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "out")))
    parser.add_argument("--deadline", type=float, default=330.0, help="seconds; no work starts after it")
    parser.add_argument("--shape-hard-limit", type=float, default=180.0,
                        help=f"seconds after which a shape still running ends the process (exit {HUNG}); "
                             "--resume of its results file records that shape as failed and goes on")
    parser.add_argument("--per-kernel", type=int, default=0, help="evenly spaced held-out shapes per kernel (0: all)")
    parser.add_argument("--part", type=parse_part, default=(1, 1), help="i/n: this call's share of the shapes")
    parser.add_argument("--sections", default=",".join(SECTIONS), help="heldout,e2e (comma-separated)")
    parser.add_argument("--resume", type=Path, action="append", default=[], help="earlier seed_eval_v2.json to keep")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--platform", default=None, help="default: the GPU's own, as a server resolves it")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds per shape")
    parser.add_argument("--rep", type=int, default=25, help="ms of CUDA-graph replay per timing")
    parser.add_argument("--e2e-model", default="llama-3-8b", help="catalog model of the end-to-end blocks")
    parser.add_argument("--e2e-tokens", default="1,4,16,64,256,1024,4096")
    parser.add_argument("--e2e-dims", default=None, help="hidden,intermediate,vocab instead of the model's (smoke runs)")
    opts = parser.parse_args(argv)
    opts.sections = [s for s in opts.sections.split(",") if s]
    unknown = sorted(set(opts.sections) - set(SECTIONS))
    if unknown:
        parser.error(f"--sections: unknown {unknown}; use {','.join(SECTIONS)}")
    return opts


def setup_env(opts: argparse.Namespace, tmp: Path) -> None:
    """Serve as a fresh server would: the given db, an empty overlay, default policies."""
    if opts.device == "cpu":
        os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported
    os.environ.update(
        PRESETDB_PATH=str(opts.db.resolve()), PRESETDB_USER_DB=str(tmp / "overlay.db"),
        PRESETDB_CACHE_DIR=str(tmp / "cache"),
    )
    for name in ("PRESETDB_ON_MISS", "PRESETDB_ON_FAR"):
        os.environ.pop(name, None)
    if opts.platform:
        os.environ["PRESETDB_PLATFORM"] = opts.platform
    else:
        os.environ.pop("PRESETDB_PLATFORM", None)


def make_timer(opts: argparse.Namespace) -> Any:
    if opts.device == "cuda":
        from presetdb.helion.rerank import graph_timer

        return functools.partial(graph_timer, rep=opts.rep)
    from presetdb.offline.tune import cpu_timer

    return cpu_timer(1)


def interleaved(timer: Any, fns: dict[str, Any], rounds: int) -> dict[str, list[float]]:
    """`rounds` timings of each function, round robin; the order rotates every round so no
    function always runs right after another."""
    names = list(fns)
    samples: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:
            samples[name].append(timer(fns[name]))
    return samples


def measure_shape(name: str, key: dict[str, Any], opts: argparse.Namespace, timer: Any) -> dict[str, Any]:
    """One held-out shape: what is served (and why), its time next to Helion's default
    config and PyTorch, and the served output checked against the float32 reference."""
    import torch

    from presetdb.errors import PresetDBError
    from presetdb.helion.registry import get_kernel
    from presetdb.helion.rerank import check_close

    rk = get_kernel(name)
    op = getattr(torch.ops.presetdb, name)
    torch.manual_seed(0)
    args = tuple(rk.example_inputs(key, device=opts.device))
    kargs = tuple(rk.adapt_args(args)[0])
    res = rk.resolution(*args)  # what the call resolves to, no bookkeeping
    far = res.far
    shown = res.choice or far  # the stored key the picker matched, served or not
    t0 = time.perf_counter()
    out = op(*args)
    if opts.device == "cuda":
        torch.cuda.synchronize()
    first_call_s = time.perf_counter() - t0
    served_choice = rk.last_choice
    try:
        check_close(out, rk.reference(*args), key, error=PresetDBError)
        check = "ok"
    except PresetDBError as exc:
        check = f"wrong: {exc}"[:400]
    bound = rk.bound_for(tuple(kargs))  # Helion's default for this shape's size class
    default_fn = bound.compile_config(bound.config_spec.default_config(), allow_print=False)
    samples = interleaved(timer, {
        "served": lambda: op(*args),
        "default": lambda: default_fn(*kargs),
        "torch": lambda: rk.baseline(*args),
    }, opts.rounds)
    ms = {k: statistics.median(v) for k, v in samples.items()}
    return {
        "kernel": name, "key": key,
        "match": "miss" if shown is None else "far" if far is not None else shown.kind,
        "match_rule": None if shown is None else shown.kind,  # how the picker matched (exact, nearest, ceil...)
        "far": far is not None,
        "served": "stored" if res.choice is not None else "helion-default",
        "served_key": None if shown is None else shown.preset.shape_key,
        "served_platform": None if shown is None else shown.platform,
        "layer": None if shown is None else shown.layer,
        "distances": {} if shown is None else shown.distances,
        "far_fields": {} if shown is None else {k: list(v) for k, v in shown.far_fields.items()},
        "served_choice_matches": (served_choice is None) == (res.choice is None),
        "check": check,
        "first_call_s": round(first_call_s, 3),
        "served_ms": ms["served"], "default_ms": ms["default"], "torch_ms": ms["torch"],
        "vs_torch": ms["torch"] / ms["served"], "vs_default": ms["default"] / ms["served"],
        "samples_ms": samples,
    }


def load_resumed(paths: list[Path], device: str, digest: str) -> dict[str, Any]:
    """Rows (by kernel+key), end-to-end rows and call records of earlier calls; they must
    come from the same device and db, or their ratios would not compare."""
    rows: dict[str, dict[str, Any]] = {}
    e2e: dict[str, Any] = {}
    calls: list[dict[str, Any]] = []
    for path in paths:
        try:
            earlier = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise SystemExit(f"--resume {path}: cannot read it ({exc}); pass a seed_eval_v2.json") from None
        for field, mine in (("device", device), ("db_digest", digest)):
            if earlier.get(field) != mine:
                raise SystemExit(f"--resume {path}: {field} is {earlier.get(field)!r}, this run's is {mine!r}; "
                                 "results of another device or db cannot be combined")
        for row in earlier.get("rows", []):
            rows[shape_id(row["kernel"], row["key"])] = row
        note = earlier.get("in_progress")
        if note and note["shape"] not in rows:
            rows[note["shape"]] = unfinished(note)
        if earlier.get("e2e", {}).get("rows"):
            e2e = earlier["e2e"]
        calls += [c for c in earlier.get("calls", []) if c not in calls]
    return {"rows": rows, "e2e": e2e, "calls": calls}


def save_progress(result: dict[str, Any], rows: dict[str, dict[str, Any]], out: Path,
                  in_progress: dict[str, Any] | None = None) -> None:
    """The results so far (rows; no summary yet), rewritten before and after every shape, so
    that a call cut short keeps its finished shapes for --resume and names the one it was in."""
    doc = {**result, "rows": list(rows.values()), **({"in_progress": in_progress} if in_progress else {})}
    write_atomic(out / "seed_eval_v2.json", json.dumps(doc, indent=1, default=str) + "\n")


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("torch", "triton", "helion", "presetdb"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


def main(argv: list[str] | None = None) -> int:
    opts = options(argv)
    started = time.perf_counter()
    if opts.db is None:
        from presetdb.store.default_db import default_db_path

        opts.db = default_db_path()
    tmp = Path(tempfile.mkdtemp(prefix="seed-eval-v2-"))
    setup_env(opts, tmp)
    import torch

    import presetdb.kernels  # noqa: F401  (registers the kernels)
    from presetdb.errors import PresetMissWarning
    from presetdb.helion.hooks import FarMatchWarning
    from presetdb.helion.registry import get_kernel
    from presetdb.offline.build import content_digest
    from presetdb.runtime.picker import get_picker

    for quiet in (FarMatchWarning, PresetMissWarning):  # each row records its match; no warning per key
        warnings.filterwarnings("ignore", category=quiet)
    device = torch.cuda.get_device_name() if opts.device == "cuda" else "cpu (Triton interpreter: a smoke run)"
    digest = content_digest(opts.db)
    resumed = load_resumed(opts.resume, device, digest)
    kept, e2e_kept = resumed["rows"], resumed["e2e"]
    picker = get_picker()
    heldout = json.loads(opts.shapes.read_text())
    chosen = {k: [heldout[k][i] for i in spaced(heldout.get(k, []), opts.per_kernel or len(heldout.get(k, [])))]
              for k in KERNELS}
    i, n = opts.part
    todo = {k: keys[i - 1 :: n] for k, keys in chosen.items()} if "heldout" in opts.sections else {k: [] for k in KERNELS}
    timer = make_timer(opts)
    result: dict[str, Any] = {
        "device": device, "device_kind": opts.device, **versions(),
        "platform": picker.platform, "platform_how": picker.info.how, "platform_chain": list(picker.chain),
        "db": str(opts.db), "db_digest": digest,
        "shapes_file": str(opts.shapes.relative_to(ROOT) if opts.shapes.is_relative_to(ROOT) else opts.shapes),
        "heldout_total": {k: len(heldout.get(k, [])) for k in KERNELS},
        "heldout_matmul_m16": sum(1 for key in heldout.get("matmul", []) if key.get("m", 0) >= MATMUL_MIN_M),
        "per_kernel": opts.per_kernel, "chosen": chosen,
        "e2e_tokens": [int(t) for t in opts.e2e_tokens.split(",")],
        "limits": {k: picker.limits(k, get_kernel(k).key_spec) for k in KERNELS},
        "max_distance_setting": os.environ.get("PRESETDB_MAX_DISTANCE", ""),
        "method": (
            f"served = torch.ops.presetdb.<kernel> (PRESETDB_PATH = the db, platform {picker.platform} "
            f"({picker.info.how}), default miss and far policies); default = Helion's default config compiled "
            "for the shape; torch = rk.baseline. "
            + (f"triton.testing.do_bench_cudagraph median (rep {opts.rep} ms, CUDA-graph replay: warm L2, "
               f"no host time) after one warm-up call; {opts.rounds} interleaved rounds, median of the rounds."
               if opts.device == "cuda" else
               f"CPU smoke run: wall-clock median, {opts.rounds} interleaved rounds (meaningless figures).")
            + " Served output checked against the float32 reference (rk.reference)."
        ),
        "calls": resumed["calls"] + [{"part": f"{i}/{n}", "sections": opts.sections, "deadline_s": opts.deadline}],
        "skipped": [],
    }

    def left() -> float:
        return opts.deadline - (time.perf_counter() - started)

    rows = dict(kept)
    e2e_reserve = e2e.RESERVE_S if "e2e" in opts.sections and opts.device == "cuda" else 0.0
    for name in KERNELS:
        for key in todo[name]:
            ident = shape_id(name, key)
            if ident in kept:
                continue  # measured by an earlier call
            if left() < SHAPE_RESERVE_S + e2e_reserve:
                result["skipped"].append(ident)
                continue
            save_progress(result, rows, opts.out, in_progress(name, key, opts.shape_hard_limit))
            try:
                with hard_limit(opts.shape_hard_limit, ident):
                    row = measure_shape(name, key, opts, timer)
            except Exception as exc:  # noqa: BLE001  (one shape's failure is recorded, not fatal)
                row = {"kernel": name, "key": key, "error": f"{type(exc).__name__}: {exc}"[:500]}
            rows[ident] = row
            save_progress(result, rows, opts.out)
            print(f"{ident}: " + (row.get("error") or f"{row['match']} ({row['served']}) "
                                  f"vs torch {row['vs_torch']:.2f} vs default {row['vs_default']:.2f} "
                                  f"check {row['check'][:40]}"), flush=True)
    # chosen shapes no call has measured yet (skipped at a deadline, or in a part not run): run
    # again with --resume of this file (the same --part, or 1/1 for all of them) to add them
    result["not_measured"] = [shape_id(k, key) for k in KERNELS for key in chosen[k] if shape_id(k, key) not in rows]
    result["rows"] = sorted(rows.values(), key=lambda r: (KERNELS.index(r["kernel"]), json.dumps(r["key"], sort_keys=True)))
    if "e2e" in opts.sections:
        if left() < 20:
            result["e2e"] = {**e2e_kept, "note": "not run: deadline" + (" (rows kept from --resume)" if e2e_kept else "")}
        else:
            result["e2e"] = e2e.run(opts, timer, deadline=started + opts.deadline)
    else:
        result["e2e"] = {**e2e_kept, "note": "kept from --resume" if e2e_kept else "not run (--sections)"}
    result["summary"] = summarize(result)
    result["wall_seconds"] = round(time.perf_counter() - started, 1)
    write(result, opts.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
