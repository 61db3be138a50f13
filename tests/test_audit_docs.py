"""docs/auditing.md shows real, current outputs, and the audit commands' help has an
example."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from presetdb import audit
from presetdb.cli import app

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(shutil.which("sqlite3") is None, reason="the page shows sqlite3 shell output")
def test_auditing_page_is_fresh() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "docs" / "gen_auditing.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr + "\n(run: .venv/bin/python docs/gen_auditing.py)"


def test_auditing_page_covers_every_audit() -> None:
    page = (ROOT / "docs" / "auditing.md").read_text()
    for name in audit.audits():
        assert f"presetdb audit {name} " in page, name
    assert "$ presetdb diff " in page and "$ presetdb sql " in page and "$ sqlite3 " in page


@pytest.mark.parametrize("command", ["audit", "sql", "diff"])
def test_help_has_an_example(command: str) -> None:
    result = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    examples = [
        line.strip(" │") for line in result.output.splitlines() if "Example: presetdb" in line
    ]
    assert examples and examples[0].startswith(f"Example: presetdb {command} "), result.output


def test_audit_help_lists_the_audits() -> None:
    result = CliRunner().invoke(app, ["audit", "--help"], env={"COLUMNS": "200"})
    for name in audit.audits():
        assert f"{name}:" in result.output, name
