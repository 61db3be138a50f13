"""Helion's AOT autotuning data: ``tuned_configs_<hardware_id>.json``.

Helion 1.5 (``helion/autotuner/aot_cache.py``, collect mode) writes one object keyed by
Helion kernel name; each value is a list of::

    {"config": {...}, "timing_ms": 0.012 | null,
     "shape_key": {"kernel_name": "rms_norm", "specialization_key": [...],
                   "hardware_id": "cuda_NVIDIA_H100_80GB_HBM3_12.4"},
     "kernel_source_file": "/path/kernels.py",
     "shape_features": {"arg0_ndim": 2, "arg0_dim0": 128, "arg0_dtype": "torch.bfloat16", ...},
     "tensor_hashes": [[...], [...], [...]]}

``hardware_id`` is ``<device kind>_<device name, spaces as _>_<runtime version>``. The
shape key is derived later from ``shape_features`` by the kernel's own key spec (see
`validate`), or given with ``--key`` for a one-entry file. Collect mode records each
config it tuned for a shape; when one shape (same specialization and shape features)
appears more than once the fastest is kept.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from presetdb.errors import ImportValidationError
from presetdb.offline.importers.jsonstream import JsonStream
from presetdb.offline.importers.records import UTF8, ParsedFile, Row, file_sha256

FILE_PATTERN = re.compile(r"^tuned_configs_(?P<hw>.+)\.json$")
_KINDS = ("cuda", "rocm", "xpu", "tpu", "mtia", "cpu")


def split_hardware_id(hardware_id: str) -> tuple[str, str, str]:
    """(device kind, device name, runtime version) from Helion's hardware id."""
    kind, _, rest = hardware_id.partition("_")
    if kind not in _KINDS or not rest:
        return ("", hardware_id.replace("_", " "), "")
    name, _, runtime = rest.rpartition("_")
    if not name:
        return (kind, rest.replace("_", " "), "")
    return (kind, name.replace("_", " "), runtime)


def _scan(path: Path) -> tuple[list[str], str | None]:
    """Kernel names and the first hardware id, streaming past the entries."""
    kernels: list[str] = []
    hardware: str | None = None
    with path.open(encoding=UTF8) as fh:
        stream = JsonStream(fh, path.name)
        if stream.peek() != "{":
            raise ImportValidationError(
                f"{path.name}: a Helion AOT tuned_configs file is a JSON object keyed by kernel name"
            )
        for name in stream.members():
            kernels.append(name)
            if stream.peek() != "[":
                stream.value()
                continue
            for entry in stream.items():
                if hardware is None and isinstance(entry, Mapping):
                    shape_key = entry.get("shape_key")
                    if isinstance(shape_key, Mapping) and isinstance(shape_key.get("hardware_id"), str):
                        hardware = shape_key["hardware_id"]
        stream.end()
    return kernels, hardware


def parse(path: Path, *, kernel: str | None = None, key: Mapping[str, Any] | None = None) -> ParsedFile:
    kernels, hardware = _scan(path)
    match = FILE_PATTERN.match(path.name)
    hardware = hardware or (match.group("hw") if match else None)
    kind, device, runtime = split_hardware_id(hardware) if hardware else ("", "", "")
    parsed = ParsedFile(
        path=path,
        format="helion-aot",
        sha256=file_sha256(path),
        kernel=kernel,
        platform=None,
        platform_hint=device or hardware,
        provenance={
            "device_name": device or None,
            "cuda_version": runtime or None,
            "benchmark_method": "Helion AOT collect (timing_ms as measured by Helion's autotuner)",
        },
    )
    if kind and kind not in ("cuda", "rocm"):
        parsed.warnings.append(f"{path.name}: tuned on device kind {kind!r}")
    if len(kernels) > 1 and kernel is not None:
        parsed.warnings.append(
            f"{path.name}: holds kernels {kernels}; --kernel {kernel} imports only the matching one"
        )
    parsed.rows = _rows(path, key)
    return parsed


def _shape_id(entry: Mapping[str, Any]) -> str:
    # Features hold the exact sizes; with dynamic shapes Helion's specialization key
    # buckets sizes, so it alone would merge different shapes.
    return json.dumps([entry.get("shape_key"), entry.get("shape_features")], sort_keys=True, default=str)


def _rows(path: Path, key: Mapping[str, Any] | None) -> Iterator[Row]:
    with path.open(encoding=UTF8) as fh:
        stream = JsonStream(fh, path.name)
        index = 0
        for name in stream.members():
            if stream.peek() != "[":
                stream.value()
                yield Row(
                    index, name, name, None, None, problems=(f"{name}: expected a list of tuned configs",)
                )
                index += 1
                continue
            # Fastest entry per Helion shape; memory grows with distinct shapes only.
            best: dict[str, tuple[int, Mapping[str, Any]]] = {}
            bad: list[Row] = []
            for position, entry in enumerate(stream.items()):
                where = f"{name}[{position}]"
                if not isinstance(entry, Mapping):
                    bad.append(Row(index, where, name, None, None, problems=("entry: not an object",)))
                    index += 1
                    continue
                shape = _shape_id(entry)
                kept = best.get(shape)
                if kept is None or _faster(entry, kept[1]):
                    best[shape] = (position, entry)
            yield from bad
            for position, entry in sorted(best.values(), key=lambda item: item[0]):
                yield _row(index, f"{name}[{position}]", name, entry, key)
                index += 1
        stream.end()


def _faster(entry: Mapping[str, Any], kept: Mapping[str, Any]) -> bool:
    new, old = entry.get("timing_ms"), kept.get("timing_ms")
    if not isinstance(new, (int, float)):
        return False
    return not isinstance(old, (int, float)) or new < old


def _row(index: int, where: str, name: str, entry: Mapping[str, Any], key: Mapping[str, Any] | None) -> Row:
    problems = []
    config = entry.get("config")
    if not isinstance(config, Mapping):
        problems.append("config: missing or not an object")
    if "cute_structural_policy" in entry:
        problems.append("cute_structural_policy: CuTe structural configs are not supported")
    features = entry.get("shape_features")
    if key is None and not isinstance(features, Mapping):
        problems.append("shape_features: missing; pass the shape key with --key JSON")
    return Row(
        index=index,
        where=where,
        kernel=name,
        key=key,
        config=config,
        latency_ms=entry.get("timing_ms"),
        shape_features=features if isinstance(features, Mapping) else None,
        problems=tuple(problems),
    )
