"""vLLM's Helion config files: ``vllm/kernels/helion/configs/<kernel>/<platform>.json``.

Each file is a JSON array of ``{"key": {...}, "config": {...}}`` objects; the key is a
vLLM ``CaseKey`` (compact sorted JSON, the same canonical form as presetdb's shape keys)
and ``{}`` is the kernel's default entry. The kernel comes from the directory name and
the platform from the file name (``nvidia_h100``, or a SKU slug such as
``nvidia_h100_80gb_hbm3`` that is resolved through the db's platform aliases). The files
carry no timings and no provenance.

vLLM's earlier layout (one object per kernel with string keys such as
``"hidden_size_2048_num_tokens_1"``) cannot be mapped to typed keys and is refused.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from presetdb.errors import ImportValidationError
from presetdb.offline.importers.jsonstream import JsonStream
from presetdb.offline.importers.records import ParsedFile, Row, file_sha256, write_atomic


def parse(path: Path, *, kernel: str | None = None) -> ParsedFile:
    with path.open(encoding="utf-8") as fh:
        first = JsonStream(fh, path.name).peek()
    if first != "[":
        raise ImportValidationError(
            f"{path.name}: a vLLM Helion config file is a JSON array of "
            '{"key": {...}, "config": {...}} objects (vllm/kernels/helion/configs/<kernel>/'
            "<platform>.json); this file is not. vLLM's older string-keyed layout is not "
            "supported: its keys cannot be mapped to typed shape keys."
        )
    parsed = ParsedFile(
        path=path,
        format="vllm",
        sha256=file_sha256(path),
        kernel=kernel or path.parent.name or None,
        platform=path.stem,
        platform_hint=path.stem,
    )
    parsed.rows = _rows(path, parsed.kernel)
    return parsed


def _rows(path: Path, kernel: str | None) -> Iterator[Row]:
    with path.open(encoding="utf-8") as fh:
        stream = JsonStream(fh, path.name)
        for index, item in enumerate(stream.items()):
            where = f"[{index}]"
            if not isinstance(item, Mapping):
                yield Row(index, where, kernel, None, None, problems=("entry: not an object",))
                continue
            problems = []
            extra = sorted(set(item) - {"key", "config"})
            if extra:
                problems.append(f"entry: unexpected member(s) {extra}; expected 'key' and 'config'")
            key = item.get("key")
            if not isinstance(key, Mapping):
                problems.append("key: missing or not an object ({} is the default entry)")
                key = None
            config = item.get("config")
            if not isinstance(config, Mapping):
                problems.append("config: missing or not an object")
            yield Row(index, where, kernel, key, config, problems=tuple(problems))
        stream.end()


def dumps(entries: Sequence[tuple[Mapping[str, Any], Mapping[str, Any]]]) -> str:
    """vLLM's layout: an indented array, one {"key", "config"} object per entry."""
    items = [{"key": dict(key), "config": dict(config)} for key, config in entries]
    return json.dumps(items, indent=2, allow_nan=False) + "\n"


def write(
    out_dir: Path, kernel: str, platform: str, entries: Sequence[tuple[Mapping[str, Any], Mapping[str, Any]]]
) -> Path:
    """Write ``out_dir/<kernel>/<platform>.json`` atomically; returns its path."""
    path = out_dir / kernel / f"{platform}.json"
    write_atomic(path, dumps(entries))
    return path
