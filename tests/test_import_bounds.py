"""Bounded work on hostile input, journal modes, the overlay/deployment rule, tune
without a GPU and empty results files (issue 20 items 5, 6, 7, 9).

Imports run the real parser, the real Helion validation (CPU) and a real SQLite file;
every refused file leaves the db byte-identical.
"""

from __future__ import annotations

import dataclasses
import json
import resource
import shutil
import subprocess
import time
import warnings
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from import_fixtures import RESULTS, edited, registry
from reliability_helpers import child_env, presetdb_cli, sha256

from presetdb.audit.readonly import QueryLimits, run_sql
from presetdb.errors import ImportValidationError, QueryLimitError, SettingsError, StoreWarning
from presetdb.helion.args import MAX_VALIDATION_BYTES, empty_like_on, validation_kind
from presetdb.offline.build import build_database
from presetdb.offline.importers import import_files
from presetdb.runtime.layers import open_layers
from presetdb.settings import Settings
from presetdb.store import migrate
from presetdb.store.engine import journal_mode


@pytest.fixture
def resolver() -> Any:
    return registry()


def _entry(doc: dict[str, Any], i: int = 1) -> dict[str, Any]:
    return doc["entries"][i]


# (name, edit of the parsed file, the field the problem must name)
HOSTILE: list[tuple[str, Any, str]] = [
    ("seed-beyond-int64", lambda d: d["run"].update(seed=10**30), "run.seed"),
    ("sm-count-negative-huge", lambda d: d["run"].update(sm_count=-(10**25)), "run.sm_count"),
    ("configs-tried-beyond-int64", lambda d: _entry(d).update(configs_tried=10**30), "configs_tried"),
    ("date-out-of-range", lambda d: d["run"].update(finished_at="2026-13-45T99:99:99Z"), "run.finished_at"),
    ("huge-tuned-by", lambda d: d["run"].update(tuned_by="x" * 5_000_000), "run.tuned_by"),
    ("block-size-2-62", lambda d: _entry(d)["config"].update(block_sizes=[2**62]), "config"),
    ("short-indexing", lambda d: _entry(d)["config"].update(indexing=["pointer"]), "config.indexing"),
    ("fractional-size", lambda d: _entry(d)["key"].update(hidden=4096.5), "key"),
    ("size-beyond-2-53", lambda d: _entry(d)["key"].update(hidden=2**60), "key"),
    ("unknown-dtype", lambda d: _entry(d)["key"].update(dtype="float33"), "key"),
    ("huge-dtype-string", lambda d: _entry(d)["key"].update(dtype="b" * 5_000_000), "key"),
]


