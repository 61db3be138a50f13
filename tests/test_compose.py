"""docker-compose.yml and Dockerfile, checked without a Docker engine: the compose file
parses, every service refers to things that exist, and the commands the services run
work here: `build` makes a db that passes `presetdb db check`, datasette serves it with
the metadata the image generates, and neither needs torch (the app image has none)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from datasette.app import Datasette
from typer.testing import CliRunner

from presetdb import audit
from presetdb.cli import app

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
GPU_STACK = ("torch", "triton", "helion")
POSTGRES_IMAGE = "postgres:16"
REGISTRY_SERVICES = ("registry-db", "registry-upgrade", "registry-release")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def dockerfile() -> str:
    return DOCKERFILE.read_text()


def _stages(dockerfile: str) -> set[str]:
    return set(re.findall(r"^FROM\s+\S+\s+AS\s+(\S+)", dockerfile, re.MULTILINE | re.IGNORECASE))


def _generated_metadata_path(dockerfile: str) -> str:
    found = re.findall(r"presetdb audit --datasette-metadata (\S+)", dockerfile)
    assert len(found) == 1, "the Dockerfile must generate the datasette metadata once"
    return found[0]


def test_services_and_volumes(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {"build", "audit", "tune"} <= set(services)
    assert "presetdb-data" in compose["volumes"]


def test_build_contexts_and_targets_exist(compose: dict[str, Any], dockerfile: str) -> None:
    images: dict[str, str] = {}
    for name, service in compose["services"].items():
        build = service.get("build")
        if build is None:
            continue
        context = ROOT / build["context"]
        assert (context / build.get("dockerfile", "Dockerfile")).is_file(), name
        assert build["target"] in _stages(dockerfile), (name, build["target"])
        images[service["image"]] = name
    # A service without a build section must use an image that another service builds
    # (or PostgreSQL's official image, for the registry).
    for name, service in compose["services"].items():
        if "build" not in service:
            assert service["image"] in images or service["image"] == POSTGRES_IMAGE, name


def test_dockerfile_copies_files_that_exist(dockerfile: str) -> None:
    copies = re.findall(r"^COPY\s+(?!--from)(.+)$", dockerfile, re.MULTILINE)
    assert copies
    for line in copies:
        *sources, _dest = line.split()
        for source in sources:
            assert (ROOT / source).exists(), f"Dockerfile copies missing {source}"
    # Scripts the Dockerfile runs are copied first.
    for script in re.findall(r"python (?:/src/)?(docker/\S+\.py)", dockerfile):
        assert (ROOT / script).is_file(), script


def test_build_service_runs_here(compose: dict[str, Any], tmp_path: Path) -> None:
    build = compose["services"]["build"]
    command = build["command"]
    assert command[:3] == ["presetdb", "build", "--out"]
    out = command[3]
    mount = next(v for v in build["volumes"] if v.startswith("presetdb-data:"))
    target = mount.split(":")[1]
    assert out.startswith(target + "/"), "the db must land in the named volume"
    local = tmp_path / Path(out).relative_to(target)
    runner = CliRunner()
    built = runner.invoke(app, [*command[1:3], str(local)])
    assert built.exit_code == 0, (built.output, built.exception)
    checked = runner.invoke(app, ["db", "check", "--db", str(local)])
    assert checked.exit_code == 0, checked.output
    assert checked.output.strip().endswith("ok")
    assert (tmp_path / (local.name + ".manifest.json")).is_file()


def test_audit_service_serves_the_build_output_immutable(
    compose: dict[str, Any], dockerfile: str
) -> None:
    services = compose["services"]
    command = [str(c) for c in services["audit"]["command"]]
    assert command[:2] == ["datasette", "serve"]
    db_file = command[command.index("-i") + 1]
    assert db_file == services["build"]["command"][3], "audit must serve what build wrote"
    assert command[command.index("--metadata") + 1] == _generated_metadata_path(dockerfile)
    assert command[command.index("--port") + 1] == "8001"
    assert "8001:8001" in services["audit"]["ports"]
    assert any(
        v.startswith("presetdb-data:") and v.endswith(":ro") for v in services["audit"]["volumes"]
    )
    depends = services["audit"]["depends_on"]["build"]
    assert depends["condition"] == "service_completed_successfully"


def test_tune_service_reserves_an_nvidia_gpu(compose: dict[str, Any]) -> None:
    tune = compose["services"]["tune"]
    devices = tune["deploy"]["resources"]["reservations"]["devices"]
    assert any(d["driver"] == "nvidia" and "gpu" in d["capabilities"] for d in devices)
    assert tune["command"][:2] == ["presetdb", "tune"]
    out = tune["command"][tune["command"].index("--out") + 1]
    assert "./results:/results" in tune["volumes"] and out.startswith("/results/")


def test_image_requirements_follow_pyproject() -> None:
    def requirements(*args: str) -> list[str]:
        proc = subprocess.run(
            [
                sys.executable,
                str(ROOT / "docker/app_requirements.py"),
                *args,
                str(ROOT / "pyproject.toml"),
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        return proc.stdout.split()

    app_reqs = requirements()
    assert not [r for r in app_reqs if r.startswith(GPU_STACK)]
    assert any(r.startswith("datasette") for r in app_reqs)
    assert any(r.startswith("sqlalchemy") for r in app_reqs)
    assert any(r.startswith("psycopg") for r in app_reqs), "the registry services need psycopg"
    gpu = requirements("--gpu")
    assert any(r.startswith("helion") for r in gpu) and any(r.startswith("torch") for r in gpu)


def test_app_image_commands_run_without_torch(dockerfile: str, tmp_path: Path) -> None:
    """What the app image runs (build, metadata generation) with torch, triton and
    helion made unimportable, as in the image. Then datasette serves the result."""
    metadata = tmp_path / "datasette-metadata.json"
    db = tmp_path / "presets.db"
    code = f"""
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in {GPU_STACK!r}:
            raise ImportError('not in the app image: ' + name)
