"""Alembic, driven from code, and the rules for opening a database.

The migrations ship inside the package (`presetdb.migrations`); the Alembic Config is
built here from that location, never from the working directory or an alembic.ini.

Revisions are linear. Each revision module says ``presetdb_kind = "schema"`` or
``"data"``. A database is compatible with this package when its revision is known and
the newest *schema* revision at or below it is this package's newest schema revision:
a deployment db that lacks only newer seed data still opens.

Every function takes a *target*: a SQLite file path, or a PostgreSQL registry URL
(`presetdb.store.engine.parse_target`). On PostgreSQL a migration runs in one
transaction too (DDL is transactional there) and holds the registry's writer lock.

A user's own data migrations (``presetdb new-migration``) live in the user's project,
in a data folder (``presetdb-data/``: ``versions/`` + ``seed_data/``), never in the
installed package. They form a chain of their own, recorded in the table
``presetdb_data_version`` instead of ``alembic_version``: a db carrying them keeps the
package's schema revision, so any presetdb with that schema opens it, and its data
revision is known to be data (docs/reliability.md, "Shipping your own presets").
"""

from __future__ import annotations

import functools
import importlib.resources
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import URL, Connection, Engine, inspect, text
from sqlalchemy.exc import DatabaseError

from presetdb.errors import (
    IntegrityCheckError,
    NotADatabaseError,
    PresetDBError,
    SchemaTooNewError,
    SchemaTooOldError,
    StoreError,
)
from presetdb.store.engine import (
    Mode,
    Store,
    Target,
    check_file,
    describe,
    engine_for,
    make_engine,
    parse_target,
    set_wal,
    translate_operational,
)


def migrations_dir() -> Path:
    return Path(str(importlib.resources.files("presetdb.migrations")))


def alembic_config(connection: Connection | None = None, *, seed_data: bool = True) -> Config:
    cfg = Config()
    # Versions are found in script_location/versions. No version_locations option: Alembic
    # splits that on spaces, which breaks installs under a path with a space. '%' is
    # ConfigParser interpolation syntax, hence the escape.
    cfg.set_main_option("script_location", str(migrations_dir()).replace("%", "%%"))
    cfg.attributes["connection"] = connection
    # Data migrations skip their inserts when False (user overlays hold no seed data).
    cfg.attributes["seed_data"] = seed_data
    return cfg


DATA_VERSION_TABLE = "presetdb_data_version"
DATA_DIR_NAME = "presetdb-data"


def data_config(data_dir: Path, connection: Connection | None = None, *, seed_data: bool = True) -> Config:
    """The Alembic Config of a user's data folder: its own versions, its own version table."""
    cfg = alembic_config(connection, seed_data=seed_data)
    cfg.set_main_option("path_separator", "os")
    cfg.set_main_option("version_locations", str(Path(data_dir).resolve() / "versions").replace("%", "%%"))
    cfg.attributes["version_table"] = DATA_VERSION_TABLE
    return cfg


def data_revisions(data_dir: Path) -> tuple[str, ...]:
    """The revisions of a user's data folder, oldest first (empty: none yet)."""
    versions = Path(data_dir) / "versions"
    if not versions.is_dir() or not any(versions.glob("*.py")):
        return ()
    script = ScriptDirectory.from_config(data_config(data_dir))
    found = [sc.revision for sc in script.walk_revisions("base", "heads")]
    return tuple(reversed(found))


def data_revision_of(path: Path | str) -> str | None:
    """The user data revision stamped in the db (None: it carries none)."""
    path = Path(path).expanduser()
    check_file(path, must_exist=True)
    engine = make_engine(path, "ro", pooled=False)
    try:
        with engine.connect() as conn:
            if DATA_VERSION_TABLE not in inspect(conn).get_table_names():
                return None
            rows = conn.execute(text(f"SELECT version_num FROM {DATA_VERSION_TABLE}")).scalars().all()  # sql: constant
    except DatabaseError as exc:
        raise translate_operational(path, exc) from exc
    finally:
        engine.dispose()
    return str(rows[0]) if rows else None


