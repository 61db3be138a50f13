"""Issue 20's "Low" items, each through the real CLI or a real kernel call on real files.

- a quarantined row in a higher layer (the user overlay) does not hide its key in lower
  layers (the embedded default db): the quarantine is of that config, not of the key;
- warnings point at the user's calling line, not ``torch/_ops.py`` or presetdb's internals;
- a kernel call with CPU tensors without ``TRITON_INTERPRET=1`` says how to run it;
- a missing db (a user overlay, a deployment db) says how to create one (``--schema-only``);
- import reads files with a UTF-8 byte order mark or leading whitespace;
- an export that matches nothing exits 1 with a message and writes nothing;
- a vLLM file's platform comes from its name only when unambiguous, and the summary says so;
- ``list`` / ``show`` / ``pick`` have ``--format json|table``; ``-p`` is ``--platform`` in
  every command; ``list`` keeps whole columns when piped, whatever COLUMNS says.

Real vLLM files are read from /work/shared/fixtures/vllm_real (PRESETDB_VLLM_REAL), never
copied into the repository; tests that need them skip where they are absent.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import pytest
import typer
from reliability_helpers import child_env, presetdb_cli
from typer.testing import CliRunner

from presetdb.cli import app
from presetdb.errors import PresetMissWarning, StoreWarning

VLLM_REAL = Path(os.environ.get("PRESETDB_VLLM_REAL", "/work/shared/fixtures/vllm_real")) / "configs"
VLLM_FILE = VLLM_REAL / "fused_qk_norm_rope" / "nvidia_h100.json"
H100 = "nvidia_h100"
BOM = b"\xef\xbb\xbf"


def _cli(*args: str | Path, ok: bool | None = True, **env: str | None) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        presetdb_cli(*args), env=child_env(**env), capture_output=True, text=True, timeout=300, check=False,
    )
    out = proc.stdout + proc.stderr
    assert "Traceback" not in out, out[-3000:]
    if ok is not None:
        assert (proc.returncode == 0) == ok, out[-3000:]
    return proc


def _needs_interpreter() -> None:
    from helion_fixtures import HAS_CUDA

    if not HAS_CUDA and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("CPU Helion kernels need TRITON_INTERPRET=1")


def _needs_vllm_files() -> None:
    if not VLLM_FILE.is_file():
        pytest.skip(f"real vLLM config files not found under {VLLM_REAL}")


def _rows(db: Path) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute(
            "SELECT k.name, pl.name, p.shape_key, c.sha256, p.status FROM presets p "
            "JOIN kernels k ON k.id = p.kernel_id JOIN platforms pl ON pl.id = p.platform_id "
            "JOIN configs c ON c.id = p.config_id ORDER BY k.name, pl.name, p.shape_key, p.status"
        ).fetchall()
    finally:
        conn.close()


# ------------------------------------------------------------------ quarantine and layers


def test_a_quarantined_overlay_row_does_not_hide_its_key_in_the_default_db(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The overlay gets its own config for a key the embedded default db also holds;
    that config fails and is quarantined (the run-time path: picker.quarantine, written
    by the ledger). A new process serves the default db's own row for that key, exactly,
    through a real kernel call and `presetdb pick`."""
    _needs_interpreter()
    from helion_fixtures import assert_close, install_interpreter_shims

    install_interpreter_shims()
    import torch

    import presetdb.kernels  # noqa: F401  (registers the kernels)
    from presetdb.helion.hooks import reset_warnings
    from presetdb.helion.registry import get_kernel, last_choice
    from presetdb.runtime.picker import get_picker, reset_picker

    overlay = Path(os.environ["PRESETDB_USER_DB"])
    monkeypatch.setenv("PRESETDB_PLATFORM", H100)
    rk = get_kernel("rms_norm")
    key = {"dtype": "bfloat16", "hidden": 2048, "num_tokens": 16}
    features = tuple(key[name] for name in rk.key_spec.names)

    picker = get_picker()
    shipped = picker.resolve("rms_norm", rk.key_spec, features)
    assert shipped is not None and (shipped.layer, shipped.match) == ("default", "exact")
    local = {**shipped.config, "num_warps": 4 if shipped.config.get("num_warps") != 4 else 2}
    picker.store_result("rms_norm", rk.key_spec, key, local, {"tuned_by": "test"}, {"latency_ms": 0.001})
    mine = picker.resolve("rms_norm", rk.key_spec, features)
    assert mine is not None and (mine.layer, mine.config) == ("overlay", local)
    picker.quarantine(mine, "compile or launch failed: test")
    picker.flush_misses()  # the ledger's thread writes the quarantine into the overlay
    reset_picker()
    quarantined = [r for r in _rows(overlay) if r[2] == json.dumps(key, separators=(",", ":"), sort_keys=True)]
    assert [r[4] for r in quarantined] == ["quarantined"], quarantined

    # A new process: the key is served from the default db, exactly, with its own config.
    reset_warnings()
    x = torch.randn(16, 2048, dtype=torch.bfloat16)
    w = torch.randn(2048, dtype=torch.bfloat16)
    out = torch.ops.presetdb.rms_norm(x, w, 1e-6)
    assert_close(out, rk.reference(x, w, 1e-6), torch.bfloat16)
    served = last_choice("rms_norm")
    assert served is not None
    assert (served.layer, served.match, served.preset.shape_key) == ("default", "exact", shipped.preset.shape_key)
    assert served.config == shipped.config
    reset_picker()

    shape = json.dumps(key)
    picked = _cli("pick", "-k", "rms_norm", "-p", H100, "-s", shape, "-f", "json", PRESETDB_DISABLE_OVERLAY=None)
    doc = json.loads(picked.stdout)
    assert (doc["layer"], doc["match"]) == ("default", "exact"), doc
    assert doc["config"] == shipped.config and doc["id"] == shipped.preset.id, doc


