"""Copying a database (a registry, or a SQLite file) into a fresh SQLite file.

`presetdb build --from` makes its release file this way, and audits and diffs of a
registry read such a copy (the canned audits are SQLite SQL, the same text datasette
runs on the release file).

The copy is made by the migrations (schema at the source's revision, no seed data),
emptied, then filled table by table in dependency order. Integer row ids are renumbered
densely in their original order and every foreign key follows: PostgreSQL sequences leave
gaps (a rolled-back or ON CONFLICT insert still uses a number), so a registry and a SQLite
file that hold the same imports, made in the same order, copy to the same rows and the
same content digest.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Table, select

from presetdb.errors import IntegrityCheckError, StoreError
from presetdb.store import migrate
from presetdb.store.engine import Target, describe, make_engine, parse_target
from presetdb.store.models import Base

BATCH = 5_000


def _renumbered(table: Table) -> bool:
    pk = list(table.primary_key.columns)
    return len(pk) == 1 and pk[0].name == "id"


def copy_to_sqlite(source: Path | str | Target, dest: Path) -> str:
    """Copy `source` into a new SQLite file `dest` (which must not exist); returns the
    revision. The source is read in one read-only transaction (a consistent snapshot)."""
    target = parse_target(source)
    dest = Path(dest)
    if dest.exists():
        raise StoreError(f"{dest}: already exists; the copy goes into a new file")
    store = migrate.open_store(target, "ro")
    try:
        revision = store.revision or "base"
        migrate.upgrade(dest, revision, seed_data=False)
        tables = Base.metadata.sorted_tables
        # Foreign keys off while filling (superseded_by points forward); checked at the end.
        engine = make_engine(dest, "rw", pooled=False, foreign_keys=False)
        try:
            with store.read() as session, engine.connect() as out:
                src = session.connection()
                out.begin()
                for table in reversed(tables):
                    out.execute(table.delete())
                maps: dict[str, dict[int, int]] = {}
                for table in tables:
                    if _renumbered(table):
                        ids = src.execute(select(table.c.id).order_by(table.c.id)).scalars()
                        maps[table.name] = {old: new for new, old in enumerate(ids, start=1)}
                for table in tables:
                    _copy_table(src, out, table, maps)
                problems = out.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
                if problems:
                    out.rollback()
                    raise IntegrityCheckError(
                        f"{describe(target)}: the copy breaks foreign keys {problems[:5]}; nothing written"
                    )
                out.commit()
        finally:
            engine.dispose()
    except BaseException:
        dest.unlink(missing_ok=True)
        raise
    finally:
        store.dispose()
    return revision


def _copy_table(src: Any, out: Any, table: Table, maps: dict[str, dict[int, int]]) -> None:
    remap: dict[str, dict[int, int]] = {}
    for column in table.columns:
        for fk in column.foreign_keys:
            if fk.column.table.name in maps and fk.column.name == "id":
                remap[column.name] = maps[fk.column.table.name]
    if _renumbered(table):
        remap["id"] = maps[table.name]
    order = list(table.primary_key.columns)
    result = src.execution_options(yield_per=BATCH).execute(select(table).order_by(*order))
    for rows in result.partitions(BATCH):
        batch = []
        for row in rows:
            values = dict(row._mapping)
            for name, mapping in remap.items():
                if values[name] is not None:
                    values[name] = mapping[values[name]]
            batch.append(values)
        if batch:
            out.execute(table.insert(), batch)


@contextmanager
def sqlite_snapshot(source: Path | str | Target) -> Iterator[Path]:
    """A SQLite file to read: the file itself, or a temporary copy of a registry."""
    target = parse_target(source)
    if isinstance(target, Path):
        yield target
        return
    tmp = tempfile.mkdtemp(prefix="presetdb-snapshot-")
    try:
        path = Path(tmp) / "registry.db"
        copy_to_sqlite(target, path)
        yield path
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
