"""``presetdb refine``: re-rank stored configs on shapes nobody tuned, in seconds per shape.

A search tries hundreds of configs for minutes; a new shape is usually well served by a
config already tuned for a neighbouring key. For each shape, refine times the k distinct
configs stored for the nearest keys of the same kernel (ranked by the key spec's log2
distance, exact fields first) plus Helion's default config, on that exact shape, with one
timer, and keeps the fastest as a preset. Every candidate's time is kept as a runner-up,
so an auditor sees what the winner beat. Candidates are compiled once each (on a GPU
through Helion's own batch compiler, which precompiles in parallel processes).

`refine_shape` is the per-shape work (`presetdb.helion.rerank.rank_configs`, shared with
the run-time ``rerank`` policy): it takes plain data (kernel name or object, shape key,
candidate configs, timing name). `RefineWork` wraps it as the farm's per-shape work
(`presetdb.offline.farm`): picklable, so a Ray worker on another machine runs it.
`Refiner` is the run: in the driver it reads the candidates from a database (the k
nearest stored configs of each shape, handed to the work as plain dicts), then
`farm.run_shapes` runs the shapes one after another here (`LocalExecutor`) or one Ray
task per shape on a cluster's GPUs (`RayExecutor`), writes a presetdb-results/1 file
(run source ``refine``, per-row provenance of the machine that timed it) after every
shape, resumes a file it finds, and keeps finished shapes on Ctrl-C. The timer is
injectable: on a CPU (``TRITON_INTERPRET=1``) `presetdb.offline.tune.cpu_timer` stands
in for the GPU timers; without one, the work picks --timing's timer where it runs.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape

from presetdb import __version__
from presetdb.helion.args import SizeClassBinds
from presetdb.helion.autotune import capture_provenance, machine_provenance, plain_kernel
from presetdb.helion.rerank import (
    DEFAULT_ORIGIN,
    GRAPH_METHOD,
    Candidate,
    RefineError,
    RefineResult,
    TimedCall,
    Timer,
    distinct_nearest,
    graph_timer,
    rank_configs,
)
from presetdb.keys import KeyIndex, KeySpec, canonical_key
from presetdb.offline.farm import (
    NOTE,
    LocalExecutor,
    ResultsFile,
    ShapeOutcome,
    ShapeTask,
    connected,
    run_shapes,
)
from presetdb.offline.farm_ray import RayExecutor
from presetdb.offline.importers import presetdb_results
from presetdb.offline.tune import DO_BENCH_METHOD, TuneSummary, cpu_timer, do_bench_timer
from presetdb.runtime.platforms import derive_platform_name
from presetdb.store.engine import describe, parse_target

# Re-exported: the per-shape work lives in presetdb.helion.rerank (the run-time policy uses it too).
__all__ = [
    "DEFAULT_ORIGIN",
    "Candidate",
    "RefineError",
    "RefineResult",
    "RefineWork",
    "Refiner",
    "TimedCall",
    "refine_shape",
]

TIMINGS = ("graph", "flush")
DEFAULT_K = 8
CPU_METHOD = "median of wall time, 3 calls after one warm-up (CPU)"


def timer_for(timing: str, device: str) -> tuple[Timer, str]:
    """(timer, benchmark_method text) for --timing on `device`."""
    if timing not in TIMINGS:
        raise RefineError(f"--timing {timing!r}: use one of {', '.join(TIMINGS)}")
    if not device.startswith("cuda"):
        return cpu_timer(), CPU_METHOD
    return (graph_timer, GRAPH_METHOD) if timing == "graph" else (do_bench_timer, DO_BENCH_METHOD)


# ---------------------------------------------------------------- candidates from a db


@dataclass
class StoredConfigs:
    """Active presets of one kernel on one platform, ranked per shape by key distance."""

    spec: KeySpec
    platform: str
    entries: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # (key text, config)
    _index: KeyIndex[dict[str, Any]] | None = None

    @classmethod
    def load(cls, db: Path | Any, kernel: str, spec: KeySpec, platform: str) -> StoredConfigs:
        from presetdb.store import migrate
        from presetdb.store.repository import Repository

        store = migrate.open_store(db, "ro")
        try:
            with store.read() as session:
                presets = Repository(session).active_presets(kernel, platform)
        finally:
            store.dispose()
        found = cls(spec, platform, [(p.shape_key, p.config) for p in presets])
        keyed = [(json.loads(text), config) for text, config in found.entries if text != "{}"]
        found._index = KeyIndex(spec, [(k, c) for k, c in keyed if not spec.check_key(k)])
        return found

    def nearest(self, key: Mapping[str, Any], k: int) -> list[Candidate]:
        """The configs of the nearest stored keys, `k` distinct ones at most."""
        if self._index is None or not len(self._index):
            return []
        by_key = dict(self.entries)
        features = tuple(key[name] for name in self.spec.names)
        ranked = self._index.nearest_keys(features, limit=len(self._index))
        return distinct_nearest(((text, by_key[text]) for text in ranked), k)


# ---------------------------------------------------------------- one shape

_PLAIN: dict[int, SizeClassBinds] = {}  # id(registered kernel) -> its plain kernels per size class


def _plain_bound(rk: Any) -> SizeClassBinds:
    """`rank_configs`' `bind`: hook-free Helion kernels at the kernel's effort (Helion's
    batch compiler reads it), one per size class of the arguments, bound to them."""
    binds = _PLAIN.get(id(rk))
    if binds is None:
        binds = _PLAIN[id(rk)] = SizeClassBinds(
            lambda: plain_kernel(rk, effort=rk.autotune_effort, seed=None, budget_seconds=None)
        )
    return binds


def _parallel_compile(bound: Any, kargs: tuple[Any, ...], configs: list[dict[str, Any]]) -> list[Any]:
    """Helion's own batch compile of the candidates (GPU): its public `FiniteSearch` over
    them, whose one batch precompiles every config in forked processes (one per core,
    each given up after ``HELION_AUTOTUNE_COMPILE_TIMEOUT`` s) and runs it once here. Its
    results are read in order; which config it would pick is not used (the timer ranks).

    A search's ``benchmark_batch`` cannot be called on its own: its benchmark provider is
    made inside ``autotune()``. Calling it directly failed on every GPU refine before
    (an AttributeError), which sent each candidate's Triton compile to its first launch,
    one after another and with no time limit."""
    import helion
    from helion.autotuner import FiniteSearch

    if len(configs) < 2:
        raise RefineError("one candidate: nothing to compile in parallel")  # FiniteSearch needs two
    search = FiniteSearch(bound, kargs, configs=[helion.Config(**c) for c in configs])
    batches: list[Any] = []
    benchmark_batch = search.benchmark_batch

    def recording(batch: Any, *args: Any, **kwargs: Any) -> Any:
        results = benchmark_batch(batch, *args, **kwargs)
        batches.append(results)
        return results

    search.benchmark_batch = recording
    try:
        search.autotune(skip_cache=True)
    except Exception:
        if not batches:
            raise
        # every candidate failed: the batch says how, config by config
    results = list(batches[0])
    if len(results) != len(configs):
        raise RefineError(f"Helion's batch returned {len(results)} results for {len(configs)} configs")
    return [r.fn if r.status == "ok" else RuntimeError(f"Helion: {r.status}") for r in results]


def refine_shape(
    kernel: Any,
    key: Mapping[str, Any],
    candidates: Sequence[Candidate],
    *,
    device: str = "cuda",
    timing: str = "graph",
    timer: Timer | None = None,
    check: bool = True,
    parallel_compile: bool | None = None,
    deadline: float | None = None,
) -> RefineResult:
    """`presetdb.helion.rerank.rank_configs` on `kernel` (a registered kernel or its name:
    Ray workers load the kernel modules) with --timing's timer on `device`; on a GPU the
    candidates are compiled in parallel by Helion's own batch compiler. Past `deadline`
    (a perf_counter value) no more candidates are compiled or timed."""
    if isinstance(kernel, str):
        from presetdb.helion.registry import get_kernel, load_kernel_modules

        load_kernel_modules()
        kernel = get_kernel(kernel)
    parallel = device.startswith("cuda") if parallel_compile is None else parallel_compile
    return rank_configs(
        kernel, key, candidates, timer=timer or timer_for(timing, device)[0], device=device, check=check,
        bind=_plain_bound(kernel), compile_batch=_parallel_compile if parallel else None, deadline=deadline,
    )


# ---------------------------------------------------------------- shapes files


def shapes_for_kernel(path: Path, kernel: str) -> list[dict[str, Any]]:
    """A `tune --shapes` file, or a ``{kernel: [keys]}`` file (held-out sets) for `kernel`."""
    from presetdb.offline.tune import load_shapes

    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        data = None
    except OSError as exc:
        raise RefineError(f"{path}: cannot read ({exc})") from None
    if isinstance(data, dict) and "shapes" not in data:
        if kernel not in data:
            raise RefineError(f"{path}: no {kernel!r} member; it has {', '.join(sorted(data)) or 'none'}")
        keys = data[kernel]
        if not isinstance(keys, list) or not all(isinstance(k, dict) for k in keys):
            raise RefineError(f"{path}: {kernel!r} must be a JSON array of shape keys")
        return keys
    return load_shapes(path)


# ---------------------------------------------------------------- one shape, anywhere


def candidates_of(configs: Sequence[Mapping[str, Any]]) -> list[Candidate]:
    """`ShapeTask.configs` (plain ``{"config", "origin"}`` dicts) -> the candidates to time."""
    return [Candidate(dict(c["config"]), str(c["origin"])) for c in configs]


def describe_result(result: RefineResult) -> str:
    """The console line of a refined shape: its time, where the winner came from, the others."""
    entry = result.entry
    default = entry.get("default_ms")
    reference = entry.get("reference_ms")
    return (
        f"{entry['latency_ms']:.4f} ms from {result.winner_origin} ({entry['configs_tried']} timed; "
        f"Helion default {'-' if default is None else f'{default:.4f}'} ms, PyTorch "
        f"{'-' if reference is None else f'{reference:.4f}'} ms) in {entry['tuning_seconds']:.1f} s"
        + (f" ({', '.join(f'{name} {s:.1f} s' for name, s in result.phases.items())})" if result.phases else "")
    )


@dataclass(frozen=True)
class RefineWork:
    """The work of one shape (`presetdb.offline.farm.ShapeWork`): `refine_shape` on the
    candidates the driver chose (``task.configs``). Picklable: it runs in the refining
    process or in a Ray worker, which looks the kernel up by name and, without an injected
    timer, times with --timing's timer for its own device. Returns the results-file entry
    with the worker's provenance as ``run``."""

    device: str = "cuda"
    timing: str = "graph"
    timer: Timer | None = None  # None: --timing's timer, chosen where the work runs
    benchmark_method: str = ""
    check: bool = True
    parallel_compile: bool | None = None

    def __call__(self, task: ShapeTask) -> dict[str, Any]:
        from presetdb.helion.registry import get_kernel

        result = self.refine(get_kernel(task.kernel), task.key, candidates_of(task.configs))
        entry = dict(result.entry)
        entry["run"] = capture_provenance(self.device, benchmark_method=self.benchmark_method)
        entry[NOTE] = describe_result(result)
        return entry

    def refine(self, rk: Any, key: Mapping[str, Any], candidates: Sequence[Candidate]) -> RefineResult:
        return refine_shape(
            rk, key, candidates, device=self.device, timing=self.timing, timer=self.timer, check=self.check,
            parallel_compile=self.parallel_compile,
        )