sys.meta_path.insert(0, Block())
from presetdb.cli import main
for argv in (['build', '--out', {str(db)!r}],
             ['audit', '--datasette-metadata', {str(metadata)!r}],
             ['audit', '--db', {str(db)!r}]):
    sys.argv = ['presetdb', *argv]
    try:
        main()
    except SystemExit as exc:
        assert not exc.code, (argv, exc.code)
"""
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, "COLUMNS": "200"},
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    generated = json.loads(metadata.read_text())
    assert generated == audit.datasette_metadata("presets")
    assert Path(_generated_metadata_path(dockerfile)).name == metadata.name

    async def serve() -> list[int]:
        ds = Datasette(immutables=[str(db)], metadata=generated)
        await ds.invoke_startup()
        return [
            (await ds.client.get(f"/presets/{name}.json")).status_code for name in audit.audits()
        ]

    assert asyncio.run(serve()) == [200] * len(audit.audits())


def test_farm_profile_has_a_head_one_worker_per_gpu_and_a_driver(compose: dict[str, Any]) -> None:
    services = compose["services"]
    farm = {name: s for name, s in services.items() if "farm" in s.get("profiles", [])}
    head = farm["ray-head"]
    assert head["command"][:3] == ["ray", "start", "--head"] and "--port=6379" in head["command"]
    workers = {name: s for name, s in farm.items() if name.startswith("ray-gpu")}
    assert len(workers) >= 2
    gpus = []
    for worker in workers.values():
        assert worker["command"][:3] == ["ray", "start", "--address=ray-head:6379"]
        assert "--num-gpus=1" in worker["command"] and "ray-head" in worker["depends_on"]
        (device,) = worker["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia" and len(device["device_ids"]) == 1
        gpus += device["device_ids"]
    assert len(set(gpus)) == len(gpus), "one worker per GPU"
    driver = farm["farm-tune"]["command"]
    assert driver[:2] == ["presetdb", "tune"]
    assert driver[driver.index("--executor") + 1] == "ray"
    assert driver[driver.index("--address") + 1] == "ray://ray-head:10001"
    for service in farm.values():  # Ray >= 2.60: every node and the driver share one token
        assert service["environment"]["RAY_AUTH_MODE"] == "token" and "RAY_AUTH_TOKEN" in service["environment"]
        assert service["image"] == head["image"]
    assert head["build"]["target"] == "tune"
    # The tune image carries Ray: the farm extra is in its requirements.
    gpu = subprocess.run(
        [sys.executable, str(ROOT / "docker/app_requirements.py"), "--gpu", str(ROOT / "pyproject.toml")],
        capture_output=True, text=True, check=True,
    ).stdout.split()
    assert any(r.startswith("ray") for r in gpu)


# ------------------------------------------------------------------ the registry profile


def _url_parts(url: str) -> Any:
    from sqlalchemy import make_url

    return make_url(url)


def test_registry_profile_services(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name in REGISTRY_SERVICES:
        assert services[name]["profiles"] == ["registry"], name
    for name in ("build", "audit"):
        assert "profiles" not in services[name], f"{name} must run without a profile"
    db = services["registry-db"]
    assert db["image"] == POSTGRES_IMAGE
    assert "presetdb-registry:/var/lib/postgresql/data" in db["volumes"]
    assert "presetdb-registry" in compose["volumes"]
    assert "pg_isready" in " ".join(db["healthcheck"]["test"])

    upgrade = services["registry-upgrade"]
    assert upgrade["command"][:4] == ["presetdb", "db", "upgrade", "--db"]
    assert upgrade["depends_on"]["registry-db"]["condition"] == "service_healthy"
    url = _url_parts(upgrade["command"][4])
    env = db["environment"]
    assert url.drivername == "postgresql+psycopg" and url.host == "registry-db"
    assert (url.username, url.database, url.port) == (env["POSTGRES_USER"], env["POSTGRES_DB"], 5432)
    assert url.password == env["POSTGRES_PASSWORD"] == "${PRESETDB_REGISTRY_PASSWORD:-presetdb}"

    release = services["registry-release"]
    command = release["command"]
    assert command[:3] == ["presetdb", "build", "--from"] and command[3] == upgrade["command"][4]
    out = command[command.index("--out") + 1]
    assert out == services["build"]["command"][3], "the release must be the file audit serves"
    assert "presetdb-data:/data" in release["volumes"]
    assert release["depends_on"]["registry-upgrade"]["condition"] == "service_completed_successfully"
    # after `build`, so the registry's release replaces the migrations' file, not the reverse
    assert release["depends_on"]["build"]["condition"] == "service_completed_successfully"
    serves = services["audit"]["depends_on"]["registry-release"]
    assert serves == {"condition": "service_completed_successfully", "required": False}
    for name in ("registry-upgrade", "registry-release"):
        assert services[name]["image"] == services["build"]["image"], "the app image runs them"


def test_registry_profile_commands_run_here_without_torch(
    compose: dict[str, Any], pg_empty_url: str, tmp_path: Path
) -> None:
    """The one-shot registry services' commands, against a real PostgreSQL server (the
    URL's host swapped for the test server's; a new, empty database as the volume starts),
    with the GPU stack unimportable as in the app image; then the release passes `db
    check` and holds the released seed presets."""
    registry_url = pg_empty_url
    services = compose["services"]
    upgrade = [*services["registry-upgrade"]["command"][1:4], registry_url]
    release = services["registry-release"]["command"][1:]
    release[release.index("--from") + 1] = registry_url
    out = tmp_path / "presets.db"
    release[release.index("--out") + 1] = str(out)
    code = f"""
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in {GPU_STACK!r}:
            raise ImportError('not in the app image: ' + name)
sys.meta_path.insert(0, Block())
from presetdb.cli import main
for argv in ({upgrade!r}, {release!r}):
    sys.argv = ['presetdb', *argv]
    try:
        main()
    except SystemExit as exc:
        assert not exc.code, (argv, exc.code)
"""
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    checked = CliRunner().invoke(app, ["db", "check", "--db", str(out)])
    assert checked.exit_code == 0 and checked.output.strip().endswith("ok"), checked.output
    manifest = json.loads((tmp_path / "presets.db.manifest.json").read_text())
    assert manifest["source"].startswith("postgresql+psycopg://") and manifest["counts"]
