"""Property tests for shape keys and KeyIndex lookups, against brute-force oracles."""

from __future__ import annotations

import json
import math
import random
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from presetdb.errors import KeySpecError
from presetdb.keys import (
    DEFAULT_KEY,
    KeyField,
    KeyIndex,
    KeySpec,
    canonical_key,
    parse_key,
)

# Local to this module (a global profile would change other modules' property tests).
fast = settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)

# Powers of two half the time: tuned sizes usually are, and they make exact log2 ties.
sizes = st.one_of(
    st.integers(min_value=0, max_value=20).map(lambda e: 1 << e),
    st.integers(min_value=1, max_value=1 << 20),
)
stored_sizes = st.sets(sizes, min_size=1, max_size=12)
DTYPES = ("bfloat16", "float16", "float32", "float8_e4m3fn")


def log2(v: float) -> float:
    return math.log2(v) if v > 1 else 0.0


def one_field(policy: str, stored: set[int]) -> KeyIndex[int]:
    spec = KeySpec((KeyField("n", policy),))  # type: ignore[arg-type]
    return KeyIndex(spec, [({"n": v}, v) for v in stored])


def oracle(policy: str, stored: set[int], actual: int) -> int:
    if policy == "ceil":
        above = [v for v in stored if v >= actual]
        return min(above) if above else max(stored)
    if policy == "floor":
        below = [v for v in stored if v <= actual]
        return max(below) if below else min(stored)
    # nearest in log2 space, a tie goes to the larger value
    return min(stored, key=lambda v: (abs(log2(v) - log2(actual)), -v))


# ------------------------------------------------------------------ one numeric field


@fast
@given(stored_sizes, sizes)
def test_ceil_smallest_value_at_least_actual_else_largest(
    stored: set[int], actual: int
) -> None:
    match = one_field("ceil", stored).lookup((actual,))
    assert match is not None
    chosen = match.payload
    if any(v >= actual for v in stored):
        assert chosen >= actual, (
            "ceil picked a smaller value although a larger one is stored"
        )
        assert not any(actual <= v < chosen for v in stored)
    else:
        assert chosen == max(stored)
    assert chosen == oracle("ceil", stored, actual)
    assert match.kind == ("exact" if chosen == actual else "ceil")
    assert match.distances["n"] == pytest.approx(abs(log2(chosen) - log2(actual)))


@fast
@given(stored_sizes, sizes)
def test_floor_largest_value_at_most_actual_else_smallest(
    stored: set[int], actual: int
) -> None:
    match = one_field("floor", stored).lookup((actual,))
    assert match is not None
    chosen = match.payload
    if any(v <= actual for v in stored):
        assert chosen <= actual, (
            "floor picked a larger value although a smaller one is stored"
        )
        assert not any(chosen < v <= actual for v in stored)
    else:
        assert chosen == min(stored)
    assert chosen == oracle("floor", stored, actual)
    assert match.kind == ("exact" if chosen == actual else "floor")


@fast
@given(stored_sizes, sizes)
def test_nearest_minimises_log2_distance(stored: set[int], actual: int) -> None:
    match = one_field("nearest", stored).lookup((actual,))
    assert match is not None
    chosen = match.payload
    best = min(abs(log2(v) - log2(actual)) for v in stored)
    assert abs(log2(chosen) - log2(actual)) == best
    ties = [v for v in stored if abs(log2(v) - log2(actual)) == best]
    assert chosen == max(ties), "a tie must go to the larger value"
    assert match.distances["n"] == pytest.approx(best)


@fast
@given(st.integers(0, 18), st.integers(1, 10), st.sets(sizes, max_size=8))
def test_nearest_tie_goes_to_the_larger_value(
    low_exp: int, half_gap: int, others: set[int]
) -> None:
    low, high = 1 << low_exp, 1 << (low_exp + 2 * half_gap)
    actual = 1 << (low_exp + half_gap)  # exactly half way between low and high in log2
    stored = {low, high} | {v for v in others if not low < v < high}
    match = one_field("nearest", stored).lookup((actual,))
    assert match is not None and match.payload == high
    assert match.distances["n"] == half_gap


