"""`presetdb new-migration` in a temporary copy of the source tree: the generated data
migration upgrades, downgrades, supersedes and detects a tampered seed file.

The copy runs in a subprocess with the copy first on PYTHONPATH. `presetdb.migrations`
and `presetdb.seed_data` map to top-level folders (pyproject's package-dir); in the copy
two symlinks inside presetdb/ give the same layout, so the copy's migrations and seed
files are the ones found, not the editable install's.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from import_fixtures import RESULTS, edited, registry, rows, table_dump

from presetdb.errors import ImportValidationError, PresetDBError
from presetdb.offline import new_migration as author

MAIN = Path(__file__).resolve().parents[1]

RUNNER = r"""
import json, sys
import presetdb
from presetdb.store import migrate
from presetdb.errors import PresetDBError
assert presetdb.__file__.startswith(sys.argv[1]), presetdb.__file__
out = []
for op, db, target, seed in json.loads(sys.argv[2]):
    try:
        if op == "upgrade":
            out.append({"ok": migrate.upgrade(db, target, seed_data=seed)})
        else:
            out.append({"ok": migrate.downgrade(db, target)})
    except PresetDBError as exc:
        out.append({"error": type(exc).__name__, "message": str(exc)})
        break
print(json.dumps(out))
"""


@pytest.fixture
def resolver() -> Any:
    return registry()


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("presetdb", "migrations", "seed_data"):
        shutil.copytree(MAIN / name, root / name, ignore=ignore)
    shutil.copy(MAIN / "pyproject.toml", root / "pyproject.toml")
    # Start from the schema-only head: the shipped data migrations (and their seed files)
    # are left out so each test counts exactly the rows its own migrations add.
    versions = root / "migrations" / "versions"
    down = {}
    for script in versions.glob("[0-9]*.py"):
        text = script.read_text()
        revision = re.search(r"^revision = ['\"](\w+)['\"]", text, re.MULTILINE)
        parent = re.search(r"^down_revision = ['\"](\w+)['\"]", text, re.MULTILINE)
        if revision is not None:
            down[revision.group(1)] = parent.group(1) if parent else None
    dropped = set()
    for script in versions.glob("*_data_*.py"):
        dropped.add(re.search(r"^revision = ['\"](\w+)['\"]", script.read_text(), re.MULTILINE).group(1))  # type: ignore[union-attr]
        script.unlink()
    # A schema revision chained after data revisions now follows the schema one before them.
    for script in versions.glob("[0-9]*.py"):
        text = script.read_text()
        parent = re.search(r"^down_revision = ['\"](\w+)['\"]", text, re.MULTILINE)
        if parent is not None and parent.group(1) in dropped:
            kept = parent.group(1)
            while kept in dropped:
                kept = down[kept]
            script.write_text(text[: parent.start()] + f'down_revision = "{kept}"' + text[parent.end() :])
    for seed in (root / "seed_data").glob("*.json"):
        seed.unlink()
    (root / "presetdb" / "migrations").symlink_to(root / "migrations", target_is_directory=True)
    (root / "presetdb" / "seed_data").symlink_to(root / "seed_data", target_is_directory=True)
    return root


def migrate_in(tree: Path, *steps: tuple[str, Path, str, bool]) -> list[dict[str, Any]]:
    env = dict(os.environ, PYTHONPATH=str(tree))
    plan = json.dumps([(op, str(db), target, seed) for op, db, target, seed in steps])
    done = subprocess.run(
        [sys.executable, "-c", RUNNER, str(tree), plan],
        env=env,
        cwd=tree,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return list(json.loads(done.stdout.strip().splitlines()[-1]))


def test_generated_migration_upgrades_and_downgrades_cleanly(
    tree: Path, resolver: Any, tmp_path: Path
) -> None:
    head, expected = author.head_and_next(tree / "migrations" / "versions")
    made = author.new_migration([RESULTS], "rms_norm on H100 (quick)", root=tree, resolver=resolver)
    assert made.revision == expected and made.down_revision == head
    assert made.path == tree / "migrations" / "versions" / f"{expected}_data_rms_norm_on_h100_quick.py"
    assert (tree / "seed_data" / RESULTS.name).read_bytes() == RESULTS.read_bytes()
    script = made.path.read_text()
    assert 'presetdb_kind = "data"' in script and made.seed_files[RESULTS.name] in script
    assert "from presetdb.store.seedload import v1" in script

    db = tmp_path / "a.db"
    before, after = migrate_in(tree, ("upgrade", db, head, True), ("upgrade", db, "head", True))[-2:]
    assert before == {"ok": head} and after == {"ok": expected}
    finished = json.loads(RESULTS.read_text())["run"]["finished_at"]
    assert rows(db, "SELECT source, source_file, revision, imported_at FROM tuning_runs") == [
        ("tune", RESULTS.name, expected, finished)
    ]
    assert rows(
        db, "SELECT COUNT(*), MIN(created_at), MAX(created_at) FROM presets WHERE status='active'"
    ) == [(4, finished, finished)]
    assert rows(db, "SELECT COUNT(*) FROM preset_candidates") == [(4,)]

    reference = tmp_path / "ref.db"
    migrate_in(tree, ("upgrade", reference, head, True))
    (down,) = migrate_in(tree, ("downgrade", db, head, True))
    assert down == {"ok": head}
    assert table_dump(db) == table_dump(reference)
    assert rows(db, "PRAGMA foreign_key_check") == []


def test_second_migration_supersedes_and_its_downgrade_restores(
    tree: Path, resolver: Any, tmp_path: Path
) -> None:
    first = author.new_migration([RESULTS], "rms_norm on H100", root=tree, resolver=resolver)

    def retune(doc: dict[str, Any]) -> None:
        doc["entries"][2]["config"]["block_sizes"] = [8]
        doc["run"]["finished_at"] = "2026-11-21T10:00:00Z"

    retuned = edited(RESULTS, tmp_path / "rms_norm_nvidia_h100_v2.json", retune)
    second = author.new_migration([retuned], "rms_norm on H100, retuned", root=tree, resolver=resolver)
    assert second.down_revision == first.revision
    db = tmp_path / "b.db"
    migrate_in(tree, ("upgrade", db, "head", True))
    key = '{"dtype":"bfloat16","hidden":4096,"num_tokens":16}'
    history = rows(db, "SELECT id, status, superseded_by FROM presets WHERE shape_key = ? ORDER BY id", key)
    assert [h[1] for h in history] == ["superseded", "active"] and history[0][2] == history[1][0]
    assert rows(db, "SELECT COUNT(*) FROM presets") == [(5,)]  # 3 unchanged keys were left alone
    migrate_in(tree, ("downgrade", db, first.revision, True))
    assert rows(db, "SELECT status, superseded_by, status_reason FROM presets WHERE shape_key = ?", key) == [
        ("active", None, None)
    ]
    assert rows(db, "SELECT revision FROM tuning_runs") == [(first.revision,)]


def test_tampered_seed_file_fails_the_upgrade(tree: Path, resolver: Any, tmp_path: Path) -> None:
    made = author.new_migration([RESULTS], "rms_norm on H100", root=tree, resolver=resolver)
    seed = tree / "seed_data" / RESULTS.name
    seed.write_text(seed.read_text().replace("0.0089", "0.0088"))
    db = tmp_path / "c.db"
    *_, result = migrate_in(tree, ("upgrade", db, made.down_revision, True), ("upgrade", db, "head", True))
    assert result["error"] == "SeedDataTamperedError"
    message = result["message"]
    assert RESULTS.name in message and made.seed_files[RESULTS.name] in message
    assert __import__("hashlib").sha256(seed.read_bytes()).hexdigest() in message
    # Nothing half-written: still at the previous revision, no seed rows.
    assert rows(db, "SELECT version_num FROM alembic_version") == [(made.down_revision,)]
    assert rows(db, "SELECT COUNT(*) FROM presets") == [(0,)]


def test_schema_only_databases_get_no_seed_rows(tree: Path, resolver: Any, tmp_path: Path) -> None:
    made = author.new_migration([RESULTS], "rms_norm on H100", root=tree, resolver=resolver)
    db = tmp_path / "overlay.db"
    assert migrate_in(tree, ("upgrade", db, "head", False)) == [{"ok": made.revision}]
    assert rows(db, "SELECT COUNT(*) FROM presets") == [(0,)]
    assert migrate_in(tree, ("downgrade", db, made.down_revision, True)) == [{"ok": made.down_revision}]


def test_refuses_to_overwrite_a_different_seed_file(tree: Path, resolver: Any, tmp_path: Path) -> None:
    author.new_migration([RESULTS], "rms_norm on H100", root=tree, resolver=resolver)
    scripts = sorted((tree / "migrations" / "versions").glob("*.py"))
    same_name = edited(
        RESULTS, tmp_path / "x" / RESULTS.name, lambda d: d["entries"][0]["config"].update(num_warps=2)
    )
    with pytest.raises(PresetDBError, match="already exists with different content"):
        author.new_migration([same_name], "again", root=tree, resolver=resolver)
    assert sorted((tree / "migrations" / "versions").glob("*.py")) == scripts
    # The identical file is reused, not copied again.
    again = author.new_migration([RESULTS], "same file again", root=tree, resolver=resolver)
    assert again.reused == (RESULTS.name,)


def test_only_valid_results_files_become_seed_data(tree: Path, resolver: Any, tmp_path: Path) -> None:
    bad = edited(RESULTS, tmp_path / "bad.json", lambda d: d["entries"][1].update(latency_ms=0))
    with pytest.raises(ImportValidationError, match="latency_ms"):
        author.new_migration([bad], "bad", root=tree, resolver=resolver)
    vllm_file = tmp_path / "nvidia_h100.json"
    vllm_file.write_text("[]")
    with pytest.raises(ImportValidationError, match="presetdb-results/1 files only"):
        author.new_migration([vllm_file], "vllm", root=tree, resolver=resolver)
    assert not (tree / "seed_data" / "bad.json").exists()
    assert len(list((tree / "migrations" / "versions").glob("*_data_*.py"))) == 0


def test_cli_new_migration(tree: Path) -> None:
    from typer.testing import CliRunner

    from presetdb.cli import app

    result = CliRunner().invoke(
        app, ["new-migration", str(RESULTS), "-m", "rms_norm H100", "--root", str(tree)]
    )
    assert result.exit_code == 0, result.output
    text = "".join(result.output.split())
    assert "copiedtoseed_data/" in text and "_data_rms_norm_h100.py" in text
