"""presetdb as Helion's remote autotune cache, for any plain ``@helion.kernel``.

How Helion normally works: after an autotune, Helion 1.5 writes the best config to
``<cache dir>/<cache key>.best_config`` (``LocalAutotuneCache``) and reads it back on the
next run with the same key (kernel source, argument specialization, device, config
spec). With ``HELION_AUTOTUNE_CACHE=RemoteAutotuneCache`` and
``HELION_REMOTE_CACHE_BACKEND=package.Class`` it also asks a backend first (``get``),
ships each new entry to it (``put``), and lists recent entries to warm-start a search
(``list``); it builds the backend with ``Class()`` and catches and logs whatever the
backend raises, then goes on with its local cache.

How presetdb plugs in::

    export HELION_AUTOTUNE_CACHE=RemoteAutotuneCache
    export HELION_REMOTE_CACHE_BACKEND=presetdb.helion.remote_cache.Backend
    export PRESETDB_REGISTRY=postgresql+psycopg://tuner@dbhost/presets   # or:
    export PRESETDB_REMOTE_CACHE_DB=/shared/presets.db                   # a file or a URL

Entries land in the table ``helion_cache_entries`` (one row per Helion cache key, with
the key's fields, the config, who wrote it with which versions, and when); the parsing
is `presetdb.store.helion_cache`, shared with ``presetdb import --format helion-cache``.
`PRESETDB_REMOTE_CACHE_DB` wins over `PRESETDB_REGISTRY`; with neither set every call
fails (and Helion logs it): there is no silent default, since Helion's own local cache
already is the per-user copy.

A broken registry never breaks the kernel: the constructor does no I/O (Helion calls it
where a failure would not be caught), every failure is an exception Helion catches and
logs before falling back to its local cache, an entry is served only after it parsed and
its config loaded into this Helion's ``Config``, and a registry that could not be reached
is not asked again for `RETRY_AFTER_S` seconds (each try may wait for the connect timeout).
The database must exist at this package's schema (`presetdb db upgrade --db ...`): a
cache backend never runs migrations.
"""

from __future__ import annotations

import functools
import importlib.metadata
import inspect
import json
import os
import socket
import threading
import time
from collections.abc import Iterable
from typing import Any

from helion.autotuner.remote_cache import RemoteCacheBackend
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from presetdb import __version__
from presetdb.errors import ImportValidationError, PresetDBError, StoreError
from presetdb.store import helion_cache, migrate
from presetdb.store.engine import (
    REGISTRY_ENV,
    Mode,
    Store,
    Target,
    describe,
    parse_target,
    translate_operational,
)

TARGET_ENV = "PRESETDB_REMOTE_CACHE_DB"
SOURCE = "remote-cache"
# Entries `list()` returns when Helion gives no limit, and the most it ever returns.
DEFAULT_LIST = 100
MAX_LIST = 1000
# After a failure to reach a database, calls fail at once for this long.
RETRY_AFTER_S = 30.0


class RemoteCacheError(StoreError):
    """The remote cache cannot be used (not configured, unreachable, or a bad entry)."""


def cache_target() -> Target:
    """The database the backend uses: $PRESETDB_REMOTE_CACHE_DB, else $PRESETDB_REGISTRY."""
    for name in (TARGET_ENV, REGISTRY_ENV):
        value = os.environ.get(name, "").strip()
        if value:
            return parse_target(value)
    raise RemoteCacheError(
        f"presetdb's Helion remote cache has no database: set {TARGET_ENV} to a presetdb "
        f"SQLite file or a registry URL, or {REGISTRY_ENV} to a registry URL "
        "(postgresql+psycopg://USER@HOST/DB); create it with `presetdb db upgrade --db ...`"
    )


# A database that cannot be reached (server down, connection lost): worth a pause.
UNREACHABLE = (OperationalError, InterfaceError)


