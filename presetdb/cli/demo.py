"""`presetdb demo`: the whole path on any machine.

Loads the default db (or ``PRESETDB_PATH``), detects the platform, and runs each example
kernel through ``torch.ops.presetdb.*`` on four shapes: one tuned exactly, one that needs
a nearest/ceil match, one whose nearest stored key is far (8x away: beyond the far-match
guard, so ``PRESETDB_ON_FAR`` decides), one the seed data does not cover (a dtype never
tuned, served by the kernel's default entry). Each call prints the key chosen, the match kind, the config,
where the config came from, and the error against the PyTorch reference. On a GPU it also
times the preset against Helion's default config and PyTorch. Then a real model's decoder
MLP block, called the way the model calls it (`presetdb.cli.demo_model`).

Without a GPU it runs the H100 presets in the Triton interpreter, and says so.
"""

from __future__ import annotations

import os
import tempfile
import time
import warnings
from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.table import Table

from presetdb.cli.common import safe

# Wide enough for the table when output is not a terminal (CI logs, `make run | tee`).
console = Console(width=None if Console().is_terminal else 170)

# (label, shape key) per kernel: small enough for the interpreter, keyed to the seed grid.
CASES: dict[str, list[tuple[str, dict[str, Any]]]] = {
    "rms_norm": [
        ("exact", {"dtype": "bfloat16", "hidden": 2048, "num_tokens": 16}),
        ("nearest", {"dtype": "bfloat16", "hidden": 3000, "num_tokens": 10}),
        ("far", {"dtype": "bfloat16", "hidden": 256, "num_tokens": 16}),
        ("miss", {"dtype": "float32", "hidden": 2048, "num_tokens": 16}),
    ],
    "silu_mul": [
        ("exact", {"dtype": "bfloat16", "d": 2048, "num_tokens": 16}),
        ("nearest", {"dtype": "bfloat16", "d": 3000, "num_tokens": 10}),
        ("far", {"dtype": "bfloat16", "d": 256, "num_tokens": 16}),
        ("miss", {"dtype": "float32", "d": 2048, "num_tokens": 16}),
    ],
    "softmax": [
        ("exact", {"dtype": "bfloat16", "n": 2048, "num_rows": 16}),
        ("nearest", {"dtype": "bfloat16", "n": 2500, "num_rows": 10}),
        ("far", {"dtype": "bfloat16", "n": 256, "num_rows": 16}),
        ("miss", {"dtype": "float32", "n": 2048, "num_rows": 16}),
    ],
    "matmul": [
        ("exact", {"dtype": "bfloat16", "m": 16, "n": 2048, "k": 2048}),
        ("nearest", {"dtype": "bfloat16", "m": 12, "n": 2500, "k": 2048}),
        ("far", {"dtype": "bfloat16", "m": 16, "n": 256, "k": 2048}),
        ("miss", {"dtype": "float32", "m": 16, "n": 512, "k": 512}),
    ],
}


@dataclass
class Row:
    kernel: str
    case: str
    shape: str
    chosen: str
    match: str
    config: str
    provenance: str
    max_err: float
    ok: bool
    times: str = ""


def _config_summary(config: dict[str, Any]) -> str:
    short = {"block_sizes": "bs", "num_warps": "w", "num_stages": "s"}
    parts = [f"{short[k]}={config[k]}" for k in short if k in config]
    return " ".join(parts).replace(" ", "") if parts else "(Helion default)"


def call_op(name: str, args: tuple[Any, ...]) -> tuple[Any, float, bool]:
    """torch.ops.presetdb.<name>(*args): (output, seconds, whether it warned that its
    stored config was quarantined). Warnings are still shown."""
    import torch

    from presetdb.helion.hooks import QuarantineWarning

    started = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = getattr(torch.ops.presetdb, name)(*args)
    seconds = time.perf_counter() - started
    for w in caught:
        warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    return out, seconds, any(issubclass(w.category, QuarantineWarning) for w in caught)


def describe_choice(rk: Any, args: tuple[Any, ...], choice: Any, *, quarantined: bool = False) -> tuple[str, str, str, str]:
    """(chosen key, match kind, config summary, provenance) of a call of kernel `rk` with
    `args` that stored row `choice` served (None: none did: a far match not served, or a
    miss). `quarantined`: the call warned that its stored config was quarantined."""
    from presetdb.runtime.picker import get_picker

    picker = get_picker()
    far = rk.resolution(*args).far  # a far match that was not served
    if choice is None and far is not None:
        served = "Helion default config" if picker.settings.on_far == "default" else "re-ranked config"
        match = f"{far.far_text()}: {served} (PRESETDB_ON_FAR={picker.settings.on_far})"
        return far.preset.shape_key, match, "(Helion default)", "-"
    if choice is None:
        match = "miss (Helion default config)"
        if quarantined:  # e.g. a GPU-only config the interpreter cannot run
            match = "stored config quarantined here (see warning): Helion default config"
        return "-", match, "(Helion default)", "-"
    p = choice.preset
    match = choice.kind + (f" ({choice.far_text()})" if choice.far else "")
    tuned_on = (p.device_name or "?").removeprefix("NVIDIA ").split(" ")[0]
    prov = f"{tuned_on} {(p.tuned_at or p.created_at)[:10]} helion {p.helion_version or '?'} [{choice.layer} db]"
    return p.shape_key, match, _config_summary(p.config), prov


