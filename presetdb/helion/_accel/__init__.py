"""Fast dispatch and launch: compiled runners called directly, Triton kernels launched
directly. Every private Helion/Triton name used lives in `internals`; on only for
verified (helion, triton) versions."""

# Submodules (imported by name: `from presetdb.store import repository`).
__all__ = ["dispatch", "host_triton", "internals", "launch"]
