"""Canned audits: plain ``.sql`` files in ``presetdb/audit/sql/``, run read-only.

``sqlite3``, datasette and ``presetdb audit`` all run the same text. Each file starts with
a header of ``--`` comment lines::

    -- title: one line
    -- purpose: what the query answers (continuation lines are indented)
    -- params: none                 (or one indented ``name: meaning`` line per parameter)
    -- columns:
    --   name: meaning              (one per result column, in order)
    -- highlight: {column} text    (formats the first row in `presetdb audit`'s summary)

Queries take values through named parameters only (``:name``); an empty or NULL value
means "not given". Canned audits of a registry read a SQLite copy
(`presetdb.store.snapshot`): the audits are SQLite SQL.

This module must not import torch or helion: only ``current_source_hashes`` reaches for
``presetdb.kernels``, and only when asked.
"""

from __future__ import annotations

import importlib.metadata
import importlib.resources
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any

from presetdb.audit.readonly import QueryResult, ReadOnlyDB, named_params
from presetdb.errors import AuditError
from presetdb.keys import canonical_key, parse_key

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