@dataclass(frozen=True)
class Revision:
    id: str
    kind: str  # "schema" or "data"
    message: str


@functools.cache
def revisions() -> tuple[Revision, ...]:
    """All revisions of this package, oldest first."""
    script = ScriptDirectory.from_config(alembic_config())
    found = []
    for sc in script.walk_revisions("base", "heads"):
        kind = getattr(sc.module, "presetdb_kind", "schema")
        found.append(Revision(sc.revision, kind, (sc.doc or "").strip()))
    found.reverse()
    heads = script.get_heads()
    if len(heads) != 1:
        raise StoreError(f"presetdb's migrations have {len(heads)} heads {heads}; expected one")
    return tuple(found)


def head() -> str:
    return revisions()[-1].id


def schema_head() -> str:
    return [r for r in revisions() if r.kind == "schema"][-1].id


def schema_revision_of(revision: str) -> str | None:
    """The newest schema revision at or below `revision` (None if unknown)."""
    ids = [r.id for r in revisions()]
    if revision not in ids:
        return None
    upto = revisions()[: ids.index(revision) + 1]
    return [r for r in upto if r.kind == "schema"][-1].id


def current_revision(engine: Engine, path: Target) -> str | None:
    """The revision stamped in the db, None for an empty SQLite file (or database)."""
    try:
        with engine.connect() as conn:
            tables = inspect(conn).get_table_names()
            if "alembic_version" not in tables:
                if tables:
                    what = "a database" if isinstance(path, URL) else "a SQLite file"
                    raise NotADatabaseError(
                        f"{describe(path)}: {what}, but not a presetdb database (tables: "
                        f"{', '.join(sorted(tables)[:8])}). Point --db / PRESETDB_PATH at a presetdb file."
                    )
                return None
            rows = conn.execute(text("SELECT version_num FROM alembic_version")).scalars().all()
    except DatabaseError as exc:
        raise translate_operational(path, exc) from exc
    if not rows:
        return None  # downgraded to base
    if len(rows) != 1:
        raise NotADatabaseError(f"{describe(path)}: alembic_version holds {len(rows)} rows; expected one")
    return str(rows[0])


def check_compatible(path: Target | str, revision: str | None) -> None:
    path = describe(path) if isinstance(path, URL) else path
    if revision is None:
        raise SchemaTooOldError(
            f"{path}: the database has no presetdb schema yet; run `presetdb db upgrade --db {path}`."
        )
    schema = schema_revision_of(revision)
    if schema is None:
        raise SchemaTooNewError(
            f"{path}: database revision {revision} is unknown to this presetdb (newest known: "
            f"{head()}); it was written by a newer presetdb: upgrade the package "
            "(`pip install -U presetdb`)."
        )
    if schema != schema_head():
        raise SchemaTooOldError(
            f"{path}: database schema is at {schema}, this presetdb expects {schema_head()}: "
            f"run `presetdb db upgrade --db {path}`."
        )


def missing_tables(engine: Engine, path: Target) -> list[str]:
    """Tables of this package's schema that the db lacks (a damaged or hand-edited file)."""
    from presetdb.store.models import Base

    try:
        with engine.connect() as conn:
            have = set(inspect(conn).get_table_names())
    except DatabaseError as exc:
        raise translate_operational(path, exc) from exc
    return sorted(set(Base.metadata.tables) - have)


def _damaged(path: Target, revision: str | None, missing: list[str]) -> str:
    return (
        f"{describe(path)}: damaged presetdb database: table(s) {', '.join(missing)} missing although it "
        f"is stamped at revision {revision}. Restore the file from a good copy or rebuild it "
        "(`presetdb build --out PATH`); `presetdb db check --db PATH` reports what else is wrong."
    )


