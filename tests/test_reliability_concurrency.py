"""Concurrency: readers never see half an import, and concurrent first uses of the
embedded default db build nothing.

1. Eight reader processes resolve presets continuously from a writable WAL db -- four
   through `presetdb.runtime.picker` with the db as their user overlay (every read drops the
   picker's indexes and reloads them), four through `Repository` on a ``mode=ro`` store --
   while `presetdb import` (a real child process, the real importer) adds 10,000 presets
   in one transaction. Every read must succeed and see either none of the import or all
   of it: the active-preset counts seen are only ``before`` and ``before + 10000``, and a
   key of the import is served exactly when the count says the import is there.
2. Eight processes call `presetdb.store.default_db.default_db_path` at once on a fresh, shared
   PRESETDB_CACHE_DIR: all get the same valid packaged file, without errors; none builds it.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from import_fixtures import RESULTS, registry
from reliability_helpers import (
    call,
    child_env,
    key_for,
    presetdb_cli,
    report,
    wait_all,
    write_results,
)

from presetdb.offline.importers import import_files
from presetdb.store import migrate

READERS = {"picker": 4, "repository": 4}
IMPORTED = 10_000


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)


@pytest.mark.slow
def test_readers_see_all_or_nothing_of_a_10000_preset_import(tmp_path: Path) -> None:
    db = tmp_path / "overlay.db"
    migrate.upgrade(db, seed_data=False)
    import_files(db, [RESULTS], resolver=registry())
    before = migrate.open_store(db, "ro")
    try:
        with before.read() as session:
            from presetdb.store.repository import Repository

            n_before = Repository(session).count_presets()
    finally:
        before.dispose()
    n_after = n_before + IMPORTED
    big = write_results(tmp_path / "import-10000.json", 0, IMPORTED)
    probe = json.dumps(key_for(IMPORTED // 2))
    stop = tmp_path / "stop"
    env = child_env()

    readers: list[subprocess.Popen[bytes]] = []
    outs: list[Path] = []
    ready: list[Path] = []
    try:
        for kind, count in READERS.items():
            for i in range(count):
                out, flag = tmp_path / f"{kind}-{i}.json", tmp_path / f"{kind}-{i}.ready"
                readers.append(
                    subprocess.Popen(
                        call("reader_main", kind, str(db), str(out), str(stop), str(flag), probe, n_after),
                        env=env,
                        stderr=subprocess.PIPE,
                    )
                )
                outs.append(out)
                ready.append(flag)
        assert wait_all(ready, timeout=180), "readers did not start"

        started = time.time()
        proc = subprocess.run(
            presetdb_cli("import", big, "--db", db),
            env=env,
            capture_output=True,
            text=True,
            timeout=540,
            check=False,
        )
        finished = time.time()
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert f"{IMPORTED} added" in proc.stdout, proc.stdout
        # Every reader reads the imported state, then a little longer.
        assert wait_all([Path(f"{f}.after") for f in ready], timeout=180), "a reader never saw the import"
        time.sleep(0.5)
        stop.touch()
        for r in readers:
            r.wait(timeout=120)
    finally:
        stop.touch()
        _stop(readers)

    results: list[dict[str, Any]] = []
    for r, out in zip(readers, outs, strict=True):
        stderr = r.stderr.read().decode() if r.stderr else ""
        assert r.returncode == 0 and out.exists(), f"reader exited {r.returncode}: {stderr[-3000:]}"
        results.append(json.loads(out.read_text()))

    reads = during = 0
    by_kind: dict[str, int] = {}
    for res in results:
        assert res["errors"] == [], res["errors"][0]
        samples = res["samples"]
        counts = {n for _t, n, _hit in samples}
        assert counts <= {n_before, n_after}, f"{res['kind']} reader saw counts {sorted(counts)}"
        assert counts == {n_before, n_after}, f"{res['kind']} reader missed a side: {counts}"
        torn = [(n, hit) for _t, n, hit in samples if hit != (n == n_after)]
        assert not torn, f"{res['kind']} reader: count and probe disagree in one snapshot: {torn[:5]}"
        in_window = [s for s in samples if started <= s[0] <= finished]
        assert in_window, f"{res['kind']} reader did not read while the import ran"
        reads += len(samples)
        during += len(in_window)
        by_kind[res["kind"]] = by_kind.get(res["kind"], 0) + len(samples)

    check = migrate.check(db)
    assert check.ok, check
    from reliability_helpers import active_count

    assert active_count(db) == n_after
    report(
        "concurrency.import_vs_readers",
        {
            "readers": len(results),
            "reads": reads,
            "reads_while_importing": during,
            "reads_by_kind": by_kind,
            "import_seconds": round(finished - started, 1),
            "before": n_before,
            "after": n_after,
            "errors": 0,
        },
    )


@pytest.mark.slow
def test_concurrent_first_use_of_the_default_db_builds_nothing(tmp_path: Path) -> None:
    """Eight processes open the embedded default db at once: it ships with the package, so
    none of them builds, migrates or writes anything."""
    cache = tmp_path / "fresh-cache"
    go, counter = tmp_path / "go", tmp_path / "builds.txt"
    env = child_env(PRESETDB_CACHE_DIR=cache)
    procs = []
    outs = []
    try:
        for i in range(8):
            out = tmp_path / f"worker-{i}.json"
            outs.append(out)
            procs.append(
                subprocess.Popen(
                    call("default_db_worker", str(out), str(go), str(counter)),
                    env=env,
                    stderr=subprocess.PIPE,
                )
            )
        # All workers at the start line (imports done), then all go at once.
        assert wait_all([Path(f"{o}.ready") for o in outs], timeout=180), "workers did not start"
        go.touch()
        for p in procs:
            p.wait(timeout=300)
    finally:
        _stop(procs)

    results = []
    for p, out in zip(procs, outs, strict=True):
        stderr = p.stderr.read().decode() if p.stderr else ""
        assert p.returncode == 0 and out.exists(), stderr[-3000:]
        res = json.loads(out.read_text())
        assert "error" not in res, res["error"]
        assert "Traceback" not in stderr, stderr[-3000:]
        results.append(res)

    builds = counter.read_text().split() if counter.exists() else []
    assert builds == [], f"the default db was built at run time by pids {builds}"
    assert len({r["path"] for r in results}) == 1
    assert len({(r["ino"], r["mtime_ns"], r["sha256"]) for r in results}) == 1, results
    path = Path(results[0]["path"])
    st = path.stat()
    assert (st.st_ino, st.st_mtime_ns) == (results[0]["ino"], results[0]["mtime_ns"])
    assert all(r["platforms"] > 0 for r in results)
    check = migrate.check(path)
    assert check.ok and check.revision == migrate.head(), check
    assert not cache.exists() or list(cache.iterdir()) == [], "nothing is written into the cache dir"
    report(
        "concurrency.default_db_first_use_builds_nothing",
        {
            "processes": len(results),
            "builds": len(builds),
            "slowest_seconds": round(max(r["seconds"] for r in results), 2),
        },
    )
