"""platform catalog: canonical GPU names, device-string aliases and ranked fallbacks

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24 20:00:00

Reference data every presetdb database needs (user overlays too), so it is a schema-kind
revision. Frozen table stubs: this file never imports the live models.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql, sqlite

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None
presetdb_kind = "schema"

CREATED_AT = "2026-11-24T20:00:00.000000Z"

# name, vendor, representative device string, compute capability (gfx arch on AMD), SMs/CUs
PLATFORMS = [
    ("nvidia_h100", "nvidia", "NVIDIA H100 80GB HBM3", "9.0", 132),
    ("nvidia_h200", "nvidia", "NVIDIA H200", "9.0", 132),
    ("nvidia_b200", "nvidia", "NVIDIA B200", "10.0", 148),
    ("nvidia_a100", "nvidia", "NVIDIA A100-SXM4-80GB", "8.0", 108),
    ("nvidia_l40s", "nvidia", "NVIDIA L40S", "8.9", 142),
    ("amd_instinct_mi300x", "amd", "AMD Instinct MI300X", "gfx942", 304),
    ("amd_instinct_mi325x", "amd", "AMD Instinct MI325X", "gfx942", 304),
    ("cpu", "cpu", "cpu", None, None),
]

# Device strings as torch.cuda.get_device_name() reports them, per SKU.
ALIASES = {
    "nvidia_h100": [
        "NVIDIA H100 80GB HBM3", "NVIDIA H100 PCIe", "NVIDIA H100 NVL", "NVIDIA H100",
        "NVIDIA H100 SXM5 80GB", "NVIDIA H100 SXM5 94GB", "NVIDIA H800",
    ],
    "nvidia_h200": ["NVIDIA H200", "NVIDIA H200 NVL", "NVIDIA H200 141GB HBM3e", "NVIDIA GH200 480GB"],
    "nvidia_b200": ["NVIDIA B200"],
    "nvidia_a100": [
        "NVIDIA A100-SXM4-80GB", "NVIDIA A100-SXM4-40GB", "NVIDIA A100 80GB PCIe",
        "NVIDIA A100-PCIE-40GB", "NVIDIA A800-SXM4-80GB",
    ],
    "nvidia_l40s": ["NVIDIA L40S"],
    "amd_instinct_mi300x": ["AMD Instinct MI300X", "AMD Instinct MI300X VF"],
    "amd_instinct_mi325x": ["AMD Instinct MI325X"],
    "cpu": ["cpu"],
}

# platform -> platforms whose configs may serve it, best first (same architecture).
FALLBACKS = {
    "nvidia_h200": ["nvidia_h100"],
    "nvidia_h100": ["nvidia_h200"],
    "amd_instinct_mi325x": ["amd_instinct_mi300x"],
    "amd_instinct_mi300x": ["amd_instinct_mi325x"],
}

platforms = sa.table(
    "platforms",
    sa.column("id", sa.Integer),
    sa.column("name", sa.String),
    sa.column("vendor", sa.String),
    sa.column("device_name", sa.String),
    sa.column("compute_capability", sa.String),
    sa.column("sm_count", sa.Integer),
    sa.column("created_at", sa.String),
)
aliases = sa.table("platform_aliases", sa.column("alias", sa.String), sa.column("platform_id", sa.Integer))
fallbacks = sa.table(
    "platform_fallbacks",
    sa.column("platform_id", sa.Integer),
    sa.column("rank", sa.Integer),
    sa.column("fallback_platform_id", sa.Integer),
)


def _insert_or_skip(table: sa.TableClause, **values: object) -> sa.Executable:
    """INSERT ... ON CONFLICT DO NOTHING in the connection's dialect (both spell it so)."""
    dialect = postgresql if op.get_bind().dialect.name == "postgresql" else sqlite
    return dialect.insert(table).values(**values).on_conflict_do_nothing()


def upgrade() -> None:
    conn = op.get_bind()
    ids: dict[str, int] = {}
    for name, vendor, device, cc, sms in PLATFORMS:
        existing = conn.execute(sa.select(platforms.c.id).where(platforms.c.name == name)).scalar()
        if existing is None:
            existing = conn.execute(
                platforms.insert()
                .values(
                    name=name, vendor=vendor, device_name=device, compute_capability=cc,
                    sm_count=sms, created_at=CREATED_AT,
                )
                .returning(platforms.c.id)
            ).scalar_one()
        ids[name] = existing
    for name, names in ALIASES.items():
        for alias in names:
            conn.execute(_insert_or_skip(aliases, alias=alias, platform_id=ids[name]))
    for name, chain in FALLBACKS.items():
        for rank, fallback in enumerate(chain, start=1):
            conn.execute(
                _insert_or_skip(fallbacks, platform_id=ids[name], rank=rank, fallback_platform_id=ids[fallback])
            )


def downgrade() -> None:
    conn = op.get_bind()
    names = [p[0] for p in PLATFORMS]
    ids = conn.execute(sa.select(platforms.c.id).where(platforms.c.name.in_(names))).scalars().all()
    conn.execute(fallbacks.delete().where(fallbacks.c.platform_id.in_(ids)))
    conn.execute(aliases.delete().where(aliases.c.platform_id.in_(ids)))
    conn.execute(platforms.delete().where(platforms.c.id.in_(ids)))
