"""The layered stores under the picker: precedence (overlay > deployment > default),
watching the writable overlay for changes, never re-reading immutable files, no SQL on
memo hits, and broken files (skipped with a warning, or raised in strict mode)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path
from typing import Any

import pytest
from picker_fixtures import (
    H100,
    H200,
    RMS_SCHEMA,
    RMS_SPEC,
    P,
    make_db,
    picker_factory,
    rms_key,
    write_presets,
)
from sqlalchemy import event

from presetdb.errors import StoreError
from presetdb.runtime import picker as picker_module
from presetdb.runtime.layers import StoreWarning, open_layers
from presetdb.runtime.picker import Picker, build_picker
from presetdb.runtime.platforms import DeviceInfo
from presetdb.settings import Settings
from presetdb.store import migrate
from presetdb.store.repository import Repository

make_picker_fixture = pytest.fixture(picker_factory, name="make_picker")

FEATURES = ("bfloat16", 4096, 128)


@pytest.fixture
def three_layers(tmp_path: Path) -> dict[str, Path]:
    """The same key in every layer, plus keys only one layer has."""
    overlay = make_db(
        tmp_path / "overlay.db",
        [
            P("rms_norm", H100, rms_key(), {"from": "overlay"}),
            P("rms_norm", H100, rms_key(hidden=1024), {"only": "overlay"}),
        ],
        shipped=False,
    )
    deployment = make_db(
        tmp_path / "deployment.db",
        [
            P("rms_norm", H100, rms_key(), {"from": "deployment"}),
            P("rms_norm", H100, rms_key(hidden=2048), {"only": "deployment"}),
            P("rms_norm", H100, rms_key(dtype="float16"), {"from": "deployment"}),
        ],
    )
    default = make_db(
        tmp_path / "default.db",
        [
            P("rms_norm", H100, rms_key(), {"from": "default"}),
            P("rms_norm", H100, rms_key(dtype="float16"), {"from": "default"}),
            P("rms_norm", H100, rms_key(hidden=16384), {"only": "default"}),
            P("rms_norm", H100, {}, {"default_entry": "default"}),
        ],
    )
    return {"overlay": overlay, "deployment": deployment, "default": default}


# ---------------------------------------------------------------------------- precedence


def test_overlay_beats_deployment_beats_default(
    make_picker: Any, three_layers: dict[str, Path]
) -> None:
    picker = make_picker(**three_layers)
    assert [layer.name for layer in picker.layers] == [
        "overlay",
        "deployment",
        "default",
    ]
    choice = picker.resolve("rms_norm", RMS_SPEC, FEATURES)
    assert choice is not None and (choice.layer, choice.config) == (
        "overlay",
        {"from": "overlay"},
    )
    fp16 = picker.resolve("rms_norm", RMS_SPEC, ("float16", 4096, 128))
    assert fp16 is not None and (fp16.layer, fp16.config) == (
        "deployment",
        {"from": "deployment"},
    )

    without_overlay = make_picker(
        deployment=three_layers["deployment"], default=three_layers["default"]
    )
    assert without_overlay.resolve("rms_norm", RMS_SPEC, FEATURES).layer == "deployment"  # type: ignore[union-attr]
    only_default = make_picker(default=three_layers["default"])
    assert only_default.resolve("rms_norm", RMS_SPEC, FEATURES).layer == "default"  # type: ignore[union-attr]


def test_keys_are_merged_across_layers(
    make_picker: Any, three_layers: dict[str, Path]
) -> None:
    picker = make_picker(**three_layers)
    served = {}
    for hidden in (1024, 2048, 4096, 16384):
        choice = picker.resolve("rms_norm", RMS_SPEC, ("bfloat16", hidden, 128))
        assert choice is not None and choice.match == "exact", hidden
        served[hidden] = (choice.layer, choice.config)
    assert served == {
        1024: ("overlay", {"only": "overlay"}),
        2048: ("deployment", {"only": "deployment"}),
        4096: ("overlay", {"from": "overlay"}),
        16384: ("default", {"only": "default"}),
    }
    # a nearest match sees every layer's keys: 12000 is nearest to the default's 16384
    near = picker.resolve("rms_norm", RMS_SPEC, ("bfloat16", 12000, 128))
    assert near is not None and (near.layer, near.preset.key["hidden"]) == (
        "default",
        16384,
    )
    fallback = picker.resolve("rms_norm", RMS_SPEC, ("float32", 4096, 128))
    assert fallback is not None and (fallback.layer, fallback.match) == (
        "default",
        "default",
    )
    assert picker.loads == 1  # one build per kernel, whatever the layers


def test_layer_provenance_is_kept_per_preset(make_picker: Any, tmp_path: Path) -> None:
    overlay = make_db(
        tmp_path / "o.db",
        [P("rms_norm", H100, rms_key(), {"a": 1}, {"latency_ms": 0.5})],
        shipped=False,
        provenance={"tuned_by": "me", "helion_version": "1.5.0"},
    )
    picker = make_picker(overlay=overlay)
    choice = picker.resolve("rms_norm", RMS_SPEC, FEATURES)
    assert choice is not None
    assert (
        choice.preset.latency_ms,
        choice.preset.source,
        choice.preset.helion_version,
    ) == (0.5, "manual", "1.5.0")


# ---------------------------------------------------------------------------- invalidation


def test_overlay_change_by_another_connection_is_seen_after_recheck(
    make_picker: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(picker_module, "RECHECK_SECONDS", 0.2)
    overlay = make_db(
        tmp_path / "overlay.db",
        [P("rms_norm", H100, rms_key(hidden=1024), {"old": 1})],
        shipped=False,
    )
    picker = make_picker(overlay=overlay)
    first = picker.resolve("rms_norm", RMS_SPEC, FEATURES)
    assert first is not None and first.config == {"old": 1} and picker.loads == 1

    write_presets(
        overlay, [P("rms_norm", H100, rms_key(), {"new": 1})]
    )  # its own rw engine
    # before the recheck interval: still the memoized answer, no reload
    assert picker.resolve("rms_norm", RMS_SPEC, FEATURES) is first
    time.sleep(0.25)
    now = picker.resolve("rms_norm", RMS_SPEC, FEATURES)
    assert now is not None and (now.config, now.match) == ({"new": 1}, "exact")
    assert picker.loads == 2
    # nothing changed since: further rechecks do not reload
    time.sleep(0.25)
    assert picker.resolve("rms_norm", RMS_SPEC, FEATURES) is now
    assert picker.loads == 2


def test_overlay_change_by_another_process_is_seen(
    make_picker: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(picker_module, "RECHECK_SECONDS", 0.05)
    overlay = make_db(
        tmp_path / "overlay.db",
        [P("rms_norm", H100, rms_key(hidden=1024), {"old": 1})],
        shipped=False,
    )
    picker = make_picker(overlay=overlay)
    assert picker.resolve("rms_norm", RMS_SPEC, FEATURES).config == {"old": 1}  # type: ignore[union-attr]
    script = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from picker_fixtures import P, rms_key, write_presets
        write_presets(__import__("pathlib").Path(sys.argv[1]), [P("rms_norm", "{H100}", rms_key(), {{"other_process": 1}})])
        """
    )
    subprocess.run(
        [sys.executable, "-c", script, str(overlay)], check=True, timeout=120
    )
    time.sleep(0.1)
    choice = picker.resolve("rms_norm", RMS_SPEC, FEATURES)
    assert choice is not None and choice.config == {"other_process": 1}
    assert picker.loads == 2


