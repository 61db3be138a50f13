"""What every parser produces: one `ParsedFile` header and a stream of `Row`s.

Parsers only read and reshape; they never import torch, never open the db and never
judge configs. Checks against the kernel registry live in `validate`, writes in `apply`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from presetdb._util import file_sha256, write_atomic  # noqa: F401  (re-exported: importers use them)

# How imported files are read: UTF-8, a leading byte order mark (editors on Windows add
# one) skipped; JSON itself allows no BOM, so json would refuse the file.
UTF8 = "utf-8-sig"

Format = Literal["presetdb", "vllm", "helion-cache", "helion-aot"]
FORMATS: tuple[Format, ...] = ("presetdb", "vllm", "helion-cache", "helion-aot")
SOURCES: dict[Format, str] = {
    "presetdb": "import-presetdb",
    "vllm": "import-vllm",
    "helion-cache": "import-helion-cache",
    "helion-aot": "import-helion-aot",
}

# tuning_runs columns a file may fill (the rest come from the import itself).
PROVENANCE_FIELDS = (
    "tuned_by",
    "host",
    "device_name",
    "sm_count",
    "driver_version",
    "cuda_version",
    "torch_version",
    "triton_version",
    "helion_version",
    "presetdb_version",
    "autotune_effort",
    "seed",
    "benchmark_method",
    "started_at",
    "finished_at",
)


@dataclass(frozen=True)
class Row:
    """One candidate preset as read from a file (not yet validated)."""

    index: int  # position in the file, 0-based
    where: str  # how a person finds it, e.g. "entries[3]" or "rms_norm[2]"
    kernel: str | None  # as the file names it; None when the file cannot say
    key: Mapping[str, Any] | None  # None: derive it from `shape_features`
    config: Any  # a dict when well formed; anything else is reported
    latency_ms: Any = None
    default_ms: Any = None
    reference_ms: Any = None
    configs_tried: Any = None
    tuning_seconds: Any = None
    runners_up: tuple[tuple[Any, Any], ...] = ()  # (config, latency_ms)
    shape_features: Mapping[str, Any] | None = None  # Helion AOT rows
    kernel_source_hash: str | None = None
    problems: tuple[str, ...] = ()  # found while parsing: "field: reason"
    provenance: Mapping[str, Any] | None = None  # this row's own run fields (a farm worker's)


@dataclass
class ParsedFile:
    """A file's header (what applies to every row) and its rows, read lazily."""

    path: Path
    format: Format
    sha256: str
    kernel: str | None = None  # None: per row (AOT) or from --kernel
    platform: str | None = None  # canonical name, or a device string to resolve
    platform_hint: str | None = None  # device string / hardware id, for messages
    key_schema: dict[str, Any] | None = None
    kernel_source_hash: str | None = None
    provenance: dict[str, Any] = field(default_factory=dict)
    rows: Iterator[Row] = field(default_factory=lambda: iter(()))
    warnings: list[str] = field(default_factory=list)
    layout: str | None = None  # vLLM files: current | string-keyed | per-kernel
    member: str | None = None  # per-kernel vLLM files: the platform member this part is
    specialization_key: str | None = None  # Helion cache entries: what the entry was tuned for
    # Helion .best_config files: the entry for helion_cache_entries (a
    # presetdb.store.helion_cache.CacheEntry), and whether the file also makes presets.
    cache_entry: Any = None
    presets: bool = True

    @property
    def source(self) -> str:
        return SOURCES[self.format]

    @property
    def name(self) -> str:
        return self.path.name


