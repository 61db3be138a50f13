"""Shared CLI pieces: consoles, the --db option and how a db path is resolved."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

console = Console()
err_console = Console(stderr=True)

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
