#!/usr/bin/env bash
# Seed tuning on a GPU (device tool). Resumable across calls: partial results files are
# carried in $CARRY (default benchmarks/results/<device>/tune) and copied to $OUT first;
# `presetdb tune` skips shapes already in a file. Stops starting work after $DEADLINE s.
#   usage: benchmarks/gpu/seed_tune.sh DEVICE_DIR DEADLINE_S BUDGET_ELEMWISE BUDGET_MATMUL [KERNEL...]
set -u
# Benchmarks in-process: a spawned benchmark worker re-imports torch per shape (~10 s).
export HELION_AUTOTUNE_BENCHMARK_SUBPROCESS=0
dir=$1; deadline=$2; b_elem=$3; b_mm=$4; shift 4
kernels=${*:-rms_norm silu_mul softmax matmul}
out=${OUT:-out}; mkdir -p "$out"
start=$(date +%s)
for k in $kernels; do
  [ -f "$dir/$k.json" ] && cp "$dir/$k.json" "$out/$k.json"
  left=$(( deadline - ($(date +%s) - start) ))
  [ "$left" -le 30 ] && { echo "deadline: skipping $k"; continue; }
  budget=$b_elem; [ "$k" = matmul ] && budget=$b_mm
  echo "== $k (budget ${budget}s/shape, ${left}s left)"
  timeout -s INT "$left" python3 -P -m presetdb tune "$k" --shapes "benchmarks/shapes/seed_$k.json" \
    --effort quick --budget-seconds "$budget" --seed 1234 --out "$out/$k.json" 2>&1 | grep -v '━' | tail -40
done