def open_store(path: Path | str | URL, mode: Mode = "ro", *, pooled: bool = True) -> Store:
    """Open an existing presetdb database (file or registry), checking schema and revision."""
    target = parse_target(path)
    if isinstance(target, URL):
        return _open_registry(target, mode, pooled=pooled)
    path = target
    check_file(path, must_exist=True)
    # Check through a read-only connection: a rw connection switches the file to WAL,
    # which must not happen to another application's file or a newer db it refuses.
    probe = make_engine(path, "ro" if mode == "rw" else mode, pooled=False)
    try:
        revision = current_revision(probe, path)
        check_compatible(path, revision)
        missing = missing_tables(probe, path)
        if missing:
            raise IntegrityCheckError(_damaged(path, revision, missing))
    finally:
        probe.dispose()
    engine = make_engine(path, mode, pooled=pooled)
    return Store(path=path, mode=mode, engine=engine, revision=revision)


def _open_registry(url: URL, mode: Mode, *, pooled: bool) -> Store:
    probe = engine_for(url, "ro", pooled=False)
    try:
        revision = current_revision(probe, url)
        check_compatible(url, revision)
        missing = missing_tables(probe, url)
        if missing:
            raise IntegrityCheckError(_damaged(url, revision, missing))
    finally:
        probe.dispose()
    return Store(path=None, mode=mode, engine=engine_for(url, mode, pooled=pooled), revision=revision, url=url)


def _run_registry(url: URL, action: Callable[[Config], None], *, seed_data: bool) -> None:
    engine = engine_for(url, "rw", pooled=False)
    try:
        current_revision(engine, url)  # refuses other applications' databases
        with engine.connect() as conn:
            # One transaction (PostgreSQL's DDL is transactional): all revisions or none.
            # Its begin takes the writer lock, so two upgrades never interleave.
            conn.begin()
            action(alembic_config(conn, seed_data=seed_data))
            conn.commit()
    except DatabaseError as exc:
        raise translate_operational(url, exc) from exc
    except CommandError as exc:
        known = ", ".join(r.id for r in revisions())
        raise PresetDBError(
            f"{describe(url)}: {exc}. Revisions: {known}; also head, base, +N and -N."
        ) from None
    finally:
        engine.dispose()


def _run(path: Target, action: Callable[[Config], None], *, seed_data: bool, create: bool) -> None:
    if isinstance(path, URL):
        _run_registry(path, action, seed_data=seed_data)
        return
    check_file(path, must_exist=not create)
    if create and (not path.exists() or path.stat().st_size == 0):
        # A file presetdb creates is WAL: readers never block its writer. An existing
        # file keeps whatever journal mode it has.
        path.parent.mkdir(parents=True, exist_ok=True)
        set_wal(path)
    # Batch migrations copy tables; with foreign keys on, SQLite would cascade deletes
    # into child rows. Migrate with them off, then check every reference.
    engine = make_engine(path, "rw", pooled=False, foreign_keys=False)
    try:
        current_revision(engine, path)  # refuses other applications' files
        with engine.connect() as conn:
            # One outer transaction: Alembic treats SQLite as non-transactional DDL and
            # would commit after each revision unless the connection is already in one.
            conn.begin()
            action(alembic_config(conn, seed_data=seed_data))
            # Check inside the migration's transaction: on a problem nothing is written.
            problems = conn.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
            if problems:
                conn.rollback()
                raise IntegrityCheckError(
                    f"{path}: foreign key check failed after migrating (table, rowid, parent, "
                    f"fk): {problems[:5]}; the migration was rolled back, nothing was changed."
                )
            conn.commit()
    except DatabaseError as exc:
        raise translate_operational(path, exc) from exc
    except CommandError as exc:  # e.g. an unknown or unreachable target revision
        known = ", ".join(r.id for r in revisions())
        raise PresetDBError(
            f"{path}: {exc}. Revisions: {known}; also head, base, +N and -N."
        ) from None
    finally:
        engine.dispose()


