"""`presetdb export`: what it writes imports back to the same rows."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from import_fixtures import RESULTS, VLLM, active, edited, load, registry, rows
from typer.testing import CliRunner

from presetdb.cli import app
from presetdb.errors import UnknownKernelError
from presetdb.offline.export import export
from presetdb.offline.importers import detect_format, import_files
from presetdb.store import migrate


@pytest.fixture
def resolver() -> Any:
    return registry()


def _new_db(path: Path) -> Path:
    migrate.upgrade(path, seed_data=False)
    return path


def test_presetdb_round_trip_keeps_configs_timings_and_runners_up(
    fresh_db: Path, resolver: Any, tmp_path: Path
) -> None:
    import_files(fresh_db, [RESULTS], resolver=resolver)
    (path,) = export(fresh_db, "rms_norm", "nvidia_h100", "presetdb", tmp_path / "out")
    assert path == tmp_path / "out" / "rms_norm" / "nvidia_h100.json"
    assert detect_format(path) == "presetdb"
    doc = load(path)
    assert doc["run"]["device_name"] == "NVIDIA H100 80GB HBM3" and doc["run"]["seed"] == 1234
    assert doc["kernel"]["source_hash"] == load(RESULTS)["kernel"]["source_hash"]
    again = _new_db(tmp_path / "again.db")
    import_files(again, [path], resolver=resolver)
    assert active(again) == active(fresh_db)
    # Provenance survives the trip too.
    fields = "device_name, helion_version, seed, benchmark_method, started_at, finished_at"
    assert rows(again, f"SELECT {fields} FROM tuning_runs") == rows(
        fresh_db, f"SELECT {fields} FROM tuning_runs"
    )


def test_presetdb_export_of_several_runs_writes_one_file_per_run(
    fresh_db: Path, resolver: Any, tmp_path: Path
) -> None:
    import_files(fresh_db, [RESULTS], resolver=resolver)
    newer = edited(
        RESULTS, tmp_path / "retuned.json", lambda d: d["entries"][1]["config"].update(num_warps=2)
    )
    import_files(fresh_db, [newer], resolver=resolver)
    paths = export(fresh_db, "rms_norm", "nvidia_h100", "presetdb", tmp_path / "out")
    assert [p.name for p in paths] == ["nvidia_h100.run1.json", "nvidia_h100.run2.json"]
    again = _new_db(tmp_path / "again.db")
    import_files(again, paths, resolver=resolver)
    assert active(again) == active(fresh_db)


def test_vllm_round_trip_keeps_keys_and_configs(fresh_db: Path, resolver: Any, tmp_path: Path) -> None:
    import_files(fresh_db, [VLLM], resolver=resolver)
    (path,) = export(fresh_db, "rms_norm", "nvidia_h100", "vllm", tmp_path / "configs")
    assert path == tmp_path / "configs" / "rms_norm" / "nvidia_h100.json"
    exported = load(path)
    assert isinstance(exported, list) and exported[0] == {"key": {}, "config": exported[0]["config"]}
    assert sorted(json.dumps(e, sort_keys=True) for e in exported) == sorted(
        json.dumps(e, sort_keys=True) for e in load(VLLM)
    )
    again = _new_db(tmp_path / "again.db")
    import_files(again, [path], resolver=resolver)
    assert active(again) == active(fresh_db)


def test_export_cli_and_unknown_names(fresh_db: Path, resolver: Any, tmp_path: Path) -> None:
    import_files(fresh_db, [RESULTS], resolver=resolver)
    out = tmp_path / "cli"
    result = CliRunner().invoke(
        app,
        [
            "export",
            "--db",
            str(fresh_db),
            "--kernel",
            "rms_norm",
            "--platform",
            "nvidia_h100",
            "--format",
            "vllm",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    assert (out / "rms_norm" / "nvidia_h100.json").exists()
    with pytest.raises(UnknownKernelError, match="this db has: rms_norm"):
        export(fresh_db, "softmax2", "nvidia_h100", "vllm", out)
