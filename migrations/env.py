"""Alembic environment. presetdb hands over an open connection in
`config.attributes["connection"]`; there is no alembic.ini and no URL here."""

from __future__ import annotations

from alembic import context

from presetdb.store.models import Base

config = context.config
connection = config.attributes.get("connection")
if connection is None:
    raise RuntimeError(
        "presetdb migrations run through `presetdb db upgrade`, which passes a connection; "
        "a bare `alembic` command is not supported."
    )

context.configure(
    connection=connection,
    # A user's own data migrations (presetdb.store.migrate.data_config) keep their
    # revision in a table of their own, so the package's schema revision stays known.
    version_table=config.attributes.get("version_table", "alembic_version"),
    target_metadata=Base.metadata,
    render_as_batch=True,  # SQLite alters tables by copying them
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
