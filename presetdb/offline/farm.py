"""Run per-shape work on this machine or fanned out over the GPUs of a Ray cluster.

``presetdb tune`` (and ``presetdb refine``) do the same thing for every shape key of a
kernel: some work on one GPU that yields one entry of a presetdb-results/1 file. This
module runs that work and keeps the results file; the work itself is the caller's.

API (what tune uses and refine plugs into)::

    from presetdb.offline.farm import LocalExecutor, ResultsFile, ShapeTask, run_shapes
    from presetdb.offline.farm_ray import RayExecutor

    out = ResultsFile(path, kernel={"name": ..., "source_hash": ..., "key_schema": ...},
                      platform="nvidia_h100", run={"source": "tune", ...},
                      resume_same=("autotune_effort",))
    summary = run_shapes(kernel_name, shapes, work, out=out,
                         executor=RayExecutor(address="auto", platform="nvidia_h100"),
                         configs_for=lambda key: (...))     # optional, per-shape stored configs

- ``work(task: ShapeTask) -> dict`` does one shape and returns its results-file entry
  (``key``, ``config``, timings, ...). It may add ``run``: the provenance of the machine
  that did it (`presetdb.helion.autotune.capture_provenance`), which the file keeps per
  row; the file's header adopts the first row's machine fields; and ``_note``: a short
  text for the shape's console line (`ShapeOutcome.note`, not saved). It must be picklable
  (a module-level function or an instance of a module-level class; Ray ships it to
  the worker by reference, so its module must be importable there) and it must look the
  kernel up by ``task.kernel`` (`presetdb.helion.registry.get_kernel`): workers import
  the kernel modules themselves. ``task.configs`` carries what ``configs_for(key)``
  returned in the driver, which has the store (tune: warm-start seeds; refine: the
  stored configs to re-rank).
- A Python error in ``work`` becomes a recorded failure (its message and traceback
  tail in the file's ``failures``; retried on the next run); a dead worker process is
  retried by Ray (``max_retries``); Ctrl-C cancels running tasks and keeps finished ones.
- A shape that hangs (one Triton compile of a pathological config can run for many
  minutes, and no Python code runs meanwhile to stop it): `LocalExecutor(shape_hard_limit=S)`
  records it as a failure with ``"retry": false`` and ends the process (exit `HUNG`); the
  rerun resumes without it (remove that failure from the file to try it again).
- The results file is rewritten atomically after every finished shape; a rerun skips
  the shapes already in it (`ResultsFile` refuses a file of another kernel, platform,
  kernel source or, for the fields named in ``resume_same``, another run setting).

Executors:

- `LocalExecutor`: one shape after another in this process (no Ray needed).
- `presetdb.offline.farm_ray.RayExecutor`: the shapes fanned out over the GPUs of a Ray
  cluster (its module docstring says how).
"""

from __future__ import annotations

import os
import socket
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from rich.console import Console, RenderableType
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from presetdb._util import HUNG, hard_limit
from presetdb.errors import TuneError
from presetdb.keys import canonical_key
from presetdb.offline.importers import presetdb_results
from presetdb.offline.importers.records import PROVENANCE_FIELDS
from presetdb.store.models import utc_now

FARM_INSTALL = "pip install 'presetdb[farm]'"
TRACEBACK_TAIL = 3000  # characters of a failure's traceback kept in the file
NOTE = "_note"  # an entry member the work may add for the console line; never saved
# Provenance of the machine that ran a shape (the driver may have no GPU): host, device, versions.
MACHINE_FIELDS = PROVENANCE_FIELDS[: PROVENANCE_FIELDS.index("presetdb_version") + 1]

__all__ = [
    "FARM_INSTALL",
    "LocalExecutor",
    "ResultsFile",
    "RunSummary",
    "ShapeOutcome",
    "ShapeTask",
    "ShapeWork",
    "WorkerInfo",
    "run_shapes",
]


@dataclass(frozen=True)
class ShapeTask:
    """One shape of one kernel; `configs`: stored configs the driver chose for it."""

    kernel: str
    key: dict[str, Any]
    configs: tuple[dict[str, Any], ...] = ()


ShapeWork = Callable[[ShapeTask], dict[str, Any]]


@dataclass(frozen=True)
class WorkerInfo:
    """Where a shape ran: for the progress lines and the run summary."""

    host: str
    pid: int
    gpus: str = ""  # CUDA_VISIBLE_DEVICES as the worker saw it
    device_name: str = ""
    precompile_jobs: int | None = None
    started: float = 0.0  # time.time()
    # A Ray worker: seconds from its process's start to the shape's work (process spawn,
    # imports, CUDA init, kernel modules): the cost a fresh process per shape adds.
    setup_seconds: float | None = None

    @property
    def label(self) -> str:
        gpu = f" gpu {self.gpus}" if self.gpus else ""
        return f"{self.host}{gpu} {self.device_name}".strip()


