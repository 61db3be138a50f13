"""The one Helion search builder and the one provenance capture.

Both the on-miss autotune policy (`presetdb.helion.hooks`, ``PRESETDB_ON_MISS=autotune``)
and ``presetdb tune`` (`presetdb.offline.tune`) search a kernel the same way:

- `plain_kernel` turns a registered kernel's function into a plain Helion kernel. The
  registered one pins presetdb's config hook and ``autotune_effort``, which would skip the
  real search, and its hooks reach the picker (locks), which Helion's search can neither
  copy nor pickle. Seed configs (warm start) go into its ``autotune_seed_configs``.
- `build_search` builds the search Helion's ``default_autotuner_fn`` would build
  (``HELION_AUTOTUNER``, else LFBO tree search, with the effort profile's parameters)
  without Helion's cache layer: a search must search, not read a stale cache entry. An
  unknown ``HELION_AUTOTUNER`` raises `SettingsError` naming the ones Helion has, in both
  paths (Helion's own builder raises too).
- `capture_provenance` says who searched, where and with which software: the fields of
  ``tuning_runs`` (host, device, driver, CUDA, torch, triton, helion, presetdb versions,
  started/finished UTC).
"""

from __future__ import annotations

import dataclasses
import functools
import getpass
import importlib.metadata
import inspect
import os
import shutil
import socket
import subprocess
from collections.abc import Mapping, Sequence
from typing import Any

from presetdb.errors import SettingsError
from presetdb.store.models import utc_now

__all__ = [
    "build_search",
    "capture_provenance",
    "machine_provenance",
    "plain_kernel",
    "search_class",
    "utc_now",
]


def plain_kernel(
    rk: Any,
    *,
    effort: str,
    seed: int | None,
    budget_seconds: int | None,
    seed_configs: Sequence[Mapping[str, Any]] = (),
) -> Any:
    """The registered kernel's function as a hook-free Helion kernel at `effort`.
    `seed` None keeps the registered kernel's random seed; `seed_configs` (plain dicts)
    become Helion's ``autotune_seed_configs``: tried first, the space is not narrowed."""
    import helion
    from helion.runtime.settings import Settings, default_autotuner_fn

    source = rk.helion_kernel
    values = {f.name: getattr(source.settings, f.name) for f in dataclasses.fields(source.settings)}
    values.update(
        autotuner_fn=default_autotuner_fn,
        autotune_effort=effort,
        autotune_random_seed=values["autotune_random_seed"] if seed is None else seed,
        autotune_progress_bar=False,  # presetdb's progress is on screen
        autotune_budget_seconds=budget_seconds,
        autotune_seed_configs=[helion.Config(**dict(c)) for c in seed_configs] or None,
    )
    # Read at kernel creation by Helion; set it here too so a plain kernel made after the
    # variable was set (a farm worker) follows it even if the registered one did not.
    jobs = os.environ.get("HELION_AUTOTUNE_PRECOMPILE_JOBS", "").strip()
    if jobs.isdigit() and "autotune_precompile_jobs" in values:
        values["autotune_precompile_jobs"] = int(jobs)
    return helion.kernel(source.fn, settings=Settings(**values))


def search_class() -> Any:
    """The search class ``HELION_AUTOTUNER`` names (default: LFBO tree search)."""
    from helion.autotuner import LFBOTreeSearch, search_algorithms

    name = os.environ.get("HELION_AUTOTUNER", "").strip()
    if not name:
        return LFBOTreeSearch
    cls = search_algorithms.get(name)
    if cls is None:
        raise SettingsError(
            f"HELION_AUTOTUNER={name!r} is not a Helion search; Helion {_version('helion')} has "
            f"{', '.join(sorted(search_algorithms))}. Unset it for the default (LFBOTreeSearch)."
        )
    return cls


def build_search(bound: Any, args: Sequence[object]) -> Any:
    """Helion's search for `bound` (a bound plain kernel) at its settings' effort."""
    from helion.autotuner.effort_profile import get_effort_profile

    cls = search_class()
    accepted = inspect.signature(cls.__init__).parameters
    profile = get_effort_profile(bound.settings.autotune_effort)
    options = cls.get_kwargs_from_profile(profile, bound.settings)
    return cls(bound, tuple(args), **{k: v for k, v in options.items() if k in accepted})


# ---------------------------------------------------------------- provenance


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _driver_version() -> str | None:
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return out.strip().splitlines()[0] if out.strip() else None


@functools.cache
def machine_provenance(device: str = "cuda") -> dict[str, Any]:
    """This machine and its software, as the ``tuning_runs`` columns name them. `device`
    "cpu" (the Triton interpreter) records the CPU even where a GPU is present."""
    import torch

    import presetdb

    host = socket.gethostname()
    try:
        user = getpass.getuser()
    except Exception:  # noqa: BLE001  (containers without a passwd entry)
        user = "unknown"
    run: dict[str, Any] = {
        "tuned_by": f"{user}@{host}",
        "host": host,
        "device_name": "cpu",
        "torch_version": torch.__version__,
        "triton_version": _version("triton"),
        "helion_version": _version("helion"),
        "presetdb_version": presetdb.__version__,
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        index = torch.device(device).index
        props = torch.cuda.get_device_properties(torch.cuda.current_device() if index is None else index)
        run["device_name"] = props.name
        run["sm_count"] = props.multi_processor_count
        run["cuda_version"] = torch.version.cuda or getattr(torch.version, "hip", None)
        run["driver_version"] = _driver_version()
    return {k: v for k, v in run.items() if v is not None}


def capture_provenance(device: str = "cuda", **fields: Any) -> dict[str, Any]:
    """`machine_provenance` plus the run's own fields (source, autotune_effort, seed,
    benchmark_method, started_at, finished_at, ...); None values are left out."""
    run = {**machine_provenance(device), **fields}
    return {k: v for k, v in run.items() if v is not None}
