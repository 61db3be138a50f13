"""The ledger: the one writer of a serving process.

Kernel calls never write SQLite. What a process learns while serving (misses counted
per key, near misses -- calls served by anything but an exact key of their own platform
-- counted per requested and served key, stored configs that failed and are quarantined,
configs autotuned or re-ranked on a miss) is handed to the ledger: misses and near misses
are counted in memory, everything else goes into a bounded queue. One daemon thread
drains the queue into the user overlay, flushes the counts every `FLUSH_SECONDS`, and is
flushed at exit.

A near miss is counted through its `Tally`, made once per (requested key, served key)
when the picker builds the `Choice` and kept by the choice (and by the call memo): a
call adds one to an int, nothing more. `last_seen_at` is the time of the flush that
wrote a count (so within `FLUSH_SECONDS` of the call); `first_seen_at` is when the
tally was made, at the key's first resolve. It is also the only code of a serving
process that creates the overlay (schema-only, when missing) or brings an old one to the
package's schema: the file is ours, and this thread is not a kernel call's.

A write that fails is warned about once and dropped: bookkeeping never fails a call.
"""

from __future__ import annotations

import atexit
import json
import queue
import threading
import weakref
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from presetdb._util import utc_now, warn_at_caller
from presetdb.errors import SchemaTooOldError
from presetdb.keys import canonical_key
from presetdb.store import migrate
from presetdb.store.engine import Store
from presetdb.store.records import MissRecord, NearMissRecord
from presetdb.store.repository import Repository

FLUSH_SECONDS = 2.0
QUEUE_LIMIT = 1024  # pending writes; beyond it new ones are dropped with a warning
TALLY_LIMIT = 65_536  # near misses tracked per process; beyond it new ones go uncounted

Job = Callable[[Repository], Any]


class LedgerWarning(UserWarning):
    """The ledger could not write to the user overlay; serving carried on."""


@dataclass
class _Miss:
    reason: str
    count: int = 0
    first: str = field(default_factory=utc_now)
    last: str = field(default_factory=utc_now)


@dataclass(frozen=True)
class NearMiss:
    """What one near miss is: the call's key and platform, what served it and how far."""

    kernel: str
    platform: str  # the call's
    requested_key: str
    served_platform: str
    served_key: str
    match: str
    layer: str
    distances: dict[str, float]
    far_fields: dict[str, tuple[float, float]]  # field -> (distance, limit)

    @property
    def ident(self) -> tuple[str, str, str, str, str]:
        return (self.kernel, self.platform, self.requested_key, self.served_platform, self.served_key)


class Tally:
    """The call count of one near miss. `hit()` is the whole per-call cost (an int
    increment under the GIL; two threads racing may lose a count, never corrupt one)."""

    __slots__ = ("count", "first", "flushed", "near")

    def __init__(self, near: NearMiss) -> None:
        self.near = near
        self.count = 0
        self.flushed = 0  # the count already written
        self.first = utc_now()

    def hit(self) -> None:
        self.count += 1

    def record(self, count: int, last: str) -> NearMissRecord:
        n = self.near
        return NearMissRecord(
            n.kernel, n.platform, n.requested_key, n.served_platform, n.served_key, n.match, n.layer,
            json.dumps(n.distances, sort_keys=True, separators=(",", ":")),
            None if n.match == "default" else float(sum(n.distances.values())),
            bool(n.far_fields),
            json.dumps({k: list(v) for k, v in n.far_fields.items()}, sort_keys=True, separators=(",", ":")),
            count, self.first, last,
        )


_STOP: Any = object()
_COUNTS: Any = object()  # a queue item: write the counted misses and near misses now


