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

INT32_INDEX_LIMIT = 2**31 - 1  # numel above this needs 64-bit indexing (Helion's rule)
# Exact call signatures remembered per kernel: a serving engine sees one per distinct token
# count; beyond the limit the memo starts over.
CALL_MEMO_LIMIT = 16384
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


def exact_key(args: Sequence[object], floats_by_value: bool = False) -> tuple[Hashable, ...] | None:
    """The call memo's key: exact tensor metadata, scalars by value (floats by type, so
    a per-call float such as a scale does not defeat the memo, unless the kernel has
    constexpr parameters); None when only the bucketed path is safe (aliasing, tensor
    subclasses, unknown argument types).

    A kernel's features may read tensor metadata and non-float scalars, never a float's
    value (docs/CONTRACTS.md)."""
    key: tuple[Hashable, ...] = ()  # grown by concatenation: cheaper than a list for a few args
    previous = None
    tensors = 0
    for a in args:
        t = type(a)
        if t is _TENSOR or t is _PARAMETER:
            if a is previous:
                return None  # aliasing: Helion keys it; leave it to the bucketed path
            previous = a
            tensors += 1
            key += (a.shape, a.stride(), a.dtype, a.device)  # type: ignore[attr-defined]
        elif t is float and not floats_by_value:
            key += (t,)
        elif t is int or t is bool or t is float or t is str or t is _DTYPE or a is None:
            key += (t, a)  # the type too: 1, 1.0 and True hash alike
        else:
            return None
    if tensors > 2 and len({id(a) for a in args if isinstance(a, torch.Tensor)}) < tensors:
        return None  # a tensor passed twice, not side by side
    return key


def fast_guard(extractor: Any, nargs: int) -> Callable[[Sequence[object]], Hashable] | None:
    """An equivalent, cheaper form of Helion's most common guard fact: a relation of two
    input sizes/strides (``weight.size(0) == x.size(1)``, ``x.size(0) != 1``).

    Returns None (use Helion's extractor as is) for anything else. The returned function
    gives the same value as the extractor for arguments whose dispatch key matched the
    entry's: those positions hold plain tensors of the recorded ranks."""
    from torch._dynamo.source import LocalSource, TensorProperty, TensorPropertySource

    fact: Any = getattr(extractor, "extractor", None)
    if fact is None or type(fact).__name__ != "_GuardedInputFact":
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
    equal, block = bool(fact.equal), bool(fact.block)

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


class _Entry:
    __slots__ = (
        "bound", "generation", "guards", "memoizable", "raw_run", "reset", "run", "schema", "seed_schema",
        "signature",
    )

    def __init__(
        self, run: Runner, raw_run: Runner, guards: tuple[Guard, ...], generation: int, reset: int,
        bound: Any, signature: Hashable, schema: object, seed_schema: object, memoizable: bool,
    ) -> None:
        self.run = run
        self.raw_run = raw_run  # bound._run when published
        self.guards = guards
        # Every guard reads only sizes/strides: the call memo (exact metadata) may serve it.
        self.memoizable = memoizable
        self.generation = generation  # Helion's specialization generation last validated
        self.reset = reset
        self.bound = bound  # the BoundKernel that compiled `run` (introspection, tests)
        self.signature = signature
        self.schema = schema  # the extractor list Helion published for `signature`
        self.seed_schema = seed_schema

    def still_valid(self, kernel: Any) -> bool:
        """After Helion's generation moved: is this runner still what Helion would use?

        Helion replaces a signature's extractor list when it learns a new guard, and
        retires a bound kernel by clearing its runner; other signatures are untouched."""
        return (
            self.reset == kernel._reset_generation
            and self.bound._reset_generation == kernel._reset_generation
            and self.bound._run is self.raw_run
            and kernel._specialize_extra.get(self.signature) is self.schema
            and kernel._compiler_seed_specialize_extra.get(self.signature) is self.seed_schema
        )


