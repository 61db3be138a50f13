"""Frozen loaders that data migrations call; a loader's behaviour never changes once shipped."""

# Submodules (imported by name: `from presetdb.store import repository`).
__all__ = ["v1"]