# ------------------------------------------------------------------ warnings


def test_warnings_point_at_the_callers_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A miss warned by a direct kernel call and by torch.ops.presetdb.*, and a layer that
    cannot be read (a deployment db that is not SQLite): each warning's file and line are
    this test's, not torch/_ops.py or presetdb's."""
    _needs_interpreter()
    from helion_fixtures import install_interpreter_shims

    install_interpreter_shims()
    import torch

    from presetdb.helion.hooks import reset_warnings
    from presetdb.kernels.rms_norm import rms_norm
    from presetdb.runtime.picker import reset_picker

    garbage = tmp_path / "not-a-db.db"
    garbage.write_bytes(b"this is not an SQLite file" * 100)
    monkeypatch.setenv("PRESETDB_PATH", str(garbage))
    monkeypatch.setenv("PRESETDB_DISABLE_OVERLAY", "1")
    reset_picker()
    reset_warnings()
    lines: dict[str, int] = {}
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        lines["ops"] = sys._getframe().f_lineno + 1
        torch.ops.presetdb.rms_norm(torch.randn(3, 40), torch.randn(40), 1e-6)
        lines["direct"] = sys._getframe().f_lineno + 1
        rms_norm(torch.randn(5, 24), torch.randn(24), 1e-6)
    reset_picker()
    ours = [w for w in record if issubclass(w.category, (PresetMissWarning, StoreWarning))]
    misses = [w for w in ours if issubclass(w.category, PresetMissWarning)]
    stores = [w for w in ours if issubclass(w.category, StoreWarning)]
    assert len(misses) == 2 and stores, [(w.category.__name__, str(w.message)) for w in record]
    assert any(str(garbage) in str(w.message) for w in stores), [str(w.message) for w in stores]
    for w in ours:
        assert w.filename == __file__, (w.filename, w.lineno, str(w.message))
    assert sorted(w.lineno for w in misses) == sorted(lines.values())
    assert all(w.lineno == lines["ops"] for w in stores)  # the first call builds the picker


def test_a_cpu_kernel_call_without_the_interpreter_says_how_to_run_it(tmp_path: Path) -> None:
    """No TRITON_INTERPRET in a fresh process on CPU tensors: one clear presetdb error
    saying to set TRITON_INTERPRET=1 or use a GPU, not Triton's '0 active drivers'."""
    script = tmp_path / "model.py"
    script.write_text(
        "import torch\n"
        "import presetdb.kernels\nfrom presetdb.kernels.rms_norm import rms_norm\n"
        "from presetdb.errors import KernelDeviceError\n"
        "if torch.cuda.is_available():\n"
        "    print('HAS-GPU')\n"
        "    raise SystemExit(0)\n"
        "x, w = torch.randn(4, 64), torch.randn(64)\n"
        "for call in (torch.ops.presetdb.rms_norm, rms_norm):\n"
        "    try:\n"
        "        call(x, w, 1e-6)\n"
        "    except KernelDeviceError as exc:\n"
        "        print('ERROR', exc)\n"
        "    else:\n"
        "        print('RAN')\n"
    )
    proc = subprocess.run(
        [sys.executable, str(script)], env=child_env(TRITON_INTERPRET=None, HELION_INTERPRET=None),
        capture_output=True, text=True, timeout=300, check=False,
    )
    if "HAS-GPU" in proc.stdout:
        pytest.skip("a GPU is present: CPU tensors are the user's choice there")
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    errors = [line for line in proc.stdout.splitlines() if line.startswith("ERROR")]
    assert len(errors) == 2, proc.stdout + proc.stderr[-3000:]
    for line in errors:
        assert "rms_norm" in line and "TRITON_INTERPRET=1" in line and "GPU" in line, line
    assert "active drivers" not in proc.stdout + proc.stderr


