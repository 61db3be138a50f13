"""Judging parsed rows against the kernel registry: keys against the key spec, configs
against the kernel's Helion ConfigSpec, timings against common sense.

The registry (``presetdb.helion.registry`` + ``presetdb.kernels``) imports torch and
Helion, so it is imported on first use only; parsing stays free of both. Every problem is
one line naming the file, the row, the field and the reason.
"""

from __future__ import annotations

import hashlib
import inspect
import math
import re
import textwrap
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property
from typing import Any, Protocol

from presetdb._text import clip, quoted
from presetdb.errors import InvalidConfigError, KeySpecError, UnknownKernelError
from presetdb.keys import KeySpec, canonical_key
from presetdb.offline.importers.records import Row
from presetdb.store.records import PresetInput

# A kernel call slower than a minute is a unit mistake, not a measurement.
MAX_LATENCY_MS = 60_000.0
# SQLite stores integers in 64 bits; a larger one cannot be stored at all.
SQLITE_INT_MIN, SQLITE_INT_MAX = -(2**63), 2**63 - 1
# Shape key sizes: beyond 2**53 a float cannot tell neighbours apart (the picker's log2 math).
MAX_KEY_SIZE = 2**53
MAX_KEY_TEXT = 256  # characters of a categorical key value (a dtype, a flag)
MAX_PROVENANCE_TEXT = 1_000  # characters of a provenance field (host, tuned_by, versions, ...)
# Triton refuses blocks of more than 2**20 elements (TRITON_MAX_TENSOR_NUMEL).
MAX_BLOCK_SIZE = 2**20
MAX_PROBLEM_TEXT = 400  # characters of one problem line's reason
MAX_TUNING_SECONDS = 30 * 24 * 3600.0
TIMING_FIELDS = ("latency_ms", "default_ms", "reference_ms")


class KernelChecker(Protocol):
    """What validation needs to know about one kernel."""

    name: str
    key_spec: KeySpec

    def aliases(self) -> set[str]: ...
    def source_hash(self) -> str | None: ...
    def helion_source_hash(self) -> str | None: ...
    def check_config(self, config: Mapping[str, Any], key: Mapping[str, Any] | None) -> dict[str, Any]: ...
    def key_from_features(self, features: Mapping[str, Any]) -> dict[str, Any]: ...


class Resolver(Protocol):
    def get(self, name: str) -> KernelChecker: ...
    def all(self) -> list[KernelChecker]: ...


# ---------------------------------------------------------------- the registry


class RegisteredKernelChecker:
    """A `KernelChecker` over a registered kernel (see docs/architecture.md)."""

    def __init__(self, rk: Any) -> None:
        self.rk = rk
        self.name: str = rk.name
        self.key_spec: KeySpec = rk.key_spec

    def aliases(self) -> set[str]:
        names = {self.name}
        fn = getattr(getattr(self.rk, "helion_kernel", None), "fn", None)
        if fn is not None:
            names.add(fn.__name__)  # Helion names AOT entries after the function
        return names

    def source_hash(self) -> str | None:
        return str(self.rk.source_hash())

    @cached_property
    def _helion_hash(self) -> str | None:
        # Helion's cache key hashes the dedented source of the kernel function.
        fn = getattr(getattr(self.rk, "helion_kernel", None), "fn", None)
        if fn is None:
            return None
        try:
            source = textwrap.dedent(inspect.getsource(fn))
        except (OSError, TypeError):
            return None
        return hashlib.sha256(source.encode("utf-8")).hexdigest()

    def helion_source_hash(self) -> str | None:
        return self._helion_hash

    def check_config(self, config: Mapping[str, Any], key: Mapping[str, Any] | None) -> dict[str, Any]:
        return dict(self.rk.validate_config(dict(config), dict(key) if key else None))

    def tensor_buckets(self, key: Mapping[str, Any]) -> list[tuple[str, tuple[int, ...]]]:
        """(dtype, sizes bucketed as Helion specializes them: 0, 1 or 2 for "2 or more")
        of each tensor the kernel body gets for `key` (meta tensors: nothing allocated)."""
        args = self.rk.example_inputs(dict(key), device="meta")
        kargs, _ = self.rk.adapt_args(args)
        return [
            (str(a.dtype).removeprefix("torch."), tuple(min(int(d), 2) for d in a.shape))
            for a in kargs
            if hasattr(a, "dtype") and hasattr(a, "shape")
        ]

    def default_config(self, key: Mapping[str, Any] | None) -> dict[str, Any]:
        """Helion's default config for the key: how many entries each list field needs."""
        import torch

        from presetdb.helion.args import validation_args

        device = "cuda" if torch.cuda.is_available() else "cpu"
        args = validation_args(self.rk.example_inputs, dict(key or {}), device)
        kargs, _ = self.rk.adapt_args(args)
        return dict(self.rk.bound_for(tuple(kargs)).config_spec.default_config().config)

    def key_from_features(self, features: Mapping[str, Any]) -> dict[str, Any]:
        args = args_from_features(features)
        values = self.key_spec.features(*args)
        return self.key_spec.key_of(tuple(values))


