"""Read-only SQL over a presetdb file or registry: the guard every audit query passes.

Statements are split and checked as text (one statement, a reading keyword, no writing
word, named parameters only). Every SQLite connection made here is read-only three times
over: opened ``immutable=1`` (or ``mode=ro`` while a writer may hold a ``-wal``/``-journal``
file), ``PRAGMA query_only=ON``, and an authorizer that allows reads, selects, functions
and a few read-only pragmas and denies everything else. A query is stopped at a time, row
and memory limit (`QueryLimits`).

On a PostgreSQL registry, `run_sql` runs the statement on the server itself: the same
text checks, a list of server functions that act outside the query
(`PG_DENIED_FUNCTIONS`), inside a ``READ ONLY`` transaction with a statement timeout,
always rolled back.
"""

from __future__ import annotations

import re
import sqlite3
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

from presetdb.errors import AuditError, NotADatabaseError, QueryLimitError, ReadOnlySQLError
from presetdb.store import migrate
from presetdb.store.engine import Target, check_file, connect_sqlite, describe, engine_for, parse_target

# ---------------------------------------------------------------- SQL text


def _scan(sql: str) -> Iterator[tuple[str, str]]:
    """Split SQL text into ("code" | "quoted" | "comment", text) pieces, so that `;` and
    `:name` inside strings, identifiers and comments are never mistaken for code."""
    i, n, start = 0, len(sql), 0
    while i < n:
        ch = sql[i]
        end = -1
        if ch in "'\"`[":
            close = "]" if ch == "[" else ch
            j = i + 1
            while True:
                j = sql.find(close, j)
                if j < 0:
                    j = n
                    break
                if close != "]" and sql.startswith(close * 2, j):
                    j += 2  # a doubled quote is an escaped quote
                    continue
                j += 1
                break
            kind, end = "quoted", j
        elif sql.startswith("--", i):
            j = sql.find("\n", i)
            kind, end = "comment", n if j < 0 else j
        elif sql.startswith("/*", i):
            j = sql.find("*/", i + 2)
            kind, end = "comment", n if j < 0 else j + 2
        if end < 0:
            i += 1
            continue
        if start < i:
            yield "code", sql[start:i]
        yield kind, sql[i:end]
        i = start = end
    if start < n:
        yield "code", sql[start:]


def split_statements(sql: str) -> list[str]:
    """The non-empty statements of `sql`, comments kept, trailing `;` dropped."""
    statements: list[str] = []
    current: list[str] = []
    has_code = False
    for kind, text in _scan(sql):
        if kind != "code":
            current.append(text)
            has_code = has_code or kind == "quoted"
            continue
        parts = text.split(";")
        for k, part in enumerate(parts):
            current.append(part)
            has_code = has_code or bool(part.strip())
            if k < len(parts) - 1:  # a `;` ends the statement
                if has_code:
                    statements.append("".join(current).strip())
                current, has_code = [], False
    if has_code:
        statements.append("".join(current).strip())
    return statements


_PARAM = re.compile(r"(?<![:\w]):([A-Za-z_]\w*)")


def named_params(sql: str) -> list[str]:
    """`:name` parameters in code (not in strings or comments), first use order."""
    found: dict[str, None] = {}
    for kind, text in _scan(sql):
        if kind == "code":
            found.update(dict.fromkeys(_PARAM.findall(text)))
    return list(found)


def _first_keyword(sql: str) -> str:
    code = " ".join(text for kind, text in _scan(sql) if kind != "comment")
    match = re.match(r"\s*([A-Za-z]+)", code)
    return match.group(1).upper() if match else ""


# ---------------------------------------------------------------- read-only connections

