"""data: H200 seed silu_mul matmul (quick effort)

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-24 23:15:31

Seed files (seed_data/), pinned by sha256; a changed file fails the upgrade:
- silu_mul_nvidia_h200_20261124.json: silu_mul on nvidia_h200, 16 entries
- matmul_nvidia_h200_20261124.json: matmul on nvidia_h200, 11 entries
"""

from __future__ import annotations

from presetdb.store.seedload import v1

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None
presetdb_kind = "data"

SEED_FILES = {
    'silu_mul_nvidia_h200_20261124.json': '3f60c90cc12b29d8d0c71c916a70299982ad3e328cb5b84c247059f2ed8569ab',
    'matmul_nvidia_h200_20261124.json': '151e058cd46e7ca3d1ca29ea9de927bf40514804579e702b4f70ae9aedf631a2',
}


def upgrade() -> None:
    v1.upgrade(revision, SEED_FILES)


def downgrade() -> None:
    v1.downgrade(revision)
