"""data: H200 rms_norm, silu_mul, matmul v2: refined from the H100's v2 configs, graph timing

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-07 18:00:14

Seed files (seed_data/), pinned by sha256; a changed file fails the upgrade:
- rms_norm_nvidia_h200_v2_refine_graph.json: rms_norm on nvidia_h200, 42 entries
- silu_mul_nvidia_h200_v2_refine_graph.json: silu_mul on nvidia_h200, 57 entries
- matmul_nvidia_h200_v2_refine_graph.json: matmul on nvidia_h200, 31 entries
"""

from __future__ import annotations

from presetdb.store.seedload import v1

revision = '0013'
down_revision = '0012'
branch_labels = None
depends_on = None
presetdb_kind = "data"

SEED_FILES = {
    'rms_norm_nvidia_h200_v2_refine_graph.json': 'e6e191953873664daffc068bb31fa7c7a1bb7233f8162d29f7c0f4760ea32457',
    'silu_mul_nvidia_h200_v2_refine_graph.json': '9a1bf86774e99eebe9f7e34343600317d141ca6fb0ba2a63376f50ac237104f9',
    'matmul_nvidia_h200_v2_refine_graph.json': '87e202a44a7eec5d59af322b30b27d1bf109bdc21ca333217d1565be04cc6f2b',
}


def upgrade() -> None:
    v1.upgrade(revision, SEED_FILES)


def downgrade() -> None:
    v1.downgrade(revision)
