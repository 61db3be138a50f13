"""Re-ranking: time the stored configs of the nearest keys plus Helion's default config on
one exact shape and keep the fastest, in seconds instead of a search's minutes.

`rank_configs` is the per-shape work, shared by ``presetdb refine`` (offline, many shapes
into a results file: `presetdb.offline.refine`) and the run-time policy
``PRESETDB_ON_MISS=rerank`` / ``PRESETDB_ON_FAR=rerank`` (`online`): the first call of an
unseen (or far) key ranks the k nearest stored configs of the kernel (across keys and
the platform chain, `distinct_nearest`) and Helion's default config on that shape, within
``PRESETDB_RERANK_BUDGET_S``, stores the winner in the user overlay through the ledger
(every candidate's time kept as a runner-up) and serves it from then on.

Timing needs a GPU: on a CPU (the Triton interpreter) Helion cannot benchmark, so the
online policy falls back to the nearest stored config with one warning, unless a timer
was injected (`set_timer`; tests run the whole path with real compiles and given times).
"""

from __future__ import annotations

import json
import statistics
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from presetdb._util import utc_now
from presetdb.errors import PresetDBError
from presetdb.keys import KeyValue, canonical_key

if TYPE_CHECKING:
    from presetdb.helion.registry import RegisteredKernel
    from presetdb.runtime.picker import Choice, Picker

Timer = Callable[[Callable[[], object]], float]  # milliseconds per call
# (bound kernel, kernel args, configs) -> a compiled function or the exception, per config
CompileBatch = Callable[[Any, tuple[Any, ...], list[dict[str, Any]]], list[Any]]

DEFAULT_ORIGIN = "helion-default"
FINAL_ROUNDS = 3  # extra timings of the finalists (`final_order`)
GRAPH_METHOD = (
    "triton.testing.do_bench_cudagraph median (rep=100 ms; CUDA-graph replay: warm L2, no host "
    "time), after one warm-up call; the 3 fastest and the default re-timed 3 more times, round robin, median"
)


class RefineError(PresetDBError):
    """A refine run cannot start or a shape cannot be refined."""


@dataclass(frozen=True)
class Candidate:
    """A config to time on a shape, and where it came from (a stored key, or Helion's default)."""

    config: dict[str, Any]
    origin: str


@dataclass(frozen=True)
class RefineResult:
    entry: dict[str, Any]  # a presetdb-results/1 entry
    winner_origin: str
    failed: tuple[tuple[str, str], ...] = ()  # (origin, why) of candidates that did not run
    default_config: dict[str, Any] | None = None  # Helion's default for the shape, as timed
    # Wall seconds per phase: "compile" (on a GPU, Helion's batch compile, which also runs
    # and times each candidate once), "time" (our timer, re-timing, the PyTorch baseline),
    # "check" (the winner against the reference): where a shape's refine time went.
    phases: dict[str, float] = field(default_factory=dict)


class TimedCall:
    """One candidate bound to the shape's arguments: what a timer calls. `config` and
    `origin` let an injected timer (tests) tell the candidates apart."""

    def __init__(self, fn: Callable[..., Any], args: tuple[Any, ...], config: dict[str, Any] | None, origin: str) -> None:
        self.fn, self.args, self.config, self.origin = fn, args, config, origin

    def __call__(self) -> Any:
        return self.fn(*self.args)


def graph_timer(fn: Callable[[], object], rep: int = 100) -> float:
    """Milliseconds per call as a CUDA-graph replay: the serving condition (warm L2, no host
    time). `rep`: milliseconds of replay per measurement (benchmarks trade it for rounds)."""
    import torch
    import triton.testing

    fn()
    torch.cuda.synchronize()
    return retry_capture(lambda: float(triton.testing.do_bench_cudagraph(fn, rep=rep, return_mode="median")),
                         torch.cuda.synchronize)


CAPTURE_ATTEMPTS = 3


def retry_capture(measure: Callable[[], float], synchronize: Callable[[], object]) -> float:
    """`measure()`, again (up to CAPTURE_ATTEMPTS) when its CUDA-graph capture was
    invalidated ("operation failed due to a previous error during capture"). On an H100 one
    such capture, of a candidate that had been timed fine moments before, cost a refine
    run 3 of 27 shapes (each shape's whole ranking), and the next shapes in the same process
    ran: the context survived, the capture did not
    (benchmarks/results/nvidia_h100/seed_v2/refine_silu_mul.log). Other errors raise."""
    for _ in range(CAPTURE_ATTEMPTS - 1):
        try:
            return measure()
        except Exception as exc:  # torch.AcceleratorError / RuntimeError, by message
            if "during capture" not in str(exc):
                raise
            synchronize()
    return measure()


