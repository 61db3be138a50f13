"""The picker end to end on real SQLite files: shape policies (property tests through
`Picker.resolve`), concurrency, the miss ledger, quarantine, and `presetdb pick`.

Property tests build one db per module with many keys and vary only the queried
features, so each example is a resolve, not a db build.
"""

from __future__ import annotations

import json
import math
import random
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from picker_fixtures import (
    CPU,
    H100,
    H100_DEVICE,
    H200,
    RMS_SPEC,
    P,
    build,
    make_db,
    picker_factory,
    read_repository,
    rms_key,
    schema,
)
from sqlalchemy import event
from typer.testing import CliRunner

from presetdb.cli import app
from presetdb.keys import DEFAULT_MAX_DISTANCE, DistanceLimit, KeySpec, canonical_key
from presetdb.runtime import ledger as ledger_module
from presetdb.runtime import picker as picker_module
from presetdb.runtime.picker import Choice, Picker
from presetdb.settings import Settings
from presetdb.store import migrate
from presetdb.store.repository import Repository

make_picker_fixture = pytest.fixture(picker_factory, name="make_picker")

examples = settings(
    max_examples=250,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

# ---------------------------------------------------------------------------- policies
# Kernel "by_<policy>": key (dtype exact, size <policy>, tokens <policy>). The numeric
# values mix powers of two (exact log2 ties) with arbitrary sizes.
DTYPES = ("bfloat16", "float16")
QUERY_DTYPES = (*DTYPES, "float32")  # float32 is never stored: exact must not cross
POLICY_KERNELS = {
    f"by_{policy}": schema(("dtype", "exact"), ("size", policy), ("tokens", policy))
    for policy in ("nearest", "ceil", "floor")
}
# Categorical ints: "heads" is exact, so 12 never borrows 16's config.
POLICY_KERNELS["by_exact"] = schema(
    ("dtype", "exact"), ("heads", "exact"), ("size", "nearest")
)


def _stored_keys() -> dict[str, list[dict[str, Any]]]:
    rng = random.Random(20261124)
    keys: dict[str, list[dict[str, Any]]] = {}
    for kernel, key_schema in POLICY_KERNELS.items():
        a, b = (f["name"] for f in key_schema["fields"][1:])
        found = []
        for dtype in DTYPES:
            first = sorted(
                {1 << e for e in rng.sample(range(4, 17), 8)}
                | {rng.randint(2, 1 << 17) for _ in range(10)}
            )
            for x in first:
                if kernel == "by_exact":
                    x = rng.choice((8, 16, 32, 64, 128))
                seconds = {1 << e for e in rng.sample(range(14), 3)} | {
                    rng.randint(1, 1 << 14)
                }
                found += [{"dtype": dtype, a: x, b: y} for y in sorted(seconds)]
        unique = {json.dumps(k, sort_keys=True): k for k in found}
        keys[kernel] = list(unique.values())
    return keys


STORED = _stored_keys()


@pytest.fixture(scope="module")
def policy_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("policies") / "deployment.db"
    presets = [
        P(kernel, H100, key, {"block": i})
        for kernel, keys in STORED.items()
        for i, key in enumerate(keys)
    ]
    make_db(path, presets, kernels=POLICY_KERNELS)
    return path


@pytest.fixture(scope="module")
def policy_picker(policy_db: Path) -> Iterator[Picker]:
    """The field-by-field policies alone: no limit, so no match is ever far (a far match
    gives way to a key within the limits: `guarded_picker`)."""
    unlimited = replace(Settings.from_env(), max_distance=(DistanceLimit(None, "*", math.inf),))
    picker = build(deployment=policy_db, platform=H100, settings=unlimited)
    yield picker
    picker.close()


@pytest.fixture(scope="module")
def guarded_picker(policy_db: Path) -> Iterator[Picker]:
    """The same keys under the far-match guard's default limit (1.0 log2 per field)."""
    limited = replace(Settings.from_env(), max_distance=())
    picker = build(deployment=policy_db, platform=H100, settings=limited)
    yield picker
    picker.close()


def log2(v: float) -> float:
    return math.log2(v) if v > 1 else 0.0


def choose(policy: str, values: set[Any], actual: Any) -> Any:
    """Brute-force reading of the documented policies (independent of KeyIndex)."""
    if policy == "exact":
        return actual if actual in values else None
    if policy == "ceil":
        above = [v for v in values if v >= actual]
        return min(above) if above else max(values)
    if policy == "floor":
        below = [v for v in values if v <= actual]
        return max(below) if below else min(values)
    return min(values, key=lambda v: (abs(log2(v) - log2(actual)), -v))  # ties: larger


def oracle(kernel: str, features: tuple[Any, ...]) -> dict[str, Any] | None:
    """Fields in spec order; each picks among the keys left by the fields before it."""
    candidates = STORED[kernel]
    for f, actual in zip(POLICY_KERNELS[kernel]["fields"], features, strict=True):
        chosen = choose(f["policy"], {k[f["name"]] for k in candidates}, actual)
        if chosen is None:
            return None
        candidates = [k for k in candidates if k[f["name"]] == chosen]
    return candidates[0]


def oracle_within(kernel: str, features: tuple[Any, ...], limit: float) -> dict[str, Any] | None:
    """`oracle`, unless its key is far (a numeric field more than `limit` log2 away): then
    the stored key with every numeric field within `limit` (exact fields equal) that goes
    against the fewest ceil/floor fields, then is nearest in summed log2 distance, then has
    the smallest canonical text; none such: the far key."""
    first = oracle(kernel, features)
    fields = POLICY_KERNELS[kernel]["fields"]
    numeric = [(f, actual) for f, actual in zip(fields, features, strict=True) if f["policy"] != "exact"]

    def gap(key: dict[str, Any], name: str, actual: Any) -> float:
        return abs(log2(key[name]) - log2(actual))

    if first is None or all(gap(first, f["name"], a) <= limit for f, a in numeric):
        return first
    within = [
        k for k in STORED[kernel]
        if all(k[f["name"]] == a for f, a in zip(fields, features, strict=True) if f["policy"] == "exact")
        and all(gap(k, f["name"], a) <= limit for f, a in numeric)
    ]

    def rank(key: dict[str, Any]) -> tuple[int, float, str]:
        against = sum(
            (f["policy"] == "ceil" and key[f["name"]] < a) or (f["policy"] == "floor" and key[f["name"]] > a)
            for f, a in numeric
        )
        return (against, sum(gap(key, f["name"], a) for f, a in numeric), canonical_key(key))

    return min(within, key=rank) if within else first


sizes = st.one_of(
    st.integers(min_value=0, max_value=18).map(lambda e: 1 << e),
    st.integers(min_value=0, max_value=1 << 18),
)
query_dtypes = st.sampled_from(QUERY_DTYPES)


def resolve(picker: Picker, kernel: str, features: tuple[Any, ...]) -> Choice | None:
    return picker.resolve(kernel, KeySpec.from_schema(POLICY_KERNELS[kernel]), features)


def check_choice(
    choice: Choice | None, kernel: str, features: tuple[Any, ...]
) -> dict[str, Any] | None:
    expected = oracle(kernel, features)
    if expected is None:
        assert choice is None, (
            f"{kernel} {features}: expected a miss, got {choice and choice.preset.shape_key}"
        )
        return None
    assert choice is not None, f"{kernel} {features}: expected {expected}, got a miss"
    got = choice.preset.key
    assert got == expected, (
        f"{kernel} {features}: picked {got}, the policy says {expected}"
    )
    assert (choice.layer, choice.platform, choice.kind) == (
        "deployment",
        H100,
        choice.match,
    )
    assert choice.config == {"block": STORED[kernel].index(expected)}
    for f, actual in zip(POLICY_KERNELS[kernel]["fields"], features, strict=True):
        if f["policy"] != "exact":
            assert choice.distances[f["name"]] == pytest.approx(
                abs(log2(got[f["name"]]) - log2(actual))
            )
    return got


@examples
@given(dtype=query_dtypes, size=sizes, tokens=sizes)
def test_ceil_never_picks_a_smaller_value_when_a_larger_exists(
    policy_picker: Picker, dtype: str, size: int, tokens: int
) -> None:
    got = check_choice(
        resolve(policy_picker, "by_ceil", (dtype, size, tokens)),
        "by_ceil",
        (dtype, size, tokens),
    )
    if got is None:
        assert dtype == "float32"
        return
    stored = {k["size"] for k in STORED["by_ceil"] if k["dtype"] == dtype}
    if max(stored) >= size:
        assert got["size"] >= size
        assert not [v for v in stored if size <= v < got["size"]]
    else:
        assert got["size"] == max(stored)  # clamped to the largest tuned value
    assert got["dtype"] == dtype


@examples
@given(dtype=query_dtypes, size=sizes, tokens=sizes)
def test_floor_never_picks_a_larger_value_when_a_smaller_exists(
    policy_picker: Picker, dtype: str, size: int, tokens: int
) -> None:
    got = check_choice(
        resolve(policy_picker, "by_floor", (dtype, size, tokens)),
        "by_floor",
        (dtype, size, tokens),
    )
    if got is None:
        assert dtype == "float32"
        return
    stored = {k["size"] for k in STORED["by_floor"] if k["dtype"] == dtype}
    if min(stored) <= size:
        assert got["size"] <= size
        assert not [v for v in stored if got["size"] < v <= size]
    else:
        assert got["size"] == min(stored)
    tokens_left = {
        k["tokens"]
        for k in STORED["by_floor"]
        if k["dtype"] == dtype and k["size"] == got["size"]
    }
    if min(tokens_left) <= tokens:
        assert got["tokens"] <= tokens


@examples
@given(dtype=query_dtypes, size=sizes, tokens=sizes)
def test_nearest_minimises_log2_distance_and_ties_go_to_the_larger(
    policy_picker: Picker, dtype: str, size: int, tokens: int
) -> None:
    choice = resolve(policy_picker, "by_nearest", (dtype, size, tokens))
    got = check_choice(choice, "by_nearest", (dtype, size, tokens))
    if got is None:
        assert dtype == "float32"
        return
    assert choice is not None
    stored = {k["size"] for k in STORED["by_nearest"] if k["dtype"] == dtype}
    best = choice.distances["size"]
    for v in stored:
        d = abs(log2(v) - log2(size))
        assert best <= d + 1e-12, (
            f"{v} is nearer to {size} than the chosen {got['size']}"
        )
        if math.isclose(d, best, abs_tol=1e-12):
            assert got["size"] >= v, "a tie must go to the larger value"


@examples
@given(
    kernel=st.sampled_from(("by_nearest", "by_ceil", "by_floor")),
    dtype=query_dtypes, size=sizes, tokens=sizes,
)
def test_a_far_match_gives_way_to_the_nearest_key_within_every_limit(
    guarded_picker: Picker, kernel: str, dtype: str, size: int, tokens: int
) -> None:
    features = (dtype, size, tokens)
    choice = resolve(guarded_picker, kernel, features)
    expected = oracle_within(kernel, features, DEFAULT_MAX_DISTANCE)
    if expected is None:
        assert choice is None
        return
    assert choice is not None
    assert choice.preset.key == expected, f"{kernel} {features}: {choice.preset.key}, expected {expected}"
    assert choice.config == {"block": STORED[kernel].index(expected)}
    for name, actual in (("size", size), ("tokens", tokens)):
        assert choice.distances[name] == pytest.approx(abs(log2(expected[name]) - log2(actual)))
    # Far only when no stored key is within every limit; then it is the field-by-field key.
    assert choice.far == (expected == oracle(kernel, features) and any(
        abs(log2(expected[n]) - log2(a)) > DEFAULT_MAX_DISTANCE for n, a in (("size", size), ("tokens", tokens))
    ))


@examples
@given(
    dtype=query_dtypes, heads=st.sampled_from((8, 12, 16, 32, 64, 96, 128)), size=sizes
)
def test_exact_never_crosses_categories(
    policy_picker: Picker, dtype: str, heads: int, size: int
) -> None:
    choice = resolve(policy_picker, "by_exact", (dtype, heads, size))
    got = check_choice(choice, "by_exact", (dtype, heads, size))
    stored = {(k["dtype"], k["heads"]) for k in STORED["by_exact"]}
    if (dtype, heads) in stored:
        assert got is not None and (got["dtype"], got["heads"]) == (dtype, heads)
    else:
        assert (
            choice is None
        )  # no default entry: never borrow another category's config


def test_nearest_tie_example_through_the_picker(
    make_picker: Any, tmp_path: Path
) -> None:
    # 2048 is exactly between 1024 and 4096 in log2: the larger wins, whatever the order.
    for order in ((1024, 4096), (4096, 1024)):
        path = make_db(
            tmp_path / f"tie-{order[0]}.db",
            [P("rms_norm", H100, rms_key(hidden=h), {"hidden": h}) for h in order],
        )
        picker = make_picker(deployment=path)
        choice = picker.resolve("rms_norm", RMS_SPEC, ("bfloat16", 2048, 128))
        assert choice is not None
        assert choice.config == {"hidden": 4096}
        assert choice.match == "nearest"
        assert choice.distances == {"hidden": 1.0, "num_tokens": 0.0}


@pytest.fixture(scope="module")
def shuffled_pickers(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Picker, Picker]]:
    """Two dbs with the same keys written in opposite orders (other row ids)."""
    root = tmp_path_factory.mktemp("orders")
    keys = STORED["by_nearest"]
    pickers = []
    for name, ordered in (("forward", keys), ("backward", keys[::-1])):
        path = make_db(
            root / f"{name}.db",
            [
                P("by_nearest", H100, k, {"key": json.dumps(k, sort_keys=True)})
                for k in ordered
            ],
            kernels={"by_nearest": POLICY_KERNELS["by_nearest"]},
        )
        pickers.append(build(deployment=path))
    yield pickers[0], pickers[1]
    for p in pickers:
        p.close()


