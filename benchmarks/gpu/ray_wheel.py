"""Put a Ray wheel the GPU machines can carry into .whl/ (for benchmarks/gpu/run_farm.sh).

The GPU machines have no package registry and a call carries at most 64 MiB; Ray's cp312
wheel is ~80 MB, 30 MB of it Java jars a Python driver never loads. This downloads the
wheel the `farm` extra pins and rewrites it without the jars, RLlib, ray.llm and source
maps (their RECORD lines dropped too), ~43 MB. Ray's other needs are on the GPU image
(KINDS.md), except jsonschema, which ../shared/tools/gpu_wheels.py already carries.

    python3 ../shared/tools/gpu_wheels.py && python3 benchmarks/gpu/ray_wheel.py
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

DROP_PREFIXES = ("ray/jars/", "ray/rllib/", "ray/llm/")
PLATFORMS = ("manylinux2014_x86_64", "manylinux_2_17_x86_64", "manylinux_2_28_x86_64")


def dropped(name: str) -> bool:
    return name.startswith(DROP_PREFIXES) or name.endswith(".map")


def main() -> int:
    out = Path(".whl")
    out.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        command = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                   "--python-version", "3.12", "--implementation", "cp", "-d", tmp, "ray>=2.60,<3"]
        for platform in PLATFORMS:
            command += ["--platform", platform]
        subprocess.run(command, check=True)
        (wheel,) = Path(tmp).glob("ray-*.whl")
        for old in out.glob("ray-*.whl"):
            old.unlink()
        with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(out / wheel.name, "w", zipfile.ZIP_DEFLATED) as dst:
            for info in src.infolist():
                if dropped(info.filename):
                    continue
                data = src.read(info.filename)
                if info.filename.endswith(".dist-info/RECORD"):
                    lines = data.decode().splitlines()
                    data = "\n".join(line for line in lines if not dropped(line.split(",")[0])).encode() + b"\n"
                dst.writestr(info, data, compress_type=zipfile.ZIP_DEFLATED)
    size = (out / wheel.name).stat().st_size / 2**20
    print(f"{out / wheel.name}: {size:.1f} MiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
