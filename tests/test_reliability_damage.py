"""Damaged rows and pages of a real built db (issue 20, items 1 and 2).

- A stored row SQL accepts but presetdb cannot serve (a shape key of the wrong JSON
  shape, a config that is not an object, ...) is skipped and reported by the picker;
  every other key keeps being served, `pick` prints no traceback, `db check` names it.
- A corrupt page in any table the picker reads (platforms, aliases, fallbacks, kernels,
  presets, tuning runs, configs) makes that layer give way to the next with a warning
  naming the file; strict mode raises a presetdb error naming it.
- A Hypothesis property test damages random stored values and random pages, then makes
  real kernel calls (TRITON_INTERPRET=1 on CPU): each returns the right result, with at
  most warnings.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import shutil
import sqlite3
import subprocess
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reliability_helpers import child_env, presetdb_cli

from presetdb.errors import PresetDBError, StoreWarning
from presetdb.keys import KeySpec
from presetdb.offline.build import build_database
from presetdb.runtime.picker import build_picker, get_picker, reset_picker
from presetdb.runtime.platforms import DeviceInfo
from presetdb.settings import Settings
from presetdb.store import migrate

KERNEL, PLATFORM = "rms_norm", "nvidia_h100"
RMS_SPEC_NAMES = ("dtype", "hidden", "num_tokens")


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("built") / "presets.db"
    build_database(path)
    return path


def _stored(db: Path) -> dict[str, tuple[int, str]]:
    """shape key -> (preset id, config sha256) of the active rms_norm H100 presets."""
    conn = sqlite3.connect(db)
    try:
        rows = conn.execute(
            "SELECT p.shape_key, p.id, c.sha256 FROM presets p JOIN kernels k ON k.id = p.kernel_id "
            "JOIN platforms pl ON pl.id = p.platform_id JOIN configs c ON c.id = p.config_id "
            "WHERE k.name = ? AND pl.name = ? AND p.status = 'active' ORDER BY p.id",
            (KERNEL, PLATFORM),
        ).fetchall()
    finally:
        conn.close()
    return {key: (pid, sha) for key, pid, sha in rows if key != "{}"}


def _edit(db: Path, *statements: tuple[str, tuple[Any, ...]]) -> None:
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        conn.execute("PRAGMA ignore_check_constraints=ON")  # damage SQL's checks would refuse
        for sql, params in statements:
            conn.execute(sql, params)
    finally:
        conn.close()


def _spec() -> KeySpec:
    from presetdb.keys import KeyField

    return KeySpec((KeyField("dtype", "exact"), KeyField("hidden", "nearest"), KeyField("num_tokens", "ceil")))


H100 = DeviceInfo("NVIDIA H100 80GB HBM3", "nvidia", "9.0", 132)


def _picker(db: Path, *, strict: bool = False) -> Any:
    """The picker a process on an H100 builds (the platform resolved through the db's aliases)."""
    settings = dataclasses.replace(
        Settings.from_env(), db_path=db, platform=None, disable_overlay=True,
        on_miss="strict" if strict else "default",
    )
    return build_picker(settings, device=H100)


# ------------------------------------------------------------------ malformed rows

BAD_KEYS = {
    "list-value": '{"dtype":"float32","hidden":"big","num_tokens":[1]}',
    "object-value": '{"dtype":"bfloat16","hidden":{"a":1},"num_tokens":1}',
    "list-in-exact-field": '{"dtype":["bfloat16"],"hidden":4096,"num_tokens":1}',
    "json-array": "[1,2,3]",
    "json-string": '"bfloat16"',
    "json-number": "4096",
    "json-null": "null",
    "missing-fields": '{"hidden":4096}',
    "extra-field": '{"dtype":"bfloat16","extra":2,"hidden":4096,"num_tokens":3}',
    "negative": '{"dtype":"bfloat16","hidden":-5,"num_tokens":1}',
    "huge-int": '{"dtype":"bfloat16","hidden":' + "9" * 400 + ',"num_tokens":1}',
    "not-json": "{dtype: bfloat16",
}


@pytest.mark.parametrize("kind", list(BAD_KEYS))
def test_a_malformed_stored_key_is_skipped_and_every_other_key_still_served(
    built: Path, tmp_path: Path, kind: str
) -> None:
    db = tmp_path / "damaged.db"
    shutil.copy(built, db)
    stored = _stored(db)
    victim_key, (victim_id, _) = sorted(stored.items())[len(stored) // 2]
    _edit(db, ("UPDATE presets SET shape_key = ? WHERE id = ?", (BAD_KEYS[kind], victim_id)))
    picker = _picker(db)
    try:
        with warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("always")
            for key, (pid, sha) in stored.items():
                parsed = json.loads(key)
                choice = picker.resolve(KERNEL, _spec(), tuple(parsed[n] for n in RMS_SPEC_NAMES))
                assert choice is not None, key
                # The same config as stored; the damaged key comes from the embedded default db.
                assert choice.preset.config_sha256 == sha, key
                assert choice.layer == ("default" if key == victim_key else "deployment"), key
    finally:
        picker.close()
    ours = [w for w in record if issubclass(w.category, StoreWarning)]
    assert len(ours) == 1, [str(w.message) for w in record]
    message = str(ours[0].message)
    assert str(db) in message and f"preset {victim_id}" in message and "db check" in message, message


def test_pick_and_list_and_db_check_on_a_malformed_row(built: Path, tmp_path: Path) -> None:
    db = tmp_path / "damaged.db"
    shutil.copy(built, db)
    stored = _stored(db)
    (_victim_key, (victim_id, _)), (good_key, _) = sorted(stored.items())[:2]
    _edit(db, ("UPDATE presets SET shape_key = ? WHERE id = ?", (BAD_KEYS["list-value"], victim_id)))
    env = child_env(COLUMNS="400", PRESETDB_DISABLE_OVERLAY="1")

    def run(*args: str | Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(presetdb_cli(*args), env=env, capture_output=True, text=True, timeout=180, check=False)

    pick = run("pick", "--db", db, "-k", KERNEL, "-p", PLATFORM, "-s", good_key)
    assert pick.returncode == 0 and "Traceback" not in pick.stderr, pick.stderr
    assert "chosen:" in pick.stdout and "warning" in pick.stderr.lower() and str(db) in pick.stderr
    listed = run("list", "--db", db, "-k", KERNEL, "-p", PLATFORM)
    assert listed.returncode == 0, listed.stderr
    assert '"num_tokens":[1]' in listed.stdout  # printed as stored, not eaten as markup
    check = run("db", "check", "--db", db)
    assert check.returncode == 1, check.stdout
    flat = " ".join(check.stdout.split())
    assert f"preset {victim_id}" in flat and "does not fit" in flat, check.stdout
    clean = run("db", "check", "--db", built)
    assert clean.returncode == 0 and clean.stdout.rstrip().endswith("ok"), clean.stdout


def _drop_unique_and_duplicate(db: Path) -> str:
    stored = _stored(db)
    pid = next(iter(stored.values()))[0]
    _edit(
        db,
        ("DROP INDEX uq_presets_active_key", ()),
        (
            ("INSERT INTO presets (kernel_id, platform_id, shape_key, config_id, run_id, status, created_at) "
            "SELECT kernel_id, platform_id, shape_key, config_id, run_id, status, created_at "
            "FROM presets WHERE id = ?"),
            (pid,),
        ),
    )
    return "two or more active rows"


CHECK_DAMAGE: dict[str, Callable[[Path], str]] = {
    "key-schema-not-json": lambda db: (
        _edit(db, ("UPDATE kernels SET key_schema = ? WHERE name = ?", ("{fields: [", KERNEL))),
        "is not a key spec",
    )[1],
    "key-schema-wrong-shape": lambda db: (
        _edit(db, ("UPDATE kernels SET key_schema = ? WHERE name = ?", ('{"fields": 5}', KERNEL))),
        "is not a key spec",
    )[1],
    "key-schema-bad-policy": lambda db: (
        _edit(
            db,
            (
                "UPDATE kernels SET key_schema = ? WHERE name = ?",
                ('{"fields": [{"name": "n", "policy": "median"}]}', KERNEL),
            ),
        ),
        "is not a key spec",
    )[1],
    "two-active-rows": _drop_unique_and_duplicate,
    "missing-view": lambda db: (_edit(db, ("DROP VIEW v_coverage", ())), "view v_coverage is missing")[1],
    "config-not-object": lambda db: (
        _edit(
            db,
            (
                ("UPDATE configs SET config_json = '[1, 2]' WHERE id = "
                "(SELECT config_id FROM presets WHERE status = 'active' LIMIT 1)"),
                (),
            ),
        ),
        "is not a JSON object",
    )[1],
}


@pytest.mark.parametrize("kind", list(CHECK_DAMAGE))
def test_db_check_finds_rows_presetdb_cannot_serve(built: Path, tmp_path: Path, kind: str) -> None:
    db = tmp_path / "damaged.db"
    shutil.copy(built, db)
    expected = CHECK_DAMAGE[kind](db)
    report = migrate.check(db)
    assert not report.ok
    assert any(expected in p for p in report.data_problems), report.data_problems


# ------------------------------------------------------------------ corrupt pages

TABLES = ("platforms", "platform_aliases", "platform_fallbacks", "kernels", "presets", "tuning_runs", "configs")


def _corrupt_root_page(db: Path, table: str) -> None:
    """The root page of the table and of each of its indexes (a query may read only an index)."""
    conn = sqlite3.connect(db)
    try:
        roots = [
            r[0]
            for r in conn.execute(
                "SELECT rootpage FROM sqlite_master WHERE tbl_name = ? AND rootpage > 0", (table,)
            )
        ]
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    finally:
        conn.close()
    with db.open("r+b") as fh:
        for root in roots:
            fh.seek((root - 1) * page_size + (100 if root == 1 else 0))
            fh.write(b"\x00" * 8)  # page type 0: "database disk image is malformed"


@pytest.mark.parametrize("table", TABLES)
def test_a_corrupt_page_gives_way_to_the_next_layer(
    built: Path, tmp_path: Path, table: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / f"corrupt-{table}.db"
    shutil.copy(built, db)
    _corrupt_root_page(db, table)
    stored = _stored(built)
    key, (_, sha) = min(stored.items())
    parsed = json.loads(key)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        picker = _picker(db)
        try:
            choice = picker.resolve(KERNEL, _spec(), tuple(parsed[n] for n in RMS_SPEC_NAMES))
        finally:
            picker.close()
    assert choice is not None and choice.layer == "default" and choice.preset.config_sha256 == sha
    about = [str(w.message) for w in record if issubclass(w.category, StoreWarning) and str(db) in str(w.message)]
    assert about, [str(w.message) for w in record]
    with pytest.raises(PresetDBError) as info:
        strict = _picker(db, strict=True)
        try:
            strict.resolve(KERNEL, _spec(), tuple(parsed[n] for n in RMS_SPEC_NAMES))
        finally:
            strict.close()
    assert str(db) in str(info.value)


# ------------------------------------------------------------------ kernel calls


def _kernel_env(monkeypatch: pytest.MonkeyPatch, db: Path) -> None:
    monkeypatch.setenv("PRESETDB_PATH", str(db))
    monkeypatch.setenv("PRESETDB_PLATFORM", PLATFORM)
    monkeypatch.setenv("PRESETDB_DISABLE_OVERLAY", "1")
    monkeypatch.delenv("PRESETDB_ON_MISS", raising=False)


def _call_rms_norm(shapes: list[tuple[int, int]]) -> list[str]:
    """Real kernel calls; returns presetdb's warnings. Asserts each result is right."""
    from helion_fixtures import assert_close, install_interpreter_shims

    install_interpreter_shims()
    import torch

    import presetdb.kernels  # noqa: F401  (registers the kernels)
    from presetdb.helion.hooks import reset_warnings
    from presetdb.helion.registry import get_kernel

    reset_picker()
    reset_warnings()
    rk = get_kernel(KERNEL)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        for rows, hidden in shapes:
            x = torch.randn(rows, hidden)
            w = torch.randn(hidden)
            out = torch.ops.presetdb.rms_norm(x, w, 1e-6)
            assert_close(out, rk.reference(x, w, 1e-6), torch.float32)
    reset_picker()
    return [str(w.message) for w in record if w.category.__module__.startswith("presetdb")]


def _needs_interpreter() -> None:
    from helion_fixtures import HAS_CUDA

    if not HAS_CUDA and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("CPU Helion kernels need TRITON_INTERPRET=1")


def test_kernel_calls_survive_a_malformed_row_and_a_corrupt_fallbacks_page(
    built: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _needs_interpreter()
    db = tmp_path / "damaged.db"
    shutil.copy(built, db)
    _edit(
        db,
        (
            ("UPDATE presets SET shape_key = ? WHERE id = (SELECT min(p.id) FROM presets p JOIN kernels k "
            "ON k.id = p.kernel_id WHERE k.name = ? AND p.status = 'active')"),
            (BAD_KEYS["list-value"], KERNEL),
        ),
    )
    _kernel_env(monkeypatch, db)
    from presetdb.helion.registry import last_choice

    messages = _call_rms_norm([(4, 2048)])
    assert last_choice(KERNEL) is not None, messages  # a stored config served it
    assert any(str(db) in m for m in messages), messages
    _corrupt_root_page(db, "platform_fallbacks")
    messages = _call_rms_norm([(4, 2048)])
    choice = last_choice(KERNEL)
    assert choice is not None and choice.layer == "default", messages
    assert any(str(db) in m for m in messages), messages


# Type-valid JSON of the wrong shape for a stored value.
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)


# Keys with the kernel's field names and values of any JSON type, or any JSON at all.
KEY_VALUES = st.dictionaries(st.sampled_from(RMS_SPEC_NAMES), JSON_VALUES, min_size=1) | JSON_VALUES


@st.composite
def damage(draw: st.DrawFn) -> dict[str, Any]:
    return {
        "keys": draw(st.lists(KEY_VALUES, min_size=1, max_size=3)),
        "configs": draw(st.lists(JSON_VALUES, max_size=2)),
        "schemas": draw(st.lists(JSON_VALUES, max_size=1)),
        "pages": draw(st.lists(st.tuples(st.integers(2, 10**6), st.binary(min_size=4, max_size=16)), max_size=2)),
        "seed": draw(st.integers(0, 2**32 - 1)),
    }


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(hurt=damage())
def test_property_kernel_calls_return_the_right_result_whatever_is_damaged(
    built: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, hurt: dict[str, Any]
) -> None:
    _needs_interpreter()
    rng = random.Random(hurt["seed"])
    db = tmp_path / f"hurt-{hurt['seed']}.db"
    shutil.copy(built, db)
    conn = sqlite3.connect(db)
    ids = [
        r[0]
        for r in conn.execute(
            "SELECT p.id FROM presets p JOIN kernels k ON k.id = p.kernel_id "
            "WHERE k.name = ? AND p.status = 'active'",
            (KERNEL,),
        )
    ]
    config_ids = [r[0] for r in conn.execute("SELECT id FROM configs")]
    page_count = conn.execute("PRAGMA page_count").fetchone()[0]
    page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    conn.close()
    statements: list[tuple[str, tuple[Any, ...]]] = []
    for value in hurt["keys"]:
        statements.append(("UPDATE OR IGNORE presets SET shape_key = ? WHERE id = ?", (json.dumps(value), rng.choice(ids))))
    for value in hurt["configs"]:
        statements.append(("UPDATE OR IGNORE configs SET config_json = ? WHERE id = ?", (json.dumps(value), rng.choice(config_ids))))
    for value in hurt["schemas"]:
        statements.append(("UPDATE kernels SET key_schema = ? WHERE name = ?", (json.dumps(value), KERNEL)))
    _edit(db, *statements)
    with db.open("r+b") as fh:
        for page, data in hurt["pages"]:
            page = 2 + page % (page_count - 1)
            fh.seek((page - 1) * page_size + rng.randrange(page_size - len(data)))
            fh.write(data)
    _kernel_env(monkeypatch, db)
    # Any exception fails the test; results are checked against PyTorch inside.
    _call_rms_norm([(4, 2048), (3, 4096)])
    get_picker()  # the process-wide picker builds on the damaged file, too
    reset_picker()
