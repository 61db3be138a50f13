"""An example presetdb database that gives every canned audit something to find.

Written through `presetdb.store.migrate.upgrade` + `presetdb.store.repository.Repository`, like any
import. The timings are invented (chosen to trip the audits), not measurements.
Timestamps are pinned so that outputs built from this db (docs/auditing.md) are
reproducible. Also used by docs/gen_auditing.py.
"""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from presetdb.store import helion_cache, migrate
from presetdb.store.models import Config, HelionCacheEntry, Kernel, Preset, TuningRun
from presetdb.store.records import MissRecord, NearMissRecord, PresetInput
from presetdb.store.repository import Repository

H100, H200 = "nvidia_h100", "nvidia_h200"
RMS_SCHEMA = {
    "fields": [
        {"name": "dtype", "policy": "exact"},
        {"name": "hidden", "policy": "nearest"},
        {"name": "num_tokens", "policy": "ceil"},
    ]
}
MATMUL_SCHEMA = {
    "fields": [
        {"name": "dtype", "policy": "exact"},
        {"name": "m", "policy": "nearest"},
        {"name": "n", "policy": "nearest"},
        {"name": "k", "policy": "nearest"},
    ]
}
SILU_SCHEMA = {
    "fields": [{"name": "dtype", "policy": "exact"}, {"name": "hidden", "policy": "nearest"}]
}

RMS_SOURCE = hashlib.sha256(b"rms_norm source v1").hexdigest()
MATMUL_SOURCE = hashlib.sha256(b"matmul source v1").hexdigest()
SILU_SOURCE = hashlib.sha256(b"silu_mul source v1").hexdigest()

# The versions the "current" tuning runs used (what the GPU machines run).
RUNNING = {"helion_version": "1.5.0", "triton_version": "3.6.0", "torch_version": "2.11.0"}

KEY_128 = {"dtype": "bfloat16", "hidden": 4096, "num_tokens": 128}
KEY_1024 = {"dtype": "bfloat16", "hidden": 4096, "num_tokens": 1024}
KEY_8192 = {"dtype": "bfloat16", "hidden": 8192, "num_tokens": 8192}
MATMUL_KEY = {"dtype": "bfloat16", "k": 4096, "m": 4096, "n": 4096}
SILU_KEY = {"dtype": "bfloat16", "hidden": 11008}

CFG_SMALL = {"block_sizes": [1], "num_warps": 4, "num_stages": 1}
CFG_MID = {"block_sizes": [2], "num_warps": 8, "num_stages": 1}
CFG_BIG = {"block_sizes": [4], "num_warps": 8, "num_stages": 2}
CFG_BAD = {"block_sizes": [64], "num_warps": 32, "num_stages": 9}
CFG_MATMUL = {"block_sizes": [128, 128, 64], "num_warps": 8, "num_stages": 4, "pid_type": "flat"}
CFG_MATMUL_OLD = {"block_sizes": [64, 64, 32], "num_warps": 4, "num_stages": 3}

PINNED_AT = "2026-11-20T12:00:00.000000Z"


def _run(repo: Repository, helion: str, finished_at: str) -> int:
    return repo.add_run(
        "tune",
        source_file="results/rms_norm-h100.json",
        tuned_by="perf-team",
        host="gpu-07",
        device_name="NVIDIA H100 80GB HBM3",
        sm_count=132,
        driver_version="570.86",
        cuda_version="12.8",
        torch_version="2.11.0+cu128",
        triton_version="3.6.0",
        helion_version=helion,
        presetdb_version="0.1.0",
        autotune_effort="full",
        seed=0,
        benchmark_method="triton do_bench median, 25 ms warm-up",
        started_at=finished_at.replace("T12", "T10"),
        finished_at=finished_at,
    ).id


KEY_2048 = {"dtype": "bfloat16", "hidden": 2048, "num_tokens": 128}


