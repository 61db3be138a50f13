"""Helion's local autotune cache: one ``<cache key>.best_config`` file per tuned shape.

What an entry is, and how it is checked, lives in `presetdb.store.helion_cache` (the
Helion remote-cache backend, `presetdb.helion.remote_cache`, uses the same code): a JSON
object with Helion's ``Config.to_json()`` string under ``config`` and the cache key's
fields (hardware, kernel source hash, specialization, config spec hash, ...) under
``key.fields``.

A file becomes up to two things:

- a row of ``helion_cache_entries`` under the file's cache key (its name, as Helion
  writes it): what any plain ``@helion.kernel`` on the remote-cache backend reads back.
  A file under another name keeps no cache entry (the key is a hash of Helion objects
  and cannot be rebuilt from the file), and says so;
- a preset, when ``--key`` names the shape: the file records no exact shape (the
  specialization key is a ``repr`` of size buckets). The kernel comes from ``--kernel``
  or is recognised by Helion's source hash. Without ``--key`` a file named by its cache
  key imports as a cache entry only.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from presetdb.errors import ImportValidationError
from presetdb.offline.importers.records import UTF8, ParsedFile, Row, file_sha256
from presetdb.store import helion_cache
from presetdb.store.helion_cache import MAX_ENTRY_CHARS, config_of, is_cache_key, read_payload

MAX_BYTES = MAX_ENTRY_CHARS


def _load(path: Path) -> tuple[str, dict[str, Any]]:
    if path.stat().st_size > MAX_BYTES:
        raise ImportValidationError(
            f"{path.name}: {path.stat().st_size} bytes is too large for a Helion cache entry"
        )
    try:
        text = path.read_text(encoding=UTF8)
    except UnicodeDecodeError as exc:
        raise ImportValidationError(f"{path.name}: not a Helion .best_config file (not UTF-8: {exc})") from None
    return text, read_payload(text, path.name)


def parse(path: Path, *, kernel: str | None = None, key: Mapping[str, Any] | None = None) -> ParsedFile:
    text, data = _load(path)
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
    entry_problems: list[str] = []
    if is_cache_key(path.stem):
        try:
            parsed.cache_entry = helion_cache.parse_entry(path.stem, text, where=path.name)
        except ImportValidationError as exc:
            lines = [q.removeprefix(f"{path.name}: ") for q in exc.problems]
            if key is None:  # only the entry was asked for: its problems are the file's
                raise ImportValidationError(
                    f"{path.name}: not a usable Helion cache entry; nothing was written",
                    [f"{path.name}: row 1 (config): {line}" for line in lines],
                ) from None
            # Reported as the row's problems (config_of's own are reported there anyway).
            known = set(config_of(data)[1])
            entry_problems = [line for line in lines if line not in known]
    else:
        parsed.warnings.append(
            f"{path.name}: not named by a Helion cache key (<64 hex digits>.best_config), so no "
            "Helion cache entry is kept for it (the remote-cache backend could not find it)"
        )
    if key is None and parsed.cache_entry is not None:
        parsed.presets = False  # a cache entry only: no shape key, no preset
        return parsed
    parsed.rows = _rows(data, kernel, key, parsed.kernel_source_hash, entry_problems)
    return parsed


def _rows(
    data: dict[str, Any],
    kernel: str | None,
    key: Mapping[str, Any] | None,
    source_hash: str | None,
    entry_problems: list[str],
) -> Iterator[Row]:
    config, problems = config_of(data)
    problems += entry_problems
    if key is None:
        spec = data["key"]["fields"].get("specialization_key", "")
        problems.append(
            "key: a Helion cache entry records no exact shape (specialization key "
            f"{str(spec)[:120]!r}); pass the shape key with --key JSON"
        )
    yield Row(0, "config", kernel, key, config, kernel_source_hash=source_hash, problems=tuple(problems))
