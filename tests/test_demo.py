"""`presetdb demo` (the README's `make run`) on CPU: the embedded default db, the H100
presets in the Triton interpreter, every example kernel through torch.ops.presetdb."""

from __future__ import annotations

import json
from typing import Any

import pytest

pytest.importorskip("torch")

from presetdb.cli import demo
from presetdb.keys import canonical_key


def test_demo_serves_exact_nearest_and_default_rows_from_the_shipped_presets(monkeypatch, capsys) -> None:
    monkeypatch.setenv("PRESETDB_PLATFORM", "nvidia_h100")
    tables: dict[str, list[demo.Row]] = {}
    monkeypatch.setattr(demo, "_print_table", lambda name, rows, on_gpu: tables.__setitem__(name, rows))

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
