"""`presetdb demo` (the README's `make run`) on CPU: the embedded default db, the H100
presets in the Triton interpreter, every example kernel through torch.ops.presetdb, then a
Llama-3-8B decoder MLP block at decode with the keys `presetdb shapes` gives for it."""

from __future__ import annotations

import json
from typing import Any

import pytest

pytest.importorskip("torch")

from typer.testing import CliRunner

from presetdb.cli import app, demo, demo_model
from presetdb.keys import canonical_key
from presetdb.offline.models import load_model


def test_demo_serves_exact_nearest_and_default_rows_from_the_shipped_presets(monkeypatch, capsys) -> None:
    monkeypatch.setenv("PRESETDB_PLATFORM", "nvidia_h100")
    tables: dict[str, list[demo.Row]] = {}
    monkeypatch.setattr(demo, "_print_table", lambda name, rows, on_gpu: tables.__setitem__(name, rows))
    blocks = record_blocks(monkeypatch)

    assert demo.run_demo(force_interpret=True) == 0

    assert list(tables) == list(demo.CASES)
    for name, rows in tables.items():
        by_case = {row.case: row for row in rows}
        cases = dict(demo.CASES[name])
        assert set(by_case) == {"exact", "nearest", "far", "miss"}, name
        assert all(row.ok and row.max_err >= 0 for row in rows), name
        # exact: the requested key itself is stored and served
        exact = by_case["exact"]
        assert (exact.match, exact.chosen) == ("exact", canonical_key(cases["exact"])), name
        assert "H100" in exact.provenance and "helion 1.5.0" in exact.provenance
        # nearest: another stored key of the same dtype, reached by nearest/ceil
        near = by_case["nearest"]
        assert near.match in ("nearest", "ceil"), (name, near.match)
        chosen: dict[str, Any] = json.loads(near.chosen)
        assert chosen != cases["nearest"] and chosen["dtype"] == "bfloat16", name
        # a dtype never tuned: the kernel's default entry
        # far: the nearest stored key is 8x away (n, d or hidden): Helion's default config runs
        far = by_case["far"]
        assert far.match.startswith("far: ") and "> max 1 (log2 distance)" in far.match, (name, far.match)
        assert "Helion default config (PRESETDB_ON_FAR=default)" in far.match and far.config == "(Helion default)"
        assert json.loads(far.chosen)["dtype"] == "bfloat16", name
        miss = by_case["miss"]
        assert (miss.match, miss.chosen) == ("default", "{}"), name
        assert miss.config != "(Helion default)", name  # the stored default entry's config
    out = capsys.readouterr().out
    assert "Triton interpreter" in out and "all results match the PyTorch reference" in out
    # part 2: the model block ran, with the keys `presetdb shapes` gives, and matched PyTorch
    assert len(blocks) == 1
    check_llama_block(blocks[0])
    assert "llama-3-8b decoder MLP block" in out and "max |err|" in out and "matches" in out
    assert "computed by PyTorch @" in out  # says on screen what did not run in the interpreter


def record_blocks(monkeypatch: pytest.MonkeyPatch) -> list[demo_model.BlockResult]:
    """Each model block result the demo prints (still printed)."""
    seen: list[demo_model.BlockResult] = []
    real = demo_model.print_block

    def record(result: demo_model.BlockResult, on_gpu: bool) -> None:
        seen.append(result)
        real(result, on_gpu)

    monkeypatch.setattr(demo_model, "print_block", record)
    return seen


def shapes_cli_keys() -> dict[str, set[str]]:
    """`presetdb shapes --model llama-3-8b --tokens 1` for the block's kernels, by kernel."""
    result = CliRunner().invoke(app, [
        "shapes", "--model", "llama-3-8b", "--tokens", "1",
        "-k", "rms_norm", "-k", "silu_mul", "-k", "matmul", "--format", "lines",
    ])
    assert result.exit_code == 0, result.output
    keys: dict[str, set[str]] = {}
    for line in result.stdout.splitlines():
        kernel, key = line.split(" ", 1)
        keys.setdefault(kernel, set()).add(key)
    return keys


