"""Small helpers every layer shares: one of each, so they cannot disagree."""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
import threading
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

HUNG = 4  # exit code of a process `hard_limit` ended: rerun it to go on


def utc_now() -> str:
    """Now, UTC, as stored in every ``*_at`` column: ``2026-12-06T15:35:58.123456Z``."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def canonical_json(value: Mapping[str, Any]) -> str:
    """Sorted-key compact JSON: the one string form of shape keys and configs (what
    `configs.sha256` hashes; the same form as vLLM's CaseKey)."""
    return json.dumps(dict(value), sort_keys=True, separators=(",", ":"))


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_atomic(path: Path, text: str) -> None:
    """Write a whole file or nothing: a uniquely named temp file in the same directory,
    fsync, rename over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; results files are shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep
# Frames of these packages sit between a user's kernel call and presetdb's warning
# (torch.ops dispatch, Helion, Triton): a warning points past all of them.
_PASS_THROUGH = ("torch", "helion", "triton")


def caller_stacklevel() -> int:
    """The `stacklevel` for a `warnings.warn` made by the function calling this: the
    first frame above it outside presetdb, torch, Helion and Triton, i.e. the user's line,
    not ``torch/_ops.py`` or presetdb's internals. Only frames are read (Python 3.11 has
    no ``skip_file_prefixes``); with no such frame (a presetdb thread), its caller."""
    inside = [_PACKAGE_DIR]
    for name in _PASS_THROUGH:
        file = getattr(sys.modules.get(name), "__file__", None)
        if file:
            inside.append(os.path.dirname(os.path.abspath(file)) + os.sep)
    prefixes = tuple(inside)
    frame: FrameType | None = sys._getframe(2)  # the caller of the function that warns: stacklevel 2
    level = 2
    while frame is not None and frame.f_code.co_filename.startswith(prefixes):
        frame = frame.f_back
        level += 1
    return level if frame is not None else 2


def warn_at_caller(message: str, category: type[Warning]) -> None:
    """`warnings.warn` pointing at the user's calling line (see `caller_stacklevel`)."""
    warnings.warn(message, category, stacklevel=caller_stacklevel())


__all__ = ["caller_stacklevel", "canonical_json", "file_sha256", "utc_now", "warn_at_caller", "write_atomic"]


@contextmanager
def hard_limit(seconds: float, give_up: Callable[[], None]) -> Iterator[None]:
    """If the block still runs after `seconds`: `give_up()` (say so, record it), then end
    the process with exit code `HUNG`. For work that can hang where no Python code runs to
    stop it (a Triton compile, a kernel): it holds the main thread, so the process must end,
    and os._exit because nothing else may run after it."""

    def fire() -> None:
        try:
            give_up()
        finally:
            os._exit(HUNG)

    timer = threading.Timer(seconds, fire)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