@dataclass(frozen=True)
class ShapeOutcome:
    key: dict[str, Any]
    entry: dict[str, Any] | None = None
    error: str | None = None  # "Type: message"
    traceback: str | None = None  # its tail
    worker: WorkerInfo | None = None
    finished: float = 0.0  # time.time()
    note: str = ""  # the work's ``_note`` (e.g. where refine's winner came from)


def failed_outcome(task: ShapeTask, exc: Exception, worker: WorkerInfo | None) -> ShapeOutcome:
    """The outcome of a shape whose work raised `exc` (call it from the except block)."""
    return ShapeOutcome(
        task.key,
        error=f"{type(exc).__name__}: {exc}"[:2000],
        traceback=traceback.format_exc()[-TRACEBACK_TAIL:],
        worker=worker,
        finished=time.time(),
    )


def run_task(work: ShapeWork, task: ShapeTask, worker: WorkerInfo | None) -> ShapeOutcome:
    """`work(task)`, a Python error turned into a failed outcome (KeyboardInterrupt is not)."""
    try:
        entry = work(task)
    except Exception as exc:  # noqa: BLE001  (one shape's failure must not end the run)
        return failed_outcome(task, exc, worker)
    entry = dict(entry)
    note = str(entry.pop(NOTE, "") or "")
    return ShapeOutcome(task.key, entry=entry, worker=worker, finished=time.time(), note=note)


# ---------------------------------------------------------------- the results file


class ResultsFile:
    """The presetdb-results/1 file of a run: resumed if it exists, rewritten atomically
    (temp file, fsync, rename) after every finished shape."""

    def __init__(
        self,
        path: Path,
        *,
        kernel: Mapping[str, Any],
        platform: str,
        run: Mapping[str, Any],
        resume_same: Sequence[str] = (),
        on_entry: Callable[[Mapping[str, Any], Mapping[str, Any], str], None] | None = None,
    ) -> None:
        self.path = Path(path)
        self.on_entry = on_entry  # (entry, run, platform), after the entry is saved
        self.kernel = dict(kernel)
        self.platform = platform
        self.run = dict(run)
        self.resume_same = tuple(resume_same)
        self.entries: list[dict[str, Any]] = []
        self.failures: list[dict[str, Any]] = []
        self._opened = False
        self._saving = threading.Lock()

    def open(self) -> dict[str, Any]:
        """Read an existing file (checked: it must be the same kernel, platform and
        settings) or start a new one. Returns the header's run (a resumed run keeps its
        start and seed). Once per object: a second call returns the same run."""
        if self._opened:
            return self.run
        self._opened = True
        if not self.path.exists():
            self.run.setdefault("started_at", utc_now())
            return self.run
        doc = presetdb_results.load(self.path)
        name = self.kernel["name"]
        if doc["kernel"]["name"] != name or doc["platform"] != self.platform:
            raise TuneError(
                f"{self.path}: holds {doc['kernel']['name']} on {doc['platform']}, not "
                f"{name} on {self.platform}; use another --out file"
            )
        if doc["kernel"].get("source_hash") not in (None, self.kernel.get("source_hash")):
            raise TuneError(
                f"{self.path}: was started for another version of {name}'s source; "
                "its entries would not match this code: use another --out file"
            )
        old = doc["run"]
        for member in self.resume_same:
            if old.get(member) not in (None, self.run.get(member)):
                raise TuneError(
                    f"{self.path}: was made with {member} {old[member]!r}, this run has "
                    f"{self.run.get(member)!r}; resume with the same setting or use another --out file"
                )
        # Resuming continues the same run: its start, seed and first machine stay.
        kept = {k: old[k] for k in ("started_at", "seed", *MACHINE_FIELDS) if old.get(k) is not None}
        self.run.update(kept)
        self.run.setdefault("started_at", utc_now())
        self.entries = list(doc["entries"])
        # Failed shapes are tried again, but for those that outlasted a hard limit.
        self.failures = [f for f in doc.get("failures", ()) if f.get("retry") is False]
        return self.run

    def finished_keys(self) -> set[str]:
        return {canonical_key(e["key"]) for e in self.entries}

    def abandoned_keys(self) -> set[str]:
        """Shapes a run gave up on for good (`retry: false`): a rerun does not start them."""
        return {canonical_key(f["key"]) for f in self.failures if f.get("retry") is False}

    def add(self, entry: Mapping[str, Any]) -> None:
        entry = dict(entry)
        machine = entry.get("run") or {}
        if not any(self.run.get(k) for k in ("host", "device_name")):
            # The header describes the first machine (the driver may have no GPU).
            self.run.update({k: v for k, v in machine.items() if k in MACHINE_FIELDS})
        self.entries.append(entry)

    def fail(self, key: Mapping[str, Any], error: str, tail: str | None = None, *, retry: bool = True) -> None:
        failure: dict[str, Any] = {"key": dict(key), "error": error}
        if tail:
            failure["traceback"] = tail
        if not retry:
            failure["retry"] = False
        self.failures.append(failure)

    def save(self) -> None:
        with self._saving:  # the main thread and a hard-limit watchdog
            self._save()

    def _save(self) -> None:
        self.run["finished_at"] = utc_now()
        presetdb_results.write(
            self.path,
            presetdb_results.document(
                run=self.run,
                kernel=self.kernel,
                platform=self.platform,
                entries=self.entries,
                failures=self.failures,
            ),
        )


