"""Building the shippable .db: every packaged migration (schema + seed data) into a fresh
file, compacted with VACUUM INTO into a rollback-journal file, written atomically, with a
manifest (file sha256, content digest, head revision, counts per kernel x platform).

The content digest covers the sorted rows of every table except import-time stamps, so
two builds of the same migrations give the same digest even though file bytes differ.

``--from SOURCE`` builds the release from a database instead of the migrations' seed data:
a team's PostgreSQL registry (or a SQLite file), copied by `presetdb.store.snapshot` with
row ids renumbered densely, so a registry and a SQLite db that hold the same imports
build files with the same content digest.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from presetdb import __version__
from presetdb.offline.importers.records import file_sha256, write_atomic
from presetdb.store import migrate
from presetdb.store.engine import Target, connect_sqlite, describe, parse_target
from presetdb.store.snapshot import copy_to_sqlite

# Columns stamped with the wall clock at import time: excluded from the content digest.
VOLATILE_COLUMNS = {"created_at", "imported_at", "updated_at"}


@dataclass(frozen=True)
class Manifest:
    path: str
    sha256: str
    content_digest: str
    head_revision: str
    data_revision: str | None  # the user data folder's revision (presetdb_data_version), if any
    presetdb_version: str
    bytes: int
    counts: dict[str, int]  # "kernel/platform" -> active presets
    source: str = "migrations"  # or the database built from (a registry URL without password)
    # "kernel/platform" -> active presets still unverified (kernel not registered at import)
    unverified: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"


def content_digest(path: Path) -> str:
    """sha256 over every table's rows (sorted), volatile timestamp columns left out."""
    digest = hashlib.sha256()
    conn = connect_sqlite(path, "ro")
    try:
        tables = [
            r[0]
            for r in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' "
                "AND name NOT LIKE 'sqlite_%' ORDER BY name"
            )
        ]
        for table in tables:
            columns = [
                r[1]
                for r in conn.execute("SELECT * FROM pragma_table_info(?)", (table,))
                if r[1] not in VOLATILE_COLUMNS
            ]
            digest.update(f"table {table} {columns}\n".encode())
            quoted = ", ".join(f'"{c}"' for c in columns)
            # Table and column names come from sqlite_master, not from user input.
            rows = conn.execute(f'SELECT {quoted} FROM "{table}"').fetchall()  # sql: names from sqlite_master
            for row in sorted(rows, key=repr):
                digest.update(repr(row).encode() + b"\n")
    finally:
        conn.close()
    return digest.hexdigest()


def active_counts(path: Path) -> dict[str, int]:
    conn = connect_sqlite(path, "ro")
    try:
        rows = conn.execute(
            "SELECT kernel || '/' || platform, active_presets FROM v_coverage ORDER BY 1"
        ).fetchall()
    finally:
        conn.close()
    return {k: int(v) for k, v in rows}


def unverified_counts(path: Path) -> dict[str, int]:
    conn = connect_sqlite(path, "ro")
    try:
        rows = conn.execute(
            "SELECT kernel || '/' || platform, COUNT(*) FROM v_active_presets "
            "WHERE verified = 0 GROUP BY 1 ORDER BY 1"
        ).fetchall()
    except sqlite3.OperationalError:  # built at a revision before 0007: no unverified rows
        return {}
    finally:
        conn.close()
    return {k: int(v) for k, v in rows}


def build_database(
    out: Path, *, target: str = "head", source: Path | str | Target | None = None, data_dir: Path | None = None
) -> Manifest:
    """Build `out` from the packaged migrations, then the user data folder's (`data_dir`,
    see `presetdb.offline.new_migration`), or from `source` (a registry URL or a SQLite
    file, which must be at this package's schema); replaces `out` atomically."""
    out = Path(out).expanduser().resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    origin = None if source is None else parse_target(source)
    with tempfile.TemporaryDirectory(prefix="presetdb-build-", dir=out.parent) as tmp:
        work = Path(tmp) / "work.db"
        if origin is None:
            migrate.upgrade(work, target, seed_data=True, data_dir=data_dir)
        else:
            copy_to_sqlite(origin, work)
        compact = Path(tmp) / "compact.db"
        conn = sqlite3.connect(work)
        try:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            conn.execute("VACUUM INTO ?", (str(compact),))
        finally:
            conn.close()
        conn = sqlite3.connect(compact)
        try:
            # A shipped file is opened immutable: it must not depend on a -wal file.
            conn.execute("PRAGMA journal_mode=DELETE")
        finally:
            conn.close()
        with compact.open("rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(compact, out)  # same directory as `out`: an atomic rename
    manifest = Manifest(
        path=str(out),
        sha256=file_sha256(out),
        content_digest=content_digest(out),
        head_revision=migrate.revision_of(out) or "base",
        data_revision=migrate.data_revision_of(out),
        presetdb_version=__version__,
        bytes=out.stat().st_size,
        counts=active_counts(out),
        source="migrations" if origin is None else describe(origin),
        unverified=unverified_counts(out),
    )
    write_atomic(out.with_name(out.name + ".manifest.json"), manifest.to_json())
    return manifest


def build_embedded() -> Manifest:
    """Rebuild the package's embedded default db (`presetdb.store.default_db`)."""
    import dataclasses

    from presetdb.store.default_db import embedded_path

    out = embedded_path()
    manifest = dataclasses.replace(build_database(out), path=out.name)  # no machine path in the package
    write_atomic(out.with_name(out.name + ".manifest.json"), manifest.to_json())
    return manifest
