#!/usr/bin/env bash
# The homework's entry point: bash hw7_test.sh <data directory> <prediction file>
#   <data directory>: the food-11 root holding testing/ (NNNN.jpg)
#   <prediction file>: the Kaggle CSV to write (Id,label)
# The model is models/food11_student_compressed.onnx (see README; the uint8 file beside it is the
# previous default); set EDGE_MODEL to use another
# (an .onnx we exported, or any checkpoint `edge` reads). Checks the homework's limits first.
set -euo pipefail

if [ "$#" -ne 2 ]; then
  echo "usage: bash hw7_test.sh <data directory> <prediction file>" >&2
  exit 2
fi
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
model="${EDGE_MODEL:-$here/models/food11_student_compressed.onnx}"
limit=300000

if [ ! -f "$model" ]; then
  echo "hw7_test.sh: model file not found: $model" >&2
  exit 2
fi
size=$(wc -c < "$model")
if [ "$size" -gt "$limit" ]; then
  echo "hw7_test.sh: $model is $size bytes, over the homework's limit of $limit" >&2
  exit 2
fi
if [ ! -d "$1/testing" ]; then
  echo "hw7_test.sh: $1/testing not found: pass the food-11 folder that holds testing/" >&2
  exit 2
fi

# edge on PATH (an activated environment), else the quick start's .venv beside this script, else
# python3 with edge's dependencies; a fresh shell needs no activation.
if command -v edge >/dev/null 2>&1; then
  edge=(edge)
elif [ -x "$here/.venv/bin/edge" ]; then
  edge=("$here/.venv/bin/edge")
elif PYTHONPATH="$here" python3 -c "import click, numpy, onnxruntime, PIL, simplejpeg, tqdm" >/dev/null 2>&1; then
  edge=(env PYTHONPATH="$here" python3 -m edge)
else
  echo "hw7_test.sh: edge is not installed: run 'python3 -m venv .venv && .venv/bin/pip install -e .' in $here," \
       "or activate the environment that has it" >&2
  exit 2
fi
echo "model: $model ($size bytes)" >&2
start=$SECONDS
"${edge[@]}" predict "$model" "$1/testing" -o "$2" --overwrite
echo "done in $((SECONDS - start)) s (homework limit: 600 s)" >&2
