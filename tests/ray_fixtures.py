"""A real local Ray cluster for the farm tests. Without Ray they are skipped with the
install command, except in CI (CI=true), where a missing Ray fails them."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from presetdb.offline.farm import FARM_INSTALL

TESTS = Path(__file__).resolve().parent


def require_ray() -> Any:
    """The ray module; at a test module's import, a skip (or a CI failure) without it."""
    try:
        import ray
    except ImportError:  # pragma: no cover - depends on the install
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI must run the farm tests: Ray is missing ({FARM_INSTALL})", pytrace=False)
        pytest.skip(f"Ray is not installed: {FARM_INSTALL}", allow_module_level=True)
    return ray


@contextmanager
def local_cluster(gpus: int = 2, gpu_type: str = "H200", pythonpath: Sequence[Path] = ()) -> Iterator[dict[str, float]]:
    """A cluster on this machine: 2 CPUs and `gpus` fake GPUs of `gpu_type`; its workers
    run the Triton interpreter and import modules from tests/ (the work wrappers) and
    `pythonpath` (e.g. a user's kernel module)."""
    ray = require_ray()
    path = os.pathsep.join(str(p) for p in (TESTS, *pythonpath))
    ray.init(
        num_cpus=2,
        num_gpus=gpus,
        resources={f"accelerator_type:{gpu_type}": gpus},
        include_dashboard=False,
        object_store_memory=80 * 1024 * 1024,
        logging_level="warning",
        runtime_env={"env_vars": {"PYTHONPATH": path, "TRITON_INTERPRET": "1"}},
    )
    try:
        yield dict(ray.cluster_resources())
    finally:
        ray.shutdown()
