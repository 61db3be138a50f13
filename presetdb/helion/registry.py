"""Helion kernels whose configs come from the presetdb store.

How Helion normally works
-------------------------
A ``helion.kernel`` call binds its arguments to a specialization key (dtypes, ranks,
whether 64-bit indexing is needed, device, and whatever an optional ``key=`` function
returns). The first call for a key creates a ``BoundKernel`` and asks it for a config:
an explicit ``config=``, Helion's default config when ``autotune_effort="none"``, or an
autotuner built by the ``autotuner_fn`` setting, whose ``autotune()`` benchmarks
candidates for minutes. The chosen config is compiled into a host function (the
"compiled runner") that later calls with the same key reuse.

How presetdb overrides it
-------------------------
`register_kernel` wraps a kernel body with ``helion.kernel(key=..., autotuner_fn=...)``
and pins ``static_shapes=False``, an explicit ``autotune_effort``, ``ref_mode=OFF`` and
no hand-off, so ``HELION_AUTOTUNE_EFFORT=none``, ``HELION_STATIC_SHAPES`` or
``HELION_INTERPRET=1`` cannot route around the store. Each call resolves once: the key
spec extracts features (``{"dtype": "bfloat16", "hidden": 4096, "num_tokens": 37}``),
the picker matches them against stored keys, and the answer is kept in a per-thread
slot. The ``key=`` hook returns a token derived from it (the stored config's sha256, so
different stored configs get different compiled kernels; misses get a policy token),
and on Helion's cache miss the ``autotuner_fn=`` hook returns `PresetConfigSearch`,
whose ``autotune()`` validates, compiles and returns the stored config instead of
searching. A row that fails is quarantined and the call follows the miss policy
(``PRESETDB_ON_MISS``, see `presetdb.helion.hooks`).

After the first call for a (stored config, specialization), presetdb calls Helion's
compiled runner directly (`presetdb.helion._accel.dispatch`), skipping Helion's per-call
binding, and launches its Triton kernel directly (`presetdb.helion._accel.launch`). The
runner is a copy of Helion's host function whose ``triton.next_power_of_2``/``cdiv``
run at plain-function cost (`presetdb.helion._accel.host_triton`). A call
whose exact metadata was seen before skips even the features and the picker: a call memo
maps it to the stored config and runner, valid while the picker's epoch (its data) and
Helion's specialization state stand; misses are never memoized. Every kernel is also
``torch.ops.presetdb.<name>`` with a fake implementation, so it works under
``torch.compile(fullgraph=True)`` (`presetdb.helion.ops`).
"""

from __future__ import annotations

import hashlib
import inspect
import json
import textwrap
from collections.abc import Callable, Hashable, Sequence
from typing import Any

import helion
import torch
from helion.exc import AutotuningDisallowedInEnvironment
from helion.runtime.ref_mode import RefMode

from presetdb.errors import (
    InvalidConfigError,
    KernelRegistrationError,
    PresetMissError,
    UnknownKernelError,
)
from presetdb.helion import interpreter, ops
from presetdb.helion._accel.dispatch import RunnerCache, dispatch_key, exact_key
from presetdb.helion.args import Adapter, flatten_leading, key_fields, validation_args
from presetdb.helion.hooks import (
    CALL_SLOT,
    DEFAULT_TOKEN,
    PresetConfigSearch,
    Resolution,
    RetryResolution,
    miss_error,
    miss_token,
    policy_for,
    quarantine,
    resolve,
    slot_resolution,
    split_device_keys,
)
from presetdb.keys import KeySpec, KeyValue, canonical_key
from presetdb.runtime.picker import Choice, get_picker

ExampleInputs = Callable[..., tuple[Any, ...]]

# Settings presetdb pins itself; passing them would let the store be bypassed.
PINNED_SETTINGS = frozenset({"static_shapes", "autotune_effort", "autotuner_fn", "ref_mode", "autotune_handoff"})
MAX_RETRIES = 8  # stored rows quarantined in one call before giving up on the store

_is_compiling = torch.compiler.is_compiling
_registry: dict[str, RegisteredKernel] = {}


