"""data: H100 matmul v2: seeded search and refine, graph timing

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-07 15:21:25

Seed files (seed_data/), pinned by sha256; a changed file fails the upgrade:
- matmul_nvidia_h100_v2_search_graph.json: matmul on nvidia_h100, 4 entries
- matmul_nvidia_h100_v2_refine_graph.json: matmul on nvidia_h100, 30 entries
"""

from __future__ import annotations

from presetdb.store.seedload import v1

revision = '0012'
down_revision = '0011'
branch_labels = None
depends_on = None
presetdb_kind = "data"

SEED_FILES = {
    'matmul_nvidia_h100_v2_search_graph.json': 'ec1e8f4703059355fe8048754f1fc17bb215be04d89f687bc7a49a67b042b75c',
    'matmul_nvidia_h100_v2_refine_graph.json': '2070ca383fb020b8d5c283f78f00613e3cd530935314bcbdb7be67c437db400a',
}


def upgrade() -> None:
    v1.upgrade(revision, SEED_FILES)


def downgrade() -> None:
    v1.downgrade(revision)
