#!/usr/bin/env bash
# One GPU call: refine the v2 tuning grids of some kernels with graph timing
# (run_seed_v2.sh), import the results into a copy of the shipped db, then run the held-out
# coverage evaluation of those kernels against that copy (run_coverage.sh's coverage step)
# (issues [coverage], [seed-v2]). The tuning grids and the held-out set share no shape
# (tests/test_seed_eval_v2.py). Results: $OUT/refresh_eval.tgz.
#   bash benchmarks/gpu/run_refresh_eval.sh DEVICE_DIR REFINE_DEADLINE_S EVAL_DEADLINE_S KERNEL...
# EVAL_KERNELS (comma-separated, default the refined ones) and COVERAGE_AUTOTUNE (default 0)
# widen the evaluation.
set -uo pipefail
dir=$1; refine_deadline=$2; eval_deadline=$3; shift 3
kernels=$*
FINAL=${OUT:-out}
work="$FINAL/r"
mkdir -p "$work"
export PYTHONUNBUFFERED=1 HELION_AUTOTUNE_BENCHMARK_SUBPROCESS=0
pack() { tar czf "$FINAL/refresh_eval.tgz" --exclude='*triton*cache*' --exclude='served.db' -C "$FINAL" r; }
OUT="$work" bash benchmarks/gpu/run_seed_v2.sh "$dir" "$refine_deadline" $kernels
tar xzf "$work/seed_v2.tgz" -C "$work" && rm "$work/seed_v2.tgz"; pack
cp "$(python3 -P -c 'from presetdb.store.default_db import embedded_path; print(embedded_path())')" "$work/served.db"
for k in $kernels; do
  [ -f "$work/seed_v2/refine_$k.json" ] && python3 -P -m presetdb import "$work/seed_v2/refine_$k.json" --db "$work/served.db" 2>&1 | tail -2
done
OUT="$work/eval" STEPS=coverage COVERAGE_DB="$work/served.db" COVERAGE_KERNELS="${EVAL_KERNELS:-$(echo $kernels | tr ' ' ,)}" \
  COVERAGE_AUTOTUNE=${COVERAGE_AUTOTUNE:-0} COVERAGE_DEADLINE="$eval_deadline" bash benchmarks/gpu/run_coverage.sh
tar xzf "$work/eval/coverage_run.tgz" -C "$work/eval" && rm "$work/eval/coverage_run.tgz"
pack; rm -rf "$work"
