"""Real files made on a GPU by benchmarks/gpu_make_samples.py (copied into
tests/fixtures/gpu/): each one imports cleanly. Skipped until the files are there."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from import_fixtures import FIXTURES, registry

from presetdb.offline.importers import import_files

GPU = FIXTURES / "gpu"
SAMPLES = sorted(
    p for p in [*GPU.glob("helion/*"), *GPU.glob("tune_rms_norm_*.json")] if p.name != "best_config_key.json"
)


@pytest.fixture
def resolver() -> Any:
    return registry()


@pytest.mark.skipif(not SAMPLES, reason="no GPU-made samples in tests/fixtures/gpu yet")
@pytest.mark.parametrize("sample", SAMPLES, ids=[p.name for p in SAMPLES])
def test_real_gpu_sample_imports(sample: Path, fresh_db: Path, resolver: Any) -> None:
    key = None
    if sample.suffix == ".best_config":
        key = json.loads((GPU / "helion" / "best_config_key.json").read_text())
    report = import_files(fresh_db, [sample], key=key, resolver=resolver)
    assert report.counts["added"] >= 1 and report.ok