READ_STATEMENTS = ("SELECT", "WITH", "VALUES", "EXPLAIN", "PRAGMA")
# Pragmas that only read. Those in ARG_PRAGMAS take a table/index name as argument; the
# others must have none (`PRAGMA user_version = 5` writes, `PRAGMA user_version` reads).
ARG_PRAGMAS = frozenset(
    {
        "table_info",
        "table_xinfo",
        "table_list",
        "index_list",
        "index_info",
        "index_xinfo",
        "foreign_key_list",
        "foreign_key_check",
        "integrity_check",
        "quick_check",
    }
)
READ_PRAGMAS = ARG_PRAGMAS | {
    "database_list",
    "collation_list",
    "function_list",
    "module_list",
    "pragma_list",
    "compile_options",
    "schema_version",
    "user_version",
    "application_id",
    "data_version",
    "page_count",
    "page_size",
    "freelist_count",
    "encoding",
    "journal_mode",
}
SCHEMA_TABLES = frozenset({"sqlite_master", "sqlite_schema", "sqlite_temp_master"})
# Words that only a writing statement contains (`replace()` is a function, so only
# `REPLACE INTO` counts). A column of such a name must be quoted.
_WRITE_WORDS = re.compile(
    r"\b(INSERT|UPDATE|DELETE|CREATE|DROP|ALTER|ATTACH|DETACH|VACUUM|REINDEX|ANALYZE"
    r"|REPLACE\s+INTO)\b",
    re.IGNORECASE,
)
# `PRAGMA [schema.]name = value` or `PRAGMA [schema.]name(value)`: sets a pragma, or
# (ARG_PRAGMAS) reads about a table.
_PRAGMA_SET = re.compile(r"\s*PRAGMA\s+(?:\w+\s*\.\s*)?(\w+)\s*(=|\()", re.IGNORECASE)
DENIED_FUNCTIONS = frozenset({"load_extension", "fts3_tokenizer", "readfile", "writefile", "edit"})
_ACTION_NAMES = {
    getattr(sqlite3, name): name.removeprefix("SQLITE_")
    for name in (
        "SQLITE_CREATE_INDEX",
        "SQLITE_CREATE_TABLE",
        "SQLITE_CREATE_TEMP_INDEX",
        "SQLITE_CREATE_TEMP_TABLE",
        "SQLITE_CREATE_TEMP_TRIGGER",
        "SQLITE_CREATE_TEMP_VIEW",
        "SQLITE_CREATE_TRIGGER",
        "SQLITE_CREATE_VIEW",
        "SQLITE_DELETE",
        "SQLITE_DROP_INDEX",
        "SQLITE_DROP_TABLE",
        "SQLITE_DROP_TEMP_INDEX",
        "SQLITE_DROP_TEMP_TABLE",
        "SQLITE_DROP_TEMP_TRIGGER",
        "SQLITE_DROP_TEMP_VIEW",
        "SQLITE_DROP_TRIGGER",
        "SQLITE_DROP_VIEW",
        "SQLITE_INSERT",
        "SQLITE_PRAGMA",
        "SQLITE_READ",
        "SQLITE_SELECT",
        "SQLITE_TRANSACTION",
        "SQLITE_UPDATE",
        "SQLITE_ATTACH",
        "SQLITE_DETACH",
        "SQLITE_ALTER_TABLE",
        "SQLITE_REINDEX",
        "SQLITE_ANALYZE",
        "SQLITE_CREATE_VTABLE",
        "SQLITE_DROP_VTABLE",
        "SQLITE_FUNCTION",
        "SQLITE_SAVEPOINT",
        "SQLITE_RECURSIVE",
    )
    if hasattr(sqlite3, name)
}


@dataclass
class _Guard:
    """sqlite3 authorizer: reads only. Remembers what it refused, for the error message."""

    denied: list[str] = field(default_factory=list)

    def __call__(
        self, action: int, arg1: str | None, arg2: str | None, _db: str | None, _trigger: str | None
    ) -> int:
        if action in (sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_RECURSIVE):
            return sqlite3.SQLITE_OK
        if action == sqlite3.SQLITE_FUNCTION and (arg2 or "").lower() not in DENIED_FUNCTIONS:
            return sqlite3.SQLITE_OK
        if action == sqlite3.SQLITE_UPDATE and arg1 in SCHEMA_TABLES:
            # SQLite reports this while it sets up table-valued functions (json_each,
            # pragma_table_info). A real write to the schema table is stopped by the
            # keyword check, query_only, and the denied `PRAGMA writable_schema`.
            return sqlite3.SQLITE_OK
        if action == sqlite3.SQLITE_PRAGMA:
            name = (arg1 or "").lower()
            if name in READ_PRAGMAS and (arg2 is None or name in ARG_PRAGMAS):
                return sqlite3.SQLITE_OK
            self.denied.append(f"PRAGMA {name}" + (f" = {arg2}" if arg2 is not None else ""))
            return sqlite3.SQLITE_DENY
        what = _ACTION_NAMES.get(action, f"action {action}")
        target = arg2 if action == sqlite3.SQLITE_FUNCTION else arg1
        self.denied.append(what + (f" {target}" if target else ""))
        return sqlite3.SQLITE_DENY


