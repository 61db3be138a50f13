"""Helion's autotune cache entries in a presetdb database (table `helion_cache_entries`).

Helion 1.5 keeps the best config of each tuned (kernel, specialization, device) in a
``<cache key>.best_config`` file (``helion/autotuner/local_cache.py``); the cache key is
the sha256 of the key's ``repr``, and the file is a JSON object::

    {"config": "<Config.to_json(): a JSON *string*>",
     "key": {"type": "LooseAutotuneCacheKey",
             "fields": {"specialization_key": "...", "kernel_source_hash": "<sha256>",
                        "hardware": "NVIDIA H100", "runtime_name": "12.8",
                        "backend": "triton", "config_spec_hash": "<sha256>", ...}},  # str()s
     "flat_config": "<JSON string>", "backend_cache_key": "..."}

Helion's remote cache (``RemoteAutotuneCache``) ships exactly that text to a backend
under the same key. This module is the one definition of what such an entry is as a
row: `parse_entry` (used by the remote-cache backend's ``put`` and by ``presetdb import
--format helion-cache``) and the reads and writes of the table. Torch-free.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import func, insert, select, update
from sqlalchemy.orm import Session

from presetdb._util import canonical_json
from presetdb.errors import ImportValidationError
from presetdb.store.models import HelionCacheEntry, utc_now
from presetdb.store.repository import Repository, check_lengths

CACHE_KEY = re.compile(r"[0-9a-f]{64}")
# Key fields every Helion 1.5 entry has; an entry without them cannot be matched.
REQUIRED_FIELDS = ("hardware", "kernel_source_hash", "specialization_key")
# A cache entry is a few kilobytes; anything far larger is not one.
MAX_ENTRY_CHARS = 16 << 20
Outcome = Literal["added", "replaced", "unchanged"]
# Who wrote an entry, with what (columns of the table besides the key and the entry).
PROVENANCE_COLUMNS = (
    "source_file",
    "host",
    "torch_version",
    "triton_version",
    "helion_version",
    "presetdb_version",
)


@dataclass(frozen=True)
class CacheEntry:
    """One Helion cache entry, checked: the row `helion_cache_entries` holds."""

    cache_key: str
    key_type: str
    fields: dict[str, str]  # every key field as Helion wrote it
    config: dict[str, Any]  # the parsed Config.to_json()
    text: str  # the entry exactly as Helion wrote it

    @property
    def hardware(self) -> str:
        return self.fields["hardware"]

    @property
    def kernel_source_hash(self) -> str:
        return self.fields["kernel_source_hash"]

    def columns(self) -> dict[str, Any]:
        f = self.fields
        return {
            "cache_key": self.cache_key,
            "key_type": self.key_type,
            "hardware": f["hardware"],
            "runtime_name": f.get("runtime_name") or None,
            "backend": f.get("backend") or None,
            "kernel_source_hash": f["kernel_source_hash"],
            "specialization_key": f["specialization_key"],
            "config_spec_hash": f.get("config_spec_hash", ""),
            "key_fields": canonical_json(f),
            "entry_json": self.text,
        }


def is_cache_key(value: str) -> bool:
    """Helion's cache keys (and .best_config file stems) are lowercase sha256 hex."""
    return CACHE_KEY.fullmatch(value) is not None


def read_payload(text: str, where: str) -> dict[str, Any]:
    """The entry's JSON object; ImportValidationError naming `where` when it is not one."""
    if len(text) > MAX_ENTRY_CHARS:
        raise ImportValidationError(f"{where}: {len(text)} characters is too large for a Helion cache entry")
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:  # ValueError: bad JSON, huge ints
        raise ImportValidationError(f"{where}: not a Helion cache entry (not JSON: {exc})") from None
    fields = (
        data.get("key", {}).get("fields")
        if isinstance(data, dict) and isinstance(data.get("key"), dict)
        else None
    )
    if not isinstance(fields, dict) or "config" not in data:
        raise ImportValidationError(
            f"{where}: not a Helion cache entry: expected an object with 'config' and "
            "'key': {'fields': {...}} (written by Helion's LocalAutotuneCache)"
        )
    return dict(data)


