"""schema: unverified presets, source layout of imported rows, source path and revision of runs

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06 12:00:00

Interop with vLLM's config trees (docs/interop.md):

- ``presets.verified``: 0 for rows of a kernel no registered module provided at import
  (syntax-checked, never compiled); ``presetdb verify`` sets it, or quarantines the row.
- ``presets.source_position``, ``source_key``, ``source_config``: where the row stood in
  the file it was imported from, and its key and config with the file's field order, so
  ``presetdb export --format vllm`` writes the file back byte for byte.
- ``tuning_runs.source_path``, ``source_rev``: the file's path inside its repository and
  the repository's commit (``--source-rev``).

The audit views ``v_active_presets`` and ``v_preset_history`` gain ``verified``,
``source_path`` and ``source_rev``. Frozen: this file never imports the live models.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None
presetdb_kind = "schema"

# JSON text columns added to presets (nullable, CHECKed as JSON).
_PRESET_TEXT = ("source_key", "source_config")


def upgrade() -> None:
    for name in ("v_active_presets", "v_preset_history"):
        op.execute(f"DROP VIEW IF EXISTS {name}")  # sql: constant view names
    op.add_column(
        "presets", sa.Column("verified", sa.Boolean(), nullable=False, server_default=sa.true())
    )
    op.add_column("presets", sa.Column("source_position", sa.Integer(), nullable=True))
    dialect = op.get_bind().dialect.name
    for name in _PRESET_TEXT:
        check = f"ck_presets_{name}_json"
        if dialect == "sqlite":
            # SQLite's ALTER TABLE cannot add a table constraint; a column constraint
            # names the same CHECK (reflected the same as models.py's table constraint).
            op.execute(
                f"ALTER TABLE presets ADD COLUMN {name} TEXT "  # sql: constant names
                f"CONSTRAINT {check} CHECK ({name} IS NULL OR json_valid({name}))"
            )
        else:
            op.add_column("presets", sa.Column(name, sa.Text(), nullable=True))
            op.create_check_constraint(
                op.f(check), "presets", f"{name} IS NULL OR ({name}::jsonb IS NOT NULL)"
            )
    op.add_column("tuning_runs", sa.Column("source_path", sa.Text(), nullable=True))
    op.add_column("tuning_runs", sa.Column("source_rev", sa.String(length=64), nullable=True))
    for name, sql in VIEWS.items():
        op.execute(f"CREATE VIEW {name} AS {sql}")  # sql: VIEWS is a constant of this module


def downgrade() -> None:
    for name in VIEWS:
        op.execute(f"DROP VIEW IF EXISTS {name}")  # sql: constant view names
    dialect = op.get_bind().dialect.name
    op.drop_column("tuning_runs", "source_rev")
    op.drop_column("tuning_runs", "source_path")
    for name in reversed(_PRESET_TEXT):
        if dialect != "sqlite":
            op.drop_constraint(op.f(f"ck_presets_{name}_json"), "presets", type_="check")
        op.drop_column("presets", name)
    op.drop_column("presets", "source_position")
    op.drop_column("presets", "verified")
    for name, sql in OLD_VIEWS.items():
        op.execute(f"CREATE VIEW {name} AS {sql}")  # sql: OLD_VIEWS is a constant of this module


VIEWS = {
    # One row per active preset, names and config joined in.
    "v_active_presets": """
        SELECT p.id AS preset_id, k.name AS kernel, pl.name AS platform, p.shape_key,
               c.config_json AS config, c.sha256 AS config_sha256, p.latency_ms, p.default_ms,
               p.reference_ms, p.configs_tried, p.tuning_seconds, p.kernel_source_hash,
               r.source, r.source_file, r.revision, r.tuned_by, r.device_name, r.helion_version,
               r.triton_version, r.torch_version, r.cuda_version, r.autotune_effort,
               r.finished_at AS tuned_at, p.created_at, p.verified, r.source_path, r.source_rev
        FROM presets p
        JOIN kernels k ON k.id = p.kernel_id
        JOIN platforms pl ON pl.id = p.platform_id
        JOIN configs c ON c.id = p.config_id
        JOIN tuning_runs r ON r.id = p.run_id
        WHERE p.status = 'active'
    """,
    # Every preset row, active or not, for the history of a key.
    "v_preset_history": """
        SELECT p.id AS preset_id, k.name AS kernel, pl.name AS platform, p.shape_key, p.status,
               p.status_reason, p.superseded_by, c.sha256 AS config_sha256,
               c.config_json AS config, p.latency_ms, r.source, r.revision, r.source_file,
               p.created_at, p.verified, r.source_path, r.source_rev
        FROM presets p
        JOIN kernels k ON k.id = p.kernel_id
        JOIN platforms pl ON pl.id = p.platform_id
        JOIN configs c ON c.id = p.config_id
        JOIN tuning_runs r ON r.id = p.run_id
    """,
}

# The views as revision 0001 made them (restored by the downgrade).
OLD_VIEWS = {
    "v_active_presets": """
        SELECT p.id AS preset_id, k.name AS kernel, pl.name AS platform, p.shape_key,
               c.config_json AS config, c.sha256 AS config_sha256, p.latency_ms, p.default_ms,
               p.reference_ms, p.configs_tried, p.tuning_seconds, p.kernel_source_hash,
               r.source, r.source_file, r.revision, r.tuned_by, r.device_name, r.helion_version,
               r.triton_version, r.torch_version, r.cuda_version, r.autotune_effort,
               r.finished_at AS tuned_at, p.created_at
        FROM presets p
        JOIN kernels k ON k.id = p.kernel_id
        JOIN platforms pl ON pl.id = p.platform_id
        JOIN configs c ON c.id = p.config_id
        JOIN tuning_runs r ON r.id = p.run_id
        WHERE p.status = 'active'
    """,
    "v_preset_history": """
        SELECT p.id AS preset_id, k.name AS kernel, pl.name AS platform, p.shape_key, p.status,
               p.status_reason, p.superseded_by, c.sha256 AS config_sha256,
               c.config_json AS config, p.latency_ms, r.source, r.revision, r.source_file,
               p.created_at
        FROM presets p
        JOIN kernels k ON k.id = p.kernel_id
        JOIN platforms pl ON pl.id = p.platform_id
        JOIN configs c ON c.id = p.config_id
        JOIN tuning_runs r ON r.id = p.run_id
    """,
}
