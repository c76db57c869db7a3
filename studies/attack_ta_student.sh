#!/usr/bin/env bash
# FGSM against the homework TA's StudentNet at fp32 and as uint8 / uint4 exports (data-free GPTQ
# calibration, so no test photo shapes the weights), white-box and transferred from the fp32
# checkpoint, with four input defenses, on all of ../shared/food11/testing against
# reference_labels.csv (bench/results/attack_ta_student.{json,md,png}, -examples.png), and iterative
# FGSM on the first 48 (attack_ta_student_ifgsm.*); then studies/attack_check.py scores the fp32 FGSM
# 2/255 PNGs with the homework's own code (attack_check_ta_student.{json,md}).
# Usage: studies/attack_ta_student.sh [SCRATCH_DIR]   (exports and PNGs go there, not into the repo);
# `edge` on PATH, PYTHON: the interpreter with edge's dependencies (default python3).
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
SHARED=${EDGE_SHARED:-$(cd "$REPO/.." && pwd)/shared}
OUT=${1:-/tmp/edge-runs/attack_ta_student}
RESULTS="$REPO/bench/results"
TA="$SHARED/hw7/student_custom_small.bin"
mkdir -p "$OUT"
export OMP_NUM_THREADS=1
run() { echo "+ edge $*" | tee -a "$OUT/commands.txt"; nice -n 10 edge "$@" 2>&1 | tee -a "$OUT/log.txt"; }

[ -f "$OUT/ta_uint8.onnx" ] || run export "$TA" -o "$OUT/ta_uint8.onnx" --quant uint8
[ -f "$OUT/ta_uint4.onnx" ] || run export "$TA" -o "$OUT/ta_uint4.onnx" --quant uint4 --per-channel
run attack "$TA" "$OUT/ta_uint8.onnx" "$OUT/ta_uint4.onnx" "$SHARED/food11/testing" \
    --labels "$SHARED/food11/reference_labels.csv" --method fgsm --eps 1/255,2/255,8/255 \
    --defense gaussian:1.5,median:3,jpeg:75,bits:4 --source "$TA" --save-adversarial "$OUT/adversarial" \
    --json "$RESULTS/attack_ta_student.json" --markdown "$RESULTS/attack_ta_student.md" \
    --plot "$RESULTS/attack_ta_student.png" --overwrite
# iterative FGSM (5 steps) costs 15 gradient passes per model and image: the first 48 photos only
run attack "$TA" "$OUT/ta_uint8.onnx" "$OUT/ta_uint4.onnx" "$SHARED/food11/testing" \
    --labels "$SHARED/food11/reference_labels.csv" --method ifgsm --steps 5 --eps 1/255,2/255,8/255 --limit 48 \
    --defense gaussian:1.5,median:3,jpeg:75,bits:4 --source "$TA" \
    --json "$RESULTS/attack_ta_student_ifgsm.json" --markdown "$RESULTS/attack_ta_student_ifgsm.md" \
    --plot "$RESULTS/attack_ta_student_ifgsm.png" --overwrite
cd "$REPO" && "${PYTHON:-python3}" -m studies.attack_check "$OUT/adversarial/student_custom_small.bin/fgsm-eps2" "$TA" \
    "$SHARED/food11/testing" "$SHARED/food11/reference_labels.csv" --report "$RESULTS/attack_ta_student.json" \
    --model student_custom_small.bin --method fgsm --eps 2/255 \
    --json "$RESULTS/attack_check_ta_student.json" --markdown "$RESULTS/attack_check_ta_student.md"
