"""The `presetdb` command. Each submodule adds one group of commands to `app`."""

from __future__ import annotations

import sys

import typer

from presetdb.cli import audit, build, db, imports, presets, queue, refine, shapes
from presetdb.cli.common import console, err_console
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
for module in (db, presets, imports, build, audit, shapes, refine, queue):
    module.register(app)


def main() -> None:
    """Entry point: PresetDBError becomes one clear line and exit code 1, not a traceback."""
    try:
        app()
    except PresetDBError as exc:
        err_console.print(f"[bold red]error:[/] {exc}", highlight=False, markup=True)
        sys.exit(1)


__all__ = ["app", "console", "main"]