def helion_supports_fast_dispatch(kernel: Any) -> bool:
    """The private Helion state this module reads exists (pinned helion==1.5.0)."""
    return all(
        hasattr(kernel, name)
        for name in (
            "_specialize_extra",
            "_compiler_seed_specialize_extra",
            "_specialization_generation",
            "_reset_generation",
        )
    )


class RunnerCache:
    """Compiled runners of one Helion kernel, keyed by (token, dispatch key)."""

    def __init__(self, kernel: Any, *, scalars_by_value: bool = False) -> None:
        self.kernel = kernel
        self.scalars_by_value = scalars_by_value
        self.enabled = helion_supports_fast_dispatch(kernel)
        self.launcher: Callable[..., Any] | None = None  # benchmarks: a no-op launcher
        self._by_token: dict[Hashable, dict[tuple[Hashable, ...], list[_Entry]]] = {}
        # The call memo: exact_key(args) -> (picker epoch, stored config, _Entry); the
        # integration fills and checks it (RegisteredKernel.call_eager).
        self.calls: dict[tuple[Hashable, ...], tuple[object, Any, _Entry]] = {}

    def remember_call(self, exact: tuple[Hashable, ...], hit: tuple[object, Any, _Entry]) -> None:
        calls = self.calls
        if len(calls) >= CALL_MEMO_LIMIT:
            calls.clear()  # bounded: a stream of new shapes cannot grow memory
        calls[exact] = hit

    def key(self, args: Sequence[object]) -> tuple[Hashable, ...] | None:
        return dispatch_key(args, self.scalars_by_value) if self.enabled else None

    def lookup(self, token: Hashable, meta: tuple[Hashable, ...], args: Sequence[object]) -> _Entry | None:
        by_meta = self._by_token.get(token)
        if by_meta is None:
            return None
        entries = by_meta.get(meta)
        if entries is None:
            return None
        kernel = self.kernel
        for entry in entries:
            if entry.generation != kernel._specialization_generation:
                if not entry.still_valid(kernel):
                    try:
                        entries.remove(entry)  # Helion learned more about this signature
                    except ValueError:  # another thread removed it first
                        pass
                    return self.lookup(token, meta, args)
                entry.generation = kernel._specialization_generation
            for extract, expected in entry.guards:
                if extract(args) != expected:
                    break
            else:
                return entry
        return None

    def entry_for(self, token: Hashable, args: Sequence[object]) -> _Entry | None:
        """The entry a call would use (tests and introspection)."""
        meta = self.key(args)
        return None if meta is None else self.lookup(token, meta, args)

    def publish(self, token: Hashable, meta: tuple[Hashable, ...], args: tuple[object, ...]) -> bool:
        """After a successful call through Helion: remember the runner it used.

        Must run while the key= hook still answers `token` for these args (the caller
        keeps its per-call slot filled), because `bind` consults the hook."""
        kernel = self.kernel
        generation, reset = kernel._specialization_generation, kernel._reset_generation
        bound = kernel.bind(args)
        run = bound._run
        signature = getattr(bound, "_base_spec_key", None)
        if run is None or signature is None or signature not in kernel._specialize_extra:
            return False  # no published schema to guard with: keep using Helion's path
        schema = kernel._specialize_extra.get(signature)
        seed_schema = kernel._compiler_seed_specialize_extra.get(signature)
        extractors = list(schema or ())
        extractors += [
            e
            for e in seed_schema or ()
            # device facts are fixed by the device in the key; exact metadata is not
            if getattr(e, "fact", None) == "input_tensor_metadata"
        ]
        if not _uses_tensor_descriptors(getattr(bound, "_config", None)):
            # Helion keeps tensor-descriptor layout/alignment guards when it cannot know the config
            # at bind time (our autotuner_fn path), but a guard is only active for a config
            # that indexes that operation with tensor descriptors (Helion's own
            # `_td_guard_active_for_config`). The runner's config is known here: for a
            # pointer/block-pointer config they cannot change the code, and re-checking
            # them was the largest part of the fast path's cost on a GPU.
            extractors = [e for e in extractors if not _is_td_guard(e)]
        fast = [fast_guard(e, len(args)) for e in extractors]
        guards = tuple((f or e, e(args)) for f, e in zip(fast, extractors, strict=True))
        if generation != kernel._specialization_generation or reset != kernel._reset_generation:
            return False  # the schema moved while we looked; try again next call
        launcher = self.launcher if self.launcher is not None else self._fast_launcher()
        launched = published_runner(run, launcher)
        entries = self._by_token.setdefault(token, {}).setdefault(meta, [])
        values = tuple(v for _, v in guards)
        entries[:] = [
            e for e in entries if tuple(v for _, v in e.guards) != values and e.still_valid(kernel)
        ]
        entries.append(
            _Entry(
                launched, run, guards, generation, reset, bound, signature, schema, seed_schema,
                memoizable=None not in fast,
            )
        )
        return True

    def clear(self) -> None:
        self._by_token = {}
        self.calls = {}

    @staticmethod
    def _fast_launcher() -> Callable[..., Any] | None:
        """A launcher of its own for each published runner (presetdb.helion._accel.launch),
        or None to keep the runner's default (interpreter, PRESETDB_FAST_LAUNCH=0)."""
        from helion.runtime import default_launcher

        from presetdb.helion._accel.launch import fast_launcher_for
        from presetdb.settings import Settings

        if not Settings.from_env().fast_launch:
            return None
        launcher = fast_launcher_for(default_launcher)
        return None if launcher is default_launcher else launcher

    def __len__(self) -> int:
        return sum(len(v) for by_meta in self._by_token.values() for v in by_meta.values())