@dataclass(frozen=True)
class QueryResult:
    columns: list[str]
    rows: list[tuple[Any, ...]]

    def records(self) -> list[dict[str, Any]]:
        return [dict(zip(self.columns, row, strict=True)) for row in self.rows]


class ReadOnlyDB:
    """A SQLite file opened so that nothing run through it can change any file."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path).expanduser()
        check_file(self.path, must_exist=True)
        # immutable=1 never creates -wal/-shm files and takes no locks. A live writer
        # (a -wal or -journal file next to the db) needs mode=ro to see its commits.
        live = any(Path(f"{self.path}{s}").exists() for s in ("-wal", "-journal"))
        self.mode = "ro" if live else "immutable"
        self.conn = connect_sqlite(
            self.path, "ro" if live else "immutable", isolation_level=None, timeout=10
        )
        try:
            self.conn.execute("PRAGMA query_only=ON")
        except sqlite3.DatabaseError as exc:
            self.conn.close()
            raise NotADatabaseError(f"{self.path}: cannot open read-only ({exc})") from exc
        self._guard = _Guard()
        self.conn.set_authorizer(self._guard)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.conn.close()

    def query(
        self, sql: str, params: Mapping[str, Any] | None = None, limits: QueryLimits | None = None
    ) -> QueryResult:
        """Run one read-only statement. Anything else raises ReadOnlySQLError; a query
        past `limits` raises QueryLimitError."""
        statement = check_read_only(sql)
        self._guard.denied.clear()
        limits = limits or QueryLimits()
        deadline = time.monotonic() + limits.seconds
        timed_out = False

        def over_time() -> int:
            nonlocal timed_out
            timed_out = time.monotonic() > deadline
            return 1 if timed_out else 0  # nonzero: SQLite interrupts the statement

        self.conn.set_progress_handler(over_time, 10_000)
        try:
            cursor = self.conn.execute(statement, dict(params or {}))
            rows: list[tuple[Any, ...]] = []
            size = 0
            while batch := cursor.fetchmany(1_000):
                rows.extend(batch)
                size += sum(_approx_bytes(v) for row in batch for v in row)
                if len(rows) > limits.max_rows or size > limits.max_bytes:
                    cursor.close()
                    raise QueryLimitError(
                        f"the query returned more than {limits.max_rows:,} rows or "
                        f"{limits.max_bytes >> 20:,} MiB; add a LIMIT, or raise --max-rows / "
                        "--max-memory-mb (PRESETDB_SQL_MAX_ROWS / PRESETDB_SQL_MAX_MEMORY_MB)"
                    )
        except sqlite3.OperationalError as exc:
            if timed_out or "interrupted" in str(exc):
                raise QueryLimitError(
                    f"the query ran past {limits.seconds:g} s and was stopped; add a LIMIT or a "
                    "WHERE, or raise --timeout (PRESETDB_SQL_TIMEOUT)"
                ) from None
            if "out of memory" in str(exc) or "NOMEM" in getattr(exc, "sqlite_errorname", ""):
                raise QueryLimitError(
                    f"the query needed more than {limits.max_bytes >> 20:,} MiB; narrow it or "
                    "raise --max-memory-mb (PRESETDB_SQL_MAX_MEMORY_MB)"
                ) from None
            self._raise_clear(exc)
            raise
        except sqlite3.DatabaseError as exc:
            self._raise_clear(exc)
            raise
        finally:
            self.conn.set_progress_handler(None, 0)
        columns = [d[0] for d in cursor.description or ()]
        return QueryResult(columns, [tuple(r) for r in rows])

    def _raise_clear(self, exc: sqlite3.DatabaseError) -> None:
        """Raise the presetdb error that explains `exc` (always raises)."""
        if self._guard.denied or "not authorized" in str(exc):
            refused = ", ".join(dict.fromkeys(self._guard.denied)) or str(exc)
            raise ReadOnlySQLError(
                f"refused: {refused}. `presetdb sql` and audits only read; "
                "write through `presetdb import` or a migration."
            ) from None
        if "not a database" in str(exc) or "malformed" in str(exc):
            raise NotADatabaseError(
                f"{self.path}: corrupt or not a SQLite database ({exc})"
            ) from None
        if getattr(exc, "sqlite_errorname", "") == "SQLITE_READONLY_ROLLBACK":
            raise AuditError(
                f"{self.path}: a write was interrupted and left a hot journal "
                f"({self.path.name}-journal); `presetdb sql` opens files read-only and will "
                "not roll it back. Open the file read-write once (e.g. `presetdb db upgrade "
                f"--db {self.path}`), or query a copy of the file with its journal."
            ) from None
        if "readonly" in str(exc) or "read-only" in str(exc):
            raise ReadOnlySQLError(f"refused: {exc}; the file is opened read-only") from None
        raise AuditError(f"{self.path}: SQL error: {exc}") from None

    def set_heap_limit(self, nbytes: int) -> None:
        """SQLite's own memory for this process's queries (sorts, temp b-trees)."""
        self.conn.set_authorizer(None)
        try:
            self.conn.execute(f"PRAGMA hard_heap_limit={int(nbytes)}")  # sql: int
        finally:
            self.conn.set_authorizer(self._guard)

    def require_presetdb(self) -> str:
        """Refuse other applications' files and schemas this package cannot read."""
        tables = {r[0] for r in self.query("SELECT name FROM sqlite_master").rows}
        if "alembic_version" not in tables or "presets" not in tables:
            raise NotADatabaseError(
                f"{self.path}: a SQLite file, but not a presetdb database. Point --db / "
                "PRESETDB_PATH at a file made by `presetdb build` or `presetdb db upgrade`."
            )
        versions = self.query("SELECT version_num FROM alembic_version").rows
        revision = str(versions[0][0]) if versions else None
        migrate.check_compatible(self.path, revision)
        return revision or "base"


