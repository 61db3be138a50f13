"""Fast dispatch: from a call's tensor metadata straight to Helion's compiled runner.

Helion's own per-call path (``Kernel.__call__`` with a ``key=`` hook) rebuilds an exact
metadata key, calls the hook and walks its specialization machinery on every launch.
After the first call for a (stored config, specialization) pair presetdb instead keeps
the compiled runner (``BoundKernel._run``, the generated host function) and calls a
copy of it directly (`published_runner`: on a GPU with
`presetdb.helion._accel.launch.FastLauncher` as its launcher, and with
`presetdb.helion._accel.host_triton` as its ``triton``), keyed by a cheap tuple:

- per tensor: dtype, device, rank, each size as 0 / 1 / "2 or more", whether it is
  contiguous, else each stride as 0 / 1 / "2 or more", and whether ``numel`` needs
  64-bit indexing;
- per scalar: its type (by value for ``str`` and constexpr parameters);
- the token of the stored config that resolved the call.

In front of that sits the call memo (`exact_key`): the exact metadata of a call (every
tensor's shape, strides, dtype and device; scalars by value, floats by type) maps
straight to the entry a previous call with that metadata used, skipping the features,
the picker and the bucketed key. Only entries whose guards all read sizes and strides
are memoized (those guards are decided by the exact metadata); an entry that re-checks
anything else (tensor-descriptor alignment, an unknown extractor) stays on the
bucketed path.

Why this never changes results: with ``static_shapes=False`` Helion keys a compiled
kernel by dtype, rank (every concrete size is bucketed alike), the 64-bit flag, device
type and the ``key=`` token; this tuple refines all of those. What a compilation learns
later (size guards such as "this dim is 1", ``hl.specialize`` values, tensor-descriptor
layout facts, exact-metadata compiler facts) Helion records as extractor functions; each
entry keeps those extractors with the values they had and re-checks them per call, and
an entry is dropped when Helion's specialization or reset generation moves on. Any
mismatch falls back to Helion's own path, which is always correct. Aliased tensor
arguments, tensor subclasses and unknown argument types always take Helion's path.
"""

from __future__ import annotations

import functools
import types
from collections.abc import Callable, Hashable, Sequence
from typing import Any

import torch

from presetdb.helion._accel import internals
from presetdb.helion.memo import exact_key  # noqa: F401  (re-exported: the fast path's callers used it here)

INT32_INDEX_LIMIT = 2**31 - 1  # numel above this needs 64-bit indexing (Helion's rule)
# Module constants: the hot path reads them without attribute lookups on `torch`.
_TENSOR, _PARAMETER, _DTYPE = torch.Tensor, torch.nn.Parameter, torch.dtype

Runner = Callable[..., Any]
Guard = tuple[Callable[[Sequence[object]], Hashable], Hashable]


def dispatch_key(args: Sequence[object], scalars_by_value: bool = False) -> tuple[Hashable, ...] | None:
    """The cheap metadata tuple of a call, or None when only Helion's path is safe."""
    key: list[Hashable] = []
    add = key.append
    seen: list[object] = []
    for a in args:
        t = type(a)
        if t is _TENSOR or t is _PARAMETER:
            for other in seen:
                if other is a:
                    return None  # Helion keys aliasing; leave it to Helion
            seen.append(a)
            tensor: torch.Tensor = a  # type: ignore[assignment]
            if getattr(tensor, "_dynamo_static_indices", None) is not None:
                return None
            add(tensor.dtype)
            add(tensor.device)
            shape = tensor.shape
            add(len(shape))  # the rank: makes the flat key parse one way only
            for s in shape:
                add(s if s < 2 else 2)  # noqa: FURB136  (min() is a call: slower here)
            if tensor.is_contiguous():
                add(True)  # the common case: strides follow from the sizes
            else:
                add(False)
                for s in tensor.stride():
                    add(s if s < 2 else 2)  # noqa: FURB136
            add(tensor.numel() > INT32_INDEX_LIMIT)
        elif t is float or t is int or t is bool:
            add((t, a) if scalars_by_value else t)
        elif t is str or t is _DTYPE or a is None:
            add(a)
        else:
            return None  # tensor subclasses (FakeTensor), containers, objects
    return tuple(key)