def describe_outcome(outcome: ShapeOutcome) -> str:
    where = f" on {outcome.worker.label}" if outcome.worker is not None else ""
    return f"{outcome.note or 'refined'}{where}"


# ---------------------------------------------------------------- the run


class Refiner:
    """Refines one kernel over shape keys into one results file (resumable), shape by
    shape in this process or fanned out over a Ray cluster (`presetdb.offline.farm`)."""

    def __init__(
        self,
        kernel: Any,
        out: Path,
        *,
        db: Path | str | Any,
        k: int = DEFAULT_K,
        timing: str = "graph",
        timer: Timer | None = None,
        benchmark_method: str | None = None,
        device: str = "cuda",
        platform: str | None = None,
        candidates_from: str | None = None,
        check: bool = True,
        parallel_compile: bool | None = None,
        executor: LocalExecutor | RayExecutor | None = None,
        console: Console | None = None,
        progress: bool = True,
        on_entry: Callable[[Mapping[str, Any], Mapping[str, Any], str], None] | None = None,
    ) -> None:
        """`on_entry(entry, run, platform)` runs on the driver after each refined shape is
        saved (e.g. `presetdb.offline.registry_writer.write_entry` into a registry)."""
        if k < 0:
            raise RefineError(f"--k {k}: give 0 or more stored configs to try")
        if isinstance(kernel, str):
            from presetdb.helion.registry import get_kernel, load_kernel_modules

            load_kernel_modules()
            kernel = get_kernel(kernel)
        self.rk = kernel
        self.out = Path(out)
        self.db = parse_target(db)  # a file or a registry URL
        self.on_entry = on_entry
        self.k = k
        self.timing = timing
        method = timer_for(timing, device)[1]  # an unknown --timing fails here
        self.timer = timer
        self.device = device
        self.platform = platform
        self.candidates_from = candidates_from
        self.check = check
        self.parallel_compile = parallel_compile
        self.executor = executor or LocalExecutor(device)
        self.console = console or Console(stderr=True)
        self.progress = progress
        self._method = benchmark_method or (method if timer is None else "injected timer")
        self.stored: StoredConfigs | None = None

    def benchmark_method(self, source_platform: str) -> str:
        return (
            f"refine: the {self.k} nearest stored configs ({self.rk.name} on {source_platform}, "
            f"{self.db.name if isinstance(self.db, Path) else describe(self.db)}) and Helion's default, "
            f"timed on the exact shape; {self._method}"
        )

    def platform_name(self) -> str:
        """--platform, else the device's (local) or the Ray cluster's one platform."""
        if not self.platform:
            if isinstance(self.executor, RayExecutor) and self.device.startswith("cuda"):
                self.platform = self.executor.cluster_platform()
            else:
                self.platform = derive_platform_name(machine_provenance(self.device)["device_name"])
        return self.platform

    def results_file(self) -> ResultsFile:
        platform = self.platform_name()
        run: dict[str, Any] = {
            "source": "refine",
            "presetdb_version": __version__,
            "autotune_effort": "none",  # nothing searched; nothing random either (no seed)
            "benchmark_method": self.benchmark_method(self.candidates_from or platform),
        }
        resume_same = ["source", "benchmark_method"]
        if not isinstance(self.executor, RayExecutor):
            # This process times the shapes: its machine heads the file, and a file it
            # resumes must be of the same device. (On Ray the first worker's heads it.)
            run = {**machine_provenance(self.device), **run}
            resume_same.append("device_name")
        kernel = {"name": self.rk.name, "source_hash": self.rk.source_hash(), "key_schema": self.rk.key_spec.to_schema()}
        return ResultsFile(
            self.out, kernel=kernel, platform=platform, run=run, resume_same=resume_same, on_entry=self.on_entry
        )

    def check_resumable(self, out: ResultsFile) -> None:
        """A file to resume must be a refine run of this kernel, platform, source, device
        and settings (`ResultsFile.open` checks it too; this says it in refine's words)."""
        if not out.path.exists():
            return
        doc = presetdb_results.load(out.path)
        old, run, name = doc["run"], out.run, self.rk.name
        if doc["kernel"]["name"] != name or doc["platform"] != out.platform:
            raise RefineError(
                f"{self.out}: holds {doc['kernel']['name']} on {doc['platform']}, not "
                f"{name} on {out.platform}; use another --out file"
            )
        if old.get("source") != "refine":
            raise RefineError(f"{self.out}: is a {old.get('source')} run, not refine; use another --out file")
        if doc["kernel"].get("source_hash") not in (None, self.rk.source_hash()):
            raise RefineError(f"{self.out}: was started for another version of {name}'s source; use another --out file")
        if run.get("device_name") and old.get("device_name") not in (None, run["device_name"]):
            raise RefineError(
                f"{self.out}: was refined on {old['device_name']!r}, this is {run['device_name']!r}; "
                "results of two devices do not go in one file"
            )
        if old.get("benchmark_method") not in (None, run["benchmark_method"]):
            raise RefineError(
                f"{self.out}: was refined with other settings ({old['benchmark_method']!r}); "
                "resume with the same --k, --timing and db, or use another --out file"
            )

    def configs_for(self, key: Mapping[str, Any]) -> list[dict[str, Any]]:
        """The driver's part of a shape: the k nearest stored configs, as plain data."""
        assert self.stored is not None, "run() loads the stored configs"
        return [{"config": c.config, "origin": c.origin} for c in self.stored.nearest(key, self.k)]

    def work(self) -> RefineWork:
        return RefineWork(
            device=self.device,
            timing=self.timing,
            timer=self.timer,
            benchmark_method=self._method,
            check=self.check,
            parallel_compile=self.parallel_compile,
        )

    def refine(self, key: Mapping[str, Any]) -> RefineResult:
        """One shape in this process (no file)."""
        return self.work().refine(self.rk, key, candidates_of(self.configs_for(key)))

    def run(self, shapes: Sequence[Mapping[str, Any]]) -> TuneSummary:
        keys = []
        for shape in shapes:
            problems = self.rk.key_spec.check_key(shape) if shape else ["the default entry {} has no shape to time"]
            if problems:
                raise RefineError(f"shape {canonical_key(shape)}: " + "; ".join(problems))
            keys.append(dict(shape))
        with connected(self.executor):  # a cluster that cannot run this fails before the file is touched
            out = self.results_file()
            source_platform = self.candidates_from or out.platform
            self.stored = StoredConfigs.load(self.db, self.rk.name, self.rk.key_spec, source_platform)
            if not self.stored.entries:
                self.console.print(
                    f"[yellow]warning:[/] {escape(describe(self.db))} has no active {escape(self.rk.name)} presets "
                    f"on {escape(source_platform)}: only Helion's default config will be timed",
                    highlight=False,
                )
            self.check_resumable(out)
            return run_shapes(
                self.rk.name,
                keys,
                self.work(),
                out=out,
                executor=self.executor,
                configs_for=self.configs_for,
                console=self.console,
                progress=self.progress,
                describe=describe_outcome,
            )
