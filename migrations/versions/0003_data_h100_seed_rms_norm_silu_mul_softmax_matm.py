"""data: H100 seed: rms_norm, silu_mul, softmax, matmul (quick effort, 12-40 s budget per shape)

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24 21:14:58

Seed files (seed_data/), pinned by sha256; a changed file fails the upgrade:
- matmul_nvidia_h100_20261124.json: matmul on nvidia_h100, 7 entries
- rms_norm_nvidia_h100_20261124.json: rms_norm on nvidia_h100, 16 entries
- silu_mul_nvidia_h100_20261124.json: silu_mul on nvidia_h100, 16 entries
- softmax_nvidia_h100_20261124.json: softmax on nvidia_h100, 16 entries
"""

from __future__ import annotations

from presetdb.store.seedload import v1

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None
presetdb_kind = "data"

SEED_FILES = {
    'matmul_nvidia_h100_20261124.json': '8fc05da517251c712c1bc7216b19ab257ea12ab75d55953d42af232e562dcb7c',
    'rms_norm_nvidia_h100_20261124.json': 'fa4466c29fc5ddb8a50385cdd0030c4ecb60c0ed656e060862647d600c78afb9',
    'silu_mul_nvidia_h100_20261124.json': '592d4c4c470d77f60cb0c26d5d1e50f681827dad96faee07354a1f13a101d869',
    'softmax_nvidia_h100_20261124.json': '1f81495e270b2335be50750a43e6b77b97437d5051b9b2052ba1f604af64a80e',
}


def upgrade() -> None:
    v1.upgrade(revision, SEED_FILES)


def downgrade() -> None:
    v1.downgrade(revision)
