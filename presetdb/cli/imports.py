"""`presetdb import`, `export`, `new-migration` and `tune`: results files in and out."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from presetdb.cli.common import DbOption, console, db_path, err_console
from presetdb.errors import KeySpecError
from presetdb.keys import parse_key

# Rows printed by a dry run before "... and N more".
MAX_PRINTED_ROWS = 200


def import_cmd(
    files: Annotated[
        list[Path], typer.Argument(help="Results files (any supported format).", show_default=False)
    ],
    db: DbOption = None,
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
) -> None:
    """Import tuning results: validated row by row, written in one transaction (all or nothing).

    Formats: presetdb-results/1, vLLM configs/<kernel>/<platform>.json, Helion *.best_config, Helion AOT tuned_configs_*.json.

    Configs are checked against the kernel's Helion ConfigSpec, keys against its key spec. A changed config supersedes the stored one (history kept); the same file again changes nothing.

    Example: presetdb import results/rms_norm_h100.json --db presets.db --dry-run
    """
    from presetdb.offline.importers import import_files

    shape_key = None
    if key is not None:
        try:
            shape_key = parse_key(key)
        except KeySpecError as exc:
            raise typer.BadParameter(str(exc), param_hint="--key") from None
    report = import_files(
        db_path(db, for_write=True),
        files,
        fmt=fmt,
        platform=platform,
        kernel=kernel,
        key=shape_key,
        dry_run=dry_run,
    )
    for warning in report.warnings:
        err_console.print(f"[yellow]warning:[/] {warning}", highlight=False)
    if dry_run:
        _print_rows(report)
        for problem in report.problems:
            console.print(f"[red]invalid[/] {problem}", highlight=False)
    verb = "would be" if dry_run else "were"
    console.print(
        f"{len(report.files)} file(s): {report.summary()} ({verb} written{'; nothing written' if dry_run else ''})"
    )
    if report.problems:
        raise typer.Exit(1)


def _print_rows(report: object) -> None:
    rows = getattr(report, "rows", [])
    table = Table(title="dry run: what an import would do")
    for col in ("file", "row", "kernel", "platform", "shape key", "outcome"):
        table.add_column(col, overflow="fold")
    for r in rows[:MAX_PRINTED_ROWS]:
        table.add_row(r.file, str(r.row), r.kernel, r.platform, r.shape_key, r.outcome)
    console.print(table)
    if len(rows) > MAX_PRINTED_ROWS:
        console.print(f"... and {len(rows) - MAX_PRINTED_ROWS} more row(s)")


def export_cmd(
    kernel: Annotated[str, typer.Option("--kernel", "-k", help="Kernel to export.", show_default=False)],
    platform: Annotated[
        str, typer.Option("--platform", "-p", help="Platform to export.", show_default=False)
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output directory.", show_default=False)],
    fmt: Annotated[str, typer.Option("--format", help="vllm | presetdb")] = "presetdb",
    db: DbOption = None,
) -> None:
    """Export the active presets of one kernel x platform; `presetdb import` reads them back.

    vllm: OUT/<kernel>/<platform>.json in vLLM's layout (keys and configs). presetdb: presetdb-results/1 with timings, runners-up and provenance.

    Example: presetdb export --kernel rms_norm --platform nvidia_h100 --format vllm --out configs/
    """
    from presetdb.offline.export import export

    if fmt not in ("vllm", "presetdb"):
        raise typer.BadParameter("use vllm or presetdb", param_hint="--format")
    for path in export(db_path(db), kernel, platform, fmt, out):  # type: ignore[arg-type]
        console.print(f"wrote {path}")


def new_migration_cmd(
    files: Annotated[list[Path], typer.Argument(help="presetdb-results/1 files.", show_default=False)],
    message: Annotated[str, typer.Option("--message", "-m", help="What the data is.", show_default=False)],
    root: Annotated[
        Path | None,
        typer.Option("--root", help="Source tree with migrations/ and seed_data/ (default: this checkout)."),
    ] = None,
) -> None:
    """Validate results files, copy them into seed_data/ and write a data migration pinning them.

    Writes migrations/versions/NNNN_data_<slug>.py after the current head. It pins each file's sha256 and loads it with the frozen loader presetdb.store.seedload.v1; its downgrade removes exactly the rows it added.

    Example: presetdb new-migration rms_norm_h100.json -m "rms_norm on H100"
    """
    from presetdb.offline.new_migration import new_migration

    made = new_migration(files, message, root=root)
    for name, sha in made.seed_files.items():
        state = "already in seed_data/" if name in made.reused else "copied to seed_data/"
        console.print(f"{name}: {state} (sha256 {sha[:16]}...)")
    console.print(f"wrote {made.path} (revision {made.revision}, after {made.down_revision})")


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
    from_queue: Annotated[
        list[str] | None,
        typer.Option(
            "--from-queue", help="Take the shapes from a tuning queue: a `presetdb queue --format json` file or "
            "ledger dbs (user overlays); repeatable, best-ranked first.",
        ),
    ] = None,
    effort: Annotated[str, typer.Option("--effort", help="Helion autotune effort: quick | full.")] = "quick",
    budget_seconds: Annotated[
        int | None, typer.Option("--budget-seconds", help="Time budget per shape for Helion's search.")
    ] = None,
    seed: Annotated[
        int | None, typer.Option("--seed", help="Search seed (default: random, recorded).")
    ] = None,
    platform: Annotated[
        str | None, typer.Option("--platform", "-p", help="Canonical platform (default: from the device).")
    ] = None,
    device: Annotated[
        str, typer.Option("--device", help="cuda (default) or cpu (TRITON_INTERPRET=1).")
    ] = "cuda",
    search: Annotated[
        str,
        typer.Option(
            "--search", help="helion (Helion's autotuner) | sample (a few configs; CPU smoke runs)."
        ),
    ] = "helion",
    runners_up: Annotated[int, typer.Option("--runners-up", help="Runners-up to re-measure and keep.")] = 3,
    module: Annotated[
        list[str] | None,
        typer.Option("--module", help="Import this module first (it registers your kernel); repeatable."),
    ] = None,
) -> None:
    """Autotune a kernel per shape with Helion and write a presetdb-results/1 file (GPU).

    Times the best config, Helion's default config and the PyTorch reference alike (do_bench median after warm-up).

    The file is rewritten atomically after every shape: rerunning skips finished shapes, and Ctrl-C keeps them.

    Example: presetdb tune rms_norm --grid 'dtype=bfloat16;hidden=4096;num_tokens=1,16,128' --effort quick --out rms_norm_h100.json

    Example (the keys production served far away): presetdb tune softmax --from-queue queue.json --out softmax_h100.json
    """
    from presetdb.offline import tune as tuning

    if module:
        from presetdb.helion.registry import load_kernel_modules

        load_kernel_modules(module)
    keys = shapes_from(kernel, shapes, grid, from_queue, tuning.load_shapes)
    if search not in ("helion", "sample"):
        raise typer.BadParameter("use helion or sample", param_hint="--search")
    on_cpu = device == "cpu"
    timer = tuning.cpu_timer() if on_cpu else None
    chosen = tuning.sample_search(timer=timer) if search == "sample" or on_cpu else tuning.helion_search
    tuner = tuning.Tuner(
        kernel,
        out,
        effort=effort,
        search=chosen,
        timer=timer,
        device=device,
        seed=seed,
        budget_seconds=budget_seconds,
        platform=platform,
        runners_up=runners_up,
        benchmark_method="median of wall time, 3 calls after one warm-up (CPU)" if on_cpu else None,
    )
    summary = tuner.run(keys)
    console.print(
        f"{summary.path}: {summary.done} tuned, {summary.skipped} already there, "
        f"{len(summary.failed)} failed, of {summary.total} shape(s)"
    )
    if summary.interrupted:
        err_console.print("interrupted: finished shapes are kept; run the same command again to resume")
        raise typer.Exit(130)
    if summary.failed:
        raise typer.Exit(1)


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
    app.command("new-migration")(new_migration_cmd)
    app.command("tune")(tune_cmd)
