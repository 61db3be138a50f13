"""``presetdb tune``: run Helion's real autotuner per shape and record the results.

For each shape key the tuner builds the kernel's example inputs, runs a *search* (by
default Helion's own autotuner at the requested effort, bypassing presetdb's config hook
and Helion's local cache so every shape is really searched), then measures the winning
config, Helion's default config and the PyTorch reference with one *timer* (by default the
median of ``triton.testing.do_bench`` after warm-up). Runners-up are re-measured with the
same timer so every number in the file is comparable; the three fastest and the default
are timed three more times, round robin, and the fastest median is stored.

The results file (presetdb-results/1) is rewritten atomically after every shape, so a
run can be stopped at any time: shapes already in the file are skipped when the same
command runs again, and Ctrl-C keeps every finished shape. Search and timer are
injectable; on a CPU (``TRITON_INTERPRET=1``) `sample_search` and `cpu_timer` stand in
for Helion's search and ``do_bench``, which need a GPU.
"""

from __future__ import annotations

import dataclasses
import functools
import getpass
import importlib.metadata
import itertools
import json
import math
import random
import shutil
import socket
import statistics
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from presetdb import __version__
from presetdb.errors import TuneError  # re-exported: its old import path
from presetdb.keys import canonical_key, parse_key
from presetdb.offline.importers import presetdb_results
from presetdb.runtime.platforms import derive_platform_name

EFFORTS = ("quick", "full")
DO_BENCH_METHOD = (
    "triton.testing.do_bench median (warmup=25 ms, rep=100 ms), after one warm-up call; "
    "the 3 fastest and the default re-timed 3 more times, round robin, median"
)
FINAL_ROUNDS = 3  # extra timings of the finalists


# ---------------------------------------------------------------- shapes


def _scalar(text: str) -> int | float | bool | str:
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text.strip()


def parse_grid(spec: str) -> list[dict[str, Any]]:
    """``'dtype=bfloat16;hidden=2048,4096;num_tokens=1,16'`` -> the cartesian product."""
    axes: list[tuple[str, list[Any]]] = []
    for part in filter(None, (p.strip() for p in spec.split(";"))):
        name, sep, values = part.partition("=")
        if not sep or not name.strip() or not values.strip():
            raise TuneError(f"--grid: {part!r} is not NAME=V1,V2,... (e.g. 'hidden=2048,4096')")
        axes.append((name.strip(), [_scalar(v) for v in values.split(",") if v.strip()]))
    if not axes:
        raise TuneError("--grid is empty; e.g. 'dtype=bfloat16;hidden=2048,4096;num_tokens=1,16'")
    names = [a[0] for a in axes]
    if len(set(names)) != len(names):
        raise TuneError(f"--grid names a field twice: {names}")
    return [dict(zip(names, combo, strict=True)) for combo in itertools.product(*(a[1] for a in axes))]


def load_shapes(path: Path) -> list[dict[str, Any]]:
    """A JSON array of shape keys, ``{"shapes": [...]}``, or one JSON key per line."""
    text = Path(path).read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        data = [parse_key(line) for line in text.splitlines() if line.strip()]
    if isinstance(data, dict) and "shapes" in data:
        data = data["shapes"]
    if not isinstance(data, list) or not all(isinstance(k, dict) for k in data):
        raise TuneError(f'{path}: expected a JSON array of shape keys, e.g. [{{"hidden": 4096}}]')
    return data


# ---------------------------------------------------------------- search and timing


@dataclass(frozen=True)
class SearchRequest:
    kernel: Any  # the registered kernel (docs/CONTRACTS.md)
    plain: Any  # a helion.Kernel of the same function without presetdb's hooks
    key: dict[str, Any]
    args: tuple[Any, ...]
    effort: str
    seed: int
    budget_seconds: int | None


@dataclass(frozen=True)
class SearchOutcome:
    config: dict[str, Any]
    configs_tried: int | None = None
    runners_up: tuple[dict[str, Any], ...] = ()  # best first, without the winner


Search = Callable[[SearchRequest], SearchOutcome]
Timer = Callable[[Callable[[], object]], float]  # milliseconds