# ------------------------------------------------------------------ messages


def test_a_missing_db_says_how_to_create_it(tmp_path: Path) -> None:
    missing = tmp_path / "overlay.db"
    for args in (("list",), ("show", "1"), ("audit", "coverage"), ("db", "check")):
        proc = _cli(*args, "--db", missing, ok=False)
        out = " ".join((proc.stdout + proc.stderr).split())
        assert f"presetdb db upgrade --db {missing} --schema-only" in out, (args, out)
        assert "presetdb build --out" in out, (args, out)
        assert not missing.exists(), args  # a question does not create the file
    # `presetdb queue` reads this machine's user overlay by default.
    proc = _cli("queue", ok=False, PRESETDB_USER_DB=str(missing))
    out = " ".join((proc.stdout + proc.stderr).replace("│", " ").split())
    assert str(missing) in out and "--schema-only" in out, out
    # ... and the command it names creates a usable empty overlay.
    _cli("db", "upgrade", "--db", missing, "--schema-only")
    assert _rows(missing) == []
    listed = _cli("list", "--db", missing, "-f", "json")
    assert json.loads(listed.stdout) == []


# ------------------------------------------------------------------ import: format detection


def test_import_reads_files_with_a_byte_order_mark_or_leading_whitespace(tmp_path: Path) -> None:
    """A presetdb export and a real vLLM file, each as written, with a UTF-8 BOM, and with
    leading whitespace: every variant is detected and imports the same rows."""
    _needs_vllm_files()
    shipped = tmp_path / "exported"
    _cli("export", "-k", "rms_norm", "-p", H100, "-o", shipped)
    # One presetdb-results file per tuning run of the shipped rows (`nvidia_h100.runN.json`).
    results = min((shipped / "rms_norm").glob(f"{H100}*.json"))
    sources = {"presetdb": results, "vllm": VLLM_FILE}
    imported: dict[str, list[tuple[Any, ...]]] = {}
    for fmt, source in sources.items():
        data = source.read_bytes()
        for variant, content in (("plain", data), ("bom", BOM + data), ("space", b" \n\t\r\n  " + data),
                                 ("bom+space", BOM + b"\n\n  " + data)):
            # vLLM files name their kernel by their directory, their platform by their name.
            path = tmp_path / variant / fmt / source.parent.name / source.name
            path.parent.mkdir(parents=True)
            path.write_bytes(content)
            db = tmp_path / variant / fmt / "into.db"
            _cli("db", "upgrade", "--db", db, "--schema-only")
            proc = _cli("import", path, "--db", db)
            assert "cannot tell its format" not in proc.stdout + proc.stderr
            imported[f"{fmt}/{variant}"] = [r[:4] for r in _rows(db)]
        plain = imported[f"{fmt}/plain"]
        assert plain, fmt
        for variant in ("bom", "space", "bom+space"):
            assert imported[f"{fmt}/{variant}"] == plain, (fmt, variant)


# ------------------------------------------------------------------ export


