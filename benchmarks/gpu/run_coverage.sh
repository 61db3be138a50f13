#!/usr/bin/env bash
# One GPU call (under 10 minutes): the dispatch bench (fast path, public path, keyed Helion
# side by side), the held-out coverage evaluation (far policies vs Helion's default vs
# PyTorch, refine's cost vs a quick autotune) and warm-started vs cold search. The tarball
# $OUT/coverage_run.tgz is rewritten after every step, so a cut-short call still returns
# what finished. Steps: STEPS="dispatch coverage warm" (default), "probe" (only when named:
# large_shape_probe.py on PROBE_KERNEL, PROBE_KEY, default the softmax shape over 256,000
# columns that never finished, for up to PROBE_TIMEOUT s, default 300); WARM_KERNELS, WARM_TIMEOUT (default 130 s; written per kernel); for the
# coverage step COVERAGE_DB (default: the shipped db), COVERAGE_KERNELS (default: all),
# COVERAGE_AUTOTUNE (shapes quick-autotuned for the cost comparison, default 1),
# COVERAGE_SHAPE_BUDGET (seconds one shape's rerank may spend, default 60; checked between
# compiles), COVERAGE_SHAPE_LIMIT (seconds after which a shape still running is recorded as
# failed and the next attempt goes on without it, default 240).
# On the device machine, after installing .whl/ into /tmp/site:
#   bash benchmarks/gpu/run_coverage.sh
set -uo pipefail
FINAL=${OUT:-out}
export OUT="$FINAL/r"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HELION_AUTOTUNE_BENCHMARK_SUBPROCESS=0
steps=${STEPS:-dispatch coverage warm}
start=$(date +%s)
pack() { tar czf "$FINAL/coverage_run.tgz" --exclude='*triton*cache*' -C "$FINAL" r; }
DB=${COVERAGE_DB:-$(python3 -P -c 'from presetdb.store.default_db import embedded_path; print(embedded_path())')}
python3 -P -c 'from importlib.metadata import version; import torch; print({p: version(p) for p in ("torch", "triton", "helion", "presetdb")}, torch.cuda.get_device_name())' | tee "$OUT/versions.txt"
python3 -P -m presetdb platform | tee "$OUT/platform.txt"
if [[ " $steps " == *" probe "* ]]; then  # where one held-out shape's time goes
  key=${PROBE_KEY:-'{"dtype": "bfloat16", "n": 256000, "num_rows": 4096}'}
  timeout ${PROBE_TIMEOUT:-300} python3 -P benchmarks/gpu/large_shape_probe.py "$OUT/probe" "${PROBE_KERNEL:-softmax}" "$key" \
    > "$OUT/probe.log" 2>&1
  echo "large_shape_probe exit $?"; tail -8 "$OUT/probe.log" | cut -c1-300; pack
fi
if [[ " $steps " == *" dispatch "* ]]; then
  timeout 110 python3 -P benchmarks/bench_dispatch.py --out "$OUT/dispatch" > "$OUT/dispatch.log" 2>&1
  echo "bench_dispatch exit $?"; tail -16 "$OUT/dispatch.log"; pack
fi
if [[ " $steps " == *" coverage "* ]]; then
  # a shape whose CUDA-graph capture breaks the context (exit 3), or that outlasts
  # COVERAGE_SHAPE_LIMIT seconds (exit 4), ends its process: go on in a fresh one
  for attempt in 1 2 3 4 5 6; do
    left=$(( ${COVERAGE_DEADLINE:-330} - ($(date +%s) - start) ))
    [ "$left" -le 40 ] && break
    timeout $(( left + 60 )) python3 -P benchmarks/gpu/coverage_eval.py --db "$DB" --out "$OUT/coverage" \
      --deadline "$left" --autotune "${COVERAGE_AUTOTUNE:-1}" --autotune-budget 30 --shape-budget "${COVERAGE_SHAPE_BUDGET:-60}" --shape-hard-limit "${COVERAGE_SHAPE_LIMIT:-240}" \
      ${COVERAGE_KERNELS:+--kernels "$COVERAGE_KERNELS"} --resume "$OUT/coverage/coverage_eval.json" \
      >> "$OUT/coverage.log" 2>&1
    rc=$?; echo "coverage_eval attempt $attempt exit $rc"
    [ "$rc" -ne 3 ] && [ "$rc" -ne 4 ] && break
  done
  grep -E "^(rms_norm|silu_mul|softmax|matmul|autotune|CUDA|\| (nearest|default|rerank) )" "$OUT/coverage.log" | cut -c1-220 | tail -40; pack
fi
if [[ " $steps " == *" warm "* ]] && [ $(( $(date +%s) - start )) -lt ${WARM_BEFORE:-420} ]; then
  timeout ${WARM_TIMEOUT:-130} python3 -P benchmarks/gpu/warm_vs_cold.py "$OUT/warm_cold" --budget-seconds ${WARM_BUDGET:-12} \
    --kernels "${WARM_KERNELS:-rms_norm,silu_mul}" > "$OUT/warm_cold.log" 2>&1
  echo "warm_vs_cold exit $?"; tail -8 "$OUT/warm_cold.log"; pack
fi
rm -rf "$OUT"
