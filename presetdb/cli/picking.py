"""The layers a question is asked of: `presetdb pick` and `presetdb coverage` ask the
picker that serving uses, for a platform they name, over the run-time layers or one file.

Nothing here imports torch: the platform is given, so no device is detected, and its
fallback chain comes from the stored platform record, as for PRESETDB_PLATFORM.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from presetdb._text import quoted
from presetdb.errors import UnknownKernelError, UnknownPlatformError
from presetdb.store.engine import parse_target
from presetdb.store.repository import Repository


def picker_for(db: str | None, platform: str) -> Any:
    """A picker for `platform` over the run-time layers (user overlay > $PRESETDB_PATH >
    embedded default), or over the file or registry `db` alone (as the deployment layer)."""
    from presetdb.runtime.layers import open_immutable
    from presetdb.runtime.picker import Picker, build_picker
    from presetdb.runtime.platforms import resolve_platform
    from presetdb.settings import Settings

    if db is None:
        settings = Settings.from_env()
        # The run-time layers, as PRESETDB_PLATFORM=platform would see them. An overlay
        # that does not exist yet holds nothing: a question does not create one.
        skip = settings.disable_overlay or not settings.user_db_path.exists()
        settings = dataclasses.replace(settings, platform=platform, disable_overlay=skip)
        return build_picker(settings, device=_platform_given())
    layer = open_immutable("deployment", parse_target(db), strict=True)
    assert layer is not None  # strict: raises instead
    with layer.store.read() as session:
        info = resolve_platform([Repository(session)], override=platform, device=_platform_given())
    return Picker([layer], None, info)


def _platform_given() -> Any:
    from presetdb.runtime.platforms import DeviceInfo

    return DeviceInfo("(not detected: platform given)", "cpu", None, None)


def stored_key_schema(picker: Any, kernel: str) -> dict[str, Any]:
    """The stored key schema of `kernel` from the first layer that has one."""
    known: set[str] = set()
    for layer in picker.layers:
        with layer.store.read() as session:
            repo = Repository(session)
            record = repo.find_kernel(kernel)
            if record is not None and record.key_schema.get("fields"):
                return record.key_schema
            known |= {k.name for k in repo.list_kernels()}
    where = ", ".join(f"{layer.name} {layer.path}" for layer in picker.layers) or "no usable db"
    raise UnknownKernelError(
        f"unknown kernel {quoted(kernel)}; known kernels: {', '.join(sorted(known)) or '(none)'} "
        f"(searched: {where})"
    )


def check_platform(picker: Any, platform: str) -> None:
    """UnknownPlatformError (listing the known ones) unless a layer has `platform`."""
    known: set[str] = set()
    for layer in picker.layers:
        with layer.store.read() as session:
            repo = Repository(session)
            if repo.find_platform(platform) is not None:
                return
            known |= {p.name for p in repo.list_platforms()}
    raise UnknownPlatformError(
        f"unknown platform {quoted(platform)}; known platforms: {', '.join(sorted(known)) or '(none)'}"
    )
