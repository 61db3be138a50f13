"""Run per-shape work on this machine or fanned out over the GPUs of a Ray cluster.

``presetdb tune`` (and ``presetdb refine``) do the same thing for every shape key of a
kernel: some work on one GPU that yields one entry of a presetdb-results/1 file. This
module runs that work and keeps the results file; the work itself is the caller's.

API (what tune uses and refine plugs into)::

    from presetdb.offline.farm import LocalExecutor, RayExecutor, ResultsFile, ShapeTask, run_shapes

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
- The results file is rewritten atomically after every finished shape; a rerun skips
  the shapes already in it (`ResultsFile` refuses a file of another kernel, platform,
  kernel source or, for the fields named in ``resume_same``, another run setting).

Executors:

- `LocalExecutor`: one shape after another in this process (no Ray needed).
- `RayExecutor`: one Ray task per shape, ``num_gpus=gpus_per_task`` each, in a fresh
  worker process per task (``max_calls=1``: a CUDA context never moves to another GPU).
  Before the worker imports the kernel modules (``PRESETDB_KERNEL_MODULES`` and
  ``modules``) it sets ``HELION_AUTOTUNE_PRECOMPILE_JOBS`` to its host's cores divided
  by the tasks that host runs at once, so concurrent searches do not oversubscribe the
  CPU. ``platform`` routes tasks to GPUs of that platform only: a node advertises it
  with the custom resource ``presetdb_platform:<name>`` or Ray's own
  ``accelerator_type:<TYPE>`` (e.g. ``H100`` -> ``nvidia_h100``); a cluster without it
  fails at once, naming the platforms it has. The driver loops on
  ``ray.wait(pending, num_returns=1)`` and writes each result as it lands.
"""

from __future__ import annotations

import os
import socket
import time
import traceback
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field, replace
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

from presetdb.errors import FarmError, TuneError
from presetdb.keys import canonical_key
from presetdb.offline.importers import presetdb_results
from presetdb.offline.importers.records import PROVENANCE_FIELDS
from presetdb.store.models import utc_now

FARM_INSTALL = "pip install 'presetdb[farm]'"
PLATFORM_RESOURCE = "presetdb_platform:"  # custom resource a node may advertise
ACCELERATOR_RESOURCE = "accelerator_type:"  # Ray's own, from the detected GPU
# Driver settings the workers need (kernels, Helion's search, the interpreter).
FORWARDED_PREFIXES = ("HELION_", "TRITON_")
FORWARDED_NAMES = ("PRESETDB_KERNEL_MODULES",)
TRACEBACK_TAIL = 3000  # characters of a failure's traceback kept in the file
NOTE = "_note"  # an entry member the work may add for the console line; never saved
# Provenance of the machine that ran a shape (the driver may have no GPU): host, device, versions.
MACHINE_FIELDS = PROVENANCE_FIELDS[: PROVENANCE_FIELDS.index("presetdb_version") + 1]

