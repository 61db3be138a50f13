"""``presetdb new-migration``: turn checked results files into a data migration.

The files are validated exactly as ``presetdb import`` would (into a throwaway
schema-only database), copied into ``seed_data/`` under their own names, and a revision
``NNNN_data_<slug>.py`` is written after the current head. It pins each file's sha256 and
calls the frozen loader `presetdb.store.seedload.v1`, so the migration keeps meaning the same
rows for as long as it exists.

Where it goes:

- a user's project (the default): a data folder, ``./presetdb-data`` or ``--data-dir``,
  holding ``versions/`` and ``seed_data/``. Its revisions (``u0001``, ``u0002``, ...)
  form their own chain, recorded in ``presetdb_data_version``; ``presetdb build``
  applies them after the package's migrations. The installed package is never written.
- presetdb's own source tree (``--root``, for presetdb's developers): the package's
  ``migrations/versions`` and ``seed_data/``.
"""

from __future__ import annotations

import ast
import re
import shutil
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import presetdb
from presetdb.errors import ImportValidationError, PresetDBError
from presetdb.offline.importers import presetdb_results
from presetdb.offline.importers.apply import import_files
from presetdb.offline.importers.detect import detect_format
from presetdb.offline.importers.records import file_sha256
from presetdb.offline.importers.validate import Resolver
from presetdb.store import migrate

LOADER = "v1"


@dataclass(frozen=True)
class NewMigration:
    path: Path
    revision: str
    down_revision: str | None
    seed_files: dict[str, str]  # name -> sha256
    reused: tuple[str, ...]  # seed files that were already there, byte for byte


def default_root() -> Path:
    """The source tree holding ``migrations/`` and ``seed_data/`` next to the package."""
    return Path(presetdb.__file__).resolve().parent.parent


def read_revisions(versions: Path) -> dict[str, str | None]:
    """revision -> down_revision of every script in `versions`, read without importing."""
    found: dict[str, str | None] = {}
    for script in sorted(versions.glob("*.py")):
        values: dict[str, object] = {}
        for node in ast.parse(script.read_text(encoding="utf-8")).body:
            target = node.targets[0] if isinstance(node, ast.Assign) and len(node.targets) == 1 else None
            if isinstance(target, ast.Name) and target.id in ("revision", "down_revision"):
                values[target.id] = ast.literal_eval(node.value)  # type: ignore[attr-defined]
        if isinstance(values.get("revision"), str):
            down = values.get("down_revision")
            found[str(values["revision"])] = down if isinstance(down, str) else None
    return found


def head_and_next(versions: Path, prefix: str = "") -> tuple[str | None, str]:
    """(current head, next revision id); a user's empty data folder has no head yet."""
    revisions = read_revisions(versions)
    heads = set(revisions) - {d for d in revisions.values() if d}
    if prefix and not revisions:
        return None, f"{prefix}0001"
    if len(heads) != 1:
        raise PresetDBError(f"{versions}: expected one head revision, found {sorted(heads) or 'none'}")
    numbers = [int(r.removeprefix(prefix)) for r in revisions if r.removeprefix(prefix).isdigit()]
    return heads.pop(), f"{prefix}{max(numbers, default=0) + 1:04d}"


