"""Typed queries over a Session. Returns frozen records; never commits.

The caller owns the transaction::

    with store.transaction() as session:
        repo = Repository(session)
        repo.upsert_preset(...)

Reads of presets are one Core query each (no ORM identity map), which keeps loading
10,000 presets for the picker in the tens of milliseconds.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import Table, func, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, aliased

from presetdb._text import quoted
from presetdb.errors import KeySpecError, StoreError, UnknownKernelError, UnknownPlatformError
from presetdb.keys import canonical_key, parse_key
from presetdb.store.models import (
    Config,
    Kernel,
    Platform,
    PlatformAlias,
    PlatformFallback,
    Preset,
    PresetCandidate,
    PresetMiss,
    PresetNearMiss,
    TuningRun,
    utc_now,
)
from presetdb.store.records import (
    RUN_FIELDS,
    CandidateRecord,
    KernelRecord,
    MissRecord,
    NearMissRecord,
    PlatformRecord,
    PresetInput,
    PresetRecord,
    RunRecord,
    UpsertResult,
    canonical_config,
    config_sha256,
)

# ---------------------------------------------------------------- rows


@dataclass(frozen=True)
class PresetRows:
    """The active presets of one (kernel, platform) as plain rows (`_ROW_COLUMNS`) and the
    tuning runs they share (`_RUN_COLUMNS` by run id). Building 10,000 frozen records
    costs more than the query; `record(row)` builds one when it is needed."""

    kernel: str
    platform: str
    rows: Sequence[tuple[Any, ...]]
    runs: Mapping[int, tuple[Any, ...]]

    # Positions in a row, for readers that need a field without a record.
    SHAPE_KEY = 1
    CONFIG_JSON = 2
    CONFIG_SHA256 = 3
    RUN_ID = 10
    VERIFIED = 14

    def record(self, row: Sequence[Any]) -> PresetRecord:
        fields = dict(zip(ROW_FIELDS, row, strict=True))
        fields.update(zip(RUN_FIELDS_SHARED, self.runs[fields["run_id"]], strict=True))
        fields["verified"] = bool(fields["verified"])
        return PresetRecord(kernel=self.kernel, platform=self.platform, status="active", **fields)

    def records(self) -> list[PresetRecord]:
        return [self.record(row) for row in self.rows]


# ---------------------------------------------------------------- repository


class Repository:
    def __init__(self, session: Session) -> None:
        self.session = session
        self._kernel_ids: dict[str, int] = {}
        self._platform_ids: dict[str, int] = {}

    # kernels ------------------------------------------------------------
    def ensure_kernel(
        self, name: str, key_schema: Mapping[str, Any], description: str = ""
    ) -> KernelRecord:
        """Create the kernel, or check its stored key schema matches."""
        row = self.session.scalar(select(Kernel).where(Kernel.name == name))
        schema_text = json.dumps(dict(key_schema), sort_keys=True)
        if row is None:
            check_lengths(Kernel.__table__, {"name": name}, f"kernel {name!r}")
            row = Kernel(name=name, key_schema=schema_text, description=description)
            self.session.add(row)
            self.session.flush()
        else:
            stored = json.loads(row.key_schema)
            if _field_policies(stored) != _field_policies(key_schema):
                raise KeySpecError(
                    f"kernel {name!r}: key fields {_field_policies(key_schema)} differ from the "
                    f"stored key schema {_field_policies(stored)}; a changed key spec needs a new "
                    "kernel name (or a schema migration)."
                )
            if description and not row.description:
                row.description = description
        return _kernel_record(row)

    def get_kernel(self, name: str) -> KernelRecord:
        row = self.session.scalar(select(Kernel).where(Kernel.name == name))
        if row is None:
            known = self.session.scalars(select(Kernel.name).order_by(Kernel.name)).all()
            raise UnknownKernelError(
                f"unknown kernel {quoted(name)}; this db has: {', '.join(known) or '(none)'}"
            )
        return _kernel_record(row)

    def find_kernel(self, name: str) -> KernelRecord | None:
        row = self.session.scalar(select(Kernel).where(Kernel.name == name))
        return None if row is None else _kernel_record(row)

    def list_kernels(self) -> list[KernelRecord]:
        return [_kernel_record(k) for k in self.session.scalars(select(Kernel).order_by(Kernel.name))]

    def _kernel_id(self, name: str) -> int:
        if name not in self._kernel_ids:
            self._kernel_ids[name] = self.get_kernel(name).id
        return self._kernel_ids[name]

    # platforms ----------------------------------------------------------
    def get_platform(self, name: str) -> PlatformRecord:
        row = self.session.scalar(select(Platform).where(Platform.name == name))
        if row is None:
            known = self.session.scalars(select(Platform.name).order_by(Platform.name)).all()
            raise UnknownPlatformError(
                f"unknown platform {quoted(name)}; known platforms: {', '.join(known) or '(none)'}. "
                "Add it with `presetdb import` of results tuned on it."
            )
        return _platform_record(row)

    def find_platform(self, name: str) -> PlatformRecord | None:
        row = self.session.scalar(select(Platform).where(Platform.name == name))
        return None if row is None else _platform_record(row)

    def ensure_platform(
        self,
        name: str,
        *,
        vendor: str = "",
        device_name: str = "",
        compute_capability: str | None = None,
        sm_count: int | None = None,
    ) -> PlatformRecord:
        row = self.session.scalar(select(Platform).where(Platform.name == name))
        if row is None:
            check_lengths(
                Platform.__table__,
                {"name": name, "vendor": vendor, "device_name": device_name,
                 "compute_capability": compute_capability},
                f"platform {name!r}",
            )
            row = Platform(
                name=name, vendor=vendor, device_name=device_name,
                compute_capability=compute_capability, sm_count=sm_count,
            )
            self.session.add(row)
            self.session.flush()
            if device_name:
                self.add_alias(device_name, name)
        return _platform_record(row)

    def list_platforms(self) -> list[PlatformRecord]:
        return [
            _platform_record(p) for p in self.session.scalars(select(Platform).order_by(Platform.name))
        ]

    def platform_for_alias(self, device_name: str) -> str | None:
        """Canonical platform name for a device string (case-insensitive), if known."""
        return self.session.scalar(
            select(Platform.name)
            .join(PlatformAlias, PlatformAlias.platform_id == Platform.id)
            .where(func.lower(PlatformAlias.alias) == device_name.strip().lower())
        )

    def add_alias(self, alias: str, platform: str) -> None:
        pid = self._platform_id(platform)
        check_lengths(PlatformAlias.__table__, {"alias": alias}, f"alias of platform {platform!r}")
        if self.session.get(PlatformAlias, alias) is None:
            self.session.add(PlatformAlias(alias=alias, platform_id=pid))
            self.session.flush()

    def fallbacks(self, platform: str) -> list[str]:
        """Ranked fallback platform names (rank 1 first)."""
        fb = aliased(Platform)
        return list(
            self.session.scalars(
                select(fb.name)
                .select_from(PlatformFallback)
                .join(Platform, Platform.id == PlatformFallback.platform_id)
                .join(fb, fb.id == PlatformFallback.fallback_platform_id)
                .where(Platform.name == platform)
                .order_by(PlatformFallback.rank)
            )
        )

    def platforms_with_capability(self, compute_capability: str, vendor: str) -> list[str]:
        return list(
            self.session.scalars(
                select(Platform.name)
                .where(Platform.compute_capability == compute_capability, Platform.vendor == vendor)
                .order_by(Platform.name)
            )
        )

    def _platform_id(self, name: str) -> int:
        if name not in self._platform_ids:
            self._platform_ids[name] = self.get_platform(name).id
        return self._platform_ids[name]

    # runs and configs ---------------------------------------------------
    def add_run(self, source: str, **provenance: Any) -> RunRecord:
        unknown = set(provenance) - set(RUN_FIELDS)
        if unknown:
            raise TypeError(f"unknown tuning_runs fields: {sorted(unknown)}")
        check_lengths(TuningRun.__table__, {"source": source, **provenance}, "tuning run provenance")
        row = TuningRun(source=source, **provenance)
        self.session.add(row)
        self.session.flush()
        return _run_record(row)

    def get_run(self, run_id: int) -> RunRecord:
        row = self.session.get(TuningRun, run_id)
        if row is None:
            raise LookupError(f"no tuning run with id {run_id}")
        return _run_record(row)

    def list_runs(self) -> list[RunRecord]:
        return [_run_record(r) for r in self.session.scalars(select(TuningRun).order_by(TuningRun.id))]

    def config_id(self, config: Mapping[str, Any]) -> int:
        """Id of the content-addressed config row, inserting it if new.

        INSERT ... ON CONFLICT DO NOTHING: a config another writer stored in the meantime
        is reused, never a unique violation (whatever the caller's locking)."""
        sha = config_sha256(config)
        found = self.session.scalar(select(Config.id).where(Config.sha256 == sha))
        if found is not None:
            return found
        values = {"sha256": sha, "config_json": canonical_config(config), "created_at": utc_now()}
        self.session.execute(insert_or_skip(self.session, Config.__table__, values))
        return int(self.session.scalar(select(Config.id).where(Config.sha256 == sha)) or 0)

    # presets ------------------------------------------------------------
    def upsert_preset(self, kernel: str, platform: str, run_id: int, item: PresetInput) -> UpsertResult:
        """Store a preset. The same config for the key again is a no-op; a different
        config supersedes the active row, which stays as history."""
        kid, pid = self._kernel_id(kernel), self._platform_id(platform)
        shape_key = canonical_key(item.shape_key)
        cid = self.config_id(item.config)
        current = self.session.scalar(
            select(Preset).where(
                Preset.kernel_id == kid,
                Preset.platform_id == pid,
                Preset.shape_key == shape_key,
                Preset.status == "active",
            )
        )
        if current is not None and current.config_id == cid:
            # Same config: at most its file layout moves, and a row verified now stays so.
            self._relayout(current, item)
            if item.verified and not current.verified:
                current.verified = True
            self.session.flush()
            return UpsertResult("unchanged", current.id)
        if current is not None:
            # Retire first: the partial unique index allows one active row per key.
            current.status = "superseded"
            current.status_reason = f"superseded by run {run_id}"
            self.session.flush()
        row = Preset(
            kernel_id=kid,
            platform_id=pid,
            shape_key=shape_key,
            config_id=cid,
            run_id=run_id,
            kernel_source_hash=item.kernel_source_hash,
            latency_ms=item.latency_ms,
            default_ms=item.default_ms,
            reference_ms=item.reference_ms,
            configs_tried=item.configs_tried,
            tuning_seconds=item.tuning_seconds,
            status="active",
            verified=item.verified,
            source_position=item.source_position,
            source_key=item.source_key,
            source_config=item.source_config,
        )
        self.session.add(row)
        self.session.flush()
        for rank, (config, latency) in enumerate(item.candidates, start=1):
            self.session.add(
                PresetCandidate(
                    preset_id=row.id, config_id=self.config_id(config), rank=rank, latency_ms=latency
                )
            )
        if current is not None:
            current.superseded_by = row.id
            self.session.flush()
            return UpsertResult("superseded", row.id, current.id)
        return UpsertResult("added", row.id)

    @staticmethod
    def _relayout(row: Preset, item: PresetInput) -> None:
        if item.source_key is None and item.source_config is None and item.source_position is None:
            return
        for name in ("source_position", "source_key", "source_config"):
            value = getattr(item, name)
            if getattr(row, name) != value:
                setattr(row, name, value)

    def set_verified(self, preset_id: int) -> None:
        self.session.execute(update(Preset).where(Preset.id == preset_id).values(verified=True))

    def unverified_presets(self, kernel: str | None = None) -> list[PresetRecord]:
        """Active rows not yet verified against a registered kernel, by kernel then id."""
        query = _preset_query().where(Preset.status == "active", Preset.verified.is_(False))
        if kernel is not None:
            query = query.where(Kernel.name == kernel)
        return [PresetRecord(*row) for row in self.session.execute(query.order_by(Kernel.name, Preset.id))]

    def replace_key_schema(self, name: str, key_schema: Mapping[str, Any]) -> None:
        """Adopt a registered kernel's key schema for a kernel first stored unverified
        (its schema was inferred from a file); `verify` checks the keys fit first."""
        row = self.session.scalar(select(Kernel).where(Kernel.name == name))
        if row is None:
            raise UnknownKernelError(f"unknown kernel {name!r}")
        row.key_schema = json.dumps(dict(key_schema), sort_keys=True)
        self.session.flush()

    def active_presets(self, kernel: str, platform: str) -> list[PresetRecord]:
        """All active presets of one (kernel, platform), in one query."""
        query = _preset_query().where(
            Kernel.name == kernel, Platform.name == platform, Preset.status == "active"
        )
        return [_preset(row) for row in self.session.execute(query)]

    def active_preset_rows(self, kernel: str, platform: str) -> PresetRows:
        """`active_presets` without building a record per row: what the picker loads.

        Core queries on the session's connection (no ORM result processing), one row of
        per-preset columns each, and the few tuning runs they share in a second query;
        `PresetRows.record(row)` builds the record of a preset actually served."""
        where = (Kernel.name == kernel, Platform.name == platform, Preset.status == "active")
        conn = self.session.connection()
        result = conn.execute(
            select(*_ROW_COLUMNS)
            .select_from(Preset)
            .join(Kernel, Kernel.id == Preset.kernel_id)
            .join(Platform, Platform.id == Preset.platform_id)
            .join(Config, Config.id == Preset.config_id)
            .where(*where)
        )
        try:
            # The driver's plain tuples (these columns need no result processing): the GC
            # untracks tuples of plain values, unlike Row objects, which a picker keeps.
            rows: list[tuple[Any, ...]] = list(result.cursor.fetchall())
        finally:
            result.close()
        runs: dict[int, tuple[Any, ...]] = {}
        if rows:
            used = (
                select(Preset.run_id)
                .join(Kernel, Kernel.id == Preset.kernel_id)
                .join(Platform, Platform.id == Preset.platform_id)
                .where(*where)
            )
            found = conn.execute(select(*_RUN_COLUMNS).where(TuningRun.id.in_(used)))
            runs = {cast(int, row[0]): tuple(row[1:]) for row in found}
        return PresetRows(kernel, platform, rows, runs)

    def all_presets(self, *, status: str | None = "active") -> list[PresetRecord]:
        query = _preset_query()
        if status is not None:
            query = query.where(Preset.status == status)
        return [_preset(row) for row in self.session.execute(query.order_by(Preset.id))]

    def find_preset(self, kernel: str, platform: str, shape_key: Mapping[str, Any] | str) -> PresetRecord | None:
        key = canonical_key(parse_key(shape_key) if isinstance(shape_key, str) else shape_key)
        query = _preset_query().where(
            Kernel.name == kernel,
            Platform.name == platform,
            Preset.shape_key == key,
            Preset.status == "active",
        )
        row = self.session.execute(query).first()
        return None if row is None else _preset(row)

    def get_preset(self, preset_id: int) -> PresetRecord:
        row = self.session.execute(_preset_query().where(Preset.id == preset_id)).first()
        if row is None:
            raise LookupError(f"no preset with id {preset_id}")
        return _preset(row)

    def history(self, kernel: str, platform: str, shape_key: Mapping[str, Any] | str) -> list[PresetRecord]:
        """Every row ever stored for one key, oldest first."""
        key = canonical_key(parse_key(shape_key) if isinstance(shape_key, str) else shape_key)
        query = _preset_query().where(
            Kernel.name == kernel, Platform.name == platform, Preset.shape_key == key
        )
        return [_preset(row) for row in self.session.execute(query.order_by(Preset.id))]

    def candidates(self, preset_id: int) -> list[CandidateRecord]:
        query = (
            select(
                PresetCandidate.rank.label("rank"), Config.config_json.label("config_json"),
                PresetCandidate.latency_ms.label("latency_ms"),
            )
            .join(Config, Config.id == PresetCandidate.config_id)
            .where(PresetCandidate.preset_id == preset_id)
            .order_by(PresetCandidate.rank)
        )
        return [CandidateRecord(**row._mapping) for row in self.session.execute(query)]

    def quarantine(self, preset_id: int, reason: str) -> None:
        self.session.execute(
            update(Preset)
            .where(Preset.id == preset_id)
            .values(status="quarantined", status_reason=reason[:2000])
        )

    def count_presets(self, *, status: str | None = "active") -> int:
        query = select(func.count()).select_from(Preset)
        if status is not None:
            query = query.where(Preset.status == status)
        return int(self.session.scalar(query) or 0)

    # miss ledger -------------------------------------------------------------
    def record_misses(self, misses: Iterable[MissRecord]) -> None:
        """Add counts to the ledger (one row per kernel x platform x features)."""
        for miss in misses:
            check_lengths(
                PresetMiss.__table__,
                {"kernel": miss.kernel, "platform": miss.platform, "reason": miss.reason},
                "miss ledger row",
            )
            row = self.session.scalar(
                select(PresetMiss).where(
                    PresetMiss.kernel == miss.kernel,
                    PresetMiss.platform == miss.platform,
                    PresetMiss.features == miss.features,
                )
            )
            if row is None:
                self.session.add(
                    PresetMiss(
                        kernel=miss.kernel, platform=miss.platform, features=miss.features,
                        reason=miss.reason, count=miss.count,
                        first_seen_at=miss.first_seen_at, last_seen_at=miss.last_seen_at,
                    )
                )
            else:
                row.count += miss.count
                row.last_seen_at = max(row.last_seen_at, miss.last_seen_at)
                row.reason = miss.reason
        self.session.flush()

    def misses(self, kernel: str | None = None) -> list[MissRecord]:
        query = select(
            PresetMiss.kernel.label("kernel"), PresetMiss.platform.label("platform"),
            PresetMiss.features.label("features"), PresetMiss.reason.label("reason"),
            PresetMiss.count.label("count"), PresetMiss.first_seen_at.label("first_seen_at"),
            PresetMiss.last_seen_at.label("last_seen_at"),
        ).order_by(PresetMiss.count.desc(), PresetMiss.id)
        if kernel is not None:
            query = query.where(PresetMiss.kernel == kernel)
        return [MissRecord(**row._mapping) for row in self.session.execute(query)]

    # near-miss ledger ----------------------------------------------------------
    def record_near_misses(self, records: Iterable[NearMissRecord]) -> None:
        """Add counts to the near-miss ledger (one row per kernel x platform x requested
        key x served platform x served key); the latest match facts win."""
        t = PresetNearMiss
        for r in records:
            check_lengths(
                t.__table__,
                {"kernel": r.kernel, "platform": r.platform, "served_platform": r.served_platform,
                 "match": r.match, "layer": r.layer},
                "near-miss ledger row",
            )
            row = self.session.scalar(
                select(t).where(
                    t.kernel == r.kernel, t.platform == r.platform, t.requested_key == r.requested_key,
                    t.served_platform == r.served_platform, t.served_key == r.served_key,
                )
            )
            facts = {
                "match": r.match, "layer": r.layer, "distances": r.distances, "distance": r.distance,
                "far": bool(r.far), "far_fields": r.far_fields,
            }
            if row is None:
                self.session.add(
                    t(
                        kernel=r.kernel, platform=r.platform, requested_key=r.requested_key,
                        served_platform=r.served_platform, served_key=r.served_key, count=r.count,
                        first_seen_at=r.first_seen_at, last_seen_at=r.last_seen_at, **facts,
                    )
                )
            else:
                row.count += r.count
                row.first_seen_at = min(row.first_seen_at, r.first_seen_at)
                row.last_seen_at = max(row.last_seen_at, r.last_seen_at)
                for name, value in facts.items():
                    setattr(row, name, value)
        self.session.flush()

    def near_misses(self, kernel: str | None = None) -> list[NearMissRecord]:
        t = PresetNearMiss
        query = select(
            t.kernel, t.platform, t.requested_key, t.served_platform, t.served_key, t.match, t.layer,
            t.distances, t.distance, t.far, t.far_fields, t.count, t.first_seen_at, t.last_seen_at,
        ).order_by(t.count.desc(), t.id)
        if kernel is not None:
            query = query.where(t.kernel == kernel)
        return [
            NearMissRecord(k, p, rk, sp, sk, m, lay, d, dist, bool(far), ff, n, first, last)
            for k, p, rk, sp, sk, m, lay, d, dist, far, ff, n, first, last in self.session.execute(query)
        ]


# ---------------------------------------------------------------- helpers


def insert_or_skip(session: Session, table: Table | Any, values: Mapping[str, Any]) -> Any:
    """INSERT ... ON CONFLICT DO NOTHING in the session's dialect."""
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        return postgresql.insert(table).values(**values).on_conflict_do_nothing()
    if dialect == "sqlite":
        return sqlite.insert(table).values(**values).on_conflict_do_nothing()
    return insert(table).values(**values)


def check_lengths(table: Table | Any, values: Mapping[str, Any], what: str) -> None:
    """Text longer than its String(n) column is refused on both dialects alike (PostgreSQL
    enforces the length, SQLite would keep it): name the field, the limit and the value."""
    for name, value in values.items():
        column = table.c.get(name)
        length = getattr(column.type, "length", None) if column is not None else None
        if isinstance(value, str) and length is not None and len(value) > length:
            raise StoreError(
                f"{what}: {name} is {len(value)} characters, the column holds at most {length} "
                f"({value[:60]!r}...); shorten it"
            )


def _preset_query() -> Any:
    """Every PresetRecord field, each column labelled with its field name."""
    return (
        select(
            Preset.id.label("id"), Kernel.name.label("kernel"), Platform.name.label("platform"),
            Preset.shape_key.label("shape_key"), Config.config_json.label("config_json"),
            Config.sha256.label("config_sha256"), Preset.status.label("status"),
            Preset.latency_ms.label("latency_ms"), Preset.default_ms.label("default_ms"),
            Preset.reference_ms.label("reference_ms"), Preset.configs_tried.label("configs_tried"),
            Preset.tuning_seconds.label("tuning_seconds"), Preset.kernel_source_hash.label("kernel_source_hash"),
            Preset.run_id.label("run_id"), TuningRun.source.label("source"),
            TuningRun.device_name.label("device_name"), TuningRun.helion_version.label("helion_version"),
            TuningRun.finished_at.label("tuned_at"), TuningRun.revision.label("revision"),
            Preset.created_at.label("created_at"), Preset.status_reason.label("status_reason"),
            Preset.superseded_by.label("superseded_by"), Preset.verified.label("verified"),
            Preset.source_position.label("source_position"), Preset.source_key.label("source_key"),
            Preset.source_config.label("source_config"), TuningRun.source_path.label("source_path"),
            TuningRun.source_rev.label("source_rev"),
        )
        .select_from(Preset)
        .join(Kernel, Kernel.id == Preset.kernel_id)
        .join(Platform, Platform.id == Preset.platform_id)
        .join(Config, Config.id == Preset.config_id)
        .join(TuningRun, TuningRun.id == Preset.run_id)
    )


def _preset(row: Any) -> PresetRecord:
    return PresetRecord(**row._mapping)


# PresetRows: per-preset columns (kernel, platform and status are the same for a slice),
# as plain tuples for the picker's load, with the PresetRecord field each one fills ...
_ROW = {
    "id": Preset.id, "shape_key": Preset.shape_key, "config_json": Config.config_json,
    "config_sha256": Config.sha256, "latency_ms": Preset.latency_ms, "default_ms": Preset.default_ms,
    "reference_ms": Preset.reference_ms, "configs_tried": Preset.configs_tried,
    "tuning_seconds": Preset.tuning_seconds, "kernel_source_hash": Preset.kernel_source_hash,
    "run_id": Preset.run_id, "created_at": Preset.created_at, "status_reason": Preset.status_reason,
    "superseded_by": Preset.superseded_by, "verified": Preset.verified,
}
ROW_FIELDS = tuple(_ROW)
_ROW_COLUMNS = tuple(_ROW.values())
# ... and the provenance columns of PresetRecord, which the presets of one run share.
_RUN = {
    "source": TuningRun.source, "device_name": TuningRun.device_name,
    "helion_version": TuningRun.helion_version, "tuned_at": TuningRun.finished_at,
    "revision": TuningRun.revision,
}
RUN_FIELDS_SHARED = tuple(_RUN)
_RUN_COLUMNS = (TuningRun.id, *_RUN.values())
# The positions readers use without building a record (PresetRows.SHAPE_KEY, CONFIG_SHA256).
_POSITIONS = (ROW_FIELDS.index("shape_key"), ROW_FIELDS.index("config_sha256"), ROW_FIELDS.index("verified"))
if _POSITIONS != (PresetRows.SHAPE_KEY, PresetRows.CONFIG_SHA256, PresetRows.VERIFIED):
    raise ImportError("PresetRows' field positions disagree with _ROW")  # a development mistake


def _field_policies(schema: Mapping[str, Any]) -> list[tuple[str, str]]:
    return [(f["name"], f["policy"]) for f in schema.get("fields", [])]


def _kernel_record(row: Kernel) -> KernelRecord:
    return KernelRecord(row.id, row.name, json.loads(row.key_schema), row.description)


def _platform_record(row: Platform) -> PlatformRecord:
    return PlatformRecord(
        row.id, row.name, row.vendor, row.device_name, row.compute_capability, row.sm_count
    )


def _run_record(row: TuningRun) -> RunRecord:
    return RunRecord(
        id=row.id, imported_at=row.imported_at, **{f: getattr(row, f) for f in RUN_FIELDS}
    )


__all__ = [
    "CandidateRecord",
    "KernelRecord",
    "MissRecord",
    "PlatformRecord",
    "PresetInput",
    "PresetRecord",
    "PresetRows",
    "Repository",
    "RunRecord",
    "UpsertResult",
    "canonical_config",
    "config_sha256",
    "utc_now",
]
