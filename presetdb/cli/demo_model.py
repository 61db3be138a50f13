"""`presetdb demo`, part 2: a real model's decoder MLP block, called the way the model calls it.

Llama-3-8B from the model catalog at decode (one token in flight): ``rms_norm`` ->
``gate_up`` matmul (hidden -> 2 x intermediate) -> ``silu_mul`` -> ``down`` matmul
(intermediate -> hidden) + the residual (a plain tensor add: no presetdb kernel), each
kernel step through ``torch.ops.presetdb.*`` on bf16 tensors of the model's sizes, weights
scaled 1/sqrt(fan-in) like a trained layer's and stored [in, out] (the matmul kernel's b).
The shape key of each call must be one that `presetdb shapes` derives for the model (the
same ``shapes_for`` hooks), and the block's output is compared with the same block in plain
PyTorch. On a GPU the whole block is also timed against PyTorch.

In the Triton interpreter (CPU) the matmul steps are resolved (stored key, match kind and
config shown) but not run: PyTorch's ``@`` computes them. Measured on the 2-core CI class
of machine: 1/16 of the gate_up matmul (1x4096 @ 4096x1792) took 80 s with Helion's
default config (what the shipped H100 presets serve for this far key), so the two matmuls
would take about half an hour; rms_norm and silu_mul take seconds at the model's sizes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from rich.table import Table

from presetdb.cli.common import safe
from presetdb.cli.demo import call_op, console, describe_choice, median_ms
from presetdb.keys import canonical_key

MODEL = "llama-3-8b"
TOKENS = 1  # decode: one token per sequence, one sequence
KERNELS = ("rms_norm", "silu_mul", "matmul")
# bf16 across four ops (each rounds its output to bf16), relative to the output's scale.
TOLERANCE = 3e-2
NOT_RUN = "picked, not run in the interpreter: PyTorch @ computed it"


@dataclass
class Step:
    step: str  # the block's step: rms_norm, gate_up, silu_mul, down
    kernel: str
    key: dict[str, Any]  # the call's shape key (one of `presetdb shapes` keys for the model)
    chosen: str
    match: str
    config: str
    provenance: str
    ran: str  # what computed it: the presetdb op, or PyTorch (`NOT_RUN`)


@dataclass
class BlockResult:
    model: str
    tokens: int
    steps: list[Step] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # keys `presetdb shapes` does not give
    max_err: float = math.nan
    scale: float = math.nan  # max |output| of the PyTorch block
    times: str = ""

    @property
    def matches(self) -> bool:
        """The output matches the PyTorch block's within `TOLERANCE`."""
        return self.max_err <= TOLERANCE * max(1.0, self.scale)

    @property
    def ok(self) -> bool:
        return self.matches and not self.problems


def model_keys(model: Any, tokens: int) -> dict[str, list[dict[str, Any]]]:
    """The example kernels' keys for `model` at `tokens`: what `presetdb shapes` prints."""
    from presetdb.offline.shapes import kernels_with_shapes, shapes_for_models

    return shapes_for_models([model], [tokens], kernels_with_shapes(list(KERNELS)))


def _weights(model: Any, device: str) -> dict[str, Any]:
    import torch

    gen = torch.Generator(device=device).manual_seed(0)
    h, i = model.hidden, model.intermediate

    def randn(*shape: int, scale: float = 1.0) -> Any:
        return (torch.randn(*shape, generator=gen, device=device, dtype=torch.float32) * scale).to(torch.bfloat16)

    return {
        "x": randn(TOKENS, h),
        "norm": randn(h, scale=0.1) + 1.0,
        "gate_up": randn(h, 2 * i, scale=h**-0.5),
        "down": randn(i, h, scale=i**-0.5),
    }


def torch_block(w: dict[str, Any], eps: float) -> Any:
    """The block in plain PyTorch (what a PyTorch model runs)."""
    import torch

    x = w["x"]
    h = torch.nn.functional.rms_norm(x, (x.shape[-1],), w["norm"], eps)
    gate_up = h @ w["gate_up"]
    d = gate_up.shape[-1] // 2
    return (torch.nn.functional.silu(gate_up[..., :d]) * gate_up[..., d:]) @ w["down"] + x