def plain_kernel(rk: Any, *, effort: str, seed: int | None, budget_seconds: int | None) -> Any:
    """The registered kernel's function as a plain Helion kernel: the registered one pins
    presetdb's config hook and ``autotune_effort``, which would skip the real search, and
    its hooks reach the picker (locks), which Helion's search cannot copy or pickle.
    `seed` None keeps the registered kernel's seed."""
    import helion
    from helion.runtime.settings import Settings, default_autotuner_fn

    source = rk.helion_kernel
    values = {f.name: getattr(source.settings, f.name) for f in dataclasses.fields(source.settings)}
    values.update(
        autotuner_fn=default_autotuner_fn,
        autotune_effort=effort,
        autotune_random_seed=values["autotune_random_seed"] if seed is None else seed,
        autotune_progress_bar=False,  # ours is on screen
        autotune_budget_seconds=budget_seconds,
    )
    return helion.kernel(source.fn, settings=Settings(**values))


def _helion_search_object(bound: Any, args: tuple[Any, ...]) -> Any:
    """The search Helion's ``default_autotuner_fn`` would build (``HELION_AUTOTUNER``,
    else LFBO tree search, with the effort profile's parameters), without the cache layer
    around it: a tune run must search, not read a stale local cache entry."""
    import inspect
    import os

    from helion.autotuner import LFBOTreeSearch, search_algorithms
    from helion.autotuner.effort_profile import get_effort_profile

    name = os.environ.get("HELION_AUTOTUNER", "")
    cls = search_algorithms.get(name) if name else LFBOTreeSearch
    if cls is None:
        raise TuneError(f"HELION_AUTOTUNER={name!r}: unknown; Helion has {', '.join(search_algorithms)}")
    accepted = inspect.signature(cls.__init__).parameters
    profile = get_effort_profile(bound.settings.autotune_effort)
    kwargs = {k: v for k, v in cls.get_kwargs_from_profile(profile, bound.settings).items() if k in accepted}
    return cls(bound, args, **kwargs)


def helion_search(request: SearchRequest) -> SearchOutcome:
    """Helion's search at the request's effort (see `_helion_search_object`); records
    every measured config to report runners-up."""
    bound = request.plain.bind(request.args)
    search = _helion_search_object(bound, request.args)
    measured: list[tuple[float, dict[str, Any]]] = []
    benchmark_batch = search.benchmark_batch

    def recording(configs: Any, *args: Any, **kwargs: Any) -> Any:
        results = benchmark_batch(configs, *args, **kwargs)
        for r in results:
            if getattr(r, "status", "ok") == "ok" and math.isfinite(r.perf):
                measured.append((float(r.perf), dict(r.config)))
        return results

    search.benchmark_batch = recording
    winner = dict(search.autotune(skip_cache=True))
    metrics = getattr(search, "_autotune_metrics", None)
    tried = getattr(metrics, "num_configs_tested", None) or len(measured)
    return SearchOutcome(winner, int(tried), _runners_up(winner, measured))


def _runners_up(
    winner: Mapping[str, Any], measured: Iterable[tuple[float, dict[str, Any]]], limit: int = 10
) -> tuple[dict[str, Any], ...]:
    seen = {json.dumps(dict(winner), sort_keys=True)}
    out: list[dict[str, Any]] = []
    for _, config in sorted(measured, key=lambda item: item[0]):
        text = json.dumps(config, sort_keys=True)
        if text not in seen:
            seen.add(text)
            out.append(config)
        if len(out) >= limit:
            break
    return tuple(out)


def sample_search(count: int = 3, timer: Timer | None = None) -> Search:
    """A small real search: Helion's default config plus `count - 1` random valid configs
    from the kernel's ConfigSpec, each compiled and timed; the fastest wins. Runs under
    ``TRITON_INTERPRET=1`` on a CPU (Helion's own search needs a GPU)."""

    def search(request: SearchRequest) -> SearchOutcome:
        bound = request.plain.bind(request.args)
        spec = bound.config_spec
        rng = random.Random(request.seed)
        candidates = [spec.default_config()]
        generation = spec.create_config_generation()
        state = random.getstate()
        random.seed(rng.random())  # Helion's random configs use the global generator
        try:
            for _ in range(count * 4):
                if len(candidates) >= count:
                    break
                config = generation.random_config()
                if all(dict(config) != dict(c) for c in candidates):
                    candidates.append(config)
        finally:
            random.setstate(state)
        clock = timer or cpu_timer()
        measured = []
        for config in candidates:
            try:
                fn = bound.compile_config(config)
                measured.append((clock(functools.partial(fn, *request.args)), dict(config)))
            except Exception:  # noqa: BLE001, S112  (e.g. persistent kernels need an SM count the CPU lacks)
                continue
        if not measured:
            raise RuntimeError(f"none of {len(candidates)} sampled configs ran")
        best = min(measured, key=lambda item: item[0])[1]
        return SearchOutcome(best, len(candidates), _runners_up(best, measured))

    return search


