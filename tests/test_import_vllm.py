"""`presetdb import` of vLLM's configs/<kernel>/<platform>.json files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from import_fixtures import VLLM, active, count, load, registry, rows

from presetdb.errors import ImportValidationError, UnknownPlatformError
from presetdb.offline.importers import detect_format, import_files


@pytest.fixture
def resolver() -> Any:
    return registry()


def test_vllm_file_imports_with_kernel_and_platform_from_its_path(fresh_db: Path, resolver: Any) -> None:
    assert detect_format(VLLM) == "vllm"
    report = import_files(fresh_db, [VLLM], resolver=resolver)
    entries = load(VLLM)
    assert report.counts["added"] == len(entries) == 5
    stored = active(fresh_db)
    for entry in entries:
        key = json.dumps(entry["key"], sort_keys=True, separators=(",", ":"))
        row = stored[("rms_norm", "nvidia_h100", key)]
        assert row["config"] == entry["config"]
        assert row["latency_ms"] is None  # vLLM files carry no timings
    assert ("rms_norm", "nvidia_h100", "{}") in stored  # {} is the default entry
    assert rows(fresh_db, "SELECT source, source_file, device_name FROM tuning_runs") == [
        ("import-vllm", "nvidia_h100.json", None)
    ]


def test_sku_file_names_resolve_through_platform_aliases(
    fresh_db: Path, resolver: Any, tmp_path: Path
) -> None:
    sku = tmp_path / "configs" / "rms_norm" / "nvidia_h100_80gb_hbm3.json"
    sku.parent.mkdir(parents=True)
    shutil.copy(VLLM, sku)
    import_files(fresh_db, [sku], resolver=resolver)
    assert {p for (_, p, _) in active(fresh_db)} == {"nvidia_h100"}


def test_unknown_platform_file_name(fresh_db: Path, resolver: Any, tmp_path: Path) -> None:
    odd = tmp_path / "configs" / "rms_norm" / "acme_x1.json"
    odd.parent.mkdir(parents=True)
    shutil.copy(VLLM, odd)
    with pytest.raises(UnknownPlatformError, match="acme_x1.*known platforms: .*nvidia_h100.*--platform"):
        import_files(fresh_db, [odd], resolver=resolver)
    import_files(fresh_db, [odd], platform="nvidia_h200", resolver=resolver)
    assert {p for (_, p, _) in active(fresh_db)} == {"nvidia_h200"}


def test_unknown_kernel_directory_is_imported_unverified(
    fresh_db: Path, resolver: Any, tmp_path: Path
) -> None:
    odd = tmp_path / "configs" / "fused_moe" / "nvidia_h100.json"
    odd.parent.mkdir(parents=True)
    shutil.copy(VLLM, odd)
    report = import_files(fresh_db, [odd], resolver=resolver)
    [part] = report.file_summaries
    assert (part.kernel, part.verified, part.counts["added"]) == ("fused_moe", False, 5)
    assert rows(fresh_db, "SELECT DISTINCT verified FROM v_active_presets WHERE kernel = 'fused_moe'") == [(0,)]
    # --kernel names a registered kernel: validated against it, stored verified
    report = import_files(fresh_db, [odd], kernel="rms_norm", resolver=resolver)
    assert report.counts["added"] == 5
    assert rows(fresh_db, "SELECT DISTINCT verified FROM v_active_presets WHERE kernel = 'rms_norm'") == [(1,)]


def test_invalid_vllm_rows_are_reported_by_position(fresh_db: Path, resolver: Any, tmp_path: Path) -> None:
    entries = load(VLLM)
    entries[1]["config"]["block_sizes"] = [1, 2]
    entries[2]["config"] = "fast"
    del entries[3]["key"]
    entries[4]["key"]["dtype"] = ["bfloat16"]
    bad = tmp_path / "configs" / "rms_norm" / "nvidia_h100.json"
    bad.parent.mkdir(parents=True)
    bad.write_text(json.dumps(entries, indent=2))
    with pytest.raises(ImportValidationError) as info:
        import_files(fresh_db, [bad], resolver=resolver)
    text = "\n".join(info.value.problems)
    assert "nvidia_h100.json: row 2 ([1]): config:" in text and "block_sizes" in text
    assert "row 3 ([2]): config: missing or not an object" in text
    assert "row 4 ([3]): key: missing or not an object" in text
    assert "row 5 ([4]): key:" in text and "dtype" in text
    assert len(info.value.problems) == 4
    assert count(fresh_db, "presets") == 0


def test_old_string_keyed_layout_is_read(fresh_db: Path, resolver: Any, tmp_path: Path) -> None:
    old = tmp_path / "configs" / "rms_norm" / "nvidia_h100.json"
    old.parent.mkdir(parents=True)
    config = load(VLLM)[0]["config"]
    old.write_text(json.dumps({"default": config}))
    report = import_files(fresh_db, [old], resolver=resolver)
    assert report.counts["added"] == 1
    assert ("rms_norm", "nvidia_h100", "{}") in active(fresh_db)


def test_big_files_are_read_a_row_at_a_time(tmp_path: Path) -> None:
    """Parsing keeps one entry in memory, not the file: peak allocation stays far below
    the file's size."""
    import tracemalloc

    from presetdb.offline.importers import parse_file

    config = load(VLLM)[1]["config"]
    big = tmp_path / "configs" / "rms_norm" / "nvidia_h100.json"
    big.parent.mkdir(parents=True)
    with big.open("w") as fh:
        fh.write("[\n")
        for i in range(20_000):
            sep = ",\n" if i else ""
            entry = {"key": {"dtype": "bfloat16", "hidden": 64 + i, "num_tokens": 1}, "config": config}
            fh.write(sep + json.dumps(entry, indent=2))
        fh.write("\n]\n")
    size = big.stat().st_size
    assert size > 10_000_000
    tracemalloc.start()
    seen = sum(1 for row in parse_file(big).rows if row.config)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert seen == 20_000
    assert peak < size // 4, (peak, size)  # the sha256 pass reads 1 MiB chunks
