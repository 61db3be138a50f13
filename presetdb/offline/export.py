"""Writing a database's active presets back out as files that `import` reads again.

- ``vllm``: ``DIR/<kernel>/<platform>.json`` in vLLM's current layout (keys and configs
  only). Rows imported from a vLLM file keep that file's entry order and key/config field
  order, so a file imported and exported unchanged comes out byte for byte; other rows
  follow, the default entry first, then keys in canonical order.
- ``presetdb``: ``DIR/<kernel>/<platform>.json`` in presetdb-results/1 with timings and
  runners-up. The format holds one run's provenance, so presets that came from several
  runs go to one file per run (``<platform>.run<ID>.json``); importing those files in
  run order restores the same active rows.

An export that matches no active preset writes nothing and raises
`NothingToExportError` (an empty file would be refused by `import` anyway).
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any, Literal

from presetdb.errors import NothingToExportError
from presetdb.keys import canonical_key
from presetdb.offline.importers import presetdb_results, vllm
from presetdb.offline.importers.records import PROVENANCE_FIELDS
from presetdb.store import migrate
from presetdb.store.engine import describe
from presetdb.store.records import PresetRecord, RunRecord, config_sha256
from presetdb.store.repository import Repository

ExportFormat = Literal["vllm", "presetdb"]
_RUN_KEYS = ("source", *PROVENANCE_FIELDS)
ALL = "all"


def _sorted(presets: list[PresetRecord]) -> list[PresetRecord]:
    # Rows from a vLLM file where the file had them; then the default entry first, then
    # keys in their canonical text order: stable diffs.
    return sorted(
        presets,
        key=lambda p: (
            p.source_position is None,
            p.source_position or 0,
            p.shape_key != "{}",
            p.shape_key,
        ),
    )


def vllm_entry(p: PresetRecord) -> tuple[dict[str, Any], dict[str, Any]]:
    """(key, config) with the field order of the file the row came from, if any."""
    key = json.loads(p.source_key) if p.source_key else p.key
    config = p.config
    if p.source_config:
        written = json.loads(p.source_config)
        if config_sha256(written) == p.config_sha256:  # the layout of this very config
            config = written
    if canonical_key(key) != p.shape_key:
        key = p.key
    return key, config


def export(db: Path, kernel: str, platform: str, fmt: ExportFormat, out_dir: Path) -> list[Path]:
    """Write the active presets of (kernel, platform); "all" for either means every kernel
    or platform with active presets. Returns the files written; none matched: raises
    `NothingToExportError` and writes nothing."""
    store = migrate.open_store(db, "ro")
    try:
        with store.read() as session:
            repo = Repository(session)
            if kernel != ALL:
                repo.get_kernel(kernel)  # unknown names list the known ones
            if platform != ALL:
                repo.get_platform(platform)
            if ALL not in (kernel, platform):
                pairs = [(kernel, platform)]
            else:
                pairs = sorted({(p.kernel, p.platform) for p in repo.all_presets()})
            written: list[Path] = []
            for k, pl in pairs:
                if kernel in (ALL, k) and platform in (ALL, pl):
                    written += _export_one(repo, k, pl, fmt, out_dir)
            if not written:
                where = describe(db)
                what = "any kernel" if kernel == ALL else f"kernel {kernel}"
                on = "any platform" if platform == ALL else f"platform {platform}"
                raise NothingToExportError(
                    f"nothing to export: {where} has no active presets of {what} on {on}; nothing "
                    f"written. `presetdb list --db {where}` shows what it holds."
                )
            return written
    finally:
        store.dispose()


def _export_one(repo: Repository, kernel: str, platform: str, fmt: ExportFormat, out_dir: Path) -> list[Path]:
    record = repo.get_kernel(kernel)
    presets = _sorted(repo.active_presets(kernel, platform))
    if not presets:
        return []  # nothing of this pair: `export` says so if nothing else matched
    if fmt == "vllm":
        pairs = [vllm_entry(p) for p in presets]
        return [vllm.write(out_dir, kernel, platform, pairs)]
    by_run: dict[int, list[PresetRecord]] = defaultdict(list)
    for p in presets:
        by_run[p.run_id].append(p)
    written = []
    groups = [(r, by_run[r]) for r in sorted(by_run)]
    for run_id, rows in groups:
        run = repo.get_run(run_id)
        doc = presetdb_results.document(
            run=_run(run),
            kernel=_kernel(record.key_schema, kernel, rows),
            platform=platform,
            entries=[_entry(repo, p) for p in rows],
        )
        name = f"{platform}.json" if len(groups) == 1 else f"{platform}.run{run_id}.json"
        path = out_dir / kernel / name
        presetdb_results.write(path, doc)
        written.append(path)
    return written


def _run(run: RunRecord | None) -> dict[str, Any]:
    if run is None:
        return {}
    values = {k: getattr(run, k) for k in _RUN_KEYS}
    return {k: v for k, v in values.items() if v is not None}


def _kernel(key_schema: dict[str, Any], name: str, rows: list[PresetRecord]) -> dict[str, Any]:
    kernel: dict[str, Any] = {"name": name, "key_schema": key_schema}
    hashes = {p.kernel_source_hash for p in rows}
    if len(hashes) == 1 and (only := hashes.pop()) is not None:
        kernel["source_hash"] = only
    return kernel


def _entry(repo: Repository, p: PresetRecord) -> dict[str, Any]:
    entry: dict[str, Any] = {"key": p.key, "config": p.config}
    for name in ("latency_ms", "default_ms", "reference_ms", "configs_tried", "tuning_seconds"):
        value = getattr(p, name)
        if value is not None:
            entry[name] = value
    candidates = repo.candidates(p.id)
    if candidates:
        entry["runners_up"] = [
            {"config": json.loads(c.config_json), **({"latency_ms": c.latency_ms} if c.latency_ms else {})}
            for c in candidates
        ]
    return entry
