#!/usr/bin/env bash
# Issue 13's acceptance run: a torchvision mobilenet_v3_small trained by `edge train --arch` on
# Fashion-MNIST, exported to fp32 and uint8 ONNX, then run by `edge predict` and `edge bench`.
# CPU-sized (one core, about 15 min of CPU time): 12,000 training images at 32 px (the 28 px
# images zero-padded), 6 epochs; validation = the last 2,000 training images (held out, picks
# the best epoch), test = the full 10,000-image test set (scored, never used to choose).
# Usage: studies/mobilenet_fashion_mnist.sh [OUT_DIR]   (edge on PATH; re-running continues or
# reuses a finished training run, since `--resume` of a finished run trains no further epoch)
set -euo pipefail
OUT=${1:-/tmp/edge-runs/mobilenet_fashion_mnist}
mkdir -p "$OUT"
MODEL="$OUT/mnv3_fmnist.pt"
run() { echo "+ edge $*" >> "$OUT/commands.txt"; edge "$@" 2>&1 | tee -a "$OUT/log.txt"; }

# 1. Train (resumable: a second call continues an interrupted run with the same options).
RESUME=$([ -f "$MODEL" ] && echo --resume || true)
run train fashion-mnist:train@:12000 --val fashion-mnist:train@58000: --test fashion-mnist:test \
    --arch mobilenet_v3_small --input-size 32 --padding 2 --epochs 6 --lr 2e-3 --batch 64 \
    --threads 1 --quiet $RESUME -o "$MODEL" --metrics "$OUT/train.json"
BEST="$OUT/mnv3_fmnist.best.pt"

# 2. Export the best epoch: fp32 and uint8 (min-max per channel, decoded at load).
run export "$BEST" -o "$OUT/mnv3_fp32.onnx" --quant fp32 --overwrite
run export "$BEST" -o "$OUT/mnv3_uint8.onnx" --quant uint8 --per-channel --method minmax --overwrite

# 3. 1,000 test images as PNGs in class-index folders 0..9 (predict and bench read image folders).
IMAGES="$OUT/test_images"
if [ ! -d "$IMAGES" ]; then
    python - "$IMAGES" <<'EOF'
import sys
from pathlib import Path

from PIL import Image

from edge.core.config import Preprocess
from edge.data.datasets import decode_image_set

data = decode_image_set("fashion-mnist:test@:1000", Preprocess(crop=28, mean=(0.0,), std=(1.0,), color="L"))
for pixels, label, name in zip(data.pixels.numpy(), data.labels.tolist(), data.ids):
    folder = Path(sys.argv[1]) / str(label)
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels.squeeze(0)).save(folder / f"{name}.png")
EOF
fi

# 4. Predict with each file (ONNX Runtime; the .pt on torch) and bench them.
run predict "$OUT/mnv3_fp32.onnx" "$IMAGES" -o "$OUT/pred_fp32.csv" --overwrite
run predict "$OUT/mnv3_uint8.onnx" "$IMAGES" -o "$OUT/pred_uint8.csv" --overwrite
run predict "$BEST" "$IMAGES" -o "$OUT/pred_torch.csv" --overwrite
run bench "$BEST" --data "$IMAGES" --quant fp32,uint8:minmax --provider ort-cpu,torch-cpu --threads 1 \
    --json "$OUT/bench.json" --markdown "$OUT/bench.md" --overwrite

# 5. The issue's bar: uint8 <= 30% of the fp32 file's bytes, the same operators in ONNX Runtime's
#    optimized graph, the same answers on >= 95% of the images.
python - "$OUT" <<'EOF'
import csv
import sys
from pathlib import Path

from edge.export.exporter import runtime_ops

out = Path(sys.argv[1])
fp32, uint8 = out / "mnv3_fp32.onnx", out / "mnv3_uint8.onnx"
ratio = uint8.stat().st_size / fp32.stat().st_size
same_ops = runtime_ops(fp32) == runtime_ops(uint8)
answers = [{row["Id"]: row["label"] for row in csv.DictReader((out / f"pred_{name}.csv").open())}
           for name in ("fp32", "uint8")]
agreement = sum(answers[0][i] == answers[1][i] for i in answers[0]) / len(answers[0])
print(f"uint8/fp32 bytes {ratio:.1%} (<= 30%: {ratio <= 0.30}); same runtime operators: {same_ops} "
      f"({sorted(runtime_ops(uint8))}); same answers {agreement:.1%} (>= 95%: {agreement >= 0.95})")
sys.exit(0 if ratio <= 0.30 and same_ops and agreement >= 0.95 else 1)
EOF
