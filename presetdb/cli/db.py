"""`presetdb db upgrade|downgrade|current|check`: the schema and data migrations of a file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from presetdb.cli.common import DbOption, console, db_label, db_path, safe
from presetdb.store import migrate

db_app = typer.Typer(
    help="Schema and data migrations of a database file.\n\n"
    "Example: presetdb db upgrade --db presets.db",
    no_args_is_help=True,
)


@db_app.command("upgrade")
def upgrade(
    db: DbOption = None,
    revision: Annotated[str, typer.Argument(help="Target revision.")] = "head",
    schema_only: Annotated[
        bool, typer.Option("--schema-only", help="Skip seed data (an empty store).")
    ] = False,
    data_dir: Annotated[
        Path | None,
        typer.Option(
            "--data-dir",
            help="Also apply your data migrations from this folder (see `presetdb new-migration`).",
            show_default=False,
        ),
    ] = None,
    wal: Annotated[
        bool,
        typer.Option("--wal", help="Switch the file to WAL (a file otherwise keeps its journal mode)."),
    ] = False,
) -> None:
    """Create or upgrade a database to the newest schema and seed data.

    Example: presetdb db upgrade --db presets.db   (or --db postgresql+psycopg://tuner@dbhost/presets)
    """
    from presetdb.store.engine import set_wal

    path = db_path(db, for_write=True)
    exists = not isinstance(path, Path) or (path.exists() and path.stat().st_size > 0)
    before = migrate.revision_of(path) if exists else None
    after = migrate.upgrade(path, revision, seed_data=not schema_only, data_dir=data_dir)
    if wal and isinstance(path, Path):
        set_wal(path)
    console.print(f"{safe(db_label(path))}: {before or 'base'} -> {after}", highlight=False)


# "-1" is a revision, not an option: let it through as the argument.
@db_app.command("downgrade", context_settings={"ignore_unknown_options": True})
def downgrade(
    revision: Annotated[str, typer.Argument(help="Target revision, e.g. 0001, -1 or base.")],
    db: DbOption = None,
) -> None:
    """Downgrade a database (data migrations remove exactly the rows they added).

    Example: presetdb db downgrade -1 --db presets.db
    """
    path = db_path(db, for_write=True)
    before = migrate.revision_of(path)
    after = migrate.downgrade(path, revision)
    console.print(f"{safe(db_label(path))}: {before or 'base'} -> {after}", highlight=False)


@db_app.command("current")
def current(db: DbOption = None) -> None:
    """Print the database's revision and this package's head.

    Example: presetdb db current --db presets.db
    """
    path = db_path(db)
    rev = migrate.revision_of(path)
    head = migrate.head()
    state = "at head" if rev == head else "behind head" if rev else "empty"
    console.print(
        f"{safe(db_label(path))}: revision {safe(rev or 'base')} (package head {head}; {state})", highlight=False
    )
    data = migrate.data_revision_of(path) if isinstance(path, Path) else None
    if data is not None:
        console.print(f"your data revision: {safe(data)} (presetdb_data_version)", highlight=False)


@db_app.command("check")
def check(db: DbOption = None) -> None:
    """Check schema revision, PRAGMA integrity_check and foreign_key_check; exit 1 on a problem.

    Example: presetdb db check --db presets.db
    """
    path = db_path(db)
    report = migrate.check(path)
    out = console.print
    out(f"{safe(db_label(path))}: revision {safe(report.revision or 'base')} (head {report.head})", highlight=False)
    out(f"  schema:      {safe(report.schema_problem or 'ok')}", highlight=False)
    out(f"  integrity:   {safe('; '.join(report.integrity[:5]))}", highlight=False)
    out(f"  foreign keys: {len(report.foreign_key_problems)} problem(s)")
    out(f"  data:        {len(report.data_problems)} problem(s)")
    for problem in report.data_problems[:50]:
        out(f"    - {safe(problem)}", highlight=False)
    if len(report.data_problems) > 50:
        out(f"    ... and {len(report.data_problems) - 50} more")
    if not report.ok:
        raise typer.Exit(1)
    console.print("ok")


def register(app: typer.Typer) -> None:
    app.add_typer(db_app, name="db")


__all__ = ["Path", "register"]
