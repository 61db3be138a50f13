"""Opening SQLite files: URLs, pragmas, sessions and the opening rules.

Three ways to open a file:

- ``rw``        read-write, for user overlays and dbs being imported into; the file keeps
                its journal mode (files presetdb creates are made WAL, see `set_wal`);
- ``ro``        ``mode=ro``: read-only, still sees other writers' commits;
- ``immutable`` ``immutable=1``: read-only and promises SQLite nobody changes the file,
                so no locks and no ``-wal``/``-shm`` litter. Shipped/deployment dbs.

Every connection gets ``foreign_keys=ON`` and a busy timeout. Opening checks that the
file is a presetdb database whose schema matches this package (see `migrate`).
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote, urlencode

from sqlalchemy import URL, Engine, create_engine, event
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import NullPool

from presetdb.errors import NotADatabaseError, ReadOnlyStoreError, StoreError, StoreNotFoundError

Mode = Literal["rw", "ro", "immutable"]
SQLITE_HEADER = b"SQLite format 3\x00"
BUSY_TIMEOUT_MS = 10_000


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


def check_file(path: Path, *, must_exist: bool = True) -> None:
    """Missing, empty or non-SQLite files get a clear error before SQLite sees them."""
    if not path.exists():
        if must_exist:
            raise StoreNotFoundError(
                f"{path}: no such database file. Create one with `presetdb db upgrade --db {path}` "
                "or build a shippable one with `presetdb build --out PATH`."
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
    """An opened database: its engine, how it was opened, and session helpers."""

    path: Path
    mode: Mode
    engine: Engine
    revision: str | None = None
    _sessions: sessionmaker[Session] = field(init=False, repr=False)
    _version_conn: Any = field(default=None, init=False, repr=False)
    _version_lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def __post_init__(self) -> None:
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @property
    def writable(self) -> bool:
        return self.mode == "rw"

    @contextmanager
    def read(self) -> Iterator[Session]:
        """A read-only session (one transaction, rolled back at the end). A database
        error inside it (a corrupt page, a lock) becomes a `StoreError` naming the file."""
        try:
            with self._sessions() as session:
                yield session
                session.rollback()
        except DBAPIError as exc:
            raise translate_operational(self.path, exc) from exc

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """A write transaction: committed when the block ends, rolled back on error."""
        if not self.writable:
            raise ReadOnlyStoreError(
                f"{self.path}: opened {self.mode}; writes need a writable copy "
                "(open with mode 'rw', or import into another file with `presetdb import --db`)."
            )
        with self._sessions() as session:
            try:
                with session.begin():
                    yield session
            except DBAPIError as exc:
                raise translate_operational(self.path, exc) from exc

    def data_version(self) -> int:
        """SQLite's `PRAGMA data_version`: changes whenever another connection commits.
        Used by the picker to notice a changed mutable db.

        The counter is per connection (a fresh one starts over), so it is always asked on
        one dedicated connection, never on whichever the pool hands out."""
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


def translate_operational(path: Path, exc: DBAPIError) -> StoreError:
    message = str(exc.orig) if exc.orig is not None else str(exc)
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