def distinct_nearest(ranked: Iterable[tuple[str, Mapping[str, Any]]], k: int) -> list[Candidate]:
    """The first `k` distinct configs of (origin, config) pairs ranked nearest first."""
    out: list[Candidate] = []
    seen: set[str] = set()
    for origin, config in ranked:
        if len(out) >= k:
            break
        marker = json.dumps(dict(config), sort_keys=True)
        if marker not in seen:
            seen.add(marker)
            out.append(Candidate(dict(config), origin))
    return out


def final_order(
    calls: Sequence[Callable[[], object]], times: list[float], timer: Callable[[Any], float], default: int | None
) -> list[int]:
    """Indices of `calls`, fastest first. One timing each (`times`) is noisy, so the 3
    fastest and Helion's default (index `default`) are timed FINAL_ROUNDS more times,
    round robin; their medians replace their `times` (in place) and they rank ahead of the
    calls timed once. Refine, the run-time rerank and `presetdb tune` all rank this way."""
    order = sorted(range(len(calls)), key=lambda i: times[i])
    finalists = list(dict.fromkeys([*order[:3], *([] if default is None else [default])]))
    rounds = {i: [times[i]] for i in finalists}
    for _ in range(FINAL_ROUNDS):
        for i in finalists:
            rounds[i].append(timer(calls[i]))
    for i in finalists:
        times[i] = statistics.median(rounds[i])
    return sorted(range(len(calls)), key=lambda i: (i not in rounds, times[i]))


def check_close(
    actual: Any, expected: Any, key: Mapping[str, Any], error: type[PresetDBError] = RefineError
) -> None:
    """The candidate must compute what the PyTorch reference computes; raises `error`."""
    import torch

    pairs = zip(actual, expected, strict=True) if isinstance(actual, (tuple, list)) else [(actual, expected)]
    for got, want in pairs:
        if isinstance(got, torch.Tensor):
            tol = 2e-2 if got.dtype in (torch.float16, torch.bfloat16) else 1e-3
            try:
                torch.testing.assert_close(got.float(), want.float(), atol=tol, rtol=tol)
            except AssertionError as exc:
                raise error(f"shape {canonical_key(key)}: disagrees with the reference: {exc}") from None


def _normalized(bound: Any, config: Mapping[str, Any]) -> dict[str, Any]:
    """Helion's normalized form of a stored config for this shape (raises if it does not fit)."""
    import helion

    from presetdb.helion.hooks import split_device_keys

    portable, device_only = split_device_keys(bound.config_spec, config)
    normalized = bound.config_spec.normalized_config(helion.Config(**portable))
    return {**dict(normalized.config), **device_only}


def fitted(bound: Any, config: Mapping[str, Any]) -> tuple[dict[str, Any], str]:
    """A config stored for another key, normalized for this shape and fitted to it
    (`presetdb.helion.footprint`: a persistent reduction that would spill is looped);
    the note says what the fit changed, or is "". Raises if it does not fit at all."""
    from presetdb.helion.footprint import fit_reductions

    return fit_reductions(bound.config_spec, _normalized(bound, config))


class BatchCompileWarning(UserWarning):
    """Refine's batch compile (Helion's parallel precompile) failed; candidates were
    compiled one by one instead."""


def _compile(
    bound: Any, kargs: tuple[Any, ...], configs: list[dict[str, Any]], batch: CompileBatch | None, deadline: float | None
) -> list[Any]:
    """A compiled function (or the exception) per config: `batch` (Helion's parallel
    precompile on a GPU) if given and it works, else one by one until the deadline."""
    import helion

    from presetdb.helion.hooks import split_device_keys

    # Keys this device does not know (an H100's host_tensor_descriptors on a CPU) are kept
    # in the stored config but left out of what is compiled here, as serving does.
    configs = [split_device_keys(bound.config_spec, c)[0] for c in configs]
    if batch is not None:
        try:
            return batch(bound, kargs, configs)
        except Exception as exc:  # noqa: BLE001  (fall back to compiling one by one)
            warnings.warn(
                f"presetdb: batch compile failed ({type(exc).__name__}: {exc}); compiling the "
                f"{len(configs)} candidate(s) one by one (each on its first launch, with no time limit)",
                BatchCompileWarning, stacklevel=2,
            )
    out: list[Any] = []
    for config in configs:
        if deadline is not None and out and time.perf_counter() > deadline:
            out.append(TimeoutError("over the time budget: not compiled"))
            continue
        try:
            out.append(bound.compile_config(helion.Config(**config), allow_print=False))
        except Exception as exc:  # noqa: BLE001  (a candidate that fails is left out, with its reason)
            out.append(exc)
    return out


