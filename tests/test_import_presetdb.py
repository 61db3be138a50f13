"""`presetdb import` of presetdb-results/1 files: rows, provenance, idempotency,
supersede, dry run, and row-level rejection of bad input with nothing written."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from import_fixtures import RESULTS, active, count, edited, load, registry, rows, table_dump
from typer.testing import CliRunner

from presetdb.cli import app
from presetdb.errors import ImportValidationError, UnknownPlatformError
from presetdb.offline.importers import import_files, parse_file

KEY_4096_16 = '{"dtype":"bfloat16","hidden":4096,"num_tokens":16}'


@pytest.fixture
def resolver() -> Any:
    return registry()


def test_import_stores_rows_timings_runners_up_and_provenance(fresh_db: Path, resolver: Any) -> None:
    report = import_files(fresh_db, [RESULTS], resolver=resolver)
    assert report.counts["added"] == 4 and report.ok
    stored = active(fresh_db)
    doc = load(RESULTS)
    assert len(stored) == 4
    for entry in doc["entries"]:
        row = stored[
            ("rms_norm", "nvidia_h100", json.dumps(entry["key"], sort_keys=True, separators=(",", ":")))
        ]
        assert row["config"] == entry["config"]
        assert row["latency_ms"] == entry.get("latency_ms")
        assert row["default_ms"] == entry.get("default_ms")
        assert row["reference_ms"] == entry.get("reference_ms")
        assert row["configs_tried"] == entry.get("configs_tried")
        assert [c for c, _ in row["runners_up"]] == [r["config"] for r in entry.get("runners_up", [])]
    (run,) = rows(
        fresh_db,
        "SELECT source, source_file, source_sha256, device_name, helion_version, seed, finished_at "
        "FROM tuning_runs",
    )
    assert run[0] == "import-presetdb" and run[1] == RESULTS.name and len(run[2]) == 64
    assert run[3:] == ("NVIDIA H100 80GB HBM3", "1.5.0", 1234, doc["run"]["finished_at"])
    (source_hash,) = {r[0] for r in rows(fresh_db, "SELECT kernel_source_hash FROM presets")}
    assert source_hash == doc["kernel"]["source_hash"]


def test_reimport_is_a_no_op(fresh_db: Path, resolver: Any) -> None:
    import_files(fresh_db, [RESULTS], resolver=resolver)
    before = table_dump(fresh_db)
    report = import_files(fresh_db, [RESULTS], resolver=resolver)
    assert report.counts == {"added": 0, "superseded": 0, "unchanged": 4, "invalid": 0}
    assert report.run_ids == []
    assert table_dump(fresh_db) == before


def test_changed_config_supersedes_and_keeps_history(fresh_db: Path, resolver: Any, tmp_path: Path) -> None:
    import_files(fresh_db, [RESULTS], resolver=resolver)

    def retune(doc: dict[str, Any]) -> None:
        doc["entries"][2]["config"]["block_sizes"] = [8]
        doc["entries"][2]["latency_ms"] = 0.0081

    newer = edited(RESULTS, tmp_path / "retuned.json", retune)
    report = import_files(fresh_db, [newer], resolver=resolver)
    assert (report.counts["added"], report.counts["superseded"], report.counts["unchanged"]) == (0, 1, 3)
    history = rows(
        fresh_db,
        "SELECT id, status, superseded_by, latency_ms FROM presets WHERE shape_key = ? ORDER BY id",
        KEY_4096_16,
    )
    (_, old_status, old_next, _), (new_id, new_status, new_next, new_latency) = history
    assert (old_status, old_next) == ("superseded", new_id)
    assert (new_status, new_next, new_latency) == ("active", None, 0.0081)
    assert active(fresh_db)[("rms_norm", "nvidia_h100", KEY_4096_16)]["config"]["block_sizes"] == [8]


def test_dry_run_reports_and_leaves_the_file_untouched(fresh_db: Path, resolver: Any, tmp_path: Path) -> None:
    import_files(fresh_db, [RESULTS], resolver=resolver)
    newer = edited(
        RESULTS, tmp_path / "retuned.json", lambda d: d["entries"][3]["config"].update(num_warps=16)
    )
    before = fresh_db.read_bytes()
    report = import_files(fresh_db, [newer], dry_run=True, resolver=resolver)
    assert (report.counts["superseded"], report.counts["unchanged"]) == (1, 3)
    assert [r.outcome for r in report.rows] == ["unchanged", "unchanged", "unchanged", "superseded"]
    assert fresh_db.read_bytes() == before
    assert count(fresh_db, "presets") == 4


def _corrupt(doc: dict[str, Any]) -> None:
    entries = doc["entries"]
    entries[1]["config"]["block_sizes"] = [3]  # not a power of two: ConfigSpec rejects it
    entries[2]["latency_ms"] = -1.0
    entries[3]["key"]["hidden"] = "wide"  # a nearest-policy field must be a number
    entries.append(dict(entries[1], config=dict(entries[1]["config"], block_sizes=[1])))  # duplicate key
    entries.append({"key": {"dtype": "bfloat16", "hidden": 64}, "config": entries[0]["config"]})


def test_invalid_rows_are_all_reported_and_nothing_is_written(
    fresh_db: Path, resolver: Any, tmp_path: Path
) -> None:
    bad = edited(RESULTS, tmp_path / "bad.json", _corrupt)
    before = table_dump(fresh_db)
    with pytest.raises(ImportValidationError) as info:
        import_files(fresh_db, [bad], resolver=resolver)
    problems = info.value.problems
    text = "\n".join(problems)
    assert "bad.json: row 2 (entries[1]): config:" in text and "block_sizes" in text
    assert "bad.json: row 3 (entries[2]): latency_ms:" in text
    assert "bad.json: row 4 (entries[3]): key:" in text
    assert "bad.json: row 5 (entries[4]): key: duplicate of row 2" in text
    assert "bad.json: row 6 (entries[5]): key: missing key field(s) ['num_tokens']" in text
    assert len(problems) == 5
    assert table_dump(fresh_db) == before  # all or nothing: the valid row 1 is not there either


@pytest.mark.parametrize(
    "value, reason",
    [(math.nan, "finite"), (0.0, "> 0"), (-0.5, "> 0"), (1e9, "implausibly large"), (math.inf, "finite")],
)
def test_bad_latencies_are_rejected(
    fresh_db: Path, resolver: Any, tmp_path: Path, value: float, reason: str
) -> None:
    def put(doc: dict[str, Any]) -> str:
        text = json.dumps(doc)
        return json.loads(text.replace('"default_ms": 0.0121', f'"default_ms": {json.dumps(value)}'))

    bad = edited(RESULTS, tmp_path / "bad.json", put)
    assert "default_ms" in bad.read_text()
    with pytest.raises(ImportValidationError) as info:
        import_files(fresh_db, [bad], resolver=resolver)
    assert len(info.value.problems) == 1
    assert "row 3 (entries[2]): default_ms:" in info.value.problems[0] and reason in info.value.problems[0]
    assert count(fresh_db, "presets") == 0


def test_unknown_platform_lists_the_known_ones(fresh_db: Path, resolver: Any, tmp_path: Path) -> None:
    other = edited(RESULTS, tmp_path / "tpu.json", lambda d: d.update(platform="google_tpu_v9"))
    with pytest.raises(UnknownPlatformError) as info:
        import_files(fresh_db, [other], resolver=resolver)
    message = str(info.value)
    assert "tpu.json" in message and "google_tpu_v9" in message and "nvidia_h100, nvidia_h200" in message


def test_header_schema_violations_name_the_field(tmp_path: Path) -> None:
    bad = edited(RESULTS, tmp_path / "bad.json", lambda d: d["run"].update(seed="many", color="blue"))
    with pytest.raises(ImportValidationError) as info:
        parse_file(bad)
    text = "\n".join(info.value.problems)
    assert "run.seed: 'many' is not of type 'integer', 'null'" in text
    assert "run: Additional properties are not allowed ('color' was unexpected)" in text


def test_newer_format_version_asks_for_an_upgrade(tmp_path: Path) -> None:
    future = edited(RESULTS, tmp_path / "future.json", lambda d: d.update(format="presetdb-results/2"))
    with pytest.raises(ImportValidationError, match="presetdb-results/2.*upgrade presetdb"):
        parse_file(future)


def test_entries_stream_one_at_a_time(tmp_path: Path) -> None:
    """A file whose entries come before its header still parses (two passes), and the
    streaming reader handles numbers split across read chunks."""
    from presetdb.offline.importers import jsonstream

    doc = load(RESULTS)
    reordered = {"entries": doc["entries"], **{k: v for k, v in doc.items() if k != "entries"}}
    path = tmp_path / "reordered.json"
    path.write_text(json.dumps(reordered))
    parsed = parse_file(path)
    assert [r.latency_ms for r in parsed.rows] == [e.get("latency_ms") for e in doc["entries"]]
    with path.open() as fh:
        stream = jsonstream.JsonStream(fh, "x", chunk=7)
        items = []
        for member in stream.members():
            items.append((member, stream.value()))
    assert dict(items) == reordered


def test_parsers_do_not_import_torch() -> None:
    code = (
        "import sys; from presetdb.offline.importers import parse_file; "
        f"p = parse_file({str(RESULTS)!r}); list(p.rows); "
        "assert 'torch' not in sys.modules and 'helion' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_cli_dry_run_prints_counts_and_rows(fresh_db: Path, tmp_path: Path) -> None:
    bad = edited(RESULTS, tmp_path / "bad.json", lambda d: d["entries"][2].update(latency_ms=-3))
    result = CliRunner().invoke(app, ["import", str(RESULTS), str(bad), "--db", str(fresh_db), "--dry-run"])
    assert result.exit_code == 1, result.output
    text = " ".join(result.output.split())
    assert "invalid" in text and "bad.json: row 3 (entries[2]): latency_ms" in text
    assert "4 added" in text and "nothing written" in text
    assert count(fresh_db, "presets") == 0
    ok = CliRunner().invoke(app, ["import", str(RESULTS), "--db", str(fresh_db)])
    assert ok.exit_code == 0, ok.output
    assert "4 added, 0 superseded, 0 unchanged, 0 invalid" in " ".join(ok.output.split())


def test_commands_have_examples() -> None:
    for command in ("import", "export", "new-migration", "tune"):
        result = CliRunner().invoke(app, [command, "--help"])
        assert result.exit_code == 0
        assert "Example:" in result.output, command
