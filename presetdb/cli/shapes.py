"""`presetdb shapes`: the shape keys each kernel sees in a real model."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from presetdb.cli.common import ModuleOption, err_console, load_modules, print_table

ModelsOption = Annotated[
    list[str] | None,
    typer.Option(
        "--model", "-m", show_default=False,
        help="Catalog name (see `presetdb shapes --catalog`), its Hugging Face id, or a path to a "
        "config.json (or its directory); repeatable: the keys of all models, without duplicates.",
    ),
]
TokensOption = Annotated[
    str | None,
    typer.Option(
        "--tokens", "-t", show_default=False,
        help="Token counts (rows in flight): '1,16,37'; 'A..B' = powers of two from A to B. "
        "Default: 1..8192 plus 3, 37, 300, 1000.",
    ),
]


def _clean(text: str) -> str:
    return escape("".join(ch for ch in text if ch.isprintable()))


def shapes_cmd(
    model: ModelsOption = None,
    tokens: TokensOption = None,
    kernel: Annotated[
        list[str] | None,
        typer.Option("--kernel", "-k", help="Only this kernel; repeatable. Default: every kernel with a shapes_for hook."),
    ] = None,
    dtype: Annotated[
        str | None, typer.Option("--dtype", help="Activation dtype in the keys. Default: bfloat16.")
    ] = None,
    fmt: Annotated[
        str,
        typer.Option(
            "--format", "-f",
            help="json: one kernel -> a JSON array of keys (what tune/refine --shapes read), several -> "
            "{kernel: [keys]}; lines: one canonical key per line (several kernels: 'KERNEL KEY').",
        ),
    ] = "json",
    out: Annotated[
        Path | None,
        typer.Option(
            "--out", "-o", show_default=False,
            help="Write to this file instead of stdout; a name with {kernel} writes one file per kernel.",
        ),
    ] = None,
    exclude: Annotated[
        list[str] | None,
        typer.Option(
            "--exclude", show_default=False,
            help="Leave out the keys in this shapes file ({kernel} in the name: one file per kernel, "
            "e.g. a tuning grid); repeatable. For held-out sets.",
        ),
    ] = None,
    module: ModuleOption = None,
    list_catalog: Annotated[
        bool, typer.Option("--catalog", help="List the models in the shipped catalog and exit.")
    ] = False,
) -> None:
    """Print the shape keys each registered kernel sees in a model (rms_norm: hidden; silu_mul: the
    intermediate size; softmax: logits, routers, attention; matmul: qkv, o, gate_up, down, lm_head).

    The output feeds `presetdb tune --shapes` and `presetdb refine --shapes` (give --kernel for one kernel's array).

    Example: presetdb shapes --model llama-3-8b --kernel matmul --tokens 1..8192 --out matmul_llama3.json
    """
    from presetdb.offline import models as model_dims
    from presetdb.offline import shapes as shaping
    from presetdb.offline.importers.records import write_atomic

    load_modules(module)
    if list_catalog:
        ids = model_dims.catalog_ids()
        table = Table(title="model catalog (presetdb shapes --model NAME)")
        for col in ("name", "hugging face id", "hidden", "intermediate", "vocab", "heads/kv", "head_dim", "experts"):
            table.add_column(col, no_wrap=col == "name")
        for name, m in sorted(model_dims.catalog().items()):
            experts = f"{m.experts} (top {m.experts_per_token}, {m.expert_intermediate})" if m.experts else "-"
            table.add_row(
                name, ids.get(name) or "-", str(m.hidden), str(m.intermediate or "-"), str(m.vocab),
                f"{m.heads}/{m.kv_heads}", str(m.head_dim), experts,
            )
        print_table(table)
        return
    if not model:
        raise typer.BadParameter("give --model NAME|config.json (see --catalog)", param_hint="--model")
    dims, found = shaping.model_shapes(model, tokens, kernel, dtype=dtype, exclude=exclude or ())
    summary = ", ".join(f"{name} {len(keys)}" for name, keys in found.items())
    names = ", ".join(d.name for d in dims)
    if out is None:
        typer.echo(shaping.dump(found, fmt), nl=False)
        err_console.print(f"{_clean(names)}: {summary} key(s)", highlight=False)
        return
    if "{kernel}" in str(out):
        for name, keys in found.items():
            path = Path(str(out).replace("{kernel}", name))
            write_atomic(path, shaping.dump({name: keys}, fmt))
            err_console.print(f"wrote {_clean(str(path))}: {len(keys)} {name} key(s) from {_clean(names)}", highlight=False)
        return
    write_atomic(out, shaping.dump(found, fmt))
    err_console.print(f"wrote {_clean(str(out))}: {summary} key(s) from {_clean(names)}", highlight=False)


def register(app: typer.Typer) -> None:
    app.command("shapes")(shapes_cmd)