def slug(message: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", message.lower()).strip("_")[:40].rstrip("_") or "seed"


def check_files(files: list[Path], resolver: Resolver | None = None) -> None:
    """The same checks as ``presetdb import``, against a fresh schema-only database."""
    for path in files:
        if not path.is_file():
            raise ImportValidationError(f"{path}: no such file")
        if path.suffix != ".json":
            raise ImportValidationError(
                f"{path.name}: seed files are .json files (packaged as presetdb.seed_data/*.json)"
            )
        if detect_format(path) != "presetdb":
            raise ImportValidationError(
                f"{path.name}: data migrations take {presetdb_results.FORMAT_ID} files only. Convert "
                "other formats with `presetdb import FILE --db tmp.db` then `presetdb export "
                "--db tmp.db --kernel K --platform P --format presetdb --out DIR`."
            )
        if not presetdb_results.read_header(path).get("_entry_count"):
            raise ImportValidationError(
                f"{path.name}: holds no entries, so there is nothing to migrate (a tune run whose "
                "every shape failed writes such a file: see its output, e.g. `presetdb tune` "
                "needs a GPU or `--device cpu` with TRITON_INTERPRET=1)"
            )
    names = [p.name for p in files]
    if len(set(names)) != len(names):
        raise ImportValidationError(f"seed files need distinct names (seed_data/ is flat): {names}")
    with tempfile.TemporaryDirectory(prefix="presetdb-new-migration-") as tmp:
        db = Path(tmp) / "check.db"
        migrate.upgrade(db, seed_data=False)
        import_files(db, files, fmt="presetdb", resolver=resolver)


USER_PREFIX = "u"


def render(
    revision: str, down: str | None, message: str, seed: dict[str, str], notes: dict[str, str],
    *, user: bool = False,
) -> str:
    doc_message = message.replace("\\", "\\\\").replace('"""', "'''")
    listing = "\n".join(f"- {name}: {notes.get(name, '')}".rstrip(": ") for name in seed)
    pins = "\n".join(f"    {name!r}: {sha!r}," for name, sha in seed.items())
    created = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S")
    if user:
        where = "a user data migration (presetdb-data/seed_data/, revision kept in presetdb_data_version)"
        imports = "from pathlib import Path\n\nfrom presetdb.store.seedload import " + LOADER
        seed_dir = '\n# The seed files sit next to this folder, in the data folder\'s seed_data/.\nSEED_DIR = Path(__file__).resolve().parent.parent / "seed_data"\n'
        call = f"{LOADER}.upgrade(revision, SEED_FILES, seed_dir=str(SEED_DIR))"
    else:
        where = "seed_data/"
        imports = f"from presetdb.store.seedload import {LOADER}"
        seed_dir = ""
        call = f"{LOADER}.upgrade(revision, SEED_FILES)"
    return f'''"""data: {doc_message}

Revision ID: {revision}
Revises: {down}
Create Date: {created}

Seed files ({where}), pinned by sha256; a changed file fails the upgrade:
{listing}
"""

from __future__ import annotations

{imports}

revision = {revision!r}
down_revision = {down!r}
branch_labels = None
depends_on = None
presetdb_kind = "data"

SEED_FILES = {{
{pins}
}}
{seed_dir}

def upgrade() -> None:
    {call}


def downgrade() -> None:
    {LOADER}.downgrade(revision)
'''


def new_migration(
    files: list[Path],
    message: str,
    *,
    root: Path | None = None,
    data_dir: Path | None = None,
    resolver: Resolver | None = None,
) -> NewMigration:
    """A data migration for `files`: in the user's data folder (`data_dir`, default
    ./presetdb-data), or with `root` in presetdb's own source tree."""
    user = root is None
    if user:
        folder = Path(data_dir or Path.cwd() / migrate.DATA_DIR_NAME).expanduser().resolve()
        versions, seed_dir = folder / "versions", folder / "seed_data"
    else:
        assert root is not None  # user is False
        root = Path(root).expanduser().resolve()
        versions, seed_dir = root / "migrations" / "versions", root / "seed_data"
        if not versions.is_dir() or not seed_dir.is_dir():
            raise PresetDBError(
                f"{root}: not a presetdb source tree (needs migrations/versions/ and seed_data/); "
                "to ship your own presets, leave out --root (the data goes to ./presetdb-data)"
            )
    if not message.strip():
        raise PresetDBError("give the migration a message with -m, e.g. -m 'rms_norm on H100'")
    files = [Path(f) for f in files]
    check_files(files, resolver)
    if user:
        versions.mkdir(parents=True, exist_ok=True)
        seed_dir.mkdir(parents=True, exist_ok=True)
    down, revision = head_and_next(versions, USER_PREFIX if user else "")
    # Refuse before copying anything: a different file under the same name is pinned
    # by an earlier migration and must never change.
    for path in files:
        existing = seed_dir / path.name
        if existing.exists() and file_sha256(existing) != file_sha256(path):
            raise PresetDBError(
                f"seed_data/{path.name} already exists with different content (an earlier "
                "migration may pin it); seed files are never overwritten: rename your file"
            )
    seed: dict[str, str] = {}
    notes: dict[str, str] = {}
    reused = []
    for path in files:
        target = seed_dir / path.name
        if target.exists():
            reused.append(path.name)
        else:
            shutil.copyfile(path, target)
        seed[path.name] = file_sha256(target)
        header = presetdb_results.read_header(target)
        notes[path.name] = (
            f"{header['kernel']['name']} on {header['platform']}, {header.get('_entry_count', 0)} entries"
        )
    script = versions / f"{revision}_data_{slug(message)}.py"
    script.write_text(render(revision, down, message, seed, notes, user=user), encoding="utf-8")
    return NewMigration(script, revision, down, seed, tuple(reused))
