"""Audits: canned read-only SQL over a presetdb file, ad-hoc read-only SQL, and diffs.

The canned queries are plain ``.sql`` files in ``presetdb/audit/sql/`` so that ``sqlite3``,
datasette and ``presetdb audit`` all run the same text. Each file starts with a header
of ``--`` comment lines::

    -- title: one line
    -- purpose: what the query answers (continuation lines are indented)
    -- params: none                 (or one indented ``name: meaning`` line per parameter)
    -- columns:
    --   name: meaning              (one per result column, in order)
    -- highlight: {column} text    (formats the first row in `presetdb audit`'s summary)

Queries take values through named parameters only (``:name``); an empty or NULL value
means "not given". Every connection made here is read-only three times over: opened
``immutable=1`` (or ``mode=ro`` while a writer may hold a ``-wal``/``-journal`` file),
``PRAGMA query_only=ON``, and an authorizer that allows reads, selects, functions and a
few read-only pragmas and denies everything else.

On a PostgreSQL registry, `run_sql` runs the statement on the server itself: the same
text checks (one statement, a reading keyword, no writing word), a list of server
functions that act outside the query (`PG_DENIED_FUNCTIONS`), inside a ``READ ONLY``
transaction with a statement timeout, always rolled back. Canned audits and diffs of a
registry read a SQLite copy (`presetdb.store.snapshot`): the audits are SQLite SQL.

This module must not import torch or helion: only ``current_source_hashes`` reaches for
``presetdb.kernels``, and only when asked.
"""

from __future__ import annotations

import ast
import importlib.metadata
import importlib.resources
import io
import json
import re
import sqlite3
import tempfile
import time
import tokenize
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Self

from presetdb._util import write_atomic
from presetdb.errors import AuditError, NotADatabaseError, QueryLimitError, ReadOnlySQLError
from presetdb.keys import canonical_key, parse_key
from presetdb.store import migrate
from presetdb.store.engine import Target, check_file, connect_sqlite, describe, engine_for, parse_target
from presetdb.store.snapshot import sqlite_snapshot

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


# ---------------------------------------------------------------- canned audits


@dataclass(frozen=True)
class Audit:
    name: str
    title: str
    purpose: str
    params: dict[str, str]  # name -> meaning
    columns: dict[str, str]  # name -> meaning, in result order
    highlight: str
    sql: str  # the query without its header
    text: str  # the whole file

    def describe(self) -> str:
        """Purpose plus parameters and columns, for help texts and datasette."""
        lines = [self.purpose]
        if self.params:
            lines.append("Parameters: " + "; ".join(f":{k} {v}" for k, v in self.params.items()))
        lines.append("Columns: " + "; ".join(f"{k}: {v}" for k, v in self.columns.items()))
        return "\n".join(lines)


_HEADER_KEY = re.compile(r"^([a-z_]+):\s*(.*)$")
_ITEM = re.compile(r"^(\s+)([A-Za-z_]\w*):\s*(.*)$")


def parse_audit(name: str, text: str) -> Audit:
    """Parse a canned query file's header; errors name the file and the line."""
    header: dict[str, str] = {}
    items: dict[str, dict[str, str]] = {"params": {}, "columns": {}}
    section, item, item_indent = "", "", 0
    lines = text.splitlines()
    body_start = len(lines)
    for number, line in enumerate(lines, start=1):
        if not line.startswith("--"):
            body_start = number - 1
            break
        content = line[2:].removeprefix(" ")
        key = _HEADER_KEY.match(content)
        sub = _ITEM.match(content)
        if key:
            section, item = key.group(1), ""
            header[section] = key.group(2).strip()
        elif section in items and sub and (not item or len(sub.group(1)) <= item_indent):
            item, item_indent = sub.group(2), len(sub.group(1))
            items[section][item] = sub.group(3).strip()
        elif section in items and item and content.strip():
            items[section][item] += " " + content.strip()
        elif section and content.strip():
            header[section] += " " + content.strip()
        elif content.strip():
            raise AuditError(f"{name}.sql line {number}: header text outside a field: {line!r}")
    for required in ("title", "purpose", "columns", "highlight"):
        if required not in header:
            raise AuditError(f"{name}.sql: header lacks '-- {required}:'")
    sql = "\n".join(lines[body_start:]).strip()
    declared = set(items["params"])
    used = set(named_params(sql))
    if declared != used:
        raise AuditError(
            f"{name}.sql: header params {sorted(declared)} differ from the query's {sorted(used)}"
        )
    return Audit(
        name=name,
        title=header["title"],
        purpose=header["purpose"],
        params=items["params"],
        columns=items["columns"],
        highlight=header["highlight"],
        sql=sql,
        text=text,
    )