def median_ms(fn: Any) -> float:
    import triton.testing

    return float(triton.testing.do_bench(fn, return_mode="median"))


def run_demo(*, force_interpret: bool = False) -> int:
    import torch

    on_gpu = torch.cuda.is_available() and not force_interpret
    if not on_gpu:
        os.environ["TRITON_INTERPRET"] = "1"
        # A CPU tour writes nothing into the user's real overlay (misses, quarantines).
        if not os.environ.get("PRESETDB_USER_DB"):
            os.environ["PRESETDB_USER_DB"] = os.path.join(tempfile.mkdtemp(prefix="presetdb-demo-"), "overlay.db")
        os.environ.setdefault("PRESETDB_PLATFORM", "nvidia_h100")
        console.print(
            "[bold yellow]No GPU in use:[/] running the "
            f"{safe(os.environ['PRESETDB_PLATFORM'])} presets in the Triton interpreter (CPU). "
            "Configs are chosen and compiled exactly as on the GPU; timings are not shown."
        )
    import presetdb.kernels  # noqa: F401  (registers torch.ops.presetdb.*)
    from presetdb.helion.registry import get_kernel, last_choice
    from presetdb.runtime.picker import get_picker

    picker = get_picker()
    device = "cuda" if on_gpu else "cpu"
    console.print(
        f"platform [bold]{safe(picker.platform)}[/] (device {safe(repr(picker.info.device.device_name))}, "
        f"resolved by {picker.info.how}); fallback chain {safe(' -> '.join(picker.chain))}",
        highlight=False,
    )
    console.print(
        "layers: " + safe(", ".join(f"{layer.name}={layer.path}" for layer in picker.layers)),
        highlight=False,
    )
    failures = 0
    for name, cases in CASES.items():
        rk = get_kernel(name)
        rows: list[Row] = []
        for label, key in cases:
            torch.manual_seed(0)
            args = rk.example_inputs(key, device=device)
            out, first_call_s, quarantined = call_op(name, args)
            ref = rk.reference(*args)
            err = float((out.float() - ref.float()).abs().max()) if out.numel() else 0.0
            tol = 2e-2 if key.get("dtype") == "bfloat16" else 1e-3
            scale = float(ref.float().abs().max()) if ref.numel() else 1.0
            ok = err <= tol * max(1.0, scale)
            failures += not ok
            chosen, match, config, prov = describe_choice(rk, args, last_choice(name), quarantined=quarantined)
            times = f"1st call {first_call_s:.1f}s"
            if on_gpu:
                times = _gpu_times(rk, args)
            rows.append(Row(name, label, _shape(key), chosen, match, config, prov, err, ok, times))
        _print_table(name, rows, on_gpu)
    from presetdb.cli.demo_model import run_model_demo

    failures += run_model_demo(on_gpu=on_gpu, device=device)
    picker.flush_misses()
    if failures:
        console.print(f"[bold red]{failures} result(s) did not match the PyTorch reference[/]")
        return 1
    console.print("[bold green]all results match the PyTorch reference[/]")
    return 0


def _gpu_times(rk: Any, args: tuple[Any, ...]) -> str:
    """The op (stored config, through presetdb) vs Helion's default config vs PyTorch."""
    import torch

    op = getattr(torch.ops.presetdb, rk.name)
    kargs = rk.prepare_args(*args)
    preset_ms = median_ms(lambda: op(*args))
    ref_ms = median_ms(lambda: rk.baseline(*args))
    bound = rk.bound_for(tuple(kargs))
    runner = bound.compile_config(bound.config_spec.default_config())
    default_ms = median_ms(lambda: runner(*kargs))
    return f"op {preset_ms:.4f} ms | Helion default {default_ms:.4f} ms | PyTorch {ref_ms:.4f} ms"


def _shape(key: dict[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in key.items()).replace("bfloat16", "bf16").replace("float32", "fp32")


def _print_table(name: str, rows: list[Row], on_gpu: bool) -> None:
    table = Table(title=f"torch.ops.presetdb.{name}", show_lines=False)
    for col in ("case", "shape", "chosen key", "match", "config (block sizes, warps, stages)", "tuned on", "max |err|", "ok", "time"):
        table.add_column(col, overflow="fold")
    for r in rows:
        table.add_row(
            safe(r.case), safe(r.shape), safe(r.chosen.replace("bfloat16", "bf16")), safe(r.match),
            safe(r.config), safe(r.provenance), f"{r.max_err:.2e}",
            "[green]yes[/]" if r.ok else "[red]NO[/]", r.times,
        )
    console.print(table)


__all__ = ["CASES", "run_demo"]
