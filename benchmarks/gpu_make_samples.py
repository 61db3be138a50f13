"""Make real sample files on a GPU for tests/fixtures/ (run by hand on a GPU machine).

Runs real Helion 1.5 autotuning, kept short (quick effort, a generation cap and a time
budget per search), on the registered ``rms_norm`` kernel:

1. plain Helion with its LocalAutotuneCache -> a real ``<hash>.best_config``;
2. Helion AOT collect mode (``HELION_AOT_MODE=collect``) over two shapes -> a real
   ``tuned_configs_<hardware_id>.json``;
3. ``presetdb tune`` (`presetdb.offline.tune.Tuner`, Helion's search) over two shapes -> a real
   presetdb-results/1 file;

then imports each file into a fresh database (so configs are validated against the
GPU's ConfigSpec) and writes ``summary.json``. Every file lands in ``$OUT`` (or --out):

    python benchmarks/gpu_make_samples.py --budget 45
    # then: mkdir -p tests/fixtures/gpu && cp -r $OUT/* tests/fixtures/gpu/
    # (tests/test_import_gpu_samples.py imports whatever is there)

Steps fail independently; summary.json says which worked.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

KEY_CACHE = {"dtype": "bfloat16", "hidden": 4096, "num_tokens": 64}
KEYS_AOT = [
    {"dtype": "bfloat16", "hidden": 4096, "num_tokens": 16},
    {"dtype": "bfloat16", "hidden": 4096, "num_tokens": 128},
]
KEYS_TUNE = [
    {"dtype": "bfloat16", "hidden": 4096, "num_tokens": 1},
    {"dtype": "bfloat16", "hidden": 4096, "num_tokens": 64},
]


def step(summary: dict[str, Any], name: str, fn: Any) -> Any:
    started = time.perf_counter()
    try:
        result = fn()
        summary[name] = {"ok": True, "seconds": round(time.perf_counter() - started, 1), "result": result}
        return result
    except Exception as exc:  # noqa: BLE001  (one failed step must not lose the others)
        summary[name] = {
            "ok": False,
            "seconds": round(time.perf_counter() - started, 1),
            "error": f"{type(exc).__name__}: {exc}",
            "traceback": traceback.format_exc()[-4000:],
        }
        print(f"[{name}] failed: {exc}", file=sys.stderr)
        return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "gpu_samples")))
    parser.add_argument("--budget", type=int, default=45, help="seconds per Helion search")
    parser.add_argument("--generations", type=int, default=2, help="HELION_AUTOTUNE_MAX_GENERATIONS")
    args = parser.parse_args()
    out: Path = args.out.resolve()
    # Caches, compiled kernels and check dbs stay out of $OUT (only the samples return).
    work = Path(tempfile.mkdtemp(prefix="presetdb-samples-"))
    (out / "helion").mkdir(parents=True, exist_ok=True)
    # Before Helion is imported: where its caches go.
    os.environ["HELION_CACHE_DIR"] = str(work / "helion_cache")
    os.environ["HELION_AOT_DATA_DIR"] = str(work / "aot")
    os.environ["HELION_AUTOTUNE_MAX_GENERATIONS"] = str(args.generations)
    os.environ["HELION_AUTOTUNE_BUDGET_SECONDS"] = str(args.budget)

    import helion
    import torch

    import presetdb.kernels  # noqa: F401
    from presetdb.helion.registry import get_kernel

    assert torch.cuda.is_available(), "run this on a GPU machine"
    rk = get_kernel("rms_norm")
    summary: dict[str, Any] = {
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "helion": helion.__version__ if hasattr(helion, "__version__") else None,
        "budget_seconds": args.budget,
        "max_generations": args.generations,
    }

    def kernel_args(key: dict[str, Any]) -> tuple[Any, ...]:
        kargs, _ = rk.adapt_args(rk.example_inputs(key, "cuda"))
        return tuple(kargs)

    def local_cache() -> list[str]:
        kernel = helion.kernel(
            rk.body,
            static_shapes=False,
            autotune_effort="quick",
            autotune_budget_seconds=args.budget,
            autotune_max_generations=args.generations,
        )
        kernel(*kernel_args(KEY_CACHE))
        torch.cuda.synchronize()
        copied = []
        for path in (work / "helion_cache").glob("*.best_config"):
            shutil.copy(path, out / "helion" / path.name)
            copied.append(path.name)
        (out / "helion" / "best_config_key.json").write_text(json.dumps(KEY_CACHE) + "\n")
        return copied

    def aot_collect() -> list[str]:
        os.environ["HELION_AOT_MODE"] = "collect"
        try:
            # Static shapes: with dynamic shapes every size shares one specialization,
            # and collect mode would tune only the first.
            kernel = helion.kernel(
                rk.body,
                static_shapes=True,
                autotune_effort="quick",
                autotune_cache="AOTAutotuneCache",
                autotune_budget_seconds=args.budget,
                autotune_max_generations=args.generations,
            )
            for key in KEYS_AOT:
                kernel(*kernel_args(key))
            torch.cuda.synchronize()
        finally:
            os.environ.pop("HELION_AOT_MODE", None)
        copied = []
        for path in (work / "aot").glob("tuned_configs_*.json"):
            shutil.copy(path, out / "helion" / path.name)
            copied.append(path.name)
        return copied

    def tune() -> dict[str, Any]:
        from presetdb.offline.tune import Tuner

        tuner = Tuner(
            rk, out / "tune_rms_norm_gpu.json", effort="quick", budget_seconds=args.budget, seed=1234
        )
        result = tuner.run(KEYS_TUNE)
        platform = json.loads(result.path.read_text())["platform"]
        final = out / f"tune_rms_norm_{platform}.json"
        result.path.replace(final)
        return {"file": final.name, "done": result.done, "failed": result.failed}

    step(summary, "local_cache", local_cache)
    step(summary, "aot_collect", aot_collect)
    step(summary, "tune", tune)

    def import_all() -> dict[str, Any]:
        from presetdb.offline.importers import import_files
        from presetdb.store import migrate

        outcomes: dict[str, Any] = {}
        for path in sorted([*(out / "helion").iterdir(), *out.glob("tune_rms_norm_*.json")]):
            if path.name == "best_config_key.json":
                continue
            db = work / f"check-{path.name}.db"
            migrate.upgrade(db, seed_data=False)
            key = KEY_CACHE if path.suffix == ".best_config" else None
            try:
                report = import_files(db, [path], key=key)
                outcomes[path.name] = {"counts": report.counts, "warnings": report.warnings}
            except Exception as exc:  # noqa: BLE001  (report every file)
                outcomes[path.name] = {"error": f"{type(exc).__name__}: {exc}"}
        return outcomes

    step(summary, "import_check", import_all)
    shutil.rmtree(work, ignore_errors=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    print(json.dumps({k: v.get("ok") if isinstance(v, dict) else v for k, v in summary.items()}, indent=2))


if __name__ == "__main__":
    main()
