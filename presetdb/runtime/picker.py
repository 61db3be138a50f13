"""The picker: which stored config serves a kernel call.

Per kernel and platform, the picker loads the active presets from every layer once (one
query per layer), merges the layers per shape key (the higher layer wins a key), and
builds an immutable `KeyIndex`. The requested platform is loaded on the kernel's first
call; a fallback platform only when a call first needs it (a process whose own platform
answers never loads the others). `resolve()` then answers from memory:

    memo hit                      one dict lookup (the common case)
    memo miss                     own platform's shape match, then fallback platforms'
                                  shape match, then default entries ({}), else None

A shape match is `KeyIndex.match_within`: field by field, or, where that key is far, the
nearest stored key within every field's far limit.

Nothing on the hot path touches SQLite. The overlay is the only layer that can change
under a running process; its ``PRAGMA data_version`` is looked at no more than once per
`RECHECK_SECONDS`, on a resolve, and a change drops the indexes and the memo. Immutable
layers are never re-read.

The picker never writes: misses, quarantines and autotune results go to the ledger
(`presetdb.runtime.ledger`), whose own thread writes the user overlay; after such a write
the picker reloads (and opens the overlay if the ledger just created it).
"""

from __future__ import annotations

import gc
import json
import math
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from presetdb._text import clip, quoted
from presetdb._util import warn_at_caller
from presetdb.errors import StoreError, StoreWarning
from presetdb.keys import DEFAULT_KEY, KeyIndex, KeySpec, KeyValue, canonical_key, far_fields
from presetdb.runtime.layers import Layer, open_layers
from presetdb.runtime.ledger import Ledger, NearMiss, Tally
from presetdb.runtime.platforms import DeviceInfo, PlatformInfo, detect_device, resolve_platform
from presetdb.settings import Settings
from presetdb.store import migrate
from presetdb.store.records import MissRecord, PresetInput, PresetRecord
from presetdb.store.repository import PresetRows, Repository

RECHECK_SECONDS = 1.0
MEMO_LIMIT = 65_536
_NOT_FOUND: Any = object()


@dataclass(frozen=True)
class Choice:
    """The stored config chosen for a call, and why."""

    kernel: str
    preset: PresetRecord
    match: str  # "exact" | "nearest" | "ceil" | "floor" | "default"
    distances: dict[str, float]
    platform: str  # platform whose preset answered
    requested_platform: str
    layer: str  # "overlay" | "deployment" | "default"
    # The far-match guard: fields whose distance is beyond their limit -> (distance, limit).
    far_fields: dict[str, tuple[float, float]] = field(default_factory=dict)
    # The near-miss ledger's counter of this (requested key, served key); None for an
    # exact match on the call's own platform (nothing to count).
    tally: Tally | None = field(default=None, compare=False, repr=False)

    @property
    def config(self) -> dict[str, Any]:
        return self.preset.config

    @property
    def fallback(self) -> bool:
        return self.platform != self.requested_platform

    @property
    def kind(self) -> str:
        return "fallback-platform" if self.fallback else self.match

    @property
    def far(self) -> bool:
        """The stored key is beyond the far-match guard (PRESETDB_MAX_DISTANCE)."""
        return bool(self.far_fields)

    def far_text(self) -> str:
        """'far: n 4 > max 1 (log2)' or '' when the match is not far."""
        if not self.far_fields:
            return ""
        parts = ", ".join(f"{name} {_num(d)} > max {_num(limit)}" for name, (d, limit) in self.far_fields.items())
        return f"far: {parts} (log2 distance)"

    def describe(self) -> str:
        away = {k: round(v, 2) for k, v in self.distances.items() if v}
        how = self.match + (f" (log2 distance {away})" if away else "")
        where = f"{self.layer} db"
        if self.fallback:
            where += f", fallback platform {self.platform} for {self.requested_platform}"
        far = f"; {self.far_text()}" if self.far_fields else ""
        return f"{self.kernel}: key {self.preset.shape_key} by {how} from {where}{far}"


def _num(value: float) -> str:
    return f"{value:.3g}"


# KeyIndex payload: (layer name, a row of that layer's PresetRows). Only strings and
# plain tuples of plain values: the cyclic GC untracks them, so 10,000 loaded presets do
# not make every later full collection walk 10,000 more objects.
_Payload = tuple[str, tuple[Any, ...]]


