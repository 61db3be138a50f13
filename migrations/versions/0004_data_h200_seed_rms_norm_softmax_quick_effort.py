"""data: H200 seed: rms_norm, softmax (quick effort, 12 s budget per shape)

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-24 21:49:51

Seed files (seed_data/), pinned by sha256; a changed file fails the upgrade:
- rms_norm_nvidia_h200_20261124.json: rms_norm on nvidia_h200, 16 entries
- softmax_nvidia_h200_20261124.json: softmax on nvidia_h200, 16 entries
"""

from __future__ import annotations

from presetdb.store.seedload import v1

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None
presetdb_kind = "data"

SEED_FILES = {
    'rms_norm_nvidia_h200_20261124.json': '54c1a54b45172f4c262a0b2abd2bd32147e33b5ac53105606ff9005b17ffa9a0',
    'softmax_nvidia_h200_20261124.json': '320130f509d3f7b26cb0c9857cbb01cc3a16e99ede098d36a03dc2ea154c802b',
}


def upgrade() -> None:
    v1.upgrade(revision, SEED_FILES)


def downgrade() -> None:
    v1.downgrade(revision)
