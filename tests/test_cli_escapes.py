"""Rich markup and terminal escapes in data, paths and arguments, through every command
(issue 20 item 4, issue 14's two bugs). Text from a db, a file or the command line is
printed as typed: `[red]x` stays `[red]x`, `[/bold]` never crashes, `[null,null]` never
vanishes, and no ESC/BEL/OSC byte reaches the terminal.

Real CLI in child processes, on a real built db whose rows were given hostile text.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
from pathlib import Path

import pytest
from reliability_helpers import child_env, presetdb_cli

from presetdb.offline.build import build_database

MARKUP = "[/bold][red]x[/red]"
ESCAPES = "\x1b[31mRED\x1b[0m\x1b]0;title\x07\x1b]8;;http://evil.example\x07link\x1b]8;;\x07\x07\r"
HOSTILE = MARKUP + ESCAPES


@pytest.fixture(scope="module")
def hostile_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("hostile") / "[red]dir[bold]"
    folder.mkdir()
    db = folder / "presets.db"
    build_database(db)
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute(
        "UPDATE tuning_runs SET tuned_by = ?, host = ?, source_file = ?, device_name = ?",
        (HOSTILE, HOSTILE, HOSTILE, HOSTILE),
    )
    conn.close()
    return db


def _run(*args: str | Path, ok: bool = True, **env: str) -> str:
    proc = subprocess.run(
        presetdb_cli(*args), env=child_env(COLUMNS="1000", PRESETDB_DISABLE_OVERLAY="1", **env),
        capture_output=True, text=True, timeout=300, check=False,
    )
    out = proc.stdout + proc.stderr
    assert "Traceback" not in out, out[-3000:]
    assert (proc.returncode == 0) == ok, out[-3000:]
    for byte in ("\x1b", "\x07", "\r"):
        assert byte not in out, f"{byte!r} reached the terminal: {out[-2000:]!r}"
    return out


def test_markup_and_escapes_in_stored_text_print_literally(hostile_db: Path) -> None:
    shown = _run("show", "1", "--db", hostile_db)
    assert MARKUP in shown and "null" in shown  # provenance as typed; the config's nulls kept
    listed = _run("list", "--db", hostile_db, "-k", "rms_norm")
    assert "[red]dir[bold]" in listed  # the path, as typed
    sql = _run("sql", "SELECT tuned_by, '[null,null]' AS c FROM tuning_runs LIMIT 1", "--db", hostile_db)
    assert MARKUP in sql and "[null,null]" in sql
    audit = _run("audit", "missing_provenance", "--db", hostile_db)
    assert "Traceback" not in audit
    _run("audit", "--db", hostile_db)
    diff = _run("diff", hostile_db, hostile_db)
    assert "[red]dir[bold]" in diff
    _run("db", "current", "--db", hostile_db)
    _run("db", "check", "--db", hostile_db)
    pick = _run(
        "pick", "-k", "rms_norm", "-p", "nvidia_h100", "-s",
        '{"dtype":"bfloat16","hidden":4096,"num_tokens":64}', "--db", hostile_db,
    )
    assert MARKUP in pick  # the run's provenance, literally
    as_json = json.loads(_run("show", "1", "--db", hostile_db, "--format", "json"))
    assert as_json["run"]["tuned_by"] == HOSTILE  # JSON keeps the value; json.dumps escapes the bytes


@pytest.mark.parametrize("text", ["[/bold]", "[red]x", "[/]", "x\x1b]0;pwn\x07y", "[bold]" + "A" * 100_000])
def test_markup_and_escapes_in_arguments_give_a_clear_error(hostile_db: Path, text: str) -> None:
    out = _run("list", "--db", hostile_db, "--kernel", text, ok=False)
    assert out.startswith("error: unknown kernel"), out[:300]
    if text.startswith("[") and len(text) < 100:
        assert text in out  # printed as typed
    assert len(out) < 10_000  # a 100,000-character argument is not echoed whole
    out = _run("pick", "-k", text, "-p", "nvidia_h100", "-s", "{}", "--db", hostile_db, ok=False)
    assert len(out) < 20_000


def test_escapes_in_an_imported_file_and_its_name(hostile_db: Path, tmp_path: Path) -> None:
    from import_fixtures import RESULTS, edited

    db = tmp_path / "target.db"
    shutil.copy(hostile_db, db)
    bad = edited(
        RESULTS, tmp_path / "[red]bad[bold].json",
        lambda d: d["entries"][0]["key"].update(dtype=HOSTILE) or d["run"].update(tuned_by=HOSTILE),
    )
    out = _run("import", bad, "--db", db, ok=False)
    assert "[red]bad[bold].json" in out and MARKUP in out
    dry = _run("import", bad, "--db", db, "--dry-run", ok=False)
    assert "[red]bad[bold].json" in dry


def test_platform_override_with_markup(tmp_path: Path) -> None:
    out = _run("platform", PRESETDB_PLATFORM=HOSTILE)
    assert MARKUP in out


def test_build_into_a_path_with_uri_characters(tmp_path: Path) -> None:
    """issue 14: `build --out 'out/a#b/x.db'` made a stray `out/a` and died on an unquoted URI."""
    out_dir = tmp_path / "out"
    _run("build", "--out", out_dir / "a#b?mode=ro%20" / "x.db")
    made = sorted(p.relative_to(out_dir).as_posix() for p in out_dir.rglob("*"))
    assert made == ["a#b?mode=ro%20", "a#b?mode=ro%20/x.db", "a#b?mode=ro%20/x.db.manifest.json"], made
    listed = _run("list", "--db", out_dir / "a#b?mode=ro%20" / "x.db", "-k", "softmax")
    assert "active preset(s)" in listed
