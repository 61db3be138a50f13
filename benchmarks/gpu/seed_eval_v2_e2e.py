"""End to end for seed_eval_v2.py: a decoder MLP block and a logits softmax step through
torch.ops.presetdb vs the same in PyTorch, per token count.

MLP block (dims of `--e2e-model` from presetdb's model catalog): rms_norm -> gate_up matmul
-> silu_mul -> down matmul + residual. Logits step: softmax over the vocabulary. Each version
is timed by the held-out part's timer: on a GPU `graph_timer`, i.e. the whole block captured
in a CUDA graph (torch.cuda.graph, as do_bench_cudagraph does) and replayed; versions
interleaved for `--rounds` rounds, median. What each presetdb op served (match kind, key)
is recorded from one eager call before timing; the outputs are checked against the same
block built from the kernels' float32 references.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from collections.abc import Callable
from typing import Any

RESERVE_S = 120.0  # seconds the end-to-end part needs on a GPU (compiles included)
CPU_DIMS = (32, 48, 64)  # hidden, intermediate, vocab of a CPU smoke run
EPS = 1e-5


def model_dims(opts: argparse.Namespace) -> tuple[int, int, int, str]:
    """(hidden, intermediate, vocab, where they come from)."""
    if opts.e2e_dims:
        hidden, inter, vocab = (int(x) for x in opts.e2e_dims.split(","))
        return hidden, inter, vocab, f"--e2e-dims {opts.e2e_dims}"
    if opts.device == "cpu":
        return (*CPU_DIMS, "tiny dims of a CPU smoke run")
    from presetdb.offline.models import load_model

    model = load_model(opts.e2e_model)
    if not model.intermediate:
        raise SystemExit(f"--e2e-model {opts.e2e_model}: no dense MLP (a mixture of experts); pick a dense model")
    return model.hidden, model.intermediate, model.vocab, f"{model.name} (presetdb model catalog)"


def _served(log: list[dict[str, Any]], name: str) -> Callable[..., Any]:
    """torch.ops.presetdb.<name>, noting what each call served."""
    import torch

    from presetdb.helion.registry import get_kernel

    op, rk = getattr(torch.ops.presetdb, name), get_kernel(name)

    def call(*args: Any) -> Any:
        res = rk.resolution(*args)
        shown = res.choice or res.far
        log.append({
            "kernel": name, "key": rk.features(*args),
            "match": "miss" if shown is None else "far" if res.far is not None else shown.kind,
            "served_key": None if shown is None else shown.preset.shape_key,
        })
        return op(*args)

    return call


def run(opts: argparse.Namespace, timer: Any, *, deadline: float) -> dict[str, Any]:
    import torch

    from presetdb.errors import PresetDBError
    from presetdb.helion.registry import get_kernel
    from presetdb.helion.rerank import check_close

    hidden, inter, vocab, source = model_dims(opts)
    dtype = torch.bfloat16 if opts.device == "cuda" else torch.float32
    dev = opts.device
    gen = torch.Generator(device="cpu").manual_seed(0)

    def randn(*shape: int, scale: float = 1.0) -> torch.Tensor:
        return (torch.randn(*shape, generator=gen) * scale).to(dev, dtype)

    w_norm = randn(hidden, scale=0.1) + 1
    w_gate_up = randn(hidden, 2 * inter, scale=hidden ** -0.5)
    w_down = randn(inter, hidden, scale=inter ** -0.5)
    rms, mm, silu, sm = (get_kernel(k) for k in ("rms_norm", "matmul", "silu_mul", "softmax"))
    ops = torch.ops.presetdb

    def mlp(x: torch.Tensor, norm: Any, matmul: Any, act: Any) -> torch.Tensor:
        return x + matmul(act(matmul(norm(x, w_norm, EPS), w_gate_up)), w_down)

    blocks: dict[str, dict[str, Callable[[torch.Tensor], torch.Tensor]]] = {
        "mlp": {
            "presetdb": lambda x: mlp(x, ops.rms_norm, ops.matmul, ops.silu_mul),
            "torch": lambda x: mlp(x, rms.baseline, mm.baseline, silu.baseline),
            "reference": lambda x: mlp(x, rms.reference, mm.reference, silu.reference),
        },
        "softmax": {"presetdb": ops.softmax, "torch": sm.baseline, "reference": sm.reference},
    }

    def logged(block: str, log: list[dict[str, Any]]) -> Callable[[torch.Tensor], torch.Tensor]:
        if block == "mlp":
            return lambda x: mlp(x, _served(log, "rms_norm"), _served(log, "matmul"), _served(log, "silu_mul"))
        return _served(log, "softmax")

    rows: list[dict[str, Any]] = []
    skipped: list[str] = []
    for tokens in (int(t) for t in opts.e2e_tokens.split(",")):
        for block, fns in blocks.items():
            if time.perf_counter() > deadline - 15:
                skipped.append(f"{block} tokens={tokens}")
                continue
            width = hidden if block == "mlp" else vocab
            x = randn(tokens, width, scale=1.0 if block == "mlp" else 3.0)
            log: list[dict[str, Any]] = []
            out = logged(block, log)(x)  # compiles what is served; notes it
            want = fns["reference"](x)
            try:
                check_close(out, want, {"block": block, "tokens": tokens}, error=PresetDBError)
                check = "ok"
            except PresetDBError as exc:
                check = f"wrong: {exc}"[:400]
            samples: dict[str, list[float]] = {"presetdb": [], "torch": []}
            for r in range(opts.rounds):
                for name in (("presetdb", "torch") if r % 2 == 0 else ("torch", "presetdb")):
                    samples[name].append(timer(lambda f=fns[name], x=x: f(x)))
            ms = {k: statistics.median(v) for k, v in samples.items()}
            rows.append({
                "block": block, "tokens": tokens, "presetdb_ms": ms["presetdb"], "torch_ms": ms["torch"],
                "vs_torch": ms["torch"] / ms["presetdb"], "check": check,
                "max_rel_err": {k: _rel_err(fns[k](x), want) for k in ("presetdb", "torch")},
                "served": log, "samples_ms": samples,
            })
            print(f"e2e {block} tokens={tokens}: presetdb {ms['presetdb']:.4f} ms, torch {ms['torch']:.4f} ms, "
                  f"{ms['torch'] / ms['presetdb']:.2f}x, check {check[:40]}", flush=True)
            del x, out, want
    return {
        "dims": {"hidden": hidden, "intermediate": inter, "vocab": vocab, "source": source, "dtype": str(dtype)},
        "method": "MLP: x + down(silu_mul(gate_up(rms_norm(x)))); logits: softmax over the vocabulary; "
                  + ("each version captured in a CUDA graph and replayed (graph_timer: do_bench_cudagraph "
                     f"median, rep {opts.rep} ms)" if opts.device == "cuda" else "eager, wall clock (CPU smoke run)")
                  + f", {opts.rounds} interleaved rounds, median; ratio = PyTorch ms / presetdb ms",
        "rows": rows, "skipped": skipped,
    }


def _rel_err(got: Any, want: Any) -> float:
    """max |got - want| / max |want| (float32)."""
    scale = float(want.float().abs().max())
    err = float((got.float() - want.float()).abs().max())
    return err / scale if scale and math.isfinite(scale) else err
