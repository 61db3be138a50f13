"""Writing a database's active presets back out as files that `import` reads again.

- ``vllm``: ``DIR/<kernel>/<platform>.json`` in vLLM's layout (keys and configs only).
- ``presetdb``: ``DIR/<kernel>/<platform>.json`` in presetdb-results/1 with timings and
  runners-up. The format holds one run's provenance, so presets that came from several
  runs go to one file per run (``<platform>.run<ID>.json``); importing those files in
  run order restores the same active rows.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any, Literal

from presetdb.offline.importers import presetdb_results, vllm
from presetdb.offline.importers.records import PROVENANCE_FIELDS
from presetdb.store import migrate
from presetdb.store.repository import PresetRecord, Repository, RunRecord

ExportFormat = Literal["vllm", "presetdb"]
_RUN_KEYS = ("source", *PROVENANCE_FIELDS)


def _sorted(presets: list[PresetRecord]) -> list[PresetRecord]:
    # The default entry first, then keys in their canonical text order: stable diffs.
    return sorted(presets, key=lambda p: (p.shape_key != "{}", p.shape_key))


def export(db: Path, kernel: str, platform: str, fmt: ExportFormat, out_dir: Path) -> list[Path]:
    """Write the active presets of (kernel, platform); returns the files written."""
    store = migrate.open_store(db, "ro")
    try:
        with store.read() as session:
            repo = Repository(session)
            record = repo.get_kernel(kernel)  # unknown names list the known ones
            repo.get_platform(platform)
            presets = _sorted(repo.active_presets(kernel, platform))
            if fmt == "vllm":
                pairs = [(p.key, p.config) for p in presets]
                return [vllm.write(out_dir, kernel, platform, pairs)]
            by_run: dict[int, list[PresetRecord]] = defaultdict(list)
            for p in presets:
                by_run[p.run_id].append(p)
            written = []
            # An empty export still writes one (empty) file.
            groups: list[tuple[int | None, list[PresetRecord]]] = [
                (r, by_run[r]) for r in sorted(by_run)
            ] or [(None, [])]
            for run_id, rows in groups:
                run = repo.get_run(run_id) if run_id is not None else None
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
    finally:
        store.dispose()


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