class RegistryResolver:
    """Kernels from the process-wide registry (registers the example kernels first)."""

    def __init__(self) -> None:
        from presetdb.helion.registry import get_kernel, load_kernel_modules, registered_kernels

        load_kernel_modules()  # the examples and PRESETDB_KERNEL_MODULES

        self._get_kernel = get_kernel
        self._registered = registered_kernels
        self._cache: dict[str, KernelChecker] = {}

    def get(self, name: str) -> KernelChecker:
        if name not in self._cache:
            self._cache[name] = RegisteredKernelChecker(self._get_kernel(name))
        return self._cache[name]

    def all(self) -> list[KernelChecker]:
        found = self._registered()
        items = found.values() if isinstance(found, Mapping) else found
        return [self.get(item if isinstance(item, str) else item.name) for item in items]


def args_from_features(features: Mapping[str, Any]) -> tuple[Any, ...]:
    """Rebuild call arguments from Helion AOT shape features: meta tensors (shape and
    dtype, no storage) for ``arg{i}_*`` tensor features, numbers for ``arg{i}_scalar``."""
    import torch

    count = 0
    for name in features:
        if name.startswith("arg") and "_" in name:
            head = name[3:].split("_", 1)[0]
            if head.isdigit():
                count = max(count, int(head) + 1)
    args: list[Any] = []
    for i in range(count):
        if f"arg{i}_scalar" in features:
            args.append(features[f"arg{i}_scalar"])
            continue
        ndim = features.get(f"arg{i}_ndim")
        dtype_name = str(features.get(f"arg{i}_dtype", "")).replace("torch.", "")
        if not isinstance(ndim, int) or not dtype_name:
            raise KeySpecError(f"arg{i}: shape features lack ndim/dtype")
        found = [features.get(f"arg{i}_dim{j}") for j in range(ndim)]
        dims = [d for d in found if isinstance(d, int)]
        if len(dims) != ndim:
            raise KeySpecError(f"arg{i}: a batched or missing dimension; pass --key")
        dtype = getattr(torch, dtype_name, None)
        if not isinstance(dtype, torch.dtype):
            raise KeySpecError(f"arg{i}: unknown dtype {dtype_name!r}")
        args.append(torch.empty(dims, dtype=dtype, device="meta"))
    return tuple(args)


# ---------------------------------------------------------------- rows


@dataclass
class RowCheck:
    """The outcome of checking one row: a preset to store, or the problems found."""

    key: dict[str, Any] | None = None
    item: PresetInput | None = None
    problems: list[tuple[str, str]] = field(default_factory=list)  # (field, reason)

    def add(self, field_name: str, reason: str) -> None:
        self.problems.append((field_name, reason))


def problem_line(file: str, row: Row, field_name: str, reason: str) -> str:
    # Capped: a 50 MB value must not be echoed (nor rendered) whole.
    return f"{clip(file)}: row {row.index + 1} ({clip(row.where)}): {clip(field_name)}: {clip(reason, MAX_PROBLEM_TEXT)}"


def provenance_problems(file: str, provenance: Mapping[str, Any]) -> list[str]:
    """A results file's run provenance: what SQL can store and a person can read."""
    problems = []
    for name, value in provenance.items():
        where = f"{clip(file)}: run.{name}"
        if isinstance(value, bool):
            continue
        if isinstance(value, int) and not SQLITE_INT_MIN <= value <= SQLITE_INT_MAX:
            problems.append(f"{where}: {clip(value, 40)} is outside SQLite's 64-bit integer range")
        elif isinstance(value, str) and len(value) > MAX_PROVENANCE_TEXT:
            problems.append(f"{where}: {len(value):,} characters; at most {MAX_PROVENANCE_TEXT:,}")
        elif isinstance(value, str) and name.endswith("_at") and parse_utc(value) is None:
            problems.append(f"{where}: {quoted(value)} is not an ISO 8601 date-time (e.g. 2026-11-20T09:00:00Z)")
    return problems


def parse_utc(text: str) -> datetime | None:
    """An ISO 8601 date-time (a trailing Z allowed), or None when it is not one."""
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00") if text.endswith("Z") else text)
    except ValueError:
        return None


