#!/usr/bin/env bash
# One GPU run for [redesign] (docs/benchmarks.md "Dispatch"; results under $OUT):
#   1. the versions and the fast-path gate as `presetdb platform` reports them;
#   2. benchmarks/gpu_check_helion.py (every example kernel through torch.ops.presetdb, CUDA
#      graphs, torch.compile, miss/quarantine/autotune policies) with the gate's own answer;
#   3. the GPU-relevant test files on the real device (hot path, call memo, public path,
#      tripwire against the installed Helion/Triton);
#   4. bench_dispatch: fast path on, public path (fast path off), keyed Helion, side by side;
#   5. first-call latency in fresh processes: this checkout and the pre-redesign one in .old/.
# Usage on the device machine, after installing .whl/ into /tmp/site:
#   bash benchmarks/gpu/run_redesign.sh
set -uo pipefail
OUT=${OUT:-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
# -P: never import presetdb from the checkout (its migrations map in only when installed)
python3 -P -c 'from importlib.metadata import version; import torch; print({p: version(p) for p in ("torch", "triton", "helion", "presetdb")}, torch.cuda.get_device_name())' | tee "$OUT/versions.txt"
python3 -P -m presetdb platform | tee "$OUT/platform.txt"
OUT="$OUT/check" timeout 300 python3 benchmarks/gpu_check_helion.py > "$OUT/check.log" 2>&1
echo "gpu_check_helion exit $?"; tail -5 "$OUT/check.log"
timeout 240 python3 -P -m pytest -q -p no:cacheprovider -x tests/test_helion_gpu.py tests/test_accel_tripwire.py \
  tests/test_call_memo.py tests/test_public_path.py tests/test_helion_dispatch.py > "$OUT/pytest_gpu.log" 2>&1
echo "pytest exit $?"; tail -3 "$OUT/pytest_gpu.log"
timeout 200 python3 benchmarks/bench_dispatch.py --out "$OUT/dispatch" > "$OUT/dispatch.log" 2>&1
echo "bench_dispatch exit $?"; tail -16 "$OUT/dispatch.log"
timeout 120 python3 benchmarks/bench_first_call.py --samples 3 --label after --out "$OUT/first_call" 2>&1 | tail -3
if [ -d .old/presetdb ]; then
  timeout 120 python3 benchmarks/bench_first_call.py --samples 3 --label before --pythonpath .old \
    --out "$OUT/first_call" 2>&1 | tail -3
fi
