"""`presetdb coverage`: what a database would serve each shape key of a model, and the gaps."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from presetdb.cli.common import ListFormat, ListFormatOption, ModuleOption, console, load_modules, print_table, safe
from presetdb.cli.picking import check_platform, picker_for, stored_key_schema
from presetdb.cli.shapes import ModelsOption, TokensOption
from presetdb.errors import UnknownKernelError
from presetdb.keys import KeySpec, canonical_key
from presetdb.offline import coverage as covering
from presetdb.offline import shapes as shaping


def coverage_cmd(
    platform: Annotated[
        str,
        typer.Option(
            "--platform", "-p", help="Canonical platform to serve, e.g. nvidia_h100; its fallbacks apply as at run time."
        ),
    ],
    model: ModelsOption = None,
    tokens: TokensOption = None,
    shapes: Annotated[
        Path | None,
        typer.Option(
            "--shapes", show_default=False,
            help="Shape keys to check instead of (or besides) a model's: {kernel: [keys]} (what `presetdb shapes` "
            "writes for several kernels), or one kernel's JSON array / key lines with --kernel.",
        ),
    ] = None,
    kernel: Annotated[
        list[str] | None,
        typer.Option("--kernel", "-k", help="Only this kernel; repeatable. Default: every kernel with shapes."),
    ] = None,
    db: Annotated[
        str | None,
        typer.Option(
            "--db", show_default=False,
            help="Check only this file (or registry URL), as the deployment layer. Default: the run-time layers "
            "(user overlay > $PRESETDB_PATH > embedded default).",
        ),
    ] = None,
    top: Annotated[int, typer.Option("--top", "-n", help="Gaps listed in the table (json lists all).", min=0)] = 20,
    fmt: ListFormatOption = ListFormat.table,
    module: ModuleOption = None,
) -> None:
    """How a model's shapes would be served on a platform, before it runs: per kernel, the keys
    served by an exact stored key, a near one (within the far limits), another platform's,
    the default entry, a far one, or nothing; then the gaps, ranked.

    --format json writes a tuning queue (presetdb-queue/1: the keys that are not exact, far and
    missed first) that `presetdb refine KERNEL --from-queue FILE` refines; it also lists every key.

    Example: presetdb coverage --model llama-3-8b --platform nvidia_h100 --format json > gaps.json
    """
    from presetdb.settings import Settings

    if not model and shapes is None:
        raise typer.BadParameter("give --model NAME (see `presetdb shapes --catalog`) or --shapes FILE", param_hint="--model")
    load_modules(module)
    sources = [(f"--model {', '.join(model)}", shaping.model_shapes(model, tokens, kernel)[1])] if model else []
    if shapes is not None:
        sources.append((f"--shapes {shapes}", _file_keys(shapes, kernel)))
    picker = picker_for(db, platform)
    try:
        check_platform(picker, platform)
        wanted: dict[str, dict[str, dict[str, Any]]] = {}  # kernel -> canonical key -> key
        specs: dict[str, KeySpec] = {}
        for where, found in sources:
            for name, keys in found.items():
                if name not in specs:
                    specs[name] = _key_spec(picker, name)
                for key in covering.check_keys(specs[name], name, keys, where):
                    wanted.setdefault(name, {}).setdefault(canonical_key(key), key)
        rows = [row for name, keys in wanted.items() for row in covering.cover(picker, name, specs[name], list(keys.values()))]
        layers = ", ".join(f"{layer.name} {layer.path}" for layer in picker.layers)
    finally:
        picker.close()
    settings = Settings.from_env()
    policies: dict[str, str] = {"PRESETDB_ON_FAR": settings.on_far, "PRESETDB_ON_MISS": settings.on_miss}
    if fmt is ListFormat.json:
        source = "presetdb coverage " + " ".join(where for where, _ in sources)
        doc = covering.coverage_document(rows, platform=platform, db=layers, source=source, settings=policies)
        typer.echo(json.dumps(doc, indent=2))
        return
    _print(rows, platform, layers, policies, top)


def _key_spec(picker: Any, kernel: str) -> KeySpec:
    """The stored key spec (what serving matches with), else a registered kernel's own: a
    kernel nothing is stored for yet has every key a miss. Neither: UnknownKernelError."""
    try:
        return KeySpec.from_schema(stored_key_schema(picker, kernel))
    except UnknownKernelError:
        from presetdb.helion.registry import registered_kernels

        registered = registered_kernels().get(kernel)
        if registered is None:
            raise
        return registered.key_spec


def _file_keys(path: Path, kernels: list[str] | None) -> dict[str, list[dict[str, Any]]]:
    from presetdb.offline.refine import shapes_for_kernel

    if not path.is_file():
        raise typer.BadParameter(f"{path}: no such file", param_hint="--shapes")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        data = None  # key lines, or unreadable: shapes_for_kernel says which
    if isinstance(data, dict) and "shapes" not in data:
        names = [name for name in data if not kernels or name in kernels]
    elif kernels and len(kernels) == 1:
        names = kernels
    else:
        raise typer.BadParameter(
            f"{path} holds one kernel's keys (not {{kernel: [keys]}}): name it with one --kernel", param_hint="--shapes"
        )
    return {name: shapes_for_kernel(path, name) for name in names}


def _print(rows: list[covering.KeyCoverage], platform: str, layers: str, policies: dict[str, str], top: int) -> None:
    table = Table(title=f"coverage on {safe(platform)} ({safe(layers)})")
    for col in ("kernel", "keys", *covering.STATUSES, "covered"):
        table.add_column(col, justify="left" if col == "kernel" else "right")
    for name, counts in covering.summary(rows).items():
        total = sum(counts.values())
        covered = sum(counts[s] for s in covering.COVERED)
        table.add_row(safe(name), str(total), *(str(counts[s]) for s in covering.STATUSES), f"{covered / total:.0%}")
    print_table(table)
    if not rows:
        console.print("no shape keys to check (--kernel left none of them)", highlight=False)
    gaps = covering.queue_items(rows, platform, "")
    if gaps and top:
        shown = gaps[:top]
        table = Table(title=f"gaps, ranked ({len(shown)} of {len(gaps)} not served by an exact key)")
        for col in ("#", "kernel", "requested key", "status", "served by", "far fields"):
            table.add_column(col, overflow="fold")
        status = {(r.kernel, r.key): r.status for r in rows}
        for n, item in enumerate(shown, start=1):
            far = ", ".join(f"{k} {v[0]:.3g} > {v[1]:.3g}" for k, v in item.far_fields.items())
            table.add_row(
                str(n), safe(item.kernel), safe(item.key), status[(item.kernel, item.key)],
                safe("; ".join(item.served) or "-"), safe(far or "-"),
            )
        print_table(table)
    console.print(
        f"covered = exact or near (a key of {safe(platform)} within the far limits). At run time far keys get "
        f"PRESETDB_ON_FAR={policies['PRESETDB_ON_FAR']}, misses PRESETDB_ON_MISS={policies['PRESETDB_ON_MISS']} "
        "(docs/coverage.md). To refine the gaps: --format json > gaps.json, then "
        "`presetdb refine KERNEL --from-queue gaps.json` on a GPU.",
        highlight=False,
    )


def register(app: typer.Typer) -> None:
    app.command("coverage")(coverage_cmd)
