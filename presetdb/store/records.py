"""The frozen records the repository returns (and `PresetInput`, what it takes), and how a
config is content-addressed. Plain dataclasses: no Session, no SQLAlchemy objects escape
the store."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Literal

from presetdb._util import canonical_json


def canonical_config(config: Mapping[str, Any]) -> str:
    """Sorted-key compact JSON of a Helion config: what `configs.sha256` hashes."""
    return canonical_json(config)


def config_sha256(config: Mapping[str, Any]) -> str:
    return hashlib.sha256(canonical_config(config).encode()).hexdigest()


# ---------------------------------------------------------------- records


@dataclass(frozen=True)
class KernelRecord:
    id: int
    name: str
    key_schema: dict[str, Any]
    description: str


@dataclass(frozen=True)
class PlatformRecord:
    id: int
    name: str
    vendor: str
    device_name: str
    compute_capability: str | None
    sm_count: int | None


@dataclass(frozen=True)
class RunRecord:
    id: int
    source: str
    source_file: str | None
    source_sha256: str | None
    revision: str | None
    tuned_by: str | None
    host: str | None
    device_name: str | None
    sm_count: int | None
    driver_version: str | None
    cuda_version: str | None
    torch_version: str | None
    triton_version: str | None
    helion_version: str | None
    presetdb_version: str | None
    autotune_effort: str | None
    seed: int | None
    benchmark_method: str | None
    started_at: str | None
    finished_at: str | None
    imported_at: str
    source_path: str | None = None
    source_rev: str | None = None


RUN_FIELDS = tuple(f for f in RunRecord.__dataclass_fields__ if f not in ("id", "imported_at"))


@dataclass(frozen=True)
class PresetRecord:
    """One stored preset with the provenance a user needs to trust it."""

    id: int
    kernel: str
    platform: str
    shape_key: str
    config_json: str
    config_sha256: str
    status: str
    latency_ms: float | None
    default_ms: float | None
    reference_ms: float | None
    configs_tried: int | None
    tuning_seconds: float | None
    kernel_source_hash: str | None
    run_id: int
    source: str
    device_name: str | None
    helion_version: str | None
    tuned_at: str | None
    revision: str | None
    created_at: str
    status_reason: str | None = None
    superseded_by: int | None = None
    verified: bool = True
    source_position: int | None = None
    source_key: str | None = None  # key and config as the source file wrote them
    source_config: str | None = None
    source_path: str | None = None
    source_rev: str | None = None

    @cached_property
    def config(self) -> dict[str, Any]:
        # Parsed on first use: loading 10,000 rows must not parse 10,000 configs.
        return json.loads(self.config_json)

    @cached_property
    def key(self) -> dict[str, Any]:
        return json.loads(self.shape_key)


@dataclass(frozen=True)
class CandidateRecord:
    rank: int
    config_json: str
    latency_ms: float | None


@dataclass(frozen=True)
class MissRecord:
    kernel: str
    platform: str
    features: str
    reason: str
    count: int
    first_seen_at: str
    last_seen_at: str


@dataclass(frozen=True)
class NearMissRecord:
    """Calls of one requested key served by one stored key that was not an exact match of
    the call's own platform (see models.PresetNearMiss)."""

    kernel: str
    platform: str
    requested_key: str
    served_platform: str
    served_key: str
    match: str
    layer: str
    distances: str  # JSON {"field": log2 distance}
    distance: float | None
    far: bool
    far_fields: str  # JSON {"field": [distance, limit]}
    count: int
    first_seen_at: str
    last_seen_at: str


UpsertOutcome = Literal["added", "superseded", "unchanged"]


@dataclass(frozen=True)
class UpsertResult:
    outcome: UpsertOutcome
    preset_id: int
    replaced_id: int | None = None


@dataclass(frozen=True)
class PresetInput:
    """What one preset needs to be stored (timings optional)."""

    shape_key: Mapping[str, Any]
    config: Mapping[str, Any]
    latency_ms: float | None = None
    default_ms: float | None = None
    reference_ms: float | None = None
    configs_tried: int | None = None
    tuning_seconds: float | None = None
    kernel_source_hash: str | None = None
    candidates: Sequence[tuple[Mapping[str, Any], float | None]] = field(default_factory=tuple)
    # False: the kernel was not registered at import (config syntax checked, not compiled)
    verified: bool = True
    # Where the row stood in its source file and its key/config text with the file's
    # field order (compact JSON), for byte-faithful export; None when not from such a file.
    source_position: int | None = None
    source_key: str | None = None
    source_config: str | None = None
