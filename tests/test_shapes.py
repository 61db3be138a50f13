"""`presetdb shapes`: model dimensions from real config.json files (written here from
published dimensions) and from the catalog, mapped by each example kernel's shapes_for
hook to keys that `presetdb tune --shapes` reads."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import presetdb.kernels  # noqa: F401  (registers the example kernels)
from presetdb.cli import app
from presetdb.helion.registry import get_kernel
from presetdb.keys import KeyIndex, canonical_key, far_fields
from presetdb.offline import models, shapes
from presetdb.offline.tune import load_shapes

# meta-llama/Meta-Llama-3-8B's config.json (published values; unrelated fields trimmed).
LLAMA3_8B = {
    "architectures": ["LlamaForCausalLM"],
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "max_position_embeddings": 8192,
    "model_type": "llama",
    "num_attention_heads": 32,
    "num_hidden_layers": 32,
    "num_key_value_heads": 8,
    "rms_norm_eps": 1e-05,
    "torch_dtype": "bfloat16",
    "vocab_size": 128256,
}
# mistralai/Mixtral-8x7B-v0.1: intermediate_size is each expert's width.
MIXTRAL = {
    "model_type": "mixtral",
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "num_hidden_layers": 32,
    "num_local_experts": 8,
    "num_experts_per_tok": 2,
    "vocab_size": 32000,
}
# THUDM/glm-4-9b (ChatGLM spellings).
GLM4_9B = {
    "model_type": "chatglm",
    "hidden_size": 4096,
    "ffn_hidden_size": 13696,
    "kv_channels": 128,
    "multi_query_attention": True,
    "multi_query_group_num": 2,
    "num_attention_heads": 32,
    "num_layers": 40,
    "padded_vocab_size": 151552,
}


def write_config(tmp_path: Path, name: str, config: dict[str, Any]) -> Path:
    folder = tmp_path / name
    folder.mkdir()
    path = folder / "config.json"
    path.write_text(json.dumps(config))
    return path


def cli(*args: str) -> Any:
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "200"})


def test_a_config_json_reads_as_the_catalog_entry(tmp_path: Path) -> None:
    path = write_config(tmp_path, "Meta-Llama-3-8B", LLAMA3_8B)
    dims = models.load_config(path)
    assert dims.name == "Meta-Llama-3-8B"
    # head_dim is derived (hidden / heads) when the config does not give it
    assert dims.to_json() | {"name": "x"} == models.catalog()["llama-3-8b"].to_json() | {"name": "x"}
    assert models.load_model(str(path.parent)) == dims  # a directory holding config.json
    assert models.load_model("meta-llama/Meta-Llama-3-8B") is models.catalog()["llama-3-8b"]


def test_moe_nested_text_config_and_chatglm_spellings(tmp_path: Path) -> None:
    mixtral = models.load_config(write_config(tmp_path, "mixtral", MIXTRAL))
    assert (mixtral.experts, mixtral.experts_per_token, mixtral.expert_intermediate) == (8, 2, 14336)
    assert mixtral.intermediate is None  # every layer is MoE
    assert mixtral.to_json() | {"name": "x"} == models.catalog()["mixtral-8x7b"].to_json() | {"name": "x"}
    # A multimodal wrapper keeps the language model under text_config.
    wrapped = {"model_type": "llava", "vocab_size": 1, "text_config": dict(LLAMA3_8B)}
    dims = models.load_config(write_config(tmp_path, "llava", wrapped))
    assert (dims.hidden, dims.vocab, dims.kv_heads) == (4096, 128256, 8)
    glm = models.load_config(write_config(tmp_path, "glm", GLM4_9B))
    assert glm.to_json() | {"name": "x"} == models.catalog()["glm-4-9b"].to_json() | {"name": "x"}
    # DeepSeek-style: dense first layers, routed experts of moe_intermediate_size, shared experts.
    deepseek = dict(
        LLAMA3_8B, n_routed_experts=64, num_experts_per_tok=6, moe_intermediate_size=1408,
        n_shared_experts=2, first_k_dense_replace=1, intermediate_size=10944,
    )
    ds = models.from_hf_config(deepseek, "ds")
    assert (ds.intermediate, ds.expert_intermediate, ds.shared_intermediate) == (10944, 1408, 2816)


def test_bad_configs_name_the_file_and_field(tmp_path: Path) -> None:
    broken = dict(LLAMA3_8B)
    del broken["vocab_size"]
    path = write_config(tmp_path, "broken", broken)
    with pytest.raises(models.ModelConfigError, match=r"broken/config.json: no vocab_size"):
        models.load_config(path)
    with pytest.raises(models.ModelConfigError, match="not a multiple"):
        models.from_hf_config(dict(LLAMA3_8B, num_key_value_heads=5), "odd")
    with pytest.raises(models.ModelConfigError, match="latent attention"):
        models.from_hf_config(dict(LLAMA3_8B, kv_lora_rank=512), "mla")
    (tmp_path / "junk.json").write_text("{not json")
    with pytest.raises(models.ModelConfigError, match="junk.json: not a readable JSON config"):
        models.load_model(str(tmp_path / "junk.json"))
    with pytest.raises(models.ModelConfigError, match="unknown model 'llama-9'.*catalog: .*llama-3-8b"):
        models.load_model("llama-9")


def test_each_kernel_maps_the_model_to_its_keys() -> None:
    found = shapes.shapes_for_models([models.catalog()["llama-3-8b"]], [1, 300])
    key = {"dtype": "bfloat16"}
    assert found["rms_norm"] == [key | {"hidden": 4096, "num_tokens": t} for t in (1, 300)]
    assert found["silu_mul"] == [key | {"d": 14336, "num_tokens": t} for t in (1, 300)]
    # logits over the vocabulary; attention scores (32 heads x t rows of t) for t=300 only
    assert found["softmax"] == [
        key | {"n": 300, "num_rows": 32 * 300},
        key | {"n": 128256, "num_rows": 1},
        key | {"n": 128256, "num_rows": 300},
    ]
    pairs = {(k["n"], k["k"]) for k in found["matmul"]}
    # qkv (32 + 2*8) * 128, o, gate_up, down, lm_head
    assert pairs == {(6144, 4096), (4096, 4096), (28672, 4096), (4096, 14336), (128256, 4096)}
    assert {k["m"] for k in found["matmul"]} == {1, 300}
    # Gemma-2 9B: head_dim 256 makes q wider than hidden (o: 4096 -> 3584).
    gemma = shapes.shapes_for_models([models.catalog()["gemma-2-9b"]], [1], {"matmul": _kernel("matmul")})
    assert {(k["n"], k["k"]) for k in gemma["matmul"]} >= {(8192, 3584), (3584, 4096)}


def test_moe_models_route_tokens_to_experts() -> None:
    found = shapes.shapes_for_models([models.catalog()["mixtral-8x7b"]], [300])
    # 300 tokens x top-2 rows through the expert activation; ceil(600 / 8) rows per expert matmul
    assert found["silu_mul"] == [{"dtype": "bfloat16", "d": 14336, "num_tokens": 600}]
    mm = {(k["n"], k["k"], k["m"]) for k in found["matmul"]}
    assert {(28672, 4096, 75), (4096, 14336, 75), (8, 4096, 300)} <= mm
    assert {"dtype": "bfloat16", "n": 8, "num_rows": 300} in found["softmax"]  # the router


def _kernel(name: str) -> Any:
    from presetdb.helion.registry import get_kernel

    return get_kernel(name)


def test_tokens_parse_and_default() -> None:
    assert shapes.parse_tokens("1..16,37,3") == [1, 2, 3, 4, 8, 16, 37]
    assert shapes.DEFAULT_TOKENS[0] == 1 and shapes.DEFAULT_TOKENS[-1] == 8192
    assert {3, 37, 300, 1000, 2048} <= set(shapes.DEFAULT_TOKENS)
    for bad in ("0", "x", "8..2", ""):
        with pytest.raises(shapes.ShapesError, match="--tokens"):
            shapes.parse_tokens(bad)


def test_cli_output_is_what_tune_reads(tmp_path: Path) -> None:
    config = write_config(tmp_path, "llama", LLAMA3_8B)
    result = cli("shapes", "--model", str(config), "--kernel", "matmul", "--tokens", "1,37")
    assert result.exit_code == 0, result.output
    out = tmp_path / "matmul.json"
    out.write_text(result.stdout)
    keys = load_shapes(out)
    assert keys == shapes.shapes_for_models([models.catalog()["llama-3-8b"]], [1, 37])["matmul"]
    assert all(_kernel("matmul").key_spec.check_key(k) == [] for k in keys) and len(keys) == 10
    # lines: one canonical key per line, also read by tune
    lines = cli("shapes", "-m", "llama-3-8b", "-k", "rms_norm", "-t", "1..4", "--format", "lines")
    (tmp_path / "r.txt").write_text(lines.stdout)
    assert load_shapes(tmp_path / "r.txt") == [
        {"dtype": "bfloat16", "hidden": 4096, "num_tokens": t} for t in (1, 2, 4)
    ]
    # several models: the union, without duplicates (Mistral and Llama-3 8B share hidden 4096)
    both = cli("shapes", "-m", "llama-3-8b", "-m", "mistral-7b", "-k", "rms_norm", "-t", "8")
    assert json.loads(both.stdout) == [{"dtype": "bfloat16", "hidden": 4096, "num_tokens": 8}]


def test_cli_writes_one_file_per_kernel_and_excludes(tmp_path: Path) -> None:
    grid = str(tmp_path / "grid_{kernel}.json")
    result = cli("shapes", "-m", "llama-3-8b", "-t", "1,2", "--out", grid)
    assert result.exit_code == 0, result.output
    for name in ("matmul", "rms_norm", "silu_mul", "softmax"):
        assert load_shapes(Path(grid.replace("{kernel}", name)))  # each a tune-ready array
    held = tmp_path / "held.json"
    result = cli("shapes", "-m", "llama-3-8b", "-m", "qwen2.5-7b", "-t", "2,4", "--exclude", grid, "--out", str(held))
    assert result.exit_code == 0, result.output
    data = json.loads(held.read_text())
    tuned = {canonical_key(k) for k in load_shapes(Path(grid.replace("{kernel}", "rms_norm")))}
    assert {canonical_key(k) for k in data["rms_norm"]} == {
        canonical_key({"dtype": "bfloat16", "hidden": h, "num_tokens": t}) for h in (3584, 4096) for t in (2, 4)
    } - tuned
    assert {"dtype": "bfloat16", "hidden": 4096, "num_tokens": 4} in data["rms_norm"]


def test_cli_errors_are_one_clear_line(tmp_path: Path) -> None:
    # PresetDBError: `presetdb`'s main prints it as one line (exit 1)
    result = cli("shapes", "--model", "no-such-model")
    assert isinstance(result.exception, models.ModelConfigError)
    assert "unknown model 'no-such-model'" in str(result.exception)
    result = cli("shapes", "--model", "llama-3-8b", "--kernel", "nope")
    assert "unknown kernel 'nope'" in str(result.exception)
    result = cli("shapes", "--catalog")
    assert result.exit_code == 0 and "mixtral-8x7b" in result.output and "gemma-2-9b" in result.output


ROOT = Path(__file__).resolve().parents[1]
SHAPES_DIR = ROOT / "benchmarks" / "shapes"
TUNING_MODELS = ("llama-3-8b", "llama-3-70b", "qwen2.5-7b", "qwen2.5-72b", "mistral-7b", "mixtral-8x7b")


def test_committed_grids_are_what_presetdb_shapes_writes_and_held_out_sets_stay_held_out() -> None:
    catalog = models.catalog()
    grid = shapes.shapes_for_models([catalog[m] for m in TUNING_MODELS], shapes.parse_tokens("1..8192"))
    for name, keys in grid.items():
        assert load_shapes(SHAPES_DIR / f"tune_v2_{name}.json") == keys, f"regenerate tune_v2_{name}.json"
    heldout = json.loads((SHAPES_DIR / "heldout_v2.json").read_text())
    coverage = json.loads((SHAPES_DIR / "heldout_coverage.json").read_text())
    expected = shapes.shapes_for_models(
        [catalog[m] for m in ("gemma-2-9b", "phi-3-medium", "llama-2-13b", "glm-4-9b")], [1, 37, 300, 2048],
        exclude=grid,
    )
    assert heldout == expected
    assert set(heldout) == set(coverage) == {"matmul", "rms_norm", "silu_mul", "softmax"}
    assert sum(map(len, heldout.values())) >= 30 and sum(map(len, coverage.values())) >= 20
    for name in grid:
        tuned = {canonical_key(k) for k in grid[name]}
        held = {canonical_key(k) for k in heldout[name]}
        cov = {canonical_key(k) for k in coverage[name]}
        assert heldout[name] and coverage[name]
        assert not (held & tuned) and not (cov & tuned) and not (cov & held)


def test_search_subsets_are_tuning_grid_keys_only() -> None:
    """A `search_v2_<kernel>.json` (full search before refine) is part of that kernel's
    tuning grid: never a held-out key."""
    files = sorted(SHAPES_DIR.glob("search_v2_*.json"))
    assert files, "benchmarks/shapes/search_v2_softmax.json is gone"
    for path in files:
        kernel = path.stem.removeprefix("search_v2_")
        grid = {canonical_key(k) for k in load_shapes(SHAPES_DIR / f"tune_v2_{kernel}.json")}
        subset = [canonical_key(k) for k in load_shapes(path)]
        assert subset and len(set(subset)) == len(subset)
        assert set(subset) <= grid, f"{path.name} has keys outside tune_v2_{kernel}.json"


def test_refine_orders_are_the_tuning_grid_reordered() -> None:
    """A `refine_order_v2_<kernel>.json` is exactly its tuning grid, in another order (the one
    run_search_refine.sh refines in, so a refine cut short covers every (n, k) pair)."""
    files = sorted(SHAPES_DIR.glob("refine_order_v2_*.json"))
    assert files, "benchmarks/shapes/refine_order_v2_matmul.json is gone"
    for path in files:
        kernel = path.stem.removeprefix("refine_order_v2_")
        grid = [canonical_key(k) for k in load_shapes(SHAPES_DIR / f"tune_v2_{kernel}.json")]
        order = [canonical_key(k) for k in load_shapes(path)]
        assert sorted(order) == sorted(grid) and len(set(order)) == len(order)
    matmul = load_shapes(SHAPES_DIR / "refine_order_v2_matmul.json")
    pairs = {(k["n"], k["k"]) for k in matmul}
    first = matmul[: 2 * len(pairs)]  # every (n, k) pair at m = 16 and m = 1024
    assert {(k["n"], k["k"], k["m"]) for k in first} == {(n, kk, m) for n, kk in pairs for m in (16, 1024)}
    # Then one m at a time for every pair, until every m from 1 to 8192 is served within
    # the far limit by the field-by-field match (m is `ceil`), the picker's first choice:
    # every power of two but 2 and 8192. Checked with the picker's index and limits, at
    # every m, odd ones included.
    ceil_ladder = (1, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
    head = matmul[: len(ceil_ladder) * len(pairs)]
    assert {(k["n"], k["k"], k["m"]) for k in head} == {(n, kk, m) for n, kk in pairs for m in ceil_ladder}
    assert {k["m"] for k in matmul[len(head):]} == {2, 8192}
    spec = get_kernel("matmul").key_spec
    limits = spec.limits("matmul")
    index = KeyIndex(spec, [(k, None) for k in head])
    for n, kk in sorted(pairs):
        for m in range(1, 8193):
            found = index.match(("bfloat16", n, kk, m))
            assert found is not None and not far_fields(found.distances, limits), (n, kk, m, found)
    # A x4 ladder (1, 4, ..., 4096: enough for a `nearest` m) is not: 300 ceils to 1024,
    # so the picker's fallback (`match_within`) serves m 256's config, against `ceil`.
    x4 = KeyIndex(spec, [(k, None) for k in head if k["m"] in (1, 4, 16, 64, 256, 1024, 4096)])
    m300 = x4.match(("bfloat16", 4096, 4096, 300))
    assert m300 is not None and far_fields(m300.distances, limits) == {"m": pytest.approx(math.log2(1024 / 300))}
    rescued = x4.match_within(("bfloat16", 4096, 4096, 300), limits)
    assert rescued is not None and json.loads(rescued.key)["m"] == 256 and not far_fields(rescued.distances, limits)