def fast_guard(extractor: Any, nargs: int) -> Callable[[Sequence[object]], Hashable] | None:
    """An equivalent, cheaper form of Helion's most common guard fact: a relation of two
    input sizes/strides (``weight.size(0) == x.size(1)``, ``x.size(0) != 1``).

    Returns None (use Helion's extractor as is) for anything else. The returned function
    gives the same value as the extractor for arguments whose dispatch key matched the
    entry's: those positions hold plain tensors of the recorded ranks."""
    from torch._dynamo.source import LocalSource, TensorProperty, TensorPropertySource

    fact = internals.size_fact(extractor)
    if fact is None:
        return None
    try:
        import sympy  # type: ignore[import-untyped]

        names = list(fact.param_names)
        readers: dict[Any, Callable[[Sequence[Any]], int]] = {}
        for symbol, source in fact.sources:
            if not (isinstance(source, TensorPropertySource) and isinstance(source.base, LocalSource)):
                return None
            position = names.index(source.base.local_name)
            if position >= nargs or source.idx is None:
                return None
            if source.prop == TensorProperty.SIZE:
                readers[symbol] = _size_reader(position, source.idx)
            elif source.prop == TensorProperty.STRIDE:
                readers[symbol] = _stride_reader(position, source.idx)
            else:
                return None

        def side(expr: Any) -> Callable[[Sequence[Any]], int] | None:
            if isinstance(expr, sympy.Integer):
                value = int(expr)
                return lambda args: value
            return readers.get(expr) if isinstance(expr, sympy.Symbol) else None

        lhs, rhs = side(fact.lhs), side(fact.rhs)
    except Exception:  # noqa: BLE001  (any surprise: keep Helion's own extractor)
        return None
    if lhs is None or rhs is None:
        return None
    equal, block = fact.equal, fact.block

    def check(args: Sequence[object]) -> Hashable:
        value = lhs(args)
        if block:  # a reduction block: next power of two of the extent
            value = 1 if value <= 0 else 1 << (value - 1).bit_length()
        return equal if value == rhs(args) else not equal

    return check


def _size_reader(position: int, dim: int) -> Callable[[Sequence[Any]], int]:
    return lambda args: args[position].shape[dim]


def _stride_reader(position: int, dim: int) -> Callable[[Sequence[Any]], int]:
    return lambda args: args[position].stride(dim)


class Entry:
    """A compiled runner of one config kernel for one (bucketed) signature, with the
    guard values it was published under."""

    __slots__ = (
        "bound", "generation", "guards", "kernel", "memoizable", "raw_run", "reset", "run", "schema",
        "seed_schema", "signature",
    )

    def __init__(
        self, run: Runner, raw_run: Runner, guards: tuple[Guard, ...], generation: int, reset: int,
        bound: Any, signature: Hashable, schema: object, seed_schema: object, memoizable: bool,
    ) -> None:
        self.run = run
        self.raw_run = raw_run  # Helion's own host function, when published
        self.guards = guards
        # Every guard reads only sizes/strides: the call memo (exact metadata) may serve it.
        self.memoizable = memoizable
        self.generation = generation  # Helion's specialization generation last validated
        self.reset = reset
        self.bound = bound  # the BoundKernel that compiled `run` (introspection, tests)
        self.kernel = bound.kernel
        self.signature = signature
        self.schema = schema  # the extractor list Helion published for `signature`
        self.seed_schema = seed_schema

    def current(self) -> bool:
        """Helion has learned nothing since this entry was last validated (the memo's check)."""
        return self.generation == internals.specialization_generation(self.kernel)

    def still_valid(self) -> bool:
        """After Helion's generation moved: is this runner still what Helion would use?

        Helion replaces a signature's extractor list when it learns a new guard, and
        retires a bound kernel by clearing its runner; other signatures are untouched."""
        kernel = self.kernel
        reset = internals.reset_generation(kernel)
        return (
            self.reset == reset
            and internals.reset_generation(self.bound) == reset
            and internals.bound_runner(self.bound) is self.raw_run
            and internals.specialize_extra(kernel).get(self.signature) is self.schema
            and internals.seed_specialize_extra(kernel).get(self.signature) is self.seed_schema
        )


