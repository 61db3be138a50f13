"""The options `presetdb tune` and `presetdb refine` share: where the shapes come from
(a tuning queue), the device, and the executor (docs/farm.md): where the shapes run, this
process or one Ray task per shape on a cluster's GPUs."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from presetdb.offline.farm import LocalExecutor
    from presetdb.offline.farm_ray import RayExecutor

EXECUTORS = ("local", "ray")

FromQueueOption = Annotated[
    list[str] | None,
    typer.Option(
        "--from-queue", help="Take the shapes from a tuning queue: a `presetdb queue --format json` file or "
        "ledger dbs (user overlays); repeatable, best-ranked first.",
    ),
]
DeviceOption = Annotated[str, typer.Option("--device", help="cuda (default) or cpu (TRITON_INTERPRET=1).")]

ExecutorOption = Annotated[
    str, typer.Option("--executor", help="local (this process) | ray (one task per shape on a Ray cluster).")
]
AddressOption = Annotated[
    str | None,
    typer.Option(
        "--address",
        help="Ray cluster: auto (the one `ray start` made here) or ray://HOST:PORT. "
        "Default: a new local Ray cluster on this machine's GPUs.",
    ),
]
GpusPerTaskOption = Annotated[float, typer.Option("--gpus-per-task", help="GPUs per shape (Ray).")]
CpusPerTaskOption = Annotated[float, typer.Option("--cpus-per-task", help="CPUs reserved per shape (Ray).")]
MaxRetriesOption = Annotated[
    int, typer.Option("--max-retries", help="Retries of a shape whose worker process died (Ray).")
]
WorkerOption = Annotated[
    str,
    typer.Option(
        "--worker",
        help="Ray workers: shape (a fresh process per shape) | gpu (one long-lived process per GPU: "
        "no per-shape start-up; docs/farm.md).",
    ),
]
ShapeHardLimitOption = Annotated[
    float | None,
    typer.Option(
        "--shape-hard-limit", min=1, show_default=False,
        help="Seconds (local executor): a shape still running then (a compile that hangs) is recorded "
        "as failed for good and the process exits with code 4; rerun the same command to go on.",
    ),
]


def make_executor(
    executor: str,
    *,
    address: str | None,
    gpus_per_task: float,
    cpus_per_task: float,
    max_retries: int,
    worker: str = "shape",
    platform: str | None,
    device: str,
    modules: Sequence[str] | None,
    shape_hard_limit: float | None = None,
) -> LocalExecutor | RayExecutor:
    """--executor and its options -> the executor (Ray is imported only when it runs:
    without it, the run fails saying how to install it)."""
    from presetdb.offline import farm, farm_ray

    if executor not in EXECUTORS:
        raise typer.BadParameter(f"use {' or '.join(EXECUTORS)}", param_hint="--executor")
    if worker not in farm_ray.WORKER_KINDS:
        raise typer.BadParameter(f"use {' or '.join(farm_ray.WORKER_KINDS)}", param_hint="--worker")
    if executor == "local":
        return farm.LocalExecutor(device, shape_hard_limit)
    if shape_hard_limit is not None:
        raise typer.BadParameter(
            "only with --executor local (a Ray task's worker process is its own: stop it with Ctrl-C)",
            param_hint="--shape-hard-limit",
        )
    return farm_ray.RayExecutor(
        address,
        gpus_per_task=gpus_per_task,
        cpus_per_task=cpus_per_task,
        max_retries=max_retries,
        platform=platform,
        device=device,
        modules=modules or (),
        worker=worker,
    )
