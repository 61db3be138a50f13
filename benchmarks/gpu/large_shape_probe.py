"""Where the time goes on one held-out shape whose coverage evaluation never finished
(issue [coverage]: softmax over 256,000 columns x 4,096 rows outlasted two GPU call steps).
Times, one step at a time and each written to OUT/probe.json as soon as it ends:
Helion's default config for the shape's own size class (compile, then CUDA-graph replay),
the PyTorch baseline, and the config the default db's nearest key stores (what
PRESETDB_ON_FAR=nearest would serve). A step still running when the outer `timeout` ends
the process is the one that takes the time.

    python3 -P benchmarks/gpu/large_shape_probe.py OUT_DIR softmax '{"dtype": "bfloat16", "n": 256000, "num_rows": 4096}'

A fourth argument `cpu` is a smoke run in the Triton interpreter (one untimed-ish call per
step instead of a CUDA-graph replay).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any


def main() -> int:
    out, kernel_name, key = Path(sys.argv[1]), sys.argv[2], json.loads(sys.argv[3])
    device = sys.argv[4] if len(sys.argv) > 4 else "cuda"
    out.mkdir(parents=True, exist_ok=True)
    import os

    import helion
    import torch

    import presetdb.kernels  # noqa: F401  (registers the example kernels)
    from presetdb.helion.registry import get_kernel
    from presetdb.helion.rerank import graph_timer
    from presetdb.runtime.platforms import derive_platform_name

    name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    os.environ["PRESETDB_PLATFORM"] = derive_platform_name(name) if device == "cuda" else "cpu"
    from presetdb.runtime.picker import get_picker

    def timer(fn: Any) -> float:
        if device == "cuda":
            return graph_timer(fn)
        t = time.perf_counter()
        fn()
        return (time.perf_counter() - t) * 1e3

    started = time.perf_counter()
    doc: dict[str, Any] = {"device": name, "torch": torch.__version__,
                           "kernel": kernel_name, "key": key, "steps": []}

    def step(name: str, **fields: Any) -> None:
        doc["steps"].append({"step": name, "at_s": round(time.perf_counter() - started, 1), **fields})
        (out / "probe.json").write_text(json.dumps(doc, indent=1) + "\n")
        print(json.dumps(doc["steps"][-1])[:400], flush=True)

    rk = get_kernel(kernel_name)
    kargs = tuple(rk.adapt_args(tuple(rk.example_inputs(key, device)))[0])
    bound = rk.bound_for(kargs)
    default = dict(bound.config_spec.default_config().config)
    step("bind", default_config=default)
    t0 = time.perf_counter()
    fn = bound.compile_config(helion.Config(**default))
    step("compile default", seconds=round(time.perf_counter() - t0, 1))
    step("time default", ms=timer(lambda: fn(*kargs)))
    baseline = rk.baseline
    step("time PyTorch", ms=timer(lambda: baseline(*kargs)))
    choice = get_picker().resolve(kernel_name, rk.key_spec, tuple(key[n] for n in rk.key_spec.names))
    if choice is None:
        step("nearest", note="nothing matched")
        return 0
    nearest = rk.validate_config(dict(choice.config), key)
    step("nearest config", served_key=choice.preset.shape_key, far=choice.far, config=nearest)
    t0 = time.perf_counter()
    fn_near = bound.compile_config(helion.Config(**nearest))
    step("compile nearest", seconds=round(time.perf_counter() - t0, 1))
    step("time nearest", ms=timer(lambda: fn_near(*kargs)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
