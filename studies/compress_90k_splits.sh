#!/usr/bin/env bash
# edge compress on the homework TA's StudentNet to <= 90,000 B on both splits, measured honestly
# (bench/results/compress_90k_first.{md,json}, compress_90k_swapped.{md,json}): SPLIT first chooses on
# photos 0-299 of ../shared/food11/testing by id and scores every candidate on 300-496 against
# reference_labels.csv; swapped chooses on 300-496 and scores on 0-299. all is the issue's own command on all
# 497 photos (default threads, nothing held out to score on: bench/results/compress_90k_all.{md,json}).
# Wall time under /usr/bin/time.
# Usage: studies/compress_90k_splits.sh first|swapped|all [OUT_DIR]
set -euo pipefail
SHARED=${EDGE_SHARED:-$(cd "$(dirname "$0")/../.." && pwd)/shared}
SPLIT=${1:?first, swapped or all}
OUT=${2:-/tmp/edge-runs/compress_90k_$SPLIT}
case "$SPLIT" in
    first) CHOOSE="@0:300"; TEST="@300:497" ;;
    swapped) CHOOSE="@300:497"; TEST="@0:300" ;;
    all) ;;
    *) echo "compress_90k_splits.sh: SPLIT is first, swapped or all, not $SPLIT" >&2; exit 2 ;;
esac
mkdir -p "$OUT"
PHOTOS="$SHARED/food11/testing"
if [ "$SPLIT" = all ]; then
    exec /usr/bin/time -v edge compress "$SHARED/hw7/student_custom_small.bin" --images "$PHOTOS" \
        --target-bytes 90000 -o "$OUT/c.onnx" --report "$OUT/report" --quiet
fi
/usr/bin/time -v edge compress "$SHARED/hw7/student_custom_small.bin" --images "$PHOTOS$CHOOSE" \
    --test "$PHOTOS$TEST" --test-labels "$SHARED/food11/reference_labels.csv" \
    --target-bytes 90000 -o "$OUT/c.onnx" --report "$OUT/report" --threads 1 \
    --cache-dir "${EDGE_CACHE:-/tmp/edge-cache}_$SPLIT" --quiet
