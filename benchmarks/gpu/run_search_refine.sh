#!/usr/bin/env bash
# Seed presets v2 for a kernel whose stored configs do not fit part of its grid (issue
# [seed-v2]; softmax: no stored config was tuned for rows longer than 8,192): one GPU call
#   1. a warm-started quick search (`presetdb tune --timing graph`) of
#      benchmarks/shapes/search_v2_KERNEL.json, a subset of the tuning grid, also seeded with
#      benchmarks/shapes/seed_configs_v2_KERNEL.json where that exists (--seed-configs);
#   2. its results imported into a copy of the shipped db;
#   3. `presetdb refine` of the whole grid (benchmarks/shapes/tune_v2_KERNEL.json, or the
#      same keys in benchmarks/shapes/refine_order_v2_KERNEL.json's order where that exists,
#      so that a refine cut short by its deadline has covered the grid evenly) against that
#      copy, so the searched configs are among every key's candidates.
# Both steps resume from DEVICE_DIR/{tune,refine}_KERNEL.json (commit $OUT's files there
# between calls); each stops starting work at its deadline. Results: $OUT/seed_v2.tgz.
#   bash benchmarks/gpu/run_search_refine.sh DEVICE_DIR SEARCH_DEADLINE_S REFINE_DEADLINE_S KERNEL
# SEARCH_BUDGET: seconds of search per shape (default 40); COMPILE_TIMEOUT (default 20 s);
# CANDIDATES_FROM: refine with that platform's stored configs; K: configs per key (see run_seed_v2.sh).
# HARD_LIMIT (refine, default 150 s) / HARD_LIMIT_TUNE (240 s): a shape still running then
# is abandoned for good (recorded in the results file) and the command resumes with the next.
set -uo pipefail
. "$(dirname "$0")/until_deadline.sh"
dir=$1; search_deadline=$2; refine_deadline=$3; k=$4
FINAL=${OUT:-out}
out="$FINAL/seed_v2"; mkdir -p "$out"
# Benchmarks in-process: a spawned benchmark worker re-imports torch per shape (~10 s).
# Helion's precompile gives up on a config after COMPILE_TIMEOUT s (Helion's default: 60).
# Compiling a stored persistent reduction on rows far longer than it was tuned for took
# Triton 46 s to over 300 s (benchmarks/results/cpu/compile_footprint/); refine and the
# search's seeds now loop such reductions first (presetdb.helion.footprint).
export PYTHONUNBUFFERED=1 HELION_AUTOTUNE_BENCHMARK_SUBPROCESS=0 HELION_AUTOTUNE_COMPILE_TIMEOUT=${COMPILE_TIMEOUT:-20}
stamp=$(date -u +%Y%m%dT%H%MZ)  # one log per call: a resumed run keeps the earlier calls' logs
pack() { tar czf "$FINAL/seed_v2.tgz" --exclude='candidates.db' -C "$FINAL" seed_v2; }
for f in tune refine; do [ -f "$dir/${f}_$k.json" ] && cp "$dir/${f}_$k.json" "$out/${f}_$k.json"; done
cp "$(python3 -P -c 'from presetdb.store.default_db import embedded_path; print(embedded_path())')" "$out/candidates.db"

echo "== search $k (${search_deadline}s)"
seeds=(); [ -f "benchmarks/shapes/seed_configs_v2_$k.json" ] && seeds=(--seed-configs "benchmarks/shapes/seed_configs_v2_$k.json")
until_deadline $(( $(date +%s) + search_deadline )) python3 -P -m presetdb tune "$k" --shapes "benchmarks/shapes/search_v2_$k.json" \
  --effort quick --budget-seconds "${SEARCH_BUDGET:-40}" --seed 1234 --timing graph --warm-start "${seeds[@]}" \
  --shape-hard-limit "${HARD_LIMIT_TUNE:-240}" --db "$out/candidates.db" --out "$out/tune_$k.json" >> "$out/tune_$k.$stamp.log" 2>&1
echo "tune $k exit $?"; grep -v '━' "$out/tune_$k.$stamp.log" | tail -4; pack

[ -f "$out/tune_$k.json" ] && python3 -P -m presetdb import "$out/tune_$k.json" --db "$out/candidates.db" 2>&1 | tail -1
echo "== refine $k (${refine_deadline}s)"
grid="benchmarks/shapes/tune_v2_$k.json"; [ -f "benchmarks/shapes/refine_order_v2_$k.json" ] && grid="benchmarks/shapes/refine_order_v2_$k.json"
until_deadline $(( $(date +%s) + refine_deadline )) python3 -P -m presetdb refine "$k" --shapes "$grid" \
  --k "${K:-8}" ${CANDIDATES_FROM:+--candidates-from "$CANDIDATES_FROM"} --timing graph --shape-hard-limit "${HARD_LIMIT:-150}" \
  --db "$out/candidates.db" --out "$out/refine_$k.json" >> "$out/refine_$k.$stamp.log" 2>&1
echo "refine $k exit $?"; grep -v '━' "$out/refine_$k.$stamp.log" | tail -3
pack; rm -rf "$out"