@dataclass
class _KernelIndex:
    spec: KeySpec
    # platform -> index over the merged layers (None: no presets there). Filled in chain
    # order as resolves need it: a call the own platform answers never loads a fallback.
    # Both dicts are replaced, never mutated, so readers need no lock.
    loaded: dict[str, KeyIndex[_Payload] | None]
    rows: dict[tuple[str, str], PresetRows]  # (platform, layer name) -> rows loaded
    limits: dict[str, float] = field(default_factory=dict)  # far-match guard per numeric field


class Picker:
    """Read-only: resolves calls from the layers' presets in memory (module docstring).
    `overlay` is the user overlay's path, written by this picker's ledger (None: none)."""

    def __init__(
        self, layers: list[Layer], overlay: Path | None, platform: PlatformInfo, settings: Settings | None = None,
        *, strict: bool = False,
    ) -> None:
        self.layers = layers
        self.settings = settings or Settings.from_env()
        self.info = platform
        self.ledger = Ledger(overlay, on_written=self._overlay_written)
        self.strict = strict  # a layer failing to read raises (PRESETDB_ON_MISS=strict) instead of warning
        self._lock = threading.RLock()
        self._indexes: dict[str, _KernelIndex] = {}
        self._memo: dict[tuple[str, tuple[KeyValue, ...]], Choice | None] = {}
        self._epoch = object()  # replaced with the memo on every invalidation; see epoch()
        self._watch = [layer for layer in layers if layer.mutable]
        self._versions = {id(layer): _data_version(layer) for layer in self._watch}
        self._next_check = time.monotonic() + RECHECK_SECONDS
        self._quarantined: set[tuple[str, str, str, str]] = set()  # in memory, always honoured
        self.loads = 0  # index builds, for tests and benchmarks

    @property
    def platform(self) -> str:
        return self.info.platform

    @property
    def chain(self) -> tuple[str, ...]:
        return self.info.chain

    # ------------------------------------------------------------------ resolve
    def resolve(self, kernel: str, spec: KeySpec, features: tuple[KeyValue, ...]) -> Choice | None:
        """The stored config for these features, or None (a miss). Memoized."""
        if self._watch and time.monotonic() >= self._next_check:
            self._check_changed()
        memo_key = (kernel, features)
        # One read of self._memo: an invalidate() meanwhile swaps in a new dict, so an
        # answer computed from the old indexes lands in the discarded dict, never the new.
        memo = self._memo
        found = memo.get(memo_key, _NOT_FOUND)
        if found is not _NOT_FOUND:
            return found
        choice = self._resolve_uncached(kernel, spec, features)
        if len(memo) >= MEMO_LIMIT:
            memo.clear()  # bounded: a storm of new shapes cannot grow memory
        memo[memo_key] = choice
        return choice

    def epoch(self) -> object:
        """A token that changes whenever an answer of `resolve` may have changed (new
        data seen in a mutable layer, a quarantine, `invalidate`). Callers that keep
        resolve's answers themselves (the call memo of presetdb.integrations) compare it
        per call; like `resolve`, it looks for changed stores every RECHECK_SECONDS."""
        if self._watch and time.monotonic() >= self._next_check:
            self._check_changed()
        return self._epoch

    def _resolve_uncached(
        self, kernel: str, spec: KeySpec, features: tuple[KeyValue, ...]
    ) -> Choice | None:
        index = self._index(kernel, spec)
        for platform in self.chain:
            idx = self._slice(kernel, index, platform)
            m = idx.match_within(features, index.limits) if idx is not None else None
            if m is not None:
                return self._choice(kernel, index, platform, m.payload, m.kind, m.distances, features)
        for platform in self.chain:
            idx = self._slice(kernel, index, platform)
            m = idx.default_match() if idx is not None else None
            if m is not None:
                return self._choice(kernel, index, platform, m.payload, "default", {}, features)
        return None

    def _choice(
        self, kernel: str, index: _KernelIndex, platform: str, payload: _Payload, match: str,
        distances: dict[str, float], features: tuple[KeyValue, ...],
    ) -> Choice:
        layer, row = payload
        # The record is built here, for the preset served, not for every row loaded.
        preset = index.rows[(platform, layer)].record(row)
        far = {name: (d, index.limits[name]) for name, d in far_fields(distances, index.limits).items()}
        tally = None
        if match != "exact" or platform != self.platform:
            # Counted per call by hooks.serve / the call memo; made once per resolve here.
            requested = canonical_key(index.spec.key_of(features))
            tally = self.ledger.tally(
                NearMiss(kernel, self.platform, requested, platform, preset.shape_key, match, layer, distances, far)
            )
        return Choice(kernel, preset, match, distances, platform, self.platform, layer, far, tally)

    def limits(self, kernel: str, spec: KeySpec) -> dict[str, float]:
        """The far-match guard's maximum distance per numeric field of `kernel`."""
        return dict(self._index(kernel, spec).limits)

    def neighbours(
        self, kernel: str, spec: KeySpec, features: tuple[KeyValue, ...]
    ) -> list[tuple[str, dict[str, Any]]]:
        """(origin, config) of every stored key on the platform chain, nearest first
        (own platform's before fallbacks'; the default entry last): candidates for a
        re-rank. Origins read 'platform:key'."""
        index = self._index(kernel, spec)
        found: list[tuple[str, dict[str, Any]]] = []
        for platform in self.chain:
            idx = self._slice(kernel, index, platform)
            if idx is None:
                continue
            payloads = idx.entries()
            for key in [*idx.nearest_keys(features, limit=len(idx)), DEFAULT_KEY]:
                payload = payloads.get(key)
                if payload is not None:
                    layer, row = payload
                    found.append((f"{platform}:{key}", index.rows[(platform, layer)].record(row).config))
        return found

    def nearest_keys(self, kernel: str, spec: KeySpec, features: tuple[KeyValue, ...], limit: int = 3) -> list[str]:
        """Stored keys closest to the features on the requested platform chain."""
        index = self._index(kernel, spec)
        found: list[str] = []
        for platform in self.chain:
            idx = self._slice(kernel, index, platform)
            if idx is not None:
                found += [f"{platform}:{k}" for k in idx.nearest_keys(features, limit)]
        return found[:limit]

    # ------------------------------------------------------------------ loading
    def _index(self, kernel: str, spec: KeySpec) -> _KernelIndex:
        index = self._indexes.get(kernel)
        if index is not None and index.spec.names == spec.names:
            return index
        with self._lock:
            index = self._indexes.get(kernel)
            if index is None or index.spec.names != spec.names:
                index = self._build(kernel, spec)
                self._indexes[kernel] = index
            return index

    def _build(self, kernel: str, spec: KeySpec) -> _KernelIndex:
        """The kernel's index with its own platform loaded (fallbacks load on demand)."""
        self.loads += 1
        index = _KernelIndex(spec, {}, {}, spec.limits(kernel, self.settings.max_distance))
        self._slice(kernel, index, self.chain[0])
        return index

    def _slice(self, kernel: str, index: _KernelIndex, platform: str) -> KeyIndex[_Payload] | None:
        loaded = index.loaded
        if platform in loaded:
            return loaded[platform]
        with self._lock:
            if platform not in index.loaded:
                sources: dict[tuple[str, str], PresetRows] = {}
                with _gc_paused():
                    built = self._load_platform(kernel, index.spec, platform, sources)
                index.rows = {**index.rows, **sources}  # before `loaded`: readers go by it
                index.loaded = {**index.loaded, platform: built}
            return index.loaded[platform]

    def _load_platform(
        self, kernel: str, spec: KeySpec, platform: str, sources: dict[tuple[str, str], PresetRows]
    ) -> KeyIndex[_Payload] | None:
        layers: list[tuple[Layer, PresetRows]] = []
        for layer in self.layers:
            rows = self._load(layer, kernel, platform)
            if rows is not None:
                sources[(platform, layer.name)] = rows
                layers.append((layer, rows))
        skip = {(key, sha) for k, p, key, sha in self._quarantined if (k, p) == (kernel, platform)}
        try:
            return self._index_fast(spec, layers, skip)
        except Exception:  # noqa: BLE001  (some stored row does not fit: sort them out one by one)
            return self._index_checked(kernel, spec, platform, layers, skip)

    @staticmethod
    def _index_fast(
        spec: KeySpec, layers: list[tuple[Layer, PresetRows]], skip: set[tuple[str, str]]
    ) -> KeyIndex[_Payload] | None:
        """Every row at once (10,000 presets load in milliseconds); raises when any row
        does not fit, and `_index_checked` takes over."""
        merged: dict[str, _Payload] = {}  # shape key -> (layer name, row); the first layer wins
        for layer, rows in layers:
            name, runs = layer.name, rows.runs
            for row in rows.rows:
                key = row[PresetRows.SHAPE_KEY]
                if key in merged or (skip and (key, row[PresetRows.CONFIG_SHA256]) in skip):
                    continue
                if row[PresetRows.CONFIG_JSON][:1] != "{" or row[PresetRows.RUN_ID] not in runs:
                    raise ValueError("a row the checked path must look at")
                merged[key] = (name, row)
        if not merged:
            return None
        texts = list(merged)
        # Stored keys are canonical JSON: parsed in one call, not re-encoded.
        keys = json.loads("[" + ",".join(texts) + "]")
        return KeyIndex.from_canonical(spec, zip(texts, keys, merged.values(), strict=True))

    def _index_checked(
        self, kernel: str, spec: KeySpec, platform: str, layers: list[tuple[Layer, PresetRows]],
        skip: set[tuple[str, str]],
    ) -> KeyIndex[_Payload] | None:
        """Row by row: a row that cannot be served (a key of the wrong shape, a config that
        is not an object, a missing tuning run) is skipped and reported, so a lower layer's
        row for the same key still serves."""
        merged: dict[str, tuple[dict[str, Any], _Payload]] = {}
        bad: list[str] = []
        for layer, rows in layers:
            for row in rows.rows:
                text = row[PresetRows.SHAPE_KEY]
                if text in merged or (skip and (text, row[PresetRows.CONFIG_SHA256]) in skip):
                    continue
                problem, key = _row_problem(spec, rows, row)
                if problem is not None:
                    bad.append(f"preset {row[0]} in {layer.name} db {layer.path}: {problem}")
                    continue
                merged[text] = (key, (layer.name, row))
        if bad:
            shown = "; ".join(bad[:5]) + (f"; and {len(bad) - 5} more" if len(bad) > 5 else "")
            warn_at_caller(
                f"presetdb: {len(bad)} stored key(s) of {kernel} on {platform} do not fit its key "
                f"spec {list(spec.names)} or cannot be served; skipped: {shown}. `presetdb db check "
                "--db FILE` lists them all.",
                StoreWarning,
            )
        if not merged:
            return None
        try:
            return KeyIndex.from_canonical(spec, ((t, k, p) for t, (k, p) in merged.items()))
        except Exception as exc:  # noqa: BLE001  (never expected after the row checks; never fatal)
            warn_at_caller(
                f"presetdb: stored keys of {kernel} on {platform} cannot be indexed; ignoring "
                f"them: {clip(exc)}",
                StoreWarning,
            )
            return None

    def _load(self, layer: Layer, kernel: str, platform: str) -> PresetRows | None:
        try:
            with layer.store.read() as session:
                repo = Repository(session)
                rows = repo.active_preset_rows(kernel, platform)
                if layer.name == "overlay":
                    self._quarantined |= _quarantined_in(session, kernel, platform)
                return rows
        except Exception as exc:  # a layer failing mid-flight must not fail the call
            if self.strict:
                raise _layer_error(layer, f"reading {kernel} on {platform}", exc) from exc
            warn_at_caller(
                f"presetdb: could not read {layer.name} db {layer.path} (presets of {kernel} on "
                f"{platform}); serving from the next layer: {clip(exc)}",
                StoreWarning,
            )
            return None

    def _check_changed(self) -> None:
        with self._lock:
            self._next_check = time.monotonic() + RECHECK_SECONDS
            changed = False
            for layer in self._watch:
                try:
                    version = layer.store.data_version()
                except Exception:  # noqa: BLE001, S112  (unreadable now: keep serving, look again later)
                    continue
                if version != self._versions.get(id(layer)):
                    self._versions[id(layer)] = version
                    changed = True
            if changed:
                self.invalidate()

    def invalidate(self) -> None:
        """Drop indexes and memo; the next resolve reloads from the stores."""
        with self._lock:
            self._indexes = {}
            self._memo = {}
            self._epoch = object()  # a token, not the old memo: holders keep nothing big alive

    def _overlay_written(self) -> None:
        """The ledger wrote presets: open the overlay if it was just created, reload."""
        path = self.ledger.path
        with self._lock:
            if path is not None and not any(layer.name == "overlay" for layer in self.layers):
                try:
                    layer = Layer("overlay", migrate.open_store(path, "ro"), mutable=True)
                except Exception:  # noqa: BLE001  (stay without it; the ledger warned if it failed)
                    return
                self.layers = [layer, *self.layers]
                self._watch = [layer, *self._watch]
                self._versions[id(layer)] = layer.store.data_version()
            self.invalidate()

    # ------------------------------------------------------------------ writes (through the ledger)
    @property
    def overlay_path(self) -> Path | None:
        return self.ledger.path

    def record_miss(self, kernel: str, features: dict[str, Any], reason: str = "no-match") -> None:
        """Count a miss (in memory; the ledger's thread writes it)."""
        self.ledger.count_miss(kernel, self.platform, features, reason)

    def pending_misses(self) -> list[MissRecord]:
        return self.ledger.pending_misses()

    def flush_misses(self) -> int:
        """Write counted misses (and every queued write) now; returns the miss rows written."""
        return self.ledger.flush()

    def quarantine(self, choice: Choice, reason: str, *, persist: bool = True) -> None:
        """Stop serving this stored config for its key: remembered in memory at once; the
        ledger writes it to the overlay (a 'quarantined' row) so later processes skip it."""
        p = choice.preset
        with self._lock:
            # The key spec, for the overlay's kernels row: read before invalidate() drops it.
            known = self._indexes.get(p.kernel)
            self._quarantined.add((p.kernel, p.platform, p.shape_key, p.config_sha256))
            self.invalidate()
        if not persist or self.ledger.path is None:
            return
        schema = known.spec.to_schema() if known else {"fields": []}
        device_name = self.info.device.device_name

        def write(repo: Repository) -> None:
            if repo.find_kernel(p.kernel) is None:
                repo.ensure_kernel(p.kernel, schema)
            _ensure_platform(repo, p.platform)
            run = repo.add_run(
                "manual", tuned_by="presetdb quarantine", device_name=device_name,
                source_file=f"{choice.layer} db preset {p.id}",
            )
            result = repo.upsert_preset(
                p.kernel, p.platform, run.id, PresetInput(p.key, p.config, kernel_source_hash=p.kernel_source_hash)
            )
            repo.quarantine(result.preset_id, reason)

        self.ledger.submit(write)

    def store_result(
        self,
        kernel: str,
        spec: KeySpec,
        shape_key: dict[str, Any],
        config: dict[str, Any],
        provenance: dict[str, Any],
        timings: dict[str, Any],
        *,
        timeout: float | None = 60.0,
        source: str = "autotune",
    ) -> None:
        """Store a config found at run time (an autotune, a re-rank) in the overlay, under
        a tuning run of `source` with `provenance`. Written by the ledger's thread; this
        waits for it (the search took far longer), so the next call is served the new row."""
        if self.ledger.path is None:
            warn_at_caller("presetdb: no writable overlay; the autotuned config is not kept", StoreWarning)
            return
        schema, platform, info = spec.to_schema(), self.platform, self.info

        def write(repo: Repository) -> None:
            repo.ensure_kernel(kernel, schema)
            _ensure_platform(repo, platform, info)
            run = repo.add_run(source, **provenance)
            repo.upsert_preset(kernel, platform, run.id, PresetInput(shape_key, config, **timings))

        self.ledger.submit(write).result(timeout=timeout)

    def close(self) -> None:
        self.ledger.close()
        for layer in self.layers:
            layer.store.dispose()


