"""Opening databases: SQLite files and PostgreSQL registries. Every URL is built here.

A database is named by a *target*: a SQLite file path, or a registry URL
(``postgresql+psycopg://user@host/db``; `parse_target` tells which). The registry is a
central PostgreSQL database that many writers share; it holds the same schema, through
the same migrations, and releases are built from it into SQLite files.

Three ways to open a SQLite file:

- ``rw``        read-write, for user overlays and dbs being imported into; the file keeps
                its journal mode (files presetdb creates are made WAL, see `set_wal`);
- ``ro``        ``mode=ro``: read-only, still sees other writers' commits;
- ``immutable`` ``immutable=1``: read-only and promises SQLite nobody changes the file,
                so no locks and no ``-wal``/``-shm`` litter. Shipped/deployment dbs.

Every connection gets ``foreign_keys=ON`` and a busy timeout. Opening checks that the
file is a presetdb database whose schema matches this package (see `migrate`).

A registry opened ``rw`` takes one transaction-scoped advisory lock at the start of every
write transaction (`WRITER_LOCK`): writers queue on it exactly as SQLite writers queue on
``BEGIN IMMEDIATE``, so each read-check-write of the repository (supersede the active
row, reuse a content-addressed config, bump a miss counter) sees the previous writer's
commit and never collides on a unique index. Readers take no lock. ``ro``/``immutable``
registry sessions run in ``READ ONLY`` transactions.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote, urlencode

from sqlalchemy import URL, Engine, create_engine, event, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import NullPool

from presetdb.errors import NotADatabaseError, ReadOnlyStoreError, StoreError, StoreNotFoundError

Mode = Literal["rw", "ro", "immutable"]
Target = Path | URL  # a SQLite file, or a registry URL
SQLITE_HEADER = b"SQLite format 3\x00"
BUSY_TIMEOUT_MS = 10_000
REGISTRY_ENV = "PRESETDB_REGISTRY"
REGISTRY_DRIVER = "postgresql+psycopg"
# Seconds to wait for a registry server before giving up (a down registry fails fast).
CONNECT_TIMEOUT_S = 10
# pg_advisory_xact_lock key of the registry's writer lock: the first 8 bytes of
# sha256("presetdb writer"), as a signed 64-bit integer.
WRITER_LOCK = int.from_bytes(hashlib.sha256(b"presetdb writer").digest()[:8], "big", signed=True)


def is_registry_url(value: str | Path) -> bool:
    """True for ``postgresql://...`` / ``postgresql+psycopg://...`` (and ``postgres://``)."""
    text = str(value).strip()
    scheme = text.split("://", 1)[0].lower() if "://" in text else ""
    return scheme.split("+", 1)[0] in ("postgresql", "postgres")


def registry_url(value: str | URL) -> URL:
    """A registry URL with presetdb's driver (psycopg 3); other drivers are refused."""
    text = value if isinstance(value, str) else value.render_as_string(hide_password=False)
    try:
        url = make_url(text.strip())
    except ArgumentError as exc:
        raise StoreError(f"not a database URL: {exc}") from None
    backend, _, driver = url.drivername.partition("+")
    if backend not in ("postgresql", "postgres"):
        raise StoreError(
            f"{describe(url)}: presetdb registries are PostgreSQL databases; use "
            f"{REGISTRY_DRIVER}://USER@HOST/DB"
        )
    if driver not in ("", "psycopg"):
        raise StoreError(
            f"{describe(url)}: driver {driver!r} is not supported; use {REGISTRY_DRIVER}:// "
            "(psycopg 3, installed by `pip install presetdb[registry]`)"
        )
    return url.set(drivername=REGISTRY_DRIVER)


