"""First-call latency in a fresh process: what a serving process pays before its first
kernel call returns, with a fresh user cache (no overlay, nothing cached).

Each sample is a new Python process that imports presetdb's kernels and times its first
and second call of torch.ops.presetdb.rms_norm (a key the embedded default db does not hold
on this machine's platform, so the miss policy runs). Only the public API is used, so the
same script measures an older checkout (`--pythonpath` puts it first on sys.path):

    python benchmarks/bench_first_call.py --out benchmarks/results/cpu/first_call
    python benchmarks/bench_first_call.py --pythonpath /tmp/old-checkout --label before ...

On a machine without a GPU the kernels run in the Triton interpreter (set here).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = r"""
import json, sys, time, warnings
t0 = time.perf_counter()
import torch
t1 = time.perf_counter()
import presetdb.kernels
t2 = time.perf_counter()
device = "cuda" if torch.cuda.is_available() else "cpu"
x = torch.randn(8, 4096, device=device, dtype=torch.bfloat16)
w = torch.randn(4096, device=device, dtype=torch.bfloat16)
warnings.simplefilter("ignore")
t3 = time.perf_counter()
torch.ops.presetdb.rms_norm(x, w, 1e-6)
if device == "cuda":
    torch.cuda.synchronize()
t4 = time.perf_counter()
torch.ops.presetdb.rms_norm(x, w, 1e-6)
if device == "cuda":
    torch.cuda.synchronize()
t5 = time.perf_counter()
import presetdb
print(json.dumps({"import_torch_s": t1 - t0, "import_kernels_s": t2 - t1, "first_call_s": t4 - t3,
                  "second_call_s": t5 - t4, "presetdb_file": presetdb.__file__, "device": device}))
"""


def sample(pythonpath: str | None) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="presetdb-first-call-") as tmp:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PRESETDB_")}
        env.update(PRESETDB_CACHE_DIR=str(Path(tmp) / "cache"), PRESETDB_USER_DB=str(Path(tmp) / "overlay.db"))
        env.setdefault("TRITON_INTERPRET", "0" if _has_cuda() else "1")
        if pythonpath:
            env["PYTHONPATH"] = str(Path(pythonpath).resolve()) + os.pathsep + env.get("PYTHONPATH", "")
        # cwd: a temp dir, so `python -c` never imports presetdb from a checkout by accident
        out = subprocess.run(
            [sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, check=True, cwd=tmp
        )
        return json.loads(out.stdout.strip().splitlines()[-1])


def _has_cuda() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except ImportError:
        return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--label", default="after")
    parser.add_argument("--pythonpath", default=None, help="a checkout to measure instead of the installed one")
    parser.add_argument("--samples", type=int, default=5)
    args = parser.parse_args(argv)
    runs = [sample(args.pythonpath) for _ in range(args.samples)]
    keys = ("import_kernels_s", "first_call_s", "second_call_s")
    medians = {k: statistics.median(r[k] for r in runs) for k in keys}
    report = {
        "benchmark": "bench_first_call",
        "label": args.label,
        "presetdb_file": runs[0]["presetdb_file"],
        "device": runs[0]["device"],
        "samples": runs,
        "median_s": medians,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"first_call_{args.label}.json").write_text(json.dumps(report, indent=2) + "\n")
    text = "\n".join(f"{args.label:<8}{k:<20}{v:>10.3f} s" for k, v in medians.items())
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
