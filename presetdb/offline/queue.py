"""``presetdb queue``: the near-miss and miss ledgers ranked into a tuning queue.

Serving processes count, in their user overlay, every call that no stored key matched
exactly (`preset_near_misses`: served by a nearest/ceil/floor key, the default entry or
another platform's preset, with the distance and the far flag) and every call nothing
served (`preset_misses`). The queue merges those ledgers -- one overlay per host, any
number -- per (kernel, platform, requested key) and ranks the keys worth tuning:

    far first (a far match, or a miss), then score = count x (1 + distance)

where distance is the largest summed log2 distance the key was served from (a miss counts
as `MISS_DISTANCE`; the default entry and an exact key of another platform as 0, so
their score is their count). Ties: more calls first, then the key's text.

`presetdb refine --from-queue` and `presetdb tune --from-queue` read the queue (a file
``presetdb queue --format json`` wrote, or overlay dbs) as their shapes.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from presetdb.errors import PresetDBError
from presetdb.keys import parse_key

QUEUE_FORMAT = "presetdb-queue/1"
MISS_DISTANCE = 10.0  # a call nothing served ranks like one served from 2**10 away


class QueueError(PresetDBError):
    """A ledger or queue file cannot be read."""


@dataclass
class QueueItem:
    """One requested key worth tuning, merged over every ledger read."""

    kernel: str
    platform: str
    key: str  # canonical shape key the calls asked for
    count: int = 0  # calls, all ledgers
    distance: float = 0.0  # largest summed log2 distance it was served from
    far: bool = False  # served far away (or not served at all) at least once
    misses: int = 0  # calls nothing served (preset_misses)
    served: list[str] = field(default_factory=list)  # "platform:key (match)" it was served by
    far_fields: dict[str, list[float]] = field(default_factory=dict)  # field -> [distance, limit]
    first_seen_at: str = ""
    last_seen_at: str = ""
    sources: list[str] = field(default_factory=list)  # the ledgers (dbs) that counted it

    @property
    def score(self) -> float:
        return self.count * (1.0 + self.distance)

    def as_json(self) -> dict[str, Any]:
        return {**asdict(self), "key": json.loads(self.key), "score": round(self.score, 3)}


def _merge(items: dict[tuple[str, str, str], QueueItem], kernel: str, platform: str, key: str) -> QueueItem:
    ident = (kernel, platform, key)
    item = items.get(ident)
    if item is None:
        item = items[ident] = QueueItem(kernel, platform, key)
    return item


def _seen(item: QueueItem, first: str, last: str, source: str) -> None:
    item.first_seen_at = min(filter(None, (item.first_seen_at, first)), default="")
    item.last_seen_at = max(item.last_seen_at, last)
    if source not in item.sources:
        item.sources.append(source)


def read_ledgers(dbs: Sequence[Any]) -> list[QueueItem]:
    """Merge the near-miss and miss ledgers of `dbs` (files or registry URLs)."""
    from presetdb.store import migrate
    from presetdb.store.engine import describe
    from presetdb.store.repository import Repository

    items: dict[tuple[str, str, str], QueueItem] = {}
    for db in dbs:
        label = describe(db)
        store = migrate.open_store(db, "ro")
        try:
            with store.read() as session:
                repo = Repository(session)
                near, misses = repo.near_misses(), repo.misses()
        finally:
            store.dispose()
        for r in near:
            item = _merge(items, r.kernel, r.platform, r.requested_key)
            item.count += r.count
            item.distance = max(item.distance, r.distance or 0.0)
            item.far = item.far or r.far
            for name, value in json.loads(r.far_fields).items():
                if name not in item.far_fields or value[0] > item.far_fields[name][0]:
                    item.far_fields[name] = value
            served = f"{r.served_platform}:{r.served_key} ({r.match})"
            if served not in item.served:
                item.served.append(served)
            _seen(item, r.first_seen_at, r.last_seen_at, label)
        for m in misses:
            item = _merge(items, m.kernel, m.platform, m.features)
            item.count += m.count
            item.misses += m.count
            item.far = True
            item.distance = max(item.distance, MISS_DISTANCE)
            _seen(item, m.first_seen_at, m.last_seen_at, label)
    return list(items.values())


def rank(items: Iterable[QueueItem], *, kernel: str | None = None, top: int | None = None) -> list[QueueItem]:
    """Far first, then by score (count x (1 + distance)), more calls, key text."""
    chosen = [i for i in items if kernel is None or i.kernel == kernel]
    chosen.sort(key=lambda i: (not i.far, -i.score, -i.count, i.kernel, i.platform, i.key))
    return chosen if top is None else chosen[:top]


def build_queue(dbs: Sequence[Any], *, kernel: str | None = None, top: int | None = None) -> list[QueueItem]:
    return rank(read_ledgers(dbs), kernel=kernel, top=top)


def queue_document(items: Sequence[QueueItem], dbs: Sequence[Any]) -> dict[str, Any]:
    from presetdb.store.engine import describe

    return {"format": QUEUE_FORMAT, "ledgers": [describe(db) for db in dbs], "items": [i.as_json() for i in items]}


def shapes_from_queue(paths: Sequence[Path | str], kernel: str, *, top: int | None = None) -> list[dict[str, Any]]:
    """The shape keys of `kernel` in a queue, best first: each path is a queue file
    (``presetdb queue --format json``) or a ledger db (a user overlay)."""
    from presetdb.store.engine import parse_target

    items: list[QueueItem] = []
    dbs: list[Any] = []
    for path in paths:
        if str(path).endswith(".json"):
            items += _read_queue_file(Path(path))
        else:
            dbs.append(parse_target(path))
    if dbs:
        items += read_ledgers(dbs)
    ranked = rank(_dedupe(items), kernel=kernel, top=top)
    return [parse_key(i.key) for i in ranked]


def _dedupe(items: Sequence[QueueItem]) -> list[QueueItem]:
    """One item per (kernel, platform, key): the highest-ranked copy wins (files may overlap)."""
    best: dict[tuple[str, str, str], QueueItem] = {}
    for item in rank(items):
        best.setdefault((item.kernel, item.platform, item.key), item)
    return list(best.values())


def _read_queue_file(path: Path) -> list[QueueItem]:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise QueueError(f"{path}: cannot read a queue file ({exc}); write one with `presetdb queue --format json`") from None
    if not isinstance(doc, dict) or doc.get("format") != QUEUE_FORMAT or not isinstance(doc.get("items"), list):
        raise QueueError(f"{path}: not a {QUEUE_FORMAT} file; write one with `presetdb queue --format json > {path.name}`")
    out = []
    for index, raw in enumerate(doc["items"]):
        try:
            key = json.dumps(raw["key"], sort_keys=True, separators=(",", ":"))
            parse_key(key)
            out.append(QueueItem(
                kernel=str(raw["kernel"]), platform=str(raw["platform"]), key=key, count=int(raw["count"]),
                distance=float(raw["distance"]), far=bool(raw["far"]),
            ))
        except (KeyError, TypeError, ValueError, PresetDBError) as exc:
            raise QueueError(f"{path}: items[{index}]: {type(exc).__name__}: {exc}; expected kernel, platform, key, count, distance, far") from None
    return out