def parse_target(value: str | Path | URL) -> Target:
    """`--db`'s value: a registry URL (`URL`) or a SQLite file path (`Path`).

    ``sqlite:///path`` is accepted as the path. Everything else is a file name."""
    if isinstance(value, URL):
        return registry_url(value) if value.get_backend_name() != "sqlite" else Path(value.database or "")
    text = str(value).strip()
    if is_registry_url(text):
        return registry_url(text)
    if text.startswith("sqlite:///"):
        return Path(make_url(text).database or "").expanduser()
    return Path(value).expanduser()


def registry_from_env() -> URL | None:
    """PRESETDB_REGISTRY, parsed, or None when unset."""
    value = os.environ.get(REGISTRY_ENV, "").strip()
    if not value:
        return None
    if not is_registry_url(value):
        raise StoreError(f"{REGISTRY_ENV}={value!r} is not a registry URL; use {REGISTRY_DRIVER}://USER@HOST/DB")
    return registry_url(value)


def describe(target: Target | str) -> str:
    """How messages name a database: the path, or the URL without its password."""
    if isinstance(target, URL):
        return target.render_as_string(hide_password=True)
    return str(target)


def sqlite_url(path: Path | str, mode: Mode = "rw") -> URL:
    """The one place SQLite URLs are built: a URI-style URL whose path is percent-quoted,
    so any file name works (``#``, ``?``, ``%``, spaces: `out/a#b/x.db` is one file)."""
    query = {"uri": "true"}
    if mode == "ro":
        query["mode"] = "ro"
    elif mode == "immutable":
        query["immutable"] = "1"
    absolute = str(Path(path).expanduser().resolve())
    return URL.create("sqlite", database="file:" + quote(absolute, safe="/"), query=query)


def connect_sqlite(path: Path | str, mode: Mode = "rw", **kwargs: Any) -> sqlite3.Connection:
    """A plain `sqlite3` connection through the same quoted URI as `sqlite_url`."""
    url = sqlite_url(path, mode)
    params = {k: v for k, v in url.query.items() if k != "uri"}
    uri = str(url.database) + ("?" + urlencode(params) if params else "")
    return sqlite3.connect(uri, uri=True, **kwargs)


def _on_connect(mode: Mode, foreign_keys: bool) -> Any:
    def set_pragmas(dbapi_conn: sqlite3.Connection, _record: Any) -> None:
        # pysqlite's own transaction handling defers BEGIN; let SQLAlchemy emit it.
        # Pragmas below run outside any transaction (several are no-ops inside one).
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA foreign_keys={'ON' if foreign_keys else 'OFF'}")  # sql: ON/OFF literal
        cur.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_MS)}")  # sql: int constant
        # The journal mode is the file's own: opening never changes it (a shipped
        # rollback-journal file stays one). New files are made WAL by `set_wal`.
        if mode != "rw":
            cur.execute("PRAGMA query_only=ON")
        cur.close()

    return set_pragmas


