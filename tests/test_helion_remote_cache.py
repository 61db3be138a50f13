"""presetdb as Helion's remote autotune cache (`presetdb.helion.remote_cache.Backend`)
for a plain ``@helion.kernel`` that presetdb knows nothing about, on a SQLite file and on
a real PostgreSQL registry.

Everything but two pieces is Helion's own code path (``default_autotuner_fn`` ->
``RemoteAutotuneCache`` -> the backend, Helion's local cache files, its counters):

- the search: Helion cannot benchmark on CPU, so `CandidateSearch` (registered in
  Helion's ``search_algorithms`` and picked by ``HELION_AUTOTUNER``) compiles two configs
  for real, runs them in the Triton interpreter and keeps the faster;
- the cache key's device fields: Helion 1.5 builds its cache key only for devices that
  name a runtime (GPUs, MPS, TPU, Pallas's interpreter) and asserts otherwise, so
  `InterpreterRemoteAutotuneCache` is ``RemoteAutotuneCache`` with every key field
  Helion computes and ``hardware="cpu"``, ``runtime_name="triton-interpreter"``.
  benchmarks/gpu/registry_remote_cache.py runs the unmodified ``RemoteAutotuneCache``
  with Helion's real search on a GPU.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helion_fixtures import DEVICE, require_interpreter
from pg_fixtures import PostgresServer, PostgresUnavailable
from typer.testing import CliRunner

require_interpreter()

import helion
import helion.language as hl
import torch
from helion._utils import counters
from helion.autotuner import cache_classes, search_algorithms
from helion.autotuner.base_search import BaseSearch
from helion.autotuner.local_cache import parse_cache_entry
from helion.autotuner.remote_cache import RemoteAutotuneCache

import presetdb
from presetdb.cli import app
from presetdb.helion import remote_cache
from presetdb.store import helion_cache, migrate

BACKEND = "presetdb.helion.remote_cache.Backend"
add_one: Any = None  # the kernel under test, made by the helion_env fixture
CANDIDATES = ({"block_sizes": [4]}, {"block_sizes": [8]})
HELION_LOG = "helion.autotuner.remote_cache"


def add_one_body(x: torch.Tensor) -> torch.Tensor:
    out = torch.empty_like(x)
    for tile in hl.tile(x.size(0)):
        out[tile] = x[tile] + 1.0
    return out


def plain_kernel() -> Any:
    """A plain Helion kernel, made after the HELION_* variables are set (Helion reads
    HELION_AUTOTUNE_CACHE into the kernel's settings when the kernel is made)."""
    return helion.kernel(autotune_effort="quick")(add_one_body)


class CandidateSearch(BaseSearch):
    """A search for CPU: each candidate compiled and run in the Triton interpreter, the
    faster by wall time wins. `calls` counts searches (the proof that none ran)."""

    calls = 0

    def autotune(self, *, skip_cache: bool = False) -> helion.Config:
        type(self).calls += 1
        timed = []
        for candidate in CANDIDATES:
            config = helion.Config(**candidate)
            runner = self.kernel.compile_config(config, allow_print=False)
            start = time.perf_counter()
            runner(*self.args)
            timed.append((time.perf_counter() - start, config))
        return min(timed, key=lambda item: item[0])[1]


class InterpreterRemoteAutotuneCache(RemoteAutotuneCache):
    """RemoteAutotuneCache for CPU tensors (see the module docstring)."""

    def _generate_key(self) -> Any:
        settings = self.kernel.kernel.settings
        backend = settings.backend
        settings.backend = "pallas"  # the one CPU branch of Helion's key that names a runtime
        try:
            key = super()._generate_key()
        finally:
            settings.backend = backend
        return dataclasses.replace(key, hardware="cpu", runtime_name="triton-interpreter")


def schema_only(path: Path) -> str:
    migrate.upgrade(path, seed_data=False)
    return str(path)


@pytest.fixture(params=["sqlite", "postgresql"])
def cache_db(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A presetdb database for the cache: a SQLite file, or a registry on the real server."""
    if request.param == "sqlite":
        return schema_only(tmp_path / "cache.db")
    return str(request.getfixturevalue("registry_url"))


@pytest.fixture
def helion_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    """Helion on the remote cache with presetdb's backend; its local cache in tmp_path.
    Yields the local cache dir."""
    monkeypatch.setitem(search_algorithms, "CandidateSearch", CandidateSearch)
    monkeypatch.setitem(cache_classes, "InterpreterRemoteAutotuneCache", InterpreterRemoteAutotuneCache)
    monkeypatch.setenv("HELION_AUTOTUNER", "CandidateSearch")
    monkeypatch.setenv("HELION_AUTOTUNE_CACHE", "InterpreterRemoteAutotuneCache")
    monkeypatch.setenv("HELION_REMOTE_CACHE_BACKEND", BACKEND)
    for name in ("HELION_SKIP_CACHE", "HELION_FORCE_AUTOTUNE", "HELION_ASSERT_CACHE_HIT"):
        monkeypatch.delenv(name, raising=False)
    local = tmp_path / "helion-local"
    monkeypatch.setenv("HELION_CACHE_DIR", str(local))
    monkeypatch.setattr(CandidateSearch, "calls", 0)
    counters["autotune"].clear()
    remote_cache.reset()
    global add_one
    add_one = plain_kernel()
    yield local
    remote_cache.reset()


def call() -> tuple[torch.Tensor, list[int]]:
    """Run the kernel once; its output and the block sizes Helion compiled it with."""
    x = torch.arange(32, dtype=torch.float32, device=DEVICE)
    out = add_one(x)
    torch.testing.assert_close(out, x + 1.0)
    bound = add_one.bind((x,))
    assert bound._config is not None
    return out, list(bound._config.config["block_sizes"])


def cache_key() -> str:
    """The kernel's cache key for `call()`'s arguments, as Helion computes it (no search)."""
    x = torch.arange(32, dtype=torch.float32, device=DEVICE)
    bound = add_one.bind((x,))
    return str(InterpreterRemoteAutotuneCache(CandidateSearch(bound, (x,))).key.stable_hash())


def entry_text(config: dict[str, Any]) -> str:
    """A .best_config text for `call()`'s key, as Helion's put writes one."""
    x = torch.arange(32, dtype=torch.float32, device=DEVICE)
    key = InterpreterRemoteAutotuneCache(CandidateSearch(add_one.bind((x,)), (x,))).key
    fields = {k: str(v) for k, v in vars(key).items() if k != "search_policy_hash" or v}
    data = {"config": helion.Config(**config).to_json(), "key": {"type": type(key).__name__, "fields": fields}}
    return json.dumps(data, indent=2)


def stored_rows(target: str) -> list[dict[str, Any]]:
    from sqlalchemy import select

    from presetdb.store.models import Config, HelionCacheEntry

    store = migrate.open_store(target, "ro")
    try:
        with store.read() as session:
            query = select(HelionCacheEntry.__table__, Config.config_json).join(
                Config, Config.id == HelionCacheEntry.config_id
            )
            return [dict(row._mapping) for row in session.execute(query)]
    finally:
        store.dispose()


def use(monkeypatch: pytest.MonkeyPatch, target: str) -> None:
    monkeypatch.setenv("PRESETDB_REMOTE_CACHE_DB", target)


# ------------------------------------------------------------------ serving and writing


def test_a_search_writes_its_row_and_another_machine_serves_it(
    cache_db: str, helion_env: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    use(monkeypatch, cache_db)
    _, chosen = call()
    assert CandidateSearch.calls == 1
    assert counters["autotune"]["cache_miss"] == 1 and counters["autotune"]["cache_put"] == 1

    (local_file,) = helion_env.glob("*.best_config")
    written = local_file.read_text()
    fields = json.loads(written)["key"]["fields"]
    (row,) = stored_rows(cache_db)
    # One row under Helion's cache key: Helion's own text, its key fields, the config.
    assert row["cache_key"] == local_file.stem == cache_key()
    assert row["entry_json"] == written
    assert row["key_type"] == "LooseAutotuneCacheKey"
    assert (row["hardware"], row["runtime_name"], row["backend"]) == ("cpu", "triton-interpreter", "triton")
    assert row["kernel_source_hash"] == fields["kernel_source_hash"]
    assert row["specialization_key"] == fields["specialization_key"]
    assert row["config_spec_hash"] == fields["config_spec_hash"] and len(row["config_spec_hash"]) == 64
    assert json.loads(row["key_fields"]) == fields
    assert json.loads(row["config_json"]) == {"block_sizes": chosen}
    # who wrote it, with what, when
    assert row["source"] == "remote-cache" and row["source_file"] is None and row["host"]
    assert row["helion_version"] == importlib.metadata.version("helion")
    assert row["triton_version"] == importlib.metadata.version("triton")
    assert row["torch_version"] == torch.__version__
    assert row["presetdb_version"] == presetdb.__version__
    assert row["created_at"] == row["updated_at"] and row["created_at"].endswith("Z")

    # Another machine: an empty local cache, the same database. No search runs.
    other = tmp_path / "other-machine"
    monkeypatch.setenv("HELION_CACHE_DIR", str(other))
    add_one.reset()
    _, served = call()
    assert served == chosen
    assert CandidateSearch.calls == 1
    assert counters["autotune"]["cache_hit"] == 1
    # Helion keeps what it read in its local cache, the same entry.
    assert [p.name for p in other.glob("*.best_config")] == [local_file.name]


def test_a_config_put_under_the_kernels_key_is_served_without_search(
    cache_db: str, helion_env: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # Not a candidate of the search: only the database can have supplied it.
    key = cache_key()
    file = tmp_path / f"{key}.best_config"
    file.write_text(entry_text({"block_sizes": [16]}))
    result = CliRunner().invoke(app, ["import", str(file), "--db", cache_db, "--format", "helion-cache"])
    assert result.exit_code == 0, result.output
    assert "Helion cache entries: 1 added" in " ".join(result.output.split())
    (row,) = stored_rows(cache_db)
    assert row["source"] == "import-helion-cache" and row["source_file"] == file.name

    use(monkeypatch, cache_db)
    _, served = call()
    assert served == [16]
    assert CandidateSearch.calls == 0
    assert counters["autotune"]["cache_hit"] == 1 and counters["autotune"]["cache_miss"] == 0


def test_an_entry_this_helion_cannot_load_is_not_served_and_gets_replaced(
    cache_db: str, helion_env: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    key = cache_key()
    # e.g. written by a newer Helion with a config field this one does not know
    data = json.loads(entry_text({"block_sizes": [16]}))
    data["config"] = json.dumps({"block_sizes": [16], "no_such_field": 1})
    store = migrate.open_store(cache_db, "rw")
    try:
        with store.transaction() as session:
            entry = helion_cache.parse_entry(key, json.dumps(data), where="test")
            assert helion_cache.store_entry(session, entry, "import-helion-cache") == "added"
    finally:
        store.dispose()

    use(monkeypatch, cache_db)
    with caplog.at_level(logging.WARNING, logger=HELION_LOG):
        _, chosen = call()
    assert CandidateSearch.calls == 1  # not served: searched instead, and no crash
    (failure,) = [r for r in caplog.records if r.name == HELION_LOG]
    assert failure.getMessage() == "Remote cache read failed, falling back to local"
    assert failure.exc_info is not None and "does not know (no_such_field)" in str(failure.exc_info[1])
    # the search's result replaced the row
    (row,) = stored_rows(cache_db)
    assert row["source"] == "remote-cache" and json.loads(row["config_json"]) == {"block_sizes": chosen}


# ------------------------------------------------------------------ a broken registry


@pytest.fixture(params=["stopped-postgresql", "missing-sqlite-file", "not-a-database"])
def down_target(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "stopped-postgresql":
        request.getfixturevalue("pg_server")  # skips (or fails in CI) without a server
        try:
            server = PostgresServer()
        except PostgresUnavailable as exc:
            pytest.fail(str(exc))
        url = server.url()
        migrate.upgrade(url, seed_data=False)
        server.stop()  # the registry went down
        yield url
    elif request.param == "missing-sqlite-file":
        yield str(tmp_path / "nowhere" / "cache.db")
    else:
        bad = tmp_path / "cache.db"
        bad.write_bytes(b"this is no database")
        yield str(bad)


def test_a_registry_that_is_down_warns_and_helion_uses_its_local_cache(
    down_target: str,
    helion_env: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    use(monkeypatch, down_target)
    with caplog.at_level(logging.WARNING, logger=HELION_LOG):
        _, chosen = call()
    assert CandidateSearch.calls == 1
    warnings = [r for r in caplog.records if r.name == HELION_LOG]
    assert [r.getMessage() for r in warnings] == [
        "Remote cache read failed, falling back to local",
        "Remote cache write failed (local still written)",
    ]
    first = warnings[0].exc_info
    assert first is not None and isinstance(first[1], presetdb.errors.StoreError)
    assert down_target.split("?")[0].rsplit("/", 1)[-1] in str(first[1])  # names the database
    assert "not retried" in str(warnings[1].exc_info[1])  # type: ignore[index]
    # Helion's local cache has the result: the next call is served from it.
    assert len(list(helion_env.glob("*.best_config"))) == 1
    add_one.reset()
    caplog.clear()
    _, served = call()
    assert served == chosen and CandidateSearch.calls == 1
    assert counters["autotune"]["cache_hit"] == 1


def test_the_backend_is_made_without_io_and_unconfigured_says_what_to_set(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PRESETDB_REMOTE_CACHE_DB", "postgresql+psycopg://nobody@/x?host=/nonexistent")
    backend = remote_cache.Backend()  # Helion calls Backend() outside its error handling
    assert isinstance(backend, remote_cache.RemoteCacheBackend)
    monkeypatch.delenv("PRESETDB_REMOTE_CACHE_DB")
    with pytest.raises(remote_cache.RemoteCacheError, match="PRESETDB_REMOTE_CACHE_DB") as info:
        backend.get("0" * 64)
    assert "PRESETDB_REGISTRY" in str(info.value)


# ------------------------------------------------------------------ list(): warm start


def test_list_returns_recent_entries_newest_first_in_helions_format(
    cache_db: str, helion_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    use(monkeypatch, cache_db)
    backend = remote_cache.Backend()
    sample = json.loads(entry_text({"block_sizes": [4]}))
    sample["flat_config"] = json.dumps([4])
    keys = [f"{i:064x}" for i in range(1, 4)]
    for i, key in enumerate(keys):
        data = dict(sample, config=helion.Config(block_sizes=[2 ** (i + 2)]).to_json())
        backend.put(key, json.dumps(data))
    assert backend.get(keys[0]) is not None and backend.get("f" * 64) is None
    listed = list(backend.list(max_results=2))
    assert len(listed) == 2
    parsed = [parse_cache_entry(text) for text in listed]  # Helion's own reader
    assert [p.config.config["block_sizes"] for p in parsed] == [[16], [8]]
    assert all(p.hardware == "cpu" and p.flat_config == (4,) for p in parsed)
    assert len(list(backend.list())) == 3
