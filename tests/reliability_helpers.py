"""Helpers for the reliability suite (tests/test_reliability_*.py).

Generated results files, the environment handed to child processes, and the bodies of
the child processes themselves. Children run as ``python -c "from reliability_helpers
import X; X(...)"`` with ``tests/`` on PYTHONPATH and every PRESETDB_* variable passed
explicitly (the autouse `isolated_env` fixture only changes this process's environment).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import sqlite3
import sys
import time
import traceback
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

TESTS = Path(__file__).resolve().parent
FIXTURE_RESULTS = TESTS / "fixtures" / "rms_norm_nvidia_h100.json"
KERNEL, PLATFORM = "rms_norm", "nvidia_h100"
RMS_SCHEMA: dict[str, Any] = {
    "fields": [
        {"name": "dtype", "policy": "exact"},
        {"name": "hidden", "policy": "nearest"},
        {"name": "num_tokens", "policy": "ceil"},
    ]
}
# Variables a child must never inherit from the developer's shell.
CLEARED = ("PRESETDB_PATH", "PRESETDB_PLATFORM", "PRESETDB_ON_MISS", "PRESETDB_DISABLE_OVERLAY")
REPORT_ENV = "PRESETDB_RELIABILITY_REPORT"


# ---------------------------------------------------------------- environment


def child_env(**overrides: str | os.PathLike[str] | None) -> dict[str, str]:
    """The environment for a child process: this test's PRESETDB_* settings made
    explicit, machine-dependent ones removed, tests/ importable. `None` removes a name."""
    env = {k: v for k, v in os.environ.items() if k not in CLEARED}
    for name in ("PRESETDB_CACHE_DIR", "PRESETDB_USER_DB"):
        if name in os.environ:
            env[name] = os.environ[name]
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(TESTS), os.environ.get("PYTHONPATH", "")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    env["COLUMNS"] = "200"
    for name, value in overrides.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = str(value)
    return env


def call(function: str, *args: Any) -> list[str]:
    """argv running `function(*args)` from this module in a fresh interpreter."""
    return [sys.executable, "-c", f"from reliability_helpers import {function}; {function}(*{args!r})"]


def presetdb_cli(*args: str | os.PathLike[str]) -> list[str]:
    return [sys.executable, "-m", "presetdb", *map(str, args)]


def report(name: str, figures: Mapping[str, Any]) -> None:
    """Print a test's measured figures; also append them (JSON lines) to the file named
    by $PRESETDB_RELIABILITY_REPORT, which docs/reliability.md's numbers come from."""
    line = json.dumps({"test": name, **figures}, sort_keys=True)
    print(line)
    target = os.environ.get(REPORT_ENV)
    if target:
        with open(target, "a", encoding="utf-8") as fh:
            fh.write(line + "\n")