# ---------------------------------------------------------------- progress


@dataclass
class RunSummary:
    path: Path
    total: int
    done: int = 0  # finished in this run
    skipped: int = 0  # already in the file (resume)
    abandoned: int = 0  # not started: an earlier run gave up on them (shape_hard_limit)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (key, error)
    interrupted: bool = False
    submitted: int = 0  # shapes handed to the executor
    outcomes: list[ShapeOutcome] = field(default_factory=list)  # in the order they landed


class Monitor:
    """What the executors report to: writes each result as it lands and keeps the
    progress display (one bar with ETA, one line per running worker)."""

    def __init__(
        self,
        out: ResultsFile,
        summary: RunSummary,
        progress: Progress | None,
        console: Console,
        describe: Callable[[ShapeOutcome], str],
    ) -> None:
        self.out, self.summary, self.progress, self.console = out, summary, progress, console
        self.describe = describe
        self.bar: TaskID | None = None
        self.lines: dict[str, TaskID] = {}  # worker label -> its line

    def started(self, key: Mapping[str, Any], worker: WorkerInfo) -> None:
        if self.progress is None:
            return
        text = escape(f"  {worker.label}: {canonical_key(key)}")
        line = self.lines.get(worker.label)
        if line is None:
            self.lines[worker.label] = self.progress.add_task(text, total=None, worker=True)
        else:
            self.progress.reset(line, description=text, total=None, start=True)

    def finished(self, outcome: ShapeOutcome) -> None:
        text = canonical_key(outcome.key)
        summary = self.summary
        summary.outcomes.append(outcome)
        if outcome.entry is not None:
            self.out.add(outcome.entry)
            summary.done += 1
            said = self.describe(outcome)
            if outcome.worker is not None and outcome.worker.setup_seconds is not None:
                said += f", worker setup {outcome.worker.setup_seconds:.1f} s"
            self.console.print(f"[green]done[/] {escape(text)}: {escape(said)}", highlight=False)
        else:
            error = outcome.error or "failed"
            self.out.fail(outcome.key, error, outcome.traceback)
            summary.failed.append((text, error))
            self.console.print(f"[red]failed[/] {escape(text)}: {escape(error)}", highlight=False)
        self.out.save()
        if outcome.entry is not None and self.out.on_entry is not None:
            try:  # e.g. into a registry, as each shape lands; the results file has it anyway
                self.out.on_entry(self.out.entries[-1], self.out.run, self.out.platform)
            except Exception as exc:  # noqa: BLE001  (a down registry must not stop the tuning)
                self.console.print(
                    f"[yellow]warning:[/] {escape(text)} is in the results file but was not written "
                    f"to the database: {escape(str(exc)[:300])}; import the file later",
                    highlight=False,
                )
        if self.progress is not None and self.bar is not None:
            self.progress.advance(self.bar)
            if outcome.worker is not None and outcome.worker.label in self.lines:
                line = self.lines[outcome.worker.label]
                self.progress.update(line, description=escape(f"  {outcome.worker.label}: idle"))
                self.progress.stop_task(line)


class _BarOnly(ProgressColumn):
    """A column shown on the overall bar only, blank on the per-worker lines."""

    def __init__(self, inner: ProgressColumn) -> None:
        super().__init__()
        self.inner = inner

    def render(self, task: Task) -> RenderableType:
        return Text("") if task.fields.get("worker") else self.inner.render(task)


class Executor(Protocol):
    def execute(self, tasks: Sequence[ShapeTask], work: ShapeWork, monitor: Monitor) -> bool:
        """Run every task, reporting to `monitor`; True when interrupted (Ctrl-C)."""
        ...


