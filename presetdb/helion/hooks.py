"""Which config a call gets: the stored one, or what the miss policy says.

One `Resolution` is computed per call (features -> picker -> token) and shared by
Helion's two hooks through a per-thread slot: ``key=`` returns its token and
``autotuner_fn=`` builds a `PresetConfigSearch` from it. The search validates and
compiles the stored config; a row that fails is quarantined and the call falls back to
the miss policy (``PRESETDB_ON_MISS``):

- ``default``  Helion's default config; one `PresetMissWarning` per (kernel, key); the
               miss is counted in the picker's ledger;
- ``strict``   `PresetMissError` naming kernel, platform, features and nearest keys;
- ``autotune`` Helion's real autotuner (or an injected search, see
               `set_autotune_search`) for that key; the result is stored in the user
               overlay with provenance, so the next process reuses it.
"""

from __future__ import annotations

import getpass
import inspect
import math
import os
import socket
import threading
import time
import warnings
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

import helion
import helion.exc
from helion.autotuner.base_search import BaseAutotuner

from presetdb.errors import (  # the warnings are re-exported: their old import path
    AutotuneWarning,
    PresetMissError,
    PresetMissWarning,
    QuarantineWarning,
)
from presetdb.keys import KeyValue, canonical_key
from presetdb.runtime.picker import Choice, Picker, get_picker
from presetdb.settings import OnMiss, Settings
from presetdb.store.models import utc_now

if TYPE_CHECKING:
    from presetdb.helion.registry import RegisteredKernel

DEFAULT_TOKEN = "default"  # key= answer for misses served by Helion's default config




@dataclass(frozen=True, slots=True)
class Resolution:
    """What one call resolved to. `token` is what Helion's key= hook returns."""

    features: tuple[KeyValue, ...]
    choice: Choice | None
    token: Hashable


class RetryResolution(Exception):
    """Internal: a hook quarantined the stored config; resolve the call again."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _CallSlot(threading.local):
    """The resolution of the presetdb call in flight on this thread."""

    def __init__(self) -> None:
        self.kernel: object | None = None
        self.args: tuple[object, ...] | None = None
        self.resolution: Resolution | None = None


CALL_SLOT = _CallSlot()


def slot_resolution(kernel: object, args: tuple[object, ...]) -> Resolution | None:
    """The resolution stored for exactly these argument objects, if any."""
    slot = CALL_SLOT
    stored = slot.args
    if slot.kernel is not kernel or stored is None or len(stored) != len(args):
        return None
    for a, b in zip(stored, args, strict=True):
        if a is not b:
            return None
    return slot.resolution


# ---------------------------------------------------------------- policy and warnings

_policy: tuple[Picker | None, OnMiss] = (None, "default")
_warned: set[tuple[str, str, str]] = set()
_warn_lock = threading.Lock()


def policy_for(picker: Picker) -> OnMiss:
    """PRESETDB_ON_MISS, read once per picker (reset_picker() re-reads it)."""
    global _policy
    cached, policy = _policy
    if cached is not picker:
        policy = Settings.from_env().on_miss
        _policy = (picker, policy)
    return policy


def warn_once(kernel: str, key: str, kind: str, message: str, category: type[Warning]) -> bool:
    """Warn once per (kernel, shape key, kind) for the life of the process."""
    with _warn_lock:
        if (kernel, key, kind) in _warned:
            return False
        _warned.add((kernel, key, kind))
    warnings.warn(message, category, stacklevel=4)  # the kernel call's caller
    return True


def reset_warnings() -> None:
    """Forget which warnings were given (tests)."""
    with _warn_lock:
        _warned.clear()


def miss_error(rk: RegisteredKernel, picker: Picker, features: tuple[KeyValue, ...], why: str = "") -> PresetMissError:
    key = rk.key_spec.key_of(features)
    nearest = picker.nearest_keys(rk.name, rk.key_spec, features)
    return PresetMissError(
        f"{rk.name}: no stored config for {canonical_key(key)} on platform {picker.platform} "
        f"(searched {', '.join(picker.chain) or picker.platform}){why}; nearest stored keys: "
        f"{', '.join(nearest) if nearest else 'none'}. PRESETDB_ON_MISS=strict: tune this key "
        f"(`presetdb tune {rk.name}`) and import the results, or set PRESETDB_ON_MISS=default "
        "or autotune.",
        kernel=rk.name,
        platform=picker.platform,
        features=key,
        nearest=nearest,
    )


def miss_token(rk: RegisteredKernel, picker: Picker, features: tuple[KeyValue, ...], why: str = "") -> Hashable:
    """A call the store cannot serve: apply the policy's bookkeeping, return its token."""
    policy = policy_for(picker)
    if policy == "strict":
        raise miss_error(rk, picker, features, why)
    key = rk.key_spec.key_of(features)
    picker.record_miss(rk.name, key, "no-match" if not why else "quarantined")
    if policy == "autotune":
        # One Helion bound kernel per missed key, so each key is tuned for itself.
        return ("autotune", features)
    text = canonical_key(key)
    warn_once(
        rk.name, text, "miss",
        f"presetdb: {rk.name} has no stored config for {text} on {picker.platform}{why}; "
        "running Helion's default config (slow). Tune and import this key, or set "
        "PRESETDB_ON_MISS=autotune to tune it locally.",
        PresetMissWarning,
    )
    return DEFAULT_TOKEN