def timing_problem(value: Any, *, limit: float = MAX_LATENCY_MS, allow_zero: bool = False) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"must be a number, got {value!r}"
    if not math.isfinite(value):
        return f"must be finite, got {value!r}"
    if value < 0 or (value == 0 and not allow_zero):
        return f"must be {'>= 0' if allow_zero else '> 0'}, got {value!r}"
    if value > limit:
        return f"{value!r} is implausibly large (limit {limit:g}); check the unit"
    return None


def check_row(
    row: Row,
    checker: KernelChecker,
    *,
    source_hash: str | None,
    derive_key: bool = True,
) -> RowCheck:
    """Check one row; never raises for bad input (problems are collected)."""
    result = RowCheck()
    parsed_fields = set()
    for line in row.problems:
        field_name, _, reason = line.partition(": ")
        result.add(field_name, reason or line)
        parsed_fields.add(field_name.split(".")[0].split("[")[0])

    key = None if "key" in parsed_fields else _row_key(row, checker, result, derive_key)
    config = None
    if "config" not in parsed_fields and isinstance(row.config, Mapping):
        config = _config(row.config, key, checker, result, "config")
    elif "config" not in parsed_fields:
        result.add("config", "missing or not an object")

    for name in TIMING_FIELDS:
        if name not in parsed_fields and (problem := timing_problem(getattr(row, name))):
            result.add(name, problem)
    tried = row.configs_tried
    if (
        "configs_tried" not in parsed_fields
        and tried is not None
        and (isinstance(tried, bool) or not isinstance(tried, int) or not 0 <= tried <= SQLITE_INT_MAX)
    ):
        result.add("configs_tried", f"must be an integer from 0 to 2**63-1, got {quoted(tried)}")
    if "tuning_seconds" not in parsed_fields and (
        problem := timing_problem(row.tuning_seconds, limit=MAX_TUNING_SECONDS, allow_zero=True)
    ):
        result.add("tuning_seconds", problem)

    candidates: list[tuple[dict[str, Any], float | None]] = []
    for i, (cand_config, cand_latency) in enumerate(row.runners_up):
        where = f"runners_up[{i}]"
        if not isinstance(cand_config, Mapping):
            result.add(f"{where}.config", "missing or not an object")
            continue
        normalized = _config(cand_config, key, checker, result, f"{where}.config")
        if (problem := timing_problem(cand_latency)) and "runners_up" not in parsed_fields:
            result.add(f"{where}.latency_ms", problem)
        if normalized is not None:
            candidates.append((normalized, cand_latency))

    result.key = key  # also for rows with other problems: duplicates are still found
    if result.problems or key is None or config is None:
        return result
    result.item = PresetInput(
        shape_key=key,
        config=config,
        latency_ms=row.latency_ms,
        default_ms=row.default_ms,
        reference_ms=row.reference_ms,
        configs_tried=row.configs_tried,
        tuning_seconds=row.tuning_seconds,
        kernel_source_hash=source_hash,
        candidates=tuple(candidates),
    )
    return result


def _row_key(row: Row, checker: KernelChecker, result: RowCheck, derive: bool) -> dict[str, Any] | None:
    key: Mapping[str, Any] | None = row.key
    if key is None and row.shape_features is not None and derive:
        try:
            key = checker.key_from_features(row.shape_features)
        except Exception as exc:  # noqa: BLE001  (the kernel's extractors may raise anything)
            result.add("shape_features", f"cannot derive a shape key ({exc}); pass --key JSON")
            return None
    if key is None:
        if not any(f in ("key", "shape_features") for f, _ in result.problems):
            result.add("key", "missing")
        return None
    try:
        canonical_key(key)
    except KeySpecError as exc:
        result.add("key", str(exc))
        return None
    try:
        problems = checker.key_spec.check_key(key) + _servable_key_problems(checker.key_spec, key)
    except OverflowError:
        problems = ["a number is too large"]
    for problem in problems:
        result.add("key", problem)
    return None if problems else dict(key)


