"""The embedded default db: built from the package's own migrations on first use and
cached per package version (and head revision) in the user cache dir.

Concurrent first uses take a file lock; the db is built to a temp file and renamed, so a
reader never sees a half-built file. A missing or corrupt cached file is rebuilt.
"""

from __future__ import annotations

from pathlib import Path

from filelock import FileLock

from presetdb import __version__
from presetdb.settings import Settings
from presetdb.store import migrate
from presetdb.store.engine import SQLITE_HEADER


def _usable(path: Path, head: str) -> bool:
    try:
        with path.open("rb") as fh:
            if fh.read(len(SQLITE_HEADER)) != SQLITE_HEADER:
                return False
        return migrate.revision_of(path) == head
    except Exception:  # noqa: BLE001  (any failure means "rebuild it")
        return False


def default_db_path(cache_dir: Path | None = None) -> Path:
    """Path of the embedded default db, building it first if needed."""
    cache_dir = cache_dir or Settings.from_env().cache_dir
    head = migrate.head()
    target = cache_dir / f"default-{__version__}-{head}.db"
    if _usable(target, head):
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock", timeout=600):
        if _usable(target, head):  # another process built it while we waited
            return target
        from presetdb.offline.build import build_database

        build_database(target)
    return target