@pytest.mark.parametrize(
    ("stored", "actual", "expected"),
    [({64, 256}, 128, 256), ({64, 256}, 127, 64), ({1, 4}, 2, 4), ({1000}, 1, 1000)],
)
def test_nearest_examples(stored: set[int], actual: int, expected: int) -> None:
    match = one_field("nearest", stored).lookup((actual,))
    assert match is not None and match.payload == expected


@fast
@given(st.sampled_from(["ceil", "floor", "nearest"]), stored_sizes)
def test_a_stored_value_matches_itself_exactly(policy: str, stored: set[int]) -> None:
    index = one_field(policy, stored)
    for v in stored:
        match = index.lookup((v,))
        assert match is not None
        assert (match.payload, match.kind, match.distances) == (v, "exact", {"n": 0.0})


# ------------------------------------------------------------------ several fields

SPEC = KeySpec(
    (
        KeyField("dtype", "exact"),
        KeyField("hidden", "nearest"),
        KeyField("num_tokens", "ceil"),
    )
)
keys = st.fixed_dictionaries(
    {"dtype": st.sampled_from(DTYPES[:2]), "hidden": sizes, "num_tokens": sizes}
)
features = st.tuples(st.sampled_from(DTYPES), sizes, sizes)


def build(entries: list[dict[str, Any]], default: bool) -> KeyIndex[str]:
    pairs: list[tuple[dict[str, Any], str]] = [(k, canonical_key(k)) for k in entries]
    if default:
        pairs.append(({}, DEFAULT_KEY))
    return KeyIndex(SPEC, pairs)


@fast
@given(st.lists(keys, max_size=15), features, st.booleans())
def test_result_is_a_stored_key_and_exact_never_crosses_categories(
    entries: list[dict[str, Any]], feats: tuple[str, int, int], default: bool
) -> None:
    index = build(entries, default)
    match = index.lookup(feats)
    stored = {canonical_key(k) for k in entries}
    dtypes = {k["dtype"] for k in entries}
    if feats[0] not in dtypes:
        # a dtype never tuned: the default entry or nothing, never another dtype's config
        if default:
            assert match is not None and (match.key, match.kind, match.payload) == (
                DEFAULT_KEY,
                "default",
                DEFAULT_KEY,
            )
        else:
            assert match is None
        return
    assert match is not None
    assert match.key in stored and match.payload == match.key
    chosen = json.loads(match.key)
    assert chosen["dtype"] == feats[0]
    # fields are matched in order: hidden among this dtype's keys, then tokens among those
    same_dtype = [k for k in entries if k["dtype"] == feats[0]]
    hidden = oracle("nearest", {k["hidden"] for k in same_dtype}, feats[1])
    tokens = oracle(
        "ceil", {k["num_tokens"] for k in same_dtype if k["hidden"] == hidden}, feats[2]
    )
    assert (chosen["hidden"], chosen["num_tokens"]) == (hidden, tokens)


@fast
@given(
    st.lists(keys, min_size=1, max_size=15),
    st.lists(features, min_size=1, max_size=5),
    st.booleans(),
    st.randoms(),
)
def test_lookup_is_deterministic_regardless_of_insertion_order(
    entries: list[dict[str, Any]],
    queries: list[tuple[str, int, int]],
    default: bool,
    rnd: random.Random,
) -> None:
    unique = list({canonical_key(k): k for k in entries}.values())
    shuffled = unique[:]
    rnd.shuffle(shuffled)
    a, b = build(unique, default), build(shuffled, default)
    for q in queries:
        first, second, again = a.lookup(q), b.lookup(q), a.lookup(q)
        assert first == second == again


def test_empty_index_and_default_only() -> None:
    assert KeyIndex(SPEC, []).lookup(("bfloat16", 1, 1)) is None
    only_default = KeyIndex(SPEC, [({}, "d")])
    match = only_default.lookup(("bfloat16", 1, 1))
    assert match is not None and (match.key, match.payload, match.kind) == (
        "{}",
        "d",
        "default",
    )


def test_stored_key_that_breaks_the_spec_is_refused() -> None:
    with pytest.raises(KeySpecError, match="missing"):
        KeyIndex(SPEC, [({"dtype": "bfloat16", "hidden": 1}, "x")])


