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
candidate configs, timing name) so a Ray executor can run it on another machine;
`Refiner` is the local loop around it: it reads the candidates from a database, writes a
presetdb-results/1 file (run source ``refine``) after every shape, resumes a file it
finds, and keeps finished shapes on Ctrl-C. The timer is injectable: on a CPU
(``TRITON_INTERPRET=1``) `presetdb.offline.tune.cpu_timer` stands in for the GPU timers.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

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
from presetdb.offline.importers import presetdb_results
from presetdb.offline.tune import (
    DO_BENCH_METHOD,
    TuneSummary,
    capture_provenance,
    cpu_timer,
    do_bench_timer,
    plain_kernel,
    utc_now,
)
from presetdb.runtime.platforms import derive_platform_name
from presetdb.store.engine import describe, parse_target

# Re-exported: the per-shape work lives in presetdb.helion.rerank (the run-time policy uses it too).
__all__ = ["DEFAULT_ORIGIN", "Candidate", "RefineError", "RefineResult", "Refiner", "TimedCall", "refine_shape"]

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

_PLAIN: dict[int, Any] = {}  # id(registered kernel) -> its hook-free Helion kernel


def _plain(rk: Any) -> Any:
    plain = _PLAIN.get(id(rk))
    if plain is None:
        plain = _PLAIN[id(rk)] = plain_kernel(rk, effort=rk.autotune_effort, seed=None, budget_seconds=None)
    return plain