def rank_configs(
    rk: RegisteredKernel,
    key: Mapping[str, Any],
    candidates: Sequence[Candidate],
    *,
    timer: Timer,
    device: str = "cuda",
    check: bool = True,
    bind: Callable[[tuple[Any, ...]], Any] | None = None,
    compile_batch: CompileBatch | None = None,
    deadline: float | None = None,
) -> RefineResult:
    """Time `candidates` and Helion's default config on the exact shape `key`; the
    fastest (after the 3 fastest and the default are re-timed round robin) is the entry.
    `bind` gives the hook-free Helion kernel bound for the shape's arguments, for their
    size class (default: `RegisteredKernel.bound_for`), so Helion's default and each
    candidate's normalization are those of this shape, not of one bound before it; each
    candidate is fitted to the shape first (`fitted`: no persistent reduction that would
    spill, so none that takes Triton minutes to compile). Past
    `deadline` (a perf_counter value) no more candidates are compiled or timed. Raises
    RefineError when no candidate runs and computes what the reference does."""
    clock = timer
    started = time.perf_counter()
    args = tuple(rk.example_inputs(dict(key), device))
    kargs, restore = rk.adapt_args(args)
    kargs = tuple(kargs)
    bound = (bind or rk.bound_for)(kargs)
    failed: list[tuple[str, str]] = []
    chosen: list[Candidate] = [Candidate(dict(bound.config_spec.default_config()), DEFAULT_ORIGIN)]
    seen = {json.dumps(chosen[0].config, sort_keys=True)}
    for cand in candidates:
        try:
            config, note = fitted(bound, cand.config)
        except Exception as exc:  # noqa: BLE001  (a stored config that does not fit this shape)
            failed.append((cand.origin, f"invalid here: {type(exc).__name__}: {exc}"[:300]))
            continue
        marker = json.dumps(config, sort_keys=True)
        if marker not in seen:
            seen.add(marker)
            chosen.append(Candidate(config, f"{cand.origin} ({note})" if note else cand.origin))
    compiling = time.perf_counter()
    compiled = _compile(bound, kargs, [c.config for c in chosen], compile_batch, deadline)
    timing = time.perf_counter()
    calls: list[TimedCall] = []
    times: list[float] = []
    for cand, fn in zip(chosen, compiled, strict=True):
        if isinstance(fn, BaseException):
            failed.append((cand.origin, f"compile: {type(fn).__name__}: {fn}"[:300]))
            continue
        if deadline is not None and calls and time.perf_counter() > deadline:
            failed.append((cand.origin, "over the time budget: not timed"))
            continue
        call = TimedCall(fn, kargs, cand.config, cand.origin)
        try:
            ms = clock(call)
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # noqa: BLE001
            failed.append((cand.origin, f"run: {type(exc).__name__}: {exc}"[:300]))
            continue
        calls.append(call)
        times.append(ms)
    if not calls:
        raise RefineError(f"shape {canonical_key(key)}: none of {len(chosen)} candidate(s) ran: {failed}")
    default_index = next((i for i, c in enumerate(calls) if c.origin == DEFAULT_ORIGIN), None)
    order = final_order(calls, times, clock, default_index)
    checking = time.perf_counter()
    winner = None
    wrong: set[int] = set()
    expected = rk.reference(*args) if check else None
    for i in order:
        if check:
            try:
                out = calls[i]()
                check_close(out if restore is None else restore(out), expected, key)
            except KeyboardInterrupt:
                raise
            except Exception as exc:  # noqa: BLE001  (RefineError: wrong values; anything else: it broke)
                failed.append((calls[i].origin, f"wrong result: {exc}"[:300]))
                wrong.add(i)
                continue
        winner = i
        break
    if winner is None:
        raise RefineError(f"shape {canonical_key(key)}: no candidate computed what the reference does: {failed}")
    # Every candidate was normalized against this bound kernel (`_normalized`): no second bind.
    config = _normalized(bound, calls[winner].config or {})
    runners = [{"config": calls[i].config, "latency_ms": times[i]} for i in order if i != winner and i not in wrong]
    reference = TimedCall(lambda *a: rk.baseline(*a), args, None, "reference")
    timing_reference = time.perf_counter()
    reference_ms = clock(reference)
    ended = time.perf_counter()
    phases = {
        "compile": timing - compiling,
        "time": (checking - timing) + (ended - timing_reference),
        "check": timing_reference - checking,
    }
    entry: dict[str, Any] = {
        "key": dict(key),
        "config": config,
        "latency_ms": times[winner],
        "default_ms": None if default_index is None else times[default_index],
        "reference_ms": reference_ms,
        "configs_tried": len(calls),
        "tuning_seconds": round(time.perf_counter() - started, 3),
    }
    if runners:
        entry["runners_up"] = runners
    entry = {k: v for k, v in entry.items() if v is not None}
    return RefineResult(
        entry, calls[winner].origin, tuple(failed), default_config=chosen[0].config,
        phases={name: round(seconds, 3) for name, seconds in phases.items()},
    )


