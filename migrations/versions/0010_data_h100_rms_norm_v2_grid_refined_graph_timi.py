"""data: H100 rms_norm v2 grid, refined, graph timing

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07 05:47:16

Seed files (seed_data/), pinned by sha256; a changed file fails the upgrade:
- rms_norm_nvidia_h100_v2_refine_graph.json: rms_norm on nvidia_h100, 39 entries
"""

from __future__ import annotations

from presetdb.store.seedload import v1

revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None
presetdb_kind = "data"

SEED_FILES = {
    'rms_norm_nvidia_h100_v2_refine_graph.json': 'c4974729f3e88b06bcae7c4a2635482dbe91fac341c33779d3568aba3cd41534',
}


def upgrade() -> None:
    v1.upgrade(revision, SEED_FILES)


def downgrade() -> None:
    v1.downgrade(revision)
