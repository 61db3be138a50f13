"""`presetdb diff OLD NEW`: active presets added, removed and changed, with deltas."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from audit_fixtures import (
    CFG_MATMUL,
    CFG_MATMUL_OLD,
    KEY_2048,
    MATMUL_KEY,
    seed_example_db,
    sha256_file,
)
from typer.testing import CliRunner

from presetdb.audit.diff import diff_databases
from presetdb.cli import app
from presetdb.errors import NotADatabaseError
from presetdb.keys import canonical_key
from presetdb.store.records import config_sha256


@pytest.fixture(scope="module")
def releases(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("diff")
    old = seed_example_db(folder / "old.db", previous_release=True)
    new = seed_example_db(folder / "new.db")
    return old, new


def test_diff_added_removed_changed(releases: tuple[Path, Path]) -> None:
    old, new = releases
    result = diff_databases(old, new)
    assert result.counts() == {"added": 4, "removed": 1, "changed": 1, "unchanged": 5}
    changed = result.rows[0]
    assert (changed.change, changed.kernel, changed.shape_key) == (
        "changed",
        "matmul",
        canonical_key(MATMUL_KEY),
    )
    assert changed.old_config_sha256 == config_sha256(CFG_MATMUL_OLD)
    assert changed.new_config_sha256 == config_sha256(CFG_MATMUL)
    assert changed.delta_ms == pytest.approx(-0.11)
    assert changed.ratio == pytest.approx(0.41 / 0.52, abs=1e-4)
    removed = [r for r in result.rows if r.change == "removed"]
    assert [r.shape_key for r in removed] == [canonical_key(KEY_2048)]
    assert removed[0].new_ms is None and removed[0].delta_ms is None


def test_diff_of_a_file_with_itself_is_empty(releases: tuple[Path, Path]) -> None:
    _, new = releases
    result = diff_databases(new, new)
    assert result.rows == [] and result.counts()["unchanged"] == 10


def test_cli_diff_formats_and_read_only(releases: tuple[Path, Path]) -> None:
    old, new = releases
    before = (sha256_file(old), sha256_file(new))
    runner = CliRunner()
    out = runner.invoke(app, ["diff", str(old), str(new), "--format", "json"])
    assert out.exit_code == 0, out.output
    payload = json.loads(out.output)
    assert payload["summary"] == {"added": 4, "removed": 1, "changed": 1, "unchanged": 5}
    assert payload["changes"][0]["ratio"] == pytest.approx(0.7885, abs=1e-4)
    csv_out = runner.invoke(app, ["diff", str(old), str(new), "-f", "csv"])
    lines = csv_out.output.splitlines()
    assert lines[0].startswith("change,kernel,platform,shape_key,old_config_sha256")
    assert len(lines) == 7
    table = runner.invoke(app, ["diff", str(old), str(new)], env={"COLUMNS": "160"})
    assert table.exit_code == 0 and "4 added, 1 removed, 1 changed, 5 unchanged" in table.output
    assert (sha256_file(old), sha256_file(new)) == before


def test_diff_refuses_non_presetdb_files(releases: tuple[Path, Path], tmp_path: Path) -> None:
    other = tmp_path / "other.db"
    other.write_bytes(b"SQLite format 3\x00" + b"\x00" * 100)
    with pytest.raises(NotADatabaseError):
        diff_databases(releases[0], other)