def seed_example_db(path: Path, *, previous_release: bool = False) -> Path:
    """Create `path` (schema only, no packaged seed data) and fill it with the example.

    `previous_release=True` writes the release before it, for `presetdb diff`: matmul not
    yet retuned, no silu_mul, and an rms_norm key that the newer release dropped."""
    migrate.upgrade(path, seed_data=False)
    store = migrate.open_store(path, "rw")
    try:
        with store.transaction() as session:
            repo = Repository(session)
            repo.ensure_kernel("rms_norm", RMS_SCHEMA, "RMSNorm over the last dimension")
            repo.ensure_kernel("matmul", MATMUL_SCHEMA, "bf16 GEMM")
            repo.ensure_kernel("silu_mul", SILU_SCHEMA, "SiLU(a) * b")
            old = _run(repo, "1.4.0", "2026-10-01T12:00:00.000000Z")
            new = _run(repo, "1.5.0", "2026-11-18T12:00:00.000000Z")
            vllm = repo.add_run("import-vllm", source_file="configs/rms_norm/nvidia_h200.json").id

            def put(
                kernel: str, platform: str, run: int, key: dict, cfg: dict, **timing: Any
            ) -> int:
                item = PresetInput(key, cfg, **timing)
                return repo.upsert_preset(kernel, platform, run, item).preset_id

            rms = {"kernel_source_hash": RMS_SOURCE}
            # rms_norm on H100: default entry and two keys sharing one config (reuse).
            put(
                "rms_norm",
                H100,
                new,
                {},
                CFG_SMALL,
                latency_ms=0.050,
                default_ms=0.052,
                reference_ms=0.061,
                configs_tried=180,
                tuning_seconds=76.0,
                **rms,
            )
            put(
                "rms_norm",
                H100,
                new,
                KEY_128,
                CFG_MID,
                latency_ms=0.011,
                default_ms=0.014,
                reference_ms=0.012,
                configs_tried=210,
                tuning_seconds=81.5,
                **rms,
            )
            put(
                "rms_norm",
                H100,
                new,
                KEY_1024,
                CFG_MID,
                latency_ms=0.019,
                default_ms=0.025,
                reference_ms=0.027,
                configs_tried=205,
                tuning_seconds=88.0,
                **rms,
            )
            # KEY_8192: tuned with helion 1.4.0 (stale), retuned: history of superseded rows.
            put(
                "rms_norm",
                H100,
                old,
                KEY_8192,
                CFG_SMALL,
                latency_ms=0.91,
                default_ms=0.95,
                reference_ms=1.02,
                configs_tried=150,
                tuning_seconds=95.0,
                **rms,
            )
            put(
                "rms_norm",
                H100,
                old,
                KEY_8192,
                CFG_BIG,
                latency_ms=0.84,
                default_ms=0.95,
                reference_ms=1.02,
                configs_tried=160,
                tuning_seconds=124.0,
                **rms,
            )
            # A config that failed to compile: quarantined, then a fresh active row.
            bad = put(
                "rms_norm",
                H100,
                new,
                {"dtype": "float16", "hidden": 4096, "num_tokens": 128},
                CFG_BAD,
                latency_ms=0.012,
                configs_tried=90,
                tuning_seconds=40.0,
                **rms,
            )
            repo.quarantine(bad, "compile failed: num_warps=32 exceeds the SM limit")
            put(
                "rms_norm",
                H100,
                new,
                {"dtype": "float16", "hidden": 4096, "num_tokens": 128},
                CFG_MID,
                latency_ms=0.012,
                default_ms=0.015,
                reference_ms=0.013,
                configs_tried=95,
                tuning_seconds=44.0,
                **rms,
            )
            # matmul on H100: 12.5x faster than the default config, slower than cuBLAS.
            put(
                "matmul",
                H100,
                new,
                MATMUL_KEY,
                CFG_MATMUL_OLD,
                latency_ms=0.52,
                default_ms=5.13,
                reference_ms=0.18,
                configs_tried=400,
                tuning_seconds=620.0,
                kernel_source_hash=MATMUL_SOURCE,
            )
            if previous_release:
                put(
                    "rms_norm",
                    H100,
                    old,
                    KEY_2048,
                    CFG_SMALL,
                    latency_ms=0.008,
                    default_ms=0.009,
                    reference_ms=0.010,
                    **rms,
                )
                _pin_times(session)
                return path
            put(
                "matmul",
                H100,
                new,
                MATMUL_KEY,
                CFG_MATMUL,
                latency_ms=0.41,
                default_ms=5.13,
                reference_ms=0.18,
                configs_tried=1200,
                tuning_seconds=1830.0,
                kernel_source_hash=MATMUL_SOURCE,
            )
            put(
                "matmul",
                H100,
                new,
                {},
                CFG_MATMUL,
                latency_ms=0.44,
                default_ms=5.20,
                reference_ms=0.19,
                configs_tried=300,
                tuning_seconds=410.0,
                kernel_source_hash=MATMUL_SOURCE,
            )
            # silu_mul on H100: slower than Helion's own default config.
            put(
                "silu_mul",
                H100,
                new,
                SILU_KEY,
                CFG_SMALL,
                latency_ms=0.090,
                default_ms=0.081,
                reference_ms=0.120,
                configs_tried=60,
                tuning_seconds=30.0,
                kernel_source_hash=SILU_SOURCE,
            )
            # rms_norm on H200 from a vLLM json: no provenance, no timings, no default entry.
            # Imported from vLLM before a module registered the kernel: unverified.
            put("rms_norm", H200, vllm, KEY_128, CFG_MID, verified=False)
            put("rms_norm", H200, vllm, KEY_1024, CFG_BIG, verified=False)
            repo.record_misses(
                [
                    MissRecord(
                        "rms_norm",
                        H100,
                        '{"dtype":"bfloat16","hidden":5120,"num_tokens":77}',
                        "no-match",
                        42,
                        "2026-11-19T08:00:00.000000Z",
                        "2026-11-20T09:30:00.000000Z",
                    ),
                    MissRecord(
                        "matmul",
                        H200,
                        '{"dtype":"bfloat16","k":4096,"m":4096,"n":4096}',
                        "no-match",
                        7,
                        "2026-11-19T10:00:00.000000Z",
                        "2026-11-19T11:00:00.000000Z",
                    ),
                    MissRecord(
                        "silu_mul",
                        H100,
                        '{"dtype":"float16","hidden":11008}',
                        "quarantined",
                        3,
                        "2026-11-20T10:00:00.000000Z",
                        "2026-11-20T10:05:00.000000Z",
                    ),
                    # Missed before KEY_128 was tuned; covered now.
                    MissRecord(
                        "rms_norm",
                        H100,
                        '{"dtype":"bfloat16","hidden":4096,"num_tokens":128}',
                        "no-match",
                        2,
                        "2026-11-01T08:00:00.000000Z",
                        "2026-11-02T08:00:00.000000Z",
                    ),
                ]
            )
            _helion_cache_entries(session)
            # Near misses: a softmax over a vocabulary served the 8192 key (16x away, far) and
            # an rms_norm one token class up (ceil, not far).
            repo.record_near_misses(
                [
                    NearMissRecord(
                        "softmax", H100, '{"dtype":"bfloat16","n":128256,"num_rows":8}', H100,
                        '{"dtype":"bfloat16","n":8192,"num_rows":8}', "nearest", "default",
                        '{"n":3.969,"num_rows":0.0}', 3.969, True, '{"n":[3.969,1.0]}', 120,
                        "2026-11-19T08:00:00.000000Z", "2026-11-20T09:30:00.000000Z",
                    ),
                    NearMissRecord(
                        "rms_norm", H100, '{"dtype":"bfloat16","hidden":4096,"num_tokens":100}', H100,
                        '{"dtype":"bfloat16","hidden":4096,"num_tokens":128}', "ceil", "default",
                        '{"hidden":0.0,"num_tokens":0.356}', 0.356, False, "{}", 900,
                        "2026-11-19T08:00:00.000000Z", "2026-11-20T09:30:00.000000Z",
                    ),
                ]
            )
            _pin_times(session)
    finally:
        store.dispose()
    return path


