"""Corrupt, foreign, locked and unwritable database files.

Each bad file gives a clear error that names the file and says what to do -- when
opened in each mode, through the command line, and through the picker in strict mode --
and, in the default (non-strict) miss policy, a kernel call with the bad file as
PRESETDB_PATH still runs: Helion's default config, one warning about the file, one miss
warning, no exception. A locked db never hangs a reader or a writer. A db in a
read-only directory can be read; writing it gives a read-only error.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import sqlite3
import subprocess
import sys
import textwrap
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from reliability_helpers import (
    active_count,
    call,
    child_env,
    copy_clean,
    presetdb_cli,
    report,
    sha256,
)

from presetdb.errors import PresetDBError
from presetdb.offline.build import build_database
from presetdb.runtime.layers import StoreWarning
from presetdb.runtime.picker import get_picker, reset_picker
from presetdb.store import migrate


def _empty(good: Path, dest: Path) -> None:
    dest.write_bytes(b"")


def _truncated(good: Path, dest: Path) -> None:
    data = good.read_bytes()
    dest.write_bytes(data[: len(data) // 2])


def _random_bytes(good: Path, dest: Path) -> None:
    dest.write_bytes(random.Random(7).randbytes(64 * 1024))


def _other_application(good: Path, dest: Path) -> None:
    conn = sqlite3.connect(dest)
    conn.execute("CREATE TABLE moz_places (id INTEGER PRIMARY KEY, url TEXT)")
    conn.execute("INSERT INTO moz_places (url) VALUES ('https://example.org')")
    conn.commit()
    conn.close()


def _missing_presets_table(good: Path, dest: Path) -> None:
    shutil.copy(good, dest)
    conn = sqlite3.connect(dest)
    conn.execute("PRAGMA foreign_keys=OFF")
    conn.execute("DROP TABLE presets")
    conn.commit()
    conn.close()


def _newer_schema(good: Path, dest: Path) -> None:
    shutil.copy(good, dest)
    conn = sqlite3.connect(dest)
    conn.execute("UPDATE alembic_version SET version_num = '9999'")
    conn.commit()
    conn.close()


# kind -> (how to make it, fragments the error must contain besides the file's path)
BAD_FILES: dict[str, tuple[Callable[[Path, Path], None], tuple[str, ...]]] = {
    "zero-length": (_empty, ("empty", "presetdb db upgrade")),
    "truncated": (_truncated, ("corrupt", "presetdb build")),
    "random-bytes": (_random_bytes, ("not a SQLite database", "presetdb build")),
    "other-application": (_other_application, ("not a presetdb database", "moz_places", "PRESETDB_PATH")),
    "missing-table": (_missing_presets_table, ("presets", "missing", "presetdb build")),
    "newer-schema": (_newer_schema, ("9999", "newer presetdb", "upgrade the package")),
}


@pytest.fixture(scope="module")
def good_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real shipped db (`presetdb build`): rollback journal, 30-odd pages."""
    path = tmp_path_factory.mktemp("good") / "good.db"
    build_database(path)
    return path


@pytest.fixture(params=list(BAD_FILES))
def bad_file(request: pytest.FixtureRequest, good_db: Path, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    kind = request.param
    folder = tmp_path / "bad"
    folder.mkdir()
    path = folder / f"{kind}.db"
    BAD_FILES[kind][0](good_db, path)
    yield kind, path


def _assert_clear(message: str, path: Path, kind: str) -> None:
    flat = " ".join(message.split())
    assert str(path) in flat, f"the error does not name the file: {message}"
    for fragment in BAD_FILES[kind][1]:
        assert fragment in flat, f"{kind}: {fragment!r} missing from: {message}"
    assert "Traceback" not in message


@pytest.mark.parametrize("mode", ["ro", "immutable", "rw"])
def test_opening_a_bad_file_names_it_and_says_what_to_do(bad_file: tuple[str, Path], mode: str) -> None:
    kind, path = bad_file
    before = sha256(path)
    with pytest.raises(PresetDBError) as info:
        store = migrate.open_store(path, mode)  # type: ignore[arg-type]
        store.dispose()
    _assert_clear(str(info.value), path, kind)
    assert sha256(path) == before, "refusing the file changed it"
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name], "refusing the file left files"


