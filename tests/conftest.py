"""Shared fixtures. Every test runs against real SQLite files under tmp paths.

`isolated_env` (autouse) points presetdb's cache and user overlay at temporary paths and
clears the variables that would make a test depend on the machine it runs on, so no test
reads or writes the real user cache.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from presetdb.store import migrate
from presetdb.store.engine import Store

# The fast path (presetdb.helion._accel) is on by default only for the (helion, triton)
# versions a GPU run verified; CPU CI has other versions. Most tests exercise it, so it is
# forced on here (kernels read it when they register); tests/test_public_path.py turns it
# off per kernel to cover the public path. Set PRESETDB_ACCEL yourself to override.
os.environ.setdefault("PRESETDB_ACCEL", "1")

# pg_server / pg_empty_url / registry_url: a throwaway PostgreSQL server (tests/pg_fixtures.py).
pytest_plugins = ("pg_fixtures",)

# Variables that select another db, platform or miss policy: never inherited by a test.
CLEARED_VARIABLES = (
    "PRESETDB_PATH",
    "PRESETDB_PLATFORM",
    "PRESETDB_ON_MISS",
    "PRESETDB_ON_FAR",
    "PRESETDB_MAX_DISTANCE",
    "PRESETDB_RERANK_K",
    "PRESETDB_RERANK_BUDGET_S",
    "PRESETDB_DISABLE_OVERLAY",
    "PRESETDB_REGISTRY",
    "PRESETDB_REMOTE_CACHE_DB",
)


@pytest.fixture(scope="session")
def session_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache dir per test session: the embedded default db is built there once."""
    return tmp_path_factory.mktemp("presetdb-cache")


@pytest.fixture(autouse=True)
def isolated_env(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, session_cache_dir: Path
) -> Iterator[None]:
    monkeypatch.setenv("PRESETDB_CACHE_DIR", str(session_cache_dir))
    monkeypatch.setenv("PRESETDB_USER_DB", str(tmp_path / "user-overlay.db"))
    for name in CLEARED_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    _reset_picker()
    yield
    _reset_picker()


def _reset_picker() -> None:
    # The process-wide picker caches the env it was built from; drop it around each test.
    picker = sys.modules.get("presetdb.runtime.picker")
    reset = getattr(picker, "reset_picker", None)
    if reset is not None:
        reset()


@pytest.fixture
def fresh_db(tmp_path: Path) -> Path:
    """A new database at the package's head revision, without seed data."""
    path = tmp_path / "fresh.db"
    migrate.upgrade(path, seed_data=False)
    return path


@pytest.fixture
def rw_store(fresh_db: Path) -> Iterator[Store]:
    """`fresh_db` opened read-write (checked by the opening rules)."""
    store = migrate.open_store(fresh_db, "rw")
    yield store
    store.dispose()
