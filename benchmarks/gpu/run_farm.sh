#!/usr/bin/env bash
# One GPU call: `presetdb tune --executor ray` vs `--executor local` on one GPU (issue
# [farm]), then warm-started vs cold search (issue [coverage]). Results in $OUT/farm_run.tgz.
# Needs the Ray wheel in .whl/ too (python3 benchmarks/gpu/ray_wheel.py: a stripped one that fits
# the 64 MiB carry limit). On the device machine, after installing .whl/:
#   bash benchmarks/gpu/run_farm.sh [BUDGET_S]      (FARM_WORKER=shape|gpu, default gpu)
set -uo pipefail
FINAL=${OUT:-out}
export OUT="$FINAL/r"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HELION_AUTOTUNE_BENCHMARK_SUBPROCESS=0 RAY_USAGE_STATS_ENABLED=0
budget=${1:-15}
python3 -P -c 'from importlib.metadata import version; import torch; print({p: version(p) for p in ("torch", "triton", "helion", "presetdb", "ray")}, torch.cuda.get_device_name())' | tee "$OUT/versions.txt"
# Each tune run gets at most a share of the call (Ctrl-C past it: finished shapes kept), so a
# slow run still leaves both results files and the side-by-side re-measure.
farm_timeout=${FARM_TIMEOUT:-420}
timeout "$farm_timeout" python3 -P benchmarks/gpu/farm_vs_local.py "$OUT/farm" --budget-seconds "$budget" \
  --run-limit $(( (farm_timeout - 60) / 2 )) --worker "${FARM_WORKER:-gpu}" > "$OUT/farm.log" 2>&1
echo "farm_vs_local exit $?"; tail -20 "$OUT/farm.log"
if [ "${WARM_COLD:-1}" = 1 ]; then
  timeout 150 python3 -P benchmarks/gpu/warm_vs_cold.py "$OUT/warm_cold" --budget-seconds 20 > "$OUT/warm_cold.log" 2>&1
  echo "warm_vs_cold exit $?"; tail -8 "$OUT/warm_cold.log"
fi
tar czf "$FINAL/farm_run.tgz" --exclude='*triton*cache*' -C "$FINAL" r && rm -rf "$OUT"
