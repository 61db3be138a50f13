"""`presetdb build` (the shippable .db) and `presetdb demo` (the end-to-end tour)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from presetdb.cli.common import console, plain, safe


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
    data_dir: Annotated[
        Path | None,
        typer.Option(
            "--data-dir",
            help="Your data migrations (from `presetdb new-migration`), applied after the "
            "package's. Default: ./presetdb-data when it exists.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Build the shippable db from the packaged migrations (schema + seed data) and your
    own data migrations (./presetdb-data, or --data-dir), or with --from from a team's
    registry.

    The file is compacted with VACUUM INTO (rollback journal, ready to open immutable),
    replaced atomically, and described by OUT.manifest.json. --embedded writes the
    package's own default db instead (run it in a checkout after adding a migration).

    Example: presetdb build --out dist/presets.db --from postgresql+psycopg://tuner@dbhost/presets
    """
    from presetdb.offline.build import build_database, build_embedded
    from presetdb.store.migrate import DATA_DIR_NAME

    if (out is None) == (not embedded):
        raise typer.BadParameter("give --out PATH or --embedded (one of them)", param_hint="--out")
    if embedded and (source is not None or data_dir is not None):
        raise typer.BadParameter("--embedded builds from the packaged migrations only", param_hint="--embedded")
    if not embedded and source is None and data_dir is None and (Path.cwd() / DATA_DIR_NAME).is_dir():
        data_dir = Path.cwd() / DATA_DIR_NAME
    if data_dir is not None and not (data_dir / "versions").is_dir():
        raise typer.BadParameter(
            f"{plain(data_dir)}: no versions/ folder; make one with `presetdb new-migration FILE -m MSG`",
            param_hint="--data-dir",
        )
    if embedded:
        manifest = build_embedded()
    else:
        assert out is not None
        manifest = build_database(out, source=source, data_dir=data_dir)
    table = Table(title=f"built {safe(manifest.path)}", show_header=False)
    table.add_row("sha256", manifest.sha256)
    table.add_row("content digest", manifest.content_digest)
    table.add_row("head revision", manifest.head_revision)
    table.add_row("built from", safe(manifest.source))
    if manifest.data_revision is not None:
        table.add_row("your data revision", f"{safe(manifest.data_revision)} (from {safe(data_dir)})")
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
    key exactly, need a nearest match, and miss; print what was chosen and why. Then a
    Llama-3-8B decoder MLP block at decode, compared with the same block in PyTorch.

    Example: presetdb demo
    """
    from presetdb.cli.demo import run_demo

    raise typer.Exit(run_demo(force_interpret=interpret))


def register(app: typer.Typer) -> None:
    app.command("build")(build)
    app.command("demo")(demo)
