"""Kernels no registered module provides: imported *unverified*.

A vLLM tree holds kernels presetdb has never seen (``fused_qk_norm_rope``, ...). Their
rows are still worth keeping in an audited db, but nothing can compile them here. So:

- the key schema comes from the file: its fields in the file's order, ``ceil`` for
  token-count fields (``num_tokens``, ``numtokens``, ``m``, ...), ``nearest`` for other
  numbers, ``exact`` for strings and flags; ``--key-policy field=policy`` overrides;
- each config is checked for Helion config *syntax* against the installed Helion: field
  names Helion's ``Config`` knows, value types from ``helion.Config.__init__``'s
  annotations, powers of two where Helion's ConfigSpec only makes powers of two, loop
  orders that are permutations. Nothing is compiled; the config is stored as written;
- the rows are stored with ``presets.verified = 0`` until ``presetdb verify`` checks them
  against a registered kernel (offline/verify.py).
"""

from __future__ import annotations

import functools
import math
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any

from presetdb.errors import ImportValidationError, InvalidConfigError, KeySpecError
from presetdb.keys import POLICIES, KeyField, KeySpec

# Key fields that count tokens (rows of the activation): a call is served by the
# smallest tuned count >= its own, as vLLM's own lookups do.
TOKEN_FIELDS = frozenset(
    {"num_tokens", "numtokens", "n_tokens", "tokens", "num_tokens_padded", "m", "batch_size", "num_seqs"}
)
# Fields Helion's ConfigSpec fills from power-of-two fragments (BlockSizeSpec,
# L2GroupingSpec, NumWarpsFragment, num_sm_multiplier's PowerOfTwoFragment,
# ReductionLoopSpec, NumThreadsSpec): any other value cannot have come from Helion.
POWER_OF_TWO_FIELDS = frozenset(
    {"block_sizes", "l2_groupings", "num_warps", "num_sm_multiplier", "reduction_loops", "num_threads"}
)


def default_policy(name: str, value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "exact"
    return "ceil" if name.lower() in TOKEN_FIELDS else "nearest"


def parse_key_policies(items: Sequence[str]) -> dict[str, str]:
    """``["num_tokens=ceil", "hidden=nearest"]`` -> a dict; clear errors for bad items."""
    out: dict[str, str] = {}
    for item in items:
        name, sep, policy = item.partition("=")
        name, policy = name.strip(), policy.strip()
        if not sep or not name or policy not in POLICIES:
            raise ImportValidationError(
                f"--key-policy {item!r}: use FIELD=POLICY with POLICY one of {', '.join(POLICIES)}"
            )
        out[name] = policy
    return out


def infer_key_spec(key: Mapping[str, Any], overrides: Mapping[str, str]) -> KeySpec:
    """The key spec of an unregistered kernel, from one of its (non-default) keys."""
    return KeySpec(
        tuple(
            KeyField(name, overrides.get(name, default_policy(name, value)))  # type: ignore[arg-type]
            for name, value in key.items()
        )
    )


class UnverifiedChecker:
    """A `KernelChecker` for a kernel no registered module provides (see the module doc).

    `key_spec` is None until the first non-default key of the kernel is seen (or is the
    stored kernel's spec when the db already has it)."""

    verified = False

    def __init__(self, name: str, key_spec: KeySpec | None, overrides: Mapping[str, str]) -> None:
        self.name = name
        # Before any key is seen only the default entry can be checked; it fits any spec.
        self.key_spec: KeySpec = key_spec if key_spec is not None else KeySpec(())
        self.has_spec = key_spec is not None
        self.overrides = dict(overrides)
        self.inferred_from: str | None = None

    def learn(self, key: Mapping[str, Any], source: str) -> None:
        if not self.has_spec and key:
            self.key_spec = infer_key_spec(key, self.overrides)
            self.has_spec = True
            self.inferred_from = source

    def schema(self) -> dict[str, Any]:
        schema = self.key_spec.to_schema()
        if self.inferred_from is not None:
            schema["inferred_from"] = self.inferred_from  # not from a registered kernel
        return schema

    def aliases(self) -> set[str]:
        return {self.name}

    def source_hash(self) -> str | None:
        return None

    def helion_source_hash(self) -> str | None:
        return None

    def check_config(self, config: Mapping[str, Any], key: Mapping[str, Any] | None) -> dict[str, Any]:
        problems = config_syntax_problems(config)
        if problems:
            raise InvalidConfigError("; ".join(problems))
        return dict(config)  # stored as written: nothing here can normalize it

    def key_from_features(self, features: Mapping[str, Any]) -> dict[str, Any]:
        raise KeySpecError(f"kernel {self.name!r} is not registered: its keys cannot be derived")


# ---------------------------------------------------------------- config syntax


@functools.cache
def _helion_config_types() -> tuple[frozenset[str], dict[str, Any]]:
    """(field names the installed Helion knows, type hints of helion.Config's fields)."""
    from helion.autotuner.config_spec import VALID_KEYS  # type: ignore[import-untyped]
    from helion.runtime.config import Config  # type: ignore[import-untyped]

    hints = typing.get_type_hints(Config.__init__)
    typed = {k: v for k, v in hints.items() if k not in ("return", "kwargs")}
    return frozenset(VALID_KEYS) | frozenset(typed), typed


def config_syntax_problems(config: Mapping[str, Any]) -> list[str]:
    """Problems with a Helion config that need no kernel to see ([] when none)."""
    known, typed = _helion_config_types()
    problems = []
    unknown = [name for name in config if name not in known]
    if unknown:
        problems.append(
            f"field(s) {unknown} unknown to the installed Helion's Config (a newer or older "
            "Helion, or a typo)"
        )
    for name, value in config.items():
        if not _finite(value):
            problems.append(f"{name}: {value!r} holds a non-finite number (NaN or infinity)")
            continue
        hint = typed.get(name)
        if hint is not None and not _matches(value, hint):
            problems.append(f"{name}: {value!r} is not {_describe(hint)}")
            continue
        if name in POWER_OF_TWO_FIELDS:
            bad = [v for v in _ints(value) if v < 1 or v & (v - 1)]
            if bad:
                problems.append(f"{name}: {bad} not power(s) of two (Helion only makes powers of two here)")
        if name == "loop_orders" and isinstance(value, list):
            for order in value:
                if isinstance(order, list) and sorted(order) != list(range(len(order))):
                    problems.append(f"loop_orders: {order!r} is not a permutation of 0..{len(order) - 1}")
    return problems


def _finite(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, list):
        return all(_finite(v) for v in value)
    if isinstance(value, Mapping):
        return all(_finite(v) for v in value.values())
    return True


def _ints(value: Any) -> list[int]:
    items = value if isinstance(value, list) else [value]
    return [v for v in items if isinstance(v, int) and not isinstance(v, bool)]


def _matches(value: Any, hint: Any) -> bool:
    if hint is Any or hint is object:
        return True
    if hint is None or hint is type(None):
        return value is None
    origin = typing.get_origin(hint)
    if origin is typing.Literal:
        return any(value == arg and type(value) is type(arg) for arg in typing.get_args(hint))
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, arg) for arg in typing.get_args(hint))
    if origin is list:
        (inner,) = typing.get_args(hint) or (Any,)
        return isinstance(value, list) and all(_matches(v, inner) for v in value)
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(hint, type):
        return isinstance(value, hint)
    return True  # a hint this checker cannot read: Helion will judge it at verify time


def _describe(hint: Any) -> str:
    return str(hint).replace("typing.", "").replace("NoneType", "None")
