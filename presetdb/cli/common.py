"""Shared CLI pieces: consoles, the --db option and how a database is resolved."""

from __future__ import annotations

import os
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from presetdb.store.engine import REGISTRY_ENV, Target, describe, parse_target

console = Console()
err_console = Console(stderr=True)

from presetdb._text import MAX_SHOWN, clip


def _width(stream: object) -> int | None:
    # Piped output is read by people and by grep: give tables room instead of folding
    # every column to a few characters at the 80 columns Rich assumes off a terminal.
    isatty = getattr(stream, "isatty", None)
    if isatty is not None and isatty():
        return None
    return int(os.environ.get("COLUMNS", "0") or 0) or 200


_UNBOUNDED = 100_000  # measuring width for tables printed off a terminal
console = Console(width=_width(sys.stdout))
err_console = Console(stderr=True, width=_width(sys.stderr))


def print_table(table: Table) -> None:
    """A table on a terminal fits it; piped (grep, a file, a pager, CI logs) it keeps its
    natural width, whatever COLUMNS says, so no column is folded to a few characters."""
    if console.is_terminal:
        console.print(table)
        return
    natural = console.measure(table, options=console.options.update_width(_UNBOUNDED)).maximum
    wide = Console(width=max(natural, console.width), color_system=None, highlight=False)
    wide.print(table)  # writes to sys.stdout at print time, as `console` does


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

ModuleOption = Annotated[
    list[str] | None,
    typer.Option("--module", help="Import this module first (it registers your kernel); repeatable."),
]


def load_modules(modules: list[str] | None) -> None:
    """--module: import the user's modules so their kernels are registered."""
    if modules:
        from presetdb.helion.registry import load_kernel_modules

        load_kernel_modules(modules)


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
