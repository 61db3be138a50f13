"""`presetdb list` and `presetdb show`: what a database holds."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table

from presetdb import migrate
from presetdb.cli.common import DbOption, console, db_path
from presetdb.repository import Repository


def list_presets(
    db: DbOption = None,
    kernel: Annotated[str | None, typer.Option("--kernel", "-k", help="Only this kernel.")] = None,
    platform: Annotated[
        str | None, typer.Option("--platform", "-p", help="Only this platform.")
    ] = None,
) -> None:
    """List active presets (kernel, platform, shape key, latency, provenance).

    Example: presetdb list --kernel rms_norm --platform nvidia_h100
    """
    store = migrate.open_store(db_path(db), "ro")
    with store.read() as session:
        repo = Repository(session)
        if kernel is not None:
            repo.get_kernel(kernel)  # unknown names get the list of known ones
        if platform is not None:
            repo.get_platform(platform)
        rows = [
            p
            for p in repo.all_presets()
            if (kernel is None or p.kernel == kernel) and (platform is None or p.platform == platform)
        ]
    table = Table(title=f"{len(rows)} active preset(s) in {store.path}")
    for col in ("id", "kernel", "platform", "shape key", "latency ms", "default ms", "torch ms", "source", "tuned at"):
        table.add_column(col, overflow="fold")
    for p in rows:
        table.add_row(
            str(p.id), p.kernel, p.platform, p.shape_key, _ms(p.latency_ms), _ms(p.default_ms),
            _ms(p.reference_ms), p.source, (p.tuned_at or "")[:19],
        )
    console.print(table)
    store.dispose()


def show(
    preset_id: Annotated[int, typer.Argument(help="Preset id (from `presetdb list`).")],
    db: DbOption = None,
) -> None:
    """Show one preset: its config, timings, runners-up, provenance and history.

    Example: presetdb show 12 --db presets.db
    """
    store = migrate.open_store(db_path(db), "ro")
    with store.read() as session:
        repo = Repository(session)
        preset = repo.get_preset(preset_id)
        run = repo.get_run(preset.run_id)
        candidates = repo.candidates(preset_id)
        history = repo.history(preset.kernel, preset.platform, preset.shape_key)
    console.print(f"[bold]preset {preset.id}[/]: {preset.kernel} on {preset.platform}, key {preset.shape_key} ({preset.status})")
    console.print_json(json.dumps(preset.config))
    console.print(
        f"latency {_ms(preset.latency_ms)} ms | Helion default {_ms(preset.default_ms)} ms | "
        f"PyTorch {_ms(preset.reference_ms)} ms | configs tried {preset.configs_tried or '-'} | "
        f"tuning {preset.tuning_seconds or '-'} s"
    )
    prov = Table(title="provenance (tuning run %d)" % run.id, show_header=False)
    for name, value in vars(run).items():
        if value not in (None, ""):
            prov.add_row(name, str(value))
    console.print(prov)
    if candidates:
        cand = Table(title="runners-up")
        for col in ("rank", "latency ms", "config"):
            cand.add_column(col, overflow="fold")
        for c in candidates:
            cand.add_row(str(c.rank), _ms(c.latency_ms), c.config_json)
        console.print(cand)
    if len(history) > 1:
        hist = Table(title="history of this key")
        for col in ("id", "status", "config sha256", "latency ms", "source", "revision", "created"):
            hist.add_column(col)
        for h in history:
            hist.add_row(str(h.id), h.status, h.config_sha256[:12], _ms(h.latency_ms), h.source, h.revision or "", h.created_at[:19])
        console.print(hist)
    store.dispose()


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def register(app: typer.Typer) -> None:
    app.command("list")(list_presets)
    app.command("show")(show)