def check_llama_block(block: demo_model.BlockResult) -> None:
    cli_keys = shapes_cli_keys()
    steps = {s.step: s for s in block.steps}
    assert [s.step for s in block.steps] == ["rms_norm", "gate_up", "silu_mul", "down"]
    assert [s.kernel for s in block.steps] == ["rms_norm", "matmul", "silu_mul", "matmul"]
    for s in block.steps:
        assert canonical_key(s.key) in cli_keys[s.kernel], (s.step, s.key)
    # the single rms_norm / silu_mul keys, and the two MLP projections among the matmul keys
    assert {canonical_key(steps["rms_norm"].key)} == cli_keys["rms_norm"]
    assert {canonical_key(steps["silu_mul"].key)} == cli_keys["silu_mul"]
    model = load_model("llama-3-8b")
    assert steps["rms_norm"].key["hidden"] == model.hidden and steps["silu_mul"].key["d"] == model.intermediate
    gate_up, down = steps["gate_up"].key, steps["down"].key
    assert (gate_up["m"], gate_up["k"], gate_up["n"]) == (1, model.hidden, 2 * model.intermediate)
    assert (down["m"], down["k"], down["n"]) == (1, model.intermediate, model.hidden)
    # rms_norm and silu_mul ran through the ops; the matmuls were resolved, not run (CPU)
    assert steps["rms_norm"].ran == "torch.ops.presetdb.rms_norm"
    assert steps["silu_mul"].ran == "torch.ops.presetdb.silu_mul"
    assert steps["gate_up"].ran == steps["down"].ran == demo_model.NOT_RUN
    for s in block.steps:  # each row says what served it, as the first part's tables do
        if s.match == "exact":
            assert s.chosen == canonical_key(s.key) and "H100" in s.provenance, s
        elif s.match.startswith("far: "):
            assert s.config == "(Helion default)" and json.loads(s.chosen)["dtype"] == "bfloat16", s
        else:
            assert s.match in ("nearest", "ceil", "default"), s
            assert s.config != "(Helion default)" and "helion" in s.provenance, s
    assert block.problems == [] and block.ok
    assert 0 <= block.max_err <= demo_model.TOLERANCE * max(1.0, block.scale)
    assert block.scale > 1  # a real output, not zeros


def test_the_model_block_fails_the_demo_when_it_does_not_match_pytorch(monkeypatch, capsys) -> None:
    monkeypatch.setenv("PRESETDB_PLATFORM", "nvidia_h100")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    import presetdb.kernels  # noqa: F401

    real = demo_model.torch_block
    monkeypatch.setattr(demo_model, "torch_block", lambda w, eps: real(w, eps) + 1.0)  # a wrong reference
    assert demo_model.run_model_demo(on_gpu=False, device="cpu") == 1
    assert "does NOT match" in capsys.readouterr().out


def test_the_model_block_fails_when_a_call_key_is_not_one_presetdb_shapes_gives(monkeypatch, capsys) -> None:
    monkeypatch.setenv("PRESETDB_PLATFORM", "nvidia_h100")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    import presetdb.kernels  # noqa: F401

    # Keys of another model: the block's calls (Llama-3-8B sizes) are not among them.
    other, real = load_model("llama-3-70b"), demo_model.model_keys
    monkeypatch.setattr(demo_model, "model_keys", lambda model, tokens: real(other, tokens))
    blocks = record_blocks(monkeypatch)
    assert demo_model.run_model_demo(on_gpu=False, device="cpu") == 1
    (block,) = blocks
    assert block.matches and not block.ok  # the numbers agree; the keys are not the model's
    assert [p.split(":")[0] for p in block.problems] == ["rms_norm", "gate_up", "silu_mul", "down"]
    assert "is not among `presetdb shapes` keys" in capsys.readouterr().out