def test_overlay_change_is_seen_whichever_pooled_connection_is_free(
    make_picker: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # PRAGMA data_version only compares on one connection. Readers in other threads make
    # the pool hand out other (fresh) connections: the watch must not be fooled by them.
    monkeypatch.setattr(picker_module, "RECHECK_SECONDS", 0.0)
    overlay = make_db(
        tmp_path / "overlay.db",
        [P("rms_norm", H100, rms_key(hidden=1024), {"old": 1})],
        shipped=False,
    )
    picker = make_picker(overlay=overlay)
    assert picker.resolve("rms_norm", RMS_SPEC, FEATURES).config == {"old": 1}  # type: ignore[union-attr]
    layer = picker.layers[0]
    write_presets(overlay, [P("rms_norm", H100, rms_key(), {"new": 1})])
    held = [layer.store.engine.connect() for _ in range(3)]  # busy readers
    fresh = (
        layer.store.engine.connect()
    )  # created after the commit: data_version starts over
    fresh.close()
    for conn in held:
        conn.close()
    assert picker.resolve("rms_norm", RMS_SPEC, FEATURES).config == {"new": 1}  # type: ignore[union-attr]
    loads = picker.loads
    for _ in range(20):  # and no change means no reload, whichever connection is asked
        picker.resolve("rms_norm", RMS_SPEC, FEATURES)
    assert picker.loads == loads


def test_immutable_layers_are_never_rechecked_or_reread(
    make_picker: Any, three_layers: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        picker_module, "RECHECK_SECONDS", 0.0
    )  # recheck on every resolve
    picker: Picker = make_picker(
        deployment=three_layers["deployment"], default=three_layers["default"]
    )
    asked: list[str] = []
    for layer in picker.layers:
        monkeypatch.setattr(
            layer.store, "data_version", lambda name=layer.name: asked.append(name) or 0
        )
    for _ in range(3):
        for hidden in (1024, 2048, 4096, 5000):
            picker.resolve("rms_norm", RMS_SPEC, ("bfloat16", hidden, 128))
        time.sleep(0.01)
    assert asked == []
    assert picker.loads == 1


def test_memo_hits_run_no_sql(
    make_picker: Any, three_layers: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(picker_module, "RECHECK_SECONDS", 3600.0)
    picker: Picker = make_picker(**three_layers)
    from sqlalchemy.engine import Engine

    engines = [Engine]  # every engine of the process, the ledger's too
    statements: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)

    for engine in engines:
        event.listen(engine, "before_cursor_execute", count)
    try:
        queries = [
            ("bfloat16", h, t) for h in (1024, 3000, 4096) for t in (1, 128, 9999)
        ]
        first = [picker.resolve("rms_norm", RMS_SPEC, q) for q in queries]
        assert statements, "the first resolve loads from every layer"
        statements.clear()
        for _ in range(200):
            again = [picker.resolve("rms_norm", RMS_SPEC, q) for q in queries]
        assert statements == []
        assert all(a is b for a, b in zip(again, first, strict=True))
        # a new feature tuple of a loaded kernel: matched in memory, still no SQL
        picker.resolve("rms_norm", RMS_SPEC, ("float16", 777, 3))
        assert statements == []
    finally:
        for engine in engines:
            event.remove(engine, "before_cursor_execute", count)


def test_watching_the_overlay_uses_one_connection(
    make_picker: Any, tmp_path: Path
) -> None:
    overlay = make_db(tmp_path / "overlay.db", [], shipped=False)
    picker: Picker = make_picker(overlay=overlay)
    layer = picker.layers[0]
    before = layer.store.data_version()
    write_presets(overlay, [P("rms_norm", H100, rms_key(), {"x": 1})])
    assert layer.store.data_version() != before
    after = layer.store.data_version()
    assert layer.store.data_version() == after
    picker.close()
    assert layer.store._version_conn is None  # closed with the picker


# ---------------------------------------------------------------------------- broken files


def corrupt_copy(src: Path, dst: Path) -> Path:
    """A file with a valid SQLite header whose pages are garbage."""
    data = bytearray(src.read_bytes())
    data[100:] = bytes((i * 7 + 3) % 251 for i in range(len(data) - 100))
    dst.write_bytes(bytes(data))
    return dst


def env_settings(
    monkeypatch: pytest.MonkeyPatch, deployment: Path, on_miss: str = "default"
) -> Settings:
    monkeypatch.setenv("PRESETDB_PATH", str(deployment))
    monkeypatch.setenv("PRESETDB_ON_MISS", on_miss)
    monkeypatch.setenv("PRESETDB_PLATFORM", H100)
    return Settings.from_env()


@pytest.mark.parametrize("damage", ["garbage", "pages", "empty"])
def test_corrupt_deployment_is_skipped_with_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, damage: str
) -> None:
    good = make_db(tmp_path / "good.db", [P("rms_norm", H100, rms_key(), {"x": 1})])
    bad = tmp_path / "deployment.db"
    if damage == "garbage":
        bad.write_bytes(b"this is not a database" * 100)
    elif damage == "pages":
        corrupt_copy(good, bad)
    else:
        bad.write_bytes(b"")
    make_db(
        Path(Settings.from_env().user_db_path),
        [P("rms_norm", H100, rms_key(), {"overlay": 1})],
        shipped=False,
    )
    settings = env_settings(monkeypatch, bad)
    with pytest.warns(
        StoreWarning, match=r"deployment db .*deployment\.db is unusable"
    ):
        picker = build_picker(settings, device=DeviceInfo("cpu", "cpu", None, None))
    try:
        assert [layer.name for layer in picker.layers] == ["overlay", "default"]
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # the warning was given once, at open
            choice = picker.resolve("rms_norm", RMS_SPEC, FEATURES)
        assert choice is not None and (choice.layer, choice.config) == (
            "overlay",
            {"overlay": 1},
        )
    finally:
        picker.close()


