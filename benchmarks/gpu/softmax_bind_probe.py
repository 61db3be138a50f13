"""Why two held-out softmax shapes fail on the GPU (issue [coverage]): bind the example
softmax (Helion, dynamic shapes) on those shapes and on one that works, compile Helion's
default config, and write each outcome with its full traceback to OUT/softmax_probe.json.

    python3 -P benchmarks/gpu/softmax_bind_probe.py OUT_DIR [DEVICE]

DEVICE defaults to cuda; cpu (TRITON_INTERPRET=1) is a smoke run of the script.
"""

from __future__ import annotations

import json
import sys
import time
import traceback
from pathlib import Path

SHAPES = [(4096, 98304), (128256, 1000), (32064, 100)]  # (n, rows): the last one worked


def main() -> int:
    out = Path(sys.argv[1])
    device = sys.argv[2] if len(sys.argv) > 2 else "cuda"
    out.mkdir(parents=True, exist_ok=True)
    import helion
    import torch

    import presetdb.kernels  # noqa: F401  (registers softmax)
    from presetdb.helion.registry import get_kernel

    rk = get_kernel("softmax")
    rows = []
    for n, m in SHAPES:
        key = {"dtype": "bfloat16", "n": n, "num_rows": m}
        row: dict = {"key": key}
        t0 = time.perf_counter()
        try:
            args = tuple(rk.adapt_args(tuple(rk.example_inputs(key, device)))[0])
            bound = rk.shape_kernel.bind(args)
            row["bind"] = "ok"
            cfg = bound.config_spec.default_config()
            row["default_config"] = dict(cfg.config)
            bound.compile_config(helion.Config(**dict(cfg.config)))
            row["compile"] = "ok"
        except Exception as exc:  # noqa: BLE001  (the point is the traceback)
            row["error"] = f"{type(exc).__name__}: {exc}"[:3000]
            row["traceback"] = traceback.format_exc()[-12000:]
        row["seconds"] = round(time.perf_counter() - t0, 2)
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "traceback"})[:600], flush=True)
    name = torch.cuda.get_device_name() if device == "cuda" else "cpu (smoke run)"
    doc = {"device": name, "torch": torch.__version__, "rows": rows}
    (out / "softmax_probe.json").write_text(json.dumps(doc, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