def resolve(
    rk: RegisteredKernel, picker: Picker, features: tuple[KeyValue, ...], *, record: bool = True
) -> Resolution:
    """The resolution of a call. `record=False` (introspection) applies no policy
    bookkeeping: no miss counted, no warning, no strict-mode error."""
    choice = picker.resolve(rk.name, rk.key_spec, features)
    if choice is not None:
        return Resolution(features, choice, choice.preset.config_sha256)
    if record:
        return Resolution(features, None, miss_token(rk, picker, features))
    autotune = policy_for(picker) == "autotune"
    return Resolution(features, None, ("autotune", features) if autotune else DEFAULT_TOKEN)


def quarantine(rk: RegisteredKernel, picker: Picker, choice: Choice, reason: str) -> None:
    """Stop serving a stored row that failed; warn once for it.

    A failure seen on the CPU (the Triton interpreter, which lacks some GPU features) of a
    config stored for a GPU says little about that GPU: such a quarantine stays in this
    process and is not written to the user overlay."""
    on_cpu = picker.info.device.vendor == "cpu"
    picker.quarantine(choice, reason, persist=not (on_cpu and choice.platform != "cpu"))
    preset = choice.preset
    warn_once(
        rk.name, preset.shape_key, f"quarantine:{preset.config_sha256}",
        f"presetdb: stored config for {rk.name} {preset.shape_key} on {choice.platform} "
        f"({choice.layer} db, preset {preset.id}) failed and is quarantined: {reason}. "
        "The call falls back to the miss policy.",
        QuarantineWarning,
    )


# ---------------------------------------------------------------- the autotuner hook


class PresetConfigSearch(BaseAutotuner):
    """Helion's autotuner slot, answered from the store instead of by searching."""

    def __init__(self, rk: RegisteredKernel, bound: Any, args: tuple[object, ...], resolution: Resolution) -> None:
        self.rk = rk
        self.bound = bound
        self.args = args
        self.resolution = resolution

    def autotune(self, *, skip_cache: bool = False) -> helion.Config:
        return config_for(self.rk, self.bound, self.args, self.resolution)


