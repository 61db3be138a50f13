"""data: H100 matmul denser grid

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-24 23:15:15

Seed files (seed_data/), pinned by sha256; a changed file fails the upgrade:
- matmul_nvidia_h100_denser_grid.json: matmul on nvidia_h100, 9 entries
- matmul_nvidia_h100_denser_grid_retuned.json: matmul on nvidia_h100, 1 entries
"""

from __future__ import annotations

from presetdb.store.seedload import v1

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None
presetdb_kind = "data"

SEED_FILES = {
    'matmul_nvidia_h100_denser_grid.json': 'f33aabeecb88e929a5694c6c6933a8a138994ad431a298ba65d087ce86517cb9',
    'matmul_nvidia_h100_denser_grid_retuned.json': '30fb031efffeaa157b33861c06816e996be27ac69899ac06ed92228e94a09816',
}


def upgrade() -> None:
    v1.upgrade(revision, SEED_FILES)


def downgrade() -> None:
    v1.downgrade(revision)