# Summary order: what can hurt a deployment first. Unlisted audits follow by name.
AUDIT_ORDER = ("coverage", "stale", "slower", "quarantined", "missing_provenance", "most_wanted", "far")


@cache
def audits() -> dict[str, Audit]:
    """The packaged canned queries by name (file stem), in AUDIT_ORDER, then by name."""
    folder = importlib.resources.files("presetdb.audit") / "sql"
    files = [f for f in folder.iterdir() if f.name.endswith(".sql")]
    rank = {name: i for i, name in enumerate(AUDIT_ORDER)}
    files.sort(key=lambda f: (rank.get(f.name[:-4], len(rank)), f.name))
    return {f.name[:-4]: parse_audit(f.name[:-4], f.read_text(encoding="utf-8")) for f in files}


def get_audit(name: str) -> Audit:
    try:
        return audits()[name]
    except KeyError:
        raise AuditError(f"unknown audit {name!r}; available: {', '.join(audits())}") from None


def running_versions() -> dict[str, str | None]:
    """Installed helion/triton/torch versions from package metadata (nothing imported)."""
    found: dict[str, str | None] = {}
    for package in ("helion", "triton", "torch"):
        try:
            found[f"{package}_version"] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            found[f"{package}_version"] = None
    return found


def current_source_hashes() -> dict[str, str]:
    """Source hashes of the registered example kernels. Imports torch and helion."""
    try:
        import presetdb.kernels  # noqa: F401  (registers the kernels)
        from presetdb.helion.registry import registered_kernels
    except ImportError as exc:
        raise AuditError(
            f"--check-source needs presetdb's kernels (torch + helion) importable: {exc}"
        ) from None
    return {name: kernel.source_hash() for name, kernel in registered_kernels().items()}


def audit_params(audit: Audit, given: Mapping[str, Any]) -> dict[str, Any]:
    """All of the audit's parameters: given values, else running versions, else NULL."""
    unknown = set(given) - set(audit.params)
    if unknown:
        accepted = ", ".join(audit.params) or "none"
        raise AuditError(
            f"audit {audit.name!r} has no parameter {', '.join(sorted(unknown))}; "
            f"it takes: {accepted}"
        )
    defaults = running_versions()
    params = {p: given.get(p, defaults.get(p)) for p in audit.params}
    if params.get("shape_key"):
        # Stored keys are canonical JSON; accept any spelling of the same key.
        params["shape_key"] = canonical_key(parse_key(str(params["shape_key"])))
    hashes = params.get("source_hashes")
    if isinstance(hashes, Mapping):
        params["source_hashes"] = json.dumps(dict(hashes), sort_keys=True)
    elif hashes not in (None, ""):
        try:
            ok = isinstance(json.loads(str(hashes)), dict)
        except json.JSONDecodeError:
            ok = False
        if not ok:
            raise AuditError('source_hashes must be a JSON object: {"kernel": "sha256", ...}')
    return params


def run_audit(db: ReadOnlyDB, name: str, given: Mapping[str, Any] | None = None) -> QueryResult:
    audit = get_audit(name)
    return db.query(audit.sql, audit_params(audit, given or {}))


@dataclass(frozen=True)
class SummaryRow:
    audit: str
    title: str
    rows: int
    highlight: str


def highlight(audit: Audit, result: QueryResult) -> str:
    if not result.rows:
        return ""
    values = {k: "NULL" if v is None else v for k, v in result.records()[0].items()}
    return audit.highlight.format_map(values)


