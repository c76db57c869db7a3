#!/usr/bin/env bash
# `edge export --max-drop` on the homework TA's StudentNet (bench/results/max_drop_ta_student.md):
# candidates calibrated on the first 250 photos of ../shared/food11/testing by id, measured on the
# other 247 (top-1 agreement with torch fp32; accuracy against reference_labels.csv).
# Usage: studies/max_drop_ta_student.sh [OUT_DIR]
set -euo pipefail
SHARED=${EDGE_SHARED:-$(cd "$(dirname "$0")/../.." && pwd)/shared}
OUT=${1:-/tmp/edge-runs/max_drop}
RESULT="$(dirname "$0")/results/max_drop_ta_student.md"
mkdir -p "$OUT"
PHOTOS="$SHARED/food11/testing"
COMMAND=(edge export "$SHARED/hw7/student_custom_small.bin" --max-drop 3 --calib "$PHOTOS" --calib-images 250
         --images "$PHOTOS" --labels "$SHARED/food11/reference_labels.csv" -o "$OUT/chosen.onnx" --overwrite)
START=$(date +%s)
OMP_NUM_THREADS=1 "${COMMAND[@]}" 2>/dev/null | tee "$OUT/log.txt"
{
    echo "Command: \`studies/max_drop_ta_student.sh\`, which runs"
    echo '```'
    echo "OMP_NUM_THREADS=1 ${COMMAND[*]}" | sed "s#$SHARED#../shared#g; s#$OUT#OUT#g"
    echo '```'
    echo
    echo "Machine: $(python -c 'from edge.bench.machine import cpu_info; c = cpu_info(); print(c["model"], c["cores"], "cores,", " ".join(c["simd"]))')"
    echo "Wall time: $(( $(date +%s) - START )) s (1 thread, other jobs running)."
    echo
    echo "The first 250 photos (by id) calibrate every candidate; the other 247 measure it. The first"
    echo "candidate within 3 points (agreement with torch fp32 >= 97%, accuracy at most 3 points below"
    echo "fp32's) is written."
    echo
    echo '```'
    sed "s#$SHARED#../shared#g; s#$OUT#OUT#g" "$OUT/log.txt"
    echo '```'
} > "$RESULT"