def test_an_export_that_matches_nothing_exits_1_and_writes_nothing(tmp_path: Path) -> None:
    """A script `presetdb export ... && ship out/` stops at an empty export."""
    empty = tmp_path / "empty.db"
    _cli("db", "upgrade", "--db", empty, "--schema-only")
    cases = [
        ("-k", "all", "-p", "all", "--db", empty),  # an empty db
        ("-k", "rms_norm", "-p", "nvidia_b200"),  # a known kernel and platform, no presets of the pair
        ("-k", "all", "-p", "nvidia_b200"),
    ]
    for number, case in enumerate(cases):
        for fmt in ("presetdb", "vllm"):
            out = tmp_path / f"out{number}{fmt}"
            proc = _cli("export", *case, "--format", fmt, "-o", out, ok=False)
            assert proc.returncode == 1, proc.stdout + proc.stderr
            text = " ".join((proc.stdout + proc.stderr).split())
            assert "nothing to export" in text and "nothing written" in text, text
            assert not out.exists(), case
    # The same command with presets to export still writes them.
    out = tmp_path / "some"
    _cli("export", "-k", "rms_norm", "-p", H100, "--format", "vllm", "-o", out)
    assert json.loads((out / "rms_norm" / f"{H100}.json").read_text())


# ------------------------------------------------------------------ vLLM platform names


def test_a_vllm_files_platform_comes_from_its_name_only_when_unambiguous(tmp_path: Path) -> None:
    _needs_vllm_files()
    db = tmp_path / "v.db"
    _cli("db", "upgrade", "--db", db)

    def place(name: str) -> Path:
        path = tmp_path / name / VLLM_FILE.parent.name / f"{name}.json"
        path.parent.mkdir(parents=True)
        shutil.copyfile(VLLM_FILE, path)  # the real file, under another name
        return path

    plain = _cli("import", VLLM_FILE, "--db", db, "--dry-run", COLUMNS="400")
    assert f"on {H100} (platform from file name '{H100}'" in plain.stdout, plain.stdout
    alias = _cli("import", place("nvidia_h100_80gb_hbm3"), "--db", db, "--dry-run", COLUMNS="400")
    assert f"(platform from file name 'nvidia_h100_80gb_hbm3', a device alias of {H100}" in alias.stdout, alias.stdout

    for name, named in (("nvidia_b200_h100", ("nvidia_b200", H100)), ("h100_vs_h200", (H100, "nvidia_h200"))):
        path = place(name)
        before = _rows(db)
        proc = _cli("import", path, "--db", db, ok=False)
        text = " ".join((proc.stdout + proc.stderr).split())
        assert "ambiguous" in text and "--platform" in text and all(n in text for n in named), text
        assert _rows(db) == before  # nothing written
        chosen = _cli("import", path, "--db", db, "--platform", H100, COLUMNS="400")
        assert f"on {H100} (platform from --platform" in chosen.stdout, chosen.stdout
    assert [r for r in _rows(db) if r[0] == "fused_qk_norm_rope"]


# ------------------------------------------------------------------ CLI conventions


def _commands(group: Any, prefix: str = "") -> dict[str, Any]:
    found: dict[str, Any] = {}
    for name, command in group.commands.items():
        if hasattr(command, "commands"):  # a group (`db`)
            found.update(_commands(command, f"{prefix}{name} "))
        else:
            found[f"{prefix}{name}"] = command
    return found


