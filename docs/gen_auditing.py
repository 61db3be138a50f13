"""Refresh the example outputs in docs/auditing.md from real runs.

    .venv/bin/python docs/gen_auditing.py          # rewrite docs/auditing.md in place
    .venv/bin/python docs/gen_auditing.py --check  # exit 1 when the page is out of date

Every ```console block of the page whose first line is ``$ COMMAND`` gets the real
output of COMMAND; the prose around the blocks is left alone. Commands run in a
scratch folder that holds:

- ``presets.db``: the example db of tests/audit_fixtures.py (written through the
  repository; invented timings), compacted like a `presetdb build` output;
- ``old.db``: the release before it, for ``presetdb diff``;
- ``seed.db``: the real shipped db, built by `presetdb build` from the package's
  migrations (the H100 seed presets);
- ``presetdb/audit/sql``: a link to the package's canned queries, as in a checkout.

``presetdb ...`` runs through presetdb's entry point (`presetdb.cli.main`) in this
process; ``sqlite3 ...`` runs the sqlite3 shell on PATH.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "auditing.md"
ANSI_STYLE = re.compile(r"\x1b\[[0-9;]*m")
BLOCK = re.compile(r"```console\n\$ (?P<command>[^\n]+)\n(?P<output>.*?)```", re.DOTALL)
WIDTH = "110"  # terminal width for Rich tables


def make_workspace(folder: Path) -> None:
    sys.path.insert(0, str(ROOT / "tests"))
    from audit_fixtures import seed_example_db, ship_copy

    ship_copy(seed_example_db(folder / "example.db"), folder / "presets.db")
    ship_copy(seed_example_db(folder / "previous.db", previous_release=True), folder / "old.db")
    for scratch in folder.glob("example.db*"):
        scratch.unlink()
    for scratch in folder.glob("previous.db*"):
        scratch.unlink()
    from presetdb.offline.build import build_database

    build_database(folder / "seed.db")
    (folder / "seed.db.manifest.json").unlink()
    (folder / "presetdb" / "audit").mkdir(parents=True)
    (folder / "presetdb" / "audit" / "sql").symlink_to(ROOT / "presetdb" / "audit" / "sql")


def _presetdb(argv: list[str]) -> tuple[int, str]:
    """`presetdb ARGV` in this process, through the same entry point as the command
    (one interpreter for all commands: starting one per command is slow)."""
    from presetdb.cli import main

    out = io.StringIO()
    sys.argv = ["presetdb", *argv]
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        try:
            main()
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
    return code, out.getvalue()


def _sqlite3(argv: list[str], folder: Path) -> tuple[int, str]:
    if shutil.which("sqlite3") is None:
        raise SystemExit("the sqlite3 shell is needed to refresh docs/auditing.md")
    proc = subprocess.run(
        ["sqlite3", *argv], cwd=folder, capture_output=True, text=True, timeout=60, check=False
    )
    return proc.returncode, proc.stdout + proc.stderr


def run(command: str, folder: Path) -> str:
    program, *argv = shlex.split(command)
    if program == "presetdb":
        code, output = _presetdb(argv)
    elif program == "sqlite3":
        code, output = _sqlite3(argv, folder)
    else:
        raise SystemExit(f"docs/auditing.md: only presetdb and sqlite3 commands run: {command}")
    if code not in (0, 1):  # 1: a refusal the page shows on purpose
        raise SystemExit(f"`{command}` failed ({code}):\n{output}")
    # Trailing blanks (sqlite3 pads columns) would not survive an editor anyway.
    output = ANSI_STYLE.sub("", output)  # TTY_COMPATIBLE styles headers and titles: the page shows plain text
    return "\n".join(line.rstrip() for line in output.rstrip().splitlines()) + "\n"


def render(page: str) -> str:
    with tempfile.TemporaryDirectory(prefix="presetdb-docs-") as tmp:
        folder = Path(tmp)
        # Before presetdb.cli is imported: its Rich consoles read COLUMNS once.
        os.environ.update(
            {
                "COLUMNS": WIDTH,
                # tables fitted to WIDTH as on a terminal (piped, they keep their natural width), no colour
                "TTY_COMPATIBLE": "1",
                "NO_COLOR": "1",
                "PRESETDB_CACHE_DIR": str(folder / "cache"),
                "PRESETDB_USER_DB": str(folder / "cache" / "overlay.db"),
            }
        )
        os.environ.pop("PRESETDB_PATH", None)
        make_workspace(folder)
        cwd = Path.cwd()
        os.chdir(folder)  # the commands name files relative to the workspace
        try:
            outputs = {m["command"]: run(m["command"], folder) for m in BLOCK.finditer(page)}
        finally:
            os.chdir(cwd)
    return BLOCK.sub(lambda m: f"```console\n$ {m['command']}\n{outputs[m['command']]}```", page)


def main(argv: list[str]) -> int:
    page = PAGE.read_text(encoding="utf-8")
    fresh = render(page)
    if "--check" in argv:
        if fresh != page:
            print(
                "docs/auditing.md is out of date: run .venv/bin/python docs/gen_auditing.py",
                file=sys.stderr,
            )
            return 1
        return 0
    PAGE.write_text(fresh, encoding="utf-8")
    print(f"refreshed {PAGE.relative_to(ROOT)} ({len(BLOCK.findall(page))} outputs)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