def summary(db: ReadOnlyDB, given: Mapping[str, Any] | None = None) -> list[SummaryRow]:
    """Every audit once: its row count and its first row as a one-line highlight.
    Each `given` parameter goes to the audits that take it."""
    given = dict(given or {})
    unknown = set(given) - {p for a in audits().values() for p in a.params}
    if unknown:
        raise AuditError(f"no audit takes parameter(s) {', '.join(sorted(unknown))}")
    out = []
    for audit in audits().values():
        mine = {k: v for k, v in given.items() if k in audit.params}
        result = db.query(audit.sql, audit_params(audit, mine))
        out.append(SummaryRow(audit.name, audit.title, len(result.rows), highlight(audit, result)))
    return out


# ---------------------------------------------------------------- diff

DIFF_SQL = """
SELECT kernel, platform, shape_key, config_sha256, latency_ms FROM v_active_presets
"""


@dataclass(frozen=True)
class DiffRow:
    change: str  # added | removed | changed
    kernel: str
    platform: str
    shape_key: str
    old_config_sha256: str | None
    new_config_sha256: str | None
    old_ms: float | None
    new_ms: float | None

    @property
    def delta_ms(self) -> float | None:
        if self.old_ms is None or self.new_ms is None:
            return None
        return round(self.new_ms - self.old_ms, 6)

    @property
    def ratio(self) -> float | None:
        """new / old latency: below 1 is faster."""
        if self.old_ms is None or self.new_ms is None:
            return None
        return round(self.new_ms / self.old_ms, 4)

    def record(self) -> dict[str, Any]:
        return {
            "change": self.change,
            "kernel": self.kernel,
            "platform": self.platform,
            "shape_key": self.shape_key,
            "old_config_sha256": self.old_config_sha256,
            "new_config_sha256": self.new_config_sha256,
            "old_ms": self.old_ms,
            "new_ms": self.new_ms,
            "delta_ms": self.delta_ms,
            "ratio": self.ratio,
        }


@dataclass(frozen=True)
class Diff:
    rows: list[DiffRow]
    unchanged: int
    # (kernel, platform) -> active presets with the same config on both sides
    unchanged_by_pair: dict[tuple[str, str], int] = field(default_factory=dict)
    # the source revisions (--source-rev) of the imports each db holds
    old_revs: tuple[str, ...] = ()
    new_revs: tuple[str, ...] = ()

    def counts(self) -> dict[str, int]:
        counts = {"added": 0, "removed": 0, "changed": 0}
        for row in self.rows:
            counts[row.change] += 1
        return counts | {"unchanged": self.unchanged}

    def by_pair(self) -> list[dict[str, Any]]:
        """Per kernel x platform: added, removed, changed, unchanged (what a new vLLM
        release changed, when both dbs are imports of its configs/ tree)."""
        pairs: dict[tuple[str, str], dict[str, int]] = {}

        def slot(pair: tuple[str, str]) -> dict[str, int]:
            return pairs.setdefault(pair, {"added": 0, "removed": 0, "changed": 0, "unchanged": 0})

        for row in self.rows:
            slot((row.kernel, row.platform))[row.change] += 1
        for pair, n in self.unchanged_by_pair.items():
            slot(pair)["unchanged"] += n
        return [{"kernel": k, "platform": p, **c} for (k, p), c in sorted(pairs.items())]


def _active(path: Path | str | Target) -> dict[tuple[str, str, str], tuple[str, float | None]]:
    with sqlite_snapshot(path) as file, ReadOnlyDB(file) as db:
        db.require_presetdb()
        return {(r[0], r[1], r[2]): (r[3], r[4]) for r in db.query(DIFF_SQL).rows}


def _source_revs(path: Path | str | Target) -> tuple[str, ...]:
    with sqlite_snapshot(path) as file, ReadOnlyDB(file) as db:
        columns = {r[1] for r in db.query("SELECT * FROM pragma_table_info('tuning_runs')").rows}
        if "source_rev" not in columns:  # a db from before schema revision 0007
            return ()
        found = db.query(
            "SELECT DISTINCT source_rev FROM tuning_runs WHERE source_rev IS NOT NULL ORDER BY 1"
        ).rows
        return tuple(str(r[0]) for r in found)


