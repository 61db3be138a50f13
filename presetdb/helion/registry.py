"""Registering Helion kernels with presetdb (`register_kernel`) and what each one holds.

A `RegisteredKernel` keeps the kernel body and its key spec, a keyed Helion kernel
(`helion_kernel`, whose ``key=``/``autotuner_fn=`` hooks serve stored configs to anyone
who calls the Helion kernel directly, see `presetdb.helion.hooks`), and, for presetdb's
own call path (`presetdb.helion.call`), one plain Helion kernel per stored config it has
served (`config_kernel`). The torch op ``torch.ops.presetdb.<name>`` is registered here
too (`presetdb.helion.ops`).
"""

from __future__ import annotations

import hashlib
import inspect
import textwrap
from collections.abc import Callable, Hashable, Sequence
from typing import Any

import helion
import torch
from helion.runtime.ref_mode import RefMode

from presetdb._util import canonical_json
from presetdb.errors import InvalidConfigError, KernelRegistrationError, UnknownKernelError
from presetdb.helion import call, hooks, interpreter, ops
from presetdb.helion._accel import internals
from presetdb.helion._accel.dispatch import Entry, RunnerCache, runner_launcher
from presetdb.helion.args import Adapter, SizeClassBinds, flatten_leading, key_fields, size_class, validation_args
from presetdb.helion.memo import CallMemo
from presetdb.keys import KeySpec, KeyValue, canonical_key
from presetdb.runtime.picker import Choice, get_picker
from presetdb.settings import Settings

ExampleInputs = Callable[..., tuple[Any, ...]]

# Settings presetdb pins itself; passing them would let the store be bypassed.
PINNED_SETTINGS = frozenset(
    {"static_shapes", "autotune_effort", "autotuner_fn", "ref_mode", "autotune_handoff", "force_autotune"}
)

_is_compiling = torch.compiler.is_compiling
_registry: dict[str, RegisteredKernel] = {}