@pytest.mark.parametrize(("name", "edit", "field"), HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_values_are_refused_naming_file_row_and_field(
    fresh_db: Path, resolver: Any, tmp_path: Path, name: str, edit: Any, field: str
) -> None:
    bad = edited(RESULTS, tmp_path / f"{name}.json", edit)
    before = sha256(fresh_db)
    started = time.monotonic()
    with pytest.raises(ImportValidationError) as info:
        import_files(fresh_db, [bad], resolver=resolver)
    problems = info.value.problems
    assert any(p.startswith(f"{bad.name}:") and f" {field}" in p for p in problems), problems
    assert all(len(p) < 1_000 for p in problems), [len(p) for p in problems]  # values capped
    assert len(str(info.value)) < 60_000
    assert sha256(fresh_db) == before
    assert time.monotonic() - started < 120  # bounded: a cap, not a timing target


def test_a_huge_key_validates_without_allocating_it(tmp_path: Path) -> None:
    """hidden = num_tokens = 32768 asked for 4 GiB of float32 (6.9 GB peak) before;
    validation now binds meta tensors. Peak RSS of the importing child process."""
    db = tmp_path / "big.db"
    migrate.upgrade(db, seed_data=False)

    def huge(d: dict[str, Any]) -> None:
        d["entries"] = [d["entries"][1]]
        d["entries"][0]["key"] = {"dtype": "float32", "hidden": 65536, "num_tokens": 65536}

    big = edited(RESULTS, tmp_path / "huge.json", huge)
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    proc = subprocess.run(
        presetdb_cli("import", big, "--db", db, "--dry-run"), env=child_env(), capture_output=True, text=True,
        timeout=600, check=False,
    )
    peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 added" in proc.stdout, proc.stdout
    # 65536 x 65536 float32 is 16 GiB; the process (torch + Helion + Triton) stays far below.
    assert peak_mib < 2_048 or before / 1024 >= 2_048, f"peak RSS {peak_mib:.0f} MiB"


@pytest.mark.parametrize(
    ("nbytes", "device", "free", "kind"),
    [
        (1 << 20, "cpu", 0, "meta"),  # CPU-only machine: shapes are enough, always meta
        (MAX_VALIDATION_BYTES, "cuda", 0, "example"),  # small: the real example inputs
        (MAX_VALIDATION_BYTES + 1, "cuda", 4 * (MAX_VALIDATION_BYTES + 1), "empty"),  # fits a quarter of free memory
        (MAX_VALIDATION_BYTES + 1, "cuda", 4 * MAX_VALIDATION_BYTES, "meta"),  # does not: a hostile key stays free
    ],
)
def test_what_a_config_is_validated_on(nbytes: int, device: str, free: int, kind: str) -> None:
    assert validation_kind(nbytes, device, lambda: free) == kind


def test_uninitialised_inputs_bind_like_the_example_inputs() -> None:
    """The GPU's path for large keys (meta inputs failed to lower softmax's amax with torch
    2.11): uninitialised tensors of the example's shapes, strides and dtypes bind to the
    same ConfigSpec as the real example inputs."""
    import presetdb.kernels  # noqa: F401  (registers the kernels)
    from presetdb.helion.registry import get_kernel

    rk = get_kernel("softmax")
    key = {"dtype": "bfloat16", "n": 384, "num_rows": 6}
    example = tuple(rk.adapt_args(tuple(rk.example_inputs(key, "cpu")))[0])
    empty = empty_like_on(tuple(rk.example_inputs(key, "meta")), "cpu")
    assert [(e.shape, e.stride(), e.dtype, e.device.type) for e in empty] == [
        (x.shape, x.stride(), x.dtype, x.device.type) for x in example
    ]
    bound_empty = rk.shape_kernel.bind(tuple(rk.adapt_args(empty)[0]))
    bound_example = rk.shape_kernel.bind(example)
    assert bound_empty.config_spec.default_config() == bound_example.config_spec.default_config()


KEY_VALUES = st.one_of(
    st.integers(-(2**70), 2**70), st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=40),
    st.booleans(), st.none(), st.lists(st.integers(), max_size=3),
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    field=st.sampled_from(["hidden", "num_tokens", "dtype"]),
    value=KEY_VALUES,
    config_field=st.sampled_from(["block_sizes", "num_warps", "indexing", "reduction_loops"]),
    config_value=st.one_of(st.just([2**62]), st.lists(st.integers(-(2**64), 2**64), max_size=2), st.text(max_size=5)),
)
def test_fuzzed_rows_are_refused_or_stored_servably(
    fresh_db: Path, resolver: Any, tmp_path: Path, field: str, value: Any, config_field: str, config_value: Any
) -> None:
    """Whatever goes in a key or a config field: refused naming the row (db unchanged),
    or imported as something a call can be served from (db check passes)."""

    def edit(d: dict[str, Any]) -> None:
        d["entries"] = d["entries"][:2]
        d["entries"][1]["key"][field] = value
        d["entries"][1]["config"][config_field] = config_value

    path = tmp_path / "fuzz.json"
    path.write_text(json.dumps(_edited(edit)))
    db = tmp_path / "fuzz.db"
    shutil.copy(fresh_db, db)
    before = sha256(db)
    try:
        import_files(db, [path], resolver=resolver)
    except ImportValidationError as exc:
        assert any("row 2 (entries[1])" in p for p in exc.problems), exc.problems
        assert sha256(db) == before
        return
    report = migrate.check(db)
    assert report.ok, report.data_problems


