"""Settings read from the environment. Each knob is one variable with a strict parser
that names the variable and the allowed values when it is wrong."""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from platformdirs import user_cache_dir

from presetdb.errors import SettingsError
from presetdb.keys import DistanceLimit

OnMiss = Literal["default", "strict", "autotune", "rerank"]
ON_MISS_VALUES: tuple[OnMiss, ...] = ("default", "strict", "autotune", "rerank")
# What a call whose best stored key is beyond the far-match guard gets (docs/coverage.md).
OnFar = Literal["default", "nearest", "rerank"]
ON_FAR_VALUES: tuple[OnFar, ...] = ("default", "nearest", "rerank")
Accel = Literal["auto", "0", "1"]
ACCEL_VALUES: tuple[Accel, ...] = ("auto", "0", "1")

# Every variable presetdb reads, with its meaning (docs/settings list these).
VARIABLES = {
    "PRESETDB_PATH": "deployment db, opened immutable (default: the package's embedded db)",
    "PRESETDB_USER_DB": "writable user overlay db (default: <user cache>/presetdb/overlay.db)",
    "PRESETDB_PLATFORM": "override the detected platform, e.g. nvidia_h100",
    "PRESETDB_ON_MISS": "default | strict | autotune | rerank: what a call with no stored config does",
    "PRESETDB_ON_FAR": "default | nearest | rerank: what a call whose nearest stored key is far gets (default: Helion's default config)",
    "PRESETDB_MAX_DISTANCE": "far-match limits, e.g. 'num_tokens=3,softmax.n=0.5,*=1' ([kernel.]field=log2 distance; inf: never far)",
    "PRESETDB_RERANK_K": "stored configs an online rerank times besides Helion's default (default 8)",
    "PRESETDB_RERANK_BUDGET_S": "seconds an online rerank may spend on one key (default 30)",
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


_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
MAX_DISTANCE_FORMAT = "comma-separated [kernel.]field=LIMIT entries (field * = every numeric field; LIMIT a log2 distance >= 0 or inf), e.g. 'num_tokens=3,softmax.n=0.5,*=1'"


def _distance_value(name: str, entry: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if math.isnan(value) or value < 0:
        raise SettingsError(f"{name}: {entry!r}: the limit must be a log2 distance >= 0 or inf; use {MAX_DISTANCE_FORMAT}")
    return value


def parse_max_distance(text: str, name: str = "PRESETDB_MAX_DISTANCE") -> tuple[DistanceLimit, ...]:
    """Parse the far-match limits of a deployment (see MAX_DISTANCE_FORMAT); a bare
    number is every field of every kernel."""
    limits: list[DistanceLimit] = []
    seen: set[tuple[str | None, str]] = set()
    for raw in text.split(","):
        entry = raw.strip()
        if not entry:
            continue
        scope: tuple[str | None, str]
        if "=" not in entry:
            scope, value = (None, "*"), _distance_value(name, entry, entry)
        else:
            left, _, right = entry.partition("=")
            target = left.strip()
            kernel, _, field = target.rpartition(".")
            bad = [part for part in (kernel, field) if part and part != "*" and not _NAME.match(part)]
            if not field or bad or kernel == "*" or (kernel == "" and "." in target):
                raise SettingsError(f"{name}: {entry!r} does not name a field; use {MAX_DISTANCE_FORMAT}")
            scope, value = (kernel or None, field), _distance_value(name, entry, right.strip())
        if scope in seen:
            raise SettingsError(f"{name}: {entry!r}: {'.'.join(p for p in scope if p)} is given twice")
        seen.add(scope)
        limits.append(DistanceLimit(scope[0], scope[1], value))
    return tuple(limits)


def _positive(name: str, default: float, *, integer: bool = False) -> float:
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = int(text) if integer else float(text)
    except ValueError:
        value = -1
    if not (value >= 0 if integer else value > 0) or (not integer and not math.isfinite(value)):
        kind = "a whole number >= 0" if integer else "a number of seconds > 0"
        raise SettingsError(f"{name}={text!r} is not valid; use {kind}")
    return value


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
    on_far: OnFar = "default"
    max_distance: tuple[DistanceLimit, ...] = ()
    rerank_k: int = 8
    rerank_budget_s: float = 30.0

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
            on_far=_choice("PRESETDB_ON_FAR", ON_FAR_VALUES, "default"),  # type: ignore[arg-type]
            max_distance=parse_max_distance(os.environ.get("PRESETDB_MAX_DISTANCE", "")),
            rerank_k=int(_positive("PRESETDB_RERANK_K", 8, integer=True)),
            rerank_budget_s=_positive("PRESETDB_RERANK_BUDGET_S", 30.0),
        )