def check_read_only(sql: str) -> str:
    """The single statement in `sql`, if it is a kind that can only read."""
    statements = split_statements(sql)
    if not statements:
        raise ReadOnlySQLError("no SQL statement given")
    if len(statements) > 1:
        raise ReadOnlySQLError(
            f"refused: {len(statements)} statements; give exactly one (chained statements "
            "are not run)"
        )
    keyword = _first_keyword(statements[0])
    if keyword not in READ_STATEMENTS:
        raise ReadOnlySQLError(
            f"refused: {keyword or 'this'} statement; only {', '.join(READ_STATEMENTS)} "
            "statements run here (the database is opened read-only)"
        )
    code = " ".join(text for kind, text in _scan(statements[0]) if kind == "code")
    # Comments out, quoted values kept: `PRAGMA journal_mode('delete')` names its value.
    text = "".join(part for kind, part in _scan(statements[0]) if kind != "comment")
    setting = _PRAGMA_SET.match(text) if keyword == "PRAGMA" else None
    if setting and (setting.group(2) == "=" or setting.group(1).lower() not in ARG_PRAGMAS):
        # Before the keyword check: `PRAGMA journal_mode=DELETE` sets a pragma; DELETE
        # there is its value, not a statement.
        name = setting.group(1).lower()
        value = " ".join(text[setting.end():].split()).rstrip(";").strip()
        value = value.removesuffix(")").strip() if setting.group(2) == "(" else value
        raise ReadOnlySQLError(
            f"refused: PRAGMA {name} = {value} sets a pragma (a write); only reading pragmas "
            f"run here (`PRAGMA {name}` or `SELECT * FROM pragma_{name}` reads it)"
        )
    write = _WRITE_WORDS.search(code)
    if write:
        raise ReadOnlySQLError(
            f"refused: {' '.join(write.group(1).upper().split())} inside the statement; "
            "only reads run here (quote a column of that name)"
        )
    return statements[0]


@dataclass(frozen=True)
class QueryLimits:
    """What one `presetdb sql` query may take (a recursive CTE must not run forever, a
    cross join must not fill the memory)."""

    seconds: float = 30.0
    max_rows: int = 100_000
    max_bytes: int = 512 << 20

    @classmethod
    def from_env(cls) -> QueryLimits:
        import os

        def number(name: str, default: float) -> float:
            raw = os.environ.get(name, "").strip()
            try:
                value = float(raw) if raw else default
            except ValueError:
                raise AuditError(f"{name}={raw!r}: expected a number") from None
            if value <= 0:
                raise AuditError(f"{name}={raw!r}: expected a number > 0")
            return value

        return cls(
            seconds=number("PRESETDB_SQL_TIMEOUT", cls.seconds),
            max_rows=int(number("PRESETDB_SQL_MAX_ROWS", cls.max_rows)),
            max_bytes=int(number("PRESETDB_SQL_MAX_MEMORY_MB", cls.max_bytes >> 20)) << 20,
        )


