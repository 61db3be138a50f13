#!/usr/bin/env bash
# Seed presets v2 on a GPU (issue [seed-v2]): refine the v2 tuning grids
# (benchmarks/shapes/tune_v2_<kernel>.json, in refine_order_v2_<kernel>.json's order where
# that exists) with graph timing. Resumable: earlier partial results in DEVICE_DIR
# (refine_KERNEL.json, e.g. benchmarks/results/nvidia_h200/seed_v2) are copied in first and
# `presetdb refine` skips finished shapes. Stops starting work after DEADLINE_S seconds.
#   bash benchmarks/gpu/run_seed_v2.sh DEVICE_DIR DEADLINE_S [KERNEL...]
# CANDIDATES_FROM=PLATFORM times that platform's stored configs instead of the GPU's own
# (`presetdb refine --candidates-from`; e.g. nvidia_h100 on an H200: the same SM 9.0
# architecture, and the H100's presets are the v2 ones, refined with graph timing).
# K: stored configs timed per key (`--k`, default 8; benchmarks/refine_k.py: on the H200's
# 31 matmul keys, K=4 would have kept the same preset on 29 and lost at most 0.9 %).
# HARD_LIMIT (default 150 s): a key still refining then is abandoned for good (recorded in
# the results file) and refine resumes with the next (benchmarks/gpu/until_deadline.sh).
set -uo pipefail
. "$(dirname "$0")/until_deadline.sh"
dir=$1; deadline=$2; shift 2
kernels=${*:-rms_norm silu_mul softmax matmul}
FINAL=${OUT:-out}
out="$FINAL/seed_v2"; mkdir -p "$out"
export PYTHONUNBUFFERED=1 HELION_AUTOTUNE_BENCHMARK_SUBPROCESS=0  # as run_search_refine.sh: no spawned worker per key
start=$(date +%s)
stamp=$(date -u +%Y%m%dT%H%MZ)  # one log per call: a resumed run keeps the earlier calls' logs
for k in $kernels; do
  [ -f "$dir/refine_$k.json" ] && cp "$dir/refine_$k.json" "$out/refine_$k.json"
  left=$(( deadline - ($(date +%s) - start) ))
  [ "$left" -le 20 ] && { echo "deadline: skipping $k"; continue; }
  echo "== $k (${left}s left)"
  grid="benchmarks/shapes/tune_v2_$k.json"; [ -f "benchmarks/shapes/refine_order_v2_$k.json" ] && grid="benchmarks/shapes/refine_order_v2_$k.json"
  until_deadline $(( $(date +%s) + left )) python3 -P -m presetdb refine "$k" --shapes "$grid" --k "${K:-8}" \
    ${CANDIDATES_FROM:+--candidates-from "$CANDIDATES_FROM"} --timing graph --shape-hard-limit "${HARD_LIMIT:-150}" \
    --out "$out/refine_$k.json" >> "$out/refine_$k.$stamp.log" 2>&1
  echo "refine $k exit $?"; grep -v '━' "$out/refine_$k.$stamp.log" | tail -3
done
tar czf "$FINAL/seed_v2.tgz" -C "$FINAL" seed_v2 && rm -rf "$out"
