"""The ledger: the one writer of a serving process.

Kernel calls never write SQLite. What a process learns while serving (misses counted
per key, stored configs that failed and are quarantined, configs autotuned on a miss) is
handed to the ledger: misses are counted in memory, everything else goes into a bounded
queue. One daemon thread drains the queue into the user overlay, flushes the miss counts
every `FLUSH_SECONDS`, and is flushed at exit. It is also the only code of a serving
process that creates the overlay (schema-only, when missing) or brings an old one to the
package's schema: the file is ours, and this thread is not a kernel call's.

A write that fails is warned about once and dropped: bookkeeping never fails a call.
"""

from __future__ import annotations

import atexit
import queue
import threading
import warnings
import weakref
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from presetdb._util import utc_now
from presetdb.errors import SchemaTooOldError
from presetdb.keys import canonical_key
from presetdb.store import migrate
from presetdb.store.engine import Store
from presetdb.store.repository import MissRecord, Repository

FLUSH_SECONDS = 2.0
QUEUE_LIMIT = 1024  # pending writes; beyond it new ones are dropped with a warning

Job = Callable[[Repository], Any]


class LedgerWarning(UserWarning):
    """The ledger could not write to the user overlay; serving carried on."""


@dataclass
class _Miss:
    reason: str
    count: int = 0
    first: str = field(default_factory=utc_now)
    last: str = field(default_factory=utc_now)


_STOP: Any = object()


class Ledger:
    """Writes into the overlay at `path` on its own thread; `on_written` runs (on that
    thread) after each write that changed presets, so readers reload."""

    def __init__(self, path: Path | None, on_written: Callable[[], None] | None = None) -> None:
        self.path = path
        self._on_written = on_written
        self._lock = threading.Lock()
        self._misses: dict[tuple[str, str, str], _Miss] = {}
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=QUEUE_LIMIT)
        self._thread: threading.Thread | None = None
        self._store: Store | None = None
        self._warned: set[str] = set()
        _open_ledgers.add(self)

    # ------------------------------------------------------------ the caller's side
    def count_miss(self, kernel: str, platform: str, key: dict[str, Any], reason: str = "no-match") -> None:
        """Count a miss in memory (a dict update); the thread writes the counts later."""
        ident = (kernel, platform, canonical_key(key))
        with self._lock:
            miss = self._misses.get(ident)
            if miss is None:
                miss = self._misses[ident] = _Miss(reason)
            miss.count += 1
            miss.last = utc_now()
            miss.reason = reason
        self._ensure_thread()

    def pending_misses(self) -> list[MissRecord]:
        with self._lock:
            return [MissRecord(k, p, f, m.reason, m.count, m.first, m.last) for (k, p, f), m in self._misses.items()]

    def submit(self, job: Job, *, changes_presets: bool = True) -> Future[Any]:
        """Queue `job(repository)` to run in one overlay transaction. The future holds its
        result (or exception); a full queue drops the job (the future says so)."""
        future: Future[Any] = Future()
        if self.path is None:
            future.set_exception(RuntimeError("no writable user overlay (PRESETDB_DISABLE_OVERLAY)"))
            return future
        try:
            self._queue.put_nowait((job, changes_presets, future))
        except queue.Full:
            future.set_exception(RuntimeError(f"the ledger queue is full ({QUEUE_LIMIT} pending writes)"))
            self._warn_once("full", f"presetdb: the ledger queue is full; a write to {self.path} was dropped")
            return future
        self._ensure_thread()
        return future

    def flush(self, timeout: float | None = 30.0) -> int:
        """Write the counted misses and wait for every queued write; returns the number
        of miss rows written."""
        if self.path is None:
            return 0
        done = self.submit(self._write_misses, changes_presets=False)
        try:
            return int(done.result(timeout=timeout) or 0)
        except Exception:  # noqa: BLE001  (already warned on the writer thread)
            return 0

    def close(self) -> None:
        thread = self._thread
        if thread is not None and thread.is_alive():
            self.flush()
            self._queue.put(_STOP)
            thread.join(timeout=10)
        self._thread = None
        if self._store is not None:
            self._store.dispose()
            self._store = None
        _open_ledgers.discard(self)

    # ------------------------------------------------------------ the writer thread
    def _ensure_thread(self) -> None:
        if self._thread is not None or self.path is None:
            return
        with self._lock:
            if self._thread is None:
                thread = threading.Thread(target=self._run, name="presetdb-ledger", daemon=True)
                thread.start()
                self._thread = thread

    def _run(self) -> None:
        while True:
            try:
                item = self._queue.get(timeout=FLUSH_SECONDS)
            except queue.Empty:
                if self._misses:
                    self._guarded(self._write_misses, changes=False, future=None)
                continue
            if item is _STOP:
                return
            job, changes, future = item
            self._guarded(job, changes=changes, future=future)

    def _guarded(self, job: Job, *, changes: bool, future: Future[Any] | None) -> None:
        try:
            store = self._writer()
            with store.transaction() as session:
                result = job(Repository(session))
        except Exception as exc:  # noqa: BLE001  (bookkeeping: warn, never fail a call)
            self._warn_once(type(exc).__name__, f"presetdb: could not write to the user overlay {self.path}: {exc}")
            if future is not None:
                future.set_exception(exc)
            return
        if changes and self._on_written is not None:
            try:
                self._on_written()
            except Exception:  # noqa: BLE001, S110  (a reader's refresh; it reloads later anyway)
                pass
        if future is not None:
            future.set_result(result)

    def _writer(self) -> Store:
        if self._store is None:
            assert self.path is not None
            path = self.path
            fresh = not path.exists() or path.stat().st_size == 0
            if not fresh:
                try:
                    migrate.open_store(path, "ro").dispose()
                except SchemaTooOldError:
                    fresh = True
            if fresh:  # the overlay is ours: the package's schema, no seed data
                path.parent.mkdir(parents=True, exist_ok=True)
                migrate.upgrade(path, seed_data=False)
            self._store = migrate.open_store(path, "rw")
        return self._store

    def _write_misses(self, repo: Repository) -> int:
        with self._lock:
            records = [MissRecord(k, p, f, m.reason, m.count, m.first, m.last) for (k, p, f), m in self._misses.items()]
            self._misses = {}
        if records:
            repo.record_misses(records)
        return len(records)

    def _warn_once(self, kind: str, message: str) -> None:
        if kind in self._warned:
            return
        self._warned.add(kind)
        warnings.warn(message, LedgerWarning, stacklevel=2)


_open_ledgers: weakref.WeakSet[Ledger] = weakref.WeakSet()


@atexit.register
def _flush_at_exit() -> None:
    for ledger in list(_open_ledgers):
        try:
            ledger.close()
        except Exception:  # noqa: BLE001, S110  (interpreter exit: nothing left to tell)
            pass
