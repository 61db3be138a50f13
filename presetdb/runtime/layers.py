"""The layered stores a process reads presets from, first answer wins:

1. ``overlay``    the user's writable db (``PRESETDB_USER_DB``, default in the user cache
                  dir): local autotune results, quarantines, the miss ledger. Created
                  schema-only on first use; read through a ``mode=ro`` engine so readers
                  never take the write lock, written through a separate ``rw`` engine.
2. ``deployment`` ``PRESETDB_PATH``, the file shipped with the deployment, opened immutable.
3. ``default``    the package's embedded default db, opened immutable.

A layer that cannot be opened is skipped with one warning (strict mode raises instead):
a broken file must never crash a kernel call in a user's model.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

from presetdb.errors import PresetDBError, SchemaTooOldError, SettingsError, StoreWarning
from presetdb.settings import Settings
from presetdb.store import migrate
from presetdb.store.default_db import default_db_path
from presetdb.store.engine import Store


@dataclass
class Layer:
    name: str  # "overlay", "deployment" or "default"
    store: Store  # for reads
    mutable: bool  # can change under us (then the picker watches PRAGMA data_version)

    @property
    def path(self) -> Path:
        return self.store.path


def same_file(a: Path, b: Path) -> bool:
    try:
        if a.exists() and b.exists():
            return a.samefile(b)
        return a.expanduser().resolve() == b.expanduser().resolve()
    except OSError:
        return False


def _warn(message: str) -> None:
    warnings.warn(message, StoreWarning, stacklevel=3)


def open_overlay(path: Path, *, strict: bool) -> tuple[Layer | None, Store | None]:
    """(read layer, write store) for the user overlay, creating/upgrading it as needed."""
    try:
        needs_upgrade = not path.exists() or path.stat().st_size == 0
        if not needs_upgrade:
            try:
                migrate.open_store(path, "ro").dispose()
            except SchemaTooOldError:
                needs_upgrade = True
        if needs_upgrade:
            # The overlay is ours: bring it to the package's schema, without seed data.
            migrate.upgrade(path, seed_data=False)
        writer = migrate.open_store(path, "rw")
        reader = migrate.open_store(path, "ro")
    except (PresetDBError, OSError) as exc:
        if strict:
            raise
        _warn(f"presetdb: user overlay {path} is unusable, continuing without it: {exc}")
        return None, None
    return Layer("overlay", reader, mutable=True), writer


def open_immutable(name: str, path: Path, *, strict: bool) -> Layer | None:
    try:
        return Layer(name, migrate.open_store(path, "immutable"), mutable=False)
    except (PresetDBError, OSError) as exc:
        if strict:
            raise
        _warn(f"presetdb: {name} db {path} is unusable, continuing without it: {exc}")
        return None


def open_layers(settings: Settings) -> tuple[list[Layer], Store | None]:
    """All usable layers in precedence order, and the overlay's write store (if any)."""
    strict = settings.on_miss == "strict"
    layers: list[Layer] = []
    writer: Store | None = None
    overlay_on = not settings.disable_overlay
    if overlay_on and settings.db_path is not None and same_file(settings.user_db_path, settings.db_path):
        # The deployment file is served immutable by every process: writing the ledger
        # into it would corrupt what they read. Never the same file.
        message = (
            f"PRESETDB_USER_DB and PRESETDB_PATH are the same file ({settings.db_path}); the "
            "deployment db is never written: point PRESETDB_USER_DB at another file (or set "
            "PRESETDB_DISABLE_OVERLAY=1)"
        )
        if strict:
            raise SettingsError(message)
        _warn(f"presetdb: {message}; running without a user overlay")
        overlay_on = False
    if overlay_on:
        overlay, writer = open_overlay(settings.user_db_path, strict=strict)
        if overlay is not None:
            layers.append(overlay)
    if settings.db_path is not None:
        deployment = open_immutable("deployment", settings.db_path, strict=strict)
        if deployment is not None:
            layers.append(deployment)
    try:
        default_path = default_db_path(settings.cache_dir)
    except (PresetDBError, OSError) as exc:
        if strict:
            raise
        _warn(f"presetdb: the embedded default db could not be built: {exc}")
    else:
        default = open_immutable("default", default_path, strict=strict)
        if default is not None:
            layers.append(default)
    return layers, writer
