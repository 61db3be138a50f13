"""`presetdb build` (the shippable .db) and `presetdb demo` (the end-to-end tour)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from presetdb.cli.common import console, safe


def build(
    out: Annotated[Path, typer.Option("--out", "-o", help="Where to write the .db file.")],
) -> None:
    """Build the shippable db from the packaged migrations (schema + seed data).

    The file is compacted with VACUUM INTO (rollback journal, ready to open immutable),
    replaced atomically, and described by OUT.manifest.json.

    Example: presetdb build --out dist/presets.db
    """
    from presetdb.offline.build import build_database

    manifest = build_database(out)
    table = Table(title=f"built {safe(manifest.path)}", show_header=False)
    table.add_row("sha256", manifest.sha256)
    table.add_row("content digest", manifest.content_digest)
    table.add_row("head revision", manifest.head_revision)
    table.add_row("bytes", f"{manifest.bytes:,}")
    for name, count in manifest.counts.items():
        table.add_row(f"presets {safe(name)}", str(count))
    console.print(table)
    console.print(f"manifest: {safe(manifest.path)}.manifest.json", highlight=False)


def demo(
    interpret: Annotated[
        bool,
        typer.Option(
            "--interpret/--no-interpret",
            help="Force the Triton interpreter (automatic when no GPU is present).",
        ),
    ] = False,
) -> None:
    """Run every example kernel through torch.ops.presetdb.* on shapes that hit a stored
    key exactly, need a nearest match, and miss; print what was chosen and why.

    Example: presetdb demo
    """
    from presetdb.cli.demo import run_demo

    raise typer.Exit(run_demo(force_interpret=interpret))


def register(app: typer.Typer) -> None:
    app.command("build")(build)
    app.command("demo")(demo)
