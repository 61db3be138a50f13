"""The far-match guard, the near-miss ledger and `presetdb queue`, on real SQLite files:
limits (package default, kernel default, per-field registration, PRESETDB_MAX_DISTANCE),
exactly at the limit and one past it, counting without SQL on the call path, flushing
into preset_near_misses, merging the ledgers of two hosts and ranking them."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from picker_fixtures import H100, RMS_SCHEMA, P, make_db, picker_factory, read_repository, rms_key
from test_picker import StatementCounter, engines_of
from typer.testing import CliRunner

from presetdb.cli import app
from presetdb.errors import KeySpecError, SettingsError
from presetdb.keys import DEFAULT_MAX_DISTANCE, DistanceLimit, KeyField, KeySpec, far_fields
from presetdb.offline import queue as queueing
from presetdb.runtime import ledger as ledger_module
from presetdb.settings import Settings, parse_max_distance
from presetdb.store import migrate
from presetdb.store.records import MissRecord, NearMissRecord
from presetdb.store.repository import Repository

make_picker_fixture = pytest.fixture(picker_factory, name="make_picker")

RMS = KeySpec.from_schema(RMS_SCHEMA)
STORED = rms_key("bfloat16", 4096, 128)


def _features(key: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(key[n] for n in RMS.names)


def _db(tmp_path: Path, *keys: dict[str, Any], name: str = "dep.db") -> Path:
    return make_db(tmp_path / name, [P("rms_norm", H100, k, {"block_sizes": [i + 1]}) for i, k in enumerate(keys)])


# ---------------------------------------------------------------- limits


def test_a_fourth_item_of_key_fields_is_the_fields_limit() -> None:
    from presetdb.helion.args import key_fields

    spec = KeySpec(key_fields(lambda h, t: (h, t), ("hidden", "nearest", "width", 0.25), ("num_tokens", "ceil", "rows")))
    assert spec.limits("k") == {"hidden": 0.25, "num_tokens": DEFAULT_MAX_DISTANCE}
    assert spec.fields[0].max_distance == 0.25 and spec.fields[1].max_distance is None
    near, past = math.log2(1.18), math.log2(1.2)  # 0.239 and 0.263
    assert far_fields({"hidden": near, "num_tokens": 0.0}, spec.limits("k")) == {}
    assert far_fields({"hidden": past, "num_tokens": 0.0}, spec.limits("k")) == {"hidden": past}


def test_limits_most_specific_first() -> None:
    spec = KeySpec(
        (
            KeyField("dtype", "exact"),
            KeyField("hidden", "nearest", max_distance=2.0),
            KeyField("num_tokens", "ceil"),
        ),
        max_distance=1.5,
    )
    assert spec.limits("rms_norm") == {"hidden": 2.0, "num_tokens": 1.5}  # exact fields have none
    assert KeySpec(spec.fields).limits("rms_norm")["num_tokens"] == DEFAULT_MAX_DISTANCE
    star = parse_max_distance("*=3")
    assert spec.limits("rms_norm", star) == {"hidden": 2.0, "num_tokens": 3.0}  # a field's registration beats *
    scoped = parse_max_distance("*=3,rms_norm.*=4,other.num_tokens=0")
    assert spec.limits("rms_norm", scoped) == {"hidden": 2.0, "num_tokens": 4.0}
    fields = parse_max_distance("hidden=0.5,rms_norm.hidden=0.25,num_tokens=inf")
    assert spec.limits("rms_norm", fields) == {"hidden": 0.25, "num_tokens": math.inf}
    assert spec.limits("other", fields) == {"hidden": 0.5, "num_tokens": math.inf}
    # the registration survives the stored schema (what `presetdb pick` reads)
    assert KeySpec.from_schema(spec.to_schema()).limits("rms_norm") == spec.limits("rms_norm")
    with pytest.raises(KeySpecError, match="max_distance must be a number >= 0"):
        KeyField("n", "nearest", max_distance=-1)


def test_far_fields_exactly_at_the_limit_is_not_far() -> None:
    assert far_fields({"hidden": 1.0, "num_tokens": 0.0}, {"hidden": 1.0, "num_tokens": 1.0}) == {}
    assert far_fields({"hidden": 1.0 + 1e-9}, {"hidden": 1.0}) == {"hidden": 1.0 + 1e-9}


@pytest.mark.parametrize(
    ("variable", "value", "words"),
    [
        ("PRESETDB_MAX_DISTANCE", "hidden=-1", "PRESETDB_MAX_DISTANCE: 'hidden=-1': the limit must be"),
        ("PRESETDB_MAX_DISTANCE", "hidden", "PRESETDB_MAX_DISTANCE: 'hidden': the limit must be"),
        ("PRESETDB_MAX_DISTANCE", "a.b.c=1", "does not name a field"),
        ("PRESETDB_MAX_DISTANCE", "hidden=1,hidden=2", "hidden is given twice"),
        ("PRESETDB_ON_FAR", "sometimes", "PRESETDB_ON_FAR='sometimes' is not valid; use one of: default, nearest, rerank"),
        ("PRESETDB_ON_MISS", "guess", "use one of: default, strict, autotune, rerank"),
        ("PRESETDB_RERANK_K", "-2", "PRESETDB_RERANK_K='-2' is not valid; use a whole number >= 0"),
        ("PRESETDB_RERANK_BUDGET_S", "0", "PRESETDB_RERANK_BUDGET_S='0' is not valid; use a number of seconds > 0"),
    ],
)
def test_settings_are_parsed_strictly(monkeypatch: pytest.MonkeyPatch, variable: str, value: str, words: str) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError) as info:
        Settings.from_env()
    assert words in str(info.value)


def test_settings_defaults_and_values(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = Settings.from_env()
    assert (settings.on_far, settings.max_distance, settings.rerank_k, settings.rerank_budget_s) == ("default", (), 8, 30.0)
    monkeypatch.setenv("PRESETDB_MAX_DISTANCE", " rms_norm.num_tokens=3 , 2 ")
    monkeypatch.setenv("PRESETDB_ON_FAR", "Rerank")
    settings = Settings.from_env()
    assert settings.max_distance == (DistanceLimit("rms_norm", "num_tokens", 3.0), DistanceLimit(None, "*", 2.0))
    assert settings.on_far == "rerank"


# ---------------------------------------------------------------- the picker's verdict


@pytest.mark.parametrize(
    ("env", "hidden", "far"),
    [
        (None, 8192, False),  # log2 distance exactly 1 = the package default: not far
        (None, 8193, True),  # one past it
        (None, 2048, False),
        (None, 2047, True),
        ("hidden=2", 16384, False),
        ("hidden=2", 16385, True),
        ("rms_norm.hidden=0", 4097, True),  # kernel-scoped, 0: only the stored value itself
        ("other.hidden=0", 4097, False),  # another kernel's limit does not apply
        ("*=inf", 10**9, False),
    ],
)
def test_far_boundaries_through_the_picker(
    make_picker: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, env: str | None, hidden: int, far: bool
) -> None:
    if env is not None:
        monkeypatch.setenv("PRESETDB_MAX_DISTANCE", env)
    picker = make_picker(deployment=_db(tmp_path, STORED))
    choice = picker.resolve("rms_norm", RMS, _features(rms_key("bfloat16", hidden, 128)))
    assert choice is not None and choice.preset.key == STORED and choice.match == "nearest"
    assert choice.far is far
    if far:
        distance, limit = choice.far_fields["hidden"]
        assert distance == pytest.approx(abs(math.log2(hidden) - 12)) and limit == picker.limits("rms_norm", RMS)["hidden"]
        assert f"far: hidden {distance:.3g} > max {limit:.3g} (log2 distance)" in choice.describe()
    else:
        assert "far" not in choice.describe()


def test_per_field_registration_override(make_picker: Any, tmp_path: Path) -> None:
    spec = KeySpec(
        (KeyField("dtype", "exact"), KeyField("hidden", "nearest", max_distance=3.0), KeyField("num_tokens", "ceil"))
    )
    picker = make_picker(deployment=_db(tmp_path, STORED))
    at = picker.resolve("rms_norm", spec, _features(rms_key("bfloat16", 512, 128)))  # 3 away
    past = picker.resolve("rms_norm", spec, _features(rms_key("bfloat16", 511, 128)))
    tokens = picker.resolve("rms_norm", spec, _features(rms_key("bfloat16", 4096, 63)))  # ceil 128: 1.02 away
    assert at is not None and past is not None and tokens is not None
    assert (at.far, past.far, tokens.far) == (False, True, True)
    assert list(tokens.far_fields) == ["num_tokens"]


def test_pick_says_far_with_the_distance(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db = _db(tmp_path, STORED)
    args = ["pick", "--kernel", "rms_norm", "--platform", H100, "--db", str(db),
            "--shape", json.dumps(rms_key("bfloat16", 32768, 128))]
    out = CliRunner().invoke(app, args, env={"COLUMNS": "300"})
    assert out.exit_code == 0, out.output
    assert "far:        yes, far: hidden 3 > max 1 (log2 distance); PRESETDB_ON_FAR=default: a call gets Helion's default config instead" in out.output
    near = CliRunner().invoke(app, args, env={"COLUMNS": "300", "PRESETDB_MAX_DISTANCE": "hidden=3"})
    assert "far:        no (max log2 distance per field: hidden 3, num_tokens 1)" in near.output


# ---------------------------------------------------------------- the near-miss ledger


def _near_misses(path: Path) -> list[NearMissRecord]:
    return read_repository(path, Repository.near_misses)


def test_near_misses_are_counted_without_sql_and_flushed(
    make_picker: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ledger_module, "FLUSH_SECONDS", 3600)  # flushed by hand here
    overlay = tmp_path / "overlay.db"
    picker = make_picker(overlay=overlay, deployment=_db(tmp_path, STORED))
    exact = picker.resolve("rms_norm", RMS, _features(STORED))
    near = picker.resolve("rms_norm", RMS, _features(rms_key("bfloat16", 5000, 100)))
    far = picker.resolve("rms_norm", RMS, _features(rms_key("bfloat16", 65536, 100)))
    assert exact is not None and near is not None and far is not None
    assert exact.tally is None  # an exact key of the own platform: nothing to count
    sql = StatementCounter(engines_of(picker))
    try:
        for _ in range(5):
            near.tally.hit()  # what hooks.serve and the call memo do per call
        for _ in range(2):
            far.tally.hit()
        # the picker's memo hands back the same tally: counts survive re-resolves
        again = picker.resolve("rms_norm", RMS, _features(rms_key("bfloat16", 5000, 100)))
        assert again is not None and again.tally is near.tally
        assert len(sql) == 0, f"counting near misses ran SQL: {sql.statements}"
    finally:
        sql.remove()
    pending = {r.requested_key: r.count for r in picker.ledger.pending_near_misses()}
    assert pending == {'{"dtype":"bfloat16","hidden":5000,"num_tokens":100}': 5,
                       '{"dtype":"bfloat16","hidden":65536,"num_tokens":100}': 2}
    assert picker.flush_misses() == 2
    assert picker.ledger.pending_near_misses() == []
    near.tally.hit()
    assert picker.flush_misses() == 1  # only what was counted since
    rows = {r.requested_key: r for r in _near_misses(overlay)}
    n = rows['{"dtype":"bfloat16","hidden":5000,"num_tokens":100}']
    assert (n.count, n.match, n.far, n.served_key, n.served_platform, n.layer) == (
        6, "nearest", False, json.dumps(STORED, sort_keys=True, separators=(",", ":")), H100, "deployment",
    )
    assert json.loads(n.distances) == pytest.approx({"hidden": math.log2(5000) - 12, "num_tokens": math.log2(128 / 100)})
    f = rows['{"dtype":"bfloat16","hidden":65536,"num_tokens":100}']
    assert f.far and json.loads(f.far_fields) == {"hidden": [4.0, 1.0]} and f.count == 2
    assert f.first_seen_at <= f.last_seen_at


def test_a_process_that_only_resolved_writes_no_overlay(make_picker: Any, tmp_path: Path) -> None:
    overlay = tmp_path / "never.db"
    picker = make_picker(deployment=_db(tmp_path, STORED))
    picker.ledger.path = overlay  # writable, but nothing was called
    assert picker.resolve("rms_norm", RMS, _features(rms_key("bfloat16", 5000, 100))) is not None
    assert picker.flush_misses() == 0
    assert not overlay.exists()


# ---------------------------------------------------------------- the queue


def _ledger(path: Path, near: list[NearMissRecord], misses: list[MissRecord] = ()) -> Path:  # type: ignore[assignment]
    migrate.upgrade(path, seed_data=False)
    store = migrate.open_store(path, "rw")
    try:
        with store.transaction() as session:
            repo = Repository(session)
            repo.record_near_misses(near)
            if misses:
                repo.record_misses(misses)
    finally:
        store.dispose()
    return path


def _near(key: str, count: int, distance: float, far: bool, served: str = '{"hidden":1}', kernel: str = "rms_norm",
          seen: str = "2026-12-01T00:00:00.000000Z") -> NearMissRecord:
    fields = json.dumps({"hidden": [distance, 1.0]} if far else {})
    return NearMissRecord(kernel, H100, key, H100, served, "nearest", "default", json.dumps({"hidden": distance}),
                          distance, far, fields, count, seen, seen)


def test_queue_ranks_far_first_then_calls_times_distance(tmp_path: Path) -> None:
    db = _ledger(
        tmp_path / "a.db",
        [
            _near('{"hidden":3}', 1000, 0.5, False),  # score 1500
            _near('{"hidden":5}', 10, 4.0, True),  # far: first, score 50
            _near('{"hidden":6}', 100, 2.0, True),  # far, score 300
            _near('{"hidden":7}', 400, 3.0, False),  # score 1600
            _near('{"n":1}', 5, 9.0, True, kernel="softmax"),
        ],
        [MissRecord("rms_norm", H100, '{"hidden":9}', "no-match", 2, "2026-12-01T00:00:00.000000Z", "2026-12-02T00:00:00.000000Z")],
    )
    items = queueing.build_queue([db], kernel="rms_norm")
    assert [i.key for i in items] == ['{"hidden":6}', '{"hidden":5}', '{"hidden":9}', '{"hidden":7}', '{"hidden":3}']
    assert [i.far for i in items] == [True, True, True, False, False]
    miss = items[2]
    assert (miss.misses, miss.distance, miss.score) == (2, queueing.MISS_DISTANCE, 2 * (1 + queueing.MISS_DISTANCE))
    # every kernel: softmax's far key scores 5 x (1 + 9) = 50 like hidden 5's, which has more calls
    assert [i.key for i in queueing.build_queue([db], top=3)] == ['{"hidden":6}', '{"hidden":5}', '{"n":1}']


def test_ledgers_of_two_hosts_merge(tmp_path: Path) -> None:
    a = _ledger(tmp_path / "a.db", [_near('{"hidden":5}', 10, 2.0, True, seen="2026-12-01T00:00:00.000000Z")])
    b = _ledger(
        tmp_path / "b.db",
        [
            _near('{"hidden":5}', 7, 2.0, True, seen="2026-12-03T00:00:00.000000Z"),
            _near('{"hidden":5}', 1, 2.5, True, served='{"hidden":2}', seen="2026-12-02T00:00:00.000000Z"),
        ],
    )
    (item,) = queueing.build_queue([a, b])
    assert (item.count, item.distance, item.far) == (18, 2.5, True)
    assert (item.first_seen_at, item.last_seen_at) == ("2026-12-01T00:00:00.000000Z", "2026-12-03T00:00:00.000000Z")
    assert item.sources == [str(a), str(b)]
    assert item.served == [f'{H100}:{{"hidden":1}} (nearest)', f'{H100}:{{"hidden":2}} (nearest)']
    result = CliRunner().invoke(app, ["queue", "--db", str(a), "--db", str(b), "--format", "json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert doc["format"] == queueing.QUEUE_FORMAT and doc["ledgers"] == [str(a), str(b)]
    assert [(i["key"], i["count"], i["score"]) for i in doc["items"]] == [({"hidden": 5}, 18, 63.0)]
    table = CliRunner().invoke(app, ["queue", "--db", str(a), "--db", str(b)], env={"COLUMNS": "250"})
    assert table.exit_code == 0 and "far hidden 2.5>1" in table.output and "18" in table.output


def test_queue_file_and_dbs_become_shapes(tmp_path: Path) -> None:
    a = _ledger(tmp_path / "a.db", [_near('{"hidden":5}', 10, 2.0, True), _near('{"n":1}', 5, 9.0, True, kernel="softmax")])
    out = CliRunner().invoke(app, ["queue", "--db", str(a), "--format", "json"])
    queue_file = tmp_path / "queue.json"
    queue_file.write_text(out.output)
    assert queueing.shapes_from_queue([queue_file], "rms_norm") == [{"hidden": 5}]
    assert queueing.shapes_from_queue([a], "softmax") == [{"n": 1}]
    assert queueing.shapes_from_queue([queue_file, a], "rms_norm") == [{"hidden": 5}]  # once
    bad = tmp_path / "bad.json"
    bad.write_text('{"items": []}')
    with pytest.raises(queueing.QueueError, match="bad.json: not a presetdb-queue/1 file"):
        queueing.shapes_from_queue([bad], "rms_norm")


def test_queue_without_an_overlay_says_what_to_give(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["queue"])
    assert result.exit_code == 2 and "give --db PATH" in result.output