def do_bench_timer(fn: Callable[[], object]) -> float:
    import torch
    import triton.testing

    fn()
    torch.cuda.synchronize()
    return float(triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median"))


def cpu_timer(repeats: int = 3) -> Timer:
    """Median wall time of `repeats` calls after one warm-up call (CPU, tests)."""

    def timer(fn: Callable[[], object]) -> float:
        fn()
        samples = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            samples.append((time.perf_counter() - start) * 1000.0)
        return max(statistics.median(samples), 1e-6)

    return timer


# ---------------------------------------------------------------- provenance


def utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


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


def capture_provenance(device: str, *, effort: str, seed: int, benchmark_method: str) -> dict[str, Any]:
    """Who tuned, where, with which software: the ``run`` member of the results file."""
    import torch

    host = socket.gethostname()
    run: dict[str, Any] = {
        "source": "tune",
        "tuned_by": f"{getpass.getuser()}@{host}",
        "host": host,
        "device_name": "cpu",
        "torch_version": torch.__version__,
        "triton_version": _version("triton"),
        "helion_version": _version("helion"),
        "presetdb_version": __version__,
        "autotune_effort": effort,
        "seed": seed,
        "benchmark_method": benchmark_method,
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(torch.device(device))
        run["device_name"] = props.name
        run["sm_count"] = props.multi_processor_count
        run["cuda_version"] = torch.version.cuda or getattr(torch.version, "hip", None)
        run["driver_version"] = _driver_version()
    return {k: v for k, v in run.items() if v is not None}


# ---------------------------------------------------------------- the tuner


@dataclass
class TuneSummary:
    path: Path
    total: int
    done: int = 0  # tuned in this run
    skipped: int = 0  # already in the file (resume)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (key, error)
    interrupted: bool = False


class Tuner:
    """Tunes one kernel over shape keys into one results file."""

    def __init__(
        self,
        kernel: Any,
        out: Path,
        *,
        effort: str = "quick",
        search: Search | None = None,
        timer: Timer | None = None,
        benchmark_method: str | None = None,
        device: str = "cuda",
        seed: int | None = None,
        budget_seconds: int | None = None,
        platform: str | None = None,
        runners_up: int = 3,
        check: bool = True,
        console: Console | None = None,
        progress: bool = True,
    ) -> None:
        if effort not in EFFORTS:
            raise TuneError(f"--effort {effort!r}: use one of {', '.join(EFFORTS)}")
        if isinstance(kernel, str):
            from presetdb.helion.registry import get_kernel, load_kernel_modules

            load_kernel_modules()  # the examples and PRESETDB_KERNEL_MODULES
            kernel = get_kernel(kernel)
        self.rk = kernel
        self.out = Path(out)
        self.effort = effort
        self.search = search or helion_search
        self.timer = timer or do_bench_timer
        self.benchmark_method = benchmark_method or (DO_BENCH_METHOD if timer is None else "injected timer")
        self.device = device
        self.seed = seed if seed is not None else random.SystemRandom().randrange(2**31)
        self.budget_seconds = budget_seconds
        self.platform = platform
        self.runners_up = runners_up
        self.check = check
        self.console = console or Console(stderr=True)
        self.progress = progress
        self._plain: Any = None

    # -- the results file -------------------------------------------------
    def _start_document(self) -> dict[str, Any]:
        run = capture_provenance(
            self.device, effort=self.effort, seed=self.seed, benchmark_method=self.benchmark_method
        )
        platform = self.platform or derive_platform_name(run["device_name"])
        if self.out.exists():
            doc = presetdb_results.load(self.out)
            if doc["kernel"]["name"] != self.rk.name or doc["platform"] != platform:
                raise TuneError(
                    f"{self.out}: holds {doc['kernel']['name']} on {doc['platform']}, not "
                    f"{self.rk.name} on {platform}; use another --out file"
                )
            if doc["kernel"].get("source_hash") not in (None, self.rk.source_hash()):
                raise TuneError(
                    f"{self.out}: was started for another version of {self.rk.name}'s source; "
                    "its entries would not match this code: use another --out file"
                )
            old = doc["run"]
            if old.get("device_name") not in (None, run["device_name"]):
                raise TuneError(
                    f"{self.out}: was tuned on {old['device_name']!r}, this is {run['device_name']!r}; "
                    "results of two devices do not go in one file"
                )
            if old.get("autotune_effort") not in (None, self.effort):
                raise TuneError(
                    f"{self.out}: was tuned with --effort {old['autotune_effort']}; resume with the "
                    "same effort or use another --out file"
                )
            # Resuming continues the same run: its start and seed stay.
            self.seed = old.get("seed", self.seed)
            run.update(started_at=old.get("started_at") or utc_now(), seed=self.seed)
            doc["run"] = run
            doc.pop("failures", None)  # failed shapes are tried again
            return doc
        run["started_at"] = utc_now()
        return presetdb_results.document(
            run=run,
            kernel={
                "name": self.rk.name,
                "source_hash": self.rk.source_hash(),
                "key_schema": self.rk.key_spec.to_schema(),
            },
            platform=platform,
            entries=[],
        )

    def _save(self, doc: dict[str, Any], failures: list[dict[str, Any]]) -> None:
        doc["run"]["finished_at"] = utc_now()
        if failures:
            doc["failures"] = failures
        else:
            doc.pop("failures", None)
        # Keep the canonical member order: header, failures, entries last.
        ordered = presetdb_results.document(
            run=doc["run"],
            kernel=doc["kernel"],
            platform=doc["platform"],
            entries=doc["entries"],
            failures=doc.get("failures", ()),
        )
        presetdb_results.write(self.out, ordered)

    # -- one shape --------------------------------------------------------
    def tune_shape(self, key: dict[str, Any]) -> dict[str, Any]:
        import helion

        if self._plain is None:
            self._plain = plain_kernel(
                self.rk, effort=self.effort, seed=self.seed, budget_seconds=self.budget_seconds
            )
        args = tuple(self.rk.example_inputs(key, self.device))
        # The kernel body sees adapted arguments (e.g. leading dims folded into rows).
        kargs, restore = self.rk.adapt_args(args)
        kargs = tuple(kargs)
        started = time.perf_counter()
        outcome = self.search(
            SearchRequest(self.rk, self._plain, key, kargs, self.effort, self.seed, self.budget_seconds)
        )
        tuning_seconds = time.perf_counter() - started
        config = self.rk.validate_config(dict(outcome.config), key or None)
        bound = self._plain.bind(kargs)
        best = bound.compile_config(helion.Config(**config))
        if self.check:
            out = best(*kargs)
            _check_close(out if restore is None else restore(out), self.rk.reference(*args), key)
        default_config = dict(bound.config_spec.default_config())
        default = bound.compile_config(helion.Config(**default_config))
        calls: list[Callable[[], object]] = [lambda: best(*kargs), lambda: default(*kargs)]
        configs: list[dict[str, Any]] = [config, default_config]
        for candidate in outcome.runners_up[: self.runners_up]:
            try:
                calls.append(functools.partial(bound.compile_config(helion.Config(**candidate)), *kargs))
                configs.append(dict(candidate))
            except Exception:  # noqa: BLE001, S112  (a runner-up that fails here is just left out)
                continue
        times = [self.timer(call) for call in calls]
        # The search measured under its own harness; re-measured side by side, a runner-up
        # or Helion's default can come out ahead (tiny kernels, short budgets). One timing
        # each is noisy too (a slow moment can make any config look fastest), so the three
        # fastest and Helion's default are timed again, round robin, and ranked by median.
        # The stored config is the fastest of those: a preset is never slower than the default.
        order = sorted(range(len(calls)), key=lambda i: times[i])
        finalists = list(dict.fromkeys([*order[:3], 1]))
        rounds: dict[int, list[float]] = {i: [times[i]] for i in finalists}
        for _ in range(FINAL_ROUNDS):
            for i in finalists:
                rounds[i].append(self.timer(calls[i]))
        for i in finalists:
            times[i] = statistics.median(rounds[i])
        order = sorted(range(len(calls)), key=lambda i: (i not in rounds, times[i]))
        timed = [(times[i], configs[i]) for i in range(len(calls))]
        winner_ms, winner_config = timed[order[0]]
        if winner_config != config:
            winner_config = self.rk.validate_config(winner_config, key or None)
        seen = {json.dumps(winner_config, sort_keys=True)}
        runners = []
        for i in order[1:]:
            ms, cfg = timed[i]
            text = json.dumps(cfg, sort_keys=True)
            if text not in seen:
                seen.add(text)
                runners.append({"config": cfg, "latency_ms": ms})
        entry: dict[str, Any] = {
            "key": key,
            "config": winner_config,
            "latency_ms": winner_ms,
            "default_ms": timed[1][0],
            "reference_ms": self.timer(lambda: self.rk.baseline(*args)),
            "configs_tried": outcome.configs_tried,
            "tuning_seconds": round(tuning_seconds, 3),
        }
        if runners:
            entry["runners_up"] = runners
        return {k: v for k, v in entry.items() if v is not None}

    # -- the loop ---------------------------------------------------------
    def run(self, shapes: Sequence[Mapping[str, Any]]) -> TuneSummary:
        keys = []
        for shape in shapes:
            problems = self.rk.key_spec.check_key(shape)
            if problems:
                raise TuneError(f"shape {canonical_key(shape)}: " + "; ".join(problems))
            keys.append(dict(shape))
        doc = self._start_document()
        done = {canonical_key(e["key"]) for e in doc["entries"]}
        todo = [k for k in keys if canonical_key(k) not in done]
        summary = TuneSummary(self.out, total=len(keys), skipped=len(keys) - len(todo))
        failures: list[dict[str, Any]] = []
        self._save(doc, failures)
        columns = (
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
        )
        bar = Progress(*columns, console=self.console, transient=False) if self.progress else nullcontext()
        with bar as progress:
            task = (
                progress.add_task(f"tune {self.rk.name}", total=len(todo)) if progress is not None else None
            )
            try:
                for key in todo:
                    text = canonical_key(key)
                    if progress is not None and task is not None:
                        progress.update(task, description=f"{self.rk.name} {text}")
                    try:
                        entry = self.tune_shape(key)
                    except KeyboardInterrupt:
                        raise
                    except Exception as exc:  # noqa: BLE001  (one shape's failure must not end the run)
                        message = f"{type(exc).__name__}: {exc}"[:2000]
                        failures.append({"key": key, "error": message})
                        summary.failed.append((text, message))
                        self.console.print(f"[red]failed[/] {text}: {message}", highlight=False)
                    else:
                        doc["entries"].append(entry)
                        summary.done += 1
                        self.console.print(
                            f"[green]tuned[/] {text}: {entry['latency_ms']:.4f} ms "
                            f"(Helion default {entry['default_ms']:.4f} ms, PyTorch "
                            f"{entry['reference_ms']:.4f} ms) in {entry['tuning_seconds']:.1f} s",
                            highlight=False,
                        )
                    self._save(doc, failures)
                    if progress is not None and task is not None:
                        progress.advance(task)
            except KeyboardInterrupt:
                summary.interrupted = True
        return summary


def _check_close(actual: Any, expected: Any, key: Mapping[str, Any]) -> None:
    """The tuned config must compute what the PyTorch reference computes."""
    import torch

    pairs = zip(actual, expected, strict=True) if isinstance(actual, (tuple, list)) else [(actual, expected)]
    for got, want in pairs:
        if isinstance(got, torch.Tensor):
            tol = 2e-2 if got.dtype in (torch.float16, torch.bfloat16) else 1e-3
            try:
                torch.testing.assert_close(got.float(), want.float(), atol=tol, rtol=tol)
            except AssertionError as exc:
                raise TuneError(
                    f"shape {canonical_key(key)}: tuned config disagrees with the reference: {exc}"
                ) from None
