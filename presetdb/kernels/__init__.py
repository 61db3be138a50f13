"""Example Helion kernels served from the store. Importing this package registers them
as `torch.ops.presetdb.<name>` (and in `presetdb.helion.registry.get_kernel`):

- `rms_norm(x, weight, eps)`  key: dtype exact, hidden nearest, num_tokens ceil
- `silu_mul(x)`               silu(x[..., :d]) * x[..., d:]; key: dtype, d nearest, num_tokens ceil
- `softmax(x)`                over the last dim; key: dtype, n nearest, num_rows ceil
- `matmul(a, b)`              key: dtype, n nearest, k nearest, m ceil

Each module holds the kernel body, its key spec, a float32 PyTorch reference and
`example_inputs(shape_key, device, dtype)`. Leading dims are folded into rows before the
Helion call, so inputs of any rank >= 1 work.
"""

from __future__ import annotations

from presetdb.kernels import matmul, rms_norm, silu_mul, softmax

KERNELS = (rms_norm.rms_norm, silu_mul.silu_mul, softmax.softmax, matmul.matmul)

__all__ = ["KERNELS", "matmul", "rms_norm", "silu_mul", "softmax"]
