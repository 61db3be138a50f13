"""Data checks of `presetdb db check`, beyond SQLite's own integrity and foreign-key
checks: rows that SQL accepts but presetdb cannot serve.

- a kernel whose `key_schema` is not JSON or not a key spec;
- an active preset whose shape key is not a JSON object of strings and numbers, or does
  not fit its kernel's key spec; whose config is not a JSON object;
- two active rows for one (kernel, platform, key) (the partial unique index was dropped);
- a view of the package's schema that is missing or cannot be read.

Plain sqlite3 on a read-only connection: the file is never changed.
"""

from __future__ import annotations

import functools
import json
import math
import sqlite3
import tempfile
from pathlib import Path

from presetdb._text import quoted
from presetdb.errors import KeySpecError
from presetdb.keys import KeySpec
from presetdb.store.engine import connect_sqlite

MAX_PROBLEMS = 1_000


@functools.cache
def expected_views() -> frozenset[str]:
    """The views this package's schema defines (read from a fresh schema-only db)."""
    from presetdb.store import migrate

    with tempfile.TemporaryDirectory(prefix="presetdb-views-") as tmp:
        path = Path(tmp) / "schema.db"
        migrate.upgrade(path, seed_data=False)
        conn = connect_sqlite(path, "ro")
        try:
            return frozenset(r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'view'"))
        finally:
            conn.close()


def data_problems(path: Path) -> list[str]:
    """One line per problem (capped at MAX_PROBLEMS); [] when every row can be served."""
    conn = connect_sqlite(path, "ro")
    try:
        problems = _views(conn) + _kernels_and_presets(conn) + _duplicates(conn)
    finally:
        conn.close()
    if len(problems) > MAX_PROBLEMS:
        problems = problems[:MAX_PROBLEMS] + [f"... and {len(problems) - MAX_PROBLEMS} more"]
    return problems


def _views(conn: sqlite3.Connection) -> list[str]:
    have = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'view'")}
    problems = [f"view {name} is missing" for name in sorted(expected_views() - have)]
    for name in sorted(expected_views() & have):
        try:
            # Names from the package's own schema, quoted: not user input.
            conn.execute(f'SELECT * FROM "{name}" LIMIT 0')  # sql: view names from the package schema
        except sqlite3.Error as exc:
            problems.append(f"view {name} cannot be read: {exc}")
    return problems


def spec_problem(key_schema: object) -> tuple[KeySpec | None, str | None]:
    try:
        return KeySpec.from_schema(key_schema if isinstance(key_schema, str) else str(key_schema)), None
    except KeySpecError as exc:
        return None, str(exc)


def key_problem(spec: KeySpec, text: object) -> str | None:
    """Why a stored shape key cannot be served under `spec` (None: it can)."""
    try:
        key = json.loads(text) if isinstance(text, str) else None
    except ValueError:
        key = None
    if not isinstance(key, dict):
        return f"shape key {quoted(text)} is not a JSON object"
    for name, value in key.items():
        if not isinstance(value, (str, int, float, bool)) or (
            isinstance(value, float) and not math.isfinite(value)
        ):
            return f"shape key field {quoted(name)} holds {quoted(value)}, not a string or number"
    try:
        problems = spec.check_key(key)
    except OverflowError:
        problems = ["a number is too large"]
    return f"shape key {quoted(text)}: {'; '.join(problems)}" if problems else None


def _kernels_and_presets(conn: sqlite3.Connection) -> list[str]:
    problems: list[str] = []
    specs: dict[int, KeySpec | None] = {}
    for kid, name, schema in conn.execute("SELECT id, name, key_schema FROM kernels ORDER BY id"):
        specs[kid], problem = spec_problem(schema)
        if problem is not None:
            problems.append(f"kernel {quoted(name)}: key_schema {quoted(schema)} is not a key spec: {problem}")
    rows = conn.execute(
        "SELECT p.id, k.name, pl.name, p.kernel_id, p.shape_key, c.config_json FROM presets p "
        "JOIN kernels k ON k.id = p.kernel_id JOIN platforms pl ON pl.id = p.platform_id "
        "JOIN configs c ON c.id = p.config_id WHERE p.status = 'active' ORDER BY p.id"
    )
    for pid, kernel, platform, kid, text, config in rows:
        where = f"preset {pid} ({quoted(kernel)} on {quoted(platform)})"
        spec = specs.get(kid)
        if spec is not None:
            problem = key_problem(spec, text)
            if problem is not None:
                problems.append(f"{where}: {problem}; it does not fit the kernel's key spec")
        if not isinstance(config, str) or not config.lstrip().startswith("{"):
            problems.append(f"{where}: config {quoted(config)} is not a JSON object")
        if len(problems) > MAX_PROBLEMS:
            break
    return problems


def _duplicates(conn: sqlite3.Connection) -> list[str]:
    rows = conn.execute(
        "SELECT k.name, pl.name, p.shape_key, group_concat(p.id) FROM presets p "
        "JOIN kernels k ON k.id = p.kernel_id JOIN platforms pl ON pl.id = p.platform_id "
        "WHERE p.status = 'active' GROUP BY p.kernel_id, p.platform_id, p.shape_key "
        "HAVING count(*) > 1 LIMIT 1000"
    )
    return [
        f"{quoted(kernel)} on {quoted(platform)} key {quoted(key)}: two or more active rows "
        f"(presets {ids}); one must be superseded"
        for kernel, platform, key, ids in rows
    ]
