"""The 4-bit frontier of one checkpoint: where a uint4 file's bytes go, and how much agreement each
layer buys back at 8 bits (mixed precision), measured side by side in one run.

It answers "can this model be 4-bit, <= 140,000 B and >= 97% agreement?" with numbers:

- ``uint4 --per-channel --calib`` as `edge export` writes it: the file's bytes by kind (codes,
  ranges, fp16 tensors, graph, metadata) and its top-1 agreement with fp32 on held-out photos.
- the floor: every weight at 4 bits with one fp16 scale and a 4-bit zero point per output channel
  and fp16 biases, with no graph at all.
- the same 4-bit model with one layer at 8 bits (GPTQ calibrates the layers in order, each at its
  own width): agreement, and the bytes of the 4-bit file plus 0.5 B per weight moved to 8 bits.

Calibration uses the first ``--calib-count`` photos; agreement is on the rest, from the folded
model in torch (the ONNX file computes the same function; `edge export` checks the parity).

Usage: python -m studies.four_bit [CHECKPOINT] [PHOTOS] [--calib-count N] [--json OUT] [--markdown OUT]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
TARGET_BYTES, TARGET_AGREEMENT = 140_000, 0.97


def initializer_kind(name: str) -> str:
    """What an initializer of `edge.export.onnx_graph` holds, from its name."""
    from edge.codec.quant import code_stream_bits
    from edge.export.onnx_graph import HALF

    parts = name.split(".")
    if code_stream_bits(name):
        return f"{code_stream_bits(name)}-bit codes"
    if {"offset", "step"} & set(parts):
        return "ranges (fp16 offset, step per channel)"
    if "book" in parts:
        return "codebooks (fp16)"
    return "fp16 tensors (biases, small layers)" if parts[-1] == HALF else "graph constants (shapes, shifts)"


def file_bytes_by_kind(path: Path) -> dict[str, int]:
    """Serialized bytes of an exported file by what they hold."""
    import onnx

    model = onnx.load(str(path))
    kinds = Counter()
    for tensor in model.graph.initializer:
        kinds[initializer_kind(tensor.name)] += len(tensor.SerializeToString())
    kinds["graph nodes"] = sum(len(node.SerializeToString()) for node in model.graph.node)
    kinds["metadata"] = sum(len(prop.SerializeToString()) for prop in model.metadata_props)
    kinds["protobuf framing"] = path.stat().st_size - sum(kinds.values())
    return dict(kinds)


def floor_bytes(layers, fp16_below: int) -> int:
    """Every quantized weight at 4 bits, an fp16 scale + 4-bit zero point per output channel, small
    layers and biases fp16: the least a per-channel 4-bit file can hold before any graph."""
    total = 0.0
    for layer in layers:
        if layer.weight.size < fp16_below:
            total += 2 * layer.weight.size
        else:
            total += layer.weight.size / 2 + 2.5 * layer.weight.shape[0]
        total += 2 * layer.bias.size
    return int(np.ceil(total))


def measure(checkpoint_path: Path, photos: Path, calib_count: int) -> dict:
    from edge.io.checkpoints import load_checkpoint
    from edge.models.fold import fold_model, model_layers
    from edge.models.student import build_student
    from edge.export.calibrate import decoded_model
    from edge.export.exporter import export_onnx, preprocessed_images
    from edge.export.quantize import QuantSpec, encode_model
    from edge.export.sensitivity import logits

    checkpoint = load_checkpoint(checkpoint_path)
    images, source = preprocessed_images(checkpoint, photos, 100_000)
    calibration, held_out = images[:calib_count], images[calib_count:]
    folded = fold_model(build_student(checkpoint.card.config, checkpoint.state))
    layers = model_layers(folded)
    reference = logits(folded, held_out).argmax(1)
    spec = QuantSpec("uint4", per_channel=True)

    def agreement(layer_bits=None) -> float:
        quantized, encodings = encode_model(folded, spec, calibration, layer_bits, progress=False)
        predicted = logits(decoded_model(folded, quantized, encodings, np.float32), held_out).argmax(1)
        return float(np.mean(predicted == reference))

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "uint4.onnx"
        size, _ = export_onnx(checkpoint, path, spec, calibration, f"first {calib_count} photos")
        kinds = file_bytes_by_kind(path)
    rows = [{"scheme": "uint4 --per-channel --calib (the exported file)", "bytes": size, "agreement": agreement()}]
    for layer in layers:
        if layer.weight.size >= spec.fp16_below:
            rows.append({"scheme": f"... with {layer.name} ({layer.weight.size:,} weights) at 8 bits",
                         "bytes": size + layer.weight.size // 2, "agreement": agreement({layer.name: 8})})
            print(f"{rows[-1]['scheme']}: {rows[-1]['agreement']:.2%}", file=sys.stderr)
    return {"checkpoint": str(checkpoint_path), "photos": source, "calib_count": calib_count,
            "held_out": len(held_out), "bytes_by_kind": kinds, "floor_bytes": floor_bytes(layers, spec.fp16_below),
            "rows": rows}


def markdown(result: dict, command: str) -> str:
    lines = [f"Command: `{command}`", "",
             f"{result['photos']}: calibration on the first {result['calib_count']}, agreement with fp32 "
             f"(top-1) on the other {result['held_out']}. Target: <= {TARGET_BYTES:,} B and >= "
             f"{TARGET_AGREEMENT:.0%}.", "", "| scheme | bytes | held-out agreement | meets both |",
             "|---|---:|---:|---|"]
    for row in result["rows"]:
        meets = row["bytes"] <= TARGET_BYTES and row["agreement"] >= TARGET_AGREEMENT
        lines.append(f"| {row['scheme']} | {row['bytes']:,} | {row['agreement']:.2%} | {'yes' if meets else 'no'} |")
    lines += ["", "Where the 4-bit file's bytes go:", "", "| kind | bytes |", "|---|---:|"]
    lines += [f"| {kind} | {n:,} |" for kind, n in sorted(result["bytes_by_kind"].items(), key=lambda kv: -kv[1])]
    lines += ["", f"Floor of any per-channel 4-bit file of this model (codes + fp16 scale and 4-bit zero point per "
                  f"channel + fp16 biases and small layers, no graph): {result['floor_bytes']:,} B."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", nargs="?", type=Path, default=SHARED / "hw7" / "student_custom_small.bin")
    parser.add_argument("photos", nargs="?", type=Path, default=SHARED / "food11" / "testing")
    parser.add_argument("--calib-count", type=int, default=128)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--markdown", type=Path)
    args = parser.parse_args(argv)
    result = measure(args.checkpoint, args.photos, args.calib_count)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    text = markdown(result, "python -m studies.four_bit " + " ".join(sys.argv[1:] if argv is None else argv))
    print(text)
    if args.markdown:
        args.markdown.write_text(text)


if __name__ == "__main__":
    main()
