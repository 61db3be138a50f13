"""The `presetdb` command on real files: db upgrade/downgrade/current/check, list, show,
and a --help with an example on every command (new commands are covered automatically)."""

from __future__ import annotations

import sqlite3
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from presetdb.cli import app, main
from presetdb.store import migrate
from presetdb.store.records import PresetInput
from presetdb.store.repository import Repository

HEAD = migrate.head()


@pytest.fixture(autouse=True)
def wide_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    # rich wraps at the terminal width; keep paths and keys on one line.
    monkeypatch.setenv("COLUMNS", "250")


def invoke(*args: str) -> Any:
    """Run the Typer app; returns the click Result (output = stdout + stderr)."""
    return CliRunner().invoke(app, [str(a) for a in args])


def run_main(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: object
) -> tuple[int, str]:
    """Run the real entry point (`presetdb ...`): PresetDBError -> one line, exit 1."""
    monkeypatch.setattr(sys, "argv", ["presetdb", *map(str, args)])
    with pytest.raises(SystemExit) as info:
        main()
    captured = capsys.readouterr()
    code = info.value.code if isinstance(info.value.code, int) else 1
    return code, " ".join((captured.out + captured.err).split())


def flat(text: str) -> str:
    return " ".join(text.split())


@pytest.fixture
def populated(fresh_db: Path) -> Iterator[dict[str, Any]]:
    store = migrate.open_store(fresh_db, "rw")
    with store.transaction() as session:
        repo = Repository(session)
        repo.ensure_kernel(
            "rms_norm", {"fields": [{"name": "hidden", "policy": "nearest"}]}
        )
        run = repo.add_run(
            "manual",
            device_name="NVIDIA H100 80GB HBM3",
            helion_version="1.5.0",
            tuned_by="team-kernels",
        )
        first = repo.upsert_preset(
            "rms_norm",
            "nvidia_h100",
            run.id,
            PresetInput({"hidden": 4096}, {"block_sizes": [8]}, latency_ms=0.5),
        )
        second = repo.upsert_preset(
            "rms_norm",
            "nvidia_h100",
            run.id,
            PresetInput(
                {"hidden": 4096},
                {"block_sizes": [16], "num_warps": 4},
                latency_ms=0.25,
                default_ms=1.5,
                candidates=[({"block_sizes": [32]}, 0.3125)],
            ),
        )
        other = repo.upsert_preset(
            "rms_norm",
            "nvidia_h200",
            run.id,
            PresetInput({"hidden": 8192}, {"block_sizes": [64]}, latency_ms=0.75),
        )
    store.dispose()
    yield {
        "path": fresh_db,
        "old": first.preset_id,
        "new": second.preset_id,
        "other": other.preset_id,
    }


# ------------------------------------------------------------------ db


def test_db_upgrade_creates_a_store(tmp_path: Path) -> None:
    path = tmp_path / "sub dir" / "presets.db"
    result = invoke("db", "upgrade", "--db", path)
    assert result.exit_code == 0, result.output
    assert f"base -> {HEAD}" in flat(result.output)
    assert migrate.revision_of(path) == HEAD
    migrate.open_store(path).dispose()
    again = invoke("db", "upgrade", "--db", path)
    assert again.exit_code == 0 and f"{HEAD} -> {HEAD}" in flat(again.output)


def test_db_upgrade_schema_only_stores_no_presets(tmp_path: Path) -> None:
    path = tmp_path / "overlay.db"
    result = invoke("db", "upgrade", "--schema-only", "--db", path)
    assert result.exit_code == 0, result.output
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT COUNT(*) FROM presets").fetchone() == (0,)
        assert conn.execute("SELECT COUNT(*) FROM kernels").fetchone() == (0,)


