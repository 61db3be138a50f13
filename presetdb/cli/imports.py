"""`presetdb import`, `export`, `new-migration` and `tune`: results files in and out."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from presetdb.cli.common import (
    DbOption,
    ModuleOption,
    console,
    db_path,
    err_console,
    load_modules,
    plain,
    print_table,
    safe,
    warn_if_served,
)
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
from presetdb.errors import KeySpecError
from presetdb.keys import parse_key

# Rows printed by a dry run before "... and N more".
MAX_PRINTED_ROWS = 200


def import_cmd(
    files: Annotated[
        list[Path],
        typer.Argument(
            help="Results files (any supported format), or a vLLM configs/ tree (a directory).",
            show_default=False,
        ),
    ],
    db: Annotated[
        str | None,
        typer.Option(
            "--db",
            help="Database to import into: a file or a registry URL (postgresql+psycopg://USER@HOST/DB). "
            "Default: $PRESETDB_REGISTRY, else $PRESETDB_PATH; required without them "
            "(the embedded default db is never written).",
            show_default=False,
        ),
    ] = None,
    fmt: Annotated[
        str, typer.Option("--format", help="auto | presetdb | vllm | helion-cache | helion-aot")
    ] = "auto",
    platform: Annotated[
        str | None, typer.Option("--platform", "-p", help="Canonical platform, when the file cannot say.")
    ] = None,
    kernel: Annotated[
        str | None,
        typer.Option("--kernel", "-k", help="Kernel, when the file cannot say (Helion cache/AOT)."),
    ] = None,
    key: Annotated[
        str | None, typer.Option("--key", help="Shape key JSON for a Helion .best_config (it records none).")
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Report added/superseded/unchanged/invalid rows; write nothing.")
    ] = False,
    key_policy: Annotated[
        list[str] | None,
        typer.Option(
            "--key-policy",
            help="FIELD=POLICY (exact|nearest|ceil|floor) for kernels imported unverified; repeatable.",
        ),
    ] = None,
    source_rev: Annotated[
        str | None,
        typer.Option("--source-rev", help="Commit of the repository the files come from (kept in tuning_runs)."),
    ] = None,
) -> None:
    """Import tuning results: validated row by row, written in one transaction (all or nothing).

    Formats: presetdb-results/1, vLLM configs/<kernel>/<platform>.json (all three of vLLM's layouts, or a whole configs/ tree), Helion *.best_config, Helion AOT tuned_configs_*.json.

    Configs are checked against the kernel's Helion ConfigSpec, keys against its key spec. A vLLM kernel no registered module provides is imported unverified (key schema from the file, config syntax checked, not compiled); `presetdb verify` checks it later. A changed config supersedes the stored one (history kept); the same file again changes nothing.

    Example: presetdb import ~/vllm/vllm/kernels/helion/configs --db presets.db --source-rev 460aa5a --dry-run
    """
    from presetdb.offline.importers import import_files
    from presetdb.offline.importers.unverified import parse_key_policies

    shape_key = None
    if key is not None:
        try:
            shape_key = parse_key(key)
        except KeySpecError as exc:
            raise typer.BadParameter(plain(exc), param_hint="--key") from None
    target = db_path(db, for_write=True)
    if not dry_run and isinstance(target, Path):
        warn_if_served(target)
    with _row_progress(files) as advance:
        report = import_files(
            target,
            files,
            fmt=fmt,
            platform=platform,
            kernel=kernel,
            key=shape_key,
            dry_run=dry_run,
            key_policies=parse_key_policies(key_policy or []),
            source_rev=source_rev,
            on_checked=advance,
        )
    for warning in report.warnings:
        err_console.print(f"[yellow]warning:[/] {safe(warning)}", highlight=False)
    if dry_run:
        _print_rows(report)
        for problem in report.problems:
            console.print(f"[red]invalid[/] {safe(problem)}", highlight=False)
    for part in report.file_summaries:
        console.print(safe(part.line()), highlight=False)
    verb = "would be" if dry_run else "were"
    console.print(
        f"{len(report.files)} file(s): {report.summary()} ({verb} written{'; nothing written' if dry_run else ''})"
    )
    if report.problems:
        raise typer.Exit(1)


@contextmanager
def _row_progress(files: list[Path]) -> Iterator[Callable[[int], None]]:
    """A progress bar (with ETA when the files say how many rows) while rows are
    validated; only on a terminal, gone when done."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    total: int | None = 0
    for path in files:
        try:
            from presetdb.offline.importers import presetdb_results
            from presetdb.offline.importers.detect import detect_format

            if detect_format(path) != "presetdb":
                total = None
                break
            total = (total or 0) + int(presetdb_results.read_header(path).get("_entry_count", 0))
        except Exception:  # noqa: BLE001  (the import reports bad files; the bar just has no total)
            total = None
            break
    progress = Progress(
        TextColumn("validating rows"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        TimeRemainingColumn(), console=err_console, transient=True, disable=not err_console.is_terminal,
    )
    with progress:
        task = progress.add_task("rows", total=total or None)
        yield lambda n: progress.advance(task, n)


def _print_rows(report: object) -> None:
    rows = getattr(report, "rows", [])
    table = Table(title="dry run: what an import would do")
    for col in ("file", "row", "kernel", "platform", "shape key", "outcome"):
        table.add_column(col, overflow="fold")
    for r in rows[:MAX_PRINTED_ROWS]:
        table.add_row(
            safe(r.file), str(r.row), safe(r.kernel), safe(r.platform), safe(r.shape_key), safe(r.outcome)
        )
    print_table(table)
    if len(rows) > MAX_PRINTED_ROWS:
        console.print(f"... and {len(rows) - MAX_PRINTED_ROWS} more row(s)")


def export_cmd(
    kernel: Annotated[
        str, typer.Option("--kernel", "-k", help="Kernel to export, or all.", show_default=False)
    ],
    platform: Annotated[
        str, typer.Option("--platform", "-p", help="Platform to export, or all.", show_default=False)
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output directory.", show_default=False)],
    fmt: Annotated[str, typer.Option("--format", help="vllm | presetdb")] = "presetdb",
    db: DbOption = None,
) -> None:
    """Export the active presets of a kernel x platform (or all of them); `presetdb import` reads them back.

    vllm: OUT/<kernel>/<platform>.json in vLLM's current layout (keys and configs); a vLLM file imported and exported unchanged comes out byte for byte. presetdb: presetdb-results/1 with timings, runners-up and provenance.

    Example: presetdb export --kernel all --platform all --format vllm --out configs/ --db presets.db
    """
    from presetdb.offline.export import export

    if fmt not in ("vllm", "presetdb"):
        raise typer.BadParameter("use vllm or presetdb", param_hint="--format")
    for path in export(db_path(db), kernel, platform, fmt, out):  # type: ignore[arg-type]
        console.print(f"wrote {safe(path)}", highlight=False)


def verify_cmd(
    module: Annotated[
        list[str],
        typer.Option("--module", help="Module that registers the kernel(s); repeatable.", show_default=False),
    ],
    kernel: Annotated[
        str | None, typer.Option("--kernel", "-k", help="Only this kernel (default: all with unverified rows).")
    ] = None,
    db: DbOption = None,
    device: Annotated[
        str | None, typer.Option("--device", help="cpu (Triton interpreter) or cuda; default: cuda when present.")
    ] = None,
) -> None:
    """Check unverified rows (kernels imported before any module registered them) against the registered kernel.

    Each row's key must fit the kernel's key spec, Helion's ConfigSpec must accept its config and Helion must compile it (the Triton interpreter on a CPU: set TRITON_INTERPRET=1). A row that passes is marked verified; one that fails is quarantined with the reason.

    Example: presetdb verify --module myproject.kernels --kernel fused_qk_norm_rope --db presets.db
    """
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from presetdb.offline.verify import verify

    with Progress(
        TextColumn("verify"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
        TimeRemainingColumn(), console=err_console, transient=True,
    ) as progress:
        task = progress.add_task("verify", total=None)
        report = verify(
            db_path(db, for_write=True),
            modules=module,
            kernel=kernel,
            device=device,
            on_start=lambda n: progress.update(task, total=n),
            on_row=lambda _: progress.advance(task),
        )
    for o in report.outcomes:
        if o.outcome == "quarantined":
            console.print(
                f"[red]quarantined[/] {safe(o.kernel)} {safe(o.platform)} {safe(o.shape_key)} "
                f"(preset {o.preset_id}): {safe(o.reason)}",
                highlight=False,
            )
    for name in report.adopted_schemas:
        console.print(f"{safe(name)}: key schema inferred from a file replaced by the registered kernel's", highlight=False)
    for name, n in sorted(report.not_registered.items()):
        err_console.print(
            f"[yellow]warning:[/] {safe(name)}: not registered by these modules; {n} row(s) stay unverified",
            highlight=False,
        )
    for problem in report.problems:
        err_console.print(f"[red]problem:[/] {safe(problem)}", highlight=False)
    c = report.counts()
    console.print(f"{c['verified']} verified, {c['quarantined']} quarantined, {c['unchecked']} left unverified")
    if report.problems:
        raise typer.Exit(1)


def new_migration_cmd(
    files: Annotated[list[Path], typer.Argument(help="presetdb-results/1 files.", show_default=False)],
    message: Annotated[str, typer.Option("--message", "-m", help="What the data is.", show_default=False)],
    data_dir: Annotated[
        Path | None,
        typer.Option(
            "--data-dir",
            help="Your project's data folder (versions/ + seed_data/). Default: ./presetdb-data.",
            show_default=False,
        ),
    ] = None,
    root: Annotated[
        Path | None,
        typer.Option(
            "--root",
            help="For presetdb's developers: presetdb's own source tree (migrations/ and "
            "seed_data/) instead of your data folder.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Validate results files, copy them into your data folder and write a data migration pinning them.

    Writes presetdb-data/versions/uNNNN_data_<slug>.py (and copies the files to presetdb-data/seed_data/) in your project, never into the installed package. It pins each file's sha256 and loads it with the frozen loader presetdb.store.seedload.v1; its downgrade removes exactly the rows it added. `presetdb build` applies it after the package's migrations; its revision is kept in its own table, so any presetdb with the same schema opens the built file.

    Example: presetdb new-migration rms_norm_h100.json -m "rms_norm on H100"
    """
    from presetdb.offline.new_migration import new_migration

    made = new_migration(files, message, root=root, data_dir=data_dir)
    for name, sha in made.seed_files.items():
        state = "already in seed_data/" if name in made.reused else "copied to seed_data/"
        console.print(f"{safe(name)}: {state} (sha256 {sha[:16]}...)", highlight=False)
    console.print(
        f"wrote {safe(made.path)} (revision {made.revision}, after {made.down_revision or 'base'})",
        highlight=False,
    )


def tune_cmd(
    kernel: Annotated[str, typer.Argument(help="Registered kernel name, e.g. rms_norm.", show_default=False)],
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Results file (resumed if it exists).", show_default=False)
    ],
    shapes: Annotated[
        Path | None, typer.Option("--shapes", help="JSON array of shape keys (or one key per line).")
    ] = None,
    grid: Annotated[
        str | None, typer.Option("--grid", help="e.g. 'dtype=bfloat16;hidden=2048,4096;num_tokens=1,16,128'.")
    ] = None,
    from_queue: FromQueueOption = None,
    effort: Annotated[str, typer.Option("--effort", help="Helion autotune effort: quick | full.")] = "quick",
    budget_seconds: Annotated[
        int | None, typer.Option("--budget-seconds", help="Time budget per shape for Helion's search.")
    ] = None,
    seed: Annotated[
        int | None, typer.Option("--seed", help="Search seed (default: random, recorded).")
    ] = None,
    platform: Annotated[
        str | None,
        typer.Option(
            "--platform", "-p",
            help="Canonical platform (default: from the device, or the Ray cluster's one platform). "
            "With --executor ray, tasks go only to GPUs of this platform.",
        ),
    ] = None,
    device: DeviceOption = "cuda",
    search: Annotated[
        str,
        typer.Option(
            "--search", help="helion (Helion's autotuner) | sample (a few configs; CPU smoke runs)."
        ),
    ] = "helion",
    timing: Annotated[
        str,
        typer.Option(
            "--timing",
            help="graph: CUDA-graph replay (warm L2, no host time; as a server sees it) | "
            "flush: do_bench with the L2 flushed. Recorded per row as benchmark_method.",
        ),
    ] = "graph",
    warm_start: Annotated[
        bool,
        typer.Option(
            "--warm-start/--no-warm-start",
            help="Seed Helion's search with the stored configs of the nearest keys and the key's current preset.",
        ),
    ] = True,
    seed_configs: Annotated[
        Path | None,
        typer.Option(
            "--seed-configs", show_default=False,
            help="JSON array of configs to try first in every shape's search (after the warm start's), "
            "e.g. known-good tile shapes for this GPU family; checked against the kernel before any work.",
        ),
    ] = None,
    db: Annotated[
        str | None,
        typer.Option(
            "--db", show_default=False,
            help="Where warm-start configs come from: a file, or a registry URL, which also "
            "receives every finished shape as it lands. Default: $PRESETDB_REGISTRY if set, "
            "else the run-time layers (user overlay > $PRESETDB_PATH > embedded default).",
        ),
    ] = None,
    runners_up: Annotated[int, typer.Option("--runners-up", help="Runners-up to re-measure and keep.")] = 3,
    module: ModuleOption = None,
    executor: ExecutorOption = "local",
    address: AddressOption = None,
    gpus_per_task: GpusPerTaskOption = 1,
    cpus_per_task: CpusPerTaskOption = 1,
    max_retries: MaxRetriesOption = 2,
    worker: WorkerOption = "shape",
    shape_hard_limit: ShapeHardLimitOption = None,
) -> None:
    """Autotune a kernel per shape with Helion and write a presetdb-results/1 file (GPU).

    Times the best config, Helion's default config and the PyTorch reference alike (--timing).

    The file is rewritten atomically after every shape: rerunning skips finished shapes, and Ctrl-C keeps them.

    --executor ray fans the shapes out over every GPU of a Ray cluster (pip install 'presetdb[farm]'; docs/farm.md).

    Example: presetdb tune rms_norm --grid 'dtype=bfloat16;hidden=4096;num_tokens=1,16,128' --effort quick --out rms_norm_h100.json

    Example: presetdb tune rms_norm --shapes shapes.json --executor ray --address auto --platform nvidia_h100 --out rms_norm_h100.json

    Example (the keys production served far away): presetdb tune softmax --from-queue queue.json --out softmax_h100.json
    """
    from presetdb.errors import PresetDBError
    from presetdb.offline import tune as tuning

    # Arguments first (a usage error, exit 2), then whether this machine can tune at all.
    if timing not in tuning.TIMINGS:
        raise typer.BadParameter(f"{plain(timing)!r}: use one of {', '.join(tuning.TIMINGS)}", param_hint="--timing")
    if effort not in tuning.EFFORTS:
        raise typer.BadParameter(f"{plain(effort)!r}: use one of {', '.join(tuning.EFFORTS)}", param_hint="--effort")
    load_modules(module)
    keys = shapes_from(kernel, shapes, grid, from_queue, tuning.load_shapes)
    check_tune_device(device)
    if search not in ("helion", "sample"):
        raise typer.BadParameter("use helion or sample", param_hint="--search")
    if timing not in tuning.TIMINGS:
        raise typer.BadParameter(f"use {' or '.join(tuning.TIMINGS)}", param_hint="--timing")
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
    on_cpu = device == "cpu"
    timer = tuning.cpu_timer() if on_cpu else None
    chosen = tuning.sample_search(timer=timer) if search == "sample" or on_cpu else None
    from sqlalchemy import URL

    from presetdb.store.engine import parse_target, registry_from_env

    source = parse_target(db) if db else registry_from_env()
    on_entry = None
    if isinstance(source, URL):  # a registry: each finished shape is written as it lands

        def on_entry(entry: Any, run: Any, platform: str) -> None:
            from presetdb.offline.registry_writer import write_entry

            write_entry(source, tuner.rk, entry, run, platform=platform)

    try:
        tuner = tuning.Tuner(
            kernel,
            out,
            on_entry=on_entry,
            effort=effort,
            search=chosen,
            timer=timer,
            timing=timing,
            device=device,
            seed=seed,
            budget_seconds=budget_seconds,
            platform=platform,
            runners_up=runners_up,
            benchmark_method=tuning.CPU_METHOD if on_cpu else None,
            executor=runner,
            console=err_console,
        )
        if seed_configs is not None:
            tuner.seed_configs = tuning.load_seed_configs(seed_configs, tuner.rk, keys[0])
        if warm_start:
            tuner.warm_start = tuning.stored_neighbours(tuner.rk, tuner.platform_name(), db=source)
        summary = tuner.run(keys)
    except PresetDBError as exc:
        err_console.print(f"[red]error:[/] {escape(str(exc))}", highlight=False)
        raise typer.Exit(2) from None
    console.print(
        f"{safe(summary.path)}: {summary.done} tuned, {summary.skipped} already there, "
        f"{len(summary.failed)} failed, "
        + (f"{summary.abandoned} abandoned earlier (--shape-hard-limit), " if summary.abandoned else "")
        + f"of {summary.total} shape(s)"
    )
    if summary.interrupted:
        err_console.print("interrupted: finished shapes are kept; run the same command again to resume")
        raise typer.Exit(130)
    if summary.failed:
        raise typer.Exit(1)


def check_tune_device(device: str) -> None:
    """Up front, before any shape: a device this machine can tune on (a CPU machine once
    failed every shape with "Torch not compiled with CUDA enabled" and wrote an empty file)."""
    import os

    from presetdb.errors import TuneError

    if device not in ("cuda", "cpu"):
        raise typer.BadParameter(f"{plain(device)!r}: use cuda or cpu", param_hint="--device")
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise TuneError(
                "no CUDA GPU here (torch.cuda.is_available() is False): `presetdb tune` measures "
                "configs on the GPU they are for. Run it on a GPU machine; for a CPU smoke run "
                "use `TRITON_INTERPRET=1 presetdb tune ... --device cpu` (timings are not GPU timings)."
            )
    elif os.environ.get("TRITON_INTERPRET") != "1":
        raise TuneError("--device cpu runs Helion kernels in Triton's interpreter: set TRITON_INTERPRET=1")


def shapes_from(kernel: str, shapes: Path | None, grid: str | None, from_queue: list[str] | None, read_shapes: Any) -> list[dict[str, Any]]:
    """The shapes of `tune`/`refine`: exactly one of --shapes, --grid, --from-queue."""
    from presetdb.offline import queue as queueing
    from presetdb.offline import tune as tuning

    given = [name for name, value in (("--shapes", shapes), ("--grid", grid), ("--from-queue", from_queue)) if value]
    if len(given) != 1:
        raise typer.BadParameter("give exactly one of --shapes FILE, --grid SPEC or --from-queue FILE|DB")
    if from_queue:
        keys = queueing.shapes_from_queue(from_queue, kernel)
        if not keys:
            raise typer.BadParameter(f"the queue has no {kernel} keys", param_hint="--from-queue")
        return keys
    return read_shapes(shapes) if shapes is not None else tuning.parse_grid(grid or "")


def register(app: typer.Typer) -> None:
    app.command("import")(import_cmd)
    app.command("export")(export_cmd)
    app.command("verify")(verify_cmd)
    app.command("new-migration")(new_migration_cmd)
    app.command("tune")(tune_cmd)
