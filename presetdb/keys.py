"""Shape keys and key specs.

A *shape key* is the part of a kernel call that selects a config, e.g.
``{"dtype": "bfloat16", "hidden": 4096, "num_tokens": 128}``. Its canonical string is
compact sorted-key JSON (the same text vLLM uses for its config keys); ``{}`` is the
kernel's default entry.

A *key spec* names the fields, how each is extracted from a call's arguments, and how a
stored key is matched when the call's value was never tuned:

- ``exact``   categorical (dtype, flags): only the same value matches;
- ``nearest`` numeric: the stored value closest in log2 space (ties: the larger value);
- ``ceil``    numeric: the smallest stored value >= actual, else the largest stored;
- ``floor``   numeric: the largest stored value <= actual, else the smallest stored.

Fields are matched in spec order: the first field picks its best stored value, the
remaining candidates are those stored keys with that value, and so on. The chosen key
therefore always exists, and the order of fields states which dimension matters most.
Serving asks `KeyIndex.match_within`: when that key is far (below) but another stored key
has every field within its limit, the nearest such key serves instead.

The far-match guard: every numeric field has a maximum distance (log2 of the ratio
between the stored and the actual value, the distance a `Match` reports). A match with
any field beyond its limit is *far* (`far_fields`). The limit of a field comes from, most
specific first: the deployment's ``PRESETDB_MAX_DISTANCE`` entry for ``kernel.field``,
then for ``field``, the field's own `KeyField.max_distance` (registration), the
deployment's ``kernel.*``, then ``*``, the spec's `KeySpec.max_distance` (the kernel's
default), and `DEFAULT_MAX_DISTANCE`. Exactly at the limit is not far.

This module is pure Python (no torch) so the store, importers and CLI can use it.
"""

from __future__ import annotations

import bisect
import json
import math
import operator
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, TypeVar

from presetdb._util import canonical_json
from presetdb.errors import KeySpecError

Policy = Literal["exact", "nearest", "ceil", "floor"]
POLICIES: tuple[Policy, ...] = ("exact", "nearest", "ceil", "floor")
DEFAULT_KEY = "{}"
# A stored value up to 2x above or below the call's serves it without being "far".
DEFAULT_MAX_DISTANCE = 1.0

KeyValue = str | int | float | bool


def canonical_key(key: Mapping[str, Any]) -> str:
    """Compact, sorted-key JSON: the one string form of a shape key."""
    for name, value in key.items():
        if not isinstance(name, str) or not name:
            raise KeySpecError(f"shape key field names must be non-empty strings, got {name!r}")
        if not isinstance(value, (str, int, float, bool)) or (
            isinstance(value, float) and not math.isfinite(value)
        ):
            raise KeySpecError(
                f"shape key field {name!r} must be a string, number or bool, got {value!r}"
            )
    return canonical_json(key)


def parse_key(text: str) -> dict[str, KeyValue]:
    """Parse a shape key string (any JSON object spelling) into a dict."""
    try:
        value = json.loads(text)
    except (TypeError, json.JSONDecodeError) as exc:
        raise KeySpecError(f"shape key is not valid JSON: {text!r} ({exc})") from None
    if not isinstance(value, dict):
        raise KeySpecError(f"shape key must be a JSON object, got {text!r}")
    canonical_key(value)  # validates value types
    return value


@dataclass(frozen=True)
class KeyField:
    """One field of a key spec. `extract` maps the call's arguments to the value."""

    name: str
    policy: Policy
    extract: Callable[..., KeyValue] | None = field(default=None, compare=False, repr=False)
    description: str = ""
    # Largest log2 distance a stored value may be from the call's and not be "far"
    # (None: the spec's, else DEFAULT_MAX_DISTANCE). Meaningless for `exact` fields.
    max_distance: float | None = None

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise KeySpecError(
                f"key field {self.name!r}: unknown policy {self.policy!r}; "
                f"use one of {', '.join(POLICIES)}"
            )
        _check_limit(f"key field {self.name!r}: max_distance", self.max_distance)


def _check_limit(what: str, value: float | None) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value) or value < 0:
        raise KeySpecError(f"{what} must be a number >= 0 (log2 distance; inf: never far), got {value!r}")


