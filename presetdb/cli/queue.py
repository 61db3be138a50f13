"""`presetdb queue`: the keys worth tuning, from the near-miss and miss ledgers of one or
more user overlays (one per host)."""

from __future__ import annotations

import json
import re
from enum import Enum
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from presetdb.cli.common import console, print_table

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _safe(text: object) -> str:
    """Ledger text is what a process wrote: no markup, no control characters."""
    return escape(_CONTROL.sub("?", str(text)))


class QueueFormat(str, Enum):
    table = "table"
    json = "json"


def queue_cmd(
    db: Annotated[
        list[str] | None,
        typer.Option(
            "--db", help="A ledger: a user overlay db (file or registry URL); repeatable, the ledgers merge. "
            "Default: this machine's user overlay ($PRESETDB_USER_DB).", show_default=False,
        ),
    ] = None,
    top: Annotated[int | None, typer.Option("--top", "-n", help="Only the first N keys.", min=1)] = None,
    kernel: Annotated[str | None, typer.Option("--kernel", "-k", help="Only this kernel.")] = None,
    fmt: Annotated[
        QueueFormat, typer.Option("--format", "-f", help="table, or json (what --from-queue reads).")
    ] = QueueFormat.table,
) -> None:
    """Rank the keys worth tuning: calls served far away or not at all first, then by
    calls x (1 + log2 distance) from the key that served them.

    Feed the result to `presetdb refine KERNEL --from-queue FILE` or `presetdb tune KERNEL --from-queue FILE`.

    Example: presetdb queue --db host1/overlay.db --db host2/overlay.db --top 20 --format json > queue.json
    """
    from presetdb.offline import queue as queueing
    from presetdb.settings import Settings
    from presetdb.store.engine import parse_target

    if db:
        dbs = [parse_target(d) for d in db]
    else:
        overlay = Settings.from_env().user_db_path
        if not overlay.exists():
            raise typer.BadParameter(
                f"no user overlay at {overlay} yet (nothing counted: kernel calls create it on their "
                f"first miss; `presetdb db upgrade --db {overlay} --schema-only` creates an empty "
                "one); give --db PATH for another ledger",
                param_hint="--db",
            )
        dbs = [overlay]
    items = queueing.build_queue(dbs, kernel=kernel, top=top)
    if fmt is QueueFormat.json:
        typer.echo(json.dumps(queueing.queue_document(items, dbs), indent=2))
        return
    table = Table(title=f"tuning queue ({len(items)} key(s) from {len(dbs)} ledger(s))")
    for col in ("#", "kernel", "platform", "requested key", "calls", "distance", "far", "served by", "last seen"):
        table.add_column(col, overflow="fold")
    for n, item in enumerate(items, start=1):
        far = "miss" if item.misses == item.count else ("far" if item.far else "")
        if item.far_fields:
            far += " " + ", ".join(f"{k} {v[0]:.3g}>{v[1]:.3g}" for k, v in item.far_fields.items())
        table.add_row(
            str(n), _safe(item.kernel), _safe(item.platform), _safe(item.key), str(item.count),
            f"{item.distance:.3g}", _safe(far.strip()), _safe("; ".join(item.served) or "-"), _safe(item.last_seen_at),
        )
    print_table(table)
    if not items:
        console.print("nothing counted: every call was served by an exact key of its own platform")


def register(app: typer.Typer) -> None:
    app.command("queue")(queue_cmd)
