"""The `presetdb` command. Each submodule adds one group of commands to `app`."""

from __future__ import annotations

import sys

import typer

from presetdb.cli import audit, build, coverage, db, imports, presets, queue, refine, shapes
from presetdb.cli.common import console, err_console, safe
from presetdb.errors import PresetDBError

app = typer.Typer(
    name="presetdb",
    help="Pre-tuned Helion kernel configs in a shippable, auditable SQLite database.\n\n"
    "Example: presetdb list --kernel rms_norm --platform nvidia_h100",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
)
for module in (db, presets, imports, build, audit, shapes, coverage, refine, queue):
    module.register(app)


def main() -> None:
    """Entry point: PresetDBError becomes one clear line and exit code 1, not a traceback."""
    import sqlite3

    from sqlalchemy.exc import SQLAlchemyError

    try:
        app()
    except PresetDBError as exc:
        err_console.print(f"[bold red]error:[/] {safe(exc, limit=20_000)}", highlight=False)
        sys.exit(1)
    except (SQLAlchemyError, sqlite3.Error) as exc:
        # The store maps these to errors naming the file; this is the last net, so a
        # user never gets a traceback from a database they pointed at.
        err_console.print(
            f"[bold red]error:[/] database error: {safe(exc, limit=2_000)}. "
            "`presetdb db check --db PATH` reports damage.",
            highlight=False,
        )
        sys.exit(1)


__all__ = ["app", "console", "main"]
