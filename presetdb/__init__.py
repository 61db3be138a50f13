"""presetdb: pre-tuned Helion kernel configs in a shippable, auditable SQLite database.

The public API. Importing presetdb alone does not import torch or helion (the store, CLI
and audits run without them): the Helion-side names are loaded on first use.

    from presetdb import register_kernel, KeySpec, KeyField
"""

from __future__ import annotations

from typing import Any

from presetdb.errors import PresetDBError, PresetMissError
from presetdb.keys import KeyField, KeySpec

__version__ = "0.1.0"

# Served lazily from presetdb.helion.registry (they import torch and helion).
_LAZY = ("register_kernel", "get_kernel", "registered_kernels", "RegisteredKernel", "flatten_leading", "key_fields")


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from presetdb.helion import registry

        return getattr(registry, name)
    if name == "get_picker":
        from presetdb.runtime.picker import get_picker

        return get_picker
    raise AttributeError(f"module 'presetdb' has no attribute {name!r}")


__all__ = [
    "KeyField",
    "KeySpec",
    "PresetDBError",
    "PresetMissError",
    "RegisteredKernel",
    "__version__",
    "flatten_leading",
    "get_kernel",
    "get_picker",
    "key_fields",
    "register_kernel",
    "registered_kernels",
]