def _approx_bytes(value: Any) -> int:
    return len(value) if isinstance(value, (str, bytes)) else 16


def run_sql(
    path: Path | str | Target, sql: str, params: Mapping[str, Any] | None = None, limits: QueryLimits | None = None
) -> QueryResult:
    """`presetdb sql`: one read-only statement against any SQLite file, within `limits`
    (default: QueryLimits.from_env()), or a registry (on the server, in a READ ONLY
    transaction with the server's statement timeout)."""
    target = parse_target(path)
    if not isinstance(target, Path):
        return run_sql_registry(target, sql, params)
    limits = limits or QueryLimits.from_env()
    with ReadOnlyDB(target) as db:
        given = dict(params or {})
        missing = [p for p in named_params(check_read_only(sql)) if p not in given]
        if missing:
            raise AuditError(f"the query needs --param for: {', '.join(missing)}")
        db.set_heap_limit(limits.max_bytes)
        return db.query(sql, given, limits)


# Server functions that act beyond reading the tables: sessions, locks, settings, files,
# notifications, large objects. A READ ONLY transaction does not stop these.
PG_DENIED_FUNCTIONS = re.compile(
    r"\b(set_config|pg_advisory\w*|pg_try_advisory\w*|pg_terminate_backend|pg_cancel_backend"
    r"|pg_reload_conf|pg_rotate_logfile|pg_read_file|pg_read_binary_file|pg_ls_\w+|pg_stat_file"
    r"|pg_notify|pg_sleep\w*|pg_switch_wal|pg_create_\w+|pg_drop_\w+|pg_replication_\w+"
    r"|pg_promote|pg_log_backend_memory_contexts|lo_\w+|dblink\w*|txid_current|nextval|setval"
    r"|load_extension|fts3_tokenizer|readfile|writefile|edit)\s*\(",  # and SQLite's, same refusals
    re.IGNORECASE,
)
PG_STATEMENT_TIMEOUT_MS = 30_000


def run_sql_registry(url: Any, sql: str, params: Mapping[str, Any] | None = None) -> QueryResult:
    """One read-only statement on a PostgreSQL registry (see the module docstring)."""
    from sqlalchemy import text
    from sqlalchemy.exc import DBAPIError

    statement = check_read_only(sql)
    keyword = _first_keyword(statement)
    if keyword == "PRAGMA":
        raise ReadOnlySQLError("refused: PRAGMA is SQLite's; this is a PostgreSQL registry")
    code = " ".join(t for kind, t in _scan(statement) if kind == "code")
    denied = PG_DENIED_FUNCTIONS.search(code)
    if denied:
        raise ReadOnlySQLError(
            f"refused: {denied.group(1)}() acts outside the query; `presetdb sql` only reads"
        )
    if re.search(r"\bFOR\s+(NO\s+KEY\s+)?(UPDATE|SHARE|KEY\s+SHARE)\b", code, re.IGNORECASE):
        raise ReadOnlySQLError("refused: a locking read (FOR UPDATE/SHARE); `presetdb sql` only reads")
    if re.search(r"\bINTO\b", code, re.IGNORECASE):
        raise ReadOnlySQLError("refused: SELECT ... INTO creates a table; `presetdb sql` only reads")
    given = dict(params or {})
    missing = [p for p in named_params(statement) if p not in given]
    if missing:
        raise AuditError(f"the query needs --param for: {', '.join(missing)}")
    engine = engine_for(url, "ro", pooled=False)
    where = describe(url)
    try:
        with engine.connect() as conn:
            conn.begin()  # SET TRANSACTION READ ONLY (the engine's begin hook)
            conn.exec_driver_sql(f"SET LOCAL statement_timeout = {int(PG_STATEMENT_TIMEOUT_MS)}")  # sql: int
            try:
                result = conn.execute(text(statement), given)
                columns = list(result.keys())
                rows = [tuple(r) for r in result]
            finally:
                conn.rollback()
    except DBAPIError as exc:
        message = str(exc.orig).strip().splitlines()[0] if exc.orig is not None else str(exc)
        if "read-only transaction" in message or "permission denied" in message:
            raise ReadOnlySQLError(f"refused by the server: {message}") from None
        if exc.connection_invalidated or "connect" in message:
            raise AuditError(f"{where}: cannot reach the registry ({message})") from None
        raise AuditError(f"{where}: SQL error: {message}") from None
    finally:
        engine.dispose()
    return QueryResult(columns, rows)