def _edited(edit: Any) -> dict[str, Any]:
    doc = json.loads(RESULTS.read_text())
    edit(doc)
    return doc


def test_empty_results_are_refused(fresh_db: Path, resolver: Any, tmp_path: Path) -> None:
    empty = edited(RESULTS, tmp_path / "empty.json", lambda d: d.update(entries=[]))
    with pytest.raises(ImportValidationError, match="no entries"):
        import_files(fresh_db, [empty], resolver=resolver)
    from presetdb.offline.new_migration import new_migration

    with pytest.raises(ImportValidationError, match="no entries"):
        new_migration([empty], "empty", data_dir=tmp_path / "presetdb-data", resolver=resolver)
    assert not (tmp_path / "presetdb-data" / "versions").exists()


# ------------------------------------------------------------------ sql limits


def test_sql_limits(tmp_path: Path) -> None:
    db = tmp_path / "q.db"
    migrate.upgrade(db, seed_data=False)
    forever = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c"
    with pytest.raises(QueryLimitError, match=r"past 0.5 s.*--timeout"):
        run_sql(db, forever, limits=QueryLimits(seconds=0.5))
    many = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c LIMIT 5000) SELECT x FROM c"
    with pytest.raises(QueryLimitError, match=r"more than 1,000 rows.*--max-rows"):
        run_sql(db, many, limits=QueryLimits(max_rows=1_000))
    wide = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c LIMIT 50) SELECT zeroblob(1000000) FROM c"
    with pytest.raises(QueryLimitError, match="MiB"):
        run_sql(db, wide, limits=QueryLimits(max_bytes=8 << 20))
    assert run_sql(db, many, limits=QueryLimits()).rows[-1] == (5000,)
    proc = subprocess.run(
        presetdb_cli("sql", forever, "--db", db), env=child_env(PRESETDB_SQL_TIMEOUT="0.5"),
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert proc.returncode == 1 and proc.stderr.startswith("error: the query ran past 0.5 s"), proc.stderr


# ------------------------------------------------------------------ journal mode, overlay


def test_journal_mode_is_kept(tmp_path: Path, resolver: Any) -> None:
    shipped = tmp_path / "shipped.db"
    build_database(shipped)
    assert journal_mode(shipped) == "delete"
    bad = edited(RESULTS, tmp_path / "bad.json", lambda d: _entry(d).update(latency_ms=-1))
    with pytest.raises(ImportValidationError):
        import_files(shipped, [bad], resolver=resolver)
    assert journal_mode(shipped) == "delete"  # a refused import does not convert it
    migrate.upgrade(shipped)  # a no-op upgrade
    assert journal_mode(shipped) == "delete"
    import_files(shipped, [RESULTS], resolver=resolver)  # a real write keeps it too
    assert journal_mode(shipped) == "delete"
    assert not Path(f"{shipped}-wal").exists()
    fresh = tmp_path / "fresh.db"
    migrate.upgrade(fresh, seed_data=False)
    assert journal_mode(fresh) == "wal"  # files presetdb makes are WAL
    subprocess.run(presetdb_cli("db", "upgrade", "--db", shipped, "--wal"), env=child_env(), check=True, timeout=300)
    assert journal_mode(shipped) == "wal"


def test_overlay_and_deployment_cannot_be_one_file(tmp_path: Path) -> None:
    db = tmp_path / "deploy.db"
    build_database(db)
    before = sha256(db)
    same = dataclasses.replace(Settings.from_env(), db_path=db, user_db_path=tmp_path / "." / "deploy.db")
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        layers, writer = open_layers(same)
    try:
        assert writer is None and "overlay" not in [layer.name for layer in layers]
        assert any(issubclass(w.category, StoreWarning) and "same file" in str(w.message) for w in record)
    finally:
        for layer in layers:
            layer.store.dispose()
    with pytest.raises(SettingsError, match="same file"):
        open_layers(dataclasses.replace(same, on_miss="strict"))
    assert sha256(db) == before
    proc = subprocess.run(
        presetdb_cli("import", RESULTS, "--db", db), env=child_env(), capture_output=True, text=True,
        timeout=300, check=False,
    )
    assert "swap it in with an atomic rename" in " ".join(proc.stderr.split()), proc.stderr


# ------------------------------------------------------------------ tune without a GPU


def test_tune_without_a_gpu_says_what_to_do(tmp_path: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    out = tmp_path / "t.json"
    env = child_env(TRITON_INTERPRET=None)
    args = ("tune", "rms_norm", "--grid", "dtype=float32;hidden=64;num_tokens=1", "--out", out)
    proc = subprocess.run(presetdb_cli(*args), env=env, capture_output=True, text=True, timeout=300, check=False)
    flat = " ".join(proc.stderr.split())
    assert proc.returncode == 1 and "no CUDA GPU" in flat and "--device cpu" in flat, proc.stderr
    assert not out.exists()
    proc = subprocess.run(
        presetdb_cli(*args, "--device", "cpu"), env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert proc.returncode == 1 and "TRITON_INTERPRET=1" in proc.stderr, proc.stderr
    assert not out.exists()


# ------------------------------------------------------------------ round trips


def test_export_then_reimport_changes_nothing(tmp_path: Path, resolver: Any) -> None:
    """Every active preset of a built db, exported as presetdb-results and as vLLM files,
    re-imported into the same db: all unchanged (`"maxnreg": null` and configs this
    machine's ConfigSpec would respell included); provenanced rows are never replaced."""
    from import_fixtures import table_dump

    from presetdb.offline.export import export

    db = tmp_path / "built.db"
    build_database(db)
    pairs = [tuple(r) for r in run_sql(db, "SELECT kernel, platform FROM v_coverage WHERE active_presets > 0").rows]
    files: dict[str, list[Path]] = {"presetdb": [], "vllm": []}
    for kernel, platform in pairs:
        for fmt in files:
            files[fmt] += export(db, kernel, platform, fmt, tmp_path / fmt)  # type: ignore[arg-type]
    before = table_dump(db)
    for fmt, paths in files.items():
        report = import_files(db, paths, resolver=resolver)
        assert report.counts["unchanged"] > 100 and report.counts["added"] == 0, (fmt, report.summary())
        assert report.counts["superseded"] == 0, (fmt, [r for r in report.rows if r.outcome != "unchanged"][:5])
    assert table_dump(db) == before


def test_a_helion_cache_entry_must_fit_the_key_given(fresh_db: Path, resolver: Any, tmp_path: Path) -> None:
    """The sample entry was tuned for tensors of sizes (2+, 2+): --key num_tokens=1 (a
    size-1 dimension, another specialization) is refused; the key it fits is imported."""
    from import_fixtures import CACHE_KEY, current_best_config

    entry = current_best_config(tmp_path)
    before = sha256(fresh_db)
    with pytest.raises(ImportValidationError) as info:
        import_files(fresh_db, [entry], key={**CACHE_KEY, "num_tokens": 1}, resolver=resolver)
    assert any("specialization key" in p and " key: " in p for p in info.value.problems), info.value.problems
    assert sha256(fresh_db) == before
    wrong_dtype = {**CACHE_KEY, "dtype": "float32"}
    with pytest.raises(ImportValidationError, match="specialization key"):
        import_files(fresh_db, [entry], key=wrong_dtype, resolver=resolver)
    report = import_files(fresh_db, [entry], key=CACHE_KEY, resolver=resolver)
    assert report.counts["added"] == 1
