"""Integrations with kernel frameworks. Only this package (and `presetdb.kernels`)
imports torch and helion; `import presetdb` alone stays light.

- `presetdb.integrations.helion`   register_kernel, RegisteredKernel, the kernel registry
- `presetdb.integrations.policy`   per-call resolution, miss policy, PresetConfigSearch
- `presetdb.integrations.dispatch` fast dispatch to Helion's compiled runners
- `presetdb.integrations.launch`   FastLauncher: Triton's compiled kernel launched directly
- `presetdb.integrations.host_triton` Triton's host-side helpers for published runners
- `presetdb.integrations.ops`      torch.library ops (`torch.ops.presetdb.*`) and fake impls
- `presetdb.integrations.args`     argument adapters (flatten_leading) and key_fields
- `presetdb.integrations.interpreter` libdevice shims for TRITON_INTERPRET=1 (CPU runs)
"""
