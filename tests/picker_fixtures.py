"""Builders for picker, platform and store tests: real SQLite files, real layers.

Databases are made the way users make them: `migrate.upgrade(path, seed_data=False)`, then
presets written through `Repository` inside one `store.transaction()`. A *shipped* db is
then switched to a rollback journal (what `presetdb build` writes) so that it can be
opened `immutable=1` as a deployment or default layer.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from presetdb.keys import KeySpec
from presetdb.runtime.layers import Layer, open_immutable, open_overlay
from presetdb.runtime.picker import Picker
from presetdb.runtime.platforms import DeviceInfo, resolve_platform
from presetdb.settings import Settings
from presetdb.store import migrate
from presetdb.store.records import PresetInput
from presetdb.store.repository import Repository

T = TypeVar("T")

H100, H200, B200, A100 = "nvidia_h100", "nvidia_h200", "nvidia_b200", "nvidia_a100"
# What detect_device() reports on a machine without a GPU: the platform comes from elsewhere.
CPU = DeviceInfo("cpu", "cpu", None, None)
H100_DEVICE = DeviceInfo("NVIDIA H100 80GB HBM3", "nvidia", "9.0", 132)

RMS_SCHEMA: dict[str, Any] = {
    "fields": [
        {"name": "dtype", "policy": "exact", "description": "input dtype"},
        {"name": "hidden", "policy": "nearest", "description": "last dim"},
        {"name": "num_tokens", "policy": "ceil", "description": "rows"},
    ]
}
RMS_SPEC = KeySpec.from_schema(RMS_SCHEMA)


def schema(*fields: tuple[str, str]) -> dict[str, Any]:
    return {"fields": [{"name": n, "policy": p} for n, p in fields]}


def rms_key(
    dtype: str = "bfloat16", hidden: int = 4096, num_tokens: int = 128
) -> dict[str, Any]:
    return {"dtype": dtype, "hidden": hidden, "num_tokens": num_tokens}


@dataclass(frozen=True)
class P:
    """One preset to write: kernel, platform, shape key, config, optional timings."""

    kernel: str
    platform: str
    key: Mapping[str, Any]
    config: Mapping[str, Any]
    timings: Mapping[str, Any] = field(default_factory=dict)


def make_db(
    path: Path,
    presets: Iterable[P] = (),
    *,
    kernels: Mapping[str, Mapping[str, Any]] | None = None,
    platforms: Sequence[Mapping[str, Any]] = (),
    fallbacks: Mapping[str, Sequence[str]] | None = None,
    provenance: Mapping[str, Any] | None = None,
    shipped: bool = True,
) -> Path:
    """A migrated db holding `presets` (one tuning run). `platforms` adds platforms
    (kwargs of `Repository.ensure_platform` plus "name"); `fallbacks` adds ranked ones."""
    migrate.upgrade(path, seed_data=False)
    store = migrate.open_store(path, "rw")
    try:
        with store.transaction() as session:
            repo = Repository(session)
            for name, key_schema in (kernels or {"rms_norm": RMS_SCHEMA}).items():
                repo.ensure_kernel(name, key_schema, f"test kernel {name}")
            for platform in platforms:
                repo.ensure_platform(**platform)
            if fallbacks:
                _add_fallbacks(session, fallbacks)
            run = repo.add_run(
                "manual",
                **(
                    provenance
                    or {"tuned_by": "tests", "device_name": "NVIDIA H100 80GB HBM3"}
                ),
            )
            for p in presets:
                repo.upsert_preset(
                    p.kernel,
                    p.platform,
                    run.id,
                    PresetInput(p.key, p.config, **p.timings),
                )
    finally:
        store.dispose()
    if shipped:
        to_rollback_journal(path)
    return path


def _add_fallbacks(session: Any, fallbacks: Mapping[str, Sequence[str]]) -> None:
    from sqlalchemy import delete, select

    from presetdb.store.models import Platform, PlatformFallback

    ids = dict(session.execute(select(Platform.name, Platform.id)).all())
    for name, chain in fallbacks.items():
        session.execute(
            delete(PlatformFallback).where(PlatformFallback.platform_id == ids[name])
        )
        for rank, other in enumerate(chain, start=1):
            session.add(
                PlatformFallback(
                    platform_id=ids[name], rank=rank, fallback_platform_id=ids[other]
                )
            )
    session.flush()


def to_rollback_journal(path: Path) -> None:
    """What `presetdb build` ships: no WAL, so `immutable=1` readers see every row."""
    conn = sqlite3.connect(path)
    try:
        conn.execute("PRAGMA journal_mode=DELETE")
    finally:
        conn.close()


def read_repository(path: Path, read: Callable[[Repository], T]) -> T:
    """`read(repository)` over a read-only connection to the db at `path` (e.g. what a
    serving process's ledger wrote to its overlay)."""
    store = migrate.open_store(path, "ro")
    try:
        with store.read() as session:
            return read(Repository(session))
    finally:
        store.dispose()


def write_presets(path: Path, presets: Iterable[P], **provenance: Any) -> None:
    """Add presets to an existing (writable) db through its own rw connection."""
    store = migrate.open_store(path, "rw")
    try:
        with store.transaction() as session:
            repo = Repository(session)
            run = repo.add_run(
                "manual", **(provenance or {"tuned_by": "another process"})
            )
            for p in presets:
                if repo.find_kernel(p.kernel) is None:
                    repo.ensure_kernel(p.kernel, RMS_SCHEMA)
                repo.upsert_preset(
                    p.kernel,
                    p.platform,
                    run.id,
                    PresetInput(p.key, p.config, **p.timings),
                )
    finally:
        store.dispose()


def open_layers_for(
    overlay: Path | None = None,
    deployment: Path | None = None,
    default: Path | None = None,
) -> tuple[list[Layer], Any]:
    layers: list[Layer] = []
    writer = None
    if overlay is not None:
        if not overlay.exists():  # what the ledger does on its first write
            migrate.upgrade(overlay, seed_data=False)
        layer, writer = open_overlay(overlay, strict=True)
        assert layer is not None
        layers.append(layer)
    for name, path in (("deployment", deployment), ("default", default)):
        if path is not None:
            layer = open_immutable(name, path, strict=True)
            assert layer is not None
            layers.append(layer)
    return layers, writer


def build(
    *,
    overlay: Path | None = None,
    deployment: Path | None = None,
    default: Path | None = None,
    platform: str | None = H100,
    device: DeviceInfo = CPU,
    settings: Settings | None = None,
) -> Picker:
    """A Picker over exactly these files (no embedded default db unless given); `settings`
    default to the environment's."""
    layers, writer = open_layers_for(overlay, deployment, default)
    with ExitStack() as stack:
        repos = [
            Repository(stack.enter_context(layer.store.read())) for layer in layers
        ]
        info = resolve_platform(repos, override=platform, device=device)
    return Picker(layers, writer, info, settings)


def picker_factory() -> Iterator[Any]:
    """`build(...)`, closing every picker made when the test ends. Test modules register
    it as the `make_picker` fixture: ``make_picker_fixture = pytest.fixture(
    picker_factory, name="make_picker")``."""
    made: list[Picker] = []

    def factory(**kwargs: Any) -> Picker:
        picker = build(**kwargs)
        made.append(picker)
        return picker

    yield factory
    for picker in made:
        picker.close()
