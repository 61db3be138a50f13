"""`presetdb list` and `presetdb show`: what a database holds. `presetdb pick`: which
stored config a call would get, and why. `presetdb platform`: what this machine is.

None of these import torch, except `platform`, which asks torch for the device.
"""

from __future__ import annotations

import dataclasses
import json
from contextlib import ExitStack
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from presetdb.cli.common import (
    DbOption,
    ListFormat,
    ListFormatOption,
    console,
    db_path,
    echo,
    plain,
    print_table,
    safe,
)
from presetdb.cli.picking import check_platform, picker_for, stored_key_schema
from presetdb.errors import KeySpecError
from presetdb.keys import KeySpec, KeyValue, parse_key
from presetdb.runtime.verification import refusal
from presetdb.store import migrate
from presetdb.store.engine import parse_target
from presetdb.store.repository import Repository


def list_presets(
    db: DbOption = None,
    kernel: Annotated[str | None, typer.Option("--kernel", "-k", help="Only this kernel.")] = None,
    platform: Annotated[
        str | None, typer.Option("--platform", "-p", help="Only this platform.")
    ] = None,
    fmt: ListFormatOption = ListFormat.table,
) -> None:
    """List active presets (kernel, platform, shape key, latency, provenance).

    Example: presetdb list --kernel rms_norm --platform nvidia_h100 --format json
    """
    store = migrate.open_store(db_path(db), "ro")
    try:
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
    finally:
        store.dispose()
    if fmt is ListFormat.json:
        typer.echo(json.dumps([_preset_json(p, store.label) for p in rows], indent=2))
        return
    table = Table(title=f"{len(rows)} active preset(s) in {safe(store.label)}")
    for col in ("id", "kernel", "platform", "shape key", "latency ms", "default ms", "torch ms", "source", "tuned at", "verified"):
        table.add_column(col, overflow="fold")
    for p in rows:
        table.add_row(
            str(p.id), safe(p.kernel), safe(p.platform), safe(p.shape_key), _ms(p.latency_ms),
            _ms(p.default_ms), _ms(p.reference_ms), safe(p.source), safe((p.tuned_at or "")[:19]),
            "yes" if p.verified else "UNVERIFIED",
        )
    print_table(table)
    unverified = sum(not p.verified for p in rows)
    if unverified:
        console.print(
            f"{unverified} unverified row(s): imported for kernels no registered module provided; "
            "served only once the kernel is registered (`presetdb verify --module MODULE`)"
        )


def _preset_json(p: Any, path: Path | str, layer: str | None = None) -> dict[str, Any]:
    """A preset as JSON for scripts: the record's fields, the config parsed where it can
    be, and the file (and layer) it came from."""
    record = {f.name: getattr(p, f.name) for f in dataclasses.fields(p)}
    try:
        record["config"] = json.loads(p.config_json)
    except ValueError:
        record["config"] = None
    record["db"] = str(path)
    if layer is not None:
        record["layer"] = layer
    return record