def upgrade(
    path: Path | str | URL, target: str = "head", *, seed_data: bool = True, data_dir: Path | None = None
) -> str:
    """Create or upgrade the db at `path` (a file or a registry URL) to `target`; returns
    the new revision.

    `data_dir`: a user's data folder whose migrations run after the package's, in the
    same transaction (its revision goes to `presetdb_data_version`)."""
    where = parse_target(path)

    def action(cfg: Config) -> None:
        command.upgrade(cfg, target)
        if data_dir is not None and data_revisions(data_dir):
            conn = cfg.attributes["connection"]
            command.upgrade(data_config(data_dir, conn, seed_data=seed_data), "heads")

    if isinstance(where, URL):
        rev = revision_of(where)
        if rev is not None and schema_revision_of(rev) is None:
            check_compatible(where, rev)  # raises "newer than this package"
        _run(where, action, seed_data=seed_data, create=True)
        return revision_of(where) or "base"
    path = where
    if path.exists() and path.stat().st_size > 0:
        engine = make_engine(path, "ro", pooled=False)
        try:
            rev = current_revision(engine, path)
        finally:
            engine.dispose()
        if rev is not None and schema_revision_of(rev) is None:
            check_compatible(path, rev)  # raises "newer than this package"
    _run(path, action, seed_data=seed_data, create=True)
    return revision_of(path) or "base"


def downgrade(path: Path | str | URL, target: str) -> str:
    path = parse_target(path)
    # Read-only first: another application's file or a newer db is refused unchanged
    # (the read-write engine below would switch the file to WAL before refusing it).
    rev = revision_of(path)
    if rev is not None and schema_revision_of(rev) is None:
        check_compatible(path, rev)  # raises "newer than this package"
    _run(path, lambda cfg: command.downgrade(cfg, target), seed_data=True, create=False)
    return revision_of(path) or "base"


def revision_of(path: Path | str | URL) -> str | None:
    path = parse_target(path)
    if isinstance(path, Path):
        check_file(path, must_exist=True)
    engine = engine_for(path, "ro", pooled=False)
    try:
        return current_revision(engine, path)
    finally:
        engine.dispose()


@dataclass(frozen=True)
class CheckReport:
    path: Target
    revision: str | None
    head: str
    integrity: list[str]
    foreign_key_problems: list[tuple[object, ...]]
    schema_problem: str | None
    data_problems: list[str] = field(default_factory=list)  # rows presetdb cannot serve

    @property
    def ok(self) -> bool:
        return (
            self.schema_problem is None
            and self.integrity == ["ok"]
            and not self.foreign_key_problems
            and not self.data_problems
        )


def check(path: Path | str | URL) -> CheckReport:
    """`presetdb db check`: revision compatible, integrity_check and foreign_key_check.

    On a registry the server enforces foreign keys on every write and checks its own
    pages, so only the schema part applies; integrity reads "ok"."""
    path = parse_target(path)
    if isinstance(path, Path):
        check_file(path, must_exist=True)
    engine = engine_for(path, "ro", pooled=False)
    try:
        schema_problem = None
        revision = None
        try:
            revision = current_revision(engine, path)
            check_compatible(path, revision)
            missing = missing_tables(engine, path)
            if missing:
                schema_problem = _damaged(path, revision, missing)
        except (SchemaTooOldError, SchemaTooNewError) as exc:
            schema_problem = str(exc)
        try:
            with engine.connect() as conn:
                if isinstance(path, URL):
                    conn.exec_driver_sql("SELECT 1")
                    integrity, fk = ["ok"], []
                else:
                    integrity = [str(r[0]) for r in conn.exec_driver_sql("PRAGMA integrity_check")]
                    fk = [tuple(r) for r in conn.exec_driver_sql("PRAGMA foreign_key_check")]
        except DatabaseError as exc:
            raise translate_operational(path, exc) from exc
    finally:
        engine.dispose()
    data: list[str] = []
    if schema_problem is None and isinstance(path, Path):  # a registry: check a build of it
        from presetdb.store.checks import data_problems

        try:
            data = data_problems(path)
        except sqlite3.DatabaseError as exc:  # damage integrity_check reports too
            data = [f"rows could not be read: {exc}"]
    return CheckReport(path, revision, head(), integrity, fk, schema_problem, data)