def config_of(payload: Mapping[str, Any]) -> tuple[dict[str, Any] | None, list[str]]:
    """The config of an entry (Helion stores ``Config.to_json()``: JSON inside a string)
    and the problems found, as "field: reason" lines."""
    raw = payload["config"]
    try:
        config = json.loads(raw) if isinstance(raw, str) else raw
    except (ValueError, RecursionError) as exc:
        return None, [f"config: not a JSON document ({exc})"]
    if not isinstance(config, Mapping):
        return None, ["config: not a JSON object"]
    return dict(config), []


def parse_entry(cache_key: str, text: str, *, where: str) -> CacheEntry:
    """Check one entry as Helion wrote it under `cache_key`. Raises ImportValidationError
    with one "where: field: reason" line per problem."""
    payload = read_payload(text, where)
    config, problems = config_of(payload)
    if config is not None and not isinstance(payload["config"], str):
        # Helion's reader calls Config.from_json on it: an object would raise there.
        problems.append("config: must be Config.to_json()'s JSON string, got an object")
    if not is_cache_key(cache_key):
        problems.append(
            f"cache key: {cache_key[:80]!r} is not a Helion cache key (64 lowercase hex digits, "
            "the name of Helion's <key>.best_config file)"
        )
    key = payload["key"]
    key_type = key.get("type")
    if not isinstance(key_type, str) or not key_type:
        problems.append("key.type: missing (e.g. 'LooseAutotuneCacheKey')")
    fields = key["fields"]
    for name in REQUIRED_FIELDS:
        if not isinstance(fields.get(name), str) or not fields.get(name):
            problems.append(f"key.fields.{name}: missing or not a string")
    odd = [k for k, v in fields.items() if not isinstance(v, str)]
    if odd:
        problems.append(f"key.fields: values must be strings as Helion writes them ({', '.join(odd[:5])})")
    if problems or config is None or not isinstance(key_type, str):
        raise ImportValidationError(
            f"{where}: not a usable Helion cache entry", [f"{where}: {p}" for p in problems]
        )
    return CacheEntry(cache_key, key_type, {str(k): str(v) for k, v in fields.items()}, config, text)


# ---------------------------------------------------------------- the table


def store_entry(
    session: Session, entry: CacheEntry, source: str, provenance: Mapping[str, Any] | None = None
) -> Outcome:
    """Insert or replace the row of `entry.cache_key`. `source`: one of
    CACHE_ENTRY_SOURCES; `provenance`: source_file, host and the versions (columns of the
    table; others are ignored; a replaced row keeps none of the old ones). The caller owns
    the transaction."""
    given = provenance or {}
    values = {**entry.columns(), **{k: given.get(k) for k in PROVENANCE_COLUMNS}, "source": source}
    check_lengths(HelionCacheEntry.__table__, values, f"Helion cache entry {entry.cache_key[:12]}")
    values["config_id"] = Repository(session).config_id(entry.config)
    current = session.execute(
        select(HelionCacheEntry.id, HelionCacheEntry.entry_json).where(HelionCacheEntry.cache_key == entry.cache_key)
    ).first()
    now = utc_now()
    if current is None:
        session.execute(insert(HelionCacheEntry).values(**values, created_at=now, updated_at=now))
        return "added"
    if current.entry_json == entry.text:
        return "unchanged"
    session.execute(update(HelionCacheEntry).where(HelionCacheEntry.id == current.id).values(**values, updated_at=now))
    return "replaced"


def entry_text(session: Session, cache_key: str) -> str | None:
    """The stored entry of `cache_key`, as Helion wrote it, or None."""
    return session.scalar(select(HelionCacheEntry.entry_json).where(HelionCacheEntry.cache_key == cache_key))


def recent_entries(session: Session, limit: int) -> list[tuple[str, str]]:
    """(cache key, entry text) of the `limit` most recently written entries, newest first."""
    query = (
        select(HelionCacheEntry.cache_key, HelionCacheEntry.entry_json)
        .order_by(HelionCacheEntry.updated_at.desc(), HelionCacheEntry.id.desc())
        .limit(limit)
    )
    return [(row.cache_key, row.entry_json) for row in session.execute(query)]


def count_entries(session: Session) -> int:
    return int(session.scalar(select(func.count()).select_from(HelionCacheEntry)) or 0)