def show(
    preset_id: Annotated[int, typer.Argument(help="Preset id (from `presetdb list`).")],
    db: DbOption = None,
    fmt: ListFormatOption = ListFormat.table,
) -> None:
    """Show one preset: its config, timings, runners-up, provenance and history.

    Example: presetdb show 12 --db presets.db
    """
    store = migrate.open_store(db_path(db), "ro")
    try:
        with store.read() as session:
            repo = Repository(session)
            try:
                preset = repo.get_preset(preset_id)
            except LookupError:
                raise typer.BadParameter(
                    f"no preset with id {preset_id} in {plain(store.label)}; `presetdb list` shows the ids",
                    param_hint="PRESET_ID",
                ) from None
            run = repo.get_run(preset.run_id)
            candidates = repo.candidates(preset_id)
            try:
                history = repo.history(preset.kernel, preset.platform, preset.shape_key)
            except KeySpecError:  # a malformed stored key: show the row, not its history
                history = [preset]
    finally:
        store.dispose()
    if fmt is ListFormat.json:
        record = _preset_json(preset, store.label)
        record["run"] = vars(run)
        record["candidates"] = [vars(c) for c in candidates]
        record["history"] = [h.id for h in history]
        typer.echo(json.dumps(record, indent=2))
        return
    state = safe(preset.status) if preset.verified else (
        f"{safe(preset.status)}, UNVERIFIED: kernel not registered at import, config syntax checked only"
    )
    console.print(
        f"[bold]preset {preset.id}[/] in {safe(store.label)}: {safe(preset.kernel)} on "
        f"{safe(preset.platform)}, key {safe(preset.shape_key)} ({state})",
        highlight=False,
    )
    # Indented like print_json, but escaped: print_json reads `[null,null]` as markup.
    try:
        config_text = json.dumps(json.loads(preset.config_json), indent=2)
    except ValueError:  # not JSON (a damaged row): shown as stored
        config_text = preset.config_json
    console.print(safe(config_text, limit=20_000), highlight=False)
    console.print(
        f"latency {_ms(preset.latency_ms)} ms | Helion default {_ms(preset.default_ms)} ms | "
        f"PyTorch {_ms(preset.reference_ms)} ms | configs tried {preset.configs_tried or '-'} | "
        f"tuning {preset.tuning_seconds or '-'} s"
    )
    slower = [
        f"{name} ({preset.latency_ms / ms:.2f}x its time)"
        for name, ms in (("Helion's default config", preset.default_ms), ("PyTorch", preset.reference_ms))
        if ms and preset.latency_ms and preset.latency_ms > ms
    ]
    if slower:  # all three were timed by the same run, with the same method
        console.print(
            f"[bold yellow]slower than {' and '.join(slower)}[/] under the same timing "
            f"({escape(run.benchmark_method or 'method not recorded')}): refine or retune this key",
            highlight=False,
        )
    prov = Table(title=f"provenance (tuning run {run.id})", show_header=False)
    for name, value in vars(run).items():
        if value not in (None, ""):
            prov.add_row(name, safe(value))
    print_table(prov)
    if candidates:
        cand = Table(title="runners-up")
        for col in ("rank", "latency ms", "config"):
            cand.add_column(col, overflow="fold")
        for c in candidates:
            cand.add_row(str(c.rank), _ms(c.latency_ms), safe(c.config_json))
        print_table(cand)
    if len(history) > 1:
        hist = Table(title="history of this key")
        for col in ("id", "status", "config sha256", "latency ms", "source", "revision", "created"):
            hist.add_column(col)
        for h in history:
            hist.add_row(
                str(h.id), safe(h.status), safe(h.config_sha256[:12]), _ms(h.latency_ms),
                safe(h.source), safe(h.revision or ""), safe(h.created_at[:19]),
            )
        print_table(hist)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


# ---------------------------------------------------------------------- pick

_EXAMPLE_SHAPE = '{"dtype":"bfloat16","hidden":4096,"num_tokens":37}'


def pick(
    kernel: Annotated[str, typer.Option("--kernel", "-k", help="Kernel name, e.g. rms_norm.")],
    platform: Annotated[
        str,
        typer.Option(
            "--platform", "-p", help="Canonical platform to pick for, e.g. nvidia_h100 "
            "(what PRESETDB_PLATFORM would say); its fallbacks apply as at run time."
        ),
    ],
    shape: Annotated[
        str,
        typer.Option(
            "--shape", "-s", help=f"The call's key features as JSON, e.g. '{_EXAMPLE_SHAPE}'. "
            "Every field of the kernel's key spec is needed."
        ),
    ],
    db: Annotated[
        str | None,
        typer.Option(
            "--db", show_default=False,
            help="Use only this file (or registry URL), as the deployment layer (no user overlay, no embedded "
            "default). Default: the run-time layers: user overlay > $PRESETDB_PATH > embedded default.",
        ),
    ] = None,
    fmt: ListFormatOption = ListFormat.table,
) -> None:
    """Which stored config a call would get, and why: match kind, per-field distances,
    fallbacks used, layer, then the config with its timings and provenance.
    Exit code 1 when nothing matches (the nearest stored keys are listed).

    Example: presetdb pick --kernel rms_norm --platform nvidia_h100 --shape '{"dtype":"bfloat16","hidden":4096,"num_tokens":37}'
    """
    try:
        wanted = parse_key(shape)
    except KeySpecError as exc:
        raise typer.BadParameter(plain(exc), param_hint="--shape") from None
    picker = picker_for(db, platform)
    try:
        spec = KeySpec.from_schema(stored_key_schema(picker, kernel))
        check_platform(picker, platform)
        features = _features(kernel, spec, wanted)
        choice = picker.resolve(kernel, spec, features)
        head = f"{kernel} on {platform} for {json.dumps(spec.key_of(features), separators=(',', ':'))}"
        if choice is not None and not choice.preset.verified and not _registered(kernel):
            p = choice.preset
            typer.echo(refusal(kernel, p.shape_key, choice.platform, p.id), err=True)
            raise typer.Exit(1)
        if choice is None:
            nearest = picker.nearest_keys(kernel, spec, features, limit=5)
            if fmt is ListFormat.json:
                typer.echo(json.dumps({"match": None, "nearest": nearest, "chain": list(picker.chain)}, indent=2))
                raise typer.Exit(1)
            echo(
                f"no match: {head}: no stored key fits (platforms tried: "
                f"{' > '.join(picker.chain)}) and no default entry ({{}}).",
                err=True,
            )
            echo(
                "nearest stored keys: " + ("; ".join(nearest) if nearest else
                f"none: {kernel} has no presets on these platforms"),
                err=True,
            )
            raise typer.Exit(1)
        if fmt is ListFormat.json:
            layer = next(layer for layer in picker.layers if layer.name == choice.layer)
            record = _preset_json(choice.preset, layer.path, choice.layer)
            record.update(
                match=choice.match, kind=choice.kind, distances=choice.distances,
                requested_platform=choice.requested_platform, chain=list(picker.chain),
            )
            typer.echo(json.dumps(record, indent=2))
            return
        _print_choice(picker, choice, spec, features, head)
    finally:
        picker.close()


