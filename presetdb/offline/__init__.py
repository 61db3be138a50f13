"""Offline tools: tune, build, new-migration, export and the importers. May import
everything above; nothing at run time imports this package."""

# Submodules (imported by name: `from presetdb.store import repository`).
__all__ = ["build", "export", "importers", "models", "new_migration", "refine", "shapes", "tune"]
