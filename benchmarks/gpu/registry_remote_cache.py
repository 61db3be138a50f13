"""GPU check of presetdb as Helion's remote autotune cache (issue [registry], item 7).

    python benchmarks/gpu/registry_remote_cache.py OUT_DIR [--budget-seconds 90] [--size 4096]

Two processes, each a fresh Python with Helion's unmodified ``RemoteAutotuneCache`` and
``HELION_REMOTE_CACHE_BACKEND=presetdb.helion.remote_cache.Backend`` on a SQLite registry
file (OUT_DIR/registry.db, made with the migrations first):

1. ``tune``: a plain ``@helion.kernel`` (a row softmax, not registered with presetdb),
   effort quick with a wall-clock budget, an empty local cache: Helion searches, then
   writes its best config to its local cache and, through the backend, one row of
   ``helion_cache_entries``. Logged: search time, Helion's autotune counters, the row.
2. ``serve``: the same kernel in a new process with another empty local cache and
   ``HELION_ASSERT_CACHE_HIT=1`` (Helion raises if it would search): the config comes
   from the registry. Logged: first-call time, counters (cache_hit 1, cache_miss 0),
   the served config (must equal the row's), output checked against torch.

Writes OUT_DIR/results.json and OUT_DIR/results.md, plus each phase's log. Exit status 0
only when the row was written, the second process searched nothing and both outputs
matched torch.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import helion
import helion.language as hl
import torch

BACKEND = "presetdb.helion.remote_cache.Backend"


def row_softmax_body(x: torch.Tensor) -> torch.Tensor:
    n, _m = x.size()
    out = torch.empty_like(x)
    for tile_n in hl.tile(n):
        values = x[tile_n, :].to(torch.float32)
        amax = torch.amax(values, dim=1, keepdim=True)
        exp = torch.exp(values - amax)
        out[tile_n, :] = (exp / torch.sum(exp, dim=1, keepdim=True)).to(x.dtype)
    return out


def kernel() -> Any:
    """The plain Helion kernel, made in the child once its HELION_* variables are set
    (Helion reads HELION_AUTOTUNE_CACHE into the kernel's settings when it is made)."""
    budget = int(os.environ["BENCH_BUDGET_S"])
    return helion.kernel(autotune_effort="quick", autotune_budget_seconds=budget)(row_softmax_body)


def counters() -> dict[str, int]:
    try:
        from helion._utils import counters as helion_counters  # Helion's own tallies
    except ImportError:
        return {}
    return {k: int(v) for k, v in helion_counters["autotune"].items()}


def rows(db: Path) -> list[dict[str, Any]]:
    import sqlite3

    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    conn.row_factory = sqlite3.Row
    try:
        query = (
            "SELECT e.cache_key, e.hardware, e.runtime_name, e.kernel_source_hash, e.specialization_key, "
            "e.config_spec_hash, e.source, e.host, e.helion_version, e.torch_version, e.triton_version, "
            "e.created_at, e.updated_at, c.config_json FROM helion_cache_entries e "
            "JOIN configs c ON c.id = e.config_id ORDER BY e.id"
        )
        return [dict(r) for r in conn.execute(query)]
    finally:
        conn.close()


def phase(name: str, size: int) -> dict[str, Any]:
    """One process's work: call the kernel once, report what happened."""
    row_softmax = kernel()
    x = torch.randn(size, size, device="cuda", dtype=torch.float16)
    start = time.perf_counter()
    out = row_softmax(x)
    torch.cuda.synchronize()
    first_call_s = time.perf_counter() - start
    expected = torch.softmax(x.float(), dim=1).to(x.dtype)
    correct = bool(torch.allclose(out.float(), expected.float(), atol=2e-3, rtol=2e-2))
    bound = row_softmax.bind((x,))
    config = dict(bound._config.config) if bound._config is not None else None
    local = sorted(p.name for p in Path(os.environ["HELION_CACHE_DIR"]).glob("*.best_config"))
    return {
        "phase": name,
        "device": torch.cuda.get_device_name(),
        "first_call_s": first_call_s,
        "counters": counters(),
        "config": config,
        "correct": correct,
        "local_cache_files": local,
    }


def run_phase(name: str, out: Path, db: Path, args: argparse.Namespace) -> dict[str, Any]:
    env = {
        **os.environ,
        "HELION_AUTOTUNE_CACHE": "RemoteAutotuneCache",
        "HELION_REMOTE_CACHE_BACKEND": BACKEND,
        "PRESETDB_REMOTE_CACHE_DB": str(db),
        "HELION_CACHE_DIR": str(out / f"helion-cache-{name}"),  # empty: a new machine
        "BENCH_BUDGET_S": str(args.budget_seconds),
    }
    for var in ("HELION_SKIP_CACHE", "HELION_FORCE_AUTOTUNE", "PRESETDB_REGISTRY", "TRITON_INTERPRET"):
        env.pop(var, None)
    if name == "serve":
        env["HELION_ASSERT_CACHE_HIT"] = "1"  # Helion raises CacheAssertionError instead of searching
    report = out / f"{name}.json"
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, __file__, str(out), "--phase", name, "--size", str(args.size), "--report", str(report)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    wall = time.perf_counter() - start
    (out / f"{name}.log").write_text(proc.stdout + proc.stderr)
    result: dict[str, Any] = json.loads(report.read_text()) if report.exists() else {"phase": name}
    result.update(returncode=proc.returncode, process_wall_s=wall)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--budget-seconds", type=int, default=90, help="Helion's autotune budget (tune phase)")
    parser.add_argument("--size", type=int, default=4096, help="softmax input is SIZE x SIZE fp16")
    parser.add_argument("--phase", choices=("tune", "serve"), help=argparse.SUPPRESS)
    parser.add_argument("--report", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.phase is not None:  # a child process
        args.report.write_text(json.dumps(phase(args.phase, args.size), indent=2) + "\n")
        return 0

    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    db = out / "registry.db"
    if db.exists():
        db.unlink()
    from presetdb.store import migrate

    migrate.upgrade(db, seed_data=False)
    tune = run_phase("tune", out, db, args)
    after_tune = rows(db)
    serve = run_phase("serve", out, db, args)
    after_serve = rows(db)

    row = after_tune[0] if len(after_tune) == 1 else None
    checks = {
        "tune_ok": tune.get("returncode") == 0 and bool(tune.get("correct")),
        "tune_searched": tune.get("counters", {}).get("cache_miss") == 1,
        "one_row_written": row is not None and row["source"] == "remote-cache",
        "serve_ok": serve.get("returncode") == 0 and bool(serve.get("correct")),
        "serve_no_search": serve.get("counters", {}).get("cache_hit") == 1
        and not serve.get("counters", {}).get("cache_miss"),
        "served_the_row": row is not None and serve.get("config") == json.loads(row["config_json"]),
        "row_unchanged_by_serve": after_serve == after_tune,
    }
    payload = {"checks": checks, "tune": tune, "serve": serve, "row": row, "rows_after_serve": len(after_serve)}
    (out / "results.json").write_text(json.dumps(payload, indent=2) + "\n")
    lines = [
        f"# presetdb as Helion's remote cache on {tune.get('device', '?')}",
        "",
        "| process | first call (s) | process wall (s) | Helion counters | output ok |",
        "|---|---|---|---|---|",
        *(
            f"| {p['phase']} | {p.get('first_call_s', float('nan')):.2f} | {p['process_wall_s']:.1f} | "
            f"{p.get('counters')} | {p.get('correct')} |"
            for p in (tune, serve)
        ),
        "",
        f"Row: {json.dumps({k: row[k] for k in ('cache_key', 'hardware', 'runtime_name', 'helion_version')}) if row else None}",
        "",
        "Checks: " + ", ".join(f"{k}={'ok' if v else 'FAILED'}" for k, v in checks.items()),
        "",
    ]
    (out / "results.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