@dataclass(frozen=True)
class KeySpec:
    """The ordered fields that select a config for one kernel."""

    fields: tuple[KeyField, ...]
    # The kernel's default limit for its fields (None: DEFAULT_MAX_DISTANCE); see the module docstring.
    max_distance: float | None = None

    def __post_init__(self) -> None:
        names = [f.name for f in self.fields]
        if len(set(names)) != len(names):
            raise KeySpecError(f"key spec has duplicate field names: {names}")
        _check_limit("key spec max_distance", self.max_distance)

    def limits(self, kernel: str, overrides: Sequence[DistanceLimit] = ()) -> dict[str, float]:
        """The maximum distance of each numeric field (see the module docstring for the
        order); `overrides` are the deployment's (`Settings.max_distance`)."""
        by_scope = {(o.kernel, o.field): o.limit for o in overrides if o.kernel in (None, kernel)}
        base = DEFAULT_MAX_DISTANCE if self.max_distance is None else float(self.max_distance)
        out: dict[str, float] = {}
        for f in self.fields:
            if f.policy == "exact":
                continue
            for scope in ((kernel, f.name), (None, f.name)):
                if scope in by_scope:
                    out[f.name] = by_scope[scope]
                    break
            else:
                if f.max_distance is not None:
                    out[f.name] = float(f.max_distance)
                else:
                    out[f.name] = by_scope.get((kernel, "*"), by_scope.get((None, "*"), base))
        return out

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.fields)

    def features(self, *args: Any) -> tuple[KeyValue, ...]:
        """Extract the feature tuple (values in field order) from a call's arguments."""
        return tuple(f.extract(*args) for f in self.fields)  # type: ignore[misc]

    def key_of(self, features: tuple[KeyValue, ...]) -> dict[str, KeyValue]:
        return dict(zip(self.names, features, strict=True))

    def to_schema(self) -> dict[str, Any]:
        """The JSON stored in `kernels.key_schema`: what SQL readers see."""
        fields: list[dict[str, Any]] = []
        for f in self.fields:
            item: dict[str, Any] = {"name": f.name, "policy": f.policy, "description": f.description}
            if f.max_distance is not None:
                item["max_distance"] = f.max_distance
            fields.append(item)
        schema: dict[str, Any] = {"fields": fields}
        if self.max_distance is not None:
            schema["max_distance"] = self.max_distance
        return schema

    @classmethod
    def from_schema(cls, schema: Mapping[str, Any] | str) -> KeySpec:
        """Rebuild a spec (without extractors) from its stored JSON."""
        try:
            data = json.loads(schema) if isinstance(schema, str) else schema
            fields = []
            for item in data["fields"]:
                name, policy = item["name"], item["policy"]
                if not isinstance(name, str) or not name:
                    raise TypeError(f"field name {name!r} is not a non-empty string")
                description = item.get("description", "")
                fields.append(
                    KeyField(
                        name=name, policy=policy, description=str(description),
                        max_distance=item.get("max_distance"),
                    )
                )
            return cls(tuple(fields), max_distance=data.get("max_distance"))
        except (KeyError, TypeError, AttributeError, ValueError) as exc:
            raise KeySpecError(
                "key schema must look like {'fields': [{'name': ..., 'policy': ...}]}: "
                + str(exc)[:200]
            ) from None

    def check_key(self, key: Mapping[str, Any]) -> list[str]:
        """Problems with a stored key against this spec ([] when fine; `{}` is fine)."""
        if not key:
            return []
        problems: list[str] = []
        missing = [n for n in self.names if n not in key]
        extra = [n for n in key if n not in self.names]
        if missing:
            problems.append(f"missing key field(s) {missing}; the key spec has {list(self.names)}")
        if extra:
            problems.append(f"unknown key field(s) {extra}; the key spec has {list(self.names)}")
        for f in self.fields:
            if f.name not in key:
                continue
            value = key[f.name]
            if f.policy != "exact":
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    problems.append(f"key field {f.name!r} ({f.policy}) must be a number, got {value!r}")
                elif not math.isfinite(value) or value < 0:
                    problems.append(f"key field {f.name!r} must be finite and >= 0, got {value!r}")
        return problems


@dataclass(frozen=True)
class DistanceLimit:
    """One deployment override of the far-match guard: `kernel` None applies to every
    kernel, `field` "*" to every numeric field."""

    kernel: str | None
    field: str
    limit: float


def far_fields(distances: Mapping[str, float], limits: Mapping[str, float]) -> dict[str, float]:
    """The fields of a match whose distance is beyond their limit (field -> distance)."""
    return {name: d for name, d in distances.items() if d > limits.get(name, math.inf)}


def total_distance(distances: Mapping[str, float]) -> float:
    """One number for a match's distance: the sum of its fields' log2 distances."""
    return float(sum(distances.values()))


def _refuse(spec: KeySpec, text: str, key: Any) -> None:
    """Raise KeySpecError worded by `check_key` (a key that fits returns quietly)."""
    if not isinstance(key, Mapping):
        raise KeySpecError(f"stored key {text}: not a JSON object")
    try:
        problems = spec.check_key(key)
    except OverflowError:
        problems = ["a number is too large"]
    if problems:
        raise KeySpecError(f"stored key {text}: " + "; ".join(problems))