__all__ = [
    "FARM_INSTALL",
    "LocalExecutor",
    "RayExecutor",
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
        self.failures = []  # failed shapes are tried again
        return self.run

    def finished_keys(self) -> set[str]:
        return {canonical_key(e["key"]) for e in self.entries}

    def add(self, entry: Mapping[str, Any]) -> None:
        entry = dict(entry)
        machine = entry.get("run") or {}
        if not any(self.run.get(k) for k in ("host", "device_name")):
            # The header describes the first machine (the driver may have no GPU).
            self.run.update({k: v for k, v in machine.items() if k in MACHINE_FIELDS})
        self.entries.append(entry)

    def fail(self, key: Mapping[str, Any], error: str, tail: str | None = None) -> None:
        failure: dict[str, Any] = {"key": dict(key), "error": error}
        if tail:
            failure["traceback"] = tail
        self.failures.append(failure)

    def save(self) -> None:
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
    todo = [k for k in keys if canonical_key(k) not in finished]
    summary = RunSummary(out.path, total=len(keys), skipped=len(keys) - len(todo), submitted=len(todo))
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
    """One shape after another in this process, on its GPU (or the interpreter)."""

    def __init__(self, device: str = "cuda") -> None:
        self.device = device

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
                monitor.finished(run_task(work, task, worker))
        except KeyboardInterrupt:
            return True
        return False


@dataclass(frozen=True)
class WorkerSetup:
    """What a Ray worker does before the work: shipped with every task."""

    modules: tuple[str, ...]
    gpus_per_task: float
    cpus_per_task: float
    check_platform: str | None  # the platform its CUDA device must resolve to
    precompile_jobs: int | None  # None: host cores / tasks at once on that host


def _require_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise FarmError(f"--executor ray needs Ray, which is not installed: {FARM_INSTALL}") from None
    return ray


def forwarded_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The driver's variables the workers need (kernel modules, Helion, Triton)."""
    environ = os.environ if environ is None else environ
    return {k: v for k, v in environ.items() if k.startswith(FORWARDED_PREFIXES) or k in FORWARDED_NAMES}


def platform_resources(resources: Mapping[str, float]) -> dict[str, str]:
    """Ray resource name -> the presetdb platform it stands for."""
    from presetdb.runtime.platforms import derive_platform_name

    found = {}
    for name in resources:
        if name.startswith(PLATFORM_RESOURCE):
            found[name] = name[len(PLATFORM_RESOURCE) :]
        elif name.startswith(ACCELERATOR_RESOURCE):
            found[name] = derive_platform_name(name[len(ACCELERATOR_RESOURCE) :])
    return found


def route_platform(resources: Mapping[str, float], platform: str) -> str:
    """The resource a task asks for to land on a GPU of `platform` (our own resource
    before Ray's accelerator type); a cluster without one fails here, naming its GPUs."""
    mapping = platform_resources(resources)
    matching = sorted((not name.startswith(PLATFORM_RESOURCE), name) for name, p in mapping.items() if p == platform)
    if matching:
        return matching[0][1]
    have = sorted({f"{p} ({name})" for name, p in mapping.items()})
    raise FarmError(
        f"the Ray cluster has no GPU of platform {platform}: it has "
        f"{', '.join(have) if have else 'no GPU whose platform it names'} and "
        f"{resources.get('GPU', 0):g} GPU(s) in all. Start workers on {platform} GPUs "
        f"(or advertise them: ray start --resources '{{\"{PLATFORM_RESOURCE}{platform}\": 8}}')."
    )


class _Board:
    """A Ray actor the workers tell when they start a shape (the per-GPU lines)."""

    def __init__(self) -> None:
        self.started: dict[int, tuple[dict[str, Any], WorkerInfo]] = {}

    def start(self, index: int, key: dict[str, Any], worker: WorkerInfo) -> None:
        self.started[index] = (key, worker)

    def take(self) -> list[tuple[int, dict[str, Any], WorkerInfo]]:
        news, self.started = [(i, key, worker) for i, (key, worker) in self.started.items()], {}
        return news


def _slots_on_this_node(ray: Any, setup: WorkerSetup) -> int:
    """How many of these tasks this worker's node runs at once."""
    node = ray.get_runtime_context().get_node_id()
    resources: dict[str, float] = next((n["Resources"] for n in ray.nodes() if n["NodeID"] == node), {})
    slots = [resources.get("GPU", 0) // setup.gpus_per_task] if setup.gpus_per_task else []
    if setup.cpus_per_task:
        slots.append(resources.get("CPU", 0) // setup.cpus_per_task)
    return max(1, int(min(slots))) if slots else 1


def _process_age_seconds() -> float | None:
    """Seconds since this process started (Linux /proc); None where that is unknown."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        start_ticks = int(fields[19])  # stat field 22, starttime: clock ticks after boot
        uptime = float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))


def _worker_main(work: ShapeWork, task: ShapeTask, setup: WorkerSetup, board: Any, index: int) -> ShapeOutcome:
    """A Ray task: set the host's share of compile jobs, import the kernel modules,
    check the GPU's platform, run the work. Runs in a fresh worker process."""
    entered, age = time.time(), _process_age_seconds()
    import ray

    jobs = setup.precompile_jobs or max(1, (os.cpu_count() or 1) // _slots_on_this_node(ray, setup))
    # Before any kernel module is imported: Helion reads it when a kernel is created.
    os.environ.setdefault("HELION_AUTOTUNE_PRECOMPILE_JOBS", str(jobs))
    jobs = int(os.environ["HELION_AUTOTUNE_PRECOMPILE_JOBS"])
    host, gpus = socket.gethostname(), os.environ.get("CUDA_VISIBLE_DEVICES", "")
    worker = WorkerInfo(host, os.getpid(), gpus, "", jobs, time.time())
    try:
        from presetdb.helion.autotune import machine_provenance
        from presetdb.helion.registry import load_kernel_modules

        device_name = machine_provenance("cuda" if setup.check_platform else "cpu")["device_name"]
        worker = WorkerInfo(host, os.getpid(), gpus, device_name, jobs, worker.started)
        board.start.remote(index, task.key, worker)
        if setup.check_platform:
            from presetdb.runtime.platforms import derive_platform_name

            if derive_platform_name(device_name) != setup.check_platform:
                raise FarmError(
                    f"{host} gpu {gpus}: {device_name!r} is not a {setup.check_platform} GPU; "
                    "this node advertises a platform it does not have"
                )
        load_kernel_modules(setup.modules)
    except Exception as exc:  # noqa: BLE001  (recorded as this shape's failure)
        return failed_outcome(task, exc, worker)
    if age is not None:
        worker = replace(worker, setup_seconds=age + time.time() - entered)
    return run_task(work, task, worker)


class RayExecutor:
    """One Ray task per shape on the cluster at `address`: None, the cluster this process
    is already connected to, else a new private one on this machine (stopped at the end);
    "auto", the one `ray start` made here; "HOST:PORT", a cluster this host is a node of;
    "ray://HOST:PORT", any cluster through Ray Client."""

    POLL_SECONDS = 0.5

    def __init__(
        self,
        address: str | None = None,
        *,
        gpus_per_task: float = 1,
        cpus_per_task: float = 1,
        max_retries: int = 2,
        platform: str | None = None,
        device: str = "cuda",
        modules: Sequence[str] = (),
        precompile_jobs: int | None = None,
        in_flight: int | None = None,
    ) -> None:
        if gpus_per_task < 0 or cpus_per_task < 0 or max_retries < 0:
            raise FarmError("--gpus-per-task, --cpus-per-task and --max-retries cannot be negative")
        self.address = address
        self.gpus_per_task = gpus_per_task
        self.cpus_per_task = cpus_per_task
        self.max_retries = max_retries
        self.platform = platform
        self.device = device
        self.modules = tuple(modules)
        self.precompile_jobs = precompile_jobs
        self.in_flight = in_flight
        self._ray: Any = None
        self._started_here = False
        self._resources: dict[str, float] = {}
        self._options: dict[str, Any] = {}

    def connect(self) -> tuple[Any, bool]:
        """(ray, whether this call started the connection)."""
        ray = _require_ray()
        if ray.is_initialized():
            return ray, False
        env = forwarded_env()
        options: dict[str, Any] = {"runtime_env": {"env_vars": env}} if env else {}
        if self.address is None:
            # A new private cluster on this machine ("local"), never one Ray's address file
            # names: that may be stale, and Ray then retries it for minutes.
            options.update(address="local", include_dashboard=False)
        else:
            options["address"] = self.address
        try:
            ray.init(**options)
        except Exception as exc:
            raise FarmError(
                f"cannot reach a Ray cluster at {self.address or '(new local cluster)'}: "
                f"{type(exc).__name__}: {exc}. Start one (`ray start --head`, docs/farm.md) or "
                "pass --address. A cluster started with `ray start` on Ray >= 2.60 needs "
                "RAY_AUTH_MODE=token (and its token) on this driver too."
            ) from exc
        return ray, True

    def prepare(self) -> None:
        """Connect and check that the cluster can run the tasks (GPUs, the platform)."""
        if self._ray is None:
            self._ray, self._started_here = self.connect()
            self._resources = dict(self._ray.cluster_resources())
        self._options = self.task_options(self._resources)

    def close(self) -> None:
        if self._ray is not None and self._started_here:
            self._ray.shutdown()
        self._ray = None

    def cluster_platform(self) -> str:
        """The one GPU platform the cluster names (for a run without --platform)."""
        self.prepare()
        named = sorted(set(platform_resources(self._resources).values()))
        if len(named) != 1:
            have = f"several: {', '.join(named)}" if named else "none (no accelerator_type:* or presetdb_platform:* resource)"
            raise FarmError(f"which platform to tune? The Ray cluster names {have}; pass --platform")
        self.platform = named[0]
        self.prepare()  # route to it
        return self.platform

    def task_options(self, resources: Mapping[str, float]) -> dict[str, Any]:
        """Ray options of one shape's task, checked against the cluster's resources."""
        if self.gpus_per_task and resources.get("GPU", 0) < self.gpus_per_task:
            raise FarmError(
                f"the Ray cluster has {resources.get('GPU', 0):g} GPU(s); a task needs "
                f"{self.gpus_per_task:g} (--gpus-per-task). It has: {describe_cluster(resources)}"
            )
        options: dict[str, Any] = {
            "num_gpus": self.gpus_per_task,
            "num_cpus": self.cpus_per_task,
            "max_retries": self.max_retries,
            "max_calls": 1,  # a fresh worker process per shape
            "retry_exceptions": False,  # a Python error is the shape's failure, not a retry
        }
        if self.platform:
            options["resources"] = {route_platform(resources, self.platform): 0.001}
        return options

    def execute(self, tasks: Sequence[ShapeTask], work: ShapeWork, monitor: Monitor) -> bool:
        self.prepare()  # the caller (`run_shapes`, through `connected`) closes it
        return self._execute(self._ray, tasks, work, monitor)

    def _execute(self, ray: Any, tasks: Sequence[ShapeTask], work: ShapeWork, monitor: Monitor) -> bool:
        resources, options = self._resources, self._options
        setup = WorkerSetup(
            self.modules,
            self.gpus_per_task,
            self.cpus_per_task,
            self.platform if self.device.startswith("cuda") else None,
            self.precompile_jobs,
        )
        remote = ray.remote(**options)(_worker_main)  # max_calls is not an .options() option
        board = ray.remote(num_cpus=0)(_Board).remote()
        slots = max(1, int(resources.get("GPU", 0) // self.gpus_per_task)) if self.gpus_per_task else 1
        limit = self.in_flight or 2 * slots + 2  # queued a little ahead of the free GPUs
        work_ref = ray.put(work)
        queue = list(enumerate(tasks))
        pending: dict[Any, tuple[int, ShapeTask]] = {}
        finished: set[int] = set()
        news = board.take.remote()
        try:
            while queue or pending:
                while queue and len(pending) < limit:
                    index, task = queue.pop(0)
                    pending[remote.remote(work_ref, task, setup, board, index)] = (index, task)
                ready, _ = ray.wait(list(pending), num_returns=1, timeout=self.POLL_SECONDS)
                if ray.wait([news], timeout=0)[0]:
                    for index, key, worker in ray.get(news):
                        if index not in finished:  # news of a start can come after its end
                            monitor.started(key, worker)
                    news = board.take.remote()
                for ref in ready:
                    index, task = pending.pop(ref)
                    finished.add(index)
                    monitor.finished(self._outcome(ray, ref, task))
        except KeyboardInterrupt:
            for ref in pending:
                ray.cancel(ref, force=True)  # kills the worker processes
            return True
        finally:
            ray.kill(board)
        return False

    def _outcome(self, ray: Any, ref: Any, task: ShapeTask) -> ShapeOutcome:
        try:
            outcome = ray.get(ref)
        except ray.exceptions.RayError as exc:
            # The worker died more than --max-retries times, was cancelled, or Ray failed.
            text = str(exc).strip().splitlines()
            return ShapeOutcome(
                task.key,
                error=f"{type(exc).__name__}: {text[0] if text else ''}"[:2000],
                traceback="\n".join(text)[-TRACEBACK_TAIL:],
                finished=time.time(),
            )
        return outcome if isinstance(outcome, ShapeOutcome) else ShapeOutcome(task.key, error=repr(outcome))


def describe_cluster(resources: Mapping[str, float]) -> str:
    """One line: GPUs, CPUs and the platforms a cluster's resources name."""
    platforms = sorted(set(platform_resources(resources).values()))
    return (
        f"{resources.get('GPU', 0):g} GPU(s), {resources.get('CPU', 0):g} CPU(s); platforms: "
        f"{', '.join(platforms) if platforms else 'none named'}"
    )