# ---------------------------------------------------------------- files and dbs


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def key_for(index: int) -> dict[str, Any]:
    """A distinct small rms_norm shape key per index (no clash with the fixture's keys,
    and tiny shapes, so validating the config against Helion's ConfigSpec is cheap)."""
    return {"dtype": "bfloat16", "hidden": 2 + index // 100, "num_tokens": 2 + index % 100}


def results_doc(start: int, count: int) -> dict[str, Any]:
    """A presetdb-results/1 document with `count` entries for keys start..start+count-1.
    The kernel source hash is left out (the importer would hash the source per row)."""
    doc = json.loads(FIXTURE_RESULTS.read_text(encoding="utf-8"))
    doc["kernel"].pop("source_hash", None)
    config = doc["entries"][1]["config"]
    doc["entries"] = [
        {"key": key_for(i), "config": config, "latency_ms": round(0.01 + i * 1e-6, 9)}
        for i in range(start, start + count)
    ]
    return doc


def write_results(path: Path, start: int, count: int) -> Path:
    path.write_text(json.dumps(results_doc(start, count)), encoding="utf-8")
    return path


def active_count(db: Path) -> int:
    """Active presets, read on a plain read-only connection (sees committed data only)."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        return int(conn.execute("SELECT COUNT(*) FROM presets WHERE status = 'active'").fetchone()[0])
    finally:
        conn.close()


def table_dump(db: Path) -> dict[str, list[tuple[Any, ...]]]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
        return {
            t: sorted(map(tuple, conn.execute(f'SELECT * FROM "{t}"')), key=repr)
            for t in tables
        }
    finally:
        conn.close()


def writer_holds_lock(db: Path) -> bool:
    """True while another connection holds the db's write lock (is inside a write
    transaction). Tries BEGIN IMMEDIATE with no busy wait and rolls straight back."""
    conn = sqlite3.connect(str(db), timeout=0, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
    except sqlite3.OperationalError as exc:
        if "locked" in str(exc) or "busy" in str(exc):
            return True
        raise
    else:
        conn.execute("ROLLBACK")
        return False
    finally:
        conn.close()


# ---------------------------------------------------------------- child: readers


def reader_main(
    kind: str, db: str, out: str, stop: str, ready: str, probe_json: str, after: int
) -> None:
    """Resolve presets from `db` continuously until the file `stop` exists.

    kind "picker": a `Picker` whose only layer is `db` as the user overlay (mutable,
    read through a mode=ro engine); every read drops the picker's indexes and resolves
    `probe` again, so every read is a fresh load of the kernel's presets.
    kind "repository": a mode=ro `Store` and `Repository`; one read transaction per read.

    Per read: the number of active presets seen, and whether the probe key (a key of the
    concurrent import) was served -- both from the same snapshot, so they must agree."""
    os.nice(10)  # the importer is the process under test; readers yield to it
    from presetdb.keys import KeySpec, canonical_key
    from presetdb.store import migrate
    from presetdb.store.repository import Repository

    probe = json.loads(probe_json)
    probe_key = canonical_key(probe)
    spec = KeySpec.from_schema(RMS_SCHEMA)
    features = tuple(probe[name] for name in spec.names)
    samples: list[tuple[float, int, bool]] = []
    errors: list[str] = []

    saw_after = Path(ready + ".after")
    if kind == "picker":
        from presetdb.runtime.layers import open_overlay
        from presetdb.runtime.picker import Picker
        from presetdb.runtime.platforms import DeviceInfo, resolve_platform

        layer, writer = open_overlay(Path(db), strict=True)
        assert layer is not None and writer is not None  # readers never write: the path is unused
        with layer.store.read() as session:
            info = resolve_platform(
                [Repository(session)], override=PLATFORM, device=DeviceInfo("cpu", "cpu", None, None)
            )
        picker = Picker([layer], None, info)
        # What the picker loads: it reads each layer's presets of a kernel x platform with
        # `Repository.active_preset_rows` (one read transaction); record the row counts.
        loaded: list[int] = []
        real_rows = Repository.active_preset_rows

        def recording(self: Repository, kernel: str, platform: str) -> Any:
            rows = real_rows(self, kernel, platform)
            if (kernel, platform) == (KERNEL, PLATFORM):
                loaded.append(len(rows.rows))
            return rows

        Repository.active_preset_rows = recording  # type: ignore[method-assign]

        def read() -> tuple[int, bool]:
            loaded.clear()
            picker.invalidate()
            choice = picker.resolve(KERNEL, spec, features)
            if len(loaded) != 1:
                raise AssertionError(f"one load of {KERNEL}/{PLATFORM} expected per read, saw {loaded}")
            hit = choice is not None and choice.preset.shape_key == probe_key
            return loaded[0], hit

    elif kind == "repository":
        store = migrate.open_store(Path(db), "ro")

        def read() -> tuple[int, bool]:
            with store.read() as session:
                repo = Repository(session)
                seen = repo.count_presets()
                hit = repo.find_preset(KERNEL, PLATFORM, probe) is not None
            return seen, hit

    else:
        raise ValueError(kind)

    deadline = time.monotonic() + 900
    while not os.path.exists(stop) and time.monotonic() < deadline:
        t = time.time()
        try:
            seen, hit = read()
            samples.append((t, seen, hit))
            if seen == after and not saw_after.exists():
                saw_after.touch()
        except Exception:  # noqa: BLE001  (recorded; the test asserts there were none)
            errors.append(traceback.format_exc())
            if len(errors) >= 20:
                break
        if len(samples) + len(errors) == 1:
            Path(ready).touch()
        time.sleep(0.005)
    Path(out).write_text(json.dumps({"kind": kind, "samples": samples, "errors": errors}))


# ---------------------------------------------------------------- child: default db


def default_db_worker(out: str, go: str, counter: str) -> None:
    """First use of the embedded default db, started together with its siblings.

    `presetdb.offline.build.build_database` is wrapped to append this pid to `counter`, so the
    test counts builds across all processes."""
    from presetdb.offline import build
    from presetdb.store import default_db as defaultdb
    from presetdb.store import migrate

    real = build.build_database

    def counting(target: Path, **kwargs: Any) -> Any:
        with open(counter, "a", encoding="utf-8") as fh:
            fh.write(f"{os.getpid()}\n")
        return real(target, **kwargs)

    build.build_database = counting  # type: ignore[assignment]
    migrate.head()  # load the migration scripts before the start line
    Path(out + ".ready").touch()
    while not os.path.exists(go):
        time.sleep(0.001)
    started = time.monotonic()
    result: dict[str, Any] = {"pid": os.getpid()}
    try:
        path = defaultdb.default_db_path()
        result["seconds"] = time.monotonic() - started
        st = path.stat()
        result.update(path=str(path), ino=st.st_ino, mtime_ns=st.st_mtime_ns, sha256=sha256(path))
        store = migrate.open_store(path, "immutable")
        try:
            from presetdb.store.repository import Repository

            with store.read() as session:
                result["platforms"] = len(Repository(session).list_platforms())
        finally:
            store.dispose()
    except Exception:  # noqa: BLE001  (reported to the test)
        result["error"] = traceback.format_exc()
    Path(out).write_text(json.dumps(result))


# ---------------------------------------------------------------- child: crash zygote


def crash_zygote() -> None:
    """A warm importer that forks one child per import, so a test can SIGKILL imports
    many times without paying the torch/Helion start-up (~6 s) each time.

    Protocol (lines on stdin / stdout):  "import\\t<db>\\t<file>" -> "pid <pid>", then
    "status <wait status>" when that child has ended; "quit" ends the zygote.
    The children run `presetdb.offline.importers.import_files`, the same code `presetdb import`
    runs, with the real kernel registry."""
    import torch

    torch.set_num_threads(1)  # no OpenMP pool to inherit across fork()
    from presetdb.offline.importers import import_files
    from presetdb.offline.importers.validate import RegistryResolver

    resolver = RegistryResolver()
    doc = results_doc(0, 1)
    resolver.get(KERNEL).check_config(doc["entries"][0]["config"], doc["entries"][0]["key"])
    print("ready", flush=True)
    for line in sys.stdin:
        parts = line.rstrip("\n").split("\t")
        if parts[0] == "quit":
            break
        _, db, file = parts
        pid = os.fork()
        if pid == 0:  # the child: one import, then leave without running atexit hooks
            code = 0
            try:
                import_files(Path(db), [Path(file)], resolver=resolver)
            except BaseException:  # noqa: BLE001  (the child reports and exits)
                traceback.print_exc()
                code = 3
            sys.stdout.flush()
            os._exit(code)
        print(f"pid {pid}", flush=True)
        _, status = os.waitpid(pid, 0)
        print(f"status {status}", flush=True)


def killed_by_sigkill(status: int) -> bool:
    return os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL


# ---------------------------------------------------------------- child: read-only dir


def readonly_dir_probe(folder: str, out: str) -> None:
    """In a read-only directory: open each db there for reading and for writing and
    record what happened (run by the test as a user that file permissions apply to)."""
    from presetdb.errors import PresetDBError
    from presetdb.store import migrate
    from presetdb.store.repository import Repository

    results: dict[str, Any] = {"euid": os.geteuid()}
    for db in sorted(Path(folder).glob("*.db")):
        entry: dict[str, Any] = {}
        for mode in ("immutable", "ro", "rw"):
            store = None
            try:
                store = migrate.open_store(db, mode)  # type: ignore[arg-type]
                with store.read() as session:
                    entry[f"{mode}_read"] = Repository(session).count_presets()
                if mode == "rw":
                    with store.transaction() as session:
                        Repository(session).ensure_kernel("written", {"fields": []})
                    entry["rw_write"] = "ok"
            except PresetDBError as exc:
                entry[f"{mode}_error"] = f"{type(exc).__name__}: {exc}"
            except Exception as exc:  # noqa: BLE001  (an unclear error: the test fails on it)
                entry[f"{mode}_unclear"] = f"{type(exc).__name__}: {exc}"
            finally:
                if store is not None:
                    store.dispose()
        entry["files"] = sorted(p.name for p in Path(folder).iterdir())
        results[db.name] = entry
    Path(out).write_text(json.dumps(results))


def copy_clean(src: Path, dest: Path) -> Path:
    """Copy a db with no -wal/-shm beside it (checkpointed first)."""
    conn = sqlite3.connect(str(src))
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    shutil.copy(src, dest)
    return dest


def wait_all(paths: Sequence[Path], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(p.exists() for p in paths):
            return True
        time.sleep(0.05)
    return False