def _servable_key_problems(spec: KeySpec, key: Mapping[str, Any]) -> list[str]:
    """What `check_key` lets through but no call can ever have: a size that is not a
    whole number, a size beyond 2**53, a dtype torch does not know, a huge string."""
    problems = []
    for f in spec.fields:
        value = key.get(f.name)
        if value is None:
            continue
        if f.policy != "exact":
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                continue  # check_key says it must be a number
            if isinstance(value, float):
                problems.append(f"key.{f.name}: a size must be a whole number, got {quoted(value)}")
            elif value > MAX_KEY_SIZE:
                problems.append(f"key.{f.name}: {clip(value, 40)} is larger than 2**53")
        elif isinstance(value, str) and len(value) > MAX_KEY_TEXT:
            problems.append(f"key.{f.name}: {len(value):,} characters; at most {MAX_KEY_TEXT}")
        elif f.name == "dtype" and not _is_torch_dtype(value):
            problems.append(f"key.dtype: {quoted(value)} is not a torch dtype name (e.g. 'bfloat16')")
    return problems


def _is_torch_dtype(name: object) -> bool:
    import torch

    return isinstance(name, str) and isinstance(getattr(torch, name.removeprefix("torch."), None), torch.dtype)


def _config(
    config: Mapping[str, Any],
    key: Mapping[str, Any] | None,
    checker: KernelChecker,
    result: RowCheck,
    field_name: str,
) -> dict[str, Any] | None:
    problems = config_value_problems(config)
    if problems:
        for problem in problems:
            result.add(field_name, problem)
        return None
    try:
        normalized = checker.check_config(config, key)
    except InvalidConfigError as exc:
        result.add(field_name, str(exc))
        return None
    except Exception as exc:  # noqa: BLE001  (Helion raises its own types for bad configs)
        result.add(field_name, f"{type(exc).__name__}: {exc}")
        return None
    # A list shorter than the kernel has loads, stores or loops (Helion pads or broadcasts
    # it): tuned for another kernel version or cut by hand, never what was measured.
    default_config = getattr(checker, "default_config", None)
    needed: Mapping[str, Any] = normalized
    if default_config is not None:
        try:
            needed = default_config(key)
        except Exception:  # noqa: BLE001  (the check above passed: fall back to the normalized form)
            needed = normalized
    short = False
    for name, value in config.items():
        full = needed.get(name)
        if isinstance(value, list) and isinstance(full, list) and len(value) < len(full):
            result.add(f"{field_name}.{name}", f"{len(value)} entries; this kernel needs {len(full)}")
            short = True
    return None if short else normalized


def config_value_problems(config: Mapping[str, Any]) -> list[str]:
    """Sizes no GPU can run, refused before Helion sees them (it passes some through)."""
    problems = []
    for name in ("block_sizes", "reduction_loops"):
        values = config.get(name)
        if not isinstance(values, list):
            continue
        for i, v in enumerate(values):
            if v is None and name == "reduction_loops":
                continue
            if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= MAX_BLOCK_SIZE:
                problems.append(f"{name}[{i}]: {quoted(v)}; must be an integer from 1 to 2**20")
    return problems


_SPEC_TENSOR = re.compile(r"\(torch\.(\w+), \(([0-9, ]*)\)")


def specialization_problem(spec_key: str, checker: KernelChecker, key: Mapping[str, Any]) -> str | None:
    """A Helion cache entry with --key: the entry's specialization key (dtypes and size
    buckets of the tensors it was tuned for) must match what `key` gives, else the config
    would be stored for shapes it was never tuned on (a (2, 2) entry under num_tokens=1)."""
    buckets = getattr(checker, "tensor_buckets", None)
    found = [
        (dtype, tuple(int(x) for x in sizes.replace(" ", "").split(",") if x))
        for dtype, sizes in _SPEC_TENSOR.findall(spec_key[:10_000])
    ]
    if buckets is None or not found:
        return None
    try:
        wanted = buckets(key)
    except Exception:  # noqa: BLE001  (the key check reports a key the kernel cannot take)
        return None
    if wanted != found:
        return (
            f"--key {canonical_key(key)} means tensors {wanted} (dtype, sizes bucketed 0/1/2+), but "
            f"the entry was tuned for {found} (its specialization key); pass the key it was tuned for"
        )
    return None


def find_checker(
    resolver: Resolver,
    name: str | None,
    *,
    helion_hash: str | None = None,
) -> KernelChecker:
    """The kernel a file (or row) means: by registered name, by Helion function name, or
    (Helion cache files name no kernel) by the Helion source hash."""
    if name is not None:
        try:
            return resolver.get(name)
        except UnknownKernelError:
            for checker in resolver.all():
                if name in checker.aliases():
                    return checker
            raise
    if helion_hash is not None:
        for checker in resolver.all():
            if checker.helion_source_hash() == helion_hash:
                return checker
    known = ", ".join(sorted(c.name for c in resolver.all())) or "(none)"
    raise UnknownKernelError(
        f"the file does not say which kernel it is for and its source hash matches no "
        f"registered kernel; pass --kernel (registered: {known})"
    )