class RunnerCache:
    """Compiled runners of one config kernel (a plain Helion kernel serving one stored
    config), keyed by the dispatch key."""

    def __init__(self, kernel: Any, launcher: Callable[..., Any] | None, *, scalars_by_value: bool = False) -> None:
        self.kernel = kernel
        self.scalars_by_value = scalars_by_value
        self.launcher = launcher  # None: the runner's own (interpreter, PRESETDB_FAST_LAUNCH=0)
        self._by_meta: dict[tuple[Hashable, ...], list[Entry]] = {}

    def key(self, args: Sequence[object]) -> tuple[Hashable, ...] | None:
        return dispatch_key(args, self.scalars_by_value)

    def lookup(self, meta: tuple[Hashable, ...], args: Sequence[object]) -> Entry | None:
        entries = self._by_meta.get(meta)
        if entries is None:
            return None
        generation = internals.specialization_generation(self.kernel)
        for entry in entries:
            if entry.generation != generation:
                if not entry.still_valid():
                    try:
                        entries.remove(entry)  # Helion learned more about this signature
                    except ValueError:  # another thread removed it first
                        pass
                    return self.lookup(meta, args)
                entry.generation = generation
            for extract, expected in entry.guards:
                if extract(args) != expected:
                    break
            else:
                return entry
        return None

    def publish(self, meta: tuple[Hashable, ...], args: tuple[object, ...]) -> bool:
        """After a successful call through Helion: remember the runner it used."""
        kernel = self.kernel
        generation, reset = internals.specialization_generation(kernel), internals.reset_generation(kernel)
        bound = kernel.bind(args)
        run = internals.bound_runner(bound)
        signature = internals.bound_signature(bound)
        published = internals.specialize_extra(kernel)
        if run is None or signature is None or signature not in published:
            return False  # no published schema to guard with: keep using Helion's path
        schema = published.get(signature)
        seed_schema = internals.seed_specialize_extra(kernel).get(signature)
        extractors = list(schema or ())
        # device facts are fixed by the device in the key; exact metadata is not
        extractors += [e for e in seed_schema or () if internals.is_metadata_seed(e)]
        if not _uses_tensor_descriptors(internals.bound_config(bound)):
            # Helion keeps tensor-descriptor layout/alignment guards when it cannot know the
            # config at bind time, but a guard is only active for a config that indexes that
            # operation with tensor descriptors. The runner's config is known here: for a
            # pointer/block-pointer config they cannot change the code, and re-checking
            # them was the largest part of the fast path's cost on a GPU.
            extractors = [e for e in extractors if not internals.is_td_guard(e)]
        fast = [fast_guard(e, len(args)) for e in extractors]
        guards = tuple((f or e, e(args)) for f, e in zip(fast, extractors, strict=True))
        if generation != internals.specialization_generation(kernel) or reset != internals.reset_generation(kernel):
            return False  # the schema moved while we looked; try again next call
        launched = published_runner(run, self.launcher)
        entries = self._by_meta.setdefault(meta, [])
        values = tuple(v for _, v in guards)
        entries[:] = [e for e in entries if tuple(v for _, v in e.guards) != values and e.still_valid()]
        entries.append(
            Entry(
                launched, run, guards, generation, reset, bound, signature, schema, seed_schema,
                memoizable=None not in fast,
            )
        )
        return True

    def __len__(self) -> int:
        return sum(len(v) for v in self._by_meta.values())


def runner_launcher() -> Callable[..., Any] | None:
    """The launcher published runners get: a `FastLauncher` on a GPU driver, else None
    (keep Helion's: the interpreter, or PRESETDB_FAST_LAUNCH=0)."""
    from presetdb.helion._accel.launch import fast_launcher_for
    from presetdb.settings import Settings

    if not Settings.from_env().fast_launch:
        return None
    default = internals.default_launcher()
    launcher = fast_launcher_for(default)
    return None if launcher is default else launcher


def published_runner(run: Runner, launcher: Callable[..., Any] | None) -> Runner:
    """What presetdb publishes for Helion's generated host function `run`: a copy of it
    (same code, closure and defaults) that launches through `launcher` (its ``_launcher``
    keyword default; None keeps Helion's) and sees `presetdb.helion._accel.host_triton`
    as its global ``triton``. A runner that is not such a function is wrapped in a
    partial instead. Helion's own function is not changed."""
    kwarg = internals.LAUNCHER_KWARG
    defaults = getattr(run, "__kwdefaults__", None)
    if type(run) is not types.FunctionType or not defaults or kwarg not in defaults:
        return run if launcher is None else functools.partial(run, **{kwarg: launcher})
    from presetdb.helion._accel.host_triton import host_triton

    module_globals, view = run.__globals__, host_triton()
    name = internals.HOST_TRITON_GLOBAL
    if module_globals.get(name) is view.__wrapped__:  # the generated module's `import triton`
        module_globals = {**module_globals, name: view}
    copy = types.FunctionType(run.__code__, module_globals, run.__name__, run.__defaults__, run.__closure__)
    copy.__kwdefaults__ = {**defaults, kwarg: defaults[kwarg] if launcher is None else launcher}
    copy.__dict__.update(run.__dict__)
    copy.__qualname__ = run.__qualname__
    copy.__wrapped__ = run  # type: ignore[attr-defined]
    return copy


def launcher_of(run: Runner) -> Callable[..., Any] | None:
    """The launcher a published runner launches with (tests, diagnostics)."""
    if isinstance(run, functools.partial):
        return run.keywords.get(internals.LAUNCHER_KWARG)
    return (getattr(run, "__kwdefaults__", None) or {}).get(internals.LAUNCHER_KWARG)


def _uses_tensor_descriptors(config: Any) -> bool:
    """Whether a compiled config may index any operation with tensor descriptors.
    Unknown (None) counts as yes: keep every guard."""
    if config is None:
        return True
    get = config.get if hasattr(config, "get") else lambda k, d=None: getattr(config, k, d)
    for name in ("indexing", "atomic_indexing"):
        value = get(name, None)
        values = value if isinstance(value, (list, tuple)) else [value]
        if any(v == "tensor_descriptor" for v in values):
            return True
    return bool(get("host_tensor_descriptors", False))
