"""Which format a file is in (``--format auto``), and the entry points to parse files
and directories.

Detection reads the file name and at most the first 64 KiB: Helion names its cache files
``*.best_config`` and its AOT data ``tuned_configs_*.json``; presetdb results say
``"format": "presetdb-results/1"`` near the top; a vLLM config file is a JSON array, or
(vLLM's older layouts) an object whose first member is a string key (``default``,
``hidden_size_2048_...``) or a platform name. A directory is a vLLM ``configs/`` tree.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from presetdb.errors import ImportValidationError
from presetdb.offline.importers import helion_aot, helion_cache, presetdb_results, vllm
from presetdb.offline.importers.records import FORMATS, UTF8, Format, ParsedFile

_HEAD_BYTES = 1 << 16
_FIRST_MEMBER = re.compile(r'\s*\{\s*"([^"\\]*)"\s*:')
_PLATFORM_NAME = re.compile(r"(nvidia|amd|intel|cpu)(_[a-z0-9]+)*\Z")


def detect_format(path: Path) -> Format:
    if path.suffix == ".best_config":
        return "helion-cache"
    if helion_aot.FILE_PATTERN.match(path.name):
        return "helion-aot"
    with path.open("rb") as fh:
        # A byte order mark is skipped (UTF8), then the whitespace JSON allows before a value.
        head = fh.read(_HEAD_BYTES).decode(UTF8, errors="replace").lstrip()
    if head.startswith("["):
        return "vllm"
    if head.startswith("{"):
        if presetdb_results.FORMAT_PREFIX in head:
            return "presetdb"
        if '"shape_key"' in head and '"specialization_key"' in head:
            return "helion-aot"
        if '"fields"' in head and '"config"' in head:
            return "helion-cache"
        first = _FIRST_MEMBER.match(head)
        if first and (_is_string_key(first.group(1)) or _PLATFORM_NAME.match(first.group(1))):
            return "vllm"
    raise ImportValidationError(
        f"{path.name}: cannot tell its format (expected a presetdb-results/1 file, a vLLM "
        "configs/<kernel>/<platform>.json (array or string-keyed) or configs/<kernel>.json, "
        "a Helion *.best_config or a Helion "
        f"tuned_configs_*.json); pass --format ({'|'.join(FORMATS)})."
    )


def _is_string_key(name: str) -> bool:
    try:
        vllm.parse_string_key(name)
    except ValueError:
        return False
    return True


def parse_paths(
    paths: Sequence[Path],
    fmt: str = "auto",
    *,
    kernel: str | None = None,
    key: Mapping[str, Any] | None = None,
) -> list[ParsedFile]:
    """Every kernel x platform part of `paths`: files, vLLM ``configs/`` trees (a
    directory), per-kernel vLLM files (one part per platform). Headers now, rows lazily."""
    out: list[ParsedFile] = []
    for path in map(Path, paths):
        if path.is_dir():
            if fmt not in ("auto", "vllm"):
                raise ImportValidationError(f"{path}: a directory is read as a vLLM configs/ tree; drop --format {fmt}")
            if kernel is not None:
                raise ImportValidationError(
                    f"{path}: --kernel applies to one file; a tree names each kernel by its directory"
                )
            for file in vllm.tree_files(path):
                out.extend(vllm.parse(file))
            continue
        chosen = detect_format(path) if fmt == "auto" and path.is_file() else fmt
        if chosen == "vllm" and path.is_file():
            if key is not None:
                raise ImportValidationError(
                    f"{path.name}: --key applies to Helion cache/AOT files only; vllm files carry their keys"
                )
            out.extend(vllm.parse(path, kernel=kernel))
        else:
            out.append(parse_file(path, fmt, kernel=kernel, key=key))
    return out


def parse_file(
    path: Path,
    fmt: str = "auto",
    *,
    kernel: str | None = None,
    key: Mapping[str, Any] | None = None,
) -> ParsedFile:
    """Parse `path` (header now, rows lazily). `kernel` and `key` are the --kernel and
    --key overrides; formats whose files name them refuse a contradicting override."""
    path = Path(path)
    if not path.is_file():
        raise ImportValidationError(f"{path}: no such file")
    chosen = detect_format(path) if fmt == "auto" else fmt
    if chosen not in FORMATS:
        raise ImportValidationError(f"unknown format {fmt!r}; use auto or one of: {', '.join(FORMATS)}")
    if key is not None and chosen in ("presetdb", "vllm"):
        raise ImportValidationError(
            f"{path.name}: --key applies to Helion cache/AOT files only; {chosen} files carry their keys"
        )
    if chosen == "presetdb":
        parsed = presetdb_results.parse(path)
        if kernel is not None and kernel != parsed.kernel:
            raise ImportValidationError(
                f"{path.name}: --kernel {kernel} contradicts the file's kernel {parsed.kernel!r}"
            )
        return parsed
    if chosen == "vllm":
        parts = vllm.parse(path, kernel=kernel)
        if len(parts) != 1:
            raise ImportValidationError(
                f"{path.name}: holds {len(parts)} platforms (vLLM's per-kernel layout); use parse_paths"
            )
        return parts[0]
    if chosen == "helion-cache":
        return helion_cache.parse(path, kernel=kernel, key=key)
    return helion_aot.parse(path, kernel=kernel, key=key)
