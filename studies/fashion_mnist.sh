#!/usr/bin/env bash
# Fashion-MNIST at full scale (bench/results/fashion_mnist.{json,md}, issue 27): the whole compression
# pipeline on all 60,000 training images (55,000 to train, the last 5,000 to validate), scored on the
# 10,000-image test set, which chooses nothing. 32 px inputs (the 28 px images zero-padded), 2 CPU
# processes under torchrun (gloo, 1 thread each) for every training stage:
#   teacher (cnn) -> scratch StudentNet | distilled StudentNet (same epochs) -> slimmed (KD fine-tuning)
#   -> uint8 ONNX of every slimmed round (edge slim exports and scores it).
# Every stage resumes: run the script again after an interruption and it continues where it stopped
# (a finished stage is skipped; an unfinished one goes on with --resume). Each call of a stage appends
# its wall time, the load around it and the CPU to RUN_DIR/times.tsv.
# Usage: studies/fashion_mnist.sh [RUN_DIR]   (default: ../edge-runs/fashion_mnist, beside the repository)
#        then python -m studies.fashion_mnist RUN_DIR
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
OUT=$(mkdir -p "${1:-$REPO/../edge-runs/fashion_mnist}" && cd "${1:-$REPO/../edge-runs/fashion_mnist}" && pwd)
CACHE=${EDGE_CACHE:-$OUT/cache}
DATA="fashion-mnist:train@:55000 --val fashion-mnist:train@55000: --test fashion-mnist:test --padding 4 --rotation 0"
COMMON="--threads 1 --batch 128 --lr 0.002 --cache-dir $CACHE --quiet"
EPOCHS=30
STUDENT=32,64,128,256,256,256,256,256  # StudentNet, the homework's stages 0-3 doubled; 4x4 after the last pool
DDP="torchrun --standalone --nproc_per_node 2 -m edge"
CPU=$(grep -m1 "model name" /proc/cpuinfo | cut -d: -f2 | xargs)

stage() {  # NAME DONE_FILE RUN_FILE COMMAND...: skip when DONE_FILE exists, else run (resuming RUN_FILE)
  local name=$1 done_file=$2 run_file=$3; shift 3
  if [[ -e $done_file ]]; then echo "$name: done ($done_file)"; return; fi
  local args=("$@")
  [[ -e $run_file ]] && args+=(--resume)
  grep -qxF "+ $* [--resume]" "$OUT/commands.txt" 2>/dev/null || echo "+ $* [--resume]" >> "$OUT/commands.txt"
  local load_before began
  load_before=$(cut -d' ' -f1-3 /proc/loadavg); began=$(date +%s.%N)
  "${args[@]}" 2>&1 | tee -a "$OUT/$name.log"
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$(date -u +%FT%TZ)" "$(echo "$(date +%s.%N) - $began" | bc)" \
    "$load_before" "$(cut -d' ' -f1-3 /proc/loadavg)" "$CPU" >> "$OUT/times.tsv"
}

cd "$OUT"
stage teacher teacher.json teacher.pt $DDP train $DATA --arch cnn --widths 64,128,256,256,256 --pools 0,1,2 \
  --epochs $EPOCHS $COMMON -o teacher.pt --metrics teacher.json
stage scratch scratch.json scratch.pt $DDP train $DATA --arch dw --widths $STUDENT --pools 0,1,2 --epochs $EPOCHS $COMMON \
  -o scratch.pt --metrics scratch.json
stage distilled distilled.json distilled.pt $DDP distill $DATA --teacher teacher.best.pt --student dw --widths $STUDENT --pools 0,1,2 \
  --temperature 4 --alpha 0.5 --epochs $EPOCHS $COMMON -o distilled.pt --metrics distilled.json
stage slimmed slim/done slim/curve.json $DDP slim distilled.best.pt $DATA --rate 0.2 --rounds 2 \
  --finetune-epochs 10 --quant uint8 $COMMON -o slim
touch slim/done  # edge slim returned 0: every round is in slim/curve.json
echo "all stages done: python -m studies.fashion_mnist $OUT"
