"""Repository semantics on a real migrated SQLite file, and the constraints the schema
enforces by itself (partial unique index, CHECK json_valid, foreign keys)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import event, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from presetdb.errors import KeySpecError, UnknownKernelError, UnknownPlatformError
from presetdb.store.engine import Store
from presetdb.store.records import MissRecord, PresetInput, canonical_config, config_sha256
from presetdb.store.repository import Repository

SCHEMA = {
    "fields": [
        {"name": "dtype", "policy": "exact", "description": "input dtype"},
        {"name": "hidden", "policy": "nearest", "description": "last dim"},
    ]
}
KEY = {"dtype": "bfloat16", "hidden": 4096}
KEY_TEXT = '{"dtype":"bfloat16","hidden":4096}'
H100 = "nvidia_h100"


@pytest.fixture
def repo(rw_store: Store) -> Iterator[Repository]:
    """A Repository in one write transaction, committed at the end of the test."""
    with rw_store.transaction() as session:
        repo = Repository(session)
        repo.ensure_kernel("rms_norm", SCHEMA, "RMS norm")
        yield repo


def _run(repo: Repository, **prov: Any) -> int:
    return repo.add_run("manual", **prov).id


# ------------------------------------------------------------------ presets


def test_changed_config_supersedes_and_keeps_history(repo: Repository) -> None:
    first = repo.upsert_preset(
        "rms_norm", H100, _run(repo), PresetInput(KEY, {"block": 1}, latency_ms=0.5)
    )
    assert first.outcome == "added"
    run2 = _run(repo)
    second = repo.upsert_preset(
        "rms_norm", H100, run2, PresetInput(KEY, {"block": 2}, latency_ms=0.4)
    )

    assert second.outcome == "superseded"
    assert second.replaced_id == first.preset_id
    assert second.preset_id != first.preset_id
    old = repo.get_preset(first.preset_id)
    assert old.status == "superseded"
    assert old.superseded_by == second.preset_id
    assert str(run2) in (old.status_reason or "")
    active = repo.active_presets("rms_norm", H100)
    assert [(p.id, p.config, p.latency_ms) for p in active] == [
        (second.preset_id, {"block": 2}, 0.4)
    ]
    assert repo.count_presets() == 1
    assert repo.count_presets(status=None) == 2


def test_same_config_again_is_a_no_op(repo: Repository) -> None:
    first = repo.upsert_preset(
        "rms_norm", H100, _run(repo), PresetInput(KEY, {"a": 1, "b": [1, 2]})
    )
    # same key spelled in another order, same config in another key order, a later run
    again = repo.upsert_preset(
        "rms_norm",
        H100,
        _run(repo),
        PresetInput({"hidden": 4096, "dtype": "bfloat16"}, {"b": [1, 2], "a": 1}),
    )
    assert again.outcome == "unchanged"
    assert again.preset_id == first.preset_id
    assert again.replaced_id is None
    assert repo.count_presets(status=None) == 1
    assert repo.session.scalar(text("SELECT COUNT(*) FROM configs")) == 1


def test_history_of_a_key_is_in_order(repo: Repository) -> None:
    ids = [
        repo.upsert_preset(
            "rms_norm", H100, _run(repo), PresetInput(KEY, {"v": v})
        ).preset_id
        for v in (1, 2, 1)  # back to the first config: a new row, not a revived one
    ]
    other = repo.upsert_preset(
        "rms_norm", H100, _run(repo), PresetInput({**KEY, "hidden": 8192}, {"v": 9})
    )

    history = repo.history("rms_norm", H100, KEY)
    assert [h.id for h in history] == ids
    assert [h.status for h in history] == ["superseded", "superseded", "active"]
    assert [h.superseded_by for h in history] == [ids[1], ids[2], None]
    assert [h.config for h in history] == [{"v": 1}, {"v": 2}, {"v": 1}]
    assert history[0].config_sha256 == history[2].config_sha256  # content-addressed
    assert other.preset_id not in [h.id for h in history]
    # the string form of the key gives the same history
    assert [
        h.id
        for h in repo.history(
            "rms_norm", H100, ' { "hidden" : 4096, "dtype":"bfloat16"}'
        )
    ] == ids


def test_candidates_are_ranked_fastest_first(repo: Repository) -> None:
    item = PresetInput(
        KEY,
        {"block": 1},
        latency_ms=0.5,
        candidates=[
            ({"block": 2}, 0.6),
            ({"z": 1, "block": 4}, 0.7),
            ({"block": 8}, None),
        ],
    )
    pid = repo.upsert_preset("rms_norm", H100, _run(repo), item).preset_id
    cands = repo.candidates(pid)
    assert [(c.rank, c.latency_ms) for c in cands] == [(1, 0.6), (2, 0.7), (3, None)]
    assert [json.loads(c.config_json) for c in cands] == [
        {"block": 2},
        {"block": 4, "z": 1},
        {"block": 8},
    ]
    assert cands[1].config_json == '{"block":4,"z":1}'  # stored canonical


def test_record_carries_timings_and_provenance(repo: Repository) -> None:
    run = _run(
        repo,
        device_name="NVIDIA H100 80GB HBM3",
        helion_version="1.5.0",
        finished_at="2026-01-02T00:00:00Z",
        revision="0003",
    )
    item = PresetInput(
        KEY,
        {"num_warps": 4},
        latency_ms=0.41,
        default_ms=5.13,
        reference_ms=0.18,
        configs_tried=120,
        tuning_seconds=95.5,
        kernel_source_hash="ab" * 32,
    )
    pid = repo.upsert_preset("rms_norm", H100, run, item).preset_id
    rec = repo.find_preset("rms_norm", H100, KEY)
    assert rec is not None and rec.id == pid
    assert (rec.kernel, rec.platform, rec.shape_key) == ("rms_norm", H100, KEY_TEXT)
    assert (rec.latency_ms, rec.default_ms, rec.reference_ms) == (0.41, 5.13, 0.18)
    assert (rec.configs_tried, rec.tuning_seconds, rec.kernel_source_hash) == (
        120,
        95.5,
        "ab" * 32,
    )
    assert (
        rec.source,
        rec.device_name,
        rec.helion_version,
        rec.tuned_at,
        rec.revision,
    ) == (
        "manual",
        "NVIDIA H100 80GB HBM3",
        "1.5.0",
        "2026-01-02T00:00:00Z",
        "0003",
    )
    assert rec.config_sha256 == config_sha256({"num_warps": 4})
    assert rec.config_json == canonical_config({"num_warps": 4})
    assert rec.key == KEY
    assert repo.find_preset("rms_norm", H100, {**KEY, "hidden": 1}) is None


def test_quarantined_row_leaves_the_active_set(repo: Repository) -> None:
    pid = repo.upsert_preset(
        "rms_norm", H100, _run(repo), PresetInput(KEY, {"v": 1})
    ).preset_id
    repo.quarantine(pid, "does not compile: bad block size")
    assert repo.active_presets("rms_norm", H100) == []
    rec = repo.get_preset(pid)
    assert rec.status == "quarantined" and "does not compile" in (
        rec.status_reason or ""
    )
    # a later result for the key becomes active next to the quarantined row
    new = repo.upsert_preset("rms_norm", H100, _run(repo), PresetInput(KEY, {"v": 2}))
    assert new.outcome == "added"
    assert [p.id for p in repo.active_presets("rms_norm", H100)] == [new.preset_id]


def test_lists_kernels_platforms_runs(repo: Repository) -> None:
    repo.ensure_kernel("add", {"fields": []})
    repo.ensure_platform(
        "test_gpu",
        vendor="nvidia",
        device_name="Test GPU 9000",
        compute_capability="9.9",
        sm_count=7,
    )
    r1 = _run(repo, host="a", seed=1)
    r2 = repo.add_run("import-vllm", source_file="E=8.json", source_sha256="c" * 64).id

    assert [k.name for k in repo.list_kernels()] == ["add", "rms_norm"]
    assert repo.get_kernel("rms_norm").key_schema == SCHEMA
    assert repo.get_kernel("rms_norm").description == "RMS norm"
    names = [p.name for p in repo.list_platforms()]
    assert names == sorted(names)
    assert {"nvidia_h100", "nvidia_h200", "cpu", "test_gpu"} <= set(names)
    gpu = repo.get_platform("test_gpu")
    assert (gpu.vendor, gpu.device_name, gpu.compute_capability, gpu.sm_count) == (
        "nvidia",
        "Test GPU 9000",
        "9.9",
        7,
    )
    assert (
        repo.platform_for_alias("  test gpu 9000 ") == "test_gpu"
    )  # alias added, case-insensitive
    assert repo.platform_for_alias("NVIDIA H100 PCIe") == "nvidia_h100"
    assert repo.fallbacks("nvidia_h200") == ["nvidia_h100"]
    assert repo.fallbacks("cpu") == []
    runs = repo.list_runs()
    assert [(r.id, r.source) for r in runs] == [(r1, "manual"), (r2, "import-vllm")]
    assert (runs[0].host, runs[0].seed) == ("a", 1)
    assert (runs[1].source_file, runs[1].source_sha256) == ("E=8.json", "c" * 64)
    assert runs[0].imported_at.endswith("Z")
    with pytest.raises(TypeError, match="no_such_field"):
        repo.add_run("manual", no_such_field=1)


def test_key_schema_conflict_raises(repo: Repository) -> None:
    # same fields and policies: fine (descriptions may differ)
    same = {"fields": [{**f, "description": "other words"} for f in SCHEMA["fields"]]}
    assert repo.ensure_kernel("rms_norm", same).key_schema == SCHEMA
    changed = {"fields": [SCHEMA["fields"][0], {"name": "hidden", "policy": "ceil"}]}
    with pytest.raises(KeySpecError) as info:
        repo.ensure_kernel("rms_norm", changed)
    message = str(info.value)
    assert "rms_norm" in message and "ceil" in message and "nearest" in message
    with pytest.raises(KeySpecError):
        repo.ensure_kernel("rms_norm", {"fields": [SCHEMA["fields"][0]]})


def test_unknown_kernel_and_platform_list_known_names(repo: Repository) -> None:
    repo.ensure_kernel("softmax", {"fields": []})
    with pytest.raises(UnknownKernelError) as info:
        repo.get_kernel("rms_nrom")
    assert "rms_nrom" in str(info.value)
    assert "rms_norm, softmax" in str(info.value)
    with pytest.raises(UnknownPlatformError) as pinfo:
        repo.get_platform("nvidia_h1000")
    message = str(pinfo.value)
    assert "nvidia_h1000" in message
    for known in ("nvidia_h100", "nvidia_h200", "amd_instinct_mi300x", "cpu"):
        assert known in message
    run = _run(repo)
    with pytest.raises(UnknownKernelError, match="rms_norm"):
        repo.upsert_preset("nope", H100, run, PresetInput(KEY, {"v": 1}))
    with pytest.raises(UnknownPlatformError, match="nvidia_h100"):
        repo.upsert_preset("rms_norm", "nope", run, PresetInput(KEY, {"v": 1}))


def test_miss_ledger_accumulates(repo: Repository) -> None:
    features = '{"dtype":"float16","hidden":5}'
    repo.record_misses(
        [
            MissRecord(
                "rms_norm",
                H100,
                features,
                "no-match",
                2,
                "2026-01-01T00:00:00Z",
                "2026-01-01T00:00:00Z",
            )
        ]
    )
    repo.record_misses(
        [
            MissRecord(
                "rms_norm",
                H100,
                features,
                "no-match",
                3,
                "2026-01-02T00:00:00Z",
                "2026-01-03T00:00:00Z",
            ),
            MissRecord(
                "softmax",
                H100,
                "{}",
                "no-match",
                1,
                "2026-01-02T00:00:00Z",
                "2026-01-02T00:00:00Z",
            ),
        ]
    )
    misses = repo.misses()
    assert [(m.kernel, m.count) for m in misses] == [("rms_norm", 5), ("softmax", 1)]
    assert misses[0].first_seen_at == "2026-01-01T00:00:00Z"
    assert misses[0].last_seen_at == "2026-01-03T00:00:00Z"
    assert [m.kernel for m in repo.misses("softmax")] == ["softmax"]


# ------------------------------------------------------------------ transactions and queries


def test_repository_never_commits(rw_store: Store) -> None:
    commits: list[object] = []
    event.listen(rw_store.engine, "commit", lambda conn: commits.append(conn))
    with Session(rw_store.engine) as session:
        repo = Repository(session)
        repo.ensure_kernel("rms_norm", SCHEMA)
        repo.ensure_platform("test_gpu", device_name="Test GPU")
        run = repo.add_run("manual")
        repo.upsert_preset(
            "rms_norm",
            H100,
            run.id,
            PresetInput(KEY, {"v": 1}, candidates=[({"v": 2}, 1.0)]),
        )
        repo.upsert_preset("rms_norm", H100, run.id, PresetInput(KEY, {"v": 3}))
        repo.quarantine(1, "test")
        repo.record_misses([MissRecord("k", H100, "{}", "no-match", 1, "t", "t")])
        assert repo.count_presets(status=None) == 2  # visible inside the transaction
        session.rollback()
    assert commits == [], "Repository committed; the caller owns the transaction"
    with rw_store.read() as session:
        repo = Repository(session)
        assert repo.list_kernels() == []
        assert repo.list_runs() == []
        assert repo.count_presets(status=None) == 0
        assert repo.misses() == []
        assert repo.find_platform("test_gpu") is None


def test_transaction_rolls_back_on_error(rw_store: Store) -> None:
    with pytest.raises(RuntimeError), rw_store.transaction() as session:
        Repository(session).ensure_kernel("rms_norm", SCHEMA)
        raise RuntimeError("boom")
    with rw_store.read() as session:
        assert Repository(session).list_kernels() == []


def test_active_presets_is_one_query(rw_store: Store) -> None:
    with rw_store.transaction() as session:
        repo = Repository(session)
        repo.ensure_kernel("rms_norm", SCHEMA)
        run = repo.add_run("manual").id
        for hidden in range(1, 301):
            repo.upsert_preset(
                "rms_norm",
                H100,
                run,
                PresetInput({"dtype": "bfloat16", "hidden": hidden}, {"h": hidden}),
            )
        repo.upsert_preset(
            "rms_norm", "nvidia_h200", run, PresetInput(KEY, {"other": 1})
        )

    statements: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)

    with rw_store.read() as session:
        session.execute(text("SELECT 1"))  # the transaction's BEGIN is not the load
        repo = Repository(session)
        event.listen(rw_store.engine, "before_cursor_execute", count)
        try:
            presets = repo.active_presets("rms_norm", H100)
            _ = [p.config for p in presets]  # parsing configs is not a query either
        finally:
            event.remove(rw_store.engine, "before_cursor_execute", count)
    assert len(statements) == 1, (
        f"active_presets ran {len(statements)} statements: {statements}"
    )
    assert len(presets) == 300
    assert {p.platform for p in presets} == {H100}


# ------------------------------------------------------------------ constraints at the SQL level


def _seed_one(rw_store: Store) -> dict[str, int]:
    with rw_store.transaction() as session:
        repo = Repository(session)
        kernel = repo.ensure_kernel("rms_norm", SCHEMA).id
        run = repo.add_run("manual").id
        result = repo.upsert_preset("rms_norm", H100, run, PresetInput(KEY, {"v": 1}))
        preset = repo.get_preset(result.preset_id)
        config = repo.config_id({"v": 1})
        platform = repo.get_platform(H100).id
    return {
        "kernel": kernel,
        "run": run,
        "preset": preset.id,
        "config": config,
        "platform": platform,
    }


INSERT_PRESET = (
    "INSERT INTO presets (kernel_id, platform_id, shape_key, config_id, run_id, status, created_at) "
    "VALUES (:kernel, :platform, :key, :config, :run, :status, 'now')"
)


def test_partial_unique_index_allows_one_active_row_per_key(rw_store: Store) -> None:
    ids = _seed_one(rw_store)
    with rw_store.engine.connect() as conn:
        with pytest.raises(IntegrityError, match="UNIQUE constraint failed"):
            conn.execute(
                text(INSERT_PRESET), {**ids, "key": KEY_TEXT, "status": "active"}
            )
        conn.rollback()
        # history rows for the same key are fine: the index covers active rows only
        for status in ("superseded", "quarantined", "superseded"):
            conn.execute(
                text(INSERT_PRESET), {**ids, "key": KEY_TEXT, "status": status}
            )
        # another platform or key may be active at the same time
        h200 = conn.execute(
            text("SELECT id FROM platforms WHERE name = 'nvidia_h200'")
        ).scalar()
        conn.execute(
            text(INSERT_PRESET),
            {**ids, "platform": h200, "key": KEY_TEXT, "status": "active"},
        )
        conn.commit()
        assert (
            conn.execute(
                text("SELECT COUNT(*) FROM presets WHERE status = 'active'")
            ).scalar()
            == 2
        )


@pytest.mark.parametrize(
    ("sql", "constraint"),
    [
        (
            "INSERT INTO configs (sha256, config_json, created_at) VALUES ('x', '{not json', 'now')",
            "ck_configs_config_json",
        ),
        (
            "INSERT INTO kernels (name, key_schema, description, created_at) VALUES ('k2', 'fields: []', '', 'now')",
            "ck_kernels_key_schema_json",
        ),
        ("UPDATE presets SET shape_key = '{\"hidden\":' ", "ck_presets_shape_key_json"),
        (
            "INSERT INTO preset_misses (kernel, platform, features, reason, count, first_seen_at, last_seen_at) VALUES ('k', 'p', '[1,', 'no-match', 1, 'a', 'a')",
            "ck_preset_misses_features_json",
        ),
        ("UPDATE presets SET status = 'retired'", "ck_presets_status_known"),
        ("UPDATE presets SET latency_ms = 0", "ck_presets_latency_positive"),
        (
            "INSERT INTO tuning_runs (source, imported_at) VALUES ('guess', 'now')",
            "ck_tuning_runs_source_known",
        ),
    ],
)
def test_check_constraints_reject_bad_rows(
    rw_store: Store, sql: str, constraint: str
) -> None:
    _seed_one(rw_store)
    with rw_store.engine.connect() as conn:
        with pytest.raises(
            IntegrityError, match=f"CHECK constraint failed: {constraint}"
        ):
            conn.execute(text(sql))
        conn.rollback()


def test_foreign_keys_are_enforced(rw_store: Store) -> None:
    ids = _seed_one(rw_store)
    with rw_store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        for bad in ({"kernel": 999}, {"platform": 999}, {"config": 999}, {"run": 999}):
            with pytest.raises(IntegrityError, match="FOREIGN KEY constraint failed"):
                conn.execute(
                    text(INSERT_PRESET),
                    {**ids, **bad, "key": '{"x":1}', "status": "active"},
                )
            conn.rollback()
        with pytest.raises(IntegrityError, match="FOREIGN KEY constraint failed"):
            conn.execute(text("DELETE FROM kernels"))  # presets still point at it
        conn.rollback()
    with rw_store.read() as session:
        assert Repository(session).count_presets(status=None) == 1
