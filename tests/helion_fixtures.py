"""Fixtures for the Helion integration tests (imported by tests/test_helion_*.py).

Everything runs on real SQLite files and real Helion kernels; on CPU under
TRITON_INTERPRET=1 (set by `require_interpreter` when no GPU is present).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from presetdb.keys import KeySpec
from presetdb.store import migrate

HAS_CUDA = False
try:  # the whole file is only imported by tests that need torch anyway
    import torch

    HAS_CUDA = torch.cuda.is_available()
except ImportError:  # pragma: no cover
    torch = None  # type: ignore[assignment]

# Under TRITON_INTERPRET=1 everything runs on the CPU, GPU or not.
DEVICE = "cuda" if HAS_CUDA and os.environ.get("TRITON_INTERPRET") != "1" else "cpu"
PLATFORM = "cpu"  # CPU tests store presets for the seeded "cpu" platform


def require_interpreter() -> None:
    """Helion on CPU needs Triton's interpreter; skip the module otherwise."""
    if DEVICE == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("CPU Helion tests need TRITON_INTERPRET=1", allow_module_level=True)


def install_interpreter_shims() -> None:
    """Triton's interpreter lacks libdevice (see presetdb.helion.interpreter);
    registering a kernel installs the shims, this makes it explicit for test modules."""
    from presetdb.helion.interpreter import install_shims

    install_shims()


@dataclass
class PresetStore:
    """A deployment db plus a user overlay in tmp_path, wired up through the env."""

    db: Path
    overlay: Path
    platform: str = PLATFORM
    added: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)

    def add(
        self,
        kernel: str,
        spec: KeySpec,
        shape_key: Mapping[str, Any],
        config: Mapping[str, Any],
        *,
        platform: str | None = None,
        kernel_source_hash: str | None = None,
    ) -> None:
        """Write one preset into the deployment db (then rebuild the picker)."""
        from presetdb.runtime.picker import reset_picker
        from presetdb.store.records import PresetInput
        from presetdb.store.repository import Repository

        platform = platform or self.platform
        store = migrate.open_store(self.db, "rw")
        try:
            with store.transaction() as session:
                repo = Repository(session)
                repo.ensure_kernel(kernel, spec.to_schema())
                if repo.find_platform(platform) is None:
                    repo.ensure_platform(platform)
                run = repo.add_run("manual", tuned_by="tests", helion_version="1.5.0")
                repo.upsert_preset(
                    kernel, platform, run.id,
                    PresetInput(dict(shape_key), dict(config), kernel_source_hash=kernel_source_hash),
                )
        finally:
            store.dispose()
        self.added.append((kernel, platform, dict(config)))
        reset_picker()  # the deployment layer is opened immutable: re-read it

    def overlay_presets(self, kernel: str, status: str | None = None) -> list[Any]:
        from presetdb.store.repository import Repository

        settle()
        store = migrate.open_store(self.overlay, "ro")
        try:
            with store.read() as session:
                return [p for p in Repository(session).all_presets(status=status) if p.kernel == kernel]
        finally:
            store.dispose()

    def overlay_runs(self) -> list[Any]:
        from presetdb.store.repository import Repository

        settle()
        store = migrate.open_store(self.overlay, "ro")
        try:
            with store.read() as session:
                return Repository(session).list_runs()
        finally:
            store.dispose()


@pytest.fixture(name="preset_store")
def preset_store_fixture(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[PresetStore]:
    """Real SQLite deployment db + overlay; PRESETDB_* pointed at them; fresh picker."""
    from presetdb.helion.hooks import reset_warnings
    from presetdb.runtime.picker import reset_picker

    db = tmp_path / "deploy.db"
    migrate.upgrade(db, seed_data=False)
    overlay = tmp_path / "overlay.db"
    monkeypatch.setenv("PRESETDB_PATH", str(db))
    monkeypatch.setenv("PRESETDB_USER_DB", str(overlay))
    monkeypatch.setenv("PRESETDB_PLATFORM", PLATFORM)
    monkeypatch.setenv("PRESETDB_ON_MISS", "default")
    reset_picker()
    reset_warnings()
    yield PresetStore(db, overlay)
    reset_picker()
    reset_warnings()


def settle() -> None:
    """Wait until the process-wide picker's ledger has written everything queued (the
    ledger writes on its own thread; a test reads the overlay file after it)."""
    from presetdb.runtime import picker as picker_module

    if picker_module._picker is not None:
        picker_module._picker.flush_misses()


def recorded_misses(overlay: Path, kernel: str) -> dict[str, Any]:
    """The miss counts of `kernel` in the user overlay, by features, after a flush. The
    ledger's thread writes the counts every FLUSH_SECONDS, so a test that runs slow calls
    (interpreted compiles) reads them here, where every count lands, not in the pending
    counts, which such a flush may already have emptied."""
    from picker_fixtures import read_repository

    settle()
    return {m.features: m for m in read_repository(overlay, lambda repo: repo.misses(kernel))}


def set_policy(monkeypatch: pytest.MonkeyPatch, policy: str) -> None:
    from presetdb.runtime.picker import reset_picker

    monkeypatch.setenv("PRESETDB_ON_MISS", policy)
    reset_picker()


def fresh(rk: Any) -> Any:
    """Drop a kernel's compiled state (Helion's bound kernels and presetdb's runners)
    so the next call goes through the hooks again."""
    rk.helion_kernel.reset()
    rk.reset_runtime()
    return rk


def candidate_search(candidates: Sequence[Mapping[str, Any]]) -> Callable[..., Any]:
    """An autotune search for CPU: compiles each candidate config for real, runs it in
    the interpreter, keeps the fastest by wall time (Helion cannot benchmark on CPU)."""
    from presetdb.helion.hooks import SearchResult

    def search(bound: Any, args: tuple[object, ...], effort: str) -> SearchResult:
        timed: list[tuple[dict[str, Any], float]] = []
        for config in candidates:
            runner = bound.compile_config(dict(config), allow_print=False)
            start = time.perf_counter()
            runner(*args)
            timed.append((dict(config), (time.perf_counter() - start) * 1e3))
        timed.sort(key=lambda item: item[1])
        best, best_ms = timed[0]
        search.calls += 1  # type: ignore[attr-defined]
        search.bounds.append(bound)  # type: ignore[attr-defined]
        return SearchResult(
            config=best,
            latency_ms=best_ms,
            configs_tried=len(timed),
            candidates=tuple(timed[1:]),
            method="tests: wall time of one run in the Triton interpreter",
            seed=0,
        )

    search.calls = 0  # type: ignore[attr-defined]
    search.bounds = []  # type: ignore[attr-defined]
    return search


def assert_close(actual: Any, expected: Any, dtype: Any, *, dot: bool = False) -> None:
    """Tolerances per dtype; `dot=True` for matmuls, which use TF32 on GPUs."""
    tol = {torch.float32: (1e-4, 1e-5), torch.float16: (2e-2, 2e-3), torch.bfloat16: (4e-2, 2e-2)}
    rtol, atol = tol.get(dtype, (1e-4, 1e-5))
    if dot and actual.device.type == "cuda":
        rtol, atol = max(rtol, 2e-2), max(atol, 2e-2)
    assert expected.abs().max() > 0, "reference is all zeros: the check would prove nothing"
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol)


def block_sizes_of(bound: Any) -> list[int]:
    """Block sizes of the config Helion compiled for a bound kernel."""
    config = bound._config
    assert config is not None, "the bound kernel has no config yet"
    return list(config.config["block_sizes"])