def test_p_means_platform_in_every_command_and_list_show_pick_speak_json() -> None:
    commands = _commands(typer.main.get_command(app))
    with_p = {}
    for name, command in commands.items():
        for param in command.params:
            if "-p" in getattr(param, "opts", []) or "-p" in getattr(param, "secondary_opts", []):
                with_p[name] = param.opts
    assert with_p, "no command has -p"
    assert all(opts == ["--platform", "-p"] or set(opts) == {"--platform", "-p"} for opts in with_p.values()), with_p
    assert {"list", "pick", "export", "import"} <= set(with_p), with_p
    runner = CliRunner()
    for args in (["list"], ["show", "1"], ["pick", "-k", "rms_norm", "-p", H100, "-s", "{}"]):
        wrong = runner.invoke(app, [*args, "--format", "xml"])
        assert wrong.exit_code == 2 and "table" in wrong.output and "json" in wrong.output, wrong.output

    listed = runner.invoke(app, ["list", "-k", "rms_norm", "-p", H100, "--format", "json"])
    assert listed.exit_code == 0, listed.output
    rows = json.loads(listed.output)
    assert rows and {(r["kernel"], r["platform"]) for r in rows} == {("rms_norm", H100)}
    shown = runner.invoke(app, ["show", str(rows[0]["id"]), "--format", "json"])
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.output)["shape_key"] == rows[0]["shape_key"]
    picked = runner.invoke(app, ["pick", "-k", "rms_norm", "-p", H100, "-s", rows[0]["shape_key"], "--format", "json"])
    assert picked.exit_code == 0, picked.output
    doc = json.loads(picked.output)
    assert doc["match"] == "exact" and doc["id"] == rows[0]["id"]
    # The tables name the preset id and the layer's file, as the JSON does.
    table = runner.invoke(app, ["pick", "-k", "rms_norm", "-p", H100, "-s", rows[0]["shape_key"]])
    flat = " ".join(table.output.split())
    assert f"preset {doc['id']}" in flat and f"{doc['layer']} ({doc['db']})" in flat, table.output
    shown_table = " ".join(runner.invoke(app, ["show", str(doc["id"])]).output.split())
    assert f"preset {doc['id']} in {doc['db']}" in shown_table, shown_table


def _table_rows(output: str) -> list[list[str]]:
    return [[cell.strip() for cell in line.split("│")[1:-1]] for line in output.splitlines() if line.startswith("│")]


@pytest.mark.parametrize("columns", [None, "40", "80"])
def test_list_keeps_whole_columns_when_piped(columns: str | None) -> None:
    """Piped (a child process's stdout is a pipe; CliRunner captures it) `list` prints
    one line per preset with every shape key whole, whatever COLUMNS says."""
    expected = json.loads(CliRunner().invoke(app, ["list", "-k", "rms_norm", "-f", "json"]).output)
    assert expected
    proc = _cli("list", "-k", "rms_norm", COLUMNS=columns)
    rows = _table_rows(proc.stdout)
    assert len(rows) == len(expected), proc.stdout
    assert [(r[0], r[3]) for r in rows] == [(str(p["id"]), p["shape_key"]) for p in expected], proc.stdout

    # `show`'s tables too: each runner-up's config on one line, whole.
    preset = expected[0]["id"]
    shown = _cli("show", str(preset), COLUMNS=columns).stdout
    configs = [r[2] for r in _table_rows(shown) if len(r) == 3 and r[0].isdigit()]
    assert configs and all(json.loads(c) for c in configs), shown

    env = {"COLUMNS": columns} if columns else {}
    result = CliRunner().invoke(app, ["list", "-k", "rms_norm"], env=env)
    assert result.exit_code == 0, result.output
    assert [(r[0], r[3]) for r in _table_rows(result.output)] == [(str(p["id"]), p["shape_key"]) for p in expected]



def test_setting_a_pragma_is_refused_as_a_write_not_as_a_delete_statement(tmp_path: Path) -> None:
    """`PRAGMA journal_mode=DELETE` was refused as 'DELETE inside the statement ... quote a
    column of that name'. It is a pragma being set: say that, and how to read it."""
    db = tmp_path / "a.db"
    _cli("db", "upgrade", "--db", db, "--schema-only")
    before = db.read_bytes()
    for statement, value in (
        ("PRAGMA journal_mode=DELETE", "DELETE"), ("pragma main.journal_mode = wal", "wal"),
        ("PRAGMA journal_mode('delete')", "'delete'"),
    ):
        proc = _cli("sql", statement, "--db", db, ok=False)
        text = " ".join((proc.stdout + proc.stderr).split())
        assert f"PRAGMA journal_mode = {value} sets a pragma" in text and "quote a column" not in text, text
    assert db.read_bytes() == before
    reads = _cli("sql", "PRAGMA journal_mode", "--db", db, "--format", "json")
    assert json.loads(reads.stdout) == [{"journal_mode": "wal"}]  # files presetdb creates are WAL
    info = _cli("sql", "PRAGMA table_info(presets)", "--db", db, "--format", "json")
    assert "shape_key" in {row["name"] for row in json.loads(info.stdout)}
