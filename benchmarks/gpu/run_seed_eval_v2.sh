#!/usr/bin/env bash
# One GPU call of the v2 held-out evaluation (issue [seed-v2] item 4), resumable across calls:
# the rows of DEVICE_DIR/seed_eval_v2/seed_eval_v2.json (committed by the previous call) are
# kept and not measured again; the combined file lands in $OUT/seed_eval_v2/ (copy it back into
# DEVICE_DIR/seed_eval_v2/ and commit before the next call). Serves the embedded default db.
#   bash benchmarks/gpu/run_seed_eval_v2.sh DEVICE_DIR PART SECTIONS [EXTRA ARGS...]
#   e.g. bash benchmarks/gpu/run_seed_eval_v2.sh benchmarks/results/nvidia_h100 1/4 heldout
set -uo pipefail
dir=$1; part=$2; sections=$3; shift 3
out="${OUT:-out}/seed_eval_v2"; mkdir -p "$out"
export PYTHONUNBUFFERED=1
prev="$dir/seed_eval_v2/seed_eval_v2.json"
resume=(); [ -f "$prev" ] && resume=(--resume "$prev")
# A shape that outlasts --shape-hard-limit ends its process (exit 4): go on in a fresh one,
# resuming this call's own file, which names that shape (recorded as failed, not retried).
start=$(date +%s)
for attempt in 1 2 3; do
  left=$(( ${DEADLINE_S:-330} - ($(date +%s) - start) ))
  [ "$left" -le 30 ] && break
  again=(); [ -f "$out/seed_eval_v2.json" ] && again=(--resume "$out/seed_eval_v2.json")
  timeout $(( left + 230 )) python3 -P benchmarks/gpu/seed_eval_v2.py --out "$out" --part "$part" --sections "$sections" \
    --deadline "$left" "${resume[@]}" "${again[@]}" "$@" >> "$out/seed_eval_v2.${part/\//of}.log" 2>&1
  rc=$?; echo "seed_eval_v2 attempt $attempt exit $rc"
  [ "$rc" -ne 4 ] && break
done
tail -25 "$out"/seed_eval_v2.*.log | grep -v '^|.*| ok |$' | tail -25
