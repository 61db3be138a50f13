"""Shared CLI pieces: consoles, the --db option and how a database is resolved."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from presetdb.store.engine import REGISTRY_ENV, Target, describe, parse_target

console = Console()
err_console = Console(stderr=True)

DbOption = Annotated[
    str | None,
    typer.Option(
        "--db",
        help="Database: a file, or a registry URL (postgresql+psycopg://USER@HOST/DB). "
        f"Default: ${REGISTRY_ENV}, else $PRESETDB_PATH, else the package's embedded default db.",
        show_default=False,
    ),
]


def db_path(db: str | Path | None, *, for_write: bool = False) -> Target:
    """--db, else PRESETDB_REGISTRY, else PRESETDB_PATH, else the embedded default db
    (built on first use). A registry URL comes back as a `sqlalchemy.URL`, a file as a Path."""
    if db is not None:
        return parse_target(db)
    for variable in (REGISTRY_ENV, "PRESETDB_PATH"):
        value = os.environ.get(variable, "").strip()
        if value:
            return parse_target(value)
    if for_write:
        raise typer.BadParameter(
            f"give --db PATH|URL (or set {REGISTRY_ENV} / PRESETDB_PATH): which database to change?"
        )
    from presetdb.store.default_db import default_db_path

    return default_db_path()


def db_label(target: Target) -> str:
    """How output names a database (a registry URL without its password)."""
    return describe(target)