class _Stores:
    """Opened stores for the process (engines pool connections): per database one
    read-only (``get``/``list``: no write lock, sees others' commits) and one read-write
    (``put``); and the databases that could not be reached lately."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open: dict[tuple[str, Mode], Store] = {}
        self._down: dict[str, tuple[float, str]] = {}  # label -> (retry after, why)

    def get(self, target: Target, mode: Mode) -> Store:
        label = describe(target)
        with self._lock:
            down = self._down.get(label)
            if down is not None and time.monotonic() < down[0]:
                raise RemoteCacheError(
                    f"{label}: not retried for {down[0] - time.monotonic():.0f} s after: {down[1]}"
                )
            store = self._open.get((label, mode))
            if store is None:
                try:
                    store = migrate.open_store(target, mode)
                except PresetDBError as exc:
                    self._down[label] = (time.monotonic() + RETRY_AFTER_S, str(exc))
                    raise
                self._open[(label, mode)] = store
            self._down.pop(label, None)
            return store

    def failed(self, target: Target, exc: DBAPIError) -> RemoteCacheError:
        """Remember a failure to reach the database; the error to raise."""
        label = describe(target)
        error = translate_operational(target, exc)
        with self._lock:
            self._down[label] = (time.monotonic() + RETRY_AFTER_S, str(error))
        return RemoteCacheError(str(error))

    def reset(self) -> None:
        """Forget every opened store and failure (tests; a fork)."""
        with self._lock:
            stores, self._open, self._down = list(self._open.values()), {}, {}
        for store in stores:
            store.dispose()


_stores = _Stores()
reset = _stores.reset


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def writer_provenance() -> dict[str, Any]:
    """Who writes an entry, with which versions (columns of helion_cache_entries)."""
    import torch

    return {
        "host": socket.gethostname(),
        "torch_version": torch.__version__,
        "triton_version": _version("triton"),
        "helion_version": _version("helion"),
        "presetdb_version": __version__,
    }


@functools.cache
def config_fields() -> frozenset[str]:
    """The config fields this Helion knows: ``Config``'s keyword parameters and the keys
    its ConfigSpec accepts (``VALID_KEYS``: backend-specific ones such as num_ctas or
    waves_per_eu are not parameters)."""
    from helion import Config
    from helion.autotuner import config_spec

    parameters = inspect.signature(Config.__init__).parameters.values()
    named = {p.name for p in parameters if p.kind is inspect.Parameter.KEYWORD_ONLY}
    return frozenset(named | set(getattr(config_spec, "VALID_KEYS", ())))


def servable(cache_key: str, text: str) -> helion_cache.CacheEntry:
    """The entry, if this Helion can use it: parsed like an import, its config loadable
    by Helion's ``Config.from_json`` and naming only fields this Helion's ``Config``
    knows. What Helion gets from a backend goes into the kernel unchecked: a field it
    does not know would raise InvalidConfig from the kernel call, so it is refused here
    (Helion then searches, and its result replaces the row)."""
    from helion import Config

    where = f"Helion cache entry {cache_key[:12]}"
    try:
        entry = helion_cache.parse_entry(cache_key, text, where=where)
        Config.from_json(json.loads(text)["config"])
    except (ImportValidationError, TypeError, ValueError) as exc:
        raise RemoteCacheError(f"{where}: not served: {exc}") from None
    unknown = sorted(set(entry.config) - config_fields())
    if unknown:
        raise RemoteCacheError(
            f"{where}: its config has fields helion {_version('helion')} does not know "
            f"({', '.join(unknown[:8])}): written by another Helion version, or a kernel's "
            "own tunables (not served from the remote cache); not served"
        )
    return entry


class Backend(RemoteCacheBackend):
    """Helion's ``RemoteCacheBackend`` over a presetdb database (see the module docstring)."""

    def __init__(self) -> None:
        # Helion constructs the backend outside its error handling: no I/O here.
        super().__init__()

    def _store(self, mode: Mode) -> tuple[Target, Store]:
        target = cache_target()
        return target, _stores.get(target, mode)

    def get(self, key: str) -> str | None:
        target, store = self._store("ro")
        try:
            with store.read() as session:
                text = helion_cache.entry_text(session, key)
        except UNREACHABLE as exc:
            raise _stores.failed(target, exc) from exc
        if text is None:
            return None
        servable(key, text)
        return text

    def put(self, key: str, data: str) -> None:
        try:
            entry = helion_cache.parse_entry(key, data, where=f"Helion cache entry {key[:12]}")
        except ImportValidationError as exc:
            raise RemoteCacheError(str(exc)) from None
        target, store = self._store("rw")
        try:
            with store.transaction() as session:
                helion_cache.store_entry(session, entry, SOURCE, writer_provenance())
        except UNREACHABLE as exc:
            raise _stores.failed(target, exc) from exc

    def list(self, max_results: int | None = None) -> Iterable[str]:
        limit = DEFAULT_LIST if max_results is None else max(0, min(int(max_results), MAX_LIST))
        target, store = self._store("ro")
        try:
            with store.read() as session:
                rows = helion_cache.recent_entries(session, limit)
        except UNREACHABLE as exc:
            raise _stores.failed(target, exc) from exc
        found = []
        for cache_key, text in rows:
            try:
                servable(cache_key, text)
            except RemoteCacheError:
                continue  # an entry this Helion cannot use seeds nothing
            found.append(text)
        return found
