#!/usr/bin/env bash
# edge compress on the homework TA's StudentNet to <= 120,000 B, measured honestly (latest run:
# bench/results/compress_ta_student_mixed.{md,json,png}): it trains and chooses on the first 300 of
# ../shared/food11/testing by id (240 to reconstruct and fine-tune on, every 5th = 60 held back
# for validation, label-free), and every candidate is scored on the other 197 photos against
# reference_labels.csv, which never take part in choosing.
# Usage: studies/compress_ta_student.sh [OUT_DIR]
set -euo pipefail
SHARED=${EDGE_SHARED:-$(cd "$(dirname "$0")/../.." && pwd)/shared}
OUT=${1:-/tmp/edge-runs/compress_ta_student}
mkdir -p "$OUT"
PHOTOS="$SHARED/food11/testing"
edge compress "$SHARED/hw7/student_custom_small.bin" --images "$PHOTOS@:300" \
    --test "$PHOTOS@300:" --test-labels "$SHARED/food11/reference_labels.csv" \
    --target-bytes 120000 -o "$OUT/c.onnx" --report "$OUT/report" --threads 1 \
    --cache-dir "${EDGE_CACHE:-/tmp/edge-cache}"
