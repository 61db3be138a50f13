"""The `slower` audit and `presetdb show` flag presets slower than Helion's default or
PyTorch, naming the timing method the three were measured with (example db of
tests/audit_fixtures.py: silu_mul slower than its default, matmul slower than cuBLAS)."""

from __future__ import annotations

import json
from pathlib import Path

from audit_fixtures import seed_example_db
from typer.testing import CliRunner

from presetdb.audit.canned import run_audit
from presetdb.audit.readonly import ReadOnlyDB
from presetdb.cli import app


def test_slower_audit_names_the_timing_and_show_flags_the_preset(tmp_path: Path) -> None:
    db = seed_example_db(tmp_path / "presets.db")
    with ReadOnlyDB(db) as ro:
        rows = run_audit(ro, "slower").records()
    assert rows and all(r["benchmark_method"] == "triton do_bench median, 25 ms warm-up" for r in rows)
    silu = next(r for r in rows if r["kernel"] == "silu_mul")
    assert silu["slower_than"] == "default"
    runner = CliRunner()
    shown = runner.invoke(app, ["show", str(silu["preset_id"]), "--db", str(db)], env={"COLUMNS": "300"})
    assert shown.exit_code == 0, shown.output
    assert "slower than Helion's default config (1.11x its time) under the same timing" in shown.output
    assert "triton do_bench median, 25 ms warm-up" in shown.output
    # A preset faster than both is not flagged.
    query = (
        "SELECT preset_id FROM v_active_presets WHERE kernel = 'rms_norm' "
        "AND latency_ms < default_ms AND latency_ms < reference_ms LIMIT 1"
    )
    listed = runner.invoke(app, ["sql", query, "--db", str(db), "--format", "json"])
    assert listed.exit_code == 0, listed.output
    fast = json.loads(listed.stdout)[0]["preset_id"]
    shown = runner.invoke(app, ["show", str(fast), "--db", str(db)], env={"COLUMNS": "300"})
    assert shown.exit_code == 0 and "slower than" not in shown.output
