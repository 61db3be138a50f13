"""Helion's local autotune cache: one ``<hash>.best_config`` file per tuned shape.

Helion 1.5 (``helion/autotuner/local_cache.py``) writes, atomically, a JSON object::

    {"config": "<Config.to_json(): a JSON *string*>",
     "key": {"type": "LooseAutotuneCacheKey",
             "fields": {"specialization_key": "...", "kernel_source_hash": "<sha256>",
                        "hardware": "NVIDIA H100 80GB HBM3", "runtime_name": "12.4",
                        "backend": "triton", "config_spec_hash": "...", ...}},  # all str()
     "flat_config": "<JSON string>", "backend_cache_key": "..."}

The file names neither the kernel nor an exact shape (the specialization key is a
``repr`` of size buckets), so the kernel comes from ``--kernel`` (or is recognised by its
source hash) and the shape key from ``--key``. Device and source hash come from the file.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from presetdb.errors import ImportValidationError
from presetdb.offline.importers.records import ParsedFile, Row, file_sha256

# A cache entry is a few kilobytes; anything far larger is not one.
MAX_BYTES = 16 << 20


def _load(path: Path) -> dict[str, Any]:
    if path.stat().st_size > MAX_BYTES:
        raise ImportValidationError(
            f"{path.name}: {path.stat().st_size} bytes is too large for a Helion cache entry"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:  # ValueError: bad JSON, huge ints
        raise ImportValidationError(
            f"{path.name}: not a Helion .best_config file (not JSON: {exc})"
        ) from None
    fields = (
        data.get("key", {}).get("fields")
        if isinstance(data, dict) and isinstance(data.get("key"), dict)
        else None
    )
    if not isinstance(fields, dict) or "config" not in data:
        raise ImportValidationError(
            f"{path.name}: not a Helion .best_config file: expected an object with 'config' and "
            "'key': {'fields': {...}} (written by Helion's LocalAutotuneCache)"
        )
    return data


def parse(path: Path, *, kernel: str | None = None, key: Mapping[str, Any] | None = None) -> ParsedFile:
    data = _load(path)
    fields: dict[str, Any] = data["key"]["fields"]
    hardware = str(fields.get("hardware", "")) or None
    runtime = str(fields.get("runtime_name", "")) or None
    parsed = ParsedFile(
        path=path,
        format="helion-cache",
        sha256=file_sha256(path),
        kernel=kernel,
        platform=None,
        platform_hint=hardware,
        kernel_source_hash=str(fields.get("kernel_source_hash", "")) or None,
        provenance={
            "device_name": hardware,
            "cuda_version": runtime,
            "benchmark_method": "Helion autotuner (local cache entry; timings not recorded)",
        },
    )
    spec_key = fields.get("specialization_key")
    parsed.specialization_key = spec_key if isinstance(spec_key, str) else None
    backend = fields.get("backend")
    if backend not in (None, "", "triton", "TritonBackend"):
        parsed.warnings.append(f"{path.name}: cache entry is for Helion backend {backend!r}")
    parsed.rows = _rows(data, kernel, key, parsed.kernel_source_hash)
    return parsed


def _rows(
    data: dict[str, Any], kernel: str | None, key: Mapping[str, Any] | None, source_hash: str | None
) -> Iterator[Row]:
    problems = []
    raw = data["config"]
    config: Any
    try:
        # Helion stores Config.to_json(), i.e. a JSON document inside a string.
        config = json.loads(raw) if isinstance(raw, str) else raw
    except json.JSONDecodeError as exc:
        config = None
        problems.append(f"config: not a JSON document ({exc})")
    if config is not None and not isinstance(config, Mapping):
        problems.append("config: not a JSON object")
    if key is None:
        spec = data["key"]["fields"].get("specialization_key", "")
        problems.append(
            "key: a Helion cache entry records no exact shape (specialization key "
            f"{str(spec)[:120]!r}); pass the shape key with --key JSON"
        )
    yield Row(0, "config", kernel, key, config, kernel_source_hash=source_hash, problems=tuple(problems))
