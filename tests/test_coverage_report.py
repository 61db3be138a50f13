"""`presetdb coverage`: what a db would serve each key of a model or shapes file, before
anything runs. Real SQLite files; the picker that serving uses; for --model, the real
registered kernels' shapes_for hooks. The JSON is a tuning queue that refine reads."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from picker_fixtures import H100, H200, RMS_SCHEMA, P, make_db, rms_key, schema
from typer.testing import CliRunner

from presetdb.cli import app
from presetdb.offline import queue as queueing

runner = CliRunner()
SILU_SCHEMA = schema(("dtype", "exact"), ("d", "nearest"), ("num_tokens", "ceil"))

EXACT = rms_key(hidden=4096, num_tokens=16)
NEAR_TOKENS = rms_key(hidden=4096, num_tokens=100)  # ceil 128: 0.36 away
NEAR_HIDDEN = rms_key(hidden=6000, num_tokens=16)  # nearest 4096: 0.55 away
FAR = rms_key(hidden=4096, num_tokens=1000)  # ceil clamps to 128: 2.97 away, limit 1
FALLBACK = rms_key(dtype="float32", hidden=4096, num_tokens=128)  # only the H200 has float32
MISS = rms_key(dtype="float16", hidden=4096, num_tokens=128)  # nobody has float16, no {} entry
DEFAULT = {"dtype": "bfloat16", "d": 14336, "num_tokens": 1}  # silu_mul: only a {} entry


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return make_db(
        tmp_path / "presets.db",
        [
            P("rms_norm", H100, EXACT, {"block_sizes": [1]}),
            P("rms_norm", H100, rms_key(hidden=4096, num_tokens=128), {"block_sizes": [2]}),
            P("rms_norm", H200, FALLBACK, {"block_sizes": [4]}),
            P("silu_mul", H100, {}, {"block_sizes": [8]}),
        ],
        kernels={"rms_norm": RMS_SCHEMA, "silu_mul": SILU_SCHEMA},
        fallbacks={H100: [H200]},
    )


@pytest.fixture
def shapes_file(tmp_path: Path) -> Path:
    path = tmp_path / "keys.json"
    rms = [EXACT, NEAR_TOKENS, NEAR_HIDDEN, FAR, FALLBACK, MISS, dict(EXACT)]  # the last: a duplicate
    path.write_text(json.dumps({"rms_norm": rms, "silu_mul": [DEFAULT]}))
    return path


def coverage(*args: str) -> Any:
    return runner.invoke(app, ["coverage", *args], env={"COLUMNS": "300"})


def key_text(key: dict[str, Any]) -> str:
    return json.dumps(key, sort_keys=True, separators=(",", ":"))


def test_every_key_is_sorted_by_what_serving_would_do(db: Path, shapes_file: Path) -> None:
    result = coverage("--shapes", str(shapes_file), "--platform", H100, "--db", str(db), "--format", "json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)["coverage"]
    status = {(k["kernel"], k["key"]): k["status"] for k in doc["keys"]}
    assert status == {
        ("rms_norm", key_text(EXACT)): "exact",
        ("rms_norm", key_text(NEAR_TOKENS)): "near",
        ("rms_norm", key_text(NEAR_HIDDEN)): "near",
        ("rms_norm", key_text(FAR)): "far",
        ("rms_norm", key_text(FALLBACK)): "fallback",
        ("rms_norm", key_text(MISS)): "miss",
        ("silu_mul", key_text(DEFAULT)): "default",
    }  # the duplicate key counted once
    assert doc["summary"] == {
        "rms_norm": {"exact": 1, "near": 2, "fallback": 1, "default": 0, "far": 1, "miss": 1},
        "silu_mul": {"exact": 0, "near": 0, "fallback": 0, "default": 1, "far": 0, "miss": 0},
    }
    far = next(k for k in doc["keys"] if k["status"] == "far")
    assert far["served"] == f'{H100}:{key_text(rms_key(hidden=4096, num_tokens=128))} (ceil)'
    assert far["far_fields"] == {"num_tokens": [pytest.approx(2.9658, abs=1e-3), 1.0]}
    fallback = next(k for k in doc["keys"] if k["status"] == "fallback")
    assert fallback["served"].startswith(f"{H200}:")
    assert doc["policies"] == {"PRESETDB_ON_FAR": "default", "PRESETDB_ON_MISS": "default"}


def test_the_json_is_a_tuning_queue_of_the_gaps_that_refine_reads(db: Path, shapes_file: Path, tmp_path: Path) -> None:
    result = coverage("--shapes", str(shapes_file), "--platform", H100, "--db", str(db), "-f", "json")
    assert result.exit_code == 0, result.output
    gaps = tmp_path / "gaps.json"
    gaps.write_text(result.output)
    # Far and missed first (a miss ranks as 2**10 away), then by distance; exact keys are not gaps.
    assert queueing.shapes_from_queue([gaps], "rms_norm") == [MISS, FAR, NEAR_HIDDEN, NEAR_TOKENS, FALLBACK]
    assert queueing.shapes_from_queue([gaps], "silu_mul") == [DEFAULT]
    items = json.loads(result.output)["items"]
    assert [(i["far"], i["misses"], i["count"]) for i in items[:2]] == [(True, 1, 1), (True, 0, 1)]
    assert all(i["platform"] == H100 for i in items)


def test_the_table_counts_per_kernel_and_lists_the_gaps(db: Path, shapes_file: Path) -> None:
    result = coverage("--shapes", str(shapes_file), "--platform", H100, "--db", str(db), "--top", "2")
    assert result.exit_code == 0, result.output
    rows = {line.split("│")[1].strip(): [c.strip() for c in line.split("│")[2:-1]]
            for line in result.output.splitlines() if line.startswith(("│ rms_norm", "│ silu_mul"))}
    # keys, exact, near, fallback, default, far, miss, covered (exact + near)
    assert rows["rms_norm"] == ["6", "1", "2", "1", "0", "1", "1", "50%"]
    assert rows["silu_mul"] == ["1", "0", "0", "0", "1", "0", "0", "0%"]
    assert "gaps, ranked (2 of 6 not served by an exact key)" in result.output
    assert key_text(MISS) in result.output and key_text(FAR) in result.output
    assert key_text(NEAR_HIDDEN) not in result.output  # third: past --top 2
    assert "num_tokens 2.97 > 1" in result.output


def test_a_models_keys_come_from_the_registered_kernels(tmp_path: Path) -> None:
    from presetdb.helion.registry import get_kernel, load_kernel_modules
    from presetdb.offline.models import load_model

    load_kernel_modules()
    llama = load_model("llama-3-8b")
    stored = {"dtype": "bfloat16", "hidden": llama.hidden, "num_tokens": 1}
    path = make_db(tmp_path / "one.db", [P("rms_norm", H100, stored, {"block_sizes": [1]})],
                   kernels={"rms_norm": get_kernel("rms_norm").key_spec.to_schema()})
    result = coverage("--model", "llama-3-8b", "--kernel", "rms_norm", "--tokens", "1,2,37",
                      "--platform", H100, "--db", str(path), "-f", "json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)["coverage"]
    by_tokens = {json.loads(k["key"])["num_tokens"]: k["status"] for k in doc["keys"]}
    # 2 tokens: ceil clamps to 1, exactly 1 (log2) away, at the limit: near. 37: 5.2 away: far.
    assert by_tokens == {1: "exact", 2: "near", 37: "far"}
    assert {json.loads(k["key"])["hidden"] for k in doc["keys"]} == {llama.hidden}
    assert "--model llama-3-8b" in doc["source"]
    # Every kernel of the model: those the db has nothing of (registered, not stored) miss.
    result = coverage("--model", "llama-3-8b", "--tokens", "1", "--platform", H100, "--db", str(path), "-f", "json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)["coverage"]["summary"]
    assert set(summary) == {"matmul", "rms_norm", "silu_mul", "softmax"}
    assert summary["rms_norm"]["exact"] == 1
    for kernel in ("matmul", "silu_mul", "softmax"):
        assert summary[kernel]["miss"] == sum(summary[kernel].values()) > 0, kernel


def test_bad_input_is_named(db: Path, shapes_file: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"rms_norm": [EXACT, {"dtype": "bfloat16", "hidden": 4096}]}))
    result = coverage("--shapes", str(bad), "--platform", H100, "--db", str(db))
    message = str(result.exception)  # `presetdb` prints a PresetDBError as one line, exit code 1
    assert f"--shapes {bad}: rms_norm key 1" in message and "missing key field(s) ['num_tokens']" in message

    unknown = coverage("--shapes", str(shapes_file), "--platform", "nvidia_b300", "--db", str(db))
    assert "unknown platform 'nvidia_b300'" in str(unknown.exception)
    assert H100 in str(unknown.exception)  # the known ones are listed

    array = tmp_path / "array.json"
    array.write_text(json.dumps([EXACT]))
    no_kernel = coverage("--shapes", str(array), "--platform", H100, "--db", str(db))
    assert no_kernel.exit_code == 2 and "name it with one --kernel" in no_kernel.output
    one = coverage("--shapes", str(array), "--kernel", "rms_norm", "--platform", H100, "--db", str(db), "-f", "json")
    assert one.exit_code == 0 and json.loads(one.output)["coverage"]["summary"]["rms_norm"]["exact"] == 1

    stray = tmp_path / "stray.json"
    stray.write_text(json.dumps({"layer_norm": [EXACT]}))
    result = coverage("--shapes", str(stray), "--platform", H100, "--db", str(db))
    assert "unknown kernel 'layer_norm'" in str(result.exception)

    filtered = coverage("--shapes", str(shapes_file), "--kernel", "softmax", "--platform", H100, "--db", str(db))
    assert filtered.exit_code == 0 and "no shape keys to check" in filtered.output

    nothing = coverage("--platform", H100, "--db", str(db))
    assert nothing.exit_code == 2 and "give --model NAME" in nothing.output
    missing = coverage("--shapes", str(tmp_path / "nope.json"), "--kernel", "rms_norm", "--platform", H100)
    assert missing.exit_code == 2 and "no such file" in missing.output


COMMITTED = Path(__file__).resolve().parents[1] / "benchmarks/results/cpu/coverage_v2"
COMMITTED_HEAD = "0013"  # the embedded db's head when the files were written (their README)


@pytest.mark.parametrize("platform", [H100, H200])
def test_the_committed_held_out_coverage_holds_for_its_db(platform: str, tmp_path: Path) -> None:
    """benchmarks/results/cpu/coverage_v2 (quoted in docs/benchmarks.md) says what the db at
    COMMITTED_HEAD serves each held-out key; a change to those migrations or to matching
    makes it stale, and this fails."""
    from presetdb.store import migrate

    db = tmp_path / f"head_{COMMITTED_HEAD}.db"
    assert migrate.upgrade(db, COMMITTED_HEAD) == COMMITTED_HEAD
    shapes = Path(__file__).resolve().parents[1] / "benchmarks/shapes/heldout_v2.json"
    result = coverage("--shapes", str(shapes), "--platform", platform, "--db", str(db), "-f", "json")
    assert result.exit_code == 0, result.output
    now = json.loads(result.output)["coverage"]
    then = json.loads((COMMITTED / f"heldout_v2_{platform}.json").read_text())["coverage"]
    assert sum(sum(c.values()) for c in then["summary"].values()) == 115
    assert now["summary"] == then["summary"]
    assert [(k["key"], k["status"], k["served"]) for k in now["keys"]] == [
        (k["key"], k["status"], k["served"]) for k in then["keys"]
    ], "regenerate benchmarks/results/cpu/coverage_v2 (its README) and the figures in docs/benchmarks.md"