def presetdb_block(w: dict[str, Any], eps: float) -> Any:
    """The block through torch.ops.presetdb (timed on a GPU)."""
    import torch

    ops = torch.ops.presetdb
    return ops.matmul(ops.silu_mul(ops.matmul(ops.rms_norm(w["x"], w["norm"], eps), w["gate_up"])), w["down"]) + w["x"]


def run_block(*, on_gpu: bool, device: str) -> BlockResult:
    """Run the block step by step through torch.ops.presetdb, describe each call, compare
    the output with `torch_block`; on a GPU time both."""
    from presetdb.helion.registry import get_kernel, last_choice
    from presetdb.offline.models import load_model

    model = load_model(MODEL)
    expected = {name: {canonical_key(k) for k in keys} for name, keys in model_keys(model, TOKENS).items()}
    result = BlockResult(model.name, TOKENS)
    w, eps = _weights(model, device), 1e-5
    run_matmul = on_gpu

    def step(label: str, kernel: str, *args: Any) -> Any:
        rk = get_kernel(kernel)
        key = rk.features(*args)
        if canonical_key(key) not in expected[kernel]:
            result.problems.append(f"{label}: {kernel} key {canonical_key(key)} is not among `presetdb shapes` keys")
        if kernel == "matmul" and not run_matmul:
            out, ran, choice, quarantined = args[0] @ args[1], NOT_RUN, rk.resolution(*args).choice, False
        else:
            out, _, quarantined = call_op(kernel, args)
            ran, choice = f"torch.ops.presetdb.{kernel}", last_choice(kernel)
        chosen, match, config, prov = describe_choice(rk, args, choice, quarantined=quarantined)
        result.steps.append(Step(label, kernel, key, chosen, match, config, prov, ran))
        return out

    normed = step("rms_norm", "rms_norm", w["x"], w["norm"], eps)
    gate_up = step("gate_up", "matmul", normed, w["gate_up"])
    act = step("silu_mul", "silu_mul", gate_up)
    out = step("down", "matmul", act, w["down"]) + w["x"]
    ref = torch_block(w, eps)
    result.max_err = float((out.float() - ref.float()).abs().max())
    result.scale = float(ref.float().abs().max())
    if on_gpu:
        ours_ms = median_ms(lambda: presetdb_block(w, eps))
        torch_ms = median_ms(lambda: torch_block(w, eps))
        result.times = f"block: presetdb ops {ours_ms:.4f} ms | PyTorch {torch_ms:.4f} ms ({torch_ms / ours_ms:.2f}x)"
    return result


def print_block(result: BlockResult, on_gpu: bool) -> None:
    title = f"{result.model} decoder MLP block at decode ({result.tokens} token): torch.ops.presetdb"
    table = Table(title=safe(title))
    for col in ("step: kernel", "model's shape key", "chosen key", "match", "config (block sizes, warps, stages)",
                "tuned on", "ran"):
        table.add_column(col, overflow="fold")
    for s in result.steps:
        table.add_row(
            safe(f"{s.step}: {s.kernel}"), safe(canonical_key(s.key).replace("bfloat16", "bf16")),
            safe(s.chosen.replace("bfloat16", "bf16")), safe(s.match), safe(s.config), safe(s.provenance), safe(s.ran),
        )
    console.print(table)
    if not on_gpu:
        console.print(
            "CPU: rms_norm and silu_mul ran through torch.ops.presetdb at the model's sizes; the two matmuls "
            "were resolved (key, match, config above) but computed by PyTorch @ (an estimated half hour in the "
            "Triton interpreter on 2 cores). The residual add is plain PyTorch.",
            highlight=False,
        )
    for problem in result.problems:
        console.print(f"[red]{safe(problem)}[/]")
    verdict = "[green]matches[/]" if result.matches else "[red]does NOT match[/]"
    console.print(
        f"block output vs the same block in PyTorch: max |err| {result.max_err:.2e} "
        f"(output max {result.scale:.2f}, tolerance {TOLERANCE:g} x max(1, output max)): {verdict}",
        highlight=False,
    )
    if result.times:
        console.print(result.times, highlight=False)


def run_model_demo(*, on_gpu: bool, device: str) -> int:
    """Part 2 of `presetdb demo`: 0 when the block matches PyTorch, else 1."""
    result = run_block(on_gpu=on_gpu, device=device)
    print_block(result, on_gpu)
    return 0 if result.ok else 1


__all__ = ["MODEL", "TOKENS", "BlockResult", "Step", "model_keys", "run_block", "run_model_demo"]
