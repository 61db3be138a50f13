"""Per-shape work wrappers the Ray tests ship to real workers (importable there: the
test cluster puts tests/ on the workers' PYTHONPATH). Each wraps the real `ShapeTuner`
and adds one real event: a worker process that dies, a Python error, a shape that hangs."""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from presetdb.offline.farm import ShapeTask


@dataclass(frozen=True)
class DieOnce:
    """The first attempt kills its own worker process (SIGKILL) mid-task."""

    inner: Any
    marker: str

    def __call__(self, task: ShapeTask) -> dict[str, Any]:
        marker = Path(self.marker)
        if not marker.exists():
            marker.write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)
        return dict(self.inner(task))


@dataclass(frozen=True)
class FailOn:
    """A Python error for one hidden size."""

    inner: Any
    hidden: int

    def __call__(self, task: ShapeTask) -> dict[str, Any]:
        if task.key["hidden"] == self.hidden:
            raise ValueError(f"no tile fits hidden={self.hidden}")
        return dict(self.inner(task))


@dataclass(frozen=True)
class HangOn:
    """One hidden size writes its pid into `pid_file` and hangs."""

    inner: Any
    hidden: int
    pid_file: str

    def __call__(self, task: ShapeTask) -> dict[str, Any]:
        if task.key["hidden"] == self.hidden:
            Path(self.pid_file).write_text(str(os.getpid()))
            time.sleep(600)
        return dict(self.inner(task))