def published_runner(run: Runner, launcher: Callable[..., Any] | None) -> Runner:
    """What presetdb publishes for Helion's generated host function `run`: a copy of it
    (same code, closure and defaults) that launches through `launcher` (its ``_launcher``
    keyword default; None keeps Helion's) and sees `presetdb.helion._accel.host_triton`
    as its global ``triton``. A runner that is not such a function is wrapped in a
    partial instead. Helion's own function is not changed."""
    defaults = getattr(run, "__kwdefaults__", None)
    if type(run) is not types.FunctionType or not defaults or "_launcher" not in defaults:
        return run if launcher is None else functools.partial(run, _launcher=launcher)
    from presetdb.helion._accel.host_triton import host_triton

    module_globals, view = run.__globals__, host_triton()
    if module_globals.get("triton") is view.__wrapped__:  # the generated module's `import triton`
        module_globals = {**module_globals, "triton": view}
    copy = types.FunctionType(run.__code__, module_globals, run.__name__, run.__defaults__, run.__closure__)
    copy.__kwdefaults__ = {**defaults, "_launcher": defaults["_launcher"] if launcher is None else launcher}
    copy.__dict__.update(run.__dict__)
    copy.__qualname__ = run.__qualname__
    copy.__wrapped__ = run  # type: ignore[attr-defined]
    return copy


def launcher_of(run: Runner) -> Callable[..., Any] | None:
    """The launcher a published runner launches with (tests, diagnostics)."""
    if isinstance(run, functools.partial):
        return run.keywords.get("_launcher")
    return (getattr(run, "__kwdefaults__", None) or {}).get("_launcher")


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


TD_GUARD_NAMES = frozenset({"td_layout_extractor", "td_alignment_extractor"})


def _is_td_guard(extractor: Any) -> bool:
    """Helion's tensor-descriptor layout and alignment guards (both only active for a
    config that indexes the guarded operation with tensor descriptors)."""
    inner = getattr(extractor, "extractor", extractor)
    return getattr(inner, "__name__", "") in TD_GUARD_NAMES
