"""The layered stores a process reads presets from, first answer wins:

1. ``overlay``    the user's writable db (``PRESETDB_USER_DB``, default in the user cache
                  dir): local autotune results, quarantines, the miss ledger. Read through
                  a ``mode=ro`` engine; written only by the ledger's thread
                  (`presetdb.runtime.ledger`), which creates it schema-only on first write.
2. ``deployment`` ``PRESETDB_PATH``, the file shipped with the deployment, opened immutable.
3. ``default``    the package's embedded default db (built with the package), opened immutable.

A layer that cannot be opened is skipped with one warning (strict mode raises instead):
a broken file must never crash a kernel call in a user's model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from presetdb._util import warn_at_caller
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
    def path(self) -> Path | str:
        """The file, or a registry's URL (password hidden) for `presetdb pick --db URL`."""
        return self.store.path if self.store.path is not None else self.store.label


def same_file(a: Path, b: Path) -> bool:
    try:
        if a.exists() and b.exists():
            return a.samefile(b)
        return a.expanduser().resolve() == b.expanduser().resolve()
    except OSError:
        return False


def _warn(message: str) -> None:
    warn_at_caller(message, StoreWarning)


def open_overlay(path: Path, *, strict: bool) -> tuple[Layer | None, Path | None]:
    """(read layer, path the ledger writes to) for the user overlay.

    Reading only: a missing overlay is no layer yet (the ledger creates it, schema-only,
    on its first write, on its own thread), and so is one at an older schema (the ledger
    upgrades it: the file is ours). Neither happens on a kernel call."""
    try:
        if not path.exists() or path.stat().st_size == 0:
            return None, path
        try:
            reader = migrate.open_store(path, "ro")
        except SchemaTooOldError:
            return None, path
    except (PresetDBError, OSError) as exc:
        if strict:
            raise
        _warn(f"presetdb: user overlay {path} is unusable, continuing without it: {exc}")
        return None, None
    return Layer("overlay", reader, mutable=True), path


def open_immutable(name: str, path: Path | Any, *, strict: bool) -> Layer | None:
    """A read-only layer: a file opened immutable, or (for `pick --db URL`) a registry
    read in READ ONLY transactions."""
    try:
        return Layer(name, migrate.open_store(path, "immutable"), mutable=False)
    except (PresetDBError, OSError) as exc:
        if strict:
            raise
        _warn(f"presetdb: {name} db {path} is unusable, continuing without it: {exc}")
        return None


def open_layers(settings: Settings) -> tuple[list[Layer], Path | None]:
    """All usable layers in precedence order, and the overlay path the ledger writes to
    (None: no writable overlay)."""
    strict = settings.on_miss == "strict"
    layers: list[Layer] = []
    writer: Path | None = None
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
        default_path = default_db_path()
    except (PresetDBError, OSError) as exc:
        if strict:
            raise
        _warn(f"presetdb: the embedded default db is unusable: {exc}")
    else:
        default = open_immutable("default", default_path, strict=strict)
        if default is not None:
            layers.append(default)
    return layers, writer
