"""The tuning farm on a real local Ray cluster (2 CPUs, 2 fake GPUs, one per module):
each shape is a Ray task in a fresh worker process (``--worker shape``) or a call on a
long-lived actor per GPU (``--worker gpu``) that runs the real tuner under the Triton
interpreter (`sample_search`). Without Ray these tests are skipped with the
install command, except in CI (CI=true), where a missing Ray fails them."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from import_fixtures import load
from typer.testing import CliRunner

from presetdb.cli import app
from presetdb.errors import FarmError
from presetdb.offline import farm, farm_ray
from presetdb.offline import tune as tuning
from presetdb.store import migrate

try:
    import ray
except ImportError:  # pragma: no cover - depends on the install
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI must run the farm tests: Ray is missing ({farm.FARM_INSTALL})", pytrace=False)
    pytest.skip(f"Ray is not installed: {farm.FARM_INSTALL}", allow_module_level=True)

import farm_work

TESTS = Path(__file__).resolve().parent
SHAPES = [
    {"dtype": "float32", "hidden": 64, "num_tokens": 2},
    {"dtype": "float32", "hidden": 128, "num_tokens": 2},
]


@pytest.fixture(scope="module")
def cluster() -> Iterator[dict[str, float]]:
    """A real Ray cluster on this machine: 2 CPUs and 2 (fake) H200 GPUs."""
    ray.init(
        num_cpus=2,
        num_gpus=2,
        resources={"accelerator_type:H200": 2},
        include_dashboard=False,
        object_store_memory=80 * 1024 * 1024,
        logging_level="warning",
        runtime_env={"env_vars": {"PYTHONPATH": str(TESTS), "TRITON_INTERPRET": "1"}},
    )
    try:
        yield dict(ray.cluster_resources())
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def rk() -> Any:
    from presetdb.helion.registry import get_kernel, load_kernel_modules

    load_kernel_modules()
    return get_kernel("rms_norm")


def tuner(rk: Any, out: Path, *, work: Any = None, platform: str | None = None, worker: str = "shape") -> tuning.Tuner:
    made = tuning.Tuner(
        rk,
        out,
        search=tuning.sample_search(count=2, timer=tuning.cpu_timer(1)),
        timer=tuning.cpu_timer(1),
        device="cpu",
        seed=5,
        platform=platform,
        executor=farm_ray.RayExecutor(device="cpu", platform=platform, max_retries=2, worker=worker),
        progress=False,
    )
    if work is not None:
        made.work = lambda: work  # type: ignore[method-assign]
    return made


def shape_tuner(rk: Any, tmp_path: Path) -> tuning.ShapeTuner:
    return tuner(rk, tmp_path / "unused.json").work()


def test_shapes_run_at_once_on_distinct_gpus_resume_submits_nothing_and_the_file_imports(
    cluster: dict[str, float], rk: Any, tmp_path: Path
) -> None:
    out = tmp_path / "farm.json"
    began = time.time()
    summary = tuner(rk, out).run(SHAPES)
    assert (summary.done, summary.failed, summary.interrupted) == (2, [], False)
    first, second = (o.worker for o in summary.outcomes)
    assert first is not None and second is not None
    # What a fresh process per shape costs: from the worker's spawn (this run) to its work.
    for worker in (first, second):
        assert worker.setup_seconds is not None and 0 < worker.setup_seconds < time.time() - began
    # Both ran at once, each in its own fresh worker process, on its own GPU.
    ends = [o.finished for o in summary.outcomes]
    assert max(first.started, second.started) < min(ends)
    assert first.pid != second.pid and {first.gpus, second.gpus} == {"0", "1"}
    # Helion's compile jobs: this host's cores shared by the 2 tasks it runs at once.
    assert first.precompile_jobs == second.precompile_jobs == max(1, (os.cpu_count() or 1) // 2)
    doc = load(out)
    assert sorted(e["key"]["hidden"] for e in doc["entries"]) == [64, 128]
    for entry in doc["entries"]:
        assert entry["run"]["device_name"] == "cpu" and entry["run"]["host"]
        assert entry["run"]["benchmark_method"] == "injected timer"
    assert doc["run"]["host"] == doc["entries"][0]["run"]["host"]  # the header adopts a worker's

    again = tuner(rk, out).run(SHAPES)
    assert (again.submitted, again.skipped, again.outcomes) == (0, 2, [])

    db = tmp_path / "farm.db"
    migrate.upgrade(db, seed_data=False)
    result = CliRunner().invoke(app, ["import", str(out), "--db", str(db)])
    assert result.exit_code == 0, result.output
    assert "2 added" in result.output


def test_a_killed_worker_is_retried_and_the_shape_finishes(
    cluster: dict[str, float], rk: Any, tmp_path: Path
) -> None:
    marker = tmp_path / "killed-pid"
    work = farm_work.DieOnce(shape_tuner(rk, tmp_path), str(marker))
    summary = tuner(rk, tmp_path / "k.json", work=work).run(SHAPES[:1])
    assert marker.exists(), "the first attempt never ran"
    (outcome,) = summary.outcomes
    assert outcome.entry is not None and summary.failed == []
    assert outcome.worker is not None and outcome.worker.pid != int(marker.read_text())
    assert [e["key"] for e in load(tmp_path / "k.json")["entries"]] == SHAPES[:1]


def test_a_python_error_is_a_recorded_failure_with_its_traceback(
    cluster: dict[str, float], rk: Any, tmp_path: Path
) -> None:
    out = tmp_path / "e.json"
    work = farm_work.FailOn(shape_tuner(rk, tmp_path), hidden=64)
    summary = tuner(rk, out, work=work).run(SHAPES[:1])
    assert summary.failed == [('{"dtype":"float32","hidden":64,"num_tokens":2}', "ValueError: no tile fits hidden=64")]
    (failure,) = load(out)["failures"]
    assert failure["key"] == SHAPES[0] and failure["error"] == "ValueError: no tile fits hidden=64"
    assert "farm_work.py" in failure["traceback"]  # the tail shows where it was raised


@pytest.mark.parametrize("worker", ["shape", "gpu"])
def test_ctrl_c_cancels_running_tasks_and_keeps_finished_shapes(
    cluster: dict[str, float], rk: Any, tmp_path: Path, worker: str
) -> None:
    out, pid_file = tmp_path / "c.json", tmp_path / "hung-pid"
    work = farm_work.HangOn(shape_tuner(rk, tmp_path), hidden=128, pid_file=str(pid_file))

    def press_ctrl_c() -> None:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            if pid_file.exists() and out.exists() and load(out)["entries"]:
                os.kill(os.getpid(), signal.SIGINT)
                return
            time.sleep(0.2)

    # A runner started as a background job inherits SIGINT ignored, and Python then keeps it
    # ignored: the press would never arrive. The test wants Python's own Ctrl-C.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    thread = threading.Thread(target=press_ctrl_c, daemon=True)
    thread.start()
    try:
        summary = tuner(rk, out, work=work, worker=worker).run(SHAPES)
    finally:
        signal.signal(signal.SIGINT, previous)
    thread.join(timeout=5)
    assert summary.interrupted and summary.done == 1
    assert [e["key"] for e in load(out)["entries"]] == SHAPES[:1]
    hung = int(pid_file.read_text())
    deadline = time.monotonic() + 30
    while _alive(hung) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _alive(hung), "the cancelled task's worker process still runs"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped) is not running.
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split(") ")[-1].startswith("Z"))


def test_a_platform_the_cluster_lacks_fails_at_once_naming_what_it_has(
    cluster: dict[str, float], rk: Any, tmp_path: Path
) -> None:
    out = tmp_path / "p.json"
    with pytest.raises(FarmError, match=r"no GPU of platform nvidia_h100: it has nvidia_h200 \(accelerator_type:H200\)"):
        tuner(rk, out, platform="nvidia_h100").run(SHAPES)
    assert not out.exists()
    args = ["tune", "rms_norm", "--grid", "dtype=float32;hidden=64;num_tokens=2", "--device", "cpu"]
    result = CliRunner().invoke(
        app, [*args, "--executor", "ray", "--platform", "nvidia_h100", "--no-warm-start", "--out", str(out)]
    )
    assert result.exit_code == 2 and "no GPU of platform nvidia_h100" in " ".join(result.output.split())
    result = CliRunner().invoke(app, [*args, "--executor", "ray", "--worker", "node", "--out", str(out)])
    assert result.exit_code == 2 and "use shape or gpu" in " ".join(result.output.split())
    # The platform the cluster has: its tasks ask for that GPU type.
    executor = farm_ray.RayExecutor(device="cpu", platform="nvidia_h200")
    executor.prepare()
    assert executor.task_options(cluster)["resources"] == {"accelerator_type:H200": 0.001}
    assert farm_ray.RayExecutor(device="cuda").cluster_platform() == "nvidia_h200"


# ---------------------------------------------------------------- --worker gpu

THREE = [*SHAPES, {"dtype": "float32", "hidden": 256, "num_tokens": 2}]


def test_gpu_workers_set_up_once_keep_their_gpu_and_run_shape_after_shape(
    cluster: dict[str, float], rk: Any, tmp_path: Path
) -> None:
    out = tmp_path / "g.json"
    summary = tuner(rk, out, worker="gpu").run(THREE)
    assert (summary.done, summary.failed, summary.interrupted) == (3, [], False)
    workers = [o.worker for o in summary.outcomes]
    assert all(w is not None for w in workers)
    by_pid: dict[int, set[str]] = {}
    for w in workers:
        by_pid.setdefault(w.pid, set()).add(w.gpus)
    # One process per GPU, each on its one GPU for life; three shapes on two of them.
    assert len(by_pid) == 2 and all(len(g) == 1 for g in by_pid.values())
    assert set().union(*by_pid.values()) == {"0", "1"}
    # Set-up is paid once per process: the first shape of each reports it, later ones do not.
    firsts = {w.pid: w for w in reversed(workers)}
    for w in workers:
        assert (w.setup_seconds is not None) == (w is firsts[w.pid])
    assert sorted(e["key"]["hidden"] for e in load(out)["entries"]) == [64, 128, 256]
    assert (tuner(rk, out, worker="gpu").run(THREE).submitted) == 0


def test_a_killed_gpu_worker_is_restarted_and_its_shape_finishes(
    cluster: dict[str, float], rk: Any, tmp_path: Path
) -> None:
    marker = tmp_path / "killed-pid"
    work = farm_work.DieOnce(shape_tuner(rk, tmp_path), str(marker))
    summary = tuner(rk, tmp_path / "gk.json", work=work, worker="gpu").run(SHAPES[:1])
    assert marker.exists(), "the first attempt never ran"
    (outcome,) = summary.outcomes
    assert outcome.entry is not None and summary.failed == []
    assert outcome.worker is not None and outcome.worker.pid != int(marker.read_text())


def test_a_python_error_on_a_gpu_worker_is_recorded_and_the_worker_goes_on(
    cluster: dict[str, float], rk: Any, tmp_path: Path
) -> None:
    out = tmp_path / "ge.json"
    # hidden=64 fails at once while the other process tunes its shape for seconds: the
    # third shape goes to the process whose shape failed.
    summary = tuner(rk, out, work=farm_work.FailOn(shape_tuner(rk, tmp_path), hidden=64), worker="gpu").run(THREE)
    assert summary.failed == [('{"dtype":"float32","hidden":64,"num_tokens":2}', "ValueError: no tile fits hidden=64")]
    assert summary.done == 2
    (failure,) = load(out)["failures"]
    assert "farm_work.py" in failure["traceback"]
    failed = next(o for o in summary.outcomes if o.entry is None)
    # The process whose shape raised (its context still works) runs a later shape too.
    assert failed.worker is not None
    assert any(o.worker is not None and o.worker.pid == failed.worker.pid for o in summary.outcomes if o.entry)