# ------------------------------------------------------------------ canonical keys

names = st.text(min_size=1, max_size=12)
values = st.one_of(
    st.text(max_size=12),
    st.integers(min_value=-(1 << 53), max_value=1 << 53),
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(),
)
shape_keys = st.dictionaries(names, values, max_size=8)


@fast
@given(shape_keys)
def test_canonical_key_round_trip(key: dict[str, Any]) -> None:
    text = canonical_key(key)
    assert text == json.dumps(key, sort_keys=True, separators=(",", ":"))
    parsed = parse_key(text)
    assert parsed == key
    assert [type(v) for v in parsed.values()] == [type(key[k]) for k in parsed]
    assert canonical_key(parsed) == text


@fast
@given(shape_keys, st.randoms(), st.integers(min_value=0, max_value=4))
def test_any_spelling_has_one_canonical_form(
    key: dict[str, Any], rnd: random.Random, indent: int
) -> None:
    items = list(key.items())
    rnd.shuffle(items)
    spelled = json.dumps(
        dict(items), indent=indent or None, ensure_ascii=bool(indent % 2)
    )
    assert canonical_key(parse_key(spelled)) == canonical_key(key)


def test_default_key_is_empty_object() -> None:
    assert canonical_key({}) == DEFAULT_KEY == "{}"
    assert canonical_key({"b": 1, "a": "x"}) == '{"a":"x","b":1}'


@pytest.mark.parametrize(
    "bad",
    [
        {"n": None},
        {"n": [1]},
        {"n": {"x": 1}},
        {"n": float("nan")},
        {"n": float("inf")},
        {"": 1},
        {1: 1},
    ],
)
def test_canonical_key_rejects_bad_values(bad: dict[Any, Any]) -> None:
    with pytest.raises(KeySpecError):
        canonical_key(bad)


@pytest.mark.parametrize(
    "text", ["", "{", "[1, 2]", '"x"', "null", '{"n": null}', "{'n': 1}"]
)
def test_parse_key_rejects_non_objects(text: str) -> None:
    with pytest.raises(KeySpecError):
        parse_key(text)


# ------------------------------------------------------------------ check_key


def test_check_key_accepts_good_keys_and_the_default() -> None:
    assert SPEC.check_key({}) == []
    assert (
        SPEC.check_key({"dtype": "bfloat16", "hidden": 4096, "num_tokens": 1.5}) == []
    )


def test_check_key_rejects_missing_and_extra_fields() -> None:
    missing = SPEC.check_key({"dtype": "bfloat16", "hidden": 4096})
    assert len(missing) == 1 and "missing" in missing[0] and "num_tokens" in missing[0]
    extra = SPEC.check_key(
        {"dtype": "bfloat16", "hidden": 4096, "num_tokens": 1, "batch": 2}
    )
    assert len(extra) == 1 and "unknown" in extra[0] and "batch" in extra[0]


@pytest.mark.parametrize(
    "value", ["4096", True, None, [1], float("nan"), float("inf"), -1]
)
@pytest.mark.parametrize("policy", ["nearest", "ceil", "floor"])
def test_check_key_rejects_non_numbers_for_numeric_policies(
    policy: str, value: Any
) -> None:
    spec = KeySpec((KeyField("n", policy),))  # type: ignore[arg-type]
    problems = spec.check_key({"n": value})
    assert len(problems) == 1 and "'n'" in problems[0]


@fast
@given(values)
def test_check_key_accepts_any_value_for_exact(value: Any) -> None:
    spec = KeySpec((KeyField("flag", "exact"),))
    assert spec.check_key({"flag": value}) == []


def test_spec_validation() -> None:
    with pytest.raises(KeySpecError, match="unknown policy"):
        KeyField("n", "round")  # type: ignore[arg-type]
    with pytest.raises(KeySpecError, match="duplicate"):
        KeySpec((KeyField("n", "ceil"), KeyField("n", "floor")))
    assert KeySpec.from_schema(json.dumps(SPEC.to_schema())) == SPEC
    with pytest.raises(KeySpecError):
        KeySpec.from_schema({"fields": [{"policy": "ceil"}]})
