"""`presetdb verify`: check unverified rows against the kernel a module now registers.

Rows of a kernel no registered module provided at import time (a vLLM tree's own
kernels) are stored with ``presets.verified = 0``: their config syntax was checked, but
nothing compiled them. Once a module registers the kernel, each such row is checked the
way the hot path checks a stored config before its first use:

1. its key fits the registered key spec (field names; a kernel whose key schema was
   inferred from a file adopts the registered spec when the field names agree);
2. Helion's ConfigSpec for the key's example inputs accepts the config
   (``RegisteredKernel.validate_config``);
3. Helion compiles it (``bound.compile_config``: the Triton interpreter on a CPU, the
   GPU's compiler on a GPU). Nothing is launched or timed.

A row that passes is marked verified; one that fails is quarantined with the reason. A
failure of Helion's *default* config for the same inputs means the kernel itself does
not compile there, which is not the row's fault: the row stays unverified and the
problem is reported. Results are written in one transaction after all rows are checked.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from presetdb.errors import PresetDBError
from presetdb.store import migrate
from presetdb.store.records import PresetRecord
from presetdb.store.repository import Repository


class VerifyError(PresetDBError):
    """verify could not run (an unknown kernel, key fields that do not agree)."""


@dataclass(frozen=True)
class VerifyOutcome:
    preset_id: int
    kernel: str
    platform: str
    shape_key: str
    outcome: str  # verified | quarantined | unchecked
    reason: str = ""


@dataclass
class VerifyReport:
    outcomes: list[VerifyOutcome] = field(default_factory=list)
    not_registered: dict[str, int] = field(default_factory=dict)  # kernel -> rows left unverified
    adopted_schemas: list[str] = field(default_factory=list)  # kernels whose key spec was adopted
    problems: list[str] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        out = {"verified": 0, "quarantined": 0, "unchecked": 0}
        for o in self.outcomes:
            out[o.outcome] += 1
        return out


def verify(
    db: Path | Any,
    *,
    modules: Sequence[str] = (),
    kernel: str | None = None,
    device: str | None = None,
    on_row: Callable[[VerifyOutcome], None] | None = None,
    on_start: Callable[[int], None] | None = None,
) -> VerifyReport:
    """Verify the unverified active rows of `kernel` (default: every kernel that has
    some) against the kernels `modules` register. Returns what happened per row."""
    from presetdb.helion.registry import load_kernel_modules, registered_kernels

    load_kernel_modules(modules)
    registry = registered_kernels()
    report = VerifyReport()
    store = migrate.open_store(db, "rw")
    try:
        with store.read() as session:
            repo = Repository(session)
            if kernel is not None:
                repo.get_kernel(kernel)  # unknown names list the stored ones
            rows = repo.unverified_presets(kernel)
            schemas = {name: repo.get_kernel(name).key_schema for name in {r.kernel for r in rows}}
        if kernel is not None and rows and kernel not in registry:
            raise VerifyError(
                f"kernel {kernel!r} is not registered by the modules loaded "
                f"({', '.join(['presetdb.kernels', *modules])}); registered: "
                f"{', '.join(sorted(registry)) or '(none)'}. Pass --module MODULE that registers it."
            )
        todo: list[PresetRecord] = []
        for row in rows:
            if row.kernel in registry:
                todo.append(row)
            else:
                report.not_registered[row.kernel] = report.not_registered.get(row.kernel, 0) + 1
        adopt, refused = _schemas_to_adopt(report, schemas, registry, {r.kernel for r in todo})
        todo = [r for r in todo if r.kernel not in refused]
        if on_start is not None:
            on_start(len(todo))
        checker = _Checker(device)
        for row in todo:
            outcome = checker.check(registry[row.kernel], row)
            report.outcomes.append(outcome)
            if outcome.outcome == "unchecked":
                report.problems.append(f"{row.kernel} preset {row.id} {row.shape_key}: {outcome.reason}")
            if on_row is not None:
                on_row(outcome)
        with store.transaction() as session:
            repo = Repository(session)
            for name in adopt:
                repo.replace_key_schema(name, registry[name].key_spec.to_schema())
            for o in report.outcomes:
                if o.outcome == "verified":
                    repo.set_verified(o.preset_id)
                elif o.outcome == "quarantined":
                    repo.quarantine(o.preset_id, f"presetdb verify: {o.reason}")
    finally:
        store.dispose()
    return report


def _schemas_to_adopt(
    report: VerifyReport, schemas: dict[str, dict[str, Any]], registry: dict[str, Any], names: set[str]
) -> tuple[list[str], set[str]]:
    """(kernels whose stored key schema is replaced by the registered spec, kernels whose
    rows cannot be checked). A schema inferred from a file is adopted when the field
    names agree; any other difference is a problem and the kernel's rows are kept."""
    adopt: list[str] = []
    refused: set[str] = set()
    for name in sorted(names):
        stored = [(f["name"], f["policy"]) for f in schemas[name].get("fields", [])]
        spec = registry[name].key_spec
        wanted = [(f.name, f.policy) for f in spec.fields]
        if stored == wanted or not stored:
            if not stored:
                adopt.append(name)
            continue
        if sorted(n for n, _ in stored) == sorted(spec.names) and "inferred_from" in schemas[name]:
            adopt.append(name)
            report.adopted_schemas.append(name)
            continue
        refused.add(name)
        report.problems.append(
            f"kernel {name!r}: stored key fields {stored} differ from the registered kernel's "
            f"{wanted}; its rows stay unverified (re-import them under a kernel whose key spec "
            "matches, or register the kernel with these key fields)"
        )
    return adopt, refused


