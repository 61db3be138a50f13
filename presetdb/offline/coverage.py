"""``presetdb coverage``: how a database would serve a model's shapes, before it serves them.

`presetdb queue` ranks, after the fact, what production calls were served from far away
(the ledgers). This asks the same question up front: for every shape key a model's
layers produce (`presetdb shapes`) or a shapes file lists, the picker that serving uses,
over the same layers and platform chain, says what it would serve, and each key is sorted:

    exact     a stored key of the platform itself
    near      a nearest/ceil/floor key of the platform, within every field's far limit
    fallback  a key of another platform in the chain, within the limits
    default   the kernel's default entry ({})
    far       a stored key beyond a field's limit (PRESETDB_ON_FAR decides what runs)
    miss      nothing (PRESETDB_ON_MISS decides)

Nothing is compiled or timed: "near" means a config tuned for a neighbouring key, which
the measurements in docs/coverage.md find usually, not always, as fast. The keys that are
not exact come out ranked as a presetdb-queue/1 document (far and missed keys first, then
by log2 distance), so ``presetdb refine KERNEL --from-queue FILE`` refines exactly the keys
a deployment of the model would be served from elsewhere.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from presetdb.errors import PresetDBError
from presetdb.keys import KeySpec, canonical_key
from presetdb.offline.queue import MISS_DISTANCE, QUEUE_FORMAT, QueueItem, rank

STATUSES = ("exact", "near", "fallback", "default", "far", "miss")
COVERED = ("exact", "near")  # served by a key of the platform itself, within the limits


class CoverageError(PresetDBError):
    """A shape key that does not fit the kernel's key spec."""


@dataclass(frozen=True)
class KeyCoverage:
    """What one requested key would be served."""

    kernel: str
    key: str  # canonical requested key
    status: str  # one of STATUSES
    served: str = ""  # "platform:key (match)", "" for a miss
    distance: float = 0.0  # summed log2 distance to the served key (MISS_DISTANCE for a miss)
    far_fields: dict[str, list[float]] = field(default_factory=dict)  # field -> [distance, limit]

    def as_json(self) -> dict[str, Any]:
        return {
            "kernel": self.kernel, "key": self.key, "status": self.status, "served": self.served,
            "distance": round(self.distance, 4), "far_fields": self.far_fields,
        }


def status_of(choice: Any) -> str:
    """The STATUSES entry for a picker `Choice` (None: a miss)."""
    if choice is None:
        return "miss"
    if choice.far:
        return "far"
    if choice.match == "default":
        return "default"
    if choice.fallback:
        return "fallback"
    return "exact" if choice.match == "exact" else "near"


def check_keys(spec: KeySpec, kernel: str, keys: Iterable[Mapping[str, Any]], where: str) -> list[dict[str, Any]]:
    """`keys` as dicts, each checked against `spec` (its fields, exactly); `where` names
    their source in the error."""
    out = []
    for index, key in enumerate(keys):
        if not isinstance(key, Mapping):
            raise CoverageError(f"{where}: {kernel} key {index} is {type(key).__name__}, not a JSON object")
        problems = spec.check_key(key) if key else ["{} is the default entry, not a shape"]
        if problems:
            raise CoverageError(f"{where}: {kernel} key {index} {canonical_key(dict(key))}: {'; '.join(problems)}")
        out.append(dict(key))
    return out


def cover(picker: Any, kernel: str, spec: KeySpec, keys: Sequence[Mapping[str, Any]]) -> list[KeyCoverage]:
    """What `picker` serves each of `keys` (checked with `check_keys`) of `kernel`."""
    rows = []
    for key in keys:
        features = tuple(key[n] for n in spec.names)
        choice = picker.resolve(kernel, spec, features)
        status = status_of(choice)
        text = canonical_key(spec.key_of(features))
        if choice is None:
            rows.append(KeyCoverage(kernel, text, status, distance=MISS_DISTANCE))
            continue
        rows.append(KeyCoverage(
            kernel, text, status,
            served=f"{choice.platform}:{choice.preset.shape_key} ({choice.match})",
            distance=float(sum(choice.distances.values())),
            far_fields={name: [round(d, 4), limit] for name, (d, limit) in choice.far_fields.items()},
        ))
    return rows


def summary(rows: Iterable[KeyCoverage]) -> dict[str, dict[str, int]]:
    """{kernel: {status: keys}} with every status present (0 where none)."""
    out: dict[str, dict[str, int]] = {}
    for row in rows:
        counts = out.setdefault(row.kernel, dict.fromkeys(STATUSES, 0))
        counts[row.status] += 1
    return out


def queue_items(rows: Iterable[KeyCoverage], platform: str, source: str) -> list[QueueItem]:
    """The keys that are not exact, as tuning-queue items ranked like `presetdb queue`'s:
    far and missed first, then by distance (every key counts once: nothing was called)."""
    items = []
    for row in rows:
        if row.status == "exact":
            continue
        items.append(QueueItem(
            kernel=row.kernel, platform=platform, key=row.key, count=1, distance=row.distance,
            far=row.status in ("far", "miss"), misses=int(row.status == "miss"),
            served=[row.served] if row.served else [], far_fields=dict(row.far_fields), sources=[source],
        ))
    return rank(items)


def coverage_document(
    rows: Sequence[KeyCoverage], *, platform: str, db: str, source: str, settings: Mapping[str, str]
) -> dict[str, Any]:
    """A presetdb-queue/1 document (what ``--from-queue`` reads: the ranked gaps) that also
    carries every key's status and the per-kernel summary."""
    return {
        "format": QUEUE_FORMAT,
        "ledgers": [],
        "coverage": {
            "platform": platform, "db": db, "source": source, "policies": dict(settings),
            "summary": summary(rows), "keys": [r.as_json() for r in rows],
        },
        "items": [i.as_json() for i in queue_items(rows, platform, source)],
    }
