"""schema: helion_cache_entries, Helion's autotune cache entries under Helion's cache key

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-10 12:00:00

One row per Helion cache key (the sha256 Helion names its ``.best_config`` files after),
written by the Helion remote-cache backend (`presetdb.helion.remote_cache.Backend`) and
by `presetdb import --format helion-cache`. A new table only: no existing row moves.

Both dialects: the JSON checks are `json_valid(col)` on SQLite and a jsonb cast on
PostgreSQL (as in 0001); everything else is spelled alike.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None
presetdb_kind = "schema"

SOURCES = ("remote-cache", "import-helion-cache")


def _json_valid(column: str) -> str:
    if op.get_bind().dialect.name == "sqlite":
        return f"json_valid({column})"
    return f"({column}::jsonb IS NOT NULL)"


def upgrade() -> None:
    op.create_table(
        "helion_cache_entries",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("cache_key", sa.String(length=64), nullable=False),
        sa.Column("key_type", sa.String(length=40), nullable=False),
        sa.Column("hardware", sa.String(length=200), nullable=False),
        sa.Column("runtime_name", sa.String(length=200), nullable=True),
        sa.Column("backend", sa.String(length=40), nullable=True),
        sa.Column("kernel_source_hash", sa.String(length=64), nullable=False),
        sa.Column("specialization_key", sa.Text(), nullable=False),
        sa.Column("config_spec_hash", sa.String(length=64), nullable=False),
        sa.Column("key_fields", sa.Text(), nullable=False),
        sa.Column("config_id", sa.Integer(), nullable=False),
        sa.Column("entry_json", sa.Text(), nullable=False),
        sa.Column("source", sa.String(length=40), nullable=False),
        sa.Column("source_file", sa.Text(), nullable=True),
        sa.Column("host", sa.String(length=200), nullable=True),
        sa.Column("torch_version", sa.String(length=50), nullable=True),
        sa.Column("triton_version", sa.String(length=50), nullable=True),
        sa.Column("helion_version", sa.String(length=50), nullable=True),
        sa.Column("presetdb_version", sa.String(length=50), nullable=True),
        sa.Column("created_at", sa.String(length=32), nullable=False),
        sa.Column("updated_at", sa.String(length=32), nullable=False),
        sa.CheckConstraint(_json_valid("entry_json"), name=op.f("ck_helion_cache_entries_entry_json")),
        sa.CheckConstraint(_json_valid("key_fields"), name=op.f("ck_helion_cache_entries_key_fields_json")),
        sa.CheckConstraint(
            "source IN (" + ", ".join(f"'{s}'" for s in SOURCES) + ")",
            name=op.f("ck_helion_cache_entries_source_known"),
        ),
        sa.ForeignKeyConstraint(
            ["config_id"], ["configs.id"], name=op.f("fk_helion_cache_entries_config_id_configs")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_helion_cache_entries")),
        sa.UniqueConstraint("cache_key", name=op.f("uq_helion_cache_entries_cache_key")),
    )
    with op.batch_alter_table("helion_cache_entries", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_helion_cache_entries_config_id"), ["config_id"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_helion_cache_entries_kernel_source_hash"), ["kernel_source_hash"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_helion_cache_entries_updated_at"), ["updated_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("helion_cache_entries", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_helion_cache_entries_updated_at"))
        batch_op.drop_index(batch_op.f("ix_helion_cache_entries_kernel_source_hash"))
        batch_op.drop_index(batch_op.f("ix_helion_cache_entries_config_id"))
    op.drop_table("helion_cache_entries")
