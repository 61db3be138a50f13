"""Helpers for the import/export/migration/tune tests: sample files, edited copies of
them, and a readable snapshot of what a database holds."""

from __future__ import annotations

import functools
import json
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

FIXTURES = Path(__file__).resolve().parent / "fixtures"
RESULTS = FIXTURES / "rms_norm_nvidia_h100.json"
VLLM = FIXTURES / "vllm" / "configs" / "rms_norm" / "nvidia_h100.json"
HELION_DIR = FIXTURES / "helion"
BEST_CONFIG = next(HELION_DIR.glob("*.best_config"))
AOT = next(HELION_DIR.glob("tuned_configs_*.json"))
CACHE_KEY = {"dtype": "bfloat16", "hidden": 4096, "num_tokens": 64}


@functools.cache
def registry() -> Any:
    """The real kernel registry (importing it registers the example kernels once).
    Test modules expose it as a `resolver` fixture."""
    from presetdb.offline.importers.validate import RegistryResolver

    return RegistryResolver()


def current_best_config(tmp_path: Path) -> Path:
    """BEST_CONFIG as Helion would write it for the kernel source as it is now (the
    sample pins the source hash of the day it was made; kernels evolve)."""
    data = load(BEST_CONFIG)
    data["key"]["fields"]["kernel_source_hash"] = registry().get("rms_norm").helion_source_hash()
    path = tmp_path / BEST_CONFIG.name
    path.write_text(json.dumps(data, indent=2))
    return path


def load(path: Path) -> Any:
    return json.loads(path.read_text())


def edited(src: Path, dest: Path, edit: Callable[[Any], Any]) -> Path:
    """A copy of `src` at `dest` with `edit` applied to its parsed JSON."""
    data = load(src)
    result = edit(data)
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps(data if result is None else result, indent=2))
    return dest


def rows(db: Path, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return [tuple(r) for r in conn.execute(sql, params)]
    finally:
        conn.close()


def active(db: Path) -> dict[tuple[str, str, str], dict[str, Any]]:
    """(kernel, platform, shape key) -> config and timings of every active preset."""
    out = {}
    for k, p, key, config, lat, dflt, ref, tried, secs, pid in rows(
        db,
        "SELECT k.name, pl.name, p.shape_key, c.config_json, p.latency_ms, p.default_ms, "
        "p.reference_ms, p.configs_tried, p.tuning_seconds, p.id FROM presets p "
        "JOIN kernels k ON k.id = p.kernel_id JOIN platforms pl ON pl.id = p.platform_id "
        "JOIN configs c ON c.id = p.config_id WHERE p.status = 'active'",
    ):
        runners = rows(
            db,
            "SELECT c.config_json, pc.latency_ms FROM preset_candidates pc "
            "JOIN configs c ON c.id = pc.config_id WHERE pc.preset_id = ? ORDER BY pc.rank",
            pid,
        )
        out[(k, p, key)] = {
            "config": json.loads(config),
            "latency_ms": lat,
            "default_ms": dflt,
            "reference_ms": ref,
            "configs_tried": tried,
            "tuning_seconds": secs,
            "runners_up": [(json.loads(c), cl) for c, cl in runners],
        }
    return out


def count(db: Path, table: str, where: str = "1") -> int:
    return int(rows(db, f"SELECT COUNT(*) FROM {table} WHERE {where}")[0][0])


def table_dump(db: Path) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of the data tables, for before/after comparisons."""
    tables = (
        "kernels",
        "tuning_runs",
        "configs",
        "presets",
        "preset_candidates",
        "platforms",
        "platform_aliases",
    )
    return {t: sorted(rows(db, f"SELECT * FROM {t}"), key=repr) for t in tables}