def _helion_cache_entries(session: Session) -> None:
    """Two entries of Helion's own cache, as the remote-cache backend and an import write
    them (presetdb.store.helion_cache), for the helion_cache audit."""
    import json

    def entry(config: dict[str, Any], hardware: str, spec: str) -> str:
        fields = {
            "specialization_key": spec,
            "extra_results": "()",
            "compiler_seed_results": "()",
            "kernel_source_hash": hashlib.sha256(b"plain helion kernel v1").hexdigest(),
            "hardware": hardware,
            "runtime_name": "12.8",
            "backend": "triton",
            "config_spec_hash": hashlib.sha256(b"config spec v1").hexdigest(),
            "extra_cache_key": "",
        }
        data = {"config": json.dumps(config, indent=2), "key": {"type": "LooseAutotuneCacheKey", "fields": fields}}
        return json.dumps(data, indent=2)

    big = "((torch.bfloat16, (2, 2), False, frozenset()), 'cuda', None, False)"
    small = "((torch.bfloat16, (1, 2), False, frozenset()), 'cuda', None, False)"
    for n, (text, source, provenance) in enumerate(
        [
            (
                entry(CFG_MID, "NVIDIA H100", big),
                "remote-cache",
                {"host": "gpu-07", **RUNNING, "presetdb_version": "0.1.0"},
            ),
            (entry(CFG_SMALL, "NVIDIA H200", small), "import-helion-cache", {"source_file": "cache.best_config"}),
        ],
        start=1,
    ):
        key = hashlib.sha256(text.encode()).hexdigest()
        parsed = helion_cache.parse_entry(key, text, where=f"example entry {n}")
        helion_cache.store_entry(session, parsed, source, provenance)
    table = HelionCacheEntry.__table__
    for row_id in session.scalars(select(table.c.id)).all():
        stamp = f"2026-11-21T09:{row_id:02d}:00.000000Z"
        session.execute(update(table).where(table.c.id == row_id).values(created_at=stamp, updated_at=stamp))


def _pin_times(session: Session) -> None:
    """Replace wall-clock stamps so that outputs built from the db are reproducible."""
    for model in (Kernel, Config):
        session.execute(update(model).values(created_at=PINNED_AT))
    session.execute(update(TuningRun).values(imported_at=PINNED_AT))
    for preset in session.scalars(select(Preset).order_by(Preset.id)):
        preset.created_at = f"2026-11-20T12:{preset.id:02d}:00.000000Z"


def ship_copy(src: Path, dst: Path) -> Path:
    """A rollback-journal copy, as `presetdb build` ships (VACUUM INTO)."""
    conn = sqlite3.connect(src)
    try:
        conn.execute("VACUUM INTO ?", (str(dst),))
    finally:
        conn.close()
    conn = sqlite3.connect(dst)
    try:
        conn.execute("PRAGMA journal_mode=DELETE")
    finally:
        conn.close()
    return dst


def sha256_file(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()
