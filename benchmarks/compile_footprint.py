"""What a persistent reduction's register footprint costs Triton to compile, on a CPU.

A GPU refine of softmax (n 152,064 x 2,048 rows) never finished its third key: one of the
stored configs it timed, tuned on shorter rows, holds a persistent reduction of 262,144
columns. Triton compiles for a GPU without one (its ptxas ships in the wheel), so this
script measures it here: for the k nearest stored configs of a softmax key (what
``presetdb refine`` times) and Helion's default, as stored and as fitted
(`presetdb.helion.footprint`), Helion writes the Triton kernel and Triton compiles it for
sm_90 in a fresh process with an empty cache, under a time limit.

    python3 benchmarks/compile_footprint.py --db DB --n 152064 --rows 2048 \
        --out benchmarks/results/cpu/compile_footprint/softmax_n152064.json

Seconds are this machine's CPU (one compile at a time), not the GPU host's; tensor
descriptors are written as pointers on a CPU, so a stored config that uses them is
compiled in its pointer form.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ARCH = 90  # sm_90: H100 and H200
COMPILED = "COMPILED "


def compile_one(path: Path, columns: int) -> None:
    """Child process: compile the kernel in `path` for sm_90; print its seconds."""
    import importlib.util

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    source = path.read_text()
    spec = importlib.util.spec_from_file_location("kernel", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    fn = module._helion_softmax
    signature: dict[str, str] = {}
    constants: dict[tuple[int, ...], int] = {}
    for i, name in enumerate(fn.arg_names):
        if name in ("x", "out"):
            signature[name] = "*bf16"
        elif fn.params[i].is_constexpr:
            signature[name] = "constexpr"
            host = re.search(rf"^\s+{name} = (\d+)$", source, re.MULTILINE)  # a loop block, set on the host
            constants[(i,)] = int(host.group(1)) if host else triton.next_power_of_2(columns)
        else:
            signature[name] = "i32"
    options = {k: int(re.search(rf"{k}=(\d+)", source).group(1)) for k in ("num_warps", "num_stages")}  # type: ignore[union-attr]
    started = time.perf_counter()
    triton.compile(ASTSource(fn=fn, signature=signature, constexprs=constants), target=GPUTarget("cuda", ARCH, 32), options=options)
    print(COMPILED + json.dumps({"seconds": round(time.perf_counter() - started, 2)}))


def timed_compile(path: Path, columns: int, limit: float) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"
    with tempfile.TemporaryDirectory() as cache:
        env["TRITON_CACHE_DIR"] = cache  # nothing reused from an earlier compile
        try:
            done = subprocess.run(
                [sys.executable, __file__, "--compile", str(path), "--n", str(columns)],
                env=env, capture_output=True, text=True, timeout=limit, check=False,
            )
        except subprocess.TimeoutExpired:
            return {"seconds": None, "outcome": f"not done in {limit:.0f} s (killed)"}
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith(COMPILED)), None)
    if line is None:
        return {"seconds": None, "outcome": "failed: " + done.stderr.strip().splitlines()[-1][:300]}
    return {**json.loads(line[len(COMPILED):]), "outcome": "compiled"}


def measure(args: argparse.Namespace) -> dict[str, Any]:
    os.environ["TRITON_INTERPRET"] = "1"  # Helion binds and writes code on this CPU
    import helion
    import torch

    from presetdb.helion.autotune import plain_kernel
    from presetdb.helion.footprint import values_per_thread
    from presetdb.helion.hooks import split_device_keys
    from presetdb.helion.registry import get_kernel, load_kernel_modules
    from presetdb.helion.rerank import DEFAULT_ORIGIN, _normalized, fitted
    from presetdb.offline.refine import StoredConfigs

    load_kernel_modules()
    rk = get_kernel("softmax")
    key = {"dtype": "bfloat16", "n": args.n, "num_rows": args.rows}
    x = torch.randn(min(args.rows, 4), args.n, dtype=torch.bfloat16)  # same size class of columns
    bound = plain_kernel(rk, effort="quick", seed=None, budget_seconds=None).bind((x,))
    stored = StoredConfigs.load(args.db, "softmax", rk.key_spec, args.platform)
    candidates = [(DEFAULT_ORIGIN, dict(bound.config_spec.default_config()))]
    candidates += [(c.origin, c.config) for c in stored.nearest(key, args.k)]
    work = Path(tempfile.mkdtemp(prefix="compile_footprint_"))
    compiled: dict[str, dict[str, Any]] = {}  # kernel source -> result: one compile per distinct source
    rows = []
    for i, (origin, config) in enumerate(candidates):
        row: dict[str, Any] = {"origin": origin}
        for form, (made, note) in (("stored", (_normalized(bound, config), "")), ("fitted", fitted(bound, config))):
            portable, _ = split_device_keys(bound.config_spec, made)
            source = bound.to_triton_code(helion.Config(**portable))
            if source not in compiled:
                path = work / f"k{i}_{form}.py"
                path.write_text(source)
                compiled[source] = timed_compile(path, args.n, args.limit)
                print(f"{origin} [{form}]: {compiled[source]}", file=sys.stderr)
            row[form] = {
                "block_sizes": made["block_sizes"], "num_warps": made["num_warps"], "num_stages": made["num_stages"],
                "reduction_loops": made["reduction_loops"], "values_per_thread": values_per_thread(bound.config_spec, made),
                **({"fit": note} if note else {}), **compiled[source],
            }
        rows.append(row)
    import importlib.metadata

    import triton

    return {
        "what": "Triton compile seconds for sm_90 of Helion's softmax kernel, per candidate config as stored and as fitted",
        "key": key, "db": str(args.db), "platform": args.platform, "k": args.k, "limit_s": args.limit,
        "machine": {"cpu": _cpu(), "python": platform.python_version(), "triton": triton.__version__,
                    "helion": importlib.metadata.version("helion"), "torch": torch.__version__},
        "candidates": rows,
    }


def _cpu() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor()
    found = re.search(r"model name\s*:\s*(.+)", text)
    return f"{found.group(1) if found else platform.processor()}, {os.cpu_count()} cores"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", type=Path, help="the db whose stored configs are the candidates")
    parser.add_argument("--platform", default="nvidia_h100")
    parser.add_argument("--n", type=int, default=152064, help="softmax columns")
    parser.add_argument("--rows", type=int, default=2048)
    parser.add_argument("--k", type=int, default=8, help="stored configs (refine's --k)")
    parser.add_argument("--limit", type=float, default=300.0, help="seconds a compile may take")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--compile", type=Path, help=argparse.SUPPRESS)  # the child process
    args = parser.parse_args()
    if args.compile is not None:
        compile_one(args.compile, args.n)
        return
    if args.db is None or args.out is None:
        parser.error("--db and --out are required")
    result = measure(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(args.out)


if __name__ == "__main__":
    main()
