"""Picker speed on the CPU: the four targets of issue [picker].

    resolve, memo hit                      p50 <= 1 us     (the per-call cost a kernel pays)
    resolve, new tuple (nearest, 1k keys)  p50 <= 50 us    (first call of a new shape)
    load 10,000 presets (kernel, platform) p50 <= 50 ms    (query + records + KeyIndex)
    open 1M-preset db, load 10k slice      p50 <= 150 ms   (open_immutable + first resolve)

Run:  python benchmarks/bench_picker.py [--out benchmarks/results/cpu] [--quick]

The databases are generated once and cached (``--cache-dir``, default a tmp dir): the
schema by `presetdb.store.migrate.upgrade`, the rows by bulk `executemany` in one transaction
(a few distinct configs and runs, reused), then switched to a rollback journal like a
shipped file. Everything is measured through the public path: `open_immutable`,
`resolve_platform`, `Picker.resolve`. Targets are judged on wall clock
(`perf_counter_ns`), warm OS page cache; the thread's CPU time is reported beside it,
because this 2-core machine is shared and a busy neighbour inflates wall time (the
1-minute load average before and after is recorded too). Memo hits are timed in batches
of 1,000 calls (the timer costs more than one hit); the other targets time each
operation alone.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import sqlalchemy

from presetdb import __version__
from presetdb.keys import KeySpec, canonical_key
from presetdb.runtime.layers import open_immutable
from presetdb.runtime.picker import Picker
from presetdb.runtime.platforms import DeviceInfo, resolve_platform
from presetdb.store import migrate
from presetdb.store.repository import Repository

GENERATOR_VERSION = 2  # bump when the generated dbs change (invalidates the cache)
PLATFORM = "nvidia_h100"
CPU = DeviceInfo("cpu", "cpu", None, None)
SCHEMA = {
    "fields": [
        {"name": "dtype", "policy": "exact"},
        {"name": "hidden", "policy": "nearest"},
        {"name": "num_tokens", "policy": "ceil"},
    ]
}
SPEC = KeySpec.from_schema(SCHEMA)
DTYPES = ("bfloat16", "float16", "float32", "float8_e4m3fn")


# ---------------------------------------------------------------------------- data


def grid(n: int, seed: int) -> list[dict[str, Any]]:
    """n distinct shape keys: dtypes x hidden sizes x token counts."""
    rng = random.Random(seed)
    dtypes = DTYPES[: 4 if n >= 4000 else 2]
    per_dtype = n // len(dtypes)
    n_hidden = max(1, int(per_dtype**0.5))
    n_tokens = -(-per_dtype // n_hidden)
    hidden = sorted(rng.sample(range(64, 65536), n_hidden))
    tokens = sorted(rng.sample(range(1, 1 << 16), n_tokens))
    keys = [
        {"dtype": d, "hidden": h, "num_tokens": t}
        for d in dtypes
        for h in hidden
        for t in tokens
    ]
    return keys[:n]


def generate(path: Path, kernels: int, platforms: list[str], per_slice: int) -> None:
    """kernels x platforms slices of `per_slice` active presets, bulk inserted."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    migrate.upgrade(tmp, seed_data=False)
    conn = sqlite3.connect(tmp, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=DELETE")
        conn.execute("PRAGMA synchronous=OFF")
        conn.execute("BEGIN")
        platform_ids = {
            name: pid for pid, name in conn.execute("SELECT id, name FROM platforms")
        }
        now = "2026-11-24T00:00:00.000000Z"
        configs = []
        for i in range(8):  # a few distinct configs, reused by every preset
            cfg = {
                "block_sizes": [1 << (i % 4 + 3)],
                "num_warps": 1 << (i % 3 + 2),
                "num_stages": i % 4 + 1,
            }
            text = json.dumps(cfg, sort_keys=True, separators=(",", ":"))
            configs.append(
                conn.execute(
                    "INSERT INTO configs (sha256, config_json, created_at) VALUES (?, ?, ?)",
                    (f"{i:064x}", text, now),
                ).lastrowid
            )
        runs = [
            conn.execute(
                "INSERT INTO tuning_runs (source, tuned_by, device_name, helion_version, "
                "finished_at, imported_at) VALUES ('tune', 'bench', 'NVIDIA H100 80GB HBM3', "
                "'1.5.0', ?, ?)",
                (now, now),
            ).lastrowid
            for _ in range(4)
        ]
        keys = [canonical_key(k) for k in grid(per_slice, seed=1)]
        for k in range(kernels):
            kid = conn.execute(
                "INSERT INTO kernels (name, key_schema, description, created_at) VALUES (?, ?, '', ?)",
                (f"kernel_{k:03d}", json.dumps(SCHEMA, sort_keys=True), now),
            ).lastrowid
            for name in platforms:
                pid = platform_ids[name]
                source_hash = f"{k:064x}"
                # Every column a tuned preset fills, so the load costs what real data costs.
                conn.executemany(
                    "INSERT INTO presets (kernel_id, platform_id, shape_key, config_id, run_id, "
                    "kernel_source_hash, latency_ms, default_ms, reference_ms, configs_tried, "
                    "tuning_seconds, status, created_at) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'active', ?)",
                    (
                        (
                            kid,
                            pid,
                            key,
                            configs[i % len(configs)],
                            runs[i % len(runs)],
                            source_hash,
                            0.01 + (i % 97) * 1e-3,
                            0.05 + (i % 89) * 1e-3,
                            0.02 + (i % 83) * 1e-3,
                            100 + i % 300,
                            60.0 + i % 50,
                            now,
                        )
                        for i, key in enumerate(keys)
                    ),
                )
        conn.execute("COMMIT")
        conn.execute("VACUUM")
    finally:
        conn.close()
    os.replace(tmp, path)


def cached_db(
    cache_dir: Path, name: str, kernels: int, platforms: list[str], per_slice: int
) -> Path:
    path = cache_dir / f"{name}-g{GENERATOR_VERSION}-{migrate.head()}.db"
    if not path.exists():
        started = time.perf_counter()
        generate(path, kernels, platforms, per_slice)
        print(
            f"  generated {path} ({kernels * len(platforms) * per_slice:,} presets, "
            f"{path.stat().st_size / 1e6:.0f} MB) in {time.perf_counter() - started:.1f} s"
        )
    return path


# ---------------------------------------------------------------------------- timing


def open_picker(path: Path) -> Picker:
    """What a process does with a deployment file: open it immutable, resolve the platform."""
    layer = open_immutable("deployment", path, strict=True)
    assert layer is not None
    with ExitStack() as stack:
        repos = [Repository(stack.enter_context(layer.store.read()))]
        info = resolve_platform(repos, override=PLATFORM, device=CPU)
    return Picker([layer], None, info)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


@dataclass
class Result:
    name: str
    target: str
    limit: float
    unit: str
    p50: float  # wall clock: what the target is about
    p99: float
    mean: float
    cpu_p50: (
        float  # this thread's CPU time: the same work without a busy machine's waits
    )
    cpu_p99: float
    samples: int
    passed: bool
    note: str = ""


class Samples:
    """Wall-clock and thread CPU time of each timed call, in `unit`."""

    def __init__(self, unit: str) -> None:
        self.scale = {"us": 1e3, "ms": 1e6}[unit]
        self.wall: list[float] = []
        self.cpu: list[float] = []

    def time(self, fn: Callable[[], Any], calls: int = 1) -> None:
        w0, c0 = time.perf_counter_ns(), time.thread_time_ns()
        fn()
        c1, w1 = time.thread_time_ns(), time.perf_counter_ns()
        self.wall.append((w1 - w0) / calls / self.scale)
        self.cpu.append((c1 - c0) / calls / self.scale)


def summarise(
    name: str, target: str, limit: float, unit: str, samples: Samples, note: str = ""
) -> Result:
    wall, cpu = samples.wall, samples.cpu
    p50 = statistics.median(wall)
    result = Result(
        name,
        target,
        limit,
        unit,
        p50,
        percentile(wall, 0.99),
        statistics.fmean(wall),
        statistics.median(cpu),
        percentile(cpu, 0.99),
        len(wall),
        p50 <= limit,
        note,
    )
    if not result.passed:
        why = (
            "the same work took a median of "
            f"{result.cpu_p50:.3g} {unit} of CPU time: the rest was waiting for a core on a "
            "busy machine (see the load average)"
            if result.cpu_p50 <= limit
            else "the work itself is slower than the target (CPU time above it too)"
        )
        result.note = (
            f"MISSED by {p50 - limit:.3g} {unit} ({p50 / limit:.2f}x the target); {why}. "
            + result.note
        )
    print(
        f"  {name}: p50 {p50:.3f} {unit}, p99 {result.p99:.3f} {unit}, CPU p50 "
        f"{result.cpu_p50:.3f} {unit} (target {target}) {'PASS' if result.passed else 'FAIL'}"
    )
    return result


def bench_memo_hit(path: Path, batches: int) -> Result:
    picker = open_picker(path)
    kernel = "kernel_000"
    features = ("bfloat16", 4096, 100)
    picker.resolve(kernel, SPEC, features)
    resolve = picker.resolve
    calls = 1000

    def batch() -> None:
        for _ in range(calls):
            resolve(kernel, SPEC, features)

    samples = Samples("us")
    gc.disable()
    try:
        for _ in range(batches):
            samples.time(batch, calls)
    finally:
        gc.enable()
    assert picker.loads == 1
    picker.close()
    return summarise(
        "resolve, memoized feature tuple",
        "p50 <= 1 us",
        1.0,
        "us",
        samples,
        f"{batches} batches of {calls} calls; per-call time of each batch",
    )


def bench_new_tuple(path: Path, samples_wanted: int) -> Result:
    picker = open_picker(path)
    kernel = "kernel_000"
    picker.resolve(
        kernel, SPEC, ("bfloat16", 1, 1)
    )  # index built (the load is target 3)
    n_keys = len(picker._indexes[kernel].loaded[PLATFORM])
    rng = random.Random(3)
    queries = {
        (
            "bfloat16" if rng.random() < 0.5 else "float16",
            rng.randint(1, 70000),
            rng.randint(1, 70000),
        )
        for _ in range(samples_wanted)
    }
    samples = Samples("us")
    for q in queries:
        samples.time(lambda q=q: picker.resolve(kernel, SPEC, q))
    assert picker.loads == 1
    picker.close()
    return summarise(
        f"resolve, new feature tuple (nearest/ceil over {n_keys:,} keys)",
        "p50 <= 50 us",
        50.0,
        "us",
        samples,
        f"{len(queries)} distinct unseen tuples, one call each (builds the Choice and its "
        "PresetRecord)",
    )


def bench_load(path: Path, repeats: int) -> Result:
    picker = open_picker(path)
    samples = Samples("ms")
    for i in range(repeats):
        picker.invalidate()
        samples.time(
            lambda i=i: picker.resolve("kernel_000", SPEC, ("bfloat16", 4096, i + 1))
        )
    n = len(picker._indexes["kernel_000"].loaded[PLATFORM])
    assert picker.loads == repeats
    picker.close()
    return summarise(
        f"load {n:,} presets for one (kernel, platform)",
        "p50 <= 50 ms",
        50.0,
        "ms",
        samples,
        f"{repeats} reloads (invalidate + first resolve: the requested platform's rows from the "
        "layer, 2 queries, then KeyIndex; the fallback platforms of the chain "
        f"{' > '.join(picker.chain)} load only when a call needs them)",
    )


def bench_open_big(path: Path, repeats: int, n_presets: int) -> Result:
    rng = random.Random(5)
    slice_size = 0
    samples = Samples("ms")
    for i in range(repeats):
        kernel = f"kernel_{rng.randrange(50):03d}"

        def run(kernel: str = kernel, tokens: int = i + 1) -> None:
            picker = open_picker(path)
            assert picker.resolve(kernel, SPEC, ("bfloat16", 4096, tokens)) is not None
            nonlocal slice_size
            slice_size = len(picker._indexes[kernel].loaded[PLATFORM])
            picker.close()

        samples.time(run)
    return summarise(
        f"open a {n_presets:,}-preset db and load one {slice_size:,}-preset slice",
        "p50 <= 150 ms",
        150.0,
        "ms",
        samples,
        f"{repeats} runs, a random kernel each: open_immutable (file + schema checks) + "
        "resolve_platform + first resolve; warm page cache",
    )


# ---------------------------------------------------------------------------- report


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def machine() -> dict[str, Any]:
    return {
        "processor": platform.processor() or platform.machine(),
        "cpu_model": cpu_model(),
        "machine": platform.machine(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "python": sys.version.split()[0],
        "sqlite": sqlite3.sqlite_version,
        "sqlalchemy": sqlalchemy.__version__,
        "presetdb": __version__,
    }


def markdown(results: list[Result], info: dict[str, Any], when: str) -> str:
    lines = [
        "# Picker benchmark (CPU)",
        "",
        f"Written by `benchmarks/bench_picker.py` on {when}.",
        "",
        "Machine: " + ", ".join(f"{k} {v}" for k, v in info.items()),
        "",
        "| target | limit | p50 | p99 | CPU p50 | samples | result |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r.name} | {r.target} | {r.p50:.3f} {r.unit} | {r.p99:.3f} {r.unit} | "
            f"{r.cpu_p50:.3f} {r.unit} | {r.samples} | {'pass' if r.passed else 'FAIL'} |"
        )
    lines += ["", "Notes:", ""]
    lines += [f"- {r.name}: {r.note}" for r in results if r.note]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(__file__).parent / "results" / "cpu",
        help="folder for bench_picker.json and bench_picker.md",
    )
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=Path(tempfile.gettempdir()) / "presetdb-bench",
        help="where the generated dbs are kept between runs",
    )
    parser.add_argument(
        "--quick", action="store_true", help="fewer samples (a smoke run)"
    )
    args = parser.parse_args(argv)
    args.cache_dir.mkdir(parents=True, exist_ok=True)
    scale = 10 if args.quick else 1

    print("databases:")
    small = cached_db(args.cache_dir, "keys1k", 1, [PLATFORM], 1000)
    medium = cached_db(args.cache_dir, "keys10k", 1, [PLATFORM], 10_000)
    big = cached_db(args.cache_dir, "presets1m", 50, [PLATFORM, "nvidia_h200"], 10_000)
    print("results:")
    load_before = os.getloadavg()[0]
    results = [
        bench_memo_hit(small, 2000 // scale),
        bench_new_tuple(small, 5000 // scale),
        bench_load(medium, 40 // (scale // 2 or 1)),
        bench_open_big(big, 30 // (scale // 2 or 1), 1_000_000),
    ]
    info = machine()
    # A shared machine: say how busy it was (1-minute load average, before and after).
    info["load_average_1m"] = f"{load_before:.2f} -> {os.getloadavg()[0]:.2f}"
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    args.out.mkdir(parents=True, exist_ok=True)
    payload = {
        "benchmark": "bench_picker",
        "written_at": when,
        "machine": info,
        "quick": args.quick,
        "results": [asdict(r) for r in results],
        "all_passed": all(r.passed for r in results),
    }
    (args.out / "bench_picker.json").write_text(json.dumps(payload, indent=2) + "\n")
    (args.out / "bench_picker.md").write_text(markdown(results, info, when))
    print(f"wrote {args.out / 'bench_picker.json'} and {args.out / 'bench_picker.md'}")
    return 0 if payload["all_passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