def _parallel_compile(bound: Any, kargs: tuple[Any, ...], configs: list[dict[str, Any]]) -> list[Any]:
    """Helion's benchmark provider compiles the batch with its parallel precompile (GPU)."""
    import helion

    from presetdb.helion.autotune import build_search

    search = build_search(bound, kargs)
    results = search.benchmark_batch([helion.Config(**c) for c in configs], desc="refine", raise_if_no_viable_config=False)
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
) -> RefineResult:
    """`presetdb.helion.rerank.rank_configs` on `kernel` (a registered kernel or its name:
    Ray workers load the kernel modules) with --timing's timer on `device`; on a GPU the
    candidates are compiled in parallel by Helion's own batch compiler."""
    if isinstance(kernel, str):
        from presetdb.helion.registry import get_kernel, load_kernel_modules

        load_kernel_modules()
        kernel = get_kernel(kernel)
    parallel = device.startswith("cuda") if parallel_compile is None else parallel_compile
    return rank_configs(
        kernel, key, candidates, timer=timer or timer_for(timing, device)[0], device=device, check=check,
        plain=_plain(kernel), compile_batch=_parallel_compile if parallel else None,
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


# ---------------------------------------------------------------- the loop


class Refiner:
    """Refines one kernel over shape keys into one results file (resumable)."""

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
        console: Console | None = None,
        progress: bool = True,
        on_entry: Callable[[Mapping[str, Any], Mapping[str, Any], str], None] | None = None,
    ) -> None:
        """`on_entry(entry, run, platform)` runs after each refined shape is saved (e.g.
        `presetdb.offline.registry_writer.write_entry` into a registry)."""
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
        chosen, method = timer_for(timing, device)
        self.timer = timer or chosen
        self.device = device
        self.platform = platform
        self.candidates_from = candidates_from
        self.check = check
        self.parallel_compile = parallel_compile
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

    def _start_document(self) -> dict[str, Any]:
        run = capture_provenance(self.device, autotune_effort="none", seed=0, benchmark_method="")
        run.pop("seed", None)  # nothing random in a refine run
        run["source"] = "refine"
        platform = self.platform or derive_platform_name(run["device_name"])
        self.platform = platform
        source_platform = self.candidates_from or platform
        run["benchmark_method"] = self.benchmark_method(source_platform)
        self.stored = StoredConfigs.load(self.db, self.rk.name, self.rk.key_spec, source_platform)
        if not self.stored.entries:
            self.console.print(
                f"[yellow]warning:[/] {escape(describe(self.db))} has no active {self.rk.name} presets on "
                f"{escape(source_platform)}: only Helion's default config will be timed",
                highlight=False,
            )
        if self.out.exists():
            doc = presetdb_results.load(self.out)
            old = doc["run"]
            if doc["kernel"]["name"] != self.rk.name or doc["platform"] != platform:
                raise RefineError(
                    f"{self.out}: holds {doc['kernel']['name']} on {doc['platform']}, not "
                    f"{self.rk.name} on {platform}; use another --out file"
                )
            if old.get("source") != "refine":
                raise RefineError(f"{self.out}: is a {old.get('source')} run, not refine; use another --out file")
            if doc["kernel"].get("source_hash") not in (None, self.rk.source_hash()):
                raise RefineError(
                    f"{self.out}: was started for another version of {self.rk.name}'s source; use another --out file"
                )
            if old.get("device_name") not in (None, run["device_name"]):
                raise RefineError(
                    f"{self.out}: was refined on {old['device_name']!r}, this is {run['device_name']!r}; "
                    "results of two devices do not go in one file"
                )
            if old.get("benchmark_method") not in (None, run["benchmark_method"]):
                raise RefineError(
                    f"{self.out}: was refined with other settings ({old['benchmark_method']!r}); "
                    "resume with the same --k, --timing and db, or use another --out file"
                )
            run["started_at"] = old.get("started_at") or utc_now()
            doc["run"] = run
            doc.pop("failures", None)  # failed shapes are tried again
            return doc
        run["started_at"] = utc_now()
        return presetdb_results.document(
            run=run,
            kernel={"name": self.rk.name, "source_hash": self.rk.source_hash(), "key_schema": self.rk.key_spec.to_schema()},
            platform=platform,
            entries=[],
        )

    def _save(self, doc: dict[str, Any], failures: list[dict[str, Any]]) -> None:
        doc["run"]["finished_at"] = utc_now()
        presetdb_results.write(
            self.out,
            presetdb_results.document(
                run=doc["run"], kernel=doc["kernel"], platform=doc["platform"], entries=doc["entries"], failures=failures
            ),
        )

    def refine(self, key: Mapping[str, Any]) -> RefineResult:
        assert self.stored is not None
        return refine_shape(
            self.rk, key, self.stored.nearest(key, self.k), device=self.device, timing=self.timing,
            timer=self.timer, check=self.check, parallel_compile=self.parallel_compile,
        )

    def run(self, shapes: Sequence[Mapping[str, Any]]) -> TuneSummary:
        keys = []
        for shape in shapes:
            problems = self.rk.key_spec.check_key(shape) if shape else ["the default entry {} has no shape to time"]
            if problems:
                raise RefineError(f"shape {canonical_key(shape)}: " + "; ".join(problems))
            keys.append(dict(shape))
        doc = self._start_document()
        done = {canonical_key(e["key"]) for e in doc["entries"]}
        todo = [k for k in keys if canonical_key(k) not in done]
        summary = TuneSummary(self.out, total=len(keys), skipped=len(keys) - len(todo))
        failures: list[dict[str, Any]] = []
        self._save(doc, failures)
        columns = (
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            TextColumn("eta"), TimeRemainingColumn(),
        )
        bar = Progress(*columns, console=self.console) if self.progress else nullcontext()
        with bar as progress:
            task = progress.add_task(f"refine {self.rk.name}", total=len(todo)) if progress is not None else None
            try:
                for key in todo:
                    text = canonical_key(key)
                    if progress is not None and task is not None:
                        progress.update(task, description=f"{self.rk.name} {escape(text)}")
                    try:
                        result = self.refine(key)
                    except KeyboardInterrupt:
                        raise
                    except Exception as exc:  # noqa: BLE001  (one shape's failure must not end the run)
                        message = f"{type(exc).__name__}: {exc}"[:2000]
                        failures.append({"key": key, "error": message})
                        summary.failed.append((text, message))
                        self.console.print(f"[red]failed[/] {escape(text)}: {escape(message)}", highlight=False)
                    else:
                        entry = result.entry
                        doc["entries"].append(entry)
                        summary.done += 1
                        self._save(doc, failures)
                        if self.on_entry is not None:
                            try:  # e.g. into a registry, as each shape lands; the file has it anyway
                                self.on_entry(entry, doc["run"], doc["platform"])
                            except Exception as exc:  # noqa: BLE001  (a down registry must not stop the run)
                                self.console.print(
                                    f"[yellow]warning:[/] {escape(text)} is in the results file but was not "
                                    f"written to the database: {escape(str(exc)[:300])}; import the file later",
                                    highlight=False,
                                )
                        default = entry.get("default_ms")
                        self.console.print(
                            f"[green]refined[/] {escape(text)}: {entry['latency_ms']:.4f} ms from "
                            f"{escape(result.winner_origin)} ({entry['configs_tried']} timed; Helion default "
                            f"{'-' if default is None else f'{default:.4f}'} ms, PyTorch "
                            f"{entry['reference_ms']:.4f} ms) in {entry['tuning_seconds']:.1f} s",
                            highlight=False,
                        )
                    self._save(doc, failures)
                    if progress is not None and task is not None:
                        progress.advance(task)
            except KeyboardInterrupt:
                summary.interrupted = True
        return summary
