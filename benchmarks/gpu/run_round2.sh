#!/usr/bin/env bash
# A GPU call for round 2: the [redesign] checks (run_redesign.sh) plus refine's cost per
# shape on real model shapes; everything lands in $OUT/round2.tgz (the device tool brings
# back at most 8 files).
#   python3 -m pip install ... .whl/*.whl && export PYTHONPATH=/tmp/site; bash benchmarks/gpu/run_round2.sh
set -uo pipefail
FINAL=${OUT:-out}
export OUT="$FINAL/r"
mkdir -p "$OUT/refine"
bash benchmarks/gpu/run_redesign.sh
export PYTHONUNBUFFERED=1
# refine: the k nearest stored configs + Helion's default on Llama-3-8B shapes (tuning_seconds = cost per shape)
python3 -P -m presetdb shapes -m llama-3-8b -k rms_norm -t 1,37,300,4096 --out "$OUT/refine/rms_shapes.json"
timeout 150 python3 -P -m presetdb refine rms_norm --shapes "$OUT/refine/rms_shapes.json" --k 8 --timing graph \
  --out "$OUT/refine/refine_rms_norm.json" > "$OUT/refine/refine_rms_norm.log" 2>&1
echo "refine rms_norm exit $?"; tail -4 "$OUT/refine/refine_rms_norm.log"
timeout 150 python3 -P -m presetdb refine matmul --grid 'dtype=bfloat16;n=6144;k=4096;m=1,37,300' --k 8 --timing graph \
  --out "$OUT/refine/refine_matmul.json" > "$OUT/refine/refine_matmul.log" 2>&1
echo "refine matmul exit $?"; tail -4 "$OUT/refine/refine_matmul.log"
# the registry as Helion's remote autotune cache: one real search writes its row, a second
# process is served from it with no search
timeout 200 python3 -P benchmarks/gpu/registry_remote_cache.py "$OUT/remote_cache" --budget-seconds 60 \
  > "$OUT/remote_cache.log" 2>&1
echo "registry_remote_cache exit $?"; tail -6 "$OUT/remote_cache.log"
tar czf "$FINAL/round2.tgz" -C "$FINAL" r && rm -rf "$OUT"
