"""``presetdb diff``: active presets added, removed and changed between two databases."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from presetdb.audit.readonly import ReadOnlyDB
from presetdb.store.engine import Target
from presetdb.store.snapshot import sqlite_snapshot

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
