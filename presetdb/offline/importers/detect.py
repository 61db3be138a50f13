"""Which format a file is in (``--format auto``), and the one entry point to parse it.

Detection reads the file name and at most the first 64 KiB: Helion names its cache files
``*.best_config`` and its AOT data ``tuned_configs_*.json``; presetdb results say
``"format": "presetdb-results/1"`` near the top; a vLLM config file is a JSON array.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from presetdb.errors import ImportValidationError
from presetdb.offline.importers import helion_aot, helion_cache, presetdb_results, vllm
from presetdb.offline.importers.records import FORMATS, Format, ParsedFile

_HEAD_BYTES = 1 << 16


def detect_format(path: Path) -> Format:
    if path.suffix == ".best_config":
        return "helion-cache"
    if helion_aot.FILE_PATTERN.match(path.name):
        return "helion-aot"
    with path.open("rb") as fh:
        head = fh.read(_HEAD_BYTES).decode("utf-8", errors="replace")
    stripped = head.lstrip()
    if stripped.startswith("["):
        return "vllm"
    if stripped.startswith("{"):
        if presetdb_results.FORMAT_PREFIX in head:
            return "presetdb"
        if '"shape_key"' in head and '"specialization_key"' in head:
            return "helion-aot"
        if '"fields"' in head and '"config"' in head:
            return "helion-cache"
    raise ImportValidationError(
        f"{path.name}: cannot tell its format (expected a presetdb-results/1 file, a vLLM "
        "configs/<kernel>/<platform>.json array, a Helion *.best_config or a Helion "
        f"tuned_configs_*.json); pass --format ({'|'.join(FORMATS)})."
    )


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
        return vllm.parse(path, kernel=kernel)
    if chosen == "helion-cache":
        return helion_cache.parse(path, kernel=kernel, key=key)
    return helion_aot.parse(path, kernel=kernel, key=key)