def _row_problem(spec: KeySpec, rows: PresetRows, row: tuple[Any, ...]) -> tuple[str | None, dict[str, Any]]:
    """(why this stored row cannot be served, or None; its parsed key)."""
    text = row[PresetRows.SHAPE_KEY]
    try:
        key = json.loads(text)
    except (TypeError, ValueError):
        return f"shape key {quoted(text)} is not JSON", {}
    if not isinstance(key, dict):
        return f"shape key {quoted(text)} is not a JSON object", {}
    for name, value in key.items():
        if not isinstance(value, (str, int, float, bool)) or (
            isinstance(value, float) and not math.isfinite(value)
        ):
            return f"shape key field {quoted(name)} holds {quoted(value)}, not a string or number", {}
    try:
        problems = spec.check_key(key)
    except OverflowError:
        problems = ["a number is too large"]
    if problems:
        return f"shape key {quoted(text)}: {'; '.join(problems)}", {}
    config = row[PresetRows.CONFIG_JSON]
    if not isinstance(config, str) or config[:1] != "{":
        return f"config {quoted(config)} is not a JSON object", {}
    if row[PresetRows.RUN_ID] not in rows.runs:
        return f"its tuning run {row[PresetRows.RUN_ID]!r} is missing", {}
    return None, key


def _layer_error(layer: Layer, doing: str, exc: BaseException) -> StoreError:
    if isinstance(exc, StoreError):
        return exc
    return StoreError(f"{layer.path}: the {layer.name} db failed while {doing}: {clip(exc)}")