class Ledger:
    """Writes into the overlay at `path` on its own thread; `on_written` runs (on that
    thread) after each write that changed presets, so readers reload."""

    def __init__(self, path: Path | None, on_written: Callable[[], None] | None = None) -> None:
        self.path = path
        self._on_written = on_written
        self._lock = threading.Lock()
        self._misses: dict[tuple[str, str, str], _Miss] = {}
        self._tallies: dict[tuple[str, str, str, str, str], Tally] = {}
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

    def tally(self, near: NearMiss) -> Tally:
        """The tally of this near miss (the same one for the same requested and served
        keys, so counts survive the picker's reloads). Not a per-call function: the
        picker calls it when it builds a choice."""
        ident = near.ident
        found = self._tallies.get(ident)
        if found is not None:
            found.near = near  # the latest facts (limits may have changed)
            return found
        with self._lock:
            found = self._tallies.get(ident)
            if found is None:
                found = Tally(near)
                if len(self._tallies) < TALLY_LIMIT:
                    self._tallies = {**self._tallies, ident: found}  # replaced, never mutated: readers need no lock
                else:
                    self._warn_once("tallies", f"presetdb: more than {TALLY_LIMIT} near-miss keys; new ones are not counted")
        self._ensure_thread()
        return found

    def pending_near_misses(self) -> list[NearMissRecord]:
        """Counts not written yet (one record per near miss called since the last flush)."""
        now = utc_now()
        return [t.record(t.count - t.flushed, now) for t in self._tallies.values() if t.count > t.flushed]

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
        """Write the counted misses and near misses and wait for every queued write;
        returns the number of (miss and near-miss) rows written."""
        if self.path is None:
            return 0
        done = self.submit(_COUNTS, changes_presets=False)
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
                self._write_counts(None)
                continue
            if item is _STOP:
                return
            job, changes, future = item
            if job is _COUNTS:
                self._write_counts(future)
            else:
                self._guarded(job, changes=changes, future=future)

    def _guarded(self, job: Job, *, changes: bool, future: Future[Any] | None) -> bool:
        """Run `job` in one overlay transaction; False when it failed (warned once)."""
        try:
            store = self._writer()
            with store.transaction() as session:
                result = job(Repository(session))
        except Exception as exc:  # noqa: BLE001  (bookkeeping: warn, never fail a call)
            self._warn_once(type(exc).__name__, f"presetdb: could not write to the user overlay {self.path}: {exc}")
            if future is not None:
                future.set_exception(exc)
            return False
        if changes and self._on_written is not None:
            try:
                self._on_written()
            except Exception:  # noqa: BLE001, S110  (a reader's refresh; it reloads later anyway)
                pass
        if future is not None:
            future.set_result(result)
        return True

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

    def _write_counts(self, future: Future[Any] | None) -> None:
        """Write what was counted since the last time; with nothing counted the overlay
        is not even opened (a process that only read creates no file)."""
        with self._lock:
            misses = [MissRecord(k, p, f, m.reason, m.count, m.first, m.last) for (k, p, f), m in self._misses.items()]
            self._misses = {}
        now = utc_now()
        taken = [(t, t.count) for t in self._tallies.values() if t.count > t.flushed]
        near = [t.record(count - t.flushed, now) for t, count in taken]
        if not misses and not near:
            if future is not None:
                future.set_result(0)
            return

        def write(repo: Repository) -> int:
            if misses:
                repo.record_misses(misses)
            if near:
                repo.record_near_misses(near)
            return len(misses) + len(near)

        if self._guarded(write, changes=False, future=future):
            for tally, count in taken:  # written: not counted again
                tally.flushed = count

    def _warn_once(self, kind: str, message: str) -> None:
        if kind in self._warned:
            return
        self._warned.add(kind)
        warn_at_caller(message, LedgerWarning)  # the kernel call that filled it, if on its thread


_open_ledgers: weakref.WeakSet[Ledger] = weakref.WeakSet()


@atexit.register
def _flush_at_exit() -> None:
    for ledger in list(_open_ledgers):
        try:
            ledger.close()
        except Exception:  # noqa: BLE001, S110  (interpreter exit: nothing left to tell)
            pass
