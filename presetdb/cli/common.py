"""Shared CLI pieces: consoles, the --db option and how a db path is resolved."""

from __future__ import annotations

import os
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from presetdb._text import MAX_SHOWN, clip


def _width(stream: object) -> int | None:
    # Piped output is read by people and by grep: give tables room instead of folding
    # every column to a few characters at the 80 columns Rich assumes off a terminal.
    isatty = getattr(stream, "isatty", None)
    if isatty is not None and isatty():
        return None
    return int(os.environ.get("COLUMNS", "0") or 0) or 200


console = Console(width=_width(sys.stdout))
err_console = Console(stderr=True, width=_width(sys.stderr))


def safe(value: object, limit: int = MAX_SHOWN) -> str:
    """The one way user or db text reaches Rich: control characters and terminal escapes
    removed, length capped, Rich markup escaped (`[red]x` prints as typed)."""
    return escape(clip(value, limit))


def plain(value: object, limit: int = MAX_SHOWN) -> str:
    """`safe` for text printed without Rich (typer.echo): no markup to escape."""
    return clip(value, limit)


def echo(value: object, *, err: bool = False) -> None:
    """typer.echo for lines that hold user or db text (multi-line, so a larger cap)."""
    typer.echo(plain(value, limit=20 * MAX_SHOWN), err=err)


class ListFormat(str, Enum):
    table = "table"
    json = "json"


ListFormatOption = Annotated[
    ListFormat, typer.Option("--format", "-f", help="table (Rich) or json (for scripts).")
]
PlatformOption = Annotated[
    str | None, typer.Option("--platform", "-p", help="Canonical platform, e.g. nvidia_h100.")
]

DbOption = Annotated[
    Path | None,
    typer.Option(
        "--db",
        help="Database file. Default: $PRESETDB_PATH, else the package's embedded default db.",
        show_default=False,
    ),
]


def db_path(db: Path | None, *, for_write: bool = False) -> Path:
    """--db, else PRESETDB_PATH, else the embedded default db (built on first use)."""
    if db is not None:
        return db.expanduser()
    env = os.environ.get("PRESETDB_PATH", "").strip()
    if env:
        return Path(env).expanduser()
    if for_write:
        raise typer.BadParameter("give --db PATH (or set PRESETDB_PATH): which file to change?")
    from presetdb.store.default_db import default_db_path

    return default_db_path()


def warn_if_served(path: Path) -> None:
    """Writing a file that processes serve immutable (PRESETDB_PATH, or a built file with
    its manifest) changes pages under readers that promised SQLite nobody would: they may
    read stale or torn data. Say so, and how to do it safely."""
    env = os.environ.get("PRESETDB_PATH", "").strip()
    from presetdb.runtime.layers import same_file

    served = bool(env) and same_file(path, Path(env).expanduser())
    built = path.with_name(path.name + ".manifest.json").exists()
    if served or built:
        why = "it is PRESETDB_PATH" if served else "it is a built, shippable file (manifest next to it)"
        err_console.print(
            f"[yellow]warning:[/] writing {safe(path)}: {why}. Processes serving it open it "
            "immutable and may read stale or torn pages while it changes. Safer: write a copy "
            "(or `presetdb build` a new file) and swap it in with an atomic rename.",
            highlight=False,
        )
