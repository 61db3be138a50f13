"""Settings read from the environment. Each knob is one variable with a strict parser
that names the variable and the allowed values when it is wrong."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from platformdirs import user_cache_dir

from presetdb.errors import SettingsError

OnMiss = Literal["default", "strict", "autotune"]
ON_MISS_VALUES: tuple[OnMiss, ...] = ("default", "strict", "autotune")
Accel = Literal["auto", "0", "1"]
ACCEL_VALUES: tuple[Accel, ...] = ("auto", "0", "1")

# Every variable presetdb reads, with its meaning (docs/settings list these).
VARIABLES = {
    "PRESETDB_PATH": "deployment db, opened immutable (default: the package's embedded db)",
    "PRESETDB_USER_DB": "writable user overlay db (default: <user cache>/presetdb/overlay.db)",
    "PRESETDB_PLATFORM": "override the detected platform, e.g. nvidia_h100",
    "PRESETDB_ON_MISS": "default | strict | autotune: what a call with no stored config does",
    "PRESETDB_CACHE_DIR": "where the embedded default db and the overlay live",
    "PRESETDB_DISABLE_OVERLAY": "1 to skip the user overlay entirely (read-only deployments)",
    "PRESETDB_KERNEL_MODULES": "modules to import for their register_kernel calls (tune, import)",
    "PRESETDB_FAST_LAUNCH": "0 to launch through Triton's JITFunction.run instead of the cached kernel (default 1)",
    "PRESETDB_ACCEL": "auto | 0 | 1: fast dispatch on verified Helion/Triton versions only (auto), never, or forced",
}


def _path(name: str) -> Path | None:
    value = os.environ.get(name, "").strip()
    return Path(value).expanduser() if value else None


def _choice(name: str, allowed: tuple[str, ...], default: str) -> str:
    value = os.environ.get(name, "").strip().lower() or default
    if value not in allowed:
        raise SettingsError(f"{name}={value!r} is not valid; use one of: {', '.join(allowed)}")
    return value


def _flag(name: str, default: bool = False) -> bool:
    value = os.environ.get(name, "").strip().lower() or ("1" if default else "")
    if value in ("", "0", "false", "no", "off"):
        return False
    if value in ("1", "true", "yes", "on"):
        return True
    raise SettingsError(f"{name}={value!r} is not valid; use 1/0, true/false, yes/no or on/off")


@dataclass(frozen=True)
class Settings:
    db_path: Path | None
    user_db_path: Path
    platform: str | None
    on_miss: OnMiss
    cache_dir: Path
    disable_overlay: bool
    fast_launch: bool = True
    accel: Accel = "auto"

    @classmethod
    def from_env(cls) -> Settings:
        cache_dir = _path("PRESETDB_CACHE_DIR") or Path(user_cache_dir("presetdb"))
        return cls(
            db_path=_path("PRESETDB_PATH"),
            user_db_path=_path("PRESETDB_USER_DB") or cache_dir / "overlay.db",
            platform=os.environ.get("PRESETDB_PLATFORM", "").strip() or None,
            on_miss=_choice("PRESETDB_ON_MISS", ON_MISS_VALUES, "default"),  # type: ignore[arg-type]
            cache_dir=cache_dir,
            disable_overlay=_flag("PRESETDB_DISABLE_OVERLAY"),
            fast_launch=_flag("PRESETDB_FAST_LAUNCH", default=True),
            accel=_choice("PRESETDB_ACCEL", ACCEL_VALUES, "auto"),  # type: ignore[arg-type]
        )
