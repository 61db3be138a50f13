"""The wheel works on its own: migrations and seed data ship inside it, and `db upgrade`
runs from an install that is not the checkout.

The test venv reuses the project venv's dependencies through a .pth file (no network,
no pip), but gets presetdb itself only from the unzipped wheel, so the editable install
of the checkout is not on its path.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MUST_SHIP = (
    "presetdb/__init__.py",
    "presetdb/__main__.py",
    "presetdb/cli/__init__.py",
    "presetdb/migrations/env.py",
    "presetdb/migrations/script.py.mako",
    "presetdb/migrations/versions/0001_schema.py",
    "presetdb/seed_data/__init__.py",
)
pytestmark = pytest.mark.slow


def _source_packages() -> set[str]:
    """Every importable package directory of the checkout, as it is named in the wheel."""
    found = set()
    for top, prefix in (
        ("presetdb", "presetdb"),
        ("migrations", "presetdb/migrations"),
        ("seed_data", "presetdb/seed_data"),
    ):
        for init in (ROOT / top).rglob("__init__.py"):
            if "__pycache__" not in init.parts:
                found.add(
                    "/".join([prefix, *init.parent.relative_to(ROOT / top).parts])
                )
    return found


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Build from a copy: setuptools writes build/ and *.egg-info next to the sources.
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md"):
        if (ROOT / name).exists():
            shutil.copy2(ROOT / name, src / name)
    ignore = shutil.ignore_patterns(
        "__pycache__", "*.pyc", "*.egg-info", "*.db", "*.db-*"
    )
    for name in ("presetdb", "migrations", "seed_data"):
        shutil.copytree(ROOT / name, src / name, ignore=ignore)
    out = tmp_path_factory.mktemp("dist")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "build",
            "--wheel",
            "--no-isolation",
            "--skip-dependency-check",
            "--outdir",
            str(out),
            str(src),
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, (
        f"building the wheel failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    )
    wheels = list(out.glob("presetdb-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def test_wheel_contains_migrations_and_seed_data(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = [n for n in MUST_SHIP if n not in names]
    assert not missing, (
        f"the wheel lacks {missing}; check [tool.setuptools] in pyproject.toml"
    )
    versions = sorted(
        p.name for p in (ROOT / "migrations" / "versions").glob("[0-9]*.py")
    )
    shipped = sorted(
        Path(n).name
        for n in names
        if n.startswith("presetdb/migrations/versions/")
        and n.endswith(".py")
        and not n.endswith("__init__.py")
    )
    assert shipped == versions, "every revision file must ship in the wheel"
    seeds = sorted(p.name for p in (ROOT / "seed_data").glob("*.json"))
    shipped_seeds = sorted(
        Path(n).name
        for n in names
        if n.startswith("presetdb/seed_data/") and n.endswith(".json")
    )
    assert shipped_seeds == seeds, "every seed file must ship in the wheel"
    packages = {str(Path(n).parent) for n in names if n.endswith("/__init__.py")}
    unlisted = sorted(_source_packages() - packages)
    assert not unlisted, (
        f"packages missing from the wheel: {unlisted}; add them to `packages` under "
        "[tool.setuptools] in pyproject.toml"
    )


@pytest.fixture(scope="module")
def wheel_python(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("wheel venv")
    venv.EnvBuilder(with_pip=False, symlinks=os.name != "nt").create(home)
    python = home / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    purelib = Path(
        subprocess.run(
            [
                str(python),
                "-c",
                "import sysconfig; print(sysconfig.get_paths()['purelib'])",
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(purelib)
    # Dependencies from the project venv: a plain path line, so that directory's own
    # .pth files (the editable install's finder among them) are not run.
    (purelib / "zz_presetdb_test_deps.pth").write_text(
        sysconfig.get_paths()["purelib"] + "\n"
    )
    return python


def _run(python: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSAFEPATH")
    }
    env["COLUMNS"] = "250"
    return subprocess.run(
        [str(python), *args],
        cwd=cwd,
        env=env,
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_installed_wheel_runs_db_commands(wheel_python: Path, tmp_path: Path) -> None:
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    assert ROOT not in cwd.parents

    where = _run(
        wheel_python,
        cwd,
        "-c",
        "import presetdb, presetdb.store.migrate as m; print(presetdb.__file__); print(m.migrations_dir())",
    )
    assert where.returncode == 0, where.stderr
    module_file, migrations = (Path(line) for line in where.stdout.splitlines())
    home = wheel_python.parents[1]
    assert home in module_file.parents, (
        f"presetdb imported from {module_file}, not the wheel"
    )
    assert ROOT not in module_file.parents
    assert home in migrations.parents and ROOT not in migrations.parents

    db = cwd / "shipped presets.db"
    upgrade = _run(
        wheel_python, cwd, "-m", "presetdb", "db", "upgrade", "--db", str(db)
    )
    assert upgrade.returncode == 0, upgrade.stdout + upgrade.stderr
    from presetdb.store import migrate

    head = migrate.head()
    assert f"-> {head}" in upgrade.stdout

    current = _run(
        wheel_python, cwd, "-m", "presetdb", "db", "current", "--db", str(db)
    )
    assert current.returncode == 0, current.stdout + current.stderr
    assert f"revision {head}" in current.stdout and "at head" in current.stdout

    check = _run(wheel_python, cwd, "-m", "presetdb", "db", "check", "--db", str(db))
    assert check.returncode == 0, check.stdout + check.stderr
    assert " ".join(check.stdout.split()).endswith("ok")
    assert migrate.check(db).ok
