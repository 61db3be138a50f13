#!/usr/bin/env bash
# One GPU call: refine the v2 tuning grids of some kernels with graph timing (as
# run_seed_v2.sh), import the results into a copy of the shipped db, then run the held-out
# coverage evaluation of those kernels against that copy (issues [coverage], [seed-v2]).
# The tuning grids and the held-out set share no shape (tests/test_seed_eval_v2.py).
# $OUT/refresh_eval.tgz is rewritten after every step.
#   bash benchmarks/gpu/run_refresh_eval.sh DEVICE_DIR REFINE_DEADLINE_S EVAL_DEADLINE_S KERNEL...
set -uo pipefail
dir=$1; refine_deadline=$2; eval_deadline=$3; shift 3
kernels=$*
FINAL=${OUT:-out}
export OUT="$FINAL/r"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HELION_AUTOTUNE_BENCHMARK_SUBPROCESS=0
pack() { tar czf "$FINAL/refresh_eval.tgz" --exclude='*triton*cache*' -C "$FINAL" r; }
python3 -P -c 'from importlib.metadata import version; import torch; print({p: version(p) for p in ("torch", "triton", "helion", "presetdb")}, torch.cuda.get_device_name())' | tee "$OUT/versions.txt"
OUT="$OUT" bash benchmarks/gpu/run_seed_v2.sh "$dir" "$refine_deadline" $kernels
tar xzf "$OUT/seed_v2.tgz" -C "$OUT" && rm "$OUT/seed_v2.tgz"; pack
DB=$(python3 -P -c 'from presetdb.store.default_db import embedded_path; print(embedded_path())')
cp "$DB" "$OUT/served.db"
for k in $kernels; do
  [ -f "$OUT/seed_v2/refine_$k.json" ] && python3 -P -m presetdb import "$OUT/seed_v2/refine_$k.json" --db "$OUT/served.db" 2>&1 | tail -2
done
for attempt in 1 2 3; do  # exit 3: a capture broke the CUDA context, go on in a fresh process
  timeout $(( eval_deadline + 60 )) python3 -P benchmarks/gpu/coverage_eval.py --db "$OUT/served.db" --out "$OUT/coverage" \
    --kernels "$(echo $kernels | tr ' ' ,)" --deadline "$eval_deadline" --autotune 0 \
    --resume "$OUT/coverage/coverage_eval.json" >> "$OUT/coverage.log" 2>&1
  rc=$?; echo "coverage_eval attempt $attempt exit $rc"; [ "$rc" -ne 3 ] && break
done
grep -E "^(rms_norm|silu_mul|softmax|matmul|\| (nearest|default|rerank) )" "$OUT/coverage.log" | cut -c1-200 | tail -30
rm -f "$OUT/served.db"; pack; rm -rf "$OUT"
