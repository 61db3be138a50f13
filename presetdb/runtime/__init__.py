"""Run time, torch-free: layers (overlay > deployment > default), platforms, the read-only
picker and the ledger writer (the one place a serving process writes SQLite, on its own
thread). Imports only `presetdb.store` and the pure modules."""

# Submodules (imported by name: `from presetdb.store import repository`).
__all__ = ["layers", "ledger", "picker", "platforms"]
