"""Fan the shapes of `presetdb tune` / `presetdb refine` out over the GPUs of a Ray cluster.

`RayExecutor` is the `--executor ray` of `presetdb.offline.farm.run_shapes`: the driver
(which may have no GPU) keeps the results file; each shape's work runs on a GPU of the
cluster, one GPU (``gpus_per_task``) at a time, in one of two kinds of worker
(``--worker``):

- ``shape`` (the default): one Ray task per shape in a fresh worker process
  (``max_calls=1``), so nothing of one shape's process - its CUDA context, Helion's and
  Triton's in-memory caches - outlives it. Each shape pays the process's start: spawn,
  imports of torch/Triton/Helion, CUDA initialisation and Helion's first bind (about
  12 s a shape more than local on an H200; docs/farm.md).
- ``gpu``: one long-lived Ray actor per GPU slot, holding that GPU for its life (a CUDA
  context never moves to another GPU), which sets up once and then runs shape after
  shape. A shape whose Python error leaves the actor's CUDA context broken retires that
  actor; a fresh one takes its place.

Either way: before the worker imports the kernel modules (``PRESETDB_KERNEL_MODULES`` and
``modules``) it sets ``HELION_AUTOTUNE_PRECOMPILE_JOBS`` to its host's cores divided by
the shapes that host runs at once, so concurrent searches do not oversubscribe the CPU; a
dead worker process is retried by Ray (``max_retries``: task retries, or actor restarts
with the call retried); a Python error is the shape's recorded failure; Ctrl-C kills the
running workers and keeps the finished shapes. ``platform`` routes the work to GPUs of
that platform only: a node advertises it with the custom resource
``presetdb_platform:<name>`` or Ray's own ``accelerator_type:<TYPE>`` (e.g. ``H100`` ->
``nvidia_h100``); a cluster without it fails at once, naming the platforms it has. The
driver loops on ``ray.wait`` and writes each result as it lands.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from presetdb.errors import FarmError
from presetdb.offline.farm import (
    FARM_INSTALL,
    TRACEBACK_TAIL,
    Monitor,
    ShapeOutcome,
    ShapeTask,
    ShapeWork,
    WorkerInfo,
    failed_outcome,
    run_task,
)

PLATFORM_RESOURCE = "presetdb_platform:"  # custom resource a node may advertise
ACCELERATOR_RESOURCE = "accelerator_type:"  # Ray's own, from the detected GPU
# Driver settings the workers need (kernels, Helion's search, the interpreter).
FORWARDED_PREFIXES = ("HELION_", "TRITON_")
FORWARDED_NAMES = ("PRESETDB_KERNEL_MODULES",)
WORKER_KINDS = ("shape", "gpu")

__all__ = ["WORKER_KINDS", "RayExecutor", "describe_cluster", "route_platform"]


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


def _set_up(setup: WorkerSetup, started: float) -> WorkerInfo:
    """In a worker process, before its first shape (which it entered at `started`): the
    host's share of compile jobs, the GPU's platform checked, the kernel modules imported.
    Raises what goes wrong."""
    import ray

    jobs = setup.precompile_jobs or max(1, (os.cpu_count() or 1) // _slots_on_this_node(ray, setup))
    # Before any kernel module is imported: Helion reads it when a kernel is created.
    os.environ.setdefault("HELION_AUTOTUNE_PRECOMPILE_JOBS", str(jobs))
    jobs = int(os.environ["HELION_AUTOTUNE_PRECOMPILE_JOBS"])
    host, gpus = socket.gethostname(), os.environ.get("CUDA_VISIBLE_DEVICES", "")
    from presetdb.helion.autotune import machine_provenance
    from presetdb.helion.registry import load_kernel_modules

    device_name = machine_provenance("cuda" if setup.check_platform else "cpu")["device_name"]
    if setup.check_platform:
        from presetdb.runtime.platforms import derive_platform_name

        if derive_platform_name(device_name) != setup.check_platform:
            raise FarmError(
                f"{host} gpu {gpus}: {device_name!r} is not a {setup.check_platform} GPU; "
                "this node advertises a platform it does not have"
            )
    load_kernel_modules(setup.modules)
    return WorkerInfo(host, os.getpid(), gpus, device_name, jobs, started)


def _bare_worker(started: float) -> WorkerInfo:
    """What a worker can say about itself when its setup failed."""
    return WorkerInfo(socket.gethostname(), os.getpid(), os.environ.get("CUDA_VISIBLE_DEVICES", ""), started=started)


def _worker_main(work: ShapeWork, task: ShapeTask, setup: WorkerSetup, board: Any, index: int) -> ShapeOutcome:
    """A Ray task (``--worker shape``): set up, run the work. A fresh worker process."""
    entered = time.time()
    try:
        worker = _set_up(setup, entered)
    except Exception as exc:  # noqa: BLE001  (recorded as this shape's failure)
        return failed_outcome(task, exc, _bare_worker(entered))
    # Its whole age is set-up: the process was spawned for this shape.
    worker = replace(worker, setup_seconds=_process_age_seconds())
    board.start.remote(index, task.key, worker)
    return run_task(work, task, worker)


def _cuda_context_ok() -> bool:
    """False when this process's CUDA context is broken (e.g. after an illegal access)."""
    import sys

    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_initialized():
        return True
    try:
        torch.cuda.synchronize()
        torch.empty(1, device="cuda").add_(1)
        torch.cuda.synchronize()
    except Exception:  # noqa: BLE001
        return False
    return True


