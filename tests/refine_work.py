"""A timer the Ray refine tests ship to real workers (importable there: the test cluster
puts tests/ on the workers' PYTHONPATH). It runs each real compiled candidate once in the
worker's Triton interpreter and returns the time given for the candidate's origin, so the
choice shows which candidates reached the worker."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class OriginTimer:
    """`times`: (origin, ms) pairs; any other origin takes `other_ms`. Every candidate of
    a shape with `fail_tokens` rows raises (none of them runs: the shape fails)."""

    times: tuple[tuple[str, float], ...]
    other_ms: float = 9.0
    fail_tokens: int | None = None

    def __call__(self, call: Any) -> float:
        if int(call.args[0].shape[0]) == self.fail_tokens:
            raise ValueError(f"no timing for {self.fail_tokens} tokens")
        call()
        return dict(self.times).get(call.origin, self.other_ms)