def _data_version(layer: Layer) -> int | None:
    try:
        return layer.store.data_version()
    except Exception:  # noqa: BLE001  (unreadable now: looked at again on the next check)
        return None


@contextmanager
def _gc_paused() -> Iterator[None]:
    """A load allocates ~10 small containers per preset, none of them in a cycle; the
    cyclic collector would run over them dozens of times (half the load time of 10,000
    presets). Pause it for the load only."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _quarantined_in(session: Any, kernel: str, platform: str) -> set[tuple[str, str, str, str]]:
    from sqlalchemy import select

    from presetdb.store.models import Config, Kernel, Platform, Preset

    rows = session.execute(
        select(Preset.shape_key, Config.sha256)
        .join(Kernel, Kernel.id == Preset.kernel_id)
        .join(Platform, Platform.id == Preset.platform_id)
        .join(Config, Config.id == Preset.config_id)
        .where(Kernel.name == kernel, Platform.name == platform, Preset.status == "quarantined")
    )
    return {(kernel, platform, key, sha) for key, sha in rows}


def _ensure_platform(repo: Repository, name: str, info: PlatformInfo | None = None) -> None:
    if repo.find_platform(name) is None:
        device = info.device if info is not None and info.platform == name else None
        repo.ensure_platform(
            name,
            vendor=device.vendor if device else "",
            device_name=device.device_name if device else "",
            compute_capability=device.compute_capability if device else None,
            sm_count=device.sm_count if device else None,
        )


# ---------------------------------------------------------------------- process-wide
_picker: Picker | None = None
_picker_lock = threading.Lock()


def build_picker(settings: Settings | None = None, *, device: DeviceInfo | None = None) -> Picker:
    """A picker over the layers `settings` name; `device` skips detecting the device.

    A layer whose platform tables (platforms, aliases, fallbacks) cannot be read is left
    out with one warning naming its file, and the next layer serves; strict mode
    (PRESETDB_ON_MISS=strict) raises a `StoreError` naming it instead."""
    settings = settings or Settings.from_env()
    strict = settings.on_miss == "strict"
    layers, writer = open_layers(settings)
    device = device or detect_device()
    usable: list[Layer] = []
    for layer in layers:
        try:
            with layer.store.read() as session:
                resolve_platform([Repository(session)], override=settings.platform, device=device)
        except Exception as exc:  # a damaged layer must not fail every call
            error = _layer_error(layer, "resolving the platform", exc)
            if strict:
                for other in layers:
                    other.store.dispose()
                raise error from exc
            warn_at_caller(
                f"presetdb: {layer.name} db {layer.path} cannot be read (platforms, aliases or "
                f"fallbacks); continuing without it: {clip(exc)}",
                StoreWarning,
            )
            layer.store.dispose()
            if layer.name == "overlay":
                writer = None  # a damaged overlay is not written either
            continue
        usable.append(layer)
    try:
        with ExitStack() as stack:
            repos = [Repository(stack.enter_context(layer.store.read())) for layer in usable]
            info = resolve_platform(repos, override=settings.platform, device=device)
    except Exception as exc:  # failed after the probe: use no db
        if strict:
            raise
        warn_at_caller(
            f"presetdb: the platform could not be resolved from the dbs ({clip(exc)}); using the "
            "device's own name", StoreWarning,
        )
        info = resolve_platform([], override=settings.platform, device=device)
    return Picker(usable, writer, info, settings, strict=strict)


def get_picker() -> Picker:
    """The process-wide picker, built on first use from the environment."""
    global _picker
    picker = _picker
    if picker is not None:
        return picker
    with _picker_lock:
        if _picker is None:
            _picker = build_picker()
        return _picker


def reset_picker() -> None:
    """Close and forget the process-wide picker (tests; after changing PRESETDB_*)."""
    global _picker
    with _picker_lock:
        if _picker is not None:
            _picker.close()
        _picker = None
