"""The README's ship flow, end to end, from a wheel installed in a fresh venv (issue 20,
item 3): `presetdb new-migration` in a user's project, `presetdb build`, then `list`,
`diff`, `pick` and a real kernel call on the built file with the *installed* package.

The user's data migration lives in the project's ./presetdb-data (never in the installed
package) and its revision in `presetdb_data_version`, so the package still knows the
file's schema revision and opens it.

The fresh venv reuses the project venv's dependencies (torch, helion, ...) through a .pth
line instead of reinstalling them; presetdb itself comes only from the wheel.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "tests" / "fixtures" / "rms_norm_nvidia_h100.json"

pytestmark = pytest.mark.slow


def _run(args: list[str | Path], *, cwd: Path, env: dict[str, str], timeout: float = 600) -> str:
    proc = subprocess.run(
        [str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert proc.returncode == 0, f"{args}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc.stdout


@pytest.fixture(scope="module")
def fresh_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("wheel")
    src = work / "src"
    # A clean copy of the tracked tree: no .venv, no build/ leftovers in the wheel.
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    for name in files:
        if (ROOT / name).is_file():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, src / name)
    env = {**os.environ, "PIP_NO_INDEX": "1"}
    # A release builds the embedded default db before the wheel (it is not committed).
    embedded = src / "presetdb" / "data" / "default.db"
    _run([sys.executable, "-c", f"from presetdb.offline.build import build_database; build_database({str(embedded)!r})"],
         cwd=work, env=env)
    _run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--skip-dependency-check", "--outdir", work / "dist", src], cwd=work, env=env)
    wheel = next((work / "dist").glob("presetdb-*.whl"))
    venv = work / "venv"
    _run([sys.executable, "-m", "venv", venv], cwd=work, env=env)
    site = Path(
        subprocess.run(
            [venv / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()
    )
    # The project venv's packages, after the fresh venv's own (so the wheel's presetdb wins;
    # the project venv's .pth files, e.g. presetdb's editable finder, are not processed).
    (site / "project_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _run([venv / "bin" / "python", "-m", "pip", "install", "-q", "--no-deps", "--no-index", wheel], cwd=work, env=env)
    return venv


def test_readme_ship_flow_from_a_wheel(fresh_venv: Path, tmp_path: Path) -> None:
    project = tmp_path / "myproject"
    project.mkdir()
    shutil.copy(RESULTS, project / "relu_h100.json")
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("PRESETDB_") and k not in ("PYTHONPATH",)
    }
    env.update(PRESETDB_CACHE_DIR=str(tmp_path / "cache"), PRESETDB_USER_DB=str(tmp_path / "overlay.db"), COLUMNS="300")
    bin_ = fresh_venv / "bin"
    where = _run([bin_ / "python", "-c", "import presetdb; print(presetdb.__file__)"], cwd=project, env=env)
    assert where.startswith(str(fresh_venv)), f"presetdb not from the wheel: {where}"

    out = _run([bin_ / "presetdb", "new-migration", "relu_h100.json", "-m", "my rms_norm on H100"], cwd=project, env=env)
    assert "u0001" in out
    assert (project / "presetdb-data" / "seed_data" / "relu_h100.json").is_file()
    installed = Path(where.strip()).parent
    assert not list(installed.rglob("*relu_h100*")), "new-migration wrote into the installed package"

    _run([bin_ / "presetdb", "build", "--out", "dist/presets.db"], cwd=project, env=env)
    db = project / "dist" / "presets.db"
    manifest = json.loads((project / "dist" / "presets.db.manifest.json").read_text())
    assert manifest["data_revision"] == "u0001"

    serve = {**env, "PRESETDB_PATH": str(db)}
    check = _run([bin_ / "presetdb", "db", "check", "--db", db], cwd=project, env=serve)
    assert check.rstrip().endswith("ok"), check
    listed = _run([bin_ / "presetdb", "list", "-k", "rms_norm", "-p", "nvidia_h100", "--format", "json"], cwd=project, env=serve)
    rows = json.loads(listed)
    ours = [r for r in rows if r["source_file"] == "relu_h100.json"] if "source_file" in rows[0] else [
        r for r in rows if r["revision"] == "u0001"
    ]
    assert ours, rows
    entries = json.loads(RESULTS.read_text())["entries"]
    default_db = _run(
        [bin_ / "python", "-c", "from presetdb.store.default_db import default_db_path; print(default_db_path())"],
        cwd=project, env=env,
    ).strip()
    diff = _run([bin_ / "presetdb", "diff", default_db, db, "--format", "json"], cwd=project, env=env)
    changes = json.loads(diff)["changes"]
    assert {c["shape_key"] for c in changes if c["change"] != "unchanged"}, changes

    key = next(e["key"] for e in entries if e["key"])
    picked = _run(
        [bin_ / "presetdb", "pick", "-k", "rms_norm", "-p", "nvidia_h100", "-s", json.dumps(key), "--format", "json"],
        cwd=project, env=serve,
    )
    choice = json.loads(picked)
    assert choice["revision"] == "u0001" and choice["layer"] == "deployment", choice

    # A real kernel call in the installed package, served from the built file.
    call = (
        "import json, torch, presetdb.kernels\n"
        "from presetdb.helion.registry import last_choice\n"
        f"key = {key!r}\n"
        "dtype = getattr(torch, key['dtype'])\n"
        "x = torch.randn(key['num_tokens'], key['hidden'], dtype=dtype); w = torch.randn(key['hidden'], dtype=dtype)\n"
        "out = torch.ops.presetdb.rms_norm(x, w, 1e-6)\n"
        "ref = torch.nn.functional.rms_norm(x.float(), (key['hidden'],), w.float(), 1e-6)\n"
        "assert torch.allclose(out.float(), ref, atol=2e-2, rtol=2e-2)\n"
        "c = last_choice('rms_norm')\n"
        "print(json.dumps({'layer': c.layer, 'revision': c.preset.revision, 'match': c.match}))\n"
    )
    kernel_env = {**serve, "TRITON_INTERPRET": "1", "PRESETDB_PLATFORM": "nvidia_h100", "PRESETDB_DISABLE_OVERLAY": "1"}
    served = json.loads(_run([bin_ / "python", "-c", call], cwd=project, env=kernel_env).strip().splitlines()[-1])
    assert served == {"layer": "deployment", "revision": "u0001", "match": "exact"}, served
