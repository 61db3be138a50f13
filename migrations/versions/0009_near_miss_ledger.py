"""schema: near-miss ledger (preset_near_misses)

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07 12:00:00

Calls served by anything but an exact match of their own platform (a nearest/ceil/floor
key, the kernel's default entry, another platform's preset), counted per requested key
and served key: what `presetdb queue` ranks into a tuning queue and the `far` audit lists.
Written by a serving process's ledger thread into its user overlay.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None
presetdb_kind = "schema"


def _json_valid(column: str) -> str:
    """CHECK text: valid JSON (SQLite's json_valid; a jsonb cast on PostgreSQL)."""
    if op.get_bind().dialect.name == "sqlite":
        return f"json_valid({column})"
    return f"({column}::jsonb IS NOT NULL)"


def upgrade() -> None:
    op.create_table(
        "preset_near_misses",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("kernel", sa.String(length=200), nullable=False),
        sa.Column("platform", sa.String(length=100), nullable=False),
        sa.Column("requested_key", sa.Text(), nullable=False),
        sa.Column("served_platform", sa.String(length=100), nullable=False),
        sa.Column("served_key", sa.Text(), nullable=False),
        sa.Column("match", sa.String(length=20), nullable=False),
        sa.Column("layer", sa.String(length=20), nullable=False),
        sa.Column("distances", sa.Text(), nullable=False),
        sa.Column("distance", sa.Float(), nullable=True),
        sa.Column("far", sa.Boolean(), nullable=False),
        sa.Column("far_fields", sa.Text(), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.Column("first_seen_at", sa.String(length=32), nullable=False),
        sa.Column("last_seen_at", sa.String(length=32), nullable=False),
        sa.CheckConstraint("count >= 1", name=op.f("ck_preset_near_misses_count_positive")),
        sa.CheckConstraint("distance IS NULL OR distance >= 0", name=op.f("ck_preset_near_misses_distance_nonnegative")),
        sa.CheckConstraint(_json_valid("requested_key"), name=op.f("ck_preset_near_misses_requested_key_json")),
        sa.CheckConstraint(_json_valid("served_key"), name=op.f("ck_preset_near_misses_served_key_json")),
        sa.CheckConstraint(_json_valid("distances"), name=op.f("ck_preset_near_misses_distances_json")),
        sa.CheckConstraint(_json_valid("far_fields"), name=op.f("ck_preset_near_misses_far_fields_json")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_preset_near_misses")),
        sa.UniqueConstraint(
            "kernel", "platform", "requested_key", "served_platform", "served_key",
            name=op.f("uq_preset_near_misses_ident"),  # the convention's name passes PostgreSQL's 63
        ),
    )


def downgrade() -> None:
    op.drop_table("preset_near_misses")
