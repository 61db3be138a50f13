"""`presetdb audit`, `presetdb sql` and `presetdb diff`: read-only looks into a db file.

Nothing here can change a file: every db is opened through `presetdb.audit.readonly.ReadOnlyDB`.
"""

from __future__ import annotations

import csv
import inspect
import json
import sys
from collections.abc import Sequence
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from presetdb._text import quoted
from presetdb.audit import canned, datasette, readonly
from presetdb.audit import diff as diffing
from presetdb.audit.readonly import QueryResult, ReadOnlyDB
from presetdb.cli.common import DbOption, console, db_label, db_path, print_table, safe
from presetdb.errors import AuditError
from presetdb.store.engine import parse_target
from presetdb.store.snapshot import sqlite_snapshot


class OutputFormat(str, Enum):
    table = "table"
    json = "json"
    csv = "csv"


FormatOption = Annotated[
    OutputFormat, typer.Option("--format", "-f", help="table (Rich), json or csv.")
]
ParamOption = Annotated[
    list[str] | None,
    typer.Option(
        "--param", "-P", help="A query parameter as NAME=VALUE (repeatable; -p is --platform elsewhere)."
    ),
]


def parse_params(items: Sequence[str] | None) -> dict[str, str]:
    params: dict[str, str] = {}
    for item in items or ():
        name, sep, value = item.partition("=")
        name = name.strip().lstrip(":")
        if not sep or not name:
            raise typer.BadParameter(f"--param {quoted(item)}: use NAME=VALUE, e.g. kernel=rms_norm")
        params[name] = value
    return params


# ---------------------------------------------------------------- output


def _cell(value: Any) -> str:
    return "NULL" if value is None else safe(value)


def emit(
    columns: list[str],
    rows: Sequence[Sequence[Any]],
    fmt: OutputFormat,
    *,
    title: str | None = None,
    caption: str | None = None,
) -> None:
    if fmt is OutputFormat.json:
        records = [dict(zip(columns, row, strict=True)) for row in rows]
        typer.echo(json.dumps(records, indent=2, default=str))
    elif fmt is OutputFormat.csv:
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows(["" if v is None else v for v in row] for row in rows)
    else:
        table = Table(
            title=None if title is None else safe(title),
            caption=None if caption is None else safe(caption),
        )
        for column in columns:
            table.add_column(safe(column), overflow="fold")
        for row in rows:
            table.add_row(*(_cell(v) for v in row))
        print_table(table)


# ---------------------------------------------------------------- commands


def audit(
    name: Annotated[
        str | None, typer.Argument(help="Audit to run; none: a summary of all.", show_default=False)
    ] = None,
    db: DbOption = None,
    fmt: FormatOption = OutputFormat.table,
    param: ParamOption = None,
    check_source: Annotated[
        bool,
        typer.Option(
            "--check-source",
            help="stale: also compare kernel source hashes with presetdb.kernels (imports torch).",
        ),
    ] = False,
    fail_on_rows: Annotated[
        bool, typer.Option("--fail-on-rows", help="Exit 1 when the audit returns rows (for CI).")
    ] = False,
    datasette_metadata: Annotated[
        Path | None,
        typer.Option(
            "--datasette-metadata",
            help="Write datasette metadata (canned queries + column descriptions) to this "
            "file and exit; needs no db.",
        ),
    ] = None,
    database_name: Annotated[
        str, typer.Option("--database-name", help="Datasette's name for the db (file stem).")
    ] = "presets",
) -> None:
    """Run the canned audit queries (presetdb/audit/sql/*.sql) read-only against a db.

    Missing versions for `stale` come from the installed helion/triton/torch (package
    metadata; nothing is imported).

    Example: presetdb audit stale --db presets.db --format json
    """
    if datasette_metadata is not None:
        datasette.write_json(datasette_metadata, datasette.datasette_metadata(database_name))
        console.print(f"wrote {safe(datasette_metadata)} ({len(canned.audits())} canned queries)")
        return
    if fail_on_rows and name is None:
        raise typer.BadParameter("--fail-on-rows needs an audit NAME")
    if check_source and name not in (None, "stale"):
        raise typer.BadParameter(f"--check-source applies to `stale`, not {quoted(name)}")
    params: dict[str, Any] = parse_params(param)
    if check_source:
        params["source_hashes"] = canned.current_source_hashes()
    path = db_path(db)
    # A registry is audited through a SQLite copy: the canned audits are SQLite SQL.
    with sqlite_snapshot(path) as file, ReadOnlyDB(file) as rodb:
        rodb.require_presetdb()
        if name is None:
            rows = canned.summary(rodb, params)
            emit(
                ["audit", "rows", "highlight", "title"],
                [(r.audit, r.rows, r.highlight, r.title) for r in rows],
                fmt,
                title=f"audits of {db_label(path)}",
                caption="details: presetdb audit NAME",
            )
            return
        chosen = canned.get_audit(name)
        result: QueryResult = canned.run_audit(rodb, name, params)
    emit(
        result.columns,
        result.rows,
        fmt,
        title=f"{chosen.title}: {len(result.rows)} row(s)",
        caption=escape(db_label(path)),
    )
    if fail_on_rows and result.rows:
        raise typer.Exit(1)


