#!/usr/bin/env bash
# DDP check (bench/results/ddp_fashion_mnist.{json,md}): the same Fashion-MNIST run as 2 torchrun
# processes (gloo, 1 thread each) and as one process with 2 threads; the last validation accuracy
# of the two must lie within 2.5 pt. Records wall time and the load average before and after each.
# Usage: studies/ddp_fashion_mnist.sh [OUT_DIR]; then python -m studies.ddp_results OUT_DIR
set -euo pipefail
OUT=${1:-/tmp/edge-runs/ddp_fashion_mnist}
mkdir -p "$OUT" && cd "$OUT"
ARGS="train fashion-mnist:train@:4096 --val fashion-mnist:train@58000: --epochs 2 --batch 64 --seed 0"
timed() {  # NAME COMMAND...: run it, keeping its log, wall time and the load around it
  local name=$1; shift
  echo "$*" > "$name.command"; cut -d' ' -f1-3 /proc/loadavg > "$name.load_before"
  local began=$(date +%s.%N)
  "$@" > "$name.log" 2>&1
  echo "$(date +%s.%N) - $began" | bc > "$name.seconds"; cut -d' ' -f1-3 /proc/loadavg > "$name.load_after"
}
timed ddp torchrun --standalone --nproc_per_node 2 -m edge $ARGS --threads 1 -o ddp.pt --metrics ddp.json
timed single edge $ARGS --threads 2 -o single.pt --metrics single.json
