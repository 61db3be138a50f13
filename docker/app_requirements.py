"""Print pip requirements for the presetdb images, read from pyproject.toml at image
build time so that the images never drift from the package's declared dependencies.

    python docker/app_requirements.py pyproject.toml        # app image: no GPU stack
    python docker/app_requirements.py --gpu pyproject.toml  # tune image: the GPU stack + the farm extra

The app image (build, audit, datasette, the registry's one-shot services) leaves out
torch, triton and helion: the store, build and audit layers never import them
(tests/test_compose.py checks that). It adds datasette from the dev extra and the whole
`registry` extra (psycopg, for `--db postgresql+psycopg://...` and `build --from`).
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

GPU_STACK = {"torch", "triton", "helion"}
APP_EXTRAS = {"datasette"}  # taken from the dev extra
APP_EXTRA_GROUPS = ("registry",)  # extras installed whole
GPU_EXTRAS = ("farm",)  # the tune image is also a tuning-farm node (Ray; docs/farm.md)


def _name(requirement: str) -> str:
    return re.split(r"[\s<>=!~;\[]", requirement, maxsplit=1)[0].lower()


def requirements(pyproject: Path, *, gpu: bool) -> list[str]:
    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    deps = list(project["dependencies"])
    if gpu:
        extras = project.get("optional-dependencies", {})
        return [d for d in deps if _name(d) in GPU_STACK] + [d for e in GPU_EXTRAS for d in extras.get(e, [])]
    optional = project.get("optional-dependencies", {})
    extras = optional.get("dev", [])
    groups = [d for group in APP_EXTRA_GROUPS for d in optional.get(group, [])]
    return [d for d in deps if _name(d) not in GPU_STACK] + [
        d for d in extras if _name(d) in APP_EXTRAS
    ] + groups


def main(argv: list[str]) -> int:
    gpu = "--gpu" in argv
    paths = [a for a in argv if a != "--gpu"]
    if len(paths) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    print("\n".join(requirements(Path(paths[0]), gpu=gpu)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