def diff_databases(old: Path | str | Target, new: Path | str | Target) -> Diff:
    """Active presets added, removed, or changed (a different config) from old to new."""
    before, after = _active(old), _active(new)
    rows: list[DiffRow] = []
    unchanged = 0
    by_pair: dict[tuple[str, str], int] = {}
    for key in sorted(before.keys() | after.keys()):
        was, now = before.get(key), after.get(key)
        if was is not None and now is not None and was[0] == now[0]:
            unchanged += 1
            by_pair[key[:2]] = by_pair.get(key[:2], 0) + 1
            continue
        change = "added" if was is None else "removed" if now is None else "changed"
        rows.append(
            DiffRow(
                change,
                *key,
                old_config_sha256=None if was is None else was[0],
                new_config_sha256=None if now is None else now[0],
                old_ms=None if was is None else was[1],
                new_ms=None if now is None else now[1],
            )
        )
    order = {"changed": 0, "added": 1, "removed": 2}
    rows.sort(key=lambda r: (order[r.change], r.kernel, r.platform, r.shape_key))
    return Diff(rows, unchanged, by_pair, _source_revs(old), _source_revs(new))


# ---------------------------------------------------------------- datasette

# View columns renamed from their table column; the rest share a table column's name.
VIEW_ALIASES = {
    "preset_id": "presets.id",
    "kernel": "kernels.name",
    "platform": "platforms.name",
    "config": "configs.config_json",
    "config_sha256": "configs.sha256",
    "tuned_at": "tuning_runs.finished_at",
}
VIEW_DOCS = {
    "v_active_presets": "One row per active preset with names, config and provenance joined in.",
    "v_preset_history": "Every preset row (active, superseded, quarantined): a key's history.",
    "v_coverage": "Active presets per kernel x platform, and whether a default entry exists.",
}
COVERAGE_DOCS = {
    "active_presets": "active presets for the kernel x platform",
    "has_default": "1 when the default entry {} is active",
}
# Where a column name appears in several tables, the view took it from this one.
VIEW_SOURCE_ORDER = ("presets", "tuning_runs", "configs", "kernels", "platforms")


def _comment_lines(source: str) -> dict[int, str]:
    tokens = tokenize.generate_tokens(io.StringIO(source).readline)
    return {t.start[0]: t.string.lstrip("#").strip() for t in tokens if t.type == tokenize.COMMENT}


def schema_docs() -> tuple[dict[str, str], dict[str, dict[str, str]]]:
    """Table docstrings and column comments, read from presetdb/store/models.py's source so
    they cannot drift from the models: a column's trailing ``# comment``, else the
    ``#`` comment lines right above it."""
    from presetdb.store import models

    source = Path(models.__file__).read_text(encoding="utf-8")
    lines = source.splitlines()
    comments = _comment_lines(source)
    tables: dict[str, str] = {}
    columns: dict[str, dict[str, str]] = {}
    for cls in ast.parse(source).body:
        if not isinstance(cls, ast.ClassDef):
            continue
        table = next(
            (
                s.value.value
                for s in cls.body
                if isinstance(s, ast.Assign)
                and any(isinstance(t, ast.Name) and t.id == "__tablename__" for t in s.targets)
                and isinstance(s.value, ast.Constant)
            ),
            None,
        )
        if not isinstance(table, str):
            continue
        tables[table] = " ".join((ast.get_docstring(cls) or "").split())
        docs = columns.setdefault(table, {})
        for stmt in cls.body:
            if not (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)):
                continue
            text = comments.get(stmt.end_lineno or stmt.lineno, "")
            above: list[str] = []
            number = stmt.lineno - 1  # 1-based line above the statement
            while number >= 1 and lines[number - 1].strip().startswith("#"):
                above.insert(0, comments.get(number, ""))
                number -= 1
            docs[stmt.target.id] = _expand_constants(text or " ".join(above), models)
    _add_derived(columns, models.Base.metadata)
    return tables, columns