def run_shapes(
    kernel: str,
    shapes: Iterable[Mapping[str, Any]],
    work: ShapeWork,
    *,
    out: ResultsFile,
    executor: Executor | None = None,
    configs_for: Callable[[dict[str, Any]], Sequence[Mapping[str, Any]]] | None = None,
    console: Console | None = None,
    progress: bool = True,
    describe: Callable[[ShapeOutcome], str] | None = None,
) -> RunSummary:
    """Run `work` for every shape not yet in `out`, with `executor` (default: local)."""
    keys = [dict(s) for s in shapes]
    executor = executor or LocalExecutor()
    with connected(executor):
        return _run(kernel, keys, work, out, executor, configs_for, console, progress, describe)


@contextmanager
def connected(executor: Executor) -> Iterator[Executor]:
    """`executor` connected (a cluster that cannot run the work fails here, before any
    results file is touched) and closed when the block ends, however it ends. Nesting is
    fine: connecting again is a check, closing twice a no-op."""
    getattr(executor, "prepare", lambda: None)()
    try:
        yield executor
    finally:
        getattr(executor, "close", lambda: None)()


def _run(
    kernel: str,
    keys: list[dict[str, Any]],
    work: ShapeWork,
    out: ResultsFile,
    executor: Executor,
    configs_for: Callable[[dict[str, Any]], Sequence[Mapping[str, Any]]] | None,
    console: Console | None,
    progress: bool,
    describe: Callable[[ShapeOutcome], str] | None,
) -> RunSummary:
    out.open()
    finished = out.finished_keys()
    abandoned = out.abandoned_keys() - finished
    texts = [canonical_key(k) for k in keys]
    todo = [k for k, text in zip(keys, texts, strict=True) if text not in finished and text not in abandoned]
    summary = RunSummary(
        out.path, total=len(keys), skipped=sum(t in finished for t in texts),
        abandoned=sum(t in abandoned for t in texts), submitted=len(todo),
    )
    out.save()
    tasks = [ShapeTask(kernel, k, tuple(dict(c) for c in (configs_for(k) if configs_for else ()))) for k in todo]
    console = console or Console(stderr=True)
    columns = (
        TextColumn("{task.description}"),
        _BarOnly(BarColumn()),
        _BarOnly(MofNCompleteColumn()),
        TimeElapsedColumn(),  # a worker's line: how long its current shape has run
        _BarOnly(TextColumn("eta")),
        _BarOnly(TimeRemainingColumn()),
    )
    bar = Progress(*columns, console=console, transient=False) if progress else None
    monitor = Monitor(out, summary, bar, console, describe or (lambda o: "ok"))
    with bar if bar is not None else nullcontext():
        if bar is not None:
            monitor.bar = bar.add_task(f"[bold]{escape(kernel)}[/]: {len(todo)} shape(s)", total=len(todo))
        if tasks:
            summary.interrupted = executor.execute(tasks, work, monitor)
    return summary


# ---------------------------------------------------------------- executors


class LocalExecutor:
    """One shape after another in this process, on its GPU (or the interpreter).

    `shape_hard_limit` (seconds): a shape still running after it is recorded as failed
    for good (``retry: false``) and the process ends with exit code `HUNG`, since a hung
    compile or kernel holds the main thread and cannot be interrupted; rerunning the same
    command resumes with the next shape."""

    def __init__(self, device: str = "cuda", shape_hard_limit: float | None = None) -> None:
        self.device = device
        self.shape_hard_limit = shape_hard_limit

    def execute(self, tasks: Sequence[ShapeTask], work: ShapeWork, monitor: Monitor) -> bool:
        worker = WorkerInfo(
            socket.gethostname(),
            os.getpid(),
            os.environ.get("CUDA_VISIBLE_DEVICES", ""),
            self.device,
            started=time.time(),
        )
        try:
            for task in tasks:
                monitor.started(task.key, worker)
                with self._watchdog(task, monitor):
                    outcome = run_task(work, task, worker)
                monitor.finished(outcome)
        except KeyboardInterrupt:
            return True
        return False

    def _watchdog(self, task: ShapeTask, monitor: Monitor) -> AbstractContextManager[None]:
        limit = self.shape_hard_limit
        if limit is None:
            return nullcontext()

        def give_up() -> None:
            error = (
                f"did not finish within --shape-hard-limit {limit:g} s (a compile or kernel that hangs); "
                "not retried on resume: remove this failure from the file to try the shape again"
            )
            monitor.out.fail(task.key, error, retry=False)
            monitor.out.save()
            monitor.console.print(
                f"[red]abandoned[/] {escape(canonical_key(task.key))}: still running after {limit:g} s; ending "
                f"the process (exit {HUNG}): run the same command again to go on with the next shape",
                highlight=False,
            )

        return hard_limit(limit, give_up)
