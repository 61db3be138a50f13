"""Which platform (GPU family) this process runs on, and which platforms may serve it.

The canonical name (``nvidia_h100``) comes from, in order: ``PRESETDB_PLATFORM``; the
device string looked up in the db's ``platform_aliases`` (so SKUs such as "NVIDIA H100
80GB HBM3" map to their family); a name derived from the device string. The fallback
chain is the platform itself, its ranked ``platform_fallbacks``, then other platforms of
the same vendor and compute capability.

The device is read from the torch the process already imported; this module never imports it.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from presetdb.store.repository import Repository

# Families recognised in a device string when the db has no alias for it.
_FAMILY_PATTERNS = (
    (re.compile(r"\b(gh200|h200)\b", re.IGNORECASE), "nvidia_h200"),
    (re.compile(r"\b(h100|h800)\b", re.IGNORECASE), "nvidia_h100"),
    (re.compile(r"\bb200\b", re.IGNORECASE), "nvidia_b200"),
    (re.compile(r"\b(a100|a800)\b", re.IGNORECASE), "nvidia_a100"),
    (re.compile(r"\bl40s\b", re.IGNORECASE), "nvidia_l40s"),
    (re.compile(r"\bmi300x\b", re.IGNORECASE), "amd_instinct_mi300x"),
    (re.compile(r"\bmi325x\b", re.IGNORECASE), "amd_instinct_mi325x"),
)


@dataclass(frozen=True)
class DeviceInfo:
    device_name: str  # as torch reports it, or "cpu"
    vendor: str  # "nvidia", "amd" or "cpu"
    compute_capability: str | None  # "9.0"; gfx arch on AMD
    sm_count: int | None


@dataclass(frozen=True)
class PlatformInfo:
    platform: str  # canonical requested platform
    chain: tuple[str, ...]  # platform first, then fallbacks, best first
    device: DeviceInfo
    how: str  # "PRESETDB_PLATFORM", "alias", "derived"


def detect_device() -> DeviceInfo:
    """The current accelerator as torch sees it; "cpu" without one.

    The runtime never imports torch itself: it asks the torch the process already
    imported (a process serving kernels has; `presetdb platform` imports it first)."""
    torch: Any = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available():
        return DeviceInfo("cpu", "cpu", None, None)
    props = torch.cuda.get_device_properties(torch.cuda.current_device())
    if getattr(torch.version, "hip", None):
        arch = str(getattr(props, "gcnArchName", "")).split(":")[0] or None
        return DeviceInfo(props.name, "amd", arch, props.multi_processor_count)
    return DeviceInfo(
        props.name, "nvidia", f"{props.major}.{props.minor}", props.multi_processor_count
    )


def family_names(text: str) -> list[str]:
    """Every platform family a name mentions (`nvidia_b200_h100`: two of them)."""
    return [name for pattern, name in _FAMILY_PATTERNS if pattern.search(text)]


def derive_platform_name(device_name: str) -> str:
    """A canonical-looking name for a device string no alias knows."""
    for pattern, name in _FAMILY_PATTERNS:
        if pattern.search(device_name):
            return name
    slug = re.sub(r"[^a-z0-9]+", "_", device_name.lower()).strip("_")
    return slug or "unknown"


def resolve_platform(
    repos: Sequence[Repository],
    *,
    override: str | None = None,
    device: DeviceInfo | None = None,
    detect: Callable[[], DeviceInfo] = detect_device,
) -> PlatformInfo:
    """Canonical platform and fallback chain, consulting each db (first answer wins)."""
    device = device or detect()
    platform: str | None
    if override:
        platform, how = override, "PRESETDB_PLATFORM"
    else:
        platform = next(
            (p for repo in repos if (p := repo.platform_for_alias(device.device_name))), None
        )
        how = "alias"
        if platform is None:
            platform, how = derive_platform_name(device.device_name), "derived"
    chain: list[str] = [platform]
    for repo in repos:
        for name in repo.fallbacks(platform):
            if name not in chain:
                chain.append(name)
    # Same compute capability: the device's own, or the stored one for an override.
    for repo in repos:
        record = repo.find_platform(platform)
        if override or device.vendor == "cpu":
            cc, vendor = (record.compute_capability, record.vendor) if record else (None, "")
        else:
            cc, vendor = device.compute_capability, device.vendor
        if cc is None:
            continue
        for name in repo.platforms_with_capability(cc, vendor):
            if name not in chain:
                chain.append(name)
    return PlatformInfo(platform, tuple(chain), device, how)
