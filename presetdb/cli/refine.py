"""`presetdb refine`: re-rank the nearest stored configs on new shapes (seconds per shape)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from presetdb.cli.common import DbOption, console, db_path, err_console
from presetdb.cli.executors import (
    AddressOption,
    CpusPerTaskOption,
    DeviceOption,
    ExecutorOption,
    FromQueueOption,
    GpusPerTaskOption,
    MaxRetriesOption,
    ShapeHardLimitOption,
    WorkerOption,
    make_executor,
)


def refine_cmd(
    kernel: Annotated[str, typer.Argument(help="Registered kernel name, e.g. matmul.", show_default=False)],
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Results file (resumed if it exists).", show_default=False)
    ],
    shapes: Annotated[
        Path | None,
        typer.Option(
            "--shapes", help="Shape keys: a JSON array, one key per line, or {kernel: [keys]} (e.g. from `presetdb shapes`)."
        ),
    ] = None,
    grid: Annotated[
        str | None, typer.Option("--grid", help="e.g. 'dtype=bfloat16;n=4096;k=14336;m=1,16,37'.")
    ] = None,
    from_queue: FromQueueOption = None,
    db: DbOption = None,
    k: Annotated[int, typer.Option("--k", help="Distinct stored configs to try per shape (nearest keys first).")] = 8,
    timing: Annotated[
        str,
        typer.Option("--timing", help="graph: CUDA-graph replay (as served); flush: do_bench with an L2 flush."),
    ] = "graph",
    platform: Annotated[
        str | None,
        typer.Option(
            "--platform", "-p",
            help="Canonical platform of the results (default: from the device, or the Ray cluster's one "
            "platform). With --executor ray, tasks go only to GPUs of this platform.",
        ),
    ] = None,
    candidates_from: Annotated[
        str | None,
        typer.Option("--candidates-from", help="Take the stored configs of this platform (default: --platform)."),
    ] = None,
    device: DeviceOption = "cuda",
    check: Annotated[
        bool, typer.Option("--check/--no-check", help="Compare the winner's output with the PyTorch reference.")
    ] = True,
    module: Annotated[
        list[str] | None,
        typer.Option(
            "--module", help="Import this module first (it registers your kernel; Ray workers import it too); repeatable."
        ),
    ] = None,
    executor: ExecutorOption = "local",
    address: AddressOption = None,
    gpus_per_task: GpusPerTaskOption = 1,
    cpus_per_task: CpusPerTaskOption = 1,
    max_retries: MaxRetriesOption = 2,
    worker: WorkerOption = "shape",
    shape_hard_limit: ShapeHardLimitOption = None,
) -> None:
    """Time the k nearest stored configs and Helion's default on each shape; keep the fastest (GPU).

    Writes presetdb-results/1 (run source refine; every candidate's time kept as a runner-up) for `presetdb import` or `presetdb new-migration`.

    The file is rewritten after every shape: rerunning skips finished shapes, and Ctrl-C keeps them.

    --executor ray fans the shapes out over every GPU of a Ray cluster (pip install 'presetdb[farm]'; docs/farm.md).

    Example: presetdb refine matmul --shapes matmul_llama3.json --db presets.db --k 8 --out matmul_refined_h100.json

    Example: presetdb refine matmul --shapes matmul_llama3.json --db presets.db --executor ray --address auto --platform nvidia_h100 --out matmul_refined_h100.json

    Example (the keys production served far away): presetdb refine softmax --from-queue queue.json --out softmax_refined.json
    """
    from presetdb.cli.imports import shapes_from
    from presetdb.offline import refine as refining

    if module:
        from presetdb.helion.registry import load_kernel_modules

        load_kernel_modules(module)
    keys = shapes_from(kernel, shapes, grid, from_queue, lambda path: refining.shapes_for_kernel(path, kernel))
    runner = make_executor(
        executor,
        address=address,
        gpus_per_task=gpus_per_task,
        cpus_per_task=cpus_per_task,
        max_retries=max_retries,
        worker=worker,
        platform=platform,
        device=device,
        modules=module,
        shape_hard_limit=shape_hard_limit,
    )
    from sqlalchemy import URL

    source = db_path(db)
    on_entry = None
    if isinstance(source, URL):  # a registry: each refined shape is written as it lands

        def on_entry(entry: Any, run: Any, platform: str) -> None:
            from presetdb.offline.registry_writer import write_entry

            write_entry(source, refiner.rk, entry, run, platform=platform)

    refiner = refining.Refiner(
        kernel,
        out,
        on_entry=on_entry,
        db=source,
        k=k,
        timing=timing,
        device=device,
        platform=platform,
        candidates_from=candidates_from,
        check=check,
        executor=runner,
        console=err_console,
    )
    summary = refiner.run(keys)
    console.print(
        f"{summary.path}: {summary.done} refined, {summary.skipped} already there, "
        f"{len(summary.failed)} failed, "
        + (f"{summary.abandoned} abandoned earlier (--shape-hard-limit), " if summary.abandoned else "")
        + f"of {summary.total} shape(s)",
        markup=False,
    )
    if summary.interrupted:
        err_console.print("interrupted: finished shapes are kept; run the same command again to resume")
        raise typer.Exit(130)
    if summary.failed:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command("refine")(refine_cmd)
