"""The held-out coverage figures quoted in docs/benchmarks.md hold for the db that ships.

`benchmarks/results/nvidia_h100/coverage/heldout_eval_h100_own_default/` measured, per
held-out shape, the config the embedded db served on an H100. A later migration that
changes what one of those shapes is served makes the figure stale: the evaluation must be
run again (held-out discipline: a shipped change is evaluated, never assumed). And the one
chosen shape the run could not measure must get, under the shipped default far policy,
Helion's default config, which is what makes it meet the 0.95x target by construction.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from picker_fixtures import H100, picker_factory

import presetdb.kernels  # noqa: F401  (registers the example kernels)
from presetdb.helion.registry import get_kernel
from presetdb.settings import Settings
from presetdb.store import default_db

RUN = Path(__file__).resolve().parents[1] / "benchmarks/results/nvidia_h100/coverage/heldout_eval_h100_own_default"
make_picker_fixture = pytest.fixture(picker_factory, name="make_picker")


@pytest.fixture(scope="module")
def result() -> dict[str, Any]:
    return json.loads((RUN / "coverage_eval.json").read_text())


@pytest.fixture
def shipped(make_picker: Any) -> Any:
    """The picker an H100 server has over the shipped (embedded) db alone."""
    return make_picker(default=default_db.default_db_path(), platform=H100)


def _served(picker: Any, kernel: str, key: dict[str, Any]) -> Any:
    spec = get_kernel(kernel).key_spec
    return picker.resolve(kernel, spec, tuple(key[n] for n in spec.names))


def test_the_shipped_db_serves_every_measured_shape_what_was_measured(shipped: Any, result: dict[str, Any]) -> None:
    rows = [r for r in result["rows"] if "error" not in r]
    assert len(rows) == 23
    for row in rows:
        choice = _served(shipped, row["kernel"], row["key"])
        assert choice is not None
        served = f"{choice.platform}:{choice.preset.shape_key}"
        assert (served, choice.far) == (row["served_key"], row["far"]), (
            f"{row['kernel']} {row['key']}: the shipped db now serves {served} (far={choice.far}); the "
            f"evaluation in {RUN.name} measured {row['served_key']} (far={row['far']}). Run the held-out "
            "coverage evaluation again (benchmarks/gpu/run_coverage.sh) and update docs/benchmarks.md"
        )


def test_the_unmeasured_shape_is_a_far_match_so_the_default_policy_serves_helions_default(
    shipped: Any, result: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    measured = {(r["kernel"], json.dumps(r["key"], sort_keys=True)) for r in result["rows"] if "error" not in r}
    missing = [(k, key) for k, keys in result["chosen"].items() for key in keys
               if (k, json.dumps(key, sort_keys=True)) not in measured]
    assert missing == [("softmax", {"dtype": "bfloat16", "n": 256000, "num_rows": 4096})]
    monkeypatch.delenv("PRESETDB_ON_FAR", raising=False)
    assert Settings.from_env().on_far == "default"  # what a far call gets: tests/test_coverage_guard.py
    for kernel, key in missing:
        choice = _served(shipped, kernel, key)
        assert choice is not None and choice.far and "n" in choice.far_fields