def _registered(kernel: str) -> bool:
    """Whether a module registers `kernel` (imports torch: asked for unverified rows only)."""
    from presetdb.helion.registry import load_kernel_modules, registered_kernels

    load_kernel_modules()
    return kernel in registered_kernels()


def _features(kernel: str, spec: KeySpec, wanted: dict[str, KeyValue]) -> tuple[KeyValue, ...]:
    fields = ", ".join(f"{f.name} ({f.policy})" for f in spec.fields)
    missing = [n for n in spec.names if n not in wanted]
    extra = [n for n in wanted if n not in spec.names]
    problems = []
    if missing:
        problems.append(f"missing field(s) {', '.join(missing)}")
    if extra:
        problems.append(f"unknown field(s) {', '.join(extra)}")
    if not problems:
        problems = spec.check_key(wanted)
    if problems:
        raise typer.BadParameter(
            plain(f"{'; '.join(problems)}. {kernel}'s key spec expects the fields: {fields}"),
            param_hint="--shape",
        )
    return tuple(wanted[n] for n in spec.names)


def _print_choice(picker: Any, choice: Any, spec: KeySpec, features: tuple[KeyValue, ...], head: str) -> None:
    preset = choice.preset
    layer = next(layer for layer in picker.layers if layer.name == choice.layer)
    with layer.store.read() as session:
        run = Repository(session).get_run(preset.run_id)
    echo(head)
    echo(f"chosen:     preset {preset.id}, key {preset.shape_key}, platform {choice.platform}")
    echo(f"why:        {choice.describe()}")
    echo(f"match:      {choice.match} (kind {choice.kind})")
    echo(f"distances:  {_distances(choice, spec, features)}")
    echo(f"far:        {_far(picker, choice, spec)}")
    echo(f"fallbacks:  {_fallbacks(picker, choice, spec, features)}")
    echo(f"layer:      {choice.layer} ({layer.path})")
    echo(f"platforms:  requested {choice.requested_platform}; chain {' > '.join(picker.chain)}")
    echo(f"config:     {preset.config_json}  (sha256 {preset.config_sha256[:12]})")
    speedup = (
        f" ({preset.default_ms / preset.latency_ms:.2f}x faster than Helion's default)"
        if preset.latency_ms and preset.default_ms else ""
    )
    echo(
        f"timings:    latency {_ms(preset.latency_ms)} ms{speedup} | Helion default "
        f"{_ms(preset.default_ms)} ms | PyTorch {_ms(preset.reference_ms)} ms | configs tried "
        f"{preset.configs_tried if preset.configs_tried is not None else '-'} | tuning "
        f"{preset.tuning_seconds if preset.tuning_seconds is not None else '-'} s"
    )
    prov = ", ".join(
        f"{name} {value}" for name, value in vars(run).items()
        if name != "id" and value not in (None, "")
    )
    echo(f"provenance: tuning run {run.id}: {prov}")
    echo(f"status:     {preset.status}, created {preset.created_at}")


def _distances(choice: Any, spec: KeySpec, features: tuple[KeyValue, ...]) -> str:
    if choice.match == "default":
        return "none (the kernel's default entry {} answers any shape)"
    stored = choice.preset.key
    parts = []
    for f, actual in zip(spec.fields, features, strict=True):
        if f.name in choice.distances:
            d = choice.distances[f.name]
            same = "=" if stored[f.name] == actual else "for"
            parts.append(f"{f.name} {d:.3g} ({f.policy}: stored {stored[f.name]} {same} {actual})")
        else:
            parts.append(f"{f.name} 0 ({f.policy}: {actual})")
    return "; ".join(parts)


def _far(picker: Any, choice: Any, spec: KeySpec) -> str:
    """The far-match guard's verdict and what a call would get (PRESETDB_ON_FAR)."""
    limits = picker.limits(choice.kernel, spec)
    shown = ", ".join(f"{name} {value:g}" for name, value in limits.items()) or "none (no numeric fields)"
    if not choice.far:
        return f"no (max log2 distance per field: {shown})"
    gets = {
        "default": "a call gets Helion's default config instead",
        "nearest": "a call gets this config anyway",
        "rerank": "a call re-ranks the nearest stored configs and Helion's default on its shape (GPU)",
    }[picker.settings.on_far]
    return f"yes, {choice.far_text()}; PRESETDB_ON_FAR={picker.settings.on_far}: {gets}"


