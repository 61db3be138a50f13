"""The embedded default db: ``presetdb/data/default.db``, shipped inside the package.

It is every packaged migration (schema and seed data) built into one compacted file by
an explicit command, `presetdb build --embedded` (`presetdb.offline.build.build_embedded`),
which `make` runs after installing and which a wheel build must run first; it is not
committed. A test checks its content digest against a fresh build, so it cannot drift from
the migrations. A serving process only opens it, immutable: it
is never built, migrated or written at run time.
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path

from presetdb.errors import StoreNotFoundError

EMBEDDED = ("data", "default.db")


def embedded_path() -> Path:
    """Where the embedded default db lives in this installation (it may be missing)."""
    return Path(str(importlib.resources.files("presetdb").joinpath(*EMBEDDED)))


def default_db_path() -> Path:
    """Path of the embedded default db; StoreNotFoundError if this install lacks it."""
    path = embedded_path()
    if not path.is_file():
        raise StoreNotFoundError(
            f"the embedded default db {path} is missing from this installation: reinstall presetdb, "
            "or in a checkout run `presetdb build --embedded`"
        )
    return path
