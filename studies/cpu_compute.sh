#!/usr/bin/env bash
# Issue 28, fastest on the CPU it runs on: every CPU backend (ONNX Runtime, OpenVINO) x compute precision
# (fp32, bf16, bf16-mixed, int8) on hw7_test.sh's model, each row with its top-1 agreement with fp32 on held-out
# photos, then hw7_test.sh itself against the homework pipeline in the same run. Results:
#   bench/results/cpu_compute_1thread.{md,json}  (1 thread, b=1 latency and b=32 throughput)
#   bench/results/cpu_compute_all_cores.{md,json} (all cores: what `edge bench` does by default)
#   bench/results/hw7_throughput.{md,json}        (bash hw7_test.sh on 3,347 photos vs the homework way)
#   bench/results/cpu_compute_*_summary.md        (the frontier and the verdicts: studies/cpu_compute_summary.py)
#   bench/results/cpu_compute_micro_batch_*.md    (b=32 as micro-batches of 1-32 images against b=1, per engine:
#                                                  studies/micro_batch.py; images per CPU second at 1 thread)
# Calibration (int8 ranges, the --provider auto choice) uses the first 100 photos of food11/testing by
# id; agreement and accuracy are measured on the other 397, which never take part in choosing.
# Needs the openvino extra (pip install -e ".[openvino]") and the torch extra (int8's graph tools, the
# homework baseline). Usage: studies/cpu_compute.sh [WORK_DIR]
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
SHARED=${EDGE_SHARED:-$REPO/../shared}
WORK=${1:-/tmp/edge-runs/cpu_compute}
MODEL=$REPO/models/food11_student_compressed.onnx
cd "$REPO"
RESULTS=bench/results
rm -rf "$WORK" && mkdir -p "$WORK/calib" "$WORK/held"
ls "$SHARED/food11/testing" | sort | head -n 100 | while read -r f; do cp "$SHARED/food11/testing/$f" "$WORK/calib/"; done
ls "$SHARED/food11/testing" | sort | tail -n +101 | while read -r f; do cp "$SHARED/food11/testing/$f" "$WORK/held/"; done
uptime
lscpu | grep -E "Model name|^Flags" > "$WORK/cpu.txt"
common=(--provider ort-cpu,ov-cpu --compute fp32,bf16,bf16-mixed,int8 --calib "$WORK/calib" --data "$WORK/held"
        --labels "$SHARED/food11/reference_labels.csv" --batch 1,32 --quiet --overwrite)
edge bench "$MODEL" "${common[@]}" --threads 1 --repeats 5 \
    --json "$RESULTS/cpu_compute_1thread.json" --markdown "$RESULTS/cpu_compute_1thread.md"
python -m studies.cpu_compute_summary "$RESULTS/cpu_compute_1thread.json" -o "$RESULTS/cpu_compute_1thread_summary.md"
python -m edge.bench.predict_throughput --hw7 --repeats 1 --memory-images 0 \
    --json "$RESULTS/hw7_throughput.json" --markdown "$RESULTS/hw7_throughput.md"
edge bench "$MODEL" "${common[@]}" --repeats 5 \
    --json "$RESULTS/cpu_compute_all_cores.json" --markdown "$RESULTS/cpu_compute_all_cores.md"
python -m studies.cpu_compute_summary "$RESULTS/cpu_compute_all_cores.json" -o "$RESULTS/cpu_compute_all_cores_summary.md"
micro=(-m studies.micro_batch "$MODEL" --data "$WORK/held" --calib "$WORK/calib" --repeats 5)
python "${micro[@]}" --threads 1 --clock cpu > "$RESULTS/cpu_compute_micro_batch_1thread.md"
python "${micro[@]}" > "$RESULTS/cpu_compute_micro_batch_all_cores.md"
uptime