def sql(
    query: Annotated[str, typer.Argument(help="One SELECT / WITH / VALUES / EXPLAIN / PRAGMA.")],
    db: DbOption = None,
    fmt: FormatOption = OutputFormat.table,
    param: ParamOption = None,
    timeout: Annotated[
        float | None,
        typer.Option("--timeout", help="Stop the query after this many seconds (default 30; PRESETDB_SQL_TIMEOUT).", show_default=False),
    ] = None,
    max_rows: Annotated[
        int | None,
        typer.Option("--max-rows", help="Refuse more rows than this (default 100,000; PRESETDB_SQL_MAX_ROWS).", show_default=False),
    ] = None,
    max_memory_mb: Annotated[
        int | None,
        typer.Option(
            "--max-memory-mb",
            help="Memory for SQLite and the fetched rows (default 512; PRESETDB_SQL_MAX_MEMORY_MB).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Run one read-only SQL statement. Writes, ATTACH, writing pragmas and chained
    statements are refused; the file is opened read-only and never changes. A query is
    stopped at a time, row and memory limit (configurable) with a clear message. On a
    registry URL the statement runs on the server (PostgreSQL SQL) in a READ ONLY transaction.

    Example: presetdb sql "SELECT kernel, platform, active_presets FROM v_coverage" --db presets.db
    """
    import dataclasses

    path = db_path(db)
    limits = readonly.QueryLimits.from_env()
    if timeout is not None:
        if timeout <= 0:
            raise typer.BadParameter("must be > 0", param_hint="--timeout")
        limits = dataclasses.replace(limits, seconds=timeout)
    if max_rows is not None:
        if max_rows <= 0:
            raise typer.BadParameter("must be > 0", param_hint="--max-rows")
        limits = dataclasses.replace(limits, max_rows=max_rows)
    if max_memory_mb is not None:
        if max_memory_mb <= 0:
            raise typer.BadParameter("must be > 0", param_hint="--max-memory-mb")
        limits = dataclasses.replace(limits, max_bytes=max_memory_mb << 20)
    result = readonly.run_sql(path, query, parse_params(param), limits)
    emit(result.columns, result.rows, fmt, caption=f"{len(result.rows)} row(s) from {db_label(path)}")


def diff(
    old: Annotated[str, typer.Argument(help="The older db file (or a registry URL).")],
    new: Annotated[str, typer.Argument(help="The newer db file (or a registry URL).")],
    fmt: FormatOption = OutputFormat.table,
    per_pair: Annotated[
        bool,
        typer.Option("--per-pair", help="One line per kernel x platform: added, removed, changed, unchanged."),
    ] = False,
) -> None:
    """Active presets added, removed and changed (another config) between two dbs, with
    latency deltas (ms, and ratio new/old: below 1 is faster). --per-pair sums them per
    kernel x platform: what a vLLM release changed, given imports of two vLLM trees.

    Example: presetdb diff vllm-0.11.db vllm-0.12.db --per-pair
    """
    old_target, new_target = parse_target(old), parse_target(new)
    result = diffing.diff_databases(old_target, new_target)
    counts = result.counts()
    old, new = db_label(old_target), db_label(new_target)  # never print a password
    revs = f"source revisions: {', '.join(result.old_revs) or '-'} -> {', '.join(result.new_revs) or '-'}"
    if per_pair:
        pairs = result.by_pair()
        columns = ["kernel", "platform", "added", "removed", "changed", "unchanged"]
        if fmt is OutputFormat.json:
            payload = {"old": str(old), "new": str(new), "old_revs": list(result.old_revs),
                       "new_revs": list(result.new_revs), "summary": counts, "pairs": pairs}
            typer.echo(json.dumps(payload, indent=2))
            return
        emit(columns, [[p[c] for c in columns] for p in pairs], fmt, title=f"{old} -> {new}", caption=revs)
        return
    if fmt is OutputFormat.json:
        payload = {
            "old": old,
            "new": new,
            "summary": counts,
            "changes": [r.record() for r in result.rows],
        }
        typer.echo(json.dumps(payload, indent=2))
        return
    records = [r.record() for r in result.rows]
    columns = list(_DIFF_COLUMNS)
    if fmt is OutputFormat.table:
        # A table has no room for two sha256s: 8 characters each identify a config.
        columns = [c for c in columns if not c.endswith("_config_sha256")]
        columns.insert(4, "config")
        for r in records:
            r["config"] = (
                f"{(r['old_config_sha256'] or '-')[:8]} -> {(r['new_config_sha256'] or '-')[:8]}"
            )
    summary = ", ".join(f"{n} {k}" for k, n in counts.items())
    emit(
        columns,
        [[r[c] for c in columns] for r in records],
        fmt,
        title=f"{old} -> {new}",
        caption=summary,
    )


_DIFF_COLUMNS = (
    "change",
    "kernel",
    "platform",
    "shape_key",
    "old_config_sha256",
    "new_config_sha256",
    "old_ms",
    "new_ms",
    "delta_ms",
    "ratio",
)


def _audit_help() -> str:
    """The command's help lists the audits found in presetdb/sql (never out of date)."""
    try:
        names = "; ".join(f"{a.name}: {a.title}" for a in canned.audits().values())
    except AuditError as exc:  # a broken .sql file must not break `presetdb --help`
        names = f"(audits unavailable: {exc})"
    # Typer keeps the newlines of an explicit help text: rejoin each paragraph's lines.
    paragraphs = inspect.cleandoc(audit.__doc__ or "").split("\n\n")
    doc = "\n\n".join(" ".join(p.split()) for p in paragraphs)
    return doc + "\n\nAudits: " + names


def register(app: typer.Typer) -> None:
    app.command("audit", help=_audit_help())(audit)
    app.command("sql")(sql)
    app.command("diff")(diff)


__all__ = ["OutputFormat", "emit", "parse_params", "register"]