def _fallbacks(picker: Any, choice: Any, spec: KeySpec, features: tuple[KeyValue, ...]) -> str:
    used = []
    if choice.fallback:
        rank = picker.chain.index(choice.platform)
        used.append(
            f"platform {choice.platform} served {choice.requested_platform} "
            f"(fallback {rank} in the chain; no key fitted on the platforms before it)"
        )
    if choice.match == "default":
        used.append("default entry {}: no stored shape key fitted on any platform in the chain")
    else:
        stored = choice.preset.key
        for f, actual in zip(spec.fields, features, strict=True):
            value = stored[f.name]
            if f.policy == "ceil" and isinstance(actual, (int, float)) and value < actual:
                used.append(f"{f.name} clamped to the largest tuned value {value} (ceil, actual {actual})")
            elif f.policy == "floor" and isinstance(actual, (int, float)) and value > actual:
                used.append(f"{f.name} clamped to the smallest tuned value {value} (floor, actual {actual})")
    return "; ".join(used) or "none"


# ---------------------------------------------------------------------- platform


def show_platform(
    db: Annotated[
        Path | None,
        typer.Option(
            "--db", show_default=False,
            help="Resolve against only this file. Default: the run-time layers "
            "(user overlay if it exists > $PRESETDB_PATH > embedded default).",
        ),
    ] = None,
) -> None:
    """The platform this machine resolves to: detected device, compute capability, how the
    name was resolved (PRESETDB_PLATFORM, a db alias, or derived), the fallback chain, and
    whether the fast path (presetdb.helion._accel) is on for the installed Helion/Triton.

    Example: PRESETDB_PLATFORM=nvidia_h200 presetdb platform
    """
    from presetdb.runtime import platforms
    from presetdb.runtime.layers import open_immutable, open_layers
    from presetdb.settings import Settings

    settings = Settings.from_env()
    if db is not None:
        layer = open_immutable("deployment", parse_target(db), strict=True)
        layers = [layer] if layer is not None else []
    else:
        # A read-only question: do not create a user overlay just to answer it.
        skip = settings.disable_overlay or not settings.user_db_path.exists()
        layers, _ = open_layers(dataclasses.replace(settings, disable_overlay=skip))
    device = _detected_device()
    try:
        with ExitStack() as stack:
            repos = [Repository(stack.enter_context(layer.store.read())) for layer in layers]
            info = platforms.resolve_platform(repos, override=settings.platform, device=device)
            ranked: list[str] = []
            for repo in repos:
                ranked += [p for p in repo.fallbacks(info.platform) if p not in ranked]
            record = next((r for repo in repos if (r := repo.find_platform(info.platform))), None)
    finally:
        for layer in layers:
            layer.store.dispose()
    how = {
        "PRESETDB_PLATFORM": f"PRESETDB_PLATFORM={settings.platform} (override)",
        "alias": f"the device string {device.device_name!r} is an alias in the db",
        "derived": f"derived from the device string {device.device_name!r} (no db knows it as an alias)",
    }[info.how]
    echo(f"platform:            {info.platform}")
    echo(f"resolved by:         {how}")
    echo(f"device:              {device.device_name} (vendor {device.vendor})")
    echo(f"compute capability:  {device.compute_capability or '-'} (device)"
         + (f"; {record.compute_capability or '-'} (stored for {info.platform})" if record else
            f"; {info.platform} is not in the db"))
    echo(f"SMs:                 {device.sm_count or '-'}")
    echo(f"fallback chain:      {' > '.join(info.chain)}")
    for i, name in enumerate(info.chain):
        why = (
            "requested" if i == 0 else
            f"ranked fallback {ranked.index(name) + 1}" if name in ranked else
            "same compute capability"
        )
        echo(f"  {i}. {name} ({why})")
    echo("dbs:                 " + (", ".join(f"{layer.name} {layer.path}" for layer in layers) or "none usable"))
    from presetdb.helion._accel import internals  # reads package versions only: no torch import

    echo(f"fast path:           {internals.status(settings.accel).reason}")


def register(app: typer.Typer) -> None:
    app.command("list")(list_presets)
    app.command("show")(show)
    app.command("pick")(pick)
    app.command("platform")(show_platform)


def _detected_device() -> Any:
    """The device as torch sees it (the CLI imports torch for this question, when installed)."""
    from presetdb.runtime import platforms

    try:
        import torch  # noqa: F401  (runtime.platforms reads the device from the imported torch)
    except ImportError:
        pass
    return platforms.detect_device()