def test_corrupt_deployment_raises_in_strict_mode(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bad = tmp_path / "deployment.db"
    bad.write_bytes(b"SQLite format 3\x00" + b"\x00" * 50 + b"garbage" * 200)
    settings = env_settings(monkeypatch, bad, on_miss="strict")
    with pytest.raises(StoreError, match=r"deployment\.db"):
        open_layers(settings)
    with pytest.raises(StoreError):
        build_picker(settings, device=DeviceInfo("cpu", "cpu", None, None))
    missing = env_settings(monkeypatch, tmp_path / "nope.db", on_miss="strict")
    with pytest.raises(StoreError, match="no such database file"):
        open_layers(missing)


def test_layer_broken_after_opening_warns_and_serves_the_rest(
    make_picker: Any, tmp_path: Path
) -> None:
    deployment = make_db(
        tmp_path / "dep.db", [P("rms_norm", H100, rms_key(), {"dep": 1})]
    )
    default = make_db(
        tmp_path / "default.db", [P("rms_norm", H100, rms_key(), {"default": 1})]
    )
    picker = make_picker(deployment=deployment, default=default)
    corrupt_copy(
        make_db(tmp_path / "x.db", []), deployment
    )  # replaced under the open layer
    picker.layers[0].store.engine.dispose()  # no cached pages
    with pytest.warns(StoreWarning, match="could not read deployment db"):
        choice = picker.resolve("rms_norm", RMS_SPEC, FEATURES)
    assert choice is not None and choice.layer == "default"


def test_overlay_that_cannot_be_used_is_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bad = tmp_path / "user-overlay.db"
    bad.write_bytes(b"not sqlite at all" * 10)
    monkeypatch.setenv("PRESETDB_USER_DB", str(bad))
    # A kernel name the shipped seed data does not hold, so only the deployment answers.
    deployment = make_db(
        tmp_path / "dep.db", [P("rms_norm_layers", H200, rms_key(), {"dep": 1})],
        kernels={"rms_norm_layers": RMS_SCHEMA},
    )
    settings = env_settings(monkeypatch, deployment)
    with pytest.warns(StoreWarning, match="user overlay"):
        picker = build_picker(settings, device=DeviceInfo("cpu", "cpu", None, None))
    try:
        assert picker.overlay_path is None and [layer.name for layer in picker.layers] == [
            "deployment",
            "default",
        ]
        choice = picker.resolve("rms_norm_layers", RMS_SPEC, FEATURES)
        assert choice is not None and choice.kind == "fallback-platform"
        picker.record_miss(
            "rms_norm", {"dtype": "x"}
        )  # no overlay: counted, never written
        assert picker.flush_misses() == 0
    finally:
        picker.close()


def test_overlay_is_created_schema_only_on_first_write_by_the_ledger(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Opening the layers never creates or migrates the overlay (no Alembic on a kernel
    call); the ledger's thread creates it schema-only on its first write, and the picker
    then reads it as its first layer."""
    overlay = tmp_path / "user-overlay.db"
    assert not overlay.exists()
    settings = env_settings(monkeypatch, make_db(tmp_path / "dep.db", []))
    layers, writer = open_layers(settings)
    try:
        assert not overlay.exists() and writer == overlay
        assert [layer.name for layer in layers] == ["deployment", "default"]
    finally:
        for layer in layers:
            layer.store.dispose()
    picker = build_picker(settings, device=DeviceInfo("cpu", "cpu", None, None))
    try:
        picker.record_miss("rms_norm", {"dtype": "float32", "hidden": 8, "num_tokens": 1})
        assert not overlay.exists()  # counted in memory only
        assert picker.flush_misses() == 1
        assert overlay.exists() and migrate.revision_of(overlay) == migrate.head()
        assert [layer.name for layer in picker.layers] == ["deployment", "default"]  # misses change no preset
        store = migrate.open_store(overlay, "ro")
        try:
            with store.read() as session:
                assert Repository(session).all_presets() == []  # schema only: no seed data
        finally:
            store.dispose()
        # a write that changes presets makes the picker read the overlay as its first layer
        picker.store_result("rms_norm", RMS_SPEC, {"dtype": "float32", "hidden": 8, "num_tokens": 1},
                            {"block_sizes": [1]}, {"tuned_by": "tests"}, {})
        assert [layer.name for layer in picker.layers] == ["overlay", "deployment", "default"]
        assert [layer.mutable for layer in picker.layers] == [True, False, False]
    finally:
        picker.close()


def test_preset_rows_build_the_same_records_as_active_presets(tmp_path: Path) -> None:
    from presetdb.store.repository import Repository

    path = make_db(
        tmp_path / "d.db",
        [
            P(
                "rms_norm",
                H100,
                rms_key(hidden=h),
                {"h": h},
                {
                    "latency_ms": 0.1,
                    "default_ms": 0.2,
                    "reference_ms": 0.3,
                    "configs_tried": 9,
                    "tuning_seconds": 1.5,
                    "kernel_source_hash": "ab" * 32,
                },
            )
            for h in (1024, 2048)
        ]
        + [P("rms_norm", H200, rms_key(), {"other": 1})],
        provenance={
            "tuned_by": "t",
            "device_name": "NVIDIA H100 80GB HBM3",
            "helion_version": "1.5.0",
            "revision": "0003",
        },
    )
    write_presets(
        path,
        [P("rms_norm", H100, rms_key(hidden=1024), {"h": "new"})],
        helion_version="1.5.0",
    )
    store = migrate.open_store(path, "ro")
    try:
        with store.read() as session:
            repo = Repository(session)
            rows = repo.active_preset_rows("rms_norm", H100)
            records = sorted(rows.records(), key=lambda r: r.id)
            assert records == sorted(
                repo.active_presets("rms_norm", H100), key=lambda r: r.id
            )
            assert len(records) == 2 and {r.revision for r in records} == {"0003", None}
            assert repo.active_preset_rows("nope", H100).rows == []
    finally:
        store.dispose()


def test_stored_keys_that_do_not_fit_the_spec_are_ignored_with_a_warning(
    make_picker: Any, tmp_path: Path
) -> None:
    deployment = make_db(
        tmp_path / "dep.db",
        [
            P("rms_norm", H100, {"dtype": "bfloat16", "hidden": 4096}, {"old_spec": 1}),
            P("rms_norm", H100, rms_key(hidden=1024), {"fits": 1}),
        ],
    )
    default = make_db(
        tmp_path / "default.db", [P("rms_norm", H100, rms_key(), {"ok": 1})]
    )
    picker = make_picker(deployment=deployment, default=default)
    with pytest.warns(
        StoreWarning,
        match=r"1 stored key\(s\) of rms_norm on nvidia_h100 do not fit.*\['num_tokens'\]",
    ):
        choice = picker.resolve("rms_norm", RMS_SPEC, FEATURES)
    # only the bad row is dropped: the other layers' and rows' keys still serve
    assert choice is not None and (choice.layer, choice.config) == (
        "default",
        {"ok": 1},
    )
    near = picker.resolve("rms_norm", RMS_SPEC, ("bfloat16", 1000, 128))
    assert near is not None and near.config == {"fits": 1}
