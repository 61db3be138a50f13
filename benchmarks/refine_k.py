"""How many stored configs does refine need to time? (CPU; reads a finished refine's files.)

`presetdb refine --k K` times Helion's default and the K distinct configs of the nearest
stored keys. Each timed config is in the results file (winner and runners-up, with their
times); this script ranks, for every refined key, those configs by how near the stored
key they came from (the same `StoredConfigs.nearest` order refine used, over the db the
refine read), and reports what a smaller K would have chosen: the best time among
Helion's default and the configs of rank <= K, over the winner's time (1.0: same choice).

    python3 benchmarks/refine_k.py benchmarks/results/nvidia_h200/seed_v2/refine_matmul.json \
        --kernel matmul --candidates-platform nvidia_h100 --head 0012

A timed config is matched to a candidate by equal config, else by equal config without
its block sizes (refine normalizes a stored config for the shape it times, which can clamp
block sizes); one that matches no candidate of rank <= K is never counted as one.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
from pathlib import Path
from typing import Any


def _loose(config: dict[str, Any]) -> str:
    return json.dumps({k: v for k, v in config.items() if k != "block_sizes"}, sort_keys=True)


def _rank(config: dict[str, Any], candidates: list[dict[str, Any]]) -> int | None:
    for i, cand in enumerate(candidates, start=1):
        if cand == config:
            return i
    for i, cand in enumerate(candidates, start=1):
        if _loose(cand) == _loose(config):
            return i
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path)
    parser.add_argument("--kernel", required=True)
    parser.add_argument("--candidates-platform", required=True, help="the platform whose stored configs refine timed")
    parser.add_argument("--head", required=True, help="migration head of the db refine read its candidates from")
    parser.add_argument("--k", type=int, default=8, help="the --k the refine ran with")
    args = parser.parse_args()

    import presetdb.kernels  # noqa: F401  (registers the example kernels)
    from presetdb.helion.registry import get_kernel
    from presetdb.offline.refine import StoredConfigs
    from presetdb.store import migrate

    spec = get_kernel(args.kernel).key_spec
    db = Path(tempfile.mkdtemp()) / f"head_{args.head}.db"
    migrate.upgrade(db, args.head)
    stored = StoredConfigs.load(db, args.kernel, spec, args.candidates_platform)
    entries = json.loads(args.results.read_text())["entries"]
    ratios: dict[int, list[float]] = {k: [] for k in range(args.k + 1)}
    for entry in entries:
        candidates = [c.config for c in stored.nearest(entry["key"], args.k)]
        timed = [(entry["latency_ms"], entry["config"])] + [(r["latency_ms"], r["config"]) for r in entry.get("runners_up", [])]
        ranked = [(ms, _rank(config, candidates)) for ms, config in timed]
        for k, values in ratios.items():
            best = min([ms for ms, rank in ranked if rank is not None and rank <= k] + [entry["default_ms"]])
            values.append(best / entry["latency_ms"])
    print(f"{args.results}: {len(entries)} keys; best time with K nearest configs / refine's winner (--k {args.k})")
    print("K  geomean  worst  keys_same(<=1.001)")
    for k, values in ratios.items():
        geomean = math.exp(sum(math.log(v) for v in values) / len(values))
        same = sum(v <= 1.001 for v in values)
        print(f"{k:<2} {geomean:7.4f} {max(values):6.3f}  {same}/{len(values)}")


if __name__ == "__main__":
    main()