class RegisteredKernel:
    """A Helion kernel served from the store; see the module docstring."""

    def __init__(
        self,
        body: Callable[..., Any],
        *,
        name: str,
        key_spec: KeySpec,
        reference: Callable[..., Any],
        example_inputs: ExampleInputs,
        mutates_args: Sequence[str] = (),
        fake_impl: Callable[..., Any] | None = None,
        adapt: Adapter | None = None,
        features: Callable[..., tuple[KeyValue, ...]] | None = None,
        description: str = "",
        autotune_effort: str = "quick",
        helion_settings: dict[str, Any] | None = None,
        baseline: Callable[..., Any] | None = None,
    ) -> None:
        settings = dict(helion_settings or {})
        pinned = PINNED_SETTINGS & settings.keys()
        if pinned:
            raise KernelRegistrationError(f"{name}: presetdb pins {sorted(pinned)} itself; remove them")
        if autotune_effort not in ("quick", "full"):
            raise KernelRegistrationError(
                f"{name}: autotune_effort must be 'quick' or 'full' (used by PRESETDB_ON_MISS=autotune); "
                "'none' would let Helion skip the store"
            )
        missing = [f.name for f in key_spec.fields if f.extract is None]
        if missing:
            raise KernelRegistrationError(f"{name}: key fields {missing} have no extract function")
        interpreter.install_shims()  # TRITON_INTERPRET=1 only: see presetdb.helion.interpreter
        self.name = name
        self.key_spec = key_spec
        self.body = body
        self.reference = reference
        # What PyTorch users would call (timed as reference_ms); the float32 `reference`
        # is for correctness checks and is not a fair speed baseline.
        self.baseline = baseline or reference
        self.example_inputs = example_inputs
        self.mutates_args = tuple(mutates_args)
        self.description = description or (inspect.getdoc(body) or "").split("\n\n")[0]
        self.autotune_effort = autotune_effort
        self._adapt = adapt
        extractors = tuple(f.extract for f in key_spec.fields)
        # One call per launch: a kernel may give all features as one function.
        self._features: Callable[..., tuple[KeyValue, ...]] = features or (
            lambda *a: tuple([extract(*a) for extract in extractors])  # type: ignore[misc]
        )
        self._helion_settings = settings
        self.helion_kernel = helion.kernel(
            body,
            key=self._key_hook,
            autotuner_fn=self._autotuner_hook,
            static_shapes=False,
            autotune_effort=autotune_effort,
            ref_mode=RefMode.OFF,
            autotune_handoff=False,
            **settings,
        )
        self.runners = RunnerCache(self.helion_kernel, scalars_by_value=_has_constexpr(self.helion_kernel))
        self._shape_kernel: Any = None
        self.last_choice: Choice | None = None  # what served the latest call (demo, CLI)
        self.op = ops.register_op(self, fake_impl)

    def __repr__(self) -> str:
        return f"RegisteredKernel({self.name!r}, key={list(self.key_spec.names)})"

    # ------------------------------------------------------------------ calling
    def __call__(self, *args: Any) -> Any:
        if _is_compiling():
            return self.op(*args)  # traced as one node (fake impl), dispatched at run time
        return self.call_eager(*args)

    def call_eager(self, *args: Any) -> Any:
        """The op's implementation: adapt, resolve, fast dispatch, else Helion.

        This is the hot path; it is written flat on purpose (each Python call costs).
        First the call memo (exact metadata -> the stored config and runner a previous
        call used, valid while the picker's epoch and Helion's specialization generation
        stand), then features -> picker -> bucketed runner lookup, then Helion itself."""
        restore = None
        if self._adapt is not None:
            args, restore = self._adapt(*args)
        picker = get_picker()
        epoch = picker.epoch()
        runners = self.runners
        exact = exact_key(args, runners.scalars_by_value) if runners.enabled else None
        if exact is not None:
            hit = runners.calls.get(exact)
            if hit is not None and hit[0] is epoch and hit[2].generation == self.helion_kernel._specialization_generation:
                self.last_choice = hit[1]
                out = hit[2].run(*args)
                return out if restore is None else restore(out)
        features = self._features(*args)
        choice = picker.resolve(self.name, self.key_spec, features)
        self.last_choice = choice
        token = choice.preset.config_sha256 if choice is not None else miss_token(self, picker, features)
        meta = dispatch_key(args, runners.scalars_by_value) if runners.enabled else None
        entry = None if meta is None else runners.lookup(token, meta, args)
        if entry is not None:
            if exact is not None and choice is not None and entry.memoizable:
                runners.remember_call(exact, (epoch, choice, entry))  # misses are not: each is counted
            out = entry.run(*args)
        else:
            out = self._slow(args, Resolution(features, choice, token), meta)
        return out if restore is None else restore(out)

    def _slow(self, kargs: tuple[Any, ...], res: Resolution, meta: tuple[Hashable, ...] | None) -> Any:
        """Through Helion (its key= and autotuner_fn= hooks), then publish the runner."""
        for attempt in range(MAX_RETRIES + 1):
            if attempt == MAX_RETRIES:  # rows keep failing: stop trusting the store for this call
                if policy_for(get_picker()) == "strict":
                    raise PresetMissError(f"{self.name}: {MAX_RETRIES} stored configs failed in one call")
                res = Resolution(res.features, None, DEFAULT_TOKEN)
            slot = CALL_SLOT
            saved = (slot.kernel, slot.args, slot.resolution)
            slot.kernel, slot.args, slot.resolution = self, kargs, res
            try:
                try:
                    out = self._call_helion(kargs, res)
                except RetryResolution as retry:
                    # The hook quarantined the stored row: resolve again (next row or a miss).
                    res = self._re_resolve(res, f" (stored config quarantined: {retry.reason})")
                    continue
                except PresetMissError:
                    raise
                except Exception as exc:
                    if res.choice is None:
                        raise
                    out = self._recover_launch(kargs, res, exc)
                    if out is _RESOLVE_AGAIN:
                        res = self._re_resolve(res, " (stored config quarantined)")
                        continue
                    return out
                if meta is not None:
                    try:
                        self.runners.publish(res.token, meta, kargs)
                    except Exception:  # noqa: BLE001, S110  (an optimisation; never fail the call)
                        pass
                return out
            finally:
                slot.kernel, slot.args, slot.resolution = saved
        raise AssertionError("unreachable: the last attempt runs Helion's default config")

    def _re_resolve(self, res: Resolution, why: str) -> Resolution:
        picker = get_picker()
        choice = self.last_choice = picker.resolve(self.name, self.key_spec, res.features)
        if choice is not None:
            return Resolution(res.features, choice, choice.preset.config_sha256)
        return Resolution(res.features, None, miss_token(self, picker, res.features, why))

    def _call_helion(self, kargs: tuple[Any, ...], res: Resolution) -> Any:
        try:
            return self.helion_kernel(*kargs)
        except AutotuningDisallowedInEnvironment:
            # HELION_DISALLOW_AUTOTUNING blocks any autotuner_fn, though ours does not
            # search: configure the bound kernel from the store directly instead.
            bound = self.helion_kernel.bind(kargs)
            bound.set_config(PresetConfigSearch(self, bound, kargs, res).autotune())
            return self.helion_kernel(*kargs)

    def _recover_launch(self, kargs: tuple[Any, ...], res: Resolution, exc: Exception) -> Any:
        """A stored config compiled but its first launch failed (on GPUs Triton compiles
        at first launch). Blame the row only if Helion's default config runs."""
        assert res.choice is not None
        try:
            bound = self.helion_kernel.bind(kargs)
            default = bound.compile_config(bound.config_spec.default_config(), allow_print=False)
            out = default(*kargs)
        except Exception:  # noqa: BLE001
            raise exc from None  # not the stored config's fault: the caller's error stands
        picker = get_picker()
        quarantine(self, picker, res.choice, f"launch failed: {type(exc).__name__}: {exc}"[:500])
        policy = policy_for(picker)
        if policy == "strict":
            raise miss_error(self, picker, res.features, " (stored config quarantined)") from exc
        if policy == "autotune":
            return _RESOLVE_AGAIN
        miss_token(self, picker, res.features, " (stored config quarantined)")
        self.last_choice = None  # Helion's default config ran, not the stored one
        return out

    # ------------------------------------------------------------------ Helion hooks
    def _key_hook(self, *args: Any) -> Hashable:
        return self._resolution_for(args).token

    def _autotuner_hook(self, bound: Any, args: Sequence[object], **kwargs: object) -> PresetConfigSearch:
        args = tuple(args)
        return PresetConfigSearch(self, bound, args, self._resolution_for(args))

    def _resolution_for(self, args: tuple[Any, ...]) -> Resolution:
        found = slot_resolution(self, args)
        if found is not None:
            return found
        # rk.helion_kernel called directly (tuning scripts, tests): resolve here.
        return resolve(self, get_picker(), self.features_of_kernel_args(args))

    # ------------------------------------------------------------------ introspection
    def adapt_args(self, args: tuple[Any, ...]) -> tuple[tuple[Any, ...], Callable[[Any], Any] | None]:
        """(kernel-body args, restore or None) for user-level call args."""
        return (args, None) if self._adapt is None else self._adapt(*args)

    def prepare_args(self, *args: Any) -> tuple[Any, ...]:
        """The arguments the kernel body (and Helion) sees for a user-level call."""
        return self.adapt_args(args)[0]

    def features_of_kernel_args(self, kargs: Sequence[Any]) -> tuple[KeyValue, ...]:
        return self._features(*kargs)

    def features(self, *args: Any) -> dict[str, KeyValue]:
        """The shape key of a call (user-level arguments)."""
        kargs, _ = self.adapt_args(args)
        return self.key_spec.key_of(self.features_of_kernel_args(kargs))

    def resolution(self, *args: Any) -> Resolution:
        """What a call with these arguments resolves to (no miss bookkeeping)."""
        kargs, _ = self.adapt_args(args)
        return resolve(self, get_picker(), self.features_of_kernel_args(kargs), record=False)

    def bound(self, *args: Any) -> Any:
        """The Helion BoundKernel a call with these arguments uses (its `_config` is the
        config Helion compiled): the one whose runner fast dispatch would call, else
        the one Helion binds them to."""
        kargs, _ = self.adapt_args(args)
        res = self.resolution(*args)
        entry = self.runners.entry_for(res.token, kargs)
        if entry is not None:
            return entry.bound
        slot = CALL_SLOT
        saved = (slot.kernel, slot.args, slot.resolution)
        slot.kernel, slot.args, slot.resolution = self, kargs, res
        try:
            return self.helion_kernel.bind(kargs)
        finally:
            slot.kernel, slot.args, slot.resolution = saved

    def source_hash(self) -> str:
        """sha256 of the kernel body's source (dedented), stored with tuned presets."""
        source = textwrap.dedent(inspect.getsource(self.body))
        return hashlib.sha256(source.encode()).hexdigest()

    @property
    def shape_kernel(self) -> Any:
        """A hook-free copy of the kernel: fake implementation and config validation."""
        if self._shape_kernel is None:
            self._shape_kernel = helion.kernel(
                self.body, static_shapes=False, autotune_effort="none", ref_mode=RefMode.OFF,
                **self._helion_settings,
            )
        return self._shape_kernel

    def validate_config(self, config: dict[str, Any], shape_key: dict[str, Any] | None = None) -> dict[str, Any]:
        """Helion's normalized form of `config` for this kernel, or InvalidConfigError.

        Validated against the ConfigSpec of example inputs for `shape_key` on the
        current accelerator (CPU without one; CPU cannot check GPU-only options)."""
        key = dict(shape_key or {})
        device = "cuda" if torch.cuda.is_available() else "cpu"
        args = validation_args(self.example_inputs, key, device)  # meta when large: bounded memory
        kargs, _ = self.adapt_args(args)
        problems = _value_problems(config)
        if problems:
            raise InvalidConfigError(
                f"{self.name}: config {_config_text(config)} is invalid: " + "; ".join(problems)
            )
        bound = self.shape_kernel.bind(kargs)
        portable, device_only = split_device_keys(bound.config_spec, config)
        try:
            normalized = bound.config_spec.normalized_config(helion.Config(**portable))
        except Exception as exc:  # noqa: BLE001  (Helion raises several types)
            raise InvalidConfigError(
                f"{self.name}: config {_config_text(config)} "
                f"is invalid for shape key {canonical_key(key)}: {exc}"
            ) from None
        # Keys this device cannot check (e.g. Hopper's host_tensor_descriptors on CPU)
        # are kept as they are: the config is stored for the GPU it was tuned on.
        return {**dict(normalized.config), **device_only}

    def set_launcher(self, launcher: Callable[..., Any] | None) -> None:
        """Benchmarks: launch fast-path runners with `launcher` (e.g. ops.no_launch)."""
        self.runners.clear()
        self.runners.launcher = launcher


