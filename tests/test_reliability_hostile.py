"""Hostile input to the importers: whatever a results file holds, `presetdb import`
either imports all of it or refuses it with errors naming the file, row and field, and
writes nothing (the db's bytes and rows are unchanged).

Hypothesis builds presetdb-results/1 and vLLM files of valid entries with one defect
planted at a random row: malformed JSON, wrong types, NaN / negative / huge timings,
unknown config keys, wrong key fields, a shape key given twice. Enormous files (50 MB)
are read with bounded memory. Undecodable bytes, repeated member names and config
values Triton cannot run are refused too.
"""

from __future__ import annotations

import copy
import json
import math
import shutil
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from import_fixtures import RESULTS, registry
from reliability_helpers import (
    active_count,
    key_for,
    report,
    results_doc,
    sha256,
    table_dump,
)
from typer.testing import CliRunner

from presetdb.cli import app
from presetdb.errors import ImportValidationError, PresetDBError
from presetdb.offline.importers import import_files
from presetdb.store import migrate

EXAMPLES = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    derandomize=False,
)


class Target:
    """A db holding the fixture's presets; every refused import must leave it as it is."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.db = folder / "target.db"
        migrate.upgrade(self.db, seed_data=False)
        import_files(self.db, [RESULTS], resolver=registry())
        self.sha = sha256(self.db)
        self.rows = table_dump(self.db)
        self.n = 0

    def scratch(self) -> Path:
        """A byte-identical copy of the target db."""
        self.n += 1
        copy = self.folder / f"scratch-{self.n}.db"
        shutil.copy(self.db, copy)
        return copy

    def file(self, suffix: str = ".json") -> Path:
        self.n += 1
        return self.folder / f"hostile-{self.n}{suffix}"

    def assert_unchanged(self) -> None:
        assert sha256(self.db) == self.sha, "the db file changed"
        assert table_dump(self.db) == self.rows, "the db's rows changed"

    def refuse(self, path: Path) -> ImportValidationError:
        """Import `path` into a fresh copy of the target db: it must be refused with
        ImportValidationError naming the file, and the copy must be unchanged."""
        db = self.scratch()
        with pytest.raises(ImportValidationError) as info:
            import_files(db, [path], resolver=registry())
        assert sha256(db) == self.sha, "the db file changed"
        assert table_dump(db) == self.rows, "the db's rows changed"
        assert path.name in str(info.value)
        db.unlink()
        return info.value


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Target:
    return Target(tmp_path_factory.mktemp("hostile"))


# ---------------------------------------------------------------- defects


def _set(field: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def edit(entry: dict[str, Any]) -> None:
        entry[field] = value

    return edit


NOT_A_NUMBER = st.one_of(st.text(max_size=5), st.booleans(), st.lists(st.integers(), max_size=2), st.just({}))
BAD_TIMING = st.one_of(
    st.sampled_from([math.nan, math.inf, -math.inf, 0.0, -0.0]),
    st.floats(max_value=-1e-9, allow_nan=False),
    st.floats(min_value=60_000.001, allow_infinity=False, allow_nan=False),
    st.integers(max_value=-1),
    st.integers(min_value=60_001, max_value=10**18),
    NOT_A_NUMBER,
)


@st.composite
def defects(draw: st.DrawFn) -> tuple[str, Callable[[dict[str, Any]], None]]:
    """(field the error must name, edit that plants the defect in one entry)."""
    kind = draw(
        st.sampled_from(
            ["timing", "configs_tried", "tuning_seconds", "config-type", "config-unknown-key",
             "config-bad-value", "key-missing-field", "key-extra-field", "key-bad-value",
             "key-type", "entry-member", "entry-type", "no-config"]
        )
    )
    if kind == "timing":
        field = draw(st.sampled_from(["latency_ms", "default_ms", "reference_ms"]))
        return field, _set(field, draw(BAD_TIMING))
    if kind == "configs_tried":
        value = draw(st.one_of(st.integers(max_value=-1), st.floats(allow_nan=True).filter(lambda v: v != int(v) if math.isfinite(v) else True), NOT_A_NUMBER))
        return "configs_tried", _set("configs_tried", value)
    if kind == "tuning_seconds":
        value = draw(st.one_of(st.sampled_from([math.nan, math.inf]), st.floats(max_value=-1e-9, allow_nan=False), st.floats(min_value=31 * 24 * 3600.0, allow_infinity=False), NOT_A_NUMBER))
        return "tuning_seconds", _set("tuning_seconds", value)
    if kind == "config-type":
        return "config", _set("config", draw(st.one_of(st.integers(), st.text(max_size=8), st.lists(st.integers(), max_size=3), st.none())))
    if kind == "config-unknown-key":
        name = "zz_" + draw(st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=12))
        value = draw(st.one_of(st.integers(), st.text(max_size=4), st.booleans()))

        def unknown(entry: dict[str, Any]) -> None:
            entry["config"] = {**entry["config"], name: value}

        return "config", unknown
    if kind == "config-bad-value":
        field, value = draw(
            st.sampled_from(
                [("block_sizes", [-1]), ("block_sizes", [0]), ("block_sizes", [3]),
                 ("block_sizes", [1, 2, 3]), ("block_sizes", "x"), ("pid_type", "sideways"),
                 ("reduction_loops", [-5]), ("reduction_loops", "x")]
            )
        )

        def bad(entry: dict[str, Any]) -> None:
            entry["config"] = {**entry["config"], field: value}

        return "config", bad
    if kind == "key-missing-field":
        gone = draw(st.sampled_from(["dtype", "hidden", "num_tokens"]))

        def missing(entry: dict[str, Any]) -> None:
            entry["key"] = {k: v for k, v in entry["key"].items() if k != gone}

        return "key", missing
    if kind == "key-extra-field":
        extra = draw(st.text(alphabet="abcdefghijklmnopqrstuvwxyz", min_size=1, max_size=8).filter(lambda s: s not in ("dtype", "hidden")))
        assume(extra != "num_tokens")
        return "key", lambda entry: entry["key"].__setitem__(extra, 1)
    if kind == "key-bad-value":
        field = draw(st.sampled_from(["hidden", "num_tokens"]))
        value = draw(st.one_of(st.integers(max_value=-1), st.sampled_from([math.nan, math.inf, -math.inf]), st.text(max_size=5), st.booleans(), st.lists(st.integers(), max_size=2), st.none()))
        return "key", lambda entry: entry["key"].__setitem__(field, value)
    if kind == "key-type":
        return "key", _set("key", draw(st.one_of(st.integers(), st.text(max_size=5), st.lists(st.integers(), max_size=2))))
    if kind == "entry-member":
        name = "zz" + draw(st.text(alphabet="abcdefghijklmnopqrstuvwxyz", max_size=6))
        return "top level", _set(name, draw(st.integers()))
    if kind == "entry-type":
        value = draw(st.one_of(st.integers(), st.text(max_size=4), st.lists(st.integers(), max_size=2)))
        return "entry", lambda entry: entry.clear() or entry.update({"__replace__": value})
    return "config", lambda entry: entry.pop("config")


def _plant(doc: dict[str, Any], row: int, edit: Callable[[dict[str, Any]], None]) -> None:
    entry = copy.deepcopy(doc["entries"][row])
    edit(entry)
    doc["entries"][row] = entry.get("__replace__", entry)


@given(
    size=st.integers(min_value=1, max_value=6),
    offset=st.integers(min_value=0, max_value=5_000),
    data=st.data(),
)
@EXAMPLES
def test_one_bad_row_refuses_the_whole_file(target: Target, size: int, offset: int, data: st.DataObject) -> None:
    doc = results_doc(offset, size)
    row = data.draw(st.integers(min_value=0, max_value=size - 1), label="row")
    field, edit = data.draw(defects(), label="defect")
    _plant(doc, row, edit)
    path = target.file()
    path.write_text(json.dumps(doc))  # NaN/Infinity become the tokens Python's json reads
    error = target.refuse(path)
    lines = [p for p in error.problems if f"row {row + 1} (entries[{row}])" in p]
    assert lines, f"no problem names row {row + 1}: {error.problems}"
    if field != "entry":
        assert any(field in p for p in lines), f"no problem names {field!r}: {lines}"


@given(size=st.integers(min_value=2, max_value=6), offset=st.integers(min_value=0, max_value=5_000), data=st.data())
@EXAMPLES
def test_a_shape_key_twice_in_one_file_is_refused(target: Target, size: int, offset: int, data: st.DataObject) -> None:
    doc = results_doc(offset, size)
    first = data.draw(st.integers(min_value=0, max_value=size - 2), label="first")
    again = data.draw(st.integers(min_value=first + 1, max_value=size - 1), label="again")
    doc["entries"][again]["key"] = dict(reversed(list(doc["entries"][first]["key"].items())))  # same key, other order
    path = target.file()
    path.write_text(json.dumps(doc))
    error = target.refuse(path)
    assert any(f"row {again + 1}" in p and f"duplicate of row {first + 1}" in p for p in error.problems), error.problems


@given(size=st.integers(min_value=1, max_value=4), data=st.data())
@EXAMPLES
def test_truncated_json_is_refused_as_not_json(target: Target, size: int, data: st.DataObject) -> None:
    text = json.dumps(results_doc(7_000, size), indent=data.draw(st.sampled_from([None, 2])))
    cut = data.draw(st.integers(min_value=1, max_value=len(text) - 1), label="cut")
    path = target.file()
    path.write_text(text[:cut])
    error = target.refuse(path)
    assert "not valid JSON" in str(error) or "presetdb-results/1" in str(error) or "format" in str(error), error


@given(size=st.integers(min_value=1, max_value=3), data=st.data())
@EXAMPLES
def test_any_one_character_change_imports_whole_or_not_at_all(target: Target, size: int, data: st.DataObject) -> None:
    """Insert, delete or replace one character anywhere: the result may even be valid
    JSON with other values; then the import is all of the file or none of it. Each
    example imports into a fresh copy of the target db."""
    doc = results_doc(8_000, size)
    text = json.dumps(doc)
    at = data.draw(st.integers(min_value=0, max_value=len(text) - 1), label="at")
    how = data.draw(st.sampled_from(["insert", "delete", "replace"]), label="how")
    char = data.draw(st.sampled_from(list('{}[],:"\\0123456789.-eE tfnNaI')), label="char")
    mutated = text[:at] + (char if how != "delete" else "") + text[at + (0 if how == "insert" else 1):]
    assume(mutated != text)
    path = target.file()
    path.write_text(mutated)
    copy_db = target.scratch()
    before = active_count(copy_db)
    try:
        outcome = import_files(copy_db, [path], resolver=registry())
    except PresetDBError:
        assert sha256(copy_db) == target.sha and table_dump(copy_db) == target.rows
        return
    # Accepted: every row went in, in one transaction.
    assert sum(outcome.counts[k] for k in ("added", "superseded", "unchanged")) == size
    assert active_count(copy_db) == before + outcome.counts["added"]


@given(data=st.data())
@EXAMPLES
def test_vllm_file_with_one_bad_entry_is_refused(target: Target, data: st.DataObject) -> None:
    config = results_doc(0, 1)["entries"][0]["config"]
    size = data.draw(st.integers(min_value=1, max_value=5), label="size")
    entries: list[Any] = [{"key": key_for(9_000 + i), "config": config} for i in range(size)]
    row = data.draw(st.integers(min_value=0, max_value=size - 1), label="row")
    bad = data.draw(
        st.sampled_from(
            [
                ("key", lambda e: e.update(key=[1, 2])),
                ("key", lambda e: e["key"].update(hidden=-1)),
                ("key", lambda e: e["key"].pop("dtype")),
                ("config", lambda e: e.update(config="fast")),
                ("config", lambda e: e["config"].update(zz_unknown=1)),
                ("entry", lambda e: e.update(latency_ms=1.0)),  # vLLM files carry no timings
                ("key", lambda e: e.update(key=dict(entries[(row + 1) % size]["key"])) if size > 1 else e.update(key="x")),
            ]
        ),
        label="defect",
    )
    field, edit = bad
    edit(entries[row])
    path = target.folder / "vllm" / "rms_norm" / "nvidia_h100.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(entries))
    error = target.refuse(path)
    assert any(f"row {row + 1}" in p or f"row {(row + 1) % size + 1}" in p for p in error.problems), error.problems
    assert any(field in p for p in error.problems), error.problems


def test_cli_import_of_a_bad_file_exits_1_naming_row_and_field(target: Target) -> None:
    doc = results_doc(0, 3)
    doc["entries"][2]["latency_ms"] = -3.0
    path = target.file()
    path.write_text(json.dumps(doc))
    result = CliRunner().invoke(app, ["import", str(path), "--db", str(target.db)])
    assert result.exit_code != 0
    assert isinstance(result.exception, ImportValidationError)
    message = str(result.exception)
    assert "nothing was written" in message and "row 3 (entries[2]): latency_ms: must be > 0" in message
    target.assert_unchanged()


# ---------------------------------------------------------------- enormous files


def _enormous(path: Path, fmt: str, megabytes: int = 50) -> int:
    """`megabytes` MB of entries, each with a bad config (a number: refused without
    asking Helion) and a 10 kB member the format does not allow."""
    pad = "x" * 10_000
    count = megabytes * 100  # each entry is a little over 10 kB
    with path.open("w", encoding="utf-8") as fh:
        if fmt == "presetdb":
            header = results_doc(0, 0)
            fh.write(json.dumps(header)[:-2] + "\n")  # drop the closing "]}" of "entries": []
        else:
            fh.write("[\n")
        for i in range(count):
            entry = {"key": key_for(i), "config": i, "pad": pad}
            fh.write(("," if i else "") + json.dumps(entry) + "\n")
        fh.write("]}\n" if fmt == "presetdb" else "]\n")
    return count


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["presetdb", "vllm"])
def test_enormous_file_is_read_with_bounded_memory(target: Target, tmp_path: Path, fmt: str) -> None:
    if fmt == "presetdb":
        path = tmp_path / "enormous.json"
    else:
        path = tmp_path / "vllm" / "rms_norm" / "nvidia_h100.json"
        path.parent.mkdir(parents=True)
    count = _enormous(path, fmt)
    size = path.stat().st_size
    assert size >= 50_000_000
    tracemalloc.start()
    try:
        error = target.refuse(path)
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert error.problems and len(error.problems) >= count  # every row judged, each named
    assert "row 1 (" in error.problems[0] and f"row {count} (" in error.problems[-1]
    # The whole file as one str would be >= 50 MB; streaming keeps a window of entries.
    assert peak < 20_000_000, f"peak {peak / 1e6:.1f} MB of Python memory for a {size / 1e6:.0f} MB file"
    report(
        f"hostile.enormous_{fmt}",
        {"file_mb": round(size / 1e6, 1), "entries": count, "peak_python_mb": round(peak / 1e6, 1)},
    )


# ---------------------------------------------------------------- undecodable input, bad values


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(b'{"format": "presetdb-results/1", "\xff\xfe": 1}', id="invalid-utf8"),
        pytest.param(b'{"format": "presetdb-results/1", "run": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", id="deep-nesting"),
        pytest.param(
            json.dumps(results_doc(0, 1)).replace('"num_tokens": 2', '"num_tokens": ' + "9" * 5000, 1).encode(),
            id="5000-digit-int",
        ),
    ],
)
def test_unreadable_bytes_are_an_import_error(target: Target, content: bytes) -> None:
    path = target.file()
    path.write_bytes(content)
    target.refuse(path)


@pytest.mark.parametrize(
    ("field", "value"),
    [("num_warps", -4), ("num_warps", 3), ("num_stages", -2), ("indexing", ["teleport"] * 7),
     ("load_eviction_policies", ["bogus"] * 5)],
)
def test_config_values_helion_cannot_run_are_refused_at_import(target: Target, field: str, value: Any) -> None:
    doc = results_doc(0, 1)
    doc["entries"][0]["config"][field] = value
    path = target.file()
    path.write_text(json.dumps(doc))
    target.refuse(path)


def test_a_member_given_twice_in_one_object_is_refused(target: Target) -> None:
    text = json.dumps(results_doc(0, 2))
    at = text.index('"latency_ms"')
    path = target.file()
    path.write_text(text[:at] + '"latency_ms": -5, ' + text[at:])  # -5 hidden by the valid value
    target.refuse(path)
