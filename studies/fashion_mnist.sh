#!/usr/bin/env bash
# Fashion-MNIST proof of the compression pipeline (bench/results/fashion_mnist.{json,md}):
# teacher -> student from scratch vs distilled (equal epochs) -> slimming at two rates -> uint8 ONNX.
# CPU-sized: 10,000 training images, 32 px inputs; validation = the last 2,000 training images,
# test = the full 10,000-image test set (scored, never used to choose anything).
# Usage: studies/fashion_mnist.sh [OUT_DIR]; then python -m studies.compression_results fashion-mnist OUT_DIR
set -euo pipefail
OUT=${1:-/tmp/edge-runs/fashion_mnist}
mkdir -p "$OUT"
DATA="fashion-mnist:train@:10000 --val fashion-mnist:train@58000: --test fashion-mnist:test --padding 2"
COMMON="--threads 2 --cache-dir ${EDGE_CACHE:-/tmp/edge-cache} --quiet"
run() { echo "+ edge $*" >> "$OUT/commands.txt"; nice -n 10 edge "$@" 2>&1 | tee -a "$OUT/log.txt"; }

run train $DATA --arch cnn --widths 32,64,128,256 --pools 0,1,2 --epochs 5 $COMMON \
    -o "$OUT/teacher.pt" --metrics "$OUT/teacher.json"
run train $DATA --arch dw --epochs 4 $COMMON -o "$OUT/scratch.pt" --metrics "$OUT/scratch.json"
run distill $DATA --teacher "$OUT/teacher.best.pt" --student dw --epochs 4 $COMMON \
    -o "$OUT/distilled.pt" --metrics "$OUT/distilled.json"
run slim "$OUT/distilled.best.pt" $DATA --rate 0.25,0.4 --rounds 2 --finetune-epochs 2 $COMMON -o "$OUT/slim"