_RESOLVE_AGAIN: Any = object()


def _has_constexpr(kernel: Any) -> bool:
    from helion.language.constexpr import ConstExpr  # type: ignore[import-untyped]

    return any(a is ConstExpr for a in getattr(kernel, "_annotations", ()))


# Values Helion's ConfigSpec passes through unchecked but Triton cannot run; refused at
# import so they never reach a deployment (they would only fail, and be quarantined, later).
_INDEXING = {"pointer", "block_ptr", "tensor_descriptor"}
_EVICTION = {"", "first", "last"}


def _value_problems(config: dict[str, Any]) -> list[str]:
    problems = []
    warps = config.get("num_warps")
    if warps is not None and (
        isinstance(warps, bool) or not isinstance(warps, int) or warps < 1 or warps > 32 or warps & (warps - 1)
    ):
        problems.append(f"num_warps must be a power of two from 1 to 32, got {warps!r}")
    stages = config.get("num_stages")
    if stages is not None and (isinstance(stages, bool) or not isinstance(stages, int) or not 0 <= stages <= 16):
        problems.append(f"num_stages must be an integer from 0 to 16, got {stages!r}")
    for name, allowed in (("indexing", _INDEXING), ("atomic_indexing", _INDEXING), ("load_eviction_policies", _EVICTION)):
        value = config.get(name)
        values = value if isinstance(value, list) else [] if value is None else [value]
        bad = sorted({repr(v) for v in values if v not in allowed})
        if bad:
            problems.append(f"{name} has {', '.join(bad)}; allowed: {sorted(allowed)}")
    return problems


