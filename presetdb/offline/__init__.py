"""Offline tools: tune, build, new-migration, export and the importers. May import
everything above; nothing at run time imports this package."""
