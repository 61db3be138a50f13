"""presetdb: pre-tuned Helion kernel configs in a shippable, auditable SQLite database."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

# Names served lazily from presetdb.helion.registry: importing presetdb alone must not
# import torch or helion (the store, CLI and audits run without them).
_LAZY = ("register_kernel", "get_kernel", "registered_kernels", "RegisteredKernel", "flatten_leading")


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from presetdb.helion import registry as helion

        return getattr(helion, name)
    raise AttributeError(f"module 'presetdb' has no attribute {name!r}")