# ---------------------------------------------------------------- at run time


class RerankWarning(UserWarning):
    """PRESETDB_ON_MISS/ON_FAR=rerank could not rank or store; the call carried on."""


_timer: Timer | None = None
_lock = threading.Lock()
_done: dict[tuple[str, str], dict[str, Any] | None] = {}  # (kernel, key) -> winner, None: failed
_busy: set[tuple[str, str]] = set()


def set_timer(timer: Timer | None) -> Timer | None:
    """Time online re-ranks with `timer` (None: CUDA-graph replay on a GPU, nothing on a
    CPU). Returns the previous one. CPU tests inject one that runs each real compiled
    candidate in the Triton interpreter and returns given times."""
    global _timer
    previous, _timer = _timer, timer
    return previous


def reset() -> None:
    """Forget which keys were re-ranked in this process (tests)."""
    with _lock:
        _done.clear()
        _busy.clear()


def done(kernel: str, key: str) -> dict[str, Any] | None:
    """The config this process re-ranked for (kernel, canonical key), if any."""
    return _done.get((kernel, key))


def online(
    rk: RegisteredKernel, picker: Picker, features: tuple[KeyValue, ...], choice: Choice | None
) -> dict[str, Any] | None:
    """Re-rank this key once per process: the winner's config (stored in the user overlay
    through the ledger, so later calls resolve to it exactly), or None when it cannot be
    done here (no GPU and no injected timer, another thread is at it, it failed): the
    caller falls back (warned once)."""
    from presetdb.helion.hooks import warn_once

    key = rk.key_spec.key_of(features)
    text = canonical_key(key)
    ident = (rk.name, text)
    with _lock:
        if ident in _done:
            return _done[ident]
        if ident in _busy:
            return None  # another thread ranks it; this call takes the fallback
        _busy.add(ident)
    config = None
    fallback = "the nearest stored config" if choice is not None else "Helion's default config"
    try:
        timer = _timer
        device = "cpu" if picker.info.device.vendor == "cpu" else "cuda"
        if timer is None and device == "cpu":
            warn_once(rk.name, "*", "rerank-cpu",
                      f"presetdb: rerank needs a GPU to time candidates (Helion cannot benchmark on "
                      f"{picker.info.device.device_name}); {rk.name} calls get {fallback} instead.", RerankWarning)
        else:
            config = _rank_and_store(rk, picker, key, features, timer or graph_timer, device)
    except Exception as exc:  # noqa: BLE001  (the call must still run)
        warn_once(rk.name, text, "rerank-failed",
                  f"presetdb: re-ranking {rk.name} {text} failed ({type(exc).__name__}: {exc}); "
                  f"using {fallback}.", RerankWarning)
    finally:
        with _lock:
            _busy.discard(ident)
            _done[ident] = config
    return config


def _rank_and_store(
    rk: RegisteredKernel, picker: Picker, key: dict[str, Any], features: tuple[KeyValue, ...], timer: Timer, device: str
) -> dict[str, Any]:
    from presetdb.helion.hooks import SearchResult, provenance, warn_once

    settings = picker.settings
    candidates = distinct_nearest(picker.neighbours(rk.name, rk.key_spec, features), settings.rerank_k)
    started, t0 = utc_now(), time.perf_counter()
    result = rank_configs(
        rk, key, candidates, timer=timer, device=device, deadline=t0 + settings.rerank_budget_s,
    )
    entry = result.entry
    method = (
        f"rerank at run time: the {settings.rerank_k} nearest stored configs ({picker.platform} chain, every "
        f"layer) and Helion's default, timed on the exact shape within {settings.rerank_budget_s:g} s; "
        + (GRAPH_METHOD if timer is graph_timer else "injected timer")
    )
    timings = {
        "latency_ms": entry["latency_ms"],
        "default_ms": entry.get("default_ms"),
        "reference_ms": entry.get("reference_ms"),
        "configs_tried": entry["configs_tried"],
        "tuning_seconds": entry["tuning_seconds"],
        "kernel_source_hash": rk.source_hash(),
        "candidates": tuple((r["config"], r["latency_ms"]) for r in entry.get("runners_up", ())),
    }
    run = provenance(None, "none", SearchResult(entry["config"], method=method), started, utc_now())
    run["tuned_by"] = f"presetdb rerank ({run.get('tuned_by')})"
    try:
        # Source 'autotune': the run-time source tuning_runs knows; the method says rerank.
        picker.store_result(rk.name, rk.key_spec, key, entry["config"], run, timings)
    except Exception as exc:  # noqa: BLE001  (this process still serves the winner)
        text = canonical_key(key)
        warn_once(rk.name, text, "rerank-store",
                  f"presetdb: could not store the re-ranked config of {rk.name} {text}: {exc}", RerankWarning)
    return dict(entry["config"])