def _config_text(config: dict[str, Any]) -> str:
    try:
        return json.dumps(config, sort_keys=True, separators=(",", ":"))
    except (TypeError, ValueError):
        return repr(config)


# ---------------------------------------------------------------------- registry


def register_kernel(
    *,
    name: str,
    key_spec: KeySpec,
    reference: Callable[..., Any],
    example_inputs: ExampleInputs,
    mutates_args: Sequence[str] = (),
    fake_impl: Callable[..., Any] | None = None,
    adapt: Adapter | None = None,
    features: Callable[..., tuple[KeyValue, ...]] | None = None,
    description: str = "",
    autotune_effort: str = "quick",
    helion_settings: dict[str, Any] | None = None,
    baseline: Callable[..., Any] | None = None,
) -> Callable[[Callable[..., Any]], RegisteredKernel]:
    """Decorate a Helion kernel body (a plain function using ``helion.language``).

    Registers ``torch.ops.presetdb.<name>`` and returns the `RegisteredKernel`.
    `key_spec` fields need ``extract`` functions; they see the kernel body's arguments
    (after `adapt`, e.g. `flatten_leading()`, which folds leading dims into rows).
    `example_inputs(shape_key, device="cpu", dtype=None)` builds call arguments for a
    (possibly partial) shape key. `fake_impl` defaults to running Helion's host code
    with a no-op launcher (see `presetdb.helion.ops`). `features(*kernel_args)`,
    when given, returns all key values at once (one call per launch instead of one per
    field); build the spec's fields from it with `key_fields`.
    """

    def decorate(body: Callable[..., Any]) -> RegisteredKernel:
        if name in _registry:
            raise KernelRegistrationError(f"kernel {name!r} is already registered")
        rk = RegisteredKernel(
            body, name=name, key_spec=key_spec, reference=reference, example_inputs=example_inputs,
            mutates_args=mutates_args, fake_impl=fake_impl, adapt=adapt, features=features,
            description=description,
            autotune_effort=autotune_effort, helion_settings=helion_settings, baseline=baseline,
        )
        _registry[name] = rk
        return rk

    return decorate


