"""The Helion integration: the only presetdb code that imports torch, helion and triton
(besides kernels and offline tuning). `registry` registers kernels, `call` is the hot
path, `hooks` Helion's key=/autotuner_fn= hooks and the miss policies, `autotune` the one
search builder, `ops` the torch.library ops, `_accel` the version-gated fast path."""

# Submodules (imported by name: `from presetdb.store import repository`).
__all__ = ["args", "call", "hooks", "interpreter", "ops", "registry"]
