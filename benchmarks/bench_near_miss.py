"""What counting near misses costs a call (CPU, no GPU needed).

Times, with `timeit`, the two places a call pays for the near-miss ledger, against what
the same call paid before: the call memo's entry (`hooks.memo_entry`: the exact match's
runner is kept as it is, a near miss's is wrapped to count) and `hooks.serve` on the
public path (one attribute test for an exact match, a count for a near miss). The
runner is a no-op, so the numbers are the bookkeeping alone.

    .venv/bin/python benchmarks/bench_near_miss.py benchmarks/results/cpu
"""

from __future__ import annotations

import json
import platform
import sys
import timeit
from pathlib import Path
from types import SimpleNamespace

from presetdb.runtime.ledger import NearMiss, Tally

N = 1_000_000


def _ns(stmt: object, number: int = N) -> float:
    best = min(timeit.repeat(stmt, number=number, repeat=5))  # type: ignore[arg-type]
    return best / number * 1e9


def main(out: Path) -> None:
    from presetdb.helion import hooks

    def run(*args: object) -> None:
        return None

    entry = SimpleNamespace(run=run, current=lambda: True)
    tally = Tally(NearMiss("k", "p", "{}", "p", "{}", "nearest", "default", {}, {}))
    exact_choice = SimpleNamespace(tally=None, far_fields={}, preset=SimpleNamespace(config_sha256="x"))
    near_choice = SimpleNamespace(tally=tally, far_fields={}, preset=SimpleNamespace(config_sha256="x"))
    exact_entry = hooks.memo_entry(exact_choice, entry)  # type: ignore[arg-type]
    near_entry = hooks.memo_entry(near_choice, entry)  # type: ignore[arg-type]
    args = (1, 2, 3)
    results = {
        "memo hit, exact match (runner untouched)": _ns(lambda: exact_entry.run(*args)),
        "memo hit, near miss (counted)": _ns(lambda: near_entry.run(*args)),
        "serve, exact match": _ns(lambda: hooks.serve(None, None, (), exact_choice)),  # type: ignore[arg-type]
        "serve, near miss (counted)": _ns(lambda: hooks.serve(None, None, (), near_choice)),  # type: ignore[arg-type]
    }
    out.mkdir(parents=True, exist_ok=True)
    doc = {"python": sys.version.split()[0], "machine": platform.processor() or platform.machine(), "ns_per_call": results}
    (out / "bench_near_miss.json").write_text(json.dumps(doc, indent=2) + "\n")
    lines = ["| path | ns per call |", "|---|---|", *(f"| {k} | {v:.0f} |" for k, v in results.items())]
    (out / "bench_near_miss.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "benchmarks/results/cpu"))
