"""One held-out coverage report from several `coverage_eval.py` runs on the same device.

A GPU call is at most 10 minutes, so the held-out set is measured in parts. Each part is a
coverage_eval.json; this writes the union (coverage_eval.json + coverage_eval.md, the same
report as one run) with a "Sources" section naming the run each row comes from. Files are
taken in the order given: a shape measured by an earlier file keeps that row; a failure is
kept only when no file measured the shape. Each row's ratios were timed side by side in its
own run; rows of different runs are never divided by each other.

    python3 benchmarks/gpu/coverage_merge.py OUT_DIR RUN1/coverage_eval.json RUN2/coverage_eval.json ...

Runs measured against different dbs may only be merged when the db does not change what the
merged rows are served (say which in the results' README): `db` lists each run's db.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from coverage_eval import ROOT, parse_shape_id, shape_id, write


def _shape(row: dict[str, Any]) -> str:
    return shape_id(row["kernel"], row["key"])


def _skipped(entry: str) -> str:
    """A run's skipped entry ('[autotune ]kernel {key}', key as measured) as a `shape_id`."""
    return shape_id(*parse_shape_id(entry))


def _name(path: Path) -> str:
    path = path.resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def merge(paths: list[Path]) -> dict[str, Any]:
    runs = [(path, json.loads(path.read_text())) for path in paths]
    devices = {run["device"] for _, run in runs}
    if len(devices) != 1:
        raise SystemExit(f"runs on different devices ({', '.join(sorted(devices))}): ratios are per device; merge one device's runs")
    first = runs[0][1]
    measured: dict[str, dict[str, Any]] = {}
    failed: dict[str, dict[str, Any]] = {}
    for path, run in runs:
        for row in run["rows"]:
            target = failed if "error" in row else measured
            if _shape(row) not in measured and _shape(row) not in target:
                target[_shape(row)] = {**row, "run": _name(path)}
    rows = list(measured.values()) + [r for s, r in failed.items() if s not in measured]
    done = set(measured) | set(failed) | {shape_id(f"autotune {a['kernel']}", a["key"]) for _, r in runs for a in r["autotune"]}
    skipped = sorted({_skipped(s) for _, run in runs for s in run["skipped"]} - done)
    return {
        **{k: first[k] for k in ("device", "platform", "method", "limits", "k", "shapes_file")},
        "db": [f"{_name(path)}: {run['db']}" for path, run in runs],
        "torch": sorted({run["torch"] for _, run in runs}),
        "rows": rows,
        "autotune": [a for _, run in runs for a in run["autotune"]],
        "skipped": skipped,
        "wall_seconds": round(sum(run.get("wall_seconds") or 0 for _, run in runs), 1),
        "merged_from": [_name(path) for path, _ in runs],
    }


def main() -> int:
    if len(sys.argv) < 3:
        raise SystemExit(__doc__)
    out = Path(sys.argv[1])
    result = merge([Path(p) for p in sys.argv[2:]])
    write(result, out)
    lines = ["", "## Sources", "", "dbs: " + "; ".join(result["db"]), ""]
    lines += [f"- {r['kernel']} {json.dumps(r['key'])}: {r['run']}" + (" (failed)" if "error" in r else "") for r in result["rows"]]
    with (out / "coverage_eval.md").open("a") as fh:
        fh.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