def last_choice(name: str) -> Choice | None:
    """The stored config that served the latest call of kernel `name` (None: a miss)."""
    return get_kernel(name).last_choice


def load_kernel_modules(extra: Sequence[str] = ()) -> None:
    """Import the example kernels, the modules named in ``PRESETDB_KERNEL_MODULES``
    (comma-separated) and `extra`, so their `register_kernel` calls run. Offline tools
    (tune, import, new-migration) use this to find a project's own kernels."""
    import importlib
    import os

    names = ["presetdb.kernels", *os.environ.get("PRESETDB_KERNEL_MODULES", "").split(","), *extra]
    for module in (n.strip() for n in names):
        if module:
            importlib.import_module(module)


def get_kernel(name: str) -> RegisteredKernel:
    try:
        return _registry[name]
    except KeyError:
        known = ", ".join(sorted(_registry)) or "(none; import presetdb.kernels for the examples)"
        raise UnknownKernelError(f"unknown kernel {name!r}; registered kernels: {known}") from None


def registered_kernels() -> dict[str, RegisteredKernel]:
    return dict(_registry)


def unregister_kernel(name: str) -> None:
    """Drop a kernel and its torch op (tests registering throw-away kernels)."""
    _registry.pop(name, None)
    ops.unregister_op(name)


__all__ = [
    "PresetConfigSearch",
    "RegisteredKernel",
    "flatten_leading",
    "get_kernel",
    "key_fields",
    "last_choice",
    "register_kernel",
    "registered_kernels",
    "unregister_kernel",
]
