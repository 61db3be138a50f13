"""A presetdb kernel call, top to bottom.

How Helion normally works: a ``helion.kernel`` call binds its arguments to a
specialization (dtypes, ranks, 64-bit indexing, device, an optional ``key=`` value); the
first call of a specialization asks for a config (an explicit ``config=``, the default,
or an autotuner that benchmarks candidates for minutes) and compiles it into a host
function that later calls reuse.

How presetdb overrides it: it never lets Helion choose. `call` (below) adapts the
arguments, extracts the shape key, asks the picker (memory only) for the stored config,
applies the miss/far policy and counts near misses (`presetdb.helion.hooks.serve`), and runs a plain Helion
kernel built for exactly that config (`RegisteredKernel.config_kernel`; ``config=`` pinned,
so ``HELION_AUTOTUNE_EFFORT`` or ``HELION_FORCE_AUTOTUNE`` cannot route around the store).
A miss or far call under the default policy gets Helion's default config for its size class
(`RegisteredKernel.bound_for`), as plain Helion would choose it for those sizes, whatever the
process called before; stored configs are normalized for the sizes they first serve.
Where the fast path is on (`presetdb.helion._accel`: verified Helion/Triton versions),
the compiled host function is called directly and its Triton kernel launched directly.
On either path a call whose exact metadata was seen before skips the key, the picker and
the policy (`presetdb.helion.memo`, valid while the picker's epoch stands and, on the
fast path, Helion's specialization state); on the public path the memo holds the
compiled config from Helion's public ``BoundKernel.compile_config``.

A stored config that fails to compile or launch is the row's fault only if Helion's
default config runs the same call; then it is quarantined (in memory at once, in the
overlay by the ledger's thread) and the call resolves once more. Misses are never
memoized: each is counted in the ledger.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from presetdb.errors import KernelDeviceError
from presetdb.helion import hooks
from presetdb.helion.memo import exact_key
from presetdb.runtime.picker import get_picker

if TYPE_CHECKING:
    from presetdb.helion.registry import RegisteredKernel


def call(rk: RegisteredKernel, args: tuple[Any, ...]) -> Any:
    restore = None
    if rk.adapt is not None:
        args, restore = rk.adapt(*args)
    picker = get_picker()
    epoch = picker.epoch()
    exact = exact_key(args, rk.scalars_by_value)
    hit = None if exact is None else rk.memo.get(exact, epoch)
    if hit is not None:
        rk.last_choice = hit[1]
        out = hit[2](*args)
        return out if restore is None else restore(out)
    check_device(rk, args)  # before the picker: a CPU call without the interpreter cannot run
    features = rk.features_of_kernel_args(args)
    served = hooks.serve(rk, picker, features, picker.resolve(rk.name, rk.key_spec, features), args=args)
    try:
        out = run(rk, served, args, exact, epoch)
    except Exception as exc:
        if served.choice is None:
            raise
        fallback = hooks.default_output(rk, args)  # does Helion's default config run this call?
        if fallback is hooks.NOTHING:
            raise  # no: the caller's error, not the stored row's
        out = resolve_again(rk, picker, features, served, exc, args, fallback)
    return out if restore is None else restore(out)


def resolve_again(
    rk: RegisteredKernel, picker: Any, features: tuple[Any, ...], failed: hooks.Served, exc: Exception,
    args: tuple[Any, ...], fallback: Any,
) -> Any:
    """The stored row failed where Helion's default config ran (its output: `fallback`).
    Quarantine the row and resolve once more; a second failing row is quarantined too and
    the call keeps the default config's output (strict mode raises instead)."""
    assert failed.choice is not None
    hooks.quarantine(rk, picker, failed.choice, _reason(exc))
    why = " (stored config quarantined)"
    again = hooks.serve(rk, picker, features, picker.resolve(rk.name, rk.key_spec, features), why=why, args=args)
    if again.choice is None and again.token == hooks.DEFAULT_TOKEN:
        rk.last_choice = None
        return fallback
    try:
        return run(rk, again, args)
    except Exception as second:
        if again.choice is None:
            raise
        hooks.quarantine(rk, picker, again.choice, _reason(second))
        hooks.serve(rk, picker, features, None, why=why)  # the miss policy: strict raises here
        rk.last_choice = None
        return fallback


def run(rk: RegisteredKernel, served: hooks.Served, args: tuple[Any, ...], exact: Any = None, epoch: Any = None) -> Any:
    """Run the served config's kernel: its published runner where the fast path has one,
    else Helion's own call (which compiles on first use), then publish the runner."""
    rk.last_choice = served.choice
    config = served.choice.config if served.choice is not None else served.config
    target = rk.config_kernel(served.token, config, args)
    runners = target.runners
    if runners is None:  # the public path: Helion's own call of the config kernel
        out = target(*args)
        if exact is not None and served.choice is not None:
            # later calls with this exact metadata run the compiled config directly
            # (public BoundKernel.compile_config: cached by Helion, no re-binding per call)
            compiled = target.kernel.bind(args).compile_config(target.config, allow_print=False)
            rk.memo.remember(exact, (epoch, served.choice, hooks.memo_run(served.choice, compiled), None))
        return out
    meta = runners.key(args)
    entry = None if meta is None else runners.lookup(meta, args)
    if entry is None:
        return through_helion(target, args, meta)
    if exact is not None and served.choice is not None and entry.memoizable:
        # misses are not memoized (each is counted); a near miss's memoized run counts its calls
        rk.memo.remember(exact, (epoch, served.choice, hooks.memo_run(served.choice, entry.run), entry))
    return entry.run(*args)


def through_helion(target: Any, args: tuple[Any, ...], meta: Any) -> Any:
    """Helion's own call of a config kernel (compiling on first use), then publish the
    runner it used so the next call of this class skips Helion."""
    out = target(*args)
    if meta is not None:
        try:
            target.runners.publish(meta, args)
        except Exception:  # noqa: BLE001, S110  (an optimisation; never fail the call)
            pass
    return out


def check_device(rk: RegisteredKernel, args: tuple[Any, ...]) -> None:
    """Helion kernels run on a GPU, or on a CPU in Triton's interpreter only: say so, and
    how, instead of Triton's "0 active drivers" from deep inside the first launch."""
    device = next((a.device for a in args if getattr(a, "device", None) is not None), None)
    if getattr(device, "type", None) != "cpu" or _interpreter_on():
        return
    raise KernelDeviceError(
        f"presetdb: {rk.name} was called with CPU tensors, and Helion kernels run on a GPU. "
        "Move the tensors to the GPU (e.g. x.cuda()), or run on the CPU in Triton's "
        "interpreter: set TRITON_INTERPRET=1 in the environment before starting Python "
        "(slow; for tests and development)."
    )


def _interpreter_on() -> bool:
    if os.environ.get("HELION_INTERPRET") == "1":
        return True  # Helion's own eager mode runs CPU tensors (without presetdb's configs)
    try:
        from triton import knobs  # type: ignore[import-untyped]

        return bool(knobs.runtime.interpret)  # Triton's own reading of TRITON_INTERPRET
    except (ImportError, AttributeError):
        return os.environ.get("TRITON_INTERPRET", "").lower() in ("1", "true", "on", "yes")


def _reason(exc: Exception) -> str:
    return f"compile or launch failed: {type(exc).__name__}: {exc}"[:500]
