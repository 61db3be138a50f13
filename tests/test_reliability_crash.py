"""Crash safety: an import killed with SIGKILL at a random point leaves a database that
passes `presetdb db check` (integrity, foreign keys, schema) and holds all of the import
or none of it.

The kills go to real imports: children forked from a warm importer process (the same
`presetdb.offline.importers.import_files` the command runs, with the real kernel registry) so
that each round does not pay torch/Helion's start-up, plus two rounds that kill the
`presetdb import` command itself. Each round waits until the import holds the write
lock (its transaction has begun), then kills it after a random delay drawn over the
measured length of an unbroken import's transaction (a little past it, so that some
kills land at or after the commit).
"""

from __future__ import annotations

import os
import random
import select
import signal
import subprocess
import time
from pathlib import Path

import pytest
from import_fixtures import RESULTS, registry
from reliability_helpers import (
    active_count,
    call,
    child_env,
    killed_by_sigkill,
    presetdb_cli,
    report,
    write_results,
    writer_holds_lock,
)

from presetdb.offline.importers import import_files
from presetdb.store import migrate

ROWS = 1_500  # presets per killed import: ~2-4 s of transaction on one core
FORKED_KILLS = 20
CLI_KILLS = 2


class Zygote:
    """Talks to `reliability_helpers.crash_zygote` over pipes."""

    def __init__(self, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            call("crash_zygote"),
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        assert self.readline(timeout=180) == "ready"

    def readline(self, timeout: float) -> str:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            raise TimeoutError(f"the importer said nothing for {timeout} s")
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the importer exited ({self.proc.poll()})")
        return line.strip()

    def start(self, db: Path, file: Path) -> int:
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"import\t{db}\t{file}\n")
        self.proc.stdin.flush()
        word, pid = self.readline(timeout=60).split()
        assert word == "pid"
        return int(pid)

    def status(self, timeout: float = 300) -> int:
        word, status = self.readline(timeout).split()
        assert word == "status"
        return int(status)

    def close(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.write("quit\n")
            self.proc.stdin.flush()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)


def _wait_for_lock(db: Path, alive: callable, timeout: float = 120) -> float:  # type: ignore[valid-type]
    """Seconds until the import holds the db's write lock (its transaction began)."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if writer_holds_lock(db):
            return time.monotonic() - started
        if not alive():
            raise AssertionError("the import ended before it took the write lock")
        time.sleep(0.01)
    raise AssertionError("the import never took the write lock")


def _check(db: Path, expected: set[int]) -> int:
    result = migrate.check(db)
    assert result.ok, (
        f"after a kill: integrity {result.integrity[:3]}, foreign keys "
        f"{result.foreign_key_problems[:3]}, schema {result.schema_problem}"
    )
    count = active_count(db)
    assert count in expected, f"{count} active presets: neither before nor after ({sorted(expected)})"
    return count


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (killed, not yet reaped by the zygote) counts as gone
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            return fh.read().split(") ")[-1][:1] != "Z"
    except OSError:
        return False


@pytest.mark.slow
def test_kill_9_during_import_leaves_a_checked_all_or_nothing_db(tmp_path: Path) -> None:
    seed = int(os.environ.get("PRESETDB_RELIABILITY_SEED", random.randrange(1 << 30)))
    rng = random.Random(seed)
    db = tmp_path / "crash.db"
    migrate.upgrade(db, seed_data=False)
    import_files(db, [RESULTS], resolver=registry())
    env = child_env()
    files = [write_results(tmp_path / f"round-{r}.json", (r + 1) * ROWS, ROWS) for r in range(FORKED_KILLS + CLI_KILLS + 2)]

    zygote = Zygote(env)
    outcomes: list[tuple[str, float, str]] = []  # (how, delay, "rolled back" | "committed")
    try:
        # One unbroken import: how long its transaction lasts.
        before = active_count(db)
        pid = zygote.start(db, files[0])
        took_lock = time.monotonic()
        _wait_for_lock(db, lambda: _alive(pid))
        assert zygote.status() == 0
        transaction_s = time.monotonic() - took_lock
        _check(db, {before + ROWS})

        for r in range(1, FORKED_KILLS + 1):
            before = active_count(db)
            pid = zygote.start(db, files[r])
            _wait_for_lock(db, lambda pid=pid: _alive(pid))
            # The import validates before it takes the lock, so the lock is held only for
            # the writes: kill somewhere in them (kills take a moment to land).
            delay = rng.uniform(0.0, 0.6 * transaction_s)
            time.sleep(delay)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            status = zygote.status()
            count = _check(db, {before, before + ROWS})
            assert killed_by_sigkill(status) or count == before + ROWS, (r, status, count)
            outcomes.append(("fork", delay, "rolled back" if count == before else "committed"))
    finally:
        zygote.close()

    # The command itself, killed the same way.
    for r in range(FORKED_KILLS + 1, FORKED_KILLS + CLI_KILLS + 1):
        before = active_count(db)
        proc = subprocess.Popen(presetdb_cli("import", files[r], "--db", db), env=env, stdout=subprocess.DEVNULL)
        try:
            _wait_for_lock(db, lambda proc=proc: proc.poll() is None)
            delay = rng.uniform(0.0, 0.6 * transaction_s)
            time.sleep(delay)
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=60)
        count = _check(db, {before, before + ROWS})
        outcomes.append(("cli", delay, "rolled back" if count == before else "committed"))

    # After all that, the db still takes an import.
    before = active_count(db)
    import_files(db, [files[-1]], resolver=registry())
    assert _check(db, {before + ROWS}) == before + ROWS
    rolled_back = sum(1 for _how, _d, what in outcomes if what == "rolled back")
    report(
        "crash.kill_9_import",
        {
            "seed": seed,
            "kills": len(outcomes),
            "rolled_back": rolled_back,
            "committed_before_kill": len(outcomes) - rolled_back,
            "rows_per_import": ROWS,
            "transaction_seconds": round(transaction_s, 2),
            "final_active": before + ROWS,
        },
    )
    # Most kills must land inside the transaction, or the test proves little.
    assert rolled_back >= 0.6 * len(outcomes), (seed, outcomes)