def test_cli_reports_a_bad_file_in_one_line(bad_file: tuple[str, Path]) -> None:
    kind, path = bad_file
    proc = subprocess.run(
        presetdb_cli("list", "--db", path),
        env=child_env(COLUMNS="400"),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert proc.stderr.startswith("error:"), proc.stderr
    _assert_clear(proc.stderr, path, kind)


def test_picker_skips_a_bad_deployment_db_with_one_warning_or_raises_in_strict_mode(
    bad_file: tuple[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    kind, path = bad_file
    monkeypatch.setenv("PRESETDB_PATH", str(path))
    monkeypatch.setenv("PRESETDB_PLATFORM", "nvidia_h100")
    reset_picker()
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        picker = get_picker()
    about_file = [w for w in record if issubclass(w.category, StoreWarning) and str(path) in str(w.message)]
    assert len(about_file) == 1, [str(w.message) for w in record]
    _assert_clear(str(about_file[0].message), path, kind)
    assert "deployment" not in [layer.name for layer in picker.layers]
    monkeypatch.setenv("PRESETDB_ON_MISS", "strict")
    reset_picker()
    with pytest.raises(PresetDBError) as info:
        get_picker()
    _assert_clear(str(info.value), path, kind)


def test_kernel_call_with_a_bad_deployment_db_runs_the_default_config(
    bad_file: tuple[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Non-strict mode: a real Helion kernel (rms_norm, TRITON_INTERPRET=1 on CPU) with
    PRESETDB_PATH at the bad file never raises, runs Helion's default config and warns
    once about the file (and once about the miss), however many calls are made."""
    from helion_fixtures import HAS_CUDA, assert_close, install_interpreter_shims

    if not HAS_CUDA and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("CPU Helion kernels need TRITON_INTERPRET=1")
    install_interpreter_shims()
    import torch

    import presetdb.kernels  # noqa: F401  (registers the kernels)
    from presetdb.helion.hooks import PresetMissWarning, reset_warnings
    from presetdb.helion.registry import get_kernel

    kind, path = bad_file
    monkeypatch.setenv("PRESETDB_PATH", str(path))
    monkeypatch.setenv("PRESETDB_PLATFORM", "cpu")
    monkeypatch.delenv("PRESETDB_ON_MISS", raising=False)
    reset_picker()
    reset_warnings()
    rk = get_kernel("rms_norm")
    device = "cuda" if HAS_CUDA else "cpu"
    x = torch.randn(4, 16, device=device)
    w = torch.randn(16, device=device)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        for _ in range(3):
            out = torch.ops.presetdb.rms_norm(x, w, 1e-6)
    # presetdb's own warnings (Helion/Triton may add deprecation noise of their own).
    ours = [w for w in record if w.category.__module__.startswith("presetdb")]
    messages = [f"{w.category.__name__}: {w.message}" for w in ours]
    about_file = [w for w in ours if str(path) in str(w.message)]
    misses = [w for w in ours if issubclass(w.category, PresetMissWarning)]
    assert len(about_file) == 1 and issubclass(about_file[0].category, StoreWarning), messages
    assert len(misses) == 1, messages
    assert len(ours) == 2, messages
    _assert_clear(str(about_file[0].message), path, kind)
    assert_close(out, rk.reference(x, w, 1e-6), torch.float32)
    bound = rk.bound(x, w, 1e-6)
    assert bound._config == bound.config_spec.default_config()  # Helion's default, per specialization
    reset_picker()
    reset_warnings()


# ---------------------------------------------------------------- locked


LOCK_PROBE = textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path
    import presetdb.store.engine as engine
    from presetdb.store import migrate
    from presetdb.errors import PresetDBError
    from presetdb.store.repository import Repository

    db, busy_ms, out = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    if busy_ms >= 0:
        engine.BUSY_TIMEOUT_MS = busy_ms  # a short busy timeout for readers and writers
    results = {}
    for mode in sys.argv[4].split(","):
        started = time.monotonic()
        store = None
        try:
            store = migrate.open_store(db, mode)
            if mode == "rw":
                with store.transaction() as session:
                    Repository(session).ensure_kernel("written", {"fields": []})
                what = "wrote"
            else:
                with store.read() as session:
                    what = f"read {Repository(session).count_presets()}"
        except PresetDBError as exc:
            what = f"error {type(exc).__name__}: {exc}"
        except Exception as exc:
            what = f"unclear {type(exc).__name__}: {exc}"
        finally:
            if store is not None:
                store.dispose()
        results[mode] = [what, round(time.monotonic() - started, 2)]
    Path(out).write_text(json.dumps(results))
    """
)


def _probe_locked(db: Path, busy_ms: int, modes: str, tmp_path: Path, timeout: float = 90) -> dict[str, list]:
    out = tmp_path / f"lock-{busy_ms}-{modes.replace(',', '-')}.json"
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-c", LOCK_PROBE, str(db), str(busy_ms), str(out), modes],
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=timeout,  # a hang fails the test here instead of hanging it
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(out.read_text())
    results["_wall"] = [str(round(time.monotonic() - started, 1)), 0]
    return results


def _hold_exclusive(db: Path) -> sqlite3.Connection:
    """Another connection inside an EXCLUSIVE transaction with a pending write."""
    holder = sqlite3.connect(db, isolation_level=None, timeout=0)
    holder.execute("BEGIN EXCLUSIVE")
    holder.execute(
        "INSERT INTO preset_misses (kernel, platform, features, reason, count, first_seen_at, "
        "last_seen_at) VALUES ('k', 'p', '{}', 'r', 1, 'a', 'b')"
    )
    return holder


def _assert_locked(what: str, db: Path) -> None:
    assert what.startswith("error StoreError"), what
    flat = " ".join(what.split())
    assert str(db) in flat and "locked" in flat and "retry" in flat, what


@pytest.mark.parametrize("journal", ["delete", "wal"])
def test_locked_db_gives_a_clear_error_or_reads_never_hangs(good_db: Path, tmp_path: Path, journal: str) -> None:
    db = tmp_path / f"locked-{journal}.db"
    shutil.copy(good_db, db)
    if journal == "wal":
        conn = sqlite3.connect(db)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.close()
    holder = _hold_exclusive(db)
    try:
        results = _probe_locked(db, 300, "immutable,ro,rw", tmp_path)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    # immutable=1 takes no locks: a shipped file reads as it is on disk.
    shipped = active_count(good_db)  # the seed presets `presetdb build` ships
    assert results["immutable"][0] == f"read {shipped}", results
    if journal == "wal":
        assert results["ro"][0] == f"read {shipped}", results  # WAL readers read the last commit
    else:
        _assert_locked(results["ro"][0], db)
    _assert_locked(results["rw"][0], db)
    assert all(seconds < 30 for _what, seconds in (results[m] for m in ("immutable", "ro", "rw"))), results
    report(f"corrupt.locked_{journal}", {m: results[m] for m in ("immutable", "ro", "rw")})


@pytest.mark.slow
def test_locked_db_with_the_default_busy_timeout_errors_after_it(good_db: Path, tmp_path: Path) -> None:
    """No shortened timeout: a second writer waits the 10 s busy timeout, then gets the
    clear 'locked' error (never an endless wait)."""
    from presetdb.store.engine import BUSY_TIMEOUT_MS

    db = tmp_path / "locked.db"
    copy_clean(good_db, db)
    holder = _hold_exclusive(db)
    try:
        results = _probe_locked(db, -1, "rw", tmp_path, timeout=BUSY_TIMEOUT_MS / 1000 + 60)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    what, seconds = results["rw"]
    _assert_locked(what, db)
    assert BUSY_TIMEOUT_MS / 1000 - 1 <= seconds < BUSY_TIMEOUT_MS / 1000 + 30, results
    report("corrupt.locked_default_timeout", {"rw": results["rw"]})


# ---------------------------------------------------------------- read-only directory


def _as_unprivileged(argv: list[str]) -> list[str] | None:
    """argv that runs with file permissions enforced: as is for a normal user; for root,
    under setpriv without CAP_DAC_OVERRIDE / CAP_DAC_READ_SEARCH (None if impossible)."""
    if os.geteuid() != 0:
        return argv
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        return None
    caps = "-dac_override,-dac_read_search"
    return [setpriv, f"--bounding-set={caps}", f"--inh-caps={caps}", "--", *argv]


def test_db_in_a_read_only_directory_reads_and_refuses_writes_clearly(good_db: Path, tmp_path: Path) -> None:
    folder = tmp_path / "readonly"
    folder.mkdir()
    copy_clean(good_db, folder / "shipped.db")  # rollback journal
    overlay = folder / "overlay.db"  # WAL mode, as user overlays and import targets are
    migrate.upgrade(overlay, seed_data=False)
    conn = sqlite3.connect(overlay)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    for suffix in ("-wal", "-shm"):
        Path(f"{overlay}{suffix}").unlink(missing_ok=True)
    before = {p.name: sha256(p) for p in folder.iterdir()}
    out = tmp_path / "probe.json"
    argv = _as_unprivileged(call("readonly_dir_probe", str(folder), str(out)))
    folder.chmod(0o500)
    try:
        if argv is None:
            proc = None
        else:
            proc = subprocess.run(argv, env=child_env(), capture_output=True, text=True, timeout=120, check=False)
    finally:
        folder.chmod(0o700)
    if proc is None or proc.returncode != 0 or not out.exists():
        detail = "" if proc is None else proc.stderr[-500:]
        if os.geteuid() == 0:
            pytest.skip(f"running as root and cannot drop CAP_DAC_OVERRIDE here, so chmod 0o500 does not restrict: {detail}")
        pytest.fail(f"probe failed: {detail}")
    results = json.loads(out.read_text())
    if results["shipped.db"].get("rw_write") == "ok":
        pytest.skip("file permissions are not enforced for this user (root?): writing to a 0o500 directory succeeded")

    for name, entry in ((n, results[n]) for n in ("shipped.db", "overlay.db")):
        assert not [k for k in entry if k.endswith("_unclear")], entry
        expected = active_count(good_db) if name == "shipped.db" else 0
        assert entry["immutable_read"] == expected, entry  # immutable needs no writable directory
        error = entry["rw_error"]
        assert error.startswith("ReadOnlyStoreError"), entry
        assert str(folder / name) in error and "read-only" in error and "permissions" in error, error
    # A rollback-journal file reads in every mode; a WAL file needs its -shm, which a
    # read-only directory cannot hold: mode=ro is then refused the same clear way.
    shipped = active_count(good_db)
    assert results["shipped.db"]["ro_read"] == shipped and results["shipped.db"]["rw_read"] == shipped, results
    ro = results["overlay.db"].get("ro_read", results["overlay.db"].get("ro_error"))
    assert ro == 0 or ("read-only" in ro and "permissions" in ro), results
    assert {p.name: sha256(p) for p in folder.iterdir()} == before
    report("corrupt.readonly_dir", {"euid": results["euid"], "via_setpriv": os.geteuid() == 0})