def split_device_keys(spec: Any, config: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """(keys this device's ConfigSpec supports, backend keys it cannot check here).

    A config tuned on an H100 may carry keys such as ``host_tensor_descriptors`` that
    Helion refuses on a CPU or an older GPU. Serving it there means leaving them out."""
    from helion.autotuner.config_spec import BACKEND_SPECIFIC_KEYS  # type: ignore[import-untyped]

    items = dict(config.config if isinstance(config, helion.Config) else config)
    device_only = {
        k: v for k, v in items.items()
        if k in BACKEND_SPECIFIC_KEYS and not spec.supports_config_key(k)
    }
    return {k: v for k, v in items.items() if k not in device_only}, device_only


def config_for(rk: RegisteredKernel, bound: Any, args: tuple[object, ...], res: Resolution) -> helion.Config:
    picker = get_picker()
    if res.choice is not None:
        try:
            portable, _ = split_device_keys(bound.config_spec, res.choice.config)
            config = bound.config_spec.normalized_config(portable)
            bound.compile_config(config, allow_print=False)  # codegen now: a bad row fails here
            return config
        except Exception as exc:
            if not isinstance(exc, helion.exc.InvalidConfig) and not _default_compiles(bound):
                raise  # the kernel cannot compile at all: not this row's fault
            reason = f"{type(exc).__name__}: {exc}"[:500]
            quarantine(rk, picker, res.choice, reason)
            if CALL_SLOT.kernel is rk:
                raise RetryResolution(reason) from exc  # presetdb re-resolves the call
            token = miss_token(rk, picker, res.features, why=" (stored config quarantined)")
            return miss_config(rk, bound, args, picker, res.features, token)
    return miss_config(rk, bound, args, picker, res.features, res.token)


def _default_compiles(bound: Any) -> bool:
    try:
        bound.compile_config(bound.config_spec.default_config(), allow_print=False)
    except Exception:  # noqa: BLE001  (any failure of a stored row)
        return False
    return True


def miss_config(
    rk: RegisteredKernel, bound: Any, args: tuple[object, ...], picker: Picker,
    features: tuple[KeyValue, ...], token: Hashable,
) -> helion.Config:
    if isinstance(token, tuple) and token[:1] == ("autotune",):
        return autotune_and_store(rk, bound, args, picker, features)
    return bound.config_spec.default_config()


# ---------------------------------------------------------------- PRESETDB_ON_MISS=autotune


@dataclass(frozen=True)
class SearchResult:
    """What a search found for one key. Timings in milliseconds; None when unmeasured."""

    config: dict[str, Any]
    latency_ms: float | None = None
    default_ms: float | None = None
    configs_tried: int | None = None
    candidates: tuple[tuple[dict[str, Any], float | None], ...] = field(default_factory=tuple)
    method: str = ""
    seed: int | None = None


# (bound kernel, args, effort) -> SearchResult
SearchFn = Callable[[Any, tuple[object, ...], str], SearchResult]
_search_fn: SearchFn | None = None


def set_autotune_search(fn: SearchFn | None) -> SearchFn | None:
    """Replace the search PRESETDB_ON_MISS=autotune runs (None: Helion's autotuner).
    Returns the previous one. Tests on CPU inject a search that compiles real
    candidate configs in the Triton interpreter, where Helion cannot benchmark."""
    global _search_fn
    previous, _search_fn = _search_fn, fn
    return previous


def helion_search(bound: Any, args: tuple[object, ...], effort: str) -> SearchResult:
    """Helion's own autotuner (HELION_AUTOTUNER or LFBOTreeSearch) at `effort`."""
    from helion.autotuner import LFBOTreeSearch, search_algorithms
    from helion.autotuner.effort_profile import get_effort_profile

    name = os.environ.get("HELION_AUTOTUNER", "").strip()
    cls: Any = search_algorithms.get(name, LFBOTreeSearch) if name else LFBOTreeSearch
    accepted = inspect.signature(cls.__init__).parameters
    options = cls.get_kwargs_from_profile(get_effort_profile(effort), bound.settings)  # type: ignore[arg-type]
    search = cls(bound, args, **{k: v for k, v in options.items() if k in accepted})
    config = search.autotune(skip_cache=True)
    best = float(getattr(search, "best_perf_so_far", math.inf))
    metrics = getattr(search, "_autotune_metrics", None)
    default_ms = None
    if bound.env.device.type == "cuda":
        default_ms = _bench_ms(bound.compile_config(bound.config_spec.default_config(), allow_print=False), args)
    return SearchResult(
        config=dict(config.config),
        latency_ms=best if math.isfinite(best) and best > 0 else None,
        default_ms=default_ms,
        configs_tried=getattr(metrics, "num_configs_tested", None),
        method=f"helion {cls.__name__}, effort {effort}; default config: triton do_bench median",
        seed=getattr(bound.settings, "autotune_random_seed", None),
    )


def _bench_ms(fn: Callable[..., Any], args: tuple[object, ...]) -> float | None:
    from triton.testing import do_bench

    value = float(do_bench(lambda: fn(*args), return_mode="median"))
    return value if value > 0 else None


def provenance(bound: Any, effort: str, result: SearchResult, started: str, finished: str) -> dict[str, Any]:
    """tuning_runs fields describing this machine and software."""
    import torch
    import triton

    import presetdb
    from presetdb.runtime.platforms import detect_device

    device = detect_device()
    host = socket.gethostname()
    try:
        user = getpass.getuser()
    except Exception:  # noqa: BLE001  (containers without a passwd entry)
        user = "unknown"
    return {
        "tuned_by": f"{user}@{host}",
        "host": host,
        "device_name": device.device_name,
        "sm_count": device.sm_count,
        "cuda_version": torch.version.cuda or getattr(torch.version, "hip", None),
        "torch_version": torch.__version__,
        "triton_version": triton.__version__,
        "helion_version": _version("helion"),
        "presetdb_version": presetdb.__version__,
        "autotune_effort": effort,
        "seed": result.seed,
        "benchmark_method": result.method or None,
        "started_at": started,
        "finished_at": finished,
    }


def _version(package: str) -> str | None:
    try:
        return version(package)
    except PackageNotFoundError:
        return None


def _positive(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) and value > 0 else None


def autotune_and_store(
    rk: RegisteredKernel, bound: Any, args: tuple[object, ...], picker: Picker, features: tuple[KeyValue, ...]
) -> helion.Config:
    """Search this key now; store the winner in the user overlay; return it."""
    key = rk.key_spec.key_of(features)
    text = canonical_key(key)
    effort = rk.autotune_effort
    search = _search_fn or helion_search
    started, t0 = utc_now(), time.perf_counter()
    try:
        from presetdb.offline.tune import plain_kernel  # here: keeps `import presetdb.kernels` light

        # Search a hook-free copy of the kernel: Helion's search copies and pickles the
        # bound kernel's settings, and presetdb's key=/autotuner_fn= hooks cannot be.
        searched = plain_kernel(rk, effort=effort, seed=None, budget_seconds=None).bind(args)
        result = search(searched, args, effort)
        config = bound.config_spec.normalized_config(result.config)
    except Exception as exc:  # noqa: BLE001  (the call must still run)
        warn_once(rk.name, text, "autotune-failed",
                  f"presetdb: autotuning {rk.name} {text} failed ({type(exc).__name__}: {exc}); "
                  "using Helion's default config.", AutotuneWarning)
        return bound.config_spec.default_config()
    seconds = time.perf_counter() - t0
    timings = {
        "latency_ms": _positive(result.latency_ms),
        "default_ms": _positive(result.default_ms),
        "configs_tried": result.configs_tried,
        "tuning_seconds": seconds,
        "kernel_source_hash": rk.source_hash(),
        "candidates": tuple((dict(c), _positive(ms)) for c, ms in result.candidates),
    }
    try:
        picker.store_result(
            rk.name, rk.key_spec, key, dict(result.config),
            provenance(bound, effort, result, started, utc_now()), timings,
        )
    except Exception as exc:  # noqa: BLE001  (the call still gets the tuned config)
        warn_once(rk.name, text, "autotune-store",
                  f"presetdb: could not store the autotuned config of {rk.name} {text}: {exc}",
                  AutotuneWarning)
    return config
