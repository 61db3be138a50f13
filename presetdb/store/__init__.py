"""The store: SQLite files (and PostgreSQL for a registry) through SQLAlchemy.

Engines and URLs, the ORM models, frozen records, the repository (it never commits:
the caller owns the transaction), the Alembic runner and the frozen seed loader that
data migrations call. Imports nothing from the other presetdb folders."""

# Submodules (imported by name: `from presetdb.store import repository`).
__all__ = ["default_db", "engine", "migrate", "models", "repository", "seedload"]
