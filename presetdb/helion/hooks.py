"""Which config a call gets when the store has no usable row, and Helion's hooks.

`serve` turns the picker's answer into what runs: the stored config, or what the miss
policy (``PRESETDB_ON_MISS``, read once per picker) says:

- ``default``  Helion's default config; one `PresetMissWarning` per (kernel, key); the
               miss is counted in the ledger;
- ``strict``   `PresetMissError` naming kernel, platform, features and nearest keys;
- ``autotune`` Helion's real autotuner (or an injected search, see
               `set_autotune_search`) for that key; the result is stored in the user
               overlay through the ledger, so the next process reuses it;
- ``rerank``   the k nearest stored configs and Helion's default timed on the key's shape
               (`presetdb.helion.rerank`), the winner stored in the overlay likewise.

A stored key beyond the far-match guard (`Choice.far`) follows ``PRESETDB_ON_FAR``, one
`FarMatchWarning` per (kernel, key) saying which field is how far:

- ``default``  (the default) Helion's default config: a config tuned 16x away ran at
               0.20x of Helion's default on an H100 (docs/coverage.md);
- ``nearest``  the far stored config anyway;
- ``rerank``   as the miss policy ``rerank``; without a GPU, the far stored config.

Every call served by anything but an exact key of its own platform is counted in the
near-miss ledger: here (`Choice.tally`) and, for calls the call memo serves, by the
memo's entry (`memo_entry`). An exact match pays one attribute test.

Helion's ``key=``/``autotuner_fn=`` hooks (`key_hook`, `PresetConfigSearch`) serve the
same answers to anyone who calls the registered Helion kernel directly (tuning scripts):
they resolve from the call's own arguments, so no state passes between them.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import helion
import helion.exc
from helion.autotuner.base_search import BaseAutotuner

from presetdb._util import utc_now, warn_at_caller
from presetdb.errors import (  # the warnings are re-exported: their old import path
    AutotuneWarning,
    PresetMissError,
    PresetMissWarning,
    QuarantineWarning,
)
from presetdb.helion import autotune
from presetdb.helion._accel import internals
from presetdb.helion.args import size_class
from presetdb.keys import KeyValue, canonical_key
from presetdb.runtime.picker import Choice, Picker, get_picker
from presetdb.settings import OnMiss

if TYPE_CHECKING:
    from presetdb.helion.registry import RegisteredKernel

DEFAULT_TOKEN = "default"  # the token of Helion's default config
NOTHING: Any = object()  # default_output: the default config could not run the call either




class FarMatchWarning(UserWarning):
    """The nearest stored key is beyond the far-match guard (PRESETDB_MAX_DISTANCE)."""


@dataclass(frozen=True, slots=True)
class Served:
    """What runs for one call: a stored row (`choice`), else `config` (None: Helion's
    default config). `token` names the config kernel that runs it; `far` is a far match
    that was not served (PRESETDB_ON_FAR=default or rerank)."""

    choice: Choice | None
    token: Hashable
    config: dict[str, Any] | None = None
    far: Choice | None = None


@dataclass(frozen=True, slots=True)
class Resolution:
    """What a call resolves to, for introspection and Helion's key= hook: the stored row
    that runs (`choice`), else `config` (None: Helion's default), and a far match that
    was not served (`far`)."""

    features: tuple[KeyValue, ...]
    choice: Choice | None
    token: Hashable
    config: dict[str, Any] | None = None
    far: Choice | None = None


# ---------------------------------------------------------------- policy and warnings

_warned: set[tuple[str, str, str]] = set()
_warn_lock = threading.Lock()


def policy_for(picker: Picker) -> OnMiss:
    """PRESETDB_ON_MISS, as read when the picker was built (reset_picker() re-reads it)."""
    return picker.settings.on_miss


def warn_once(kernel: str, key: str, kind: str, message: str, category: type[Warning]) -> bool:
    """Warn once per (kernel, shape key, kind) for the life of the process."""
    with _warn_lock:
        if (kernel, key, kind) in _warned:
            return False
        _warned.add((kernel, key, kind))
    warn_at_caller(message, category)  # the kernel call's caller
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


def serve(
    rk: RegisteredKernel, picker: Picker, features: tuple[KeyValue, ...], choice: Choice | None, why: str = "",
    args: tuple[Any, ...] | None = None,
) -> Served:
    """What runs for a call (kernel-body `args`) the picker answered with `choice` (None: a miss)."""
    if choice is not None:
        tally = choice.tally
        if tally is None:  # an exact key of the call's own platform
            return Served(choice, choice.preset.config_sha256)
        tally.hit()
        if not choice.far_fields:
            return Served(choice, choice.preset.config_sha256)
        return serve_far(rk, picker, features, choice)
    policy = policy_for(picker)
    if policy == "strict":
        raise miss_error(rk, picker, features, why)
    key = rk.key_spec.key_of(features)
    picker.record_miss(rk.name, key, "no-match" if not why else "quarantined")
    if policy == "autotune":
        config = autotune_and_store(rk, picker, features, args)
        if config is not None:
            return Served(None, ("autotune", canonical_key(key)), config)
    if policy == "rerank":
        from presetdb.helion import rerank

        config = rerank.online(rk, picker, features, None)
        if config is not None:
            return Served(None, ("rerank", canonical_key(key)), config)
    text = canonical_key(key)
    warn_once(
        rk.name, text, "miss",
        f"presetdb: {rk.name} has no stored config for {text} on {picker.platform}{why}; "
        "running Helion's default config (slow). Tune and import this key, or set "
        "PRESETDB_ON_MISS=autotune to tune it locally.",
        PresetMissWarning,
    )
    return Served(None, DEFAULT_TOKEN)


def serve_far(rk: RegisteredKernel, picker: Picker, features: tuple[KeyValue, ...], choice: Choice) -> Served:
    """A far match (counted already): what PRESETDB_ON_FAR says, warned once per key."""
    policy = picker.settings.on_far
    text = canonical_key(rk.key_spec.key_of(features))
    where = (f"presetdb: {rk.name} {text} on {picker.platform}: no stored key is within every "
             f"limit; the nearest, {choice.preset.shape_key} ({choice.platform}), is {choice.far_text()}")
    if policy == "rerank":
        from presetdb.helion import rerank

        config = rerank.online(rk, picker, features, choice)
        if config is not None:
            return Served(None, ("rerank", text), config, far=choice)
        policy = "nearest"  # no GPU, busy or failed: warned by rerank
    if policy == "nearest":
        warn_once(rk.name, text, "far",
                  f"{where}; serving it anyway (PRESETDB_ON_FAR=nearest). Tune or refine this key "
                  "(`presetdb queue` lists such keys).", FarMatchWarning)
        return Served(choice, choice.preset.config_sha256)
    warn_once(rk.name, text, "far",
              f"{where}; running Helion's default config instead (PRESETDB_ON_FAR=default). Tune or "
              "refine this key (`presetdb queue` lists such keys), or set PRESETDB_ON_FAR=rerank.",
              FarMatchWarning)
    return Served(None, DEFAULT_TOKEN, far=choice)


def memo_run(choice: Choice, run: Callable[..., Any]) -> Callable[..., Any]:
    """What the call memo runs for `choice`: `run` itself for an exact match (untouched
    hot path), one that counts each call first for a near miss (the near-miss ledger)."""
    tally = choice.tally
    if tally is None:
        return run
    hit = tally.hit

    def counted(*args: Any) -> Any:
        hit()
        return run(*args)

    return counted


def resolve(
    rk: RegisteredKernel, picker: Picker, features: tuple[KeyValue, ...], *, record: bool = True
) -> Resolution:
    """The resolution of a call. `record=False` (introspection) applies no policy
    bookkeeping: no miss or near miss counted, no warning, no strict-mode error, no search."""
    choice = picker.resolve(rk.name, rk.key_spec, features)
    if record:
        served = serve(rk, picker, features, choice)
        return Resolution(features, served.choice, served.token, served.config, served.far)
    if choice is not None and (not choice.far_fields or picker.settings.on_far == "nearest"):
        return Resolution(features, choice, choice.preset.config_sha256)
    text = canonical_key(rk.key_spec.key_of(features))
    policy = picker.settings.on_far if choice is not None else policy_for(picker)
    if policy == "rerank":
        from presetdb.helion import rerank

        config = rerank.done(rk.name, text)
        if config is not None:
            return Resolution(features, None, ("rerank", text), config, choice)
        if choice is not None:  # not re-ranked here (yet): the far config is what would run
            return Resolution(features, choice, choice.preset.config_sha256)
    if choice is None and policy == "autotune":
        return Resolution(features, None, ("autotune", text))
    return Resolution(features, None, DEFAULT_TOKEN, None, choice)


def quarantine(rk: RegisteredKernel, picker: Picker, choice: Choice, reason: str) -> None:
    """Stop serving a stored row that failed; warn once for it.

    A failure seen on the CPU (the Triton interpreter, which lacks some GPU features) of a
    config stored for a GPU says little about that GPU: such a quarantine stays in this
    process and is not written to the user overlay."""
    on_cpu = picker.info.device.vendor == "cpu"
    picker.quarantine(choice, reason, persist=not (on_cpu and choice.platform != "cpu"))
    preset = choice.preset
    rk.forget_config(preset.config_sha256)
    warn_once(
        rk.name, preset.shape_key, f"quarantine:{preset.config_sha256}",
        f"presetdb: stored config for {rk.name} {preset.shape_key} on {choice.platform} "
        f"({choice.layer} db, preset {preset.id}) failed and is quarantined: {reason}. "
        "The call falls back to the miss policy.",
        QuarantineWarning,
    )


def default_output(rk: RegisteredKernel, args: tuple[Any, ...]) -> Any:
    """Run the call with Helion's default config; NOTHING if that fails too."""
    try:
        return rk.config_kernel(DEFAULT_TOKEN, None, args)(*args)
    except Exception:  # noqa: BLE001  (the caller re-raises the stored config's error)
        return NOTHING


def split_device_keys(spec: Any, config: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """(keys this device's ConfigSpec supports, backend keys it cannot check here).

    A config tuned on an H100 may carry keys such as ``host_tensor_descriptors`` that
    Helion refuses on a CPU or an older GPU. Serving it there means leaving them out."""
    items = dict(config.config if isinstance(config, helion.Config) else config)
    backend_keys = internals.backend_specific_keys()
    device_only = {k: v for k, v in items.items() if k in backend_keys and not spec.supports_config_key(k)}
    return {k: v for k, v in items.items() if k not in device_only}, device_only


# ---------------------------------------------------------------- Helion's own hooks


def key_hook(rk: RegisteredKernel, args: tuple[Any, ...]) -> Hashable:
    """``key=``: a direct call of the registered Helion kernel gets one compiled kernel
    per stored config (its sha256), per miss policy otherwise; Helion's default config
    per size class (`presetdb.helion.args.size_class`), so it is the default for the
    call's sizes rather than for the first call Helion bound."""
    token = resolve(rk, get_picker(), rk.features_of_kernel_args(args), record=False).token
    return (token, size_class(args)) if token == DEFAULT_TOKEN else token


class PresetConfigSearch(BaseAutotuner):
    """``autotuner_fn=``: Helion's autotuner slot, answered from the store."""

    def __init__(self, rk: RegisteredKernel, bound: Any, args: tuple[object, ...]) -> None:
        self.rk = rk
        self.bound = bound
        self.args = args

    def autotune(self, *, skip_cache: bool = False) -> helion.Config:
        return config_for(self.rk, self.bound, self.args)


def config_for(rk: RegisteredKernel, bound: Any, args: tuple[object, ...]) -> helion.Config:
    """The config Helion's hook hands to `bound`: the stored one if it compiles, else
    (quarantined) what the miss policy says."""
    picker = get_picker()
    features = rk.features_of_kernel_args(args)
    choice = picker.resolve(rk.name, rk.key_spec, features)
    why = ""
    if choice is not None and choice.far_fields:
        served = serve(rk, picker, features, choice, args=args)
        if served.choice is None:  # PRESETDB_ON_FAR: Helion's default or a re-ranked config
            if served.config is not None:
                return bound.config_spec.normalized_config(served.config)
            return bound.config_spec.default_config()
    if choice is not None:
        try:
            portable, _ = split_device_keys(bound.config_spec, choice.config)
            config = bound.config_spec.normalized_config(portable)
            bound.compile_config(config, allow_print=False)  # codegen now: a bad row fails here
            return config
        except Exception as exc:
            if not isinstance(exc, helion.exc.InvalidConfig) and not _default_compiles(bound):
                raise  # the kernel cannot compile at all: not this row's fault
            quarantine(rk, picker, choice, f"{type(exc).__name__}: {exc}"[:500])
            why = " (stored config quarantined)"
    served = serve(rk, picker, features, None, why=why, args=args)
    if served.config is not None:
        return bound.config_spec.normalized_config(served.config)
    return bound.config_spec.default_config()


def _default_compiles(bound: Any) -> bool:
    try:
        bound.compile_config(bound.config_spec.default_config(), allow_print=False)
    except Exception:  # noqa: BLE001  (any failure of a stored row)
        return False
    return True


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
    search = autotune.build_search(bound, args)
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
        method=f"helion {type(search).__name__}, effort {effort}; default config: triton do_bench median",
        seed=getattr(bound.settings, "autotune_random_seed", None),
    )


def _bench_ms(fn: Callable[..., Any], args: tuple[object, ...]) -> float | None:
    from triton.testing import do_bench

    value = float(do_bench(lambda: fn(*args), return_mode="median"))
    return value if value > 0 else None


def provenance(bound: Any, effort: str, result: SearchResult, started: str, finished: str) -> dict[str, Any]:
    """tuning_runs fields describing this machine and software (`bound` None: the
    current device)."""
    if bound is not None:
        device = bound.env.device.type
    else:
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    return autotune.capture_provenance(
        device,
        autotune_effort=effort,
        seed=result.seed,
        benchmark_method=result.method or None,
        started_at=started,
        finished_at=finished,
    )


def _positive(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) and value > 0 else None


def autotune_and_store(
    rk: RegisteredKernel, picker: Picker, features: tuple[KeyValue, ...], args: tuple[Any, ...] | None = None
) -> dict[str, Any] | None:
    """Search this key now (on the call's arguments, else example inputs); store the winner in the user
    overlay through the ledger; return it (None: the search failed, warned)."""
    key = rk.key_spec.key_of(features)
    text = canonical_key(key)
    effort = rk.autotune_effort
    search = _search_fn or helion_search
    if search is helion_search:
        autotune.search_class()  # an unknown HELION_AUTOTUNER is a setup error: raised, not warned
    started, t0 = utc_now(), time.perf_counter()
    try:
        # Search a hook-free copy of the kernel: Helion's search copies and pickles the
        # bound kernel's settings, and presetdb's key=/autotuner_fn= hooks cannot be.
        if args is None:
            device = "cuda" if picker.info.device.vendor != "cpu" else "cpu"
            args = rk.prepare_args(*rk.example_inputs(key, device=device))
        searched = autotune.plain_kernel(rk, effort=effort, seed=None, budget_seconds=None).bind(args)
        result = search(searched, args, effort)
        config = dict(searched.config_spec.normalized_config(result.config).config)
    except Exception as exc:  # noqa: BLE001  (the call must still run)
        warn_once(rk.name, text, "autotune-failed",
                  f"presetdb: autotuning {rk.name} {text} failed ({type(exc).__name__}: {exc}); "
                  "using Helion's default config.", AutotuneWarning)
        return None
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
            provenance(searched, effort, result, started, utc_now()), timings,
        )
    except Exception as exc:  # noqa: BLE001  (the call still gets the tuned config)
        warn_once(rk.name, text, "autotune-store",
                  f"presetdb: could not store the autotuned config of {rk.name} {text}: {exc}",
                  AutotuneWarning)
    return config