class ConfigKernel:
    """A plain Helion kernel that runs one config (a stored one, or Helion's default for
    a size class), pinned with ``config=``, and, where the fast path is on, its compiled
    runners."""

    __slots__ = ("config", "kernel", "runners")

    def __call__(self, *args: Any) -> Any:
        """Helion's own call (compiles on first use of a specialization)."""
        return self.kernel(*args)

    def __init__(self, kernel: Any, config: helion.Config, runners: RunnerCache | None) -> None:
        self.kernel = kernel
        self.config = config
        self.runners = runners

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
        shapes_for: Callable[[Any, Sequence[int]], Any] | None = None,
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
        self.shapes_for = shapes_for  # (model dims, token counts) -> shape keys: `presetdb shapes`
        self.adapt = adapt
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
        self._shape_kernel: Any = None
        self._class_binds = SizeClassBinds(
            lambda: helion.kernel(body, static_shapes=False, autotune_effort="none", ref_mode=RefMode.OFF, **settings)
        )
        # The call path's state: one plain Helion kernel per served config (token ->
        # ConfigKernel), the call memo, and whether the fast path (_accel) is on.
        self.config_kernels: dict[Hashable, ConfigKernel] = {}
        self.accel_status = internals.status(Settings.from_env().accel)
        self.accel = self.accel_status.on
        self.memo = CallMemo()
        self.scalars_by_value = internals.has_constexpr_params(self.helion_kernel)
        self.launcher: Callable[..., Any] | None = None  # benchmarks: a no-op launcher (set_launcher)
        self.last_choice: Choice | None = None  # what served the latest call (demo, CLI)
        self.op = ops.register_op(self, fake_impl)

    def __repr__(self) -> str:
        return f"RegisteredKernel({self.name!r}, key={list(self.key_spec.names)})"

    # ------------------------------------------------------------------ calling
    def __call__(self, *args: Any) -> Any:
        if _is_compiling():
            return self.op(*args)  # traced as one node (fake impl), dispatched at run time
        return call.call(self, args)

    def call_eager(self, *args: Any) -> Any:
        """The op's implementation: `presetdb.helion.call.call`."""
        return call.call(self, args)

    def config_kernel(self, token: Hashable, config: dict[str, Any] | None, kargs: tuple[Any, ...]) -> ConfigKernel:
        """The plain Helion kernel serving `config` under `token`, built on first use;
        None: Helion's default config for the size class of `kargs` (`bound_for`), as
        Helion would choose it for a call of these sizes. Raises if a stored config is
        invalid for these arguments."""
        slot = _slot(token, config, kargs)
        found = self.config_kernels.get(slot)
        if found is not None:
            return found
        settings = dict(
            static_shapes=False, autotune_effort=self.autotune_effort, force_autotune=False,
            ref_mode=RefMode.OFF, autotune_handoff=False, **self._helion_settings,
        )
        spec = self.bound_for(kargs).config_spec
        if config is None:
            normalized = spec.default_config()
        else:
            portable, _ = hooks.split_device_keys(spec, config)
            normalized = spec.normalized_config(helion.Config(**portable))
        kernel = helion.kernel(self.body, config=normalized, **settings)
        runners = None
        if self.accel:
            launcher = self.launcher if self.launcher is not None else runner_launcher()
            runners = RunnerCache(kernel, launcher, scalars_by_value=self.scalars_by_value)
        made = self.config_kernels[slot] = ConfigKernel(kernel, normalized, runners)
        return made

    def use_accel(self, on: bool) -> None:
        """Turn the fast path on or off for this kernel (tests, diagnostics); the default
        comes from PRESETDB_ACCEL and the installed versions (`internals.status`)."""
        self.accel = on
        self.reset_runtime()

    def forget_config(self, token: Hashable) -> None:
        """Drop the kernel of a quarantined config (and every memoized call)."""
        self.config_kernels.pop(token, None)
        self.memo.clear()

    # ------------------------------------------------------------------ introspection
    def adapt_args(self, args: tuple[Any, ...]) -> tuple[tuple[Any, ...], Callable[[Any], Any] | None]:
        """(kernel-body args, restore or None) for user-level call args."""
        return (args, None) if self.adapt is None else self.adapt(*args)

    def prepare_args(self, *args: Any) -> tuple[Any, ...]:
        """The arguments the kernel body (and Helion) sees for a user-level call."""
        return self.adapt_args(args)[0]

    def features_of_kernel_args(self, kargs: Sequence[Any]) -> tuple[KeyValue, ...]:
        return self._features(*kargs)

    def features(self, *args: Any) -> dict[str, KeyValue]:
        """The shape key of a call (user-level arguments)."""
        kargs, _ = self.adapt_args(args)
        return self.key_spec.key_of(self.features_of_kernel_args(kargs))

    def resolution(self, *args: Any) -> hooks.Resolution:
        """What a call with these arguments resolves to (no miss bookkeeping)."""
        kargs, _ = self.adapt_args(args)
        return hooks.resolve(self, get_picker(), self.features_of_kernel_args(kargs), record=False)

    def entry_for(self, *args: Any) -> Entry | None:
        """The fast-path runner entry a call with these arguments would use, if any."""
        kargs, res, config = self._served(args)
        served = self.config_kernels.get(_slot(res.token, config, kargs))
        return None if served is None else _entry(served, kargs)

    def bound(self, *args: Any) -> Any:
        """The Helion BoundKernel a call with these arguments uses (its config is the one
        Helion compiled): the one whose runner the fast path would call, else the one the
        served config's kernel binds them to."""
        kargs, res, config = self._served(args)
        served = self.config_kernel(res.token, config, kargs)
        entry = _entry(served, kargs)
        return entry.bound if entry is not None else served.kernel.bind(kargs)

    def _served(self, args: tuple[Any, ...]) -> tuple[tuple[Any, ...], hooks.Resolution, dict[str, Any] | None]:
        """(kernel args, resolution, the config that runs: None for Helion's default)."""
        kargs, _ = self.adapt_args(args)
        res = self.resolution(*args)
        return tuple(kargs), res, res.choice.config if res.choice is not None else res.config

    def source_hash(self) -> str:
        """sha256 of the kernel body's source (dedented), stored with tuned presets."""
        source = textwrap.dedent(inspect.getsource(self.body))
        return hashlib.sha256(source.encode()).hexdigest()

    def bound_for(self, kargs: tuple[Any, ...]) -> Any:
        """The hook-free kernel bound for the size class of `kargs` (`size_class`): its
        ConfigSpec gives Helion's default config for calls of these sizes and normalizes
        a config as Helion would for them, whatever was bound before. One bind per class."""
        return self._class_binds(kargs)

    @property
    def shape_kernel(self) -> Any:
        """A hook-free copy of the kernel for the fake implementation (output shapes only:
        which config it binds does not matter there; everything else uses `bound_for`)."""
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
        bound = self.bound_for(kargs)
        portable, device_only = hooks.split_device_keys(bound.config_spec, config)
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
        self.launcher = launcher
        self.reset_runtime()

    def reset_runtime(self) -> None:
        """Forget every config kernel and memoized call (tests, benchmarks)."""
        self.config_kernels = {}
        self.memo.clear()

    # ------------------------------------------------------------------ Helion hooks
    def _key_hook(self, *args: Any) -> Hashable:
        return hooks.key_hook(self, args)

    def _autotuner_hook(self, bound: Any, args: Sequence[object], **kwargs: object) -> hooks.PresetConfigSearch:
        return hooks.PresetConfigSearch(self, bound, tuple(args))


def _entry(served: ConfigKernel, kargs: tuple[Any, ...]) -> Entry | None:
    """The fast-path runner entry of `served` for these arguments, if it has one."""
    if served.runners is None:
        return None
    meta = served.runners.key(kargs)
    return None if meta is None else served.runners.lookup(meta, kargs)


def _slot(token: Hashable, config: dict[str, Any] | None, kargs: tuple[Any, ...]) -> Hashable:
    """Where `config_kernel` keeps a served config's kernel: by its token, and Helion's
    default (config None) per size class too, since the default differs between them."""
    return token if config is not None else (token, size_class(kargs))


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
        return canonical_json(config)
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
    shapes_for: Callable[[Any, Sequence[int]], Any] | None = None,
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
            shapes_for=shapes_for,
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
    "ConfigKernel",
    "RegisteredKernel",
    "flatten_leading",
    "get_kernel",
    "key_fields",
    "last_choice",
    "register_kernel",
    "registered_kernels",
    "unregister_kernel",
]