def set_wal(path: Path) -> None:
    """Switch `path` to WAL (persistent: readers never block the writer and see whole
    transactions only). Only for files presetdb creates (overlays, new import targets)
    or when asked (`presetdb db upgrade --wal`)."""
    conn = connect_sqlite(path, "rw", isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
    finally:
        conn.close()


def journal_mode(path: Path) -> str:
    conn = connect_sqlite(path, "ro", isolation_level=None)
    try:
        return str(conn.execute("PRAGMA journal_mode").fetchone()[0])
    finally:
        conn.close()


def _on_begin_writer(conn: Any) -> None:
    # Writers take the write lock up front (BEGIN IMMEDIATE) so two writers queue on the
    # busy timeout instead of failing with "database is locked" half way through.
    conn.exec_driver_sql("BEGIN IMMEDIATE")


def _on_begin_reader(conn: Any) -> None:
    conn.exec_driver_sql("BEGIN")


def make_engine(
    path: Path, mode: Mode = "rw", *, pooled: bool = True, foreign_keys: bool = True
) -> Engine:
    """An Engine for `path` with presetdb's pragmas. Does not check the schema.

    `foreign_keys=False` is for migrations only (see `migrate`)."""
    engine = create_engine(sqlite_url(path, mode), poolclass=None if pooled else NullPool)
    event.listen(engine, "connect", _on_connect(mode, foreign_keys))
    event.listen(engine, "begin", _on_begin_writer if mode == "rw" else _on_begin_reader)
    return engine


def _on_begin_registry_writer(conn: Any) -> None:
    # One writer at a time, like SQLite's BEGIN IMMEDIATE (see the module docstring).
    conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({WRITER_LOCK})")  # sql: int constant


def _on_begin_registry_reader(conn: Any) -> None:
    conn.exec_driver_sql("SET TRANSACTION READ ONLY")


def make_registry_engine(url: URL | str, mode: Mode = "rw", *, pooled: bool = True) -> Engine:
    """An Engine for a PostgreSQL registry (psycopg 3). Does not check the schema."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        raise StoreError(
            "registry URLs need psycopg 3: `pip install 'presetdb[registry]'` "
            "(or `pip install 'psycopg[binary]'`)"
        ) from None
    engine = create_engine(
        registry_url(url),
        poolclass=None if pooled else NullPool,
        pool_pre_ping=pooled,
        connect_args={"connect_timeout": CONNECT_TIMEOUT_S, "application_name": "presetdb"},
    )
    event.listen(engine, "begin", _on_begin_registry_writer if mode == "rw" else _on_begin_registry_reader)
    return engine


def engine_for(target: Target, mode: Mode = "rw", *, pooled: bool = True, foreign_keys: bool = True) -> Engine:
    """`make_engine` for a file, `make_registry_engine` for a URL."""
    if isinstance(target, URL):
        return make_registry_engine(target, mode, pooled=pooled)
    return make_engine(target, mode, pooled=pooled, foreign_keys=foreign_keys)


def check_file(path: Path, *, must_exist: bool = True) -> None:
    """Missing, empty or non-SQLite files get a clear error before SQLite sees them."""
    if not path.exists():
        if must_exist:
            raise StoreNotFoundError(
                f"{path}: no such database file. Create an empty one (a user overlay, a deployment "
                f"db to import into) with `presetdb db upgrade --db {path} --schema-only`, one with "
                f"presetdb's seed presets with `presetdb db upgrade --db {path}`, or build a "
                "shippable one with `presetdb build --out PATH`."
            )
        return
    if path.is_dir():
        raise NotADatabaseError(f"{path}: is a directory, not a presetdb database file")
    try:
        with path.open("rb") as fh:
            header = fh.read(len(SQLITE_HEADER))
    except PermissionError:
        raise StoreError(f"{path}: permission denied reading the database file") from None
    if len(header) == 0:
        if must_exist:
            raise NotADatabaseError(
                f"{path}: the file is empty (0 bytes), not a presetdb database. "
                f"Initialise it with `presetdb db upgrade --db {path}`."
            )
        return
    if header != SQLITE_HEADER:
        raise NotADatabaseError(
            f"{path}: not a SQLite database (bad header). Point --db / PRESETDB_PATH at a file "
            "made by `presetdb build` or `presetdb db upgrade`."
        )


@dataclass
class Store:
    """An opened database: its engine, how it was opened, and session helpers.

    `path` is the SQLite file, or None for a registry (then `url` names it)."""

    path: Path | None
    mode: Mode
    engine: Engine
    revision: str | None = None
    url: URL | None = None
    _sessions: sessionmaker[Session] = field(init=False, repr=False)
    _version_conn: Any = field(default=None, init=False, repr=False)
    _version_lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def __post_init__(self) -> None:
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @property
    def writable(self) -> bool:
        return self.mode == "rw"

    @property
    def is_registry(self) -> bool:
        return self.path is None

    @property
    def target(self) -> Target:
        return self.url if self.path is None and self.url is not None else Path(self.path or "")

    @property
    def label(self) -> str:
        """The file path, or the registry URL without its password: for messages."""
        return describe(self.target)

    @contextmanager
    def read(self) -> Iterator[Session]:
        """A read-only session (one transaction, rolled back at the end). A database
        error inside it (a corrupt page, a lock) becomes a `StoreError` naming the file."""
        try:
            with self._sessions() as session:
                yield session
                session.rollback()
        except DBAPIError as exc:
            raise translate_operational(self.target, exc) from exc

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """A write transaction: committed when the block ends, rolled back on error."""
        if not self.writable:
            raise ReadOnlyStoreError(
                f"{self.label}: opened {self.mode}; writes need a writable copy "
                "(open with mode 'rw', or import into another file with `presetdb import --db`)."
            )
        with self._sessions() as session:
            try:
                with session.begin():
                    yield session
            except DBAPIError as exc:
                raise translate_operational(self.target, exc) from exc

    def data_version(self) -> int:
        """SQLite's `PRAGMA data_version`: changes whenever another connection commits.
        Used by the picker to notice a changed mutable db.

        The counter is per connection (a fresh one starts over), so it is always asked on
        one dedicated connection, never on whichever the pool hands out. A registry is
        never a mutable serving layer (serving reads released SQLite files): 0."""
        if self.is_registry:
            return 0
        with self._version_lock:
            if self._version_conn is None:
                # Kept checked out: presetdb's pragmas applied, autocommit (the PRAGMA
                # opens no transaction that would pin a snapshot).
                self._version_conn = self.engine.raw_connection()
            cursor = self._version_conn.cursor()
            try:
                return int(cursor.execute("PRAGMA data_version").fetchone()[0])
            finally:
                cursor.close()

    def dispose(self) -> None:
        with self._version_lock:
            if self._version_conn is not None:
                self._version_conn.close()
                self._version_conn = None
        self.engine.dispose()


def translate_operational(path: Target, exc: DBAPIError) -> StoreError:
    message = str(exc.orig) if exc.orig is not None else str(exc)
    if isinstance(path, URL):
        return _translate_registry(path, message)
    if getattr(exc.orig, "sqlite_errorname", "") == "SQLITE_READONLY_ROLLBACK":
        return ReadOnlyStoreError(
            f"{path}: a write was interrupted (a crash or kill) and left a hot journal "
            f"({path.name}-journal) that only a read-write open can roll back. Open the file "
            f"read-write once, e.g. `presetdb db upgrade --db {path}`, then retry."
        )
    if "readonly" in message or "read-only" in message:
        return ReadOnlyStoreError(
            f"{path}: the database is read-only ({message}). Check the file and directory "
            "permissions, or open a writable copy."
        )
    if "locked" in message:
        return StoreError(
            f"{path}: the database is locked by another process ({message}); retry, or find "
            "the process holding it."
        )
    if "not a database" in message or "malformed" in message:
        return NotADatabaseError(
            f"{path}: corrupt or not a SQLite database ({message}). Restore it from a good copy "
            "or rebuild it with `presetdb build --out PATH`; `presetdb db check --db PATH` "
            "reports the damage."
        )
    if "unable to open" in message:
        return StoreError(
            f"{path}: SQLite cannot open the file ({message}); check that it and its "
            "directory exist and are readable (and writable, for writes)."
        )
    return StoreError(f"{path}: {message}")



def _translate_registry(url: URL, message: str) -> StoreError:
    where = describe(url)
    first = message.strip().splitlines()[0] if message.strip() else message
    if "read-only transaction" in message:
        return ReadOnlyStoreError(f"{where}: opened read-only; writes need mode 'rw' ({first})")
    if "connect" in message or "connection" in message or "server closed" in message:
        return StoreError(
            f"{where}: cannot reach the registry ({first}). Is the server running and the "
            "URL right (host, port, database, user)?"
        )
    if "does not exist" in message and "database" in message:
        return StoreNotFoundError(
            f"{where}: {first}. Create the database (e.g. `createdb`), then "
            f"`presetdb db upgrade --db {where}`."
        )
    return StoreError(f"{where}: {first}")