class _Checker:
    """Validation and compilation of one row, as the hot path does before first use."""

    def __init__(self, device: str | None) -> None:
        import torch

        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self._default_ok: dict[tuple[str, str], bool] = {}

    def check(self, rk: Any, row: PresetRecord) -> VerifyOutcome:
        from presetdb.errors import InvalidConfigError

        def done(outcome: str, reason: str = "") -> VerifyOutcome:
            return VerifyOutcome(row.id, row.kernel, row.platform, row.shape_key, outcome, reason[:1000])

        key = row.key
        problems = rk.key_spec.check_key(key)
        if problems:
            return done("quarantined", "key: " + "; ".join(problems))
        try:
            rk.validate_config(dict(row.config), key)
        except InvalidConfigError as exc:
            return done("quarantined", f"config: {exc}")
        except Exception as exc:  # noqa: BLE001  (the kernel's example inputs may raise anything)
            return done("unchecked", f"could not build example inputs for {row.shape_key}: {type(exc).__name__}: {exc}")
        try:
            bound = self._bound(rk, key)
        except Exception as exc:  # noqa: BLE001
            return done("unchecked", f"could not bind example inputs: {type(exc).__name__}: {exc}")
        try:
            _compile(bound, row.config)
        except Exception as exc:  # noqa: BLE001  (Helion and Triton raise many types)
            if not self._default_compiles(rk, row.shape_key, bound):
                return done("unchecked", f"Helion's default config does not compile here either: {exc}")
            return done("quarantined", f"compile: {type(exc).__name__}: {exc}")
        return done("verified")

    def _bound(self, rk: Any, key: dict[str, Any]) -> Any:
        args = rk.example_inputs(dict(key), device=self.device)
        kargs, _ = rk.adapt_args(args)
        return rk.bound_for(tuple(kargs))

    def _default_compiles(self, rk: Any, shape_key: str, bound: Any) -> bool:
        slot = (rk.name, shape_key)
        if slot not in self._default_ok:
            try:
                bound.compile_config(bound.config_spec.default_config(), allow_print=False)
                self._default_ok[slot] = True
            except Exception:  # noqa: BLE001
                self._default_ok[slot] = False
        return self._default_ok[slot]


def _compile(bound: Any, config: dict[str, Any]) -> None:
    from presetdb.helion.hooks import split_device_keys

    portable, _ = split_device_keys(bound.config_spec, config)
    bound.compile_config(bound.config_spec.normalized_config(portable), allow_print=False)