def test_db_upgrade_needs_a_target(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = invoke("db", "upgrade")
    assert result.exit_code == 2
    assert "--db" in result.output and "PRESETDB_PATH" in result.output
    path = tmp_path / "from-env.db"
    monkeypatch.setenv("PRESETDB_PATH", str(path))
    result = invoke("db", "upgrade", "--schema-only")
    assert result.exit_code == 0, result.output
    assert migrate.revision_of(path) == HEAD


def test_db_current(tmp_path: Path, fresh_db: Path) -> None:
    result = invoke("db", "current", "--db", fresh_db)
    assert result.exit_code == 0, result.output
    out = flat(result.output)
    assert f"revision {HEAD}" in out and "at head" in out
    first = migrate.revisions()[0].id
    if first != HEAD:
        old = tmp_path / "old.db"
        migrate.upgrade(old, first, seed_data=False)
        out = flat(invoke("db", "current", "--db", old).output)
        assert f"revision {first}" in out and "behind head" in out


def test_db_check_ok(fresh_db: Path) -> None:
    result = invoke("db", "check", "--db", fresh_db)
    assert result.exit_code == 0, result.output
    out = flat(result.output)
    assert "schema: ok" in out and "integrity: ok" in out and "0 problem(s)" in out
    assert out.endswith("ok")


def test_db_check_reports_dangling_references(fresh_db: Path) -> None:
    with sqlite3.connect(
        fresh_db
    ) as conn:  # foreign keys are off in a bare sqlite3 session
        conn.execute(
            "INSERT INTO platform_aliases (alias, platform_id) VALUES ('ghost', 999)"
        )
    conn.close()
    result = invoke("db", "check", "--db", fresh_db)
    assert result.exit_code == 1
    assert "foreign keys: 1 problem(s)" in flat(result.output)


def test_db_check_reports_an_old_schema(fresh_db: Path) -> None:
    first = migrate.revisions()[0].id
    if first == migrate.schema_head():
        pytest.skip("only one schema revision")
    with sqlite3.connect(fresh_db) as conn:
        conn.execute("UPDATE alembic_version SET version_num = ?", (first,))
    conn.close()
    result = invoke("db", "check", "--db", fresh_db)
    assert result.exit_code == 1
    assert f"presetdb db upgrade --db {fresh_db}" in flat(result.output)


def test_db_check_on_a_corrupted_file(
    fresh_db: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    data = bytearray(fresh_db.read_bytes())
    data[100:] = bytes(range(256)) * ((len(data) - 100) // 256) + bytes(
        (len(data) - 100) % 256
    )
    fresh_db.write_bytes(bytes(data))  # the header survives, the pages do not
    for suffix in ("-wal", "-shm"):
        Path(str(fresh_db) + suffix).unlink(missing_ok=True)
    code, out = run_main(monkeypatch, capsys, "db", "check", "--db", fresh_db)
    assert code == 1
    assert str(fresh_db) in out
    assert "corrupt" in out or "malformed" in out
    assert "Traceback" not in out


def test_db_check_on_random_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "noise.db"
    path.write_bytes(b"\x00\x01garbage" * 100)
    code, out = run_main(monkeypatch, capsys, "db", "check", "--db", path)
    assert code == 1
    assert (
        out.startswith("error:") and str(path) in out and "not a SQLite database" in out
    )


def test_db_downgrade_to_base_and_back(fresh_db: Path) -> None:
    result = invoke("db", "downgrade", "base", "--db", fresh_db)
    assert result.exit_code == 0, result.output
    assert f"{HEAD} -> base" in flat(result.output)
    assert migrate.revision_of(fresh_db) is None
    with sqlite3.connect(fresh_db) as conn:
        names = {
            r[0]
            for r in conn.execute(
                "SELECT name FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'"
            )
        }
    assert names == {"alembic_version"}
    out = flat(invoke("db", "current", "--db", fresh_db).output)
    assert "revision base" in out and "empty" in out
    assert invoke("db", "upgrade", "--db", fresh_db).exit_code == 0
    assert migrate.revision_of(fresh_db) == HEAD


def test_db_downgrade_one_step_as_in_the_help(fresh_db: Path) -> None:
    ids = [r.id for r in migrate.revisions()]
    result = invoke("db", "downgrade", "-1", "--db", fresh_db)
    assert result.exit_code == 0, result.output
    assert migrate.revision_of(fresh_db) == (ids[-2] if len(ids) > 1 else None)


def test_db_downgrade_unknown_revision(
    fresh_db: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = run_main(
        monkeypatch, capsys, "db", "downgrade", "nope", "--db", fresh_db
    )
    assert code == 1
    assert "nope" in out and HEAD in out and "Traceback" not in out
    assert migrate.revision_of(fresh_db) == HEAD


def test_missing_db_names_the_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "missing.db"
    for command in (["db", "current"], ["db", "check"], ["list"]):
        code, out = run_main(monkeypatch, capsys, *command, "--db", path)
        assert code == 1, command
        assert f"presetdb db upgrade --db {path}" in out
    assert not path.exists()


# ------------------------------------------------------------------ list and show


def test_list(populated: dict[str, Any]) -> None:
    result = invoke("list", "--db", populated["path"])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "2 active preset(s)" in flat(out)
    assert '{"hidden":4096}' in out and '{"hidden":8192}' in out
    assert "0.2500" in out and "1.5000" in out  # latency and Helion default
    assert "0.5000" not in out  # the superseded row is history, not listed

    only = invoke("list", "--db", populated["path"], "--platform", "nvidia_h200")
    assert only.exit_code == 0
    assert (
        "1 active preset(s)" in flat(only.output) and '{"hidden":8192}' in only.output
    )
    assert '{"hidden":4096}' not in only.output


def test_list_unknown_names_show_known_ones(
    populated: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out = run_main(
        monkeypatch, capsys, "list", "--db", populated["path"], "--kernel", "rms"
    )
    assert code == 1 and "'rms'" in out and "rms_norm" in out
    code, out = run_main(
        monkeypatch, capsys, "list", "--db", populated["path"], "--platform", "h100"
    )
    assert code == 1 and "'h100'" in out and "nvidia_h100" in out


def test_list_uses_presetdb_path(
    populated: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PRESETDB_PATH", str(populated["path"]))
    result = invoke("list")
    assert result.exit_code == 0, result.output
    assert "2 active preset(s)" in flat(result.output)


def test_show(populated: dict[str, Any]) -> None:
    result = invoke("show", populated["new"], "--db", populated["path"])
    assert result.exit_code == 0, result.output
    out = result.output
    flat_out = flat(out)
    assert f"preset {populated['new']}" in out and "rms_norm on nvidia_h100" in flat_out
    assert '"num_warps": 4' in out  # the config
    assert "latency 0.2500 ms" in flat_out and "Helion default 1.5000 ms" in flat_out
    assert "NVIDIA H100 80GB HBM3" in out and "team-kernels" in out  # provenance
    assert "runners-up" in out and "0.3125" in out and '{"block_sizes":[32]}' in out
    assert "history of this key" in out and "superseded" in out


def test_show_unknown_id(populated: dict[str, Any]) -> None:
    result = invoke("show", "999", "--db", populated["path"])
    assert result.exit_code == 2
    assert "no preset with id 999" in flat(result.output)


# ------------------------------------------------------------------ help


def _walk(command: Any, path: list[str]) -> Iterator[list[str]]:
    yield path
    for name, sub in sorted(getattr(command, "commands", {}).items()):
        if not getattr(sub, "hidden", False):
            yield from _walk(sub, [*path, name])


COMMAND_PATHS = list(_walk(typer.main.get_command(app), []))


def test_command_tree_is_walked() -> None:
    assert (
        ["db", "upgrade"] in COMMAND_PATHS
        and ["list"] in COMMAND_PATHS
        and [] in COMMAND_PATHS
    )


@pytest.mark.parametrize("path", COMMAND_PATHS, ids=lambda p: " ".join(p) or "presetdb")
def test_every_command_has_help_with_an_example(path: list[str]) -> None:
    result = invoke(*path, "--help")
    assert result.exit_code == 0, result.output
    assert "Example:" in result.output, (
        f"`presetdb {' '.join(path)} --help` has no 'Example:' line; add one to the "
        "command's docstring (or the group's help=)"
    )
