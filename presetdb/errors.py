"""Every exception and warning presetdb defines. One root for errors (`PresetDBError`),
one for warnings (`PresetDBWarning`); each subclass says what happened and the message
says what to do about it."""

from __future__ import annotations

from collections.abc import Mapping


class PresetDBError(Exception):
    """Root of every error presetdb raises on purpose."""


class StoreError(PresetDBError):
    """A database file cannot be used as a presetdb store."""


class StoreNotFoundError(StoreError):
    """The database file does not exist."""


class NotADatabaseError(StoreError):
    """The file is not a SQLite file, is empty, or belongs to another application."""


class SchemaTooOldError(StoreError):
    """The database schema is older than this package expects."""


class SchemaTooNewError(StoreError):
    """The database was written by a newer presetdb (or an unknown revision)."""


class ReadOnlyStoreError(StoreError):
    """A write was attempted on a database opened read-only or immutable."""


class IntegrityCheckError(StoreError):
    """`presetdb db check` found a problem (integrity, foreign keys, revision)."""


class KeySpecError(PresetDBError):
    """A key spec or a shape key is malformed."""


class UnknownKernelError(PresetDBError):
    """No kernel of that name is known (registered or stored)."""


class UnknownPlatformError(PresetDBError):
    """No platform of that name is known."""


class SettingsError(PresetDBError):
    """An environment variable holds a value presetdb does not accept."""


class PresetMissError(PresetDBError):
    """Strict mode: no stored config serves this call.

    `kernel`, `platform`, `features` (the call's shape key) and `nearest` (stored keys
    closest to it) are set when the integration raises it."""

    def __init__(
        self,
        message: str,
        *,
        kernel: str | None = None,
        platform: str | None = None,
        features: Mapping[str, object] | None = None,
        nearest: list[str] | None = None,
    ) -> None:
        super().__init__(message)
        self.kernel = kernel
        self.platform = platform
        self.features = dict(features or {})
        self.nearest = list(nearest or [])


class KernelRegistrationError(PresetDBError):
    """`register_kernel` was given a name already taken or settings it must pin itself."""


class KernelDeviceError(PresetDBError):
    """A kernel was called with tensors on a device it cannot run on: CPU tensors without
    Triton's interpreter (``TRITON_INTERPRET=1``)."""


class InvalidConfigError(PresetDBError):
    """A stored or imported config does not validate against the kernel's ConfigSpec."""


class ImportValidationError(PresetDBError):
    """An import found invalid rows; nothing was written.

    `problems` holds one human-readable line per bad row (file, row, field, reason).
    """

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        from presetdb._text import clip

        # Each line capped: a problem quoting a 50 MB value must not carry it.
        self.problems = [p if len(p) <= 900 else clip(p, 900) for p in problems or []]
        detail = "".join(f"\n  - {p}" for p in self.problems[:50])
        more = f"\n  ... and {len(self.problems) - 50} more" if len(self.problems) > 50 else ""
        super().__init__(message + detail + more)


class SeedDataTamperedError(PresetDBError):
    """A seed file's sha256 differs from the one its data migration pinned."""


class ReadOnlySQLError(PresetDBError):
    """`presetdb sql` was given a statement that could write or escape the file."""


class QueryLimitError(ReadOnlySQLError):
    """`presetdb sql` stopped a query at its time, row or memory limit."""


class AuditError(PresetDBError):
    """An audit or a query could not run (unknown audit, bad parameter, SQL error)."""


class NothingToExportError(PresetDBError):
    """An export matched no active preset: nothing was written (exit status 1, so a
    script that exports and ships the files stops there)."""


class TuneError(PresetDBError):
    """A tune (or refine) run cannot start: bad shapes, a results file for another kernel,
    platform or effort, no GPU, ..."""


class FarmError(TuneError):
    """The Ray executor cannot run: ray missing, no cluster, no GPU of the platform asked for."""


# ---------------------------------------------------------------------- warnings


class PresetDBWarning(UserWarning):
    """Root of every warning presetdb issues."""


class StoreWarning(PresetDBWarning):
    """A preset store (or part of one) could not be used; presetdb carried on without it."""


class PresetMissWarning(PresetDBWarning):
    """No stored config served a call; Helion's default config ran instead."""


class QuarantineWarning(PresetDBWarning):
    """A stored config failed validation, compilation or launch and was quarantined."""


class AutotuneWarning(PresetDBWarning):
    """PRESETDB_ON_MISS=autotune could not search or store; the call carried on."""