@examples
@given(dtype=query_dtypes, size=sizes, tokens=sizes)
def test_ties_are_deterministic_whatever_the_insertion_order(
    shuffled_pickers: tuple[Picker, Picker], dtype: str, size: int, tokens: int
) -> None:
    forward, backward = shuffled_pickers
    a = resolve(forward, "by_nearest", (dtype, size, tokens))
    b = resolve(backward, "by_nearest", (dtype, size, tokens))
    assert (a and a.preset.shape_key) == (b and b.preset.shape_key)
    assert (a and a.config) == (b and b.config)
    # and asking again (memo hit) gives the very same answer
    assert resolve(forward, "by_nearest", (dtype, size, tokens)) is a


def test_default_entry_serves_what_no_key_fits(
    make_picker: Any, tmp_path: Path
) -> None:
    path = make_db(
        tmp_path / "d.db",
        [
            P("rms_norm", H100, rms_key(), {"tuned": 1}),
            P("rms_norm", H100, {}, {"default": 1}),
        ],
    )
    picker = make_picker(deployment=path)
    tuned = picker.resolve("rms_norm", RMS_SPEC, ("bfloat16", 5000, 100))
    fallback = picker.resolve("rms_norm", RMS_SPEC, ("float32", 4096, 128))
    assert tuned is not None and tuned.config == {"tuned": 1}
    assert fallback is not None
    assert (fallback.match, fallback.kind, fallback.config, fallback.distances) == (
        "default",
        "default",
        {"default": 1},
        {},
    )
    assert "by default" in fallback.describe()


