"""`presetdb build` (the shippable .db) and `presetdb demo` (the end-to-end tour)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from presetdb.cli.common import console


def build(
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Where to write the .db file.")] = None,
    embedded: Annotated[
        bool,
        typer.Option("--embedded", help="Rebuild the package's embedded default db (presetdb/data/default.db)."),
    ] = False,
    source: Annotated[
        str | None,
        typer.Option(
            "--from",
            help="Build from this database instead of the packaged seed data: a registry "
            "URL (postgresql+psycopg://USER@HOST/DB) or a SQLite file at this package's schema.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Build the shippable db from the packaged migrations (schema + seed data), or with
    --from from a team's registry.

    The file is compacted with VACUUM INTO (rollback journal, ready to open immutable),
    replaced atomically, and described by OUT.manifest.json. --embedded writes the
    package's own default db instead (run it in a checkout after adding a migration).

    Example: presetdb build --out dist/presets.db --from postgresql+psycopg://tuner@dbhost/presets
    """
    from presetdb.offline.build import build_database, build_embedded

    if (out is None) == (not embedded):
        raise typer.BadParameter("give --out PATH or --embedded (one of them)", param_hint="--out")
    if embedded and source is not None:
        raise typer.BadParameter("--embedded builds from the packaged migrations only", param_hint="--from")
    manifest = build_embedded() if embedded else build_database(out, source=source)  # type: ignore[arg-type]
    table = Table(title=f"built {manifest.path}", show_header=False)
    table.add_row("sha256", manifest.sha256)
    table.add_row("content digest", manifest.content_digest)
    table.add_row("head revision", manifest.head_revision)
    table.add_row("built from", escape(manifest.source))
    table.add_row("bytes", f"{manifest.bytes:,}")
    for name, count in manifest.counts.items():
        table.add_row(f"presets {name}", str(count))
    console.print(table)
    console.print(f"manifest: {manifest.path}.manifest.json")


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
