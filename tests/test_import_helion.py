"""`presetdb import` of Helion's local cache entries (*.best_config) and AOT
tuned_configs_*.json files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from import_fixtures import (
    AOT,
    BEST_CONFIG,
    CACHE_KEY,
    active,
    count,
    current_best_config,
    load,
    registry,
    rows,
)

from presetdb.errors import ImportValidationError
from presetdb.offline.importers import detect_format, import_files
from presetdb.offline.importers.helion_aot import split_hardware_id

CACHE_KEY_TEXT = json.dumps(CACHE_KEY, sort_keys=True, separators=(",", ":"))


@pytest.fixture
def resolver() -> Any:
    return registry()


def test_best_config_imports_with_key_from_the_command_line(
    fresh_db: Path, resolver: Any, tmp_path: Path
) -> None:
    assert detect_format(BEST_CONFIG) == "helion-cache"
    fields = load(BEST_CONFIG)["key"]["fields"]
    report = import_files(fresh_db, [current_best_config(tmp_path)], key=CACHE_KEY, resolver=resolver)
    assert report.counts["added"] == 1
    (((kernel, platform, key), stored),) = active(fresh_db).items()
    assert (kernel, key) == ("rms_norm", CACHE_KEY_TEXT) and platform.startswith("nvidia_")
    file_config = json.loads(load(BEST_CONFIG)["config"])
    assert stored["config"] == resolver.get("rms_norm").check_config(file_config, CACHE_KEY)
    (run,) = rows(fresh_db, "SELECT source, device_name, cuda_version FROM tuning_runs")
    assert run == ("import-helion-cache", fields["hardware"], fields["runtime_name"])
    # The kernel was recognised by Helion's source hash (no --kernel given) and the stored
    # hash is the registered kernel's.
    (stored_hash,) = rows(fresh_db, "SELECT kernel_source_hash FROM presets")[0]
    assert stored_hash == resolver.get("rms_norm").source_hash()


def test_best_config_without_key_says_to_pass_one(fresh_db: Path, resolver: Any, tmp_path: Path) -> None:
    # Named by its cache key, the file is a Helion cache entry even without --key (see
    # tests/test_helion_cache_entries.py); under another name only a preset could come of it.
    renamed = tmp_path / "renamed.best_config"
    shutil.copy(current_best_config(tmp_path), renamed)
    with pytest.raises(ImportValidationError) as info:
        import_files(fresh_db, [renamed], resolver=resolver)
    (problem,) = info.value.problems
    assert problem.startswith("renamed.best_config: row 1 (config): key:") and "--key" in problem
    assert count(fresh_db, "presets") == 0 and count(fresh_db, "helion_cache_entries") == 0


def test_best_config_for_an_unknown_source_needs_kernel(
    fresh_db: Path, resolver: Any, tmp_path: Path
) -> None:
    data = load(BEST_CONFIG)
    data["key"]["fields"]["kernel_source_hash"] = "0" * 64
    other = tmp_path / "abc.best_config"
    other.write_text(json.dumps(data))
    with pytest.raises(Exception, match="pass --kernel"):
        import_files(fresh_db, [other], key=CACHE_KEY, resolver=resolver)
    report = import_files(fresh_db, [other], key=CACHE_KEY, kernel="rms_norm", resolver=resolver)
    assert report.counts["added"] == 1
    assert any("different source" in w for w in report.warnings)


def test_best_config_with_a_config_helion_rejects(fresh_db: Path, resolver: Any, tmp_path: Path) -> None:
    data = load(current_best_config(tmp_path))
    config = json.loads(data["config"])
    config["pid_type"] = "sideways"
    data["config"] = json.dumps(config, indent=2)
    bad = tmp_path / "bad.best_config"
    bad.write_text(json.dumps(data))
    with pytest.raises(ImportValidationError) as info:
        import_files(fresh_db, [bad], key=CACHE_KEY, resolver=resolver)
    (problem,) = info.value.problems
    assert problem.startswith("bad.best_config: row 1 (config): config:") and "pid_type" in problem


def test_aot_file_derives_keys_from_shape_features_and_keeps_the_fastest(
    fresh_db: Path, resolver: Any
) -> None:
    assert detect_format(AOT) == "helion-aot"
    entries = load(AOT)["rms_norm"]
    fastest: dict[str, dict[str, Any]] = {}
    for entry in entries:  # rms_norm's x is arg0: (num_tokens, hidden)
        f = entry["shape_features"]
        key = json.dumps(
            {
                "dtype": f["arg0_dtype"].removeprefix("torch."),
                "hidden": f["arg0_dim1"],
                "num_tokens": f["arg0_dim0"],
            },
            sort_keys=True,
            separators=(",", ":"),
        )
        if key not in fastest or entry["timing_ms"] < fastest[key]["timing_ms"]:
            fastest[key] = entry
    report = import_files(fresh_db, [AOT], resolver=resolver)
    assert report.counts["added"] == len(fastest)
    stored = {key: row for (_, _, key), row in active(fresh_db).items()}
    assert set(stored) == set(fastest)
    for key, entry in fastest.items():
        assert stored[key]["latency_ms"] == entry["timing_ms"]
        assert stored[key]["config"] == resolver.get("rms_norm").check_config(
            entry["config"], json.loads(key)
        )
    _, device, runtime = split_hardware_id(entries[0]["shape_key"]["hardware_id"])
    (run,) = rows(fresh_db, "SELECT source, device_name, cuda_version FROM tuning_runs")
    assert run == ("import-helion-aot", device, runtime)


def test_aot_keeps_the_fastest_config_of_a_shape(fresh_db: Path, resolver: Any, tmp_path: Path) -> None:
    data = load(AOT)
    first = data["rms_norm"][0]
    slower = json.loads(json.dumps(first))
    slower["timing_ms"] = first["timing_ms"] * 3
    slower["config"]["num_warps"] = 1 if first["config"].get("num_warps") != 1 else 2
    data["rms_norm"] = [slower, *data["rms_norm"]]
    path = tmp_path / AOT.name
    path.write_text(json.dumps(data))
    import_files(fresh_db, [path], resolver=resolver)
    latencies = {row["latency_ms"] for row in active(fresh_db).values()}
    assert first["timing_ms"] in latencies and slower["timing_ms"] not in latencies


def test_aot_detection_by_content_and_unknown_kernel_rows(
    fresh_db: Path, resolver: Any, tmp_path: Path
) -> None:
    data = load(AOT)
    data["layer_norm"] = data["rms_norm"][:1]
    renamed = tmp_path / "aot.json"
    renamed.write_text(json.dumps(data, indent=2))
    assert detect_format(renamed) == "helion-aot"
    with pytest.raises(ImportValidationError) as info:
        import_files(fresh_db, [renamed], resolver=resolver)
    (problem,) = info.value.problems
    assert "(layer_norm[0]): kernel: unknown kernel 'layer_norm'" in problem
    # --kernel picks one kernel's entries out of a multi-kernel file.
    report = import_files(fresh_db, [renamed], kernel="rms_norm", resolver=resolver)
    assert report.counts["added"] >= 1 and report.counts["invalid"] == 0


def test_hardware_ids() -> None:
    assert split_hardware_id("cuda_NVIDIA_H100_80GB_HBM3_12.8") == ("cuda", "NVIDIA H100 80GB HBM3", "12.8")
    assert split_hardware_id("rocm_gfx942_6.3.42131") == ("rocm", "gfx942", "6.3.42131")


def test_format_option_overrides_detection(fresh_db: Path, resolver: Any, tmp_path: Path) -> None:
    plain = tmp_path / "entry.json"
    shutil.copy(current_best_config(tmp_path), plain)
    report = import_files(fresh_db, [plain], fmt="helion-cache", key=CACHE_KEY, resolver=resolver)
    assert report.counts["added"] == 1
    with pytest.raises(ImportValidationError, match="--key applies to Helion"):
        import_files(fresh_db, [plain], fmt="presetdb", key=CACHE_KEY, resolver=resolver)