# ---------------------------------------------------------------------------- concurrency


def test_eight_threads_get_identical_answers(
    make_picker: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = random.Random(7)
    presets = [
        P(
            "rms_norm",
            platform,
            rms_key(dtype, hidden, tokens),
            {"p": platform, "h": hidden, "t": tokens},
        )
        for platform in (H100, H200)
        for dtype in ("bfloat16", "float16")
        for hidden in (1024, 2048, 4096, 8192)
        for tokens in (1, 16, 256, 4096)
        if rng.random() < 0.7
        and (platform, dtype) != (H200, "float16")  # float16: H100's
    ]
    overlay = tmp_path / "overlay.db"
    deployment = make_db(tmp_path / "dep.db", presets)
    queries = [
        (
            rng.choice(("bfloat16", "float16", "float32")),
            rng.randint(1, 20000),
            rng.randint(1, 9000),
        )
        for _ in range(300)
    ]
    baseline_picker = make_picker(overlay=overlay, deployment=deployment, platform=H200)
    baseline = [
        _answer(baseline_picker.resolve("rms_norm", RMS_SPEC, q)) for q in queries
    ]
    assert any(a is None for a in baseline) and any(
        a and a[3] for a in baseline
    )  # misses, fallbacks

    # A tiny recheck interval and a thread invalidating all the time: answers must not change.
    monkeypatch.setattr(picker_module, "RECHECK_SECONDS", 0.001)
    picker = make_picker(overlay=overlay, deployment=deployment, platform=H200)
    errors: list[BaseException] = []
    answers: dict[int, list[list[Any]]] = {}
    start = threading.Barrier(9)
    stop = threading.Event()

    def worker(n: int) -> None:
        try:
            start.wait()
            mine = random.Random(n)
            runs = []
            for _ in range(3):
                # Each run starts after at least one more invalidation: with the GIL a
                # thread can otherwise finish every run before the invalidator is scheduled.
                seen, deadline = invalidations[0], time.monotonic() + 5
                while invalidations[0] == seen and time.monotonic() < deadline:
                    time.sleep(0.0005)
                order = list(range(len(queries)))
                mine.shuffle(order)
                got: list[Any] = [None] * len(queries)
                for i in order:
                    got[i] = _answer(picker.resolve("rms_norm", RMS_SPEC, queries[i]))
                runs.append(got)
            answers[n] = runs
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    invalidations = [0]

    def invalidator() -> None:
        start.wait()
        while not stop.is_set():
            picker.invalidate()
            invalidations[0] += 1
            time.sleep(0.0005)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    chaos = threading.Thread(target=invalidator)
    for t in [*threads, chaos]:
        t.start()
    for t in threads:
        t.join(timeout=60)
    stop.set()
    chaos.join(timeout=10)
    assert not errors, errors
    assert sorted(answers) == list(range(8))
    for n, runs in answers.items():
        for run in runs:
            assert run == baseline, f"thread {n} got different answers"
    assert picker.loads > 1  # the invalidations really forced reloads under the threads


def _answer(choice: Choice | None) -> tuple[Any, ...] | None:
    if choice is None:
        return None
    return (
        choice.preset.shape_key,
        choice.platform,
        choice.layer,
        choice.fallback,
        choice.match,
        choice.preset.config_json,
    )


# ---------------------------------------------------------------------------- miss ledger


class StatementCounter:
    """Counts SQL statements sent through every engine of the process (the ledger opens
    its writer lazily, on its own thread) and the threads sending them."""

    def __init__(self, engines: list[Any] | None = None) -> None:
        from sqlalchemy.engine import Engine

        self.statements: list[tuple[str, int]] = []
        self._engines = [Engine]
        event.listen(Engine, "before_cursor_execute", self._count)

    def _count(self, conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        self.statements.append((statement, threading.get_ident()))

    def __len__(self) -> int:
        return len(self.statements)

    def remove(self) -> None:
        for engine in self._engines:
            event.remove(engine, "before_cursor_execute", self._count)


def engines_of(picker: Picker) -> list[Any]:
    return [layer.store.engine for layer in picker.layers]


def ledger(path: Path) -> list[Any]:
    return read_repository(path, Repository.misses)


def test_misses_are_counted_in_memory_and_flushed_to_the_overlay(
    make_picker: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ledger_module, "FLUSH_SECONDS", 3600)  # flush by hand here
    overlay = tmp_path / "overlay.db"
    picker = make_picker(overlay=overlay, deployment=make_db(tmp_path / "dep.db", []))
    sql = StatementCounter(engines_of(picker))
    a = rms_key("float32", 4096, 7)
    for _ in range(3):
        picker.record_miss("rms_norm", a)
    picker.record_miss("rms_norm", rms_key("float32", 512, 7), reason="quarantined")
    assert len(sql) == 0, f"record_miss ran SQL on the hot path: {sql.statements}"
    pending = {(m.features, m.count, m.reason) for m in picker.pending_misses()}
    assert pending == {
        ('{"dtype":"float32","hidden":4096,"num_tokens":7}', 3, "no-match"),
        ('{"dtype":"float32","hidden":512,"num_tokens":7}', 1, "quarantined"),
    }

    assert picker.flush_misses() == 2
    assert picker.pending_misses() == []
    rows = {m.features: m for m in ledger(overlay)}
    first = rows['{"dtype":"float32","hidden":4096,"num_tokens":7}']
    assert (first.kernel, first.platform, first.count, first.reason) == (
        "rms_norm",
        H100,
        3,
        "no-match",
    )
    assert first.first_seen_at <= first.last_seen_at

    time.sleep(0.002)
    picker.record_miss("rms_norm", a)
    picker.record_miss("rms_norm", a)
    assert picker.flush_misses() == 1
    again = {m.features: m for m in ledger(overlay)}[
        '{"dtype":"float32","hidden":4096,"num_tokens":7}'
    ]
    assert again.count == 5, "a second flush adds to the stored count"
    assert again.first_seen_at == first.first_seen_at
    assert again.last_seen_at > first.last_seen_at
    assert picker.flush_misses() == 0  # nothing pending: no write
    sql.remove()


def test_miss_flush_runs_on_a_timer_thread_not_the_caller(
    make_picker: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ledger_module, "FLUSH_SECONDS", 0.05)
    overlay = tmp_path / "overlay.db"
    picker = make_picker(overlay=overlay)
    sql = StatementCounter(engines_of(picker))
    picker.record_miss("softmax", {"n": 3})
    assert len(sql) == 0
    deadline = time.monotonic() + 10
    while not ledger(overlay) and time.monotonic() < deadline:
        time.sleep(0.02)
    rows = ledger(overlay)
    assert [(m.kernel, m.features, m.count) for m in rows] == [
        ("softmax", '{"n":3}', 1)
    ]
    # the test's own reads (ledger()) run here; every write ran on the ledger's thread
    writers = {ident for stmt, ident in sql.statements if stmt.lstrip().upper().startswith(("INSERT", "UPDATE"))}
    assert writers and threading.get_ident() not in writers
    sql.remove()


# ---------------------------------------------------------------------------- quarantine


def test_quarantine_skips_the_config_at_once_and_in_a_new_picker(
    make_picker: Any, tmp_path: Path
) -> None:
    deployment = make_db(
        tmp_path / "dep.db",
        [
            P("rms_norm", H100, rms_key(hidden=4096), {"bad": 1}),
            P("rms_norm", H100, rms_key(hidden=8192), {"good": 1}),
        ],
    )
    overlay = tmp_path / "overlay.db"
    picker = make_picker(overlay=overlay, deployment=deployment)
    features = ("bfloat16", 4096, 128)
    bad = picker.resolve("rms_norm", RMS_SPEC, features)
    assert bad is not None and bad.config == {"bad": 1} and bad.match == "exact"

    picker.quarantine(bad, "compile failed: out of shared memory")
    now = picker.resolve("rms_norm", RMS_SPEC, features)
    assert now is not None and now.config == {"good": 1} and now.match == "nearest"
    picker.flush_misses()  # the ledger's thread writes the quarantine into the overlay

    # Another process (a new picker on the same files) skips it from the start.
    fresh = make_picker(overlay=overlay, deployment=deployment)
    later = fresh.resolve("rms_norm", RMS_SPEC, features)
    assert later is not None and later.config == {"good": 1}
    assert later.preset.config_sha256 != bad.preset.config_sha256

    store = migrate.open_store(overlay, "ro")
    with store.read() as session:
        repo = Repository(session)
        rows = repo.history("rms_norm", H100, bad.preset.shape_key)
        kernel = repo.get_kernel("rms_norm")
    store.dispose()
    assert [(r.status, r.config, r.status_reason) for r in rows] == [
        ("quarantined", {"bad": 1}, "compile failed: out of shared memory")
    ]
    # The overlay learnt the kernel's real key spec, so a later autotune result fits it.
    assert [(f["name"], f["policy"]) for f in kernel.key_schema["fields"]] == list(
        zip(RMS_SPEC.names, ("exact", "nearest", "ceil"), strict=True)
    )
    fresh.store_result(
        "rms_norm",
        RMS_SPEC,
        rms_key(hidden=4096),
        {"retuned": 1},
        {"tuned_by": "t"},
        {"latency_ms": 0.1},
    )
    assert fresh.resolve("rms_norm", RMS_SPEC, features).config == {"retuned": 1}  # type: ignore[union-attr]


def test_store_result_is_served_from_the_overlay(
    make_picker: Any, tmp_path: Path
) -> None:
    deployment = make_db(
        tmp_path / "dep.db", [P("rms_norm", H100, rms_key(hidden=1024), {"shipped": 1})]
    )
    picker = make_picker(overlay=tmp_path / "overlay.db", deployment=deployment)
    features = ("bfloat16", 4096, 128)
    assert picker.resolve("rms_norm", RMS_SPEC, features).layer == "deployment"  # type: ignore[union-attr]
    picker.store_result(
        "rms_norm",
        RMS_SPEC,
        rms_key(hidden=4096),
        {"local": 1},
        {"tuned_by": "me", "autotune_effort": "quick"},
        {"latency_ms": 0.02, "configs_tried": 30},
    )
    choice = picker.resolve("rms_norm", RMS_SPEC, features)
    assert choice is not None
    assert (choice.layer, choice.match, choice.config, choice.preset.source) == (
        "overlay",
        "exact",
        {"local": 1},
        "autotune",
    )
    assert choice.preset.configs_tried == 30


# ---------------------------------------------------------------------------- CLI

runner = CliRunner()


@pytest.fixture
def cli_db(tmp_path: Path) -> Path:
    return make_db(
        tmp_path / "presets.db",
        [
            P(
                "rms_norm",
                H100,
                rms_key(hidden=4096, num_tokens=64),
                {"block_sizes": [1], "num_warps": 4},
                {
                    "latency_ms": 0.01,
                    "default_ms": 0.05,
                    "reference_ms": 0.02,
                    "configs_tried": 412,
                    "tuning_seconds": 88.5,
                },
            ),
            P(
                "rms_norm",
                H100,
                rms_key(hidden=8192, num_tokens=256),
                {"block_sizes": [2]},
            ),
            P("rms_norm", H200, {}, {"block_sizes": [3]}),
        ],
        provenance={
            "tuned_by": "kernels-team",
            "device_name": "NVIDIA H100 80GB HBM3",
            "helion_version": "1.5.0",
        },
    )


def pick(*args: str) -> Any:
    return runner.invoke(app, ["pick", *args])


def test_pick_explains_the_choice(cli_db: Path) -> None:
    shape = '{"dtype":"bfloat16","hidden":4000,"num_tokens":37}'
    result = pick(
        "--kernel",
        "rms_norm",
        "--platform",
        H100,
        "--shape",
        shape,
        "--db",
        str(cli_db),
    )
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert (
        'chosen:     preset 1, key {"dtype":"bfloat16","hidden":4096,"num_tokens":64}, platform nvidia_h100'
        in out
    )
    assert "match:      nearest (kind nearest)" in out
    assert "hidden 0.0342 (nearest: stored 4096 for 4000)" in out
    assert "num_tokens 0.791 (ceil: stored 64 for 37)" in out
    assert "fallbacks:  none" in out
    assert f"layer:      deployment ({cli_db})" in out
    assert 'config:     {"block_sizes":[1],"num_warps":4}' in out
    assert "latency 0.0100 ms (5.00x faster than Helion's default)" in out
    assert "configs tried 412" in out and "tuning 88.5 s" in out
    assert "tuned_by kernels-team" in out and "helion_version 1.5.0" in out
    assert "from deployment db" in out  # Choice.describe()


def test_pick_names_the_fallback_platform_and_clamps(cli_db: Path) -> None:
    shape = '{"dtype":"bfloat16","hidden":4096,"num_tokens":100000}'
    result = pick("-k", "rms_norm", "-p", H200, "-s", shape, "--db", str(cli_db))
    assert result.exit_code == 0, result.output
    assert "match:      ceil (kind fallback-platform)" in result.stdout
    assert "platform nvidia_h100 served nvidia_h200" in result.stdout
    assert (
        "num_tokens clamped to the largest tuned value 64 (ceil, actual 100000)"
        in result.stdout
    )
    assert "chain nvidia_h200 > nvidia_h100" in result.stdout


def test_pick_default_entry_and_no_match(cli_db: Path) -> None:
    # float32 fits no stored key: H200 answers with its own default entry ({})
    result = pick(
        "-k",
        "rms_norm",
        "-p",
        H200,
        "-s",
        '{"dtype":"float32","hidden":1,"num_tokens":1}',
        "--db",
        str(cli_db),
    )
    assert result.exit_code == 0, result.output
    assert "match:      default (kind default)" in result.stdout
    assert "default entry {}" in result.stdout

    result = pick(
        "-k",
        "rms_norm",
        "-p",
        "nvidia_b200",
        "-s",
        '{"dtype":"bfloat16","hidden":4000,"num_tokens":37}',
        "--db",
        str(cli_db),
    )
    assert result.exit_code == 1
    assert "no match" in result.stderr
    assert "rms_norm has no presets on these platforms" in result.stderr

    # H100 has no default entry of its own, but its fallback H200 does: that answers.
    result = pick(
        "-k",
        "rms_norm",
        "-p",
        H100,
        "-s",
        '{"dtype":"float32","hidden":4096,"num_tokens":64}',
        "--db",
        str(cli_db),
    )
    assert result.exit_code == 0 and "kind fallback-platform" in result.stdout


def test_pick_no_match_lists_the_nearest_keys(tmp_path: Path) -> None:
    path = make_db(
        tmp_path / "x.db",
        [P("rms_norm", H100, rms_key(hidden=h), {"h": h}) for h in (1024, 2048, 8192)],
    )
    result = pick(
        "-k",
        "rms_norm",
        "-p",
        H100,
        "-s",
        '{"dtype":"float16","hidden":2000,"num_tokens":128}',
        "--db",
        str(path),
    )
    assert result.exit_code == 1
    assert "nearest stored keys: nvidia_h100:" in result.stderr
    assert (
        '"hidden":2048' in result.stderr.split("nearest stored keys:")[1].split(";")[0]
    )


def test_pick_missing_field_names_the_expected_fields(cli_db: Path) -> None:
    result = pick(
        "-k",
        "rms_norm",
        "-p",
        H100,
        "-s",
        '{"dtype":"bfloat16","hidden":4096}',
        "--db",
        str(cli_db),
    )
    assert result.exit_code == 2
    text = " ".join(result.output.replace("│", " ").split())
    assert "missing field(s) num_tokens" in text
    assert "dtype (exact), hidden (nearest), num_tokens (ceil)" in text
    result = pick("-k", "rms_norm", "-p", H100, "-s", "[1, 2]", "--db", str(cli_db))
    assert result.exit_code == 2 and "JSON object" in result.output


def test_pick_unknown_kernel_or_platform_lists_known_ones(cli_db: Path) -> None:
    shape = '{"dtype":"bfloat16","hidden":4096,"num_tokens":1}'
    result = pick("-k", "rms_nrom", "-p", H100, "-s", shape, "--db", str(cli_db))
    assert result.exit_code == 1
    assert "unknown kernel 'rms_nrom'; known kernels: rms_norm" in str(result.exception)
    result = pick(
        "-k", "rms_norm", "-p", "nvidia_h1000", "-s", shape, "--db", str(cli_db)
    )
    assert result.exit_code == 1
    message = str(result.exception)
    assert (
        "unknown platform 'nvidia_h1000'" in message
        and "nvidia_h100, nvidia_h200" in message
    )


def test_pick_without_db_uses_the_run_time_layers(
    cli_db: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    overlay = tmp_path / "user-overlay.db"  # PRESETDB_USER_DB (conftest)
    make_db(
        overlay,
        [P("rms_norm", H100, rms_key(hidden=4096, num_tokens=64), {"mine": 1})],
        shipped=False,
    )
    monkeypatch.setenv("PRESETDB_PATH", str(cli_db))
    monkeypatch.setenv("PRESETDB_PLATFORM", "nvidia_a100")  # --platform wins over it
    shape = '{"dtype":"bfloat16","hidden":4096,"num_tokens":64}'
    result = pick("-k", "rms_norm", "-p", H100, "-s", shape)
    assert result.exit_code == 0, result.output
    assert f"layer:      overlay ({overlay})" in result.stdout
    assert 'config:     {"mine":1}' in result.stdout
    result = pick(
        "-k",
        "rms_norm",
        "-p",
        H100,
        "-s",
        '{"dtype":"bfloat16","hidden":8192,"num_tokens":200}',
    )
    assert result.exit_code == 0, result.output
    assert f"layer:      deployment ({cli_db})" in result.stdout


def test_pick_does_not_create_a_user_overlay(
    cli_db: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PRESETDB_PATH", str(cli_db))
    result = pick(
        "-k",
        "rms_norm",
        "-p",
        H100,
        "-s",
        '{"dtype":"bfloat16","hidden":4096,"num_tokens":64}',
    )
    assert result.exit_code == 0, result.output
    assert f"layer:      deployment ({cli_db})" in result.stdout
    assert not (tmp_path / "user-overlay.db").exists()


def test_pick_does_not_import_torch(cli_db: Path) -> None:
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from presetdb.cli import app\n"
        "r = CliRunner().invoke(app, ['pick', '-k', 'rms_norm', '-p', 'nvidia_h100', '-s',\n"
        '    \'{"dtype":"bfloat16","hidden":4096,"num_tokens":64}\', \'--db\', sys.argv[1]])\n'
        "assert r.exit_code == 0, r.output\n"
        "assert 'torch' not in sys.modules, 'pick imported torch'\n"
        "print('ok')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(cli_db)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


def test_platform_command_detected_alias(
    monkeypatch: pytest.MonkeyPatch, cli_db: Path
) -> None:
    from presetdb.runtime import platforms

    monkeypatch.setattr(platforms, "detect_device", lambda: H100_DEVICE)
    result = runner.invoke(app, ["platform"])
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "platform:            nvidia_h100" in out
    assert (
        "resolved by:         the device string 'NVIDIA H100 80GB HBM3' is an alias in the db"
        in out
    )
    assert "device:              NVIDIA H100 80GB HBM3 (vendor nvidia)" in out
    assert "compute capability:  9.0 (device)" in out
    assert "fallback chain:      nvidia_h100 > nvidia_h200" in out
    assert "1. nvidia_h200 (ranked fallback 1)" in out


def test_platform_command_override_and_derived(
    monkeypatch: pytest.MonkeyPatch, cli_db: Path
) -> None:
    from presetdb.runtime import platforms

    monkeypatch.setattr(platforms, "detect_device", lambda: CPU)
    monkeypatch.setenv("PRESETDB_PLATFORM", H200)
    result = runner.invoke(app, ["platform", "--db", str(cli_db)])
    assert result.exit_code == 0, result.output
    assert (
        "resolved by:         PRESETDB_PLATFORM=nvidia_h200 (override)" in result.stdout
    )
    assert "9.0 (stored for nvidia_h200)" in result.stdout
    assert "fallback chain:      nvidia_h200 > nvidia_h100" in result.stdout

    monkeypatch.delenv("PRESETDB_PLATFORM")
    monkeypatch.setattr(
        platforms,
        "detect_device",
        lambda: platforms.DeviceInfo("NVIDIA H20", "nvidia", "9.0", 78),
    )
    result = runner.invoke(app, ["platform", "--db", str(cli_db)])
    assert result.exit_code == 0, result.output
    assert "platform:            nvidia_h20" in result.stdout
    assert "derived from the device string 'NVIDIA H20'" in result.stdout
    assert (
        "fallback chain:      nvidia_h20 > nvidia_h100 > nvidia_h200" in result.stdout
    )
    assert "1. nvidia_h100 (same compute capability)" in result.stdout


def test_platform_command_does_not_create_the_overlay(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from presetdb.runtime import platforms

    monkeypatch.setattr(platforms, "detect_device", lambda: CPU)
    result = runner.invoke(app, ["platform"])
    assert result.exit_code == 0, result.output
    assert "platform:            cpu" in result.stdout
    assert not (tmp_path / "user-overlay.db").exists()


@pytest.mark.parametrize("command", ["pick", "platform"])
def test_help_has_an_example(command: str) -> None:
    result = runner.invoke(app, [command, "--help"])
    assert result.exit_code == 0
    lines = [line.replace("│", " ").strip() for line in result.output.splitlines()]
    assert any(
        line.startswith("Example:") and f"presetdb {command}" in line for line in lines
    ), result.output
