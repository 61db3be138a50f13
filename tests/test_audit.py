"""Canned audits: the .sql files' headers, what each audit finds in the example db
(tests/audit_fixtures.py), parameters, the summary and the `presetdb audit` command."""

from __future__ import annotations

import csv
import importlib.metadata
import io
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from audit_fixtures import (
    CFG_MID,
    KEY_8192,
    MATMUL_KEY,
    MATMUL_SOURCE,
    RUNNING,
    seed_example_db,
    sha256_file,
    ship_copy,
)
from typer.testing import CliRunner

from presetdb.audit import canned as audit
from presetdb.audit.canned import parse_audit, run_audit
from presetdb.audit.readonly import ReadOnlyDB
from presetdb.cli import app
from presetdb.errors import AuditError, NotADatabaseError, SchemaTooOldError
from presetdb.keys import canonical_key
from presetdb.store import migrate
from presetdb.store.records import config_sha256

EXPECTED_AUDITS = {
    "coverage",
    "stale",
    "slower",
    "missing_provenance",
    "config_reuse",
    "quarantined",
    "most_wanted",
    "far",
    "history",
    "tuning_cost",
    "unverified",
    "helion_cache",
}


@pytest.fixture(scope="module")
def example(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("audit")
    return ship_copy(seed_example_db(folder / "example.db"), folder / "presets.db")


@pytest.fixture
def db(example: Path):  # type: ignore[no-untyped-def]
    with ReadOnlyDB(example) as opened:
        yield opened


def records(db: ReadOnlyDB, name: str, **params: object) -> list[dict[str, object]]:
    return run_audit(db, name, params).records()


# ---------------------------------------------------------------- the .sql files


def test_every_audit_is_packaged_with_a_complete_header() -> None:
    found = audit.audits()
    assert set(found) == EXPECTED_AUDITS
    for a in found.values():
        assert a.title and a.purpose and a.columns and a.highlight, a.name
        assert a.text.startswith("-- title:"), a.name
        assert set(a.params) == set(audit.named_params(a.sql)), a.name


@pytest.mark.parametrize("name", sorted(EXPECTED_AUDITS))
def test_result_columns_match_the_header(db: ReadOnlyDB, fresh_db: Path, name: str) -> None:
    declared = list(audit.get_audit(name).columns)
    assert run_audit(db, name, {}).columns == declared
    with ReadOnlyDB(fresh_db) as empty:  # an empty store: no rows, same columns
        result = run_audit(empty, name, {})
        assert result.columns == declared and result.rows == []


def test_highlight_fields_are_result_columns() -> None:
    for a in audit.audits().values():
        fields = {f.split("}")[0] for f in a.highlight.split("{")[1:]}
        assert fields <= set(a.columns), (a.name, fields - set(a.columns))


def test_header_params_must_match_the_query() -> None:
    text = (
        "-- title: t\n-- purpose: p\n-- params: none\n-- columns:\n--   x: x\n"
        "-- highlight: {x}\nSELECT :x AS x"
    )
    with pytest.raises(AuditError, match="differ from the query"):
        parse_audit("bad", text)
    with pytest.raises(AuditError, match="lacks '-- title:'"):
        parse_audit("bad", "-- purpose: p\nSELECT 1")
    ok = parse_audit("ok", text.replace("-- params: none", "-- params:\n--   x: the x"))
    assert ok.params == {"x": "the x"} and ok.sql == "SELECT :x AS x"


def test_no_sql_is_built_from_strings() -> None:
    # Values reach the canned queries as parameters only: no format fields in the SQL.
    for a in audit.audits().values():
        assert "{" not in a.sql.replace("'{}'", "").replace("{}", ""), a.name


# ---------------------------------------------------------------- what each audit finds


def test_coverage_lists_gaps_first(db: ReadOnlyDB) -> None:
    rows = records(db, "coverage")
    assert (rows[0]["kernel"], rows[0]["platform"], rows[0]["active_presets"]) == (
        "matmul",
        "nvidia_h200",
        0,
    )
    by_pair = {(r["kernel"], r["platform"]): r for r in rows}
    assert len(by_pair) == 6  # 3 kernels x 2 platforms holding presets
    rms = by_pair[("rms_norm", "nvidia_h100")]
    assert (rms["active_presets"], rms["has_default"], rms["quarantined"], rms["superseded"]) == (
        5,
        1,
        1,
        1,
    )
    assert by_pair[("rms_norm", "nvidia_h200")]["has_default"] == 0


def test_stale_compares_public_versions(db: ReadOnlyDB) -> None:
    rows = records(db, "stale", **RUNNING)
    assert [(r["kernel"], r["shape_key"], r["reason"]) for r in rows] == [
        ("rms_norm", canonical_key(KEY_8192), "helion 1.4.0 != 1.5.0")
    ]
    # The local part of a version (+cu128) does not count.
    assert records(db, "stale", **{**RUNNING, "torch_version": "2.11.0+cu130"}) == rows
    newer = records(db, "stale", **{**RUNNING, "triton_version": "3.7.0"})
    assert len(newer) == 8  # every active row with provenance; vLLM imports have none
    assert all("triton 3.6.0 != 3.7.0" in str(r["reason"]) for r in newer)
    # Empty parameters skip a comparison.
    assert records(db, "stale", helion_version="", triton_version="", torch_version="") == []


def test_stale_source_hashes(db: ReadOnlyDB) -> None:
    hashes = {"rms_norm": "0" * 64, "matmul": MATMUL_SOURCE}
    blank = dict.fromkeys(RUNNING, "")
    rows = records(db, "stale", **blank, source_hashes=hashes)
    assert {r["kernel"] for r in rows} == {"rms_norm"}
    assert {r["platform"] for r in rows} == {"nvidia_h100"}  # NULL hashes are not "changed"
    assert all(r["reason"] == "kernel source changed" for r in rows)
    with pytest.raises(AuditError, match="JSON object"):
        records(db, "stale", source_hashes="[1, 2]")


def test_stale_fills_running_versions_from_package_metadata(db: ReadOnlyDB) -> None:
    versions = audit.running_versions()
    assert set(versions) == {"helion_version", "triton_version", "torch_version"}
    assert versions["helion_version"] == importlib.metadata.version("helion")
    params = audit.audit_params(audit.get_audit("stale"), {})
    assert params["helion_version"] == versions["helion_version"]
    assert params["source_hashes"] is None  # only --check-source fills it


def test_slower(db: ReadOnlyDB) -> None:
    rows = {(r["kernel"], r["shape_key"]): r for r in records(db, "slower")}
    silu = rows[("silu_mul", '{"dtype":"bfloat16","hidden":11008}')]
    assert silu["slower_than"] == "default" and silu["vs_default"] == pytest.approx(1.111, abs=1e-3)
    mm = rows[("matmul", canonical_key(MATMUL_KEY))]
    assert mm["slower_than"] == "reference" and mm["vs_reference"] == pytest.approx(2.278, abs=1e-3)
    assert all(r["kernel"] != "rms_norm" for r in rows.values())


def test_missing_provenance(db: ReadOnlyDB) -> None:
    rows = records(db, "missing_provenance")
    assert {r["platform"] for r in rows} == {"nvidia_h200"} and len(rows) == 2
    assert all(r["source"] == "import-vllm" and r["missing_count"] == 8 for r in rows)
    assert "helion_version" in str(rows[0]["missing"]) and "latency_ms" in str(rows[0]["missing"])


def test_config_reuse(db: ReadOnlyDB) -> None:
    top = records(db, "config_reuse")[0]
    assert top["config_sha256"] == config_sha256(CFG_MID)
    assert top["active_keys"] == 4 and top["platforms"] == "nvidia_h100,nvidia_h200"


def test_quarantined(db: ReadOnlyDB) -> None:
    rows = records(db, "quarantined")
    assert len(rows) == 1
    assert "compile failed" in str(rows[0]["status_reason"]) and rows[0]["has_active"] == 1


def test_most_wanted(db: ReadOnlyDB) -> None:
    rows = records(db, "most_wanted")
    assert [r["count"] for r in rows] == [42, 7, 3, 2]
    assert [r["covered_now"] for r in rows] == [0, 0, 0, 1]


def test_history_of_one_key(db: ReadOnlyDB) -> None:
    # Any spelling of the key: it is canonicalised before it reaches the query.
    rows = records(
        db,
        "history",
        kernel="matmul",
        platform="nvidia_h100",
        shape_key='{"n": 4096, "m": 4096, "k": 4096, "dtype": "bfloat16"}',
    )
    assert [r["status"] for r in rows] == ["superseded", "active"]
    assert rows[0]["superseded_by"] == rows[1]["preset_id"]
    assert len(records(db, "history")) == 13  # no parameters: every row


def test_tuning_cost(db: ReadOnlyDB) -> None:
    rows = {(r["kernel"], r["platform"]): r for r in records(db, "tuning_cost")}
    mm = rows[("matmul", "nvidia_h100")]
    assert (mm["presets"], mm["runs"], mm["tuning_seconds"]) == (3, 1, 2860.0)
    rms = rows[("rms_norm", "nvidia_h100")]
    assert (rms["presets"], rms["runs"], rms["tuning_seconds"]) == (7, 2, 548.5)
    assert rows[("rms_norm", "nvidia_h200")]["tuning_seconds"] is None
    assert next(iter(rows)) == ("matmul", "nvidia_h100")  # most expensive first


def test_unknown_audit_and_parameter(db: ReadOnlyDB) -> None:
    with pytest.raises(AuditError, match="available: coverage, stale"):
        run_audit(db, "nope", {})
    with pytest.raises(AuditError, match="takes: none"):
        run_audit(db, "coverage", {"kernel": "x"})


def test_summary_counts_every_audit(db: ReadOnlyDB) -> None:
    rows = audit.summary(db, RUNNING)
    assert [r.audit for r in rows] == list(audit.audits())
    for r in rows:
        a = audit.get_audit(r.audit)
        given = {k: v for k, v in RUNNING.items() if k in a.params}
        result = run_audit(db, r.audit, given)
        assert r.rows == len(result.rows)
        assert r.highlight == audit.highlight(a, result)
    coverage = next(r for r in rows if r.audit == "coverage")
    assert coverage.highlight == "matmul on nvidia_h200: 0 active, has_default=0"
    with pytest.raises(AuditError, match="no audit takes"):
        audit.summary(db, {"bogus": 1})


# ---------------------------------------------------------------- opening rules


def test_refuses_other_files_and_old_schemas(tmp_path: Path) -> None:
    other = tmp_path / "other.db"
    conn = sqlite3.connect(other)
    conn.execute("CREATE TABLE t (x)")
    conn.commit()
    conn.close()
    with ReadOnlyDB(other) as db, pytest.raises(NotADatabaseError, match="not a presetdb"):
        db.require_presetdb()
    old = tmp_path / "old.db"
    migrate.upgrade(old, "0001", seed_data=False)
    with ReadOnlyDB(old) as db, pytest.raises(SchemaTooOldError, match="presetdb db upgrade"):
        db.require_presetdb()


# ---------------------------------------------------------------- the command


def invoke(*args: str) -> str:
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, (result.output, result.exception)
    return result.output


def test_cli_audit_formats(example: Path) -> None:
    before = sha256_file(example)
    as_json = json.loads(invoke("audit", "coverage", "--db", str(example), "--format", "json"))
    with ReadOnlyDB(example) as db:
        assert as_json == records(db, "coverage")
    as_csv = list(
        csv.DictReader(
            io.StringIO(invoke("audit", "quarantined", "--db", str(example), "-f", "csv"))
        )
    )
    assert len(as_csv) == 1 and as_csv[0]["has_active"] == "1"
    table = invoke("audit", "most_wanted", "--db", str(example))
    assert "Most-wanted shapes" in table and "42" in table
    assert sha256_file(example) == before


def test_cli_summary_and_params(example: Path) -> None:
    summary = json.loads(
        invoke(
            "audit",
            "--db",
            str(example),
            "-f",
            "json",
            *[f"--param={k}={v}" for k, v in RUNNING.items()],
        )
    )
    assert [s["audit"] for s in summary] == list(audit.audits())
    stale = next(s for s in summary if s["audit"] == "stale")
    assert stale["rows"] == 1 and "helion 1.4.0 != 1.5.0" in stale["highlight"]
    history = json.loads(
        invoke(
            "audit",
            "history",
            "--db",
            str(example),
            "-f",
            "json",
            "-P",
            "kernel=rms_norm",
            "-P",
            "platform=nvidia_h200",
        )
    )
    assert len(history) == 2
    bad = CliRunner().invoke(app, ["audit", "coverage", "--db", str(example), "-P", "novalue"])
    assert bad.exit_code == 2 and "NAME=VALUE" in bad.output


def test_cli_fail_on_rows(example: Path) -> None:
    runner = CliRunner()
    hit = runner.invoke(app, ["audit", "quarantined", "--db", str(example), "--fail-on-rows"])
    assert hit.exit_code == 1
    blank = [f"--param={k}=" for k in RUNNING]
    clean = runner.invoke(app, ["audit", "stale", "--db", str(example), "--fail-on-rows", *blank])
    assert clean.exit_code == 0, clean.output


def test_cli_check_source_uses_registered_kernels(
    example: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(audit, "current_source_hashes", lambda: {"rms_norm": "f" * 64})
    blank = [f"--param={k}=" for k in RUNNING]
    out = json.loads(
        invoke("audit", "stale", "--db", str(example), "-f", "json", "--check-source", *blank)
    )
    assert out and {r["reason"] for r in out} == {"kernel source changed"}


def test_cli_db_defaults_to_presetdb_path(example: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PRESETDB_PATH", str(example))
    out = json.loads(invoke("audit", "quarantined", "-f", "json"))
    assert len(out) == 1


def test_audit_never_imports_torch(example: Path) -> None:
    code = (
        "import sys\n"
        "from presetdb.cli import main\n"
        "sys.argv = ['presetdb', 'audit', '--db', sys.argv[1], '-f', 'json']\n"
        "try:\n    main()\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'helion', 'triton'))\n"
        "assert not bad, bad\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(example)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "200"},
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)[0]["audit"] == "coverage"


@pytest.mark.slow
def test_cli_check_source_with_the_real_kernels(example: Path) -> None:
    """--check-source imports presetdb.kernels (torch + helion): the example's made-up
    hashes differ from every registered kernel's real source hash."""
    real = audit.current_source_hashes()
    assert {"rms_norm", "matmul", "silu_mul"} <= set(real)
    assert all(len(h) == 64 for h in real.values())
    blank = [f"--param={k}=" for k in RUNNING]
    out = json.loads(
        invoke("audit", "stale", "--db", str(example), "-f", "json", "--check-source", *blank)
    )
    assert {r["kernel"] for r in out} == {"rms_norm", "matmul", "silu_mul"}
    assert all(r["reason"] == "kernel source changed" for r in out)


def test_cli_check_source_only_for_stale(example: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def fail() -> dict[str, str]:
        raise AssertionError("kernels must not be imported for another audit")

    monkeypatch.setattr(audit, "current_source_hashes", fail)
    out = CliRunner().invoke(app, ["audit", "coverage", "--db", str(example), "--check-source"])
    assert out.exit_code == 2 and "applies to `stale`" in out.output


def test_helion_cache_entries(db: ReadOnlyDB) -> None:
    rows = records(db, "helion_cache")
    assert [(r["hardware"], r["platform"], r["source"]) for r in rows] == [
        ("NVIDIA H200", "nvidia_h200", "import-helion-cache"),  # the newer entry first
        ("NVIDIA H100", "nvidia_h100", "remote-cache"),
    ]
    assert rows[0]["written_by"] == "cache.best_config" and rows[1]["written_by"] == "gpu-07"
    assert rows[1]["helion_version"] == RUNNING["helion_version"] and rows[0]["helion_version"] is None
    assert json.loads(str(rows[1]["config"])) == CFG_MID
