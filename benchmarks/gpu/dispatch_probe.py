"""Where does presetdb's per-call host time go on a GPU? Counts slow-path calls and
profiles 3,000 fast-path calls of a tiny rms_norm (diagnostic for bench_dispatch)."""

from __future__ import annotations

import cProfile
import io
import os
import pstats
import sys
import tempfile
import time
from pathlib import Path

if __name__ == "__main__":
    tmp = Path(tempfile.mkdtemp())
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from bench_dispatch import CONFIG, _setup_store  # type: ignore[import-not-found]

    _setup_store(tmp)
    import torch

    import presetdb.kernels  # noqa: F401
    from presetdb.integrations.helion import get_kernel

    rk = get_kernel("rms_norm")
    x = torch.randn(4, 4096, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(4096, device="cuda", dtype=torch.bfloat16)
    slow = 0
    original = rk._slow

    def counting(*a, **k):
        global slow
        slow += 1
        return original(*a, **k)

    rk._slow = counting
    for _ in range(50):
        rk(x, w, 1e-6)
    torch.cuda.synchronize()
    slow = 0
    t = time.perf_counter()
    for _ in range(3000):
        rk(x, w, 1e-6)
    torch.cuda.synchronize()
    print(f"slow-path calls in 3000: {slow}; {1e6 * (time.perf_counter() - t) / 3000:.1f} us/call")
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(3000):
        rk(x, w, 1e-6)
    prof.disable()
    torch.cuda.synchronize()
    s = io.StringIO()
    pstats.Stats(prof, stream=s).sort_stats("tottime").print_stats(25)
    print(s.getvalue()[:6000])
    print(os.environ.get("PRESETDB_PATH"), CONFIG)
