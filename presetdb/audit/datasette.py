"""Datasette metadata for a presetdb file: table, view and column descriptions taken from
the schema's own comments, and the canned audits as datasette queries."""

from __future__ import annotations

import ast
import io
import json
import re
import tempfile
import tokenize
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from presetdb._util import write_atomic
from presetdb.audit.canned import audits
from presetdb.audit.readonly import ReadOnlyDB
from presetdb.store import migrate

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
