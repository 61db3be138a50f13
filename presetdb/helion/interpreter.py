"""Triton-interpreter support (``TRITON_INTERPRET=1``: Helion kernels on the CPU).

Two gaps of the interpreter (triton 3.x) that the example kernels hit:

- it patches ``triton.language.math`` while a kernel runs, but not
  ``triton.language.extra.libdevice``, whose functions are stubs there (they return
  None); Helion lowers ``torch.exp`` and friends to libdevice. The shims point those
  names at ``tl.math``, looked up at run time so the interpreter's versions are used;
- its ``tl.dot`` multiplies bfloat16 operands as the raw uint16 numpy arrays it stores
  them in. The shim widens them to float32 first (exact: bf16 is a truncated fp32).

`install_shims` does nothing unless ``TRITON_INTERPRET=1``; compiled (GPU) code never
goes through these Python functions.
"""

from __future__ import annotations

import os
from typing import Any

SHIMMED = ("exp", "exp2", "log", "log2", "sqrt", "rsqrt")


def install_shims() -> bool:
    """Idempotent; returns whether the interpreter is on (and shims are in place)."""
    if os.environ.get("TRITON_INTERPRET") != "1":
        return False
    import triton.language as tl  # type: ignore[import-untyped]
    from triton.language.extra import libdevice  # type: ignore[import-untyped]

    for name in SHIMMED:
        if getattr(getattr(libdevice, name, None), "_presetdb_shim", False):
            continue

        def shim(x: Any, _name: str = name, **_: Any) -> Any:
            return getattr(tl.math, _name)(x)

        shim._presetdb_shim = True  # type: ignore[attr-defined]
        setattr(libdevice, name, shim)
    _widen_bf16_dot(tl)
    return True


def _widen_bf16_dot(tl: Any) -> None:
    import numpy as np
    from triton.runtime import interpreter  # type: ignore[import-untyped]

    builder = type(interpreter.interpreter_builder)
    original = builder.create_dot
    if getattr(original, "_presetdb_shim", False):
        return

    def as_fp32(handle: Any) -> Any:
        if handle.dtype != tl.bfloat16:
            return handle
        bits = handle.data.astype(np.uint32) << 16  # bf16 bits are the high half of fp32
        return interpreter.TensorHandle(bits.view(np.float32), tl.float32)

    def create_dot(self: Any, a: Any, b: Any, d: Any, *args: Any) -> Any:
        return original(self, as_fp32(a), as_fp32(b), d, *args)

    create_dot._presetdb_shim = True  # type: ignore[attr-defined]
    builder.create_dot = create_dot