def _expand_constants(text: str, module: Any) -> str:
    """ "one of RUN_SOURCES" -> "one of tune, autotune, ..." (the values, not the name)."""

    def values(match: re.Match[str]) -> str:
        found = getattr(module, match.group(0), None)
        return ", ".join(map(str, found)) if isinstance(found, tuple) else match.group(0)

    return re.sub(r"\b[A-Z][A-Z_]{3,}\b", values, text)


def _add_derived(columns: dict[str, dict[str, str]], metadata: Any) -> None:
    """Facts the schema itself states: primary keys, foreign keys, UTC timestamps."""
    for table in metadata.sorted_tables:
        docs = columns.setdefault(table.name, {})
        for column in table.columns:
            facts = [docs.get(column.name, "")]
            if column.primary_key and column.name == "id":
                facts.append("row id")
            facts += [f"references {fk.target_fullname}" for fk in column.foreign_keys]
            if column.name.endswith("_at"):
                facts.append("UTC, ISO-8601")
            docs[column.name] = "; ".join(f for f in facts if f)


def _view_columns() -> dict[str, list[str]]:
    """Column names of each audit view, read from a scratch schema-only database."""
    with tempfile.TemporaryDirectory(prefix="presetdb-views-") as tmp:
        path = Path(tmp) / "schema.db"
        migrate.upgrade(path, seed_data=False)
        with ReadOnlyDB(path) as db:
            views = [
                r[0]
                for r in db.query(
                    "SELECT name FROM sqlite_master WHERE type = 'view' ORDER BY name"
                ).rows
            ]
            return {
                v: [r[1] for r in db.query("SELECT * FROM pragma_table_info(:v)", {"v": v}).rows]
                for v in views
            }


def view_docs(columns: Mapping[str, Mapping[str, str]]) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    for view, names in _view_columns().items():
        docs: dict[str, str] = {}
        for name in names:
            if name in VIEW_ALIASES:
                table, column = VIEW_ALIASES[name].split(".")
                docs[name] = columns.get(table, {}).get(column) or f"{VIEW_ALIASES[name]}"
            elif name in COVERAGE_DOCS:
                docs[name] = COVERAGE_DOCS[name]
            else:
                docs[name] = next(
                    (columns[t][name] for t in VIEW_SOURCE_ORDER if name in columns.get(t, {})), ""
                )
        out[view] = docs
    return out


def datasette_metadata(database: str = "presets") -> dict[str, Any]:
    """Datasette metadata: every canned audit as a canned query, and descriptions of
    tables, views and columns. Generated from the .sql files and models.py."""
    table_docs, column_docs = schema_docs()
    tables: dict[str, Any] = {
        t: {"description": table_docs.get(t, ""), "columns": _non_empty(column_docs[t])}
        for t in sorted(column_docs)
    }
    for view, docs in view_docs(column_docs).items():
        tables[view] = {"description": VIEW_DOCS.get(view, ""), "columns": _non_empty(docs)}
    queries = {
        a.name: {
            "title": a.title,
            "description": a.describe(),
            "sql": a.sql,
            "params": list(a.params),
        }
        for a in audits().values()
    }
    return {
        "title": "presetdb audit",
        "description": "Pre-tuned Helion kernel configs, read-only. Canned queries are the "
        "same files `presetdb audit` runs (presetdb/audit/sql/*.sql).",
        "databases": {database: {"queries": queries, "tables": tables}},
    }


def _non_empty(docs: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in docs.items() if v}


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically (temp file + rename)."""
    write_atomic(Path(path).expanduser(), json.dumps(data, indent=2, sort_keys=True) + "\n")


__all__ = [
    "Audit",
    "AuditError",
    "Diff",
    "DiffRow",
    "QueryResult",
    "ReadOnlyDB",
    "SummaryRow",
    "audits",
    "check_read_only",
    "datasette_metadata",
    "diff_databases",
    "get_audit",
    "named_params",
    "run_audit",
    "run_sql",
    "running_versions",
    "schema_docs",
    "split_statements",
    "summary",
    "write_json",
]
