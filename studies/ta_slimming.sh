#!/usr/bin/env bash
# Slim the homework TA's StudentNet on real food photos with label-free KD (teacher = the unpruned
# student), evaluated at 256 px as deployed (bench/results/ta_slimming.{json,md}).
# Fine-tuning: the first 250 of ../shared/food11/testing by id (no labels); choosing the best epoch:
# the next 50, by agreement with the unpruned student (no labels); scoring: the remaining images
# against reference_labels.csv ("agreement with reference labels"), never used to choose.
# Usage: studies/ta_slimming.sh [OUT_DIR]; then python -m studies.compression_results ta-slimming OUT_DIR
set -euo pipefail
SHARED=${EDGE_SHARED:-$(cd "$(dirname "$0")/../.." && pwd)/shared}
OUT=${1:-/tmp/edge-runs/ta_slimming}
mkdir -p "$OUT"
PHOTOS="$SHARED/food11/testing"
run() { echo "+ edge $*" >> "$OUT/commands.txt"; nice -n 10 edge "$@" 2>&1 | tee -a "$OUT/log.txt"; }

run slim "$SHARED/hw7/student_custom_small.bin" "$PHOTOS@:250" --val "$PHOTOS@250:300" \
    --test "$PHOTOS@300:" --test-labels "$SHARED/food11/reference_labels.csv" \
    --rate 0.05,0.1 --rounds 3 --finetune-epochs 5 --batch 25 --lr 1e-3 \
    --threads 2 --cache-dir "${EDGE_CACHE:-/tmp/edge-cache}" --quiet -o "$OUT/slim"