def _log2(value: float) -> float:
    # Sizes of 0 and 1 both sit at the bottom of the scale.
    return math.log2(value) if value > 1 else 0.0


T = TypeVar("T")


@dataclass(frozen=True)
class Match(Generic[T]):
    """The outcome of a lookup: the stored key, its payload and how it was reached."""

    key: str
    payload: T
    kind: Literal["exact", "nearest", "ceil", "floor", "default"]
    # Per field: |log2(stored) - log2(actual)| for numeric fields, 0.0 when equal.
    distances: dict[str, float]


class _Level:
    """One trie level: stored values of one field, with a sorted copy for numbers."""

    __slots__ = ("children", "logs", "numbers")

    def __init__(self) -> None:
        self.children: dict[KeyValue, Any] = {}
        self.numbers: list[float] = []
        self.logs: list[float] = []

    def freeze(self) -> None:
        self.numbers = sorted(v for v in self.children if not isinstance(v, (str, bool)))
        self.logs = [_log2(v) for v in self.numbers]


class KeyIndex(Generic[T]):
    """Immutable lookup structure over stored keys (built once, queried many times).

    Lookups cost O(fields x log keys): each field descends one trie level, using a dict
    for `exact` and bisection for the numeric policies.
    """

    def __init__(self, spec: KeySpec, entries: Iterable[tuple[Mapping[str, KeyValue], T]]) -> None:
        self._fill(spec, ((canonical_key(key), key, payload) for key, payload in entries))

    @classmethod
    def from_canonical(
        cls, spec: KeySpec, entries: Iterable[tuple[str, Mapping[str, KeyValue], T]]
    ) -> KeyIndex[T]:
        """Like the constructor, for keys whose canonical text is already known (stored
        keys: `presets.shape_key`), given as (text, parsed key, payload): the picker's
        load of 10,000 presets does not re-encode 10,000 keys."""
        index = cls.__new__(cls)
        index._fill(spec, entries)
        return index

    def _fill(self, spec: KeySpec, entries: Iterable[tuple[str, Mapping[str, KeyValue], T]]) -> None:
        self.spec = spec
        self._root = _Level()
        self.default: tuple[str, T] | None = None
        self.keys: list[str] = []
        # (values in field order, text, payload) of every non-default key: the numeric check
        # below reads its columns; `match_within` scans it when the field-by-field match is far.
        self._stored: list[tuple[tuple[KeyValue, ...], str, T]] = []
        stored_append = self._stored.append
        names = spec.names
        # key -> its values in field order, as a tuple (itemgetter of one name returns the bare value)
        get = operator.itemgetter(*names) if len(names) > 1 else (lambda key: (key[names[0]],))
        keys_append = self.keys.append
        root = self._root
        for text, key, payload in entries:
            keys_append(text)
            if not key:
                if not isinstance(key, Mapping):  # null, [], "", 0: not the default entry {}
                    _refuse(spec, text, key)
                self.default = (text, payload)
                continue
            try:
                values = get(key)
            except (KeyError, TypeError, IndexError):
                values = None
            if values is None or len(key) != len(names):
                _refuse(spec, text, key)
                if values is None:
                    raise KeySpecError(f"stored key {text}: does not fit the key spec {list(names)}")
            stored_append((values, text, payload))
            level = root
            for value in values[:-1]:
                child = level.children.get(value)
                if child is None:
                    child = level.children[value] = _Level()
                level = child
            level.children[values[-1]] = (text, payload)
        # Numeric fields are checked a column at a time (C-speed builtins), not per key.
        if self._stored:
            columns = zip(*(values for values, _, _ in self._stored), strict=True)
            for f, column in zip(spec.fields, columns, strict=True):
                if f.policy == "exact":
                    continue
                try:
                    fits = (
                        set(map(type, column)) <= {int, float}
                        and all(map(math.isfinite, column))
                        and min(column) >= 0
                    )
                except OverflowError:  # an int beyond float range
                    fits = False
                if not fits:
                    for values, text, _ in self._stored:
                        _refuse(spec, text, dict(zip(names, values, strict=True)))
        self._freeze(root, 0)

    def _freeze(self, level: _Level, depth: int) -> None:
        level.freeze()
        if depth < len(self.spec.fields) - 1:
            for child in level.children.values():
                self._freeze(child, depth + 1)

    def __len__(self) -> int:
        return len(self.keys)

    def lookup(self, features: tuple[KeyValue, ...]) -> Match[T] | None:
        """Best stored key for the features, else the default entry, else None."""
        return self.match(features) or self.default_match()

    def default_match(self) -> Match[T] | None:
        if self.default is None:
            return None
        return Match(self.default[0], self.default[1], "default", {})

    def match(self, features: tuple[KeyValue, ...]) -> Match[T] | None:
        """Best stored shape key for the features (never the default entry)."""
        if not self.spec.fields or not self._root.children:
            return None
        node: Any = self._root
        distances: dict[str, float] = {}
        kinds: set[str] = set()
        for f, actual in zip(self.spec.fields, features, strict=True):
            level: _Level = node
            if f.policy == "exact" or isinstance(actual, (str, bool)):
                if actual not in level.children:
                    return None
                node = level.children[actual]
                continue
            chosen = _pick_number(level, f.policy, float(actual))
            if chosen is None:
                return None
            node = level.children[chosen]
            if chosen != actual:
                distances[f.name] = abs(_log2(chosen) - _log2(float(actual)))
                kinds.add(f.policy)
            else:
                distances[f.name] = 0.0
        text, payload = node
        kind = "exact" if not kinds else (kinds.pop() if len(kinds) == 1 else "nearest")
        return Match(text, payload, kind, distances)  # type: ignore[arg-type]

    def match_within(self, features: tuple[KeyValue, ...], limits: Mapping[str, float]) -> Match[T] | None:
        """`match`, unless that key is far (a field beyond `limits`) while another stored
        key has every field within its limit: then the nearest such key.

        Field-by-field matching commits to the nearest value of each field in turn, so a
        call whose first numeric field is near a stored value that was tuned with only one
        value of the next field ends far, although keys within every limit exist (matmul n
        5,120 with k 13,824: n picks 4,608, whose only k is 3,584, not (4,096, 14,336)). Such
        keys are ranked by how many ceil/floor fields they go against, then total log2
        distance, then key text. A scan of the kernel's keys, once per new shape (the
        picker memoizes), and only for far matches."""
        first = self.match(features)
        if first is None or not far_fields(first.distances, limits):
            return first
        best: tuple[tuple[int, float, str], Match[T]] | None = None
        for values, text, payload in self._stored:
            distances: dict[str, float] = {}
            against = 0
            for f, stored, actual in zip(self.spec.fields, values, features, strict=True):
                if f.policy == "exact" or isinstance(actual, (str, bool)) or isinstance(stored, (str, bool)):
                    if stored != actual:
                        break
                    continue
                d = abs(_log2(float(stored)) - _log2(float(actual)))
                if d > limits.get(f.name, math.inf):
                    break
                distances[f.name] = d
                against += (f.policy == "ceil" and stored < actual) or (f.policy == "floor" and stored > actual)
            else:
                rank = (against, sum(distances.values()), text)
                if best is None or rank < best[0]:
                    best = (rank, Match(text, payload, "nearest", distances))
        return first if best is None else best[1]

    def entries(self) -> dict[str, T]:
        """Every stored key text -> its payload, the default entry included (a walk of the
        trie: for rare callers such as a re-rank, not for lookups)."""
        out: dict[str, T] = {}
        depth = len(self.spec.fields)

        def walk(level: _Level, d: int) -> None:
            for child in level.children.values():
                if d == depth - 1:
                    out[child[0]] = child[1]
                else:
                    walk(child, d + 1)

        if depth:
            walk(self._root, 0)
        if self.default is not None:
            out[self.default[0]] = self.default[1]
        return out

    def nearest_keys(self, features: tuple[KeyValue, ...], limit: int = 3) -> list[str]:
        """Stored keys ranked by total log2 distance: for 'did you mean' messages."""

        def distance(text: str) -> tuple[float, str]:
            key = json.loads(text)
            total = 0.0
            for f, actual in zip(self.spec.fields, features, strict=True):
                stored = key.get(f.name)
                if stored is None:
                    total += 100.0
                elif f.policy == "exact" or isinstance(actual, (str, bool)):
                    total += 0.0 if stored == actual else 1000.0
                else:
                    total += abs(_log2(float(stored)) - _log2(float(actual)))
            return (total, text)

        return sorted((k for k in self.keys if k != DEFAULT_KEY), key=distance)[:limit]


def _pick_number(level: _Level, policy: Policy, actual: float) -> float | None:
    numbers = level.numbers
    if not numbers:
        return None
    if policy == "ceil":
        i = bisect.bisect_left(numbers, actual)
        return numbers[i] if i < len(numbers) else numbers[-1]
    if policy == "floor":
        i = bisect.bisect_right(numbers, actual)
        return numbers[i - 1] if i > 0 else numbers[0]
    # nearest in log2 space; a tie goes to the larger value
    target = _log2(actual)
    i = bisect.bisect_left(level.logs, target)
    if i == 0:
        return numbers[0]
    if i == len(numbers):
        return numbers[-1]
    below, above = level.logs[i - 1], level.logs[i]
    return numbers[i] if (above - target) <= (target - below) else numbers[i - 1]
