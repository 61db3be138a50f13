"""data: H100 silu_mul v2 grid, refined, graph timing

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-07 08:34:39

Seed files (seed_data/), pinned by sha256; a changed file fails the upgrade:
- silu_mul_nvidia_h100_v2_refine_graph.json: silu_mul on nvidia_h100, 57 entries
"""

from __future__ import annotations

from presetdb.store.seedload import v1

revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None
presetdb_kind = "data"

SEED_FILES = {
    'silu_mul_nvidia_h100_v2_refine_graph.json': '208cc83cfbdc7a0e8a8c1766bc056defba52c0d8a99ac115e0f90820d8832a90',
}


def upgrade() -> None:
    v1.upgrade(revision, SEED_FILES)


def downgrade() -> None:
    v1.downgrade(revision)
