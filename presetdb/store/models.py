"""SQLAlchemy 2 typed models of the store. Alembic revision 0001 creates exactly this
schema (a test checks that autogenerate finds no difference). ORM objects never leave
the repository layer; callers get frozen records.

Units live in column names (`_ms`, `_seconds`); timestamps are UTC ISO-8601 text with
`_at`, so plain `sqlite3` shows them readably.

The same models serve SQLite files and PostgreSQL registries: JSON checks render per
dialect (`JsonValid`), the one-active-row index is partial on both, and `seed` is a
BIGINT on PostgreSQL (its INTEGER is 32-bit; SQLite's is 64-bit).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    text,
    true,
)
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.sql.expression import ColumnElement
from sqlalchemy.sql.naming import conv

from presetdb._util import utc_now

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

PRESET_STATUSES = ("active", "superseded", "quarantined")
RUN_SOURCES = (
    "tune",  # presetdb tune on a GPU
    "autotune",  # PRESETDB_ON_MISS=autotune at run time
    "import-presetdb",
    "import-vllm",
    "import-helion-cache",
    "import-helion-aot",
    "manual",
)


class JsonValid(ColumnElement[bool]):
    """CHECK expression "this column holds valid JSON", spelled per dialect exactly as
    revision 0001 spells it: json_valid(col) on SQLite, (col::jsonb IS NOT NULL) on
    PostgreSQL."""

    inherit_cache = True
    type = Boolean()

    def __init__(self, column: str, *, nullable: bool = False) -> None:
        self.column = column
        self.nullable = nullable  # NULL passes too (columns added in 0007)


@compiles(JsonValid)
def _json_valid_sqlite(element: JsonValid, _compiler: Any, **_kw: Any) -> str:
    check = f"json_valid({element.column})"
    return f"{element.column} IS NULL OR {check}" if element.nullable else check


@compiles(JsonValid, "postgresql")
def _json_valid_postgresql(element: JsonValid, _compiler: Any, **_kw: Any) -> str:
    check = f"({element.column}::jsonb IS NOT NULL)"
    return f"{element.column} IS NULL OR {check}" if element.nullable else check


ACTIVE_ONLY = text("status = 'active'")
SEED_TYPE = Integer().with_variant(BigInteger(), "postgresql")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Kernel(Base):
    __tablename__ = "kernels"
    __table_args__ = (CheckConstraint(JsonValid("key_schema"), name="key_schema_json"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)  # e.g. "rms_norm"
    # {"fields": [{"name", "policy", "description"}]}: how shape keys are matched
    key_schema: Mapped[str] = mapped_column(Text)
    description: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[str] = mapped_column(String(32), default=utc_now)


class Platform(Base):
    __tablename__ = "platforms"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)  # canonical, e.g. "nvidia_h100"
    vendor: Mapped[str] = mapped_column(String(50), default="")  # "nvidia", "amd", "cpu"
    device_name: Mapped[str] = mapped_column(String(200), default="")  # a representative SKU string
    compute_capability: Mapped[str | None] = mapped_column(String(20))  # "9.0"; gfx arch on AMD
    sm_count: Mapped[int | None] = mapped_column(Integer)  # streaming multiprocessors / CUs
    created_at: Mapped[str] = mapped_column(String(32), default=utc_now)


class PlatformAlias(Base):
    """Device strings (as torch reports them) that mean a canonical platform."""

    __tablename__ = "platform_aliases"

    alias: Mapped[str] = mapped_column(String(200), primary_key=True)  # "NVIDIA H100 80GB HBM3"
    platform_id: Mapped[int] = mapped_column(ForeignKey("platforms.id", ondelete="CASCADE"), index=True)


class PlatformFallback(Base):
    """Ranked platforms whose configs may serve another platform (rank 1 first)."""

    __tablename__ = "platform_fallbacks"
    __table_args__ = (
        UniqueConstraint("platform_id", "fallback_platform_id"),
        CheckConstraint("platform_id <> fallback_platform_id", name="not_self"),
        CheckConstraint("rank >= 1", name="rank_positive"),
    )

    platform_id: Mapped[int] = mapped_column(
        ForeignKey("platforms.id", ondelete="CASCADE"), primary_key=True
    )
    rank: Mapped[int] = mapped_column(Integer, primary_key=True)  # 1 = tried first
    fallback_platform_id: Mapped[int] = mapped_column(ForeignKey("platforms.id", ondelete="CASCADE"))


class TuningRun(Base):
    """Provenance of one batch of presets: who tuned or imported what, where, with what."""

    __tablename__ = "tuning_runs"
    __table_args__ = (
        CheckConstraint(
            "source IN (" + ", ".join(f"'{s}'" for s in RUN_SOURCES) + ")", name="source_known"
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    source: Mapped[str] = mapped_column(String(40))  # one of RUN_SOURCES
    source_file: Mapped[str | None] = mapped_column(Text)  # file name the rows came from
    source_sha256: Mapped[str | None] = mapped_column(String(64), index=True)
    revision: Mapped[str | None] = mapped_column(String(64), index=True)  # importing migration
    tuned_by: Mapped[str | None] = mapped_column(String(200))  # user@host or a team name
    host: Mapped[str | None] = mapped_column(String(200))
    device_name: Mapped[str | None] = mapped_column(String(200))  # torch's device string
    sm_count: Mapped[int | None] = mapped_column(Integer)
    driver_version: Mapped[str | None] = mapped_column(String(50))
    cuda_version: Mapped[str | None] = mapped_column(String(50))  # or the HIP version
    torch_version: Mapped[str | None] = mapped_column(String(50))
    triton_version: Mapped[str | None] = mapped_column(String(50))
    helion_version: Mapped[str | None] = mapped_column(String(50))
    presetdb_version: Mapped[str | None] = mapped_column(String(50))
    autotune_effort: Mapped[str | None] = mapped_column(String(20))  # none / quick / full
    seed: Mapped[int | None] = mapped_column(SEED_TYPE)
    benchmark_method: Mapped[str | None] = mapped_column(Text)  # e.g. do_bench median, warm-up
    started_at: Mapped[str | None] = mapped_column(String(32))
    finished_at: Mapped[str | None] = mapped_column(String(32))
    imported_at: Mapped[str] = mapped_column(String(32), default=utc_now)
    # path of the imported file inside its repository, e.g. configs/rms_norm/nvidia_h100.json
    source_path: Mapped[str | None] = mapped_column(Text)
    source_rev: Mapped[str | None] = mapped_column(String(64))  # the repository's commit (--source-rev)


class Config(Base):
    """A Helion config, stored once and addressed by the sha256 of its canonical JSON."""

    __tablename__ = "configs"
    __table_args__ = (CheckConstraint(JsonValid("config_json"), name="config_json"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64), unique=True)
    config_json: Mapped[str] = mapped_column(Text)  # sorted keys, compact
    created_at: Mapped[str] = mapped_column(String(32), default=utc_now)


class Preset(Base):
    """The config chosen for one (kernel, platform, shape key), with its timings.

    At most one row per key is `active`; older rows stay as `superseded` history and
    point at their successor. `quarantined` rows failed validation or compilation.
    """

    __tablename__ = "presets"
    __table_args__ = (
        CheckConstraint(JsonValid("shape_key"), name="shape_key_json"),
        CheckConstraint(JsonValid("source_key", nullable=True), name="source_key_json"),
        CheckConstraint(JsonValid("source_config", nullable=True), name="source_config_json"),
        CheckConstraint(
            "status IN (" + ", ".join(f"'{s}'" for s in PRESET_STATUSES) + ")", name="status_known"
        ),
        CheckConstraint("latency_ms IS NULL OR latency_ms > 0", name="latency_positive"),
        CheckConstraint("default_ms IS NULL OR default_ms > 0", name="default_positive"),
        CheckConstraint("reference_ms IS NULL OR reference_ms > 0", name="reference_positive"),
        CheckConstraint("configs_tried IS NULL OR configs_tried >= 0", name="tried_nonnegative"),
        CheckConstraint("tuning_seconds IS NULL OR tuning_seconds >= 0", name="tuning_nonnegative"),
        Index(
            "uq_presets_active_key",
            "kernel_id",
            "platform_id",
            "shape_key",
            unique=True,
            sqlite_where=ACTIVE_ONLY,
            postgresql_where=ACTIVE_ONLY,
        ),
        Index("ix_presets_lookup", "kernel_id", "platform_id", "status"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kernel_id: Mapped[int] = mapped_column(ForeignKey("kernels.id"))
    platform_id: Mapped[int] = mapped_column(ForeignKey("platforms.id"))
    shape_key: Mapped[str] = mapped_column(Text)  # canonical JSON; "{}" = the kernel default
    config_id: Mapped[int] = mapped_column(ForeignKey("configs.id"), index=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("tuning_runs.id"), index=True)
    kernel_source_hash: Mapped[str | None] = mapped_column(String(64))  # sha256 of kernel source
    latency_ms: Mapped[float | None] = mapped_column(Float)  # the stored config, median
    default_ms: Mapped[float | None] = mapped_column(Float)  # Helion's default config
    reference_ms: Mapped[float | None] = mapped_column(Float)  # the PyTorch reference
    configs_tried: Mapped[int | None] = mapped_column(Integer)  # configs the search compiled
    tuning_seconds: Mapped[float | None] = mapped_column(Float)  # wall time of the search
    status: Mapped[str] = mapped_column(String(20), default="active")
    status_reason: Mapped[str | None] = mapped_column(Text)  # why quarantined / superseded
    superseded_by: Mapped[int | None] = mapped_column(ForeignKey("presets.id"))
    created_at: Mapped[str] = mapped_column(String(32), default=utc_now)
    # 0: imported for a kernel no registered module provided (config syntax checked, never
    # compiled); served only once its kernel is registered and the config passes there
    verified: Mapped[bool] = mapped_column(Boolean, default=True, server_default=true())
    source_position: Mapped[int | None] = mapped_column(Integer)  # entry index in the source file, 0-based
    # the key and config as the source file wrote them (field order kept), for byte-faithful export
    source_key: Mapped[str | None] = mapped_column(Text)
    source_config: Mapped[str | None] = mapped_column(Text)


class PresetCandidate(Base):
    """Runners-up of a tuning search, fastest first."""

    __tablename__ = "preset_candidates"
    __table_args__ = (
        UniqueConstraint("preset_id", "rank"),
        CheckConstraint("rank >= 1", name="rank_positive"),
        CheckConstraint("latency_ms IS NULL OR latency_ms > 0", name="latency_positive"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    preset_id: Mapped[int] = mapped_column(ForeignKey("presets.id", ondelete="CASCADE"))
    config_id: Mapped[int] = mapped_column(ForeignKey("configs.id"), index=True)
    rank: Mapped[int] = mapped_column(Integer)  # 1 = the fastest runner-up
    latency_ms: Mapped[float | None] = mapped_column(Float)


class PresetMiss(Base):
    """Miss ledger: calls nothing matched (not even a default), kept in the user overlay
    so the next tuning run can target what production asked for."""

    __tablename__ = "preset_misses"
    __table_args__ = (
        UniqueConstraint("kernel", "platform", "features"),
        CheckConstraint(JsonValid("features"), name="features_json"),
        CheckConstraint("count >= 1", name="count_positive"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kernel: Mapped[str] = mapped_column(String(200))  # by name: the kernel may not be stored
    platform: Mapped[str] = mapped_column(String(100))
    features: Mapped[str] = mapped_column(Text)  # canonical shape key of the call
    reason: Mapped[str] = mapped_column(String(40), default="no-match")  # or "quarantined", ...
    count: Mapped[int] = mapped_column(Integer, default=1)
    first_seen_at: Mapped[str] = mapped_column(String(32), default=utc_now)
    last_seen_at: Mapped[str] = mapped_column(String(32), default=utc_now)


CACHE_ENTRY_SOURCES = (
    "remote-cache",  # Helion's RemoteAutotuneCache through presetdb.helion.remote_cache.Backend
    "import-helion-cache",  # `presetdb import` of a Helion *.best_config file
)


class HelionCacheEntry(Base):
    """One entry of Helion's own autotune cache, kept under Helion's cache key: what a
    plain ``@helion.kernel`` reads back through `presetdb.helion.remote_cache.Backend`.

    The key fields are those of Helion's cache key (``LooseAutotuneCacheKey`` or
    ``StrictAutotuneCacheKey``) as Helion wrote them; `entry_json` is the
    ``.best_config`` text itself, served back unchanged. One row per cache key: a newer
    result for the key replaces the row (Helion keeps no history either).
    """

    __tablename__ = "helion_cache_entries"
    __table_args__ = (
        CheckConstraint(JsonValid("key_fields"), name="key_fields_json"),
        CheckConstraint(JsonValid("entry_json"), name="entry_json"),
        CheckConstraint(
            "source IN (" + ", ".join(f"'{s}'" for s in CACHE_ENTRY_SOURCES) + ")", name="source_known"
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    cache_key: Mapped[str] = mapped_column(String(64), unique=True)  # Helion's key.stable_hash() (sha256)
    key_type: Mapped[str] = mapped_column(String(40))  # "LooseAutotuneCacheKey" or "StrictAutotuneCacheKey"
    hardware: Mapped[str] = mapped_column(String(200))  # Helion's device name, e.g. "NVIDIA H100"
    runtime_name: Mapped[str | None] = mapped_column(String(200))  # CUDA/HIP version, e.g. "12.8"
    backend: Mapped[str | None] = mapped_column(String(40))  # Helion backend, e.g. "triton"
    kernel_source_hash: Mapped[str] = mapped_column(String(64), index=True)  # Helion's: sha256 of the function source
    specialization_key: Mapped[str] = mapped_column(Text)  # repr of the argument specialization
    config_spec_hash: Mapped[str] = mapped_column(String(64))  # Helion's ConfigSpec fingerprint ('' if none)
    key_fields: Mapped[str] = mapped_column(Text)  # every key field as Helion wrote it (canonical JSON)
    config_id: Mapped[int] = mapped_column(ForeignKey("configs.id"), index=True)
    entry_json: Mapped[str] = mapped_column(Text)  # the .best_config text, served back as is
    source: Mapped[str] = mapped_column(String(40))  # one of CACHE_ENTRY_SOURCES
    source_file: Mapped[str | None] = mapped_column(Text)  # imported file name
    host: Mapped[str | None] = mapped_column(String(200))  # where the writing process ran
    torch_version: Mapped[str | None] = mapped_column(String(50))
    triton_version: Mapped[str | None] = mapped_column(String(50))
    helion_version: Mapped[str | None] = mapped_column(String(50))
    presetdb_version: Mapped[str | None] = mapped_column(String(50))
    created_at: Mapped[str] = mapped_column(String(32), default=utc_now)  # first written
    updated_at: Mapped[str] = mapped_column(String(32), default=utc_now, index=True)  # last written
class PresetNearMiss(Base):
    """Near-miss ledger: calls served by anything but an exact key of their own platform
    (nearest/ceil/floor, the default entry, a fallback platform), counted per requested
    and served key in the user overlay: what `presetdb queue` ranks and the `far` audit lists."""

    __tablename__ = "preset_near_misses"
    __table_args__ = (
        UniqueConstraint(
            "kernel", "platform", "requested_key", "served_platform", "served_key",
            name=conv("uq_preset_near_misses_ident"),  # the convention's name passes PostgreSQL's 63
        ),
        CheckConstraint("count >= 1", name="count_positive"),
        CheckConstraint("distance IS NULL OR distance >= 0", name="distance_nonnegative"),
        CheckConstraint(JsonValid("requested_key"), name="requested_key_json"),
        CheckConstraint(JsonValid("served_key"), name="served_key_json"),
        CheckConstraint(JsonValid("distances"), name="distances_json"),
        CheckConstraint(JsonValid("far_fields"), name="far_fields_json"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kernel: Mapped[str] = mapped_column(String(200))  # by name, as for preset_misses
    platform: Mapped[str] = mapped_column(String(100))  # the platform the call ran on
    requested_key: Mapped[str] = mapped_column(Text)  # canonical shape key of the call
    served_platform: Mapped[str] = mapped_column(String(100))  # whose preset served it
    served_key: Mapped[str] = mapped_column(Text)  # the stored key that served it ("{}": default entry)
    match: Mapped[str] = mapped_column(String(20))  # exact (another platform's) / nearest / ceil / floor / default
    layer: Mapped[str] = mapped_column(String(20))  # overlay / deployment / default
    distances: Mapped[str] = mapped_column(Text)  # {"field": log2 distance, ...}
    distance: Mapped[float | None] = mapped_column(Float)  # their sum; NULL for the default entry
    far: Mapped[bool] = mapped_column(Boolean)  # a field beyond its max distance (PRESETDB_MAX_DISTANCE)
    far_fields: Mapped[str] = mapped_column(Text)  # {"field": [distance, limit], ...} of those fields
    count: Mapped[int] = mapped_column(Integer, default=1)
    first_seen_at: Mapped[str] = mapped_column(String(32), default=utc_now)
    last_seen_at: Mapped[str] = mapped_column(String(32), default=utc_now)