class _GpuWorker:
    """A Ray actor (``--worker gpu``) that holds one GPU for its life and runs shape
    after shape on it, set up once (at its first shape, so a failed setup is that
    shape's recorded failure, and the next shape tries again)."""

    def __init__(self, setup: WorkerSetup) -> None:
        self.setup = setup
        self.worker: WorkerInfo | None = None

    def ready(self) -> int:
        return os.getpid()

    def run(self, work: ShapeWork, task: ShapeTask, board: Any, index: int) -> tuple[ShapeOutcome, bool]:
        """(the shape's outcome, whether this actor is still fit for more shapes)."""
        entered = time.time()
        if self.worker is None:
            try:
                self.worker = _set_up(self.setup, entered)
            except Exception as exc:  # noqa: BLE001  (recorded as this shape's failure)
                return failed_outcome(task, exc, _bare_worker(entered)), True
            # The first shape reports the process's age: its spawn and set-up, paid once.
            worker = replace(self.worker, setup_seconds=_process_age_seconds())
        else:
            worker = replace(self.worker, started=entered)
        board.start.remote(index, task.key, worker)
        outcome = run_task(work, task, worker)
        return outcome, outcome.entry is not None or _cuda_context_ok()


class RayExecutor:
    """The shapes on the GPUs of the Ray cluster at `address`: None, the cluster this
    process is already connected to, else a new private one on this machine (stopped at
    the end); "auto", the one `ray start` made here; "HOST:PORT", a cluster this host is
    a node of; "ray://HOST:PORT", any cluster through Ray Client. `worker`: "shape" (a
    fresh process per shape) or "gpu" (a long-lived actor per GPU); see the module
    docstring."""

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
        worker: str = "shape",
    ) -> None:
        if gpus_per_task < 0 or cpus_per_task < 0 or max_retries < 0:
            raise FarmError("--gpus-per-task, --cpus-per-task and --max-retries cannot be negative")
        if worker not in WORKER_KINDS:
            raise FarmError(f"unknown --worker {worker!r}: use {' or '.join(WORKER_KINDS)}")
        self.address = address
        self.gpus_per_task = gpus_per_task
        self.cpus_per_task = cpus_per_task
        self.max_retries = max_retries
        self.platform = platform
        self.device = device
        self.modules = tuple(modules)
        self.precompile_jobs = precompile_jobs
        self.in_flight = in_flight
        self.worker = worker
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
        ray = self._ray
        setup = WorkerSetup(
            self.modules,
            self.gpus_per_task,
            self.cpus_per_task,
            self.platform if self.device.startswith("cuda") else None,
            self.precompile_jobs,
        )
        board = ray.remote(num_cpus=0)(_Board).remote()
        try:
            run = self._per_shape if self.worker == "shape" else self._per_gpu
            return run(ray, tasks, ray.put(work), setup, board, monitor)
        finally:
            ray.kill(board)

    def _slots(self) -> int:
        """GPU slots of the cluster: shapes that can run at once."""
        if not self.gpus_per_task:
            return 1
        return max(1, int(self._resources.get("GPU", 0) // self.gpus_per_task))

    def _per_shape(self, ray: Any, tasks: Sequence[ShapeTask], work_ref: Any, setup: WorkerSetup, board: Any, monitor: Monitor) -> bool:
        """One task per shape, each in a fresh worker process."""
        remote = ray.remote(**self._options)(_worker_main)  # max_calls is not an .options() option
        limit = self.in_flight or 2 * self._slots() + 2  # queued a little ahead of the free GPUs
        queue = list(enumerate(tasks))
        pending: dict[Any, tuple[int, ShapeTask]] = {}
        news = _News(ray, board, monitor)
        try:
            while queue or pending:
                while queue and len(pending) < limit:
                    index, task = queue.pop(0)
                    pending[remote.remote(work_ref, task, setup, board, index)] = (index, task)
                ready, _ = ray.wait(list(pending), num_returns=1, timeout=self.POLL_SECONDS)
                news.poll()
                for ref in ready:
                    index, task = pending.pop(ref)
                    news.finished.add(index)
                    monitor.finished(self._outcome(ray, ref, task))
        except KeyboardInterrupt:
            for ref in pending:
                ray.cancel(ref, force=True)  # kills the worker processes
            return True
        return False

    def _actor_options(self) -> dict[str, Any]:
        options = {k: v for k, v in self._options.items() if k not in ("max_calls", "max_retries", "retry_exceptions")}
        # A dead actor process is restarted (set up again) and the shape it ran is retried.
        return {**options, "max_restarts": self.max_retries, "max_task_retries": self.max_retries}

    def _per_gpu(self, ray: Any, tasks: Sequence[ShapeTask], work_ref: Any, setup: WorkerSetup, board: Any, monitor: Monitor) -> bool:
        """One long-lived actor per GPU slot, each given one shape at a time. An actor that
        cannot be placed (its GPUs are busy or absent) is never given a shape."""
        actor_class = ray.remote(_GpuWorker).options(**self._actor_options())
        starting: dict[Any, Any] = {}  # ready() ref -> actor
        starts_left = 2 * len(tasks) + self._slots()  # replacements are bounded: no endless respawn

        def start_actor() -> None:
            nonlocal starts_left
            if starts_left > 0:
                starts_left -= 1
                actor = actor_class.remote(setup)
                starting[actor.ready.remote()] = actor

        for _ in range(min(self._slots(), len(tasks))):
            start_actor()
        idle: list[Any] = []
        queue = list(enumerate(tasks))
        pending: dict[Any, tuple[int, ShapeTask, Any]] = {}
        news = _News(ray, board, monitor)
        try:
            while queue or pending:
                while queue and idle:
                    actor = idle.pop(0)
                    index, task = queue.pop(0)
                    pending[actor.run.remote(work_ref, task, board, index)] = (index, task, actor)
                if not pending and not starting:
                    raise FarmError("no Ray worker is left to run the remaining shapes")
                ready, _ = ray.wait([*pending, *starting], num_returns=1, timeout=self.POLL_SECONDS)
                news.poll()
                for ref in ready:
                    if ref in starting:
                        actor = starting.pop(ref)
                        try:
                            ray.get(ref)
                            idle.append(actor)
                        except ray.exceptions.RayError:
                            start_actor()
                        continue
                    index, task, actor = pending.pop(ref)
                    news.finished.add(index)
                    try:
                        outcome, fit = ray.get(ref)
                    except ray.exceptions.RayError:
                        # Died more than --max-retries times: the shape fails, a new actor takes over.
                        outcome, fit = self._outcome(ray, ref, task), False
                    monitor.finished(outcome)
                    if fit:
                        idle.append(actor)
                    else:
                        ray.kill(actor, no_restart=True)
                        start_actor()
        except KeyboardInterrupt:
            return True
        finally:
            for actor in (*idle, *starting.values(), *(a for _, _, a in pending.values())):
                ray.kill(actor, no_restart=True)  # ends the processes, running shapes too
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


class _News:
    """The workers' start messages (through the `_Board` actor) passed on to the monitor;
    a start that lands after its shape finished is dropped."""

    def __init__(self, ray: Any, board: Any, monitor: Monitor) -> None:
        self.ray, self.board, self.monitor = ray, board, monitor
        self.finished: set[int] = set()
        self.ref = board.take.remote()

    def poll(self) -> None:
        if not self.ray.wait([self.ref], timeout=0)[0]:
            return
        for index, key, worker in self.ray.get(self.ref):
            if index not in self.finished:
                self.monitor.started(key, worker)
        self.ref = self.board.take.remote()


def describe_cluster(resources: Mapping[str, float]) -> str:
    """One line: GPUs, CPUs and the platforms a cluster's resources name."""
    platforms = sorted(set(platform_resources(resources).values()))
    return (
        f"{resources.get('GPU', 0):g} GPU(s), {resources.get('CPU', 0):g} CPU(s); platforms: "
        f"{', '.join(platforms) if platforms else 'none named'}"
    )
