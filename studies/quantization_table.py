"""The quantization table of the README: every weight format of one checkpoint, exported by `edge`'s
own exporter and run by ONNX Runtime on real photos, side by side in one run.

For each scheme: file bytes, top-1 agreement with the checkpoint's torch fp32 predictions on all
photos and on the photos after the first ``--calib-count`` (the ones ``--calib`` rows did not see),
accuracy against a labels CSV, the relative squared logit error (a finer signal than agreement,
which moves in steps of one photo), and the changed answers split by the fp32 top-2 logit margin:
a photo whose two best classes are within ``NEAR_TIE`` logits flips under any perturbation of the
weights (fp16 flips such photos too), so those flips are counted apart.

Usage: python -m studies.quantization_table CHECKPOINT PHOTOS [--labels CSV] [--json OUT] [--markdown OUT]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SCHEMES = (  # (label, --quant, --per-channel, --method, calibrate on the first photos)
    ("fp16", "fp16", False, "gptq", False),
    ("uint8 --method minmax (the homework's rounding)", "uint8", False, "minmax", False),
    ("uint8 (default: equalization + GPTQ + bias correction, data-free)", "uint8", False, "gptq", False),
    ("uint8 --calib", "uint8", False, "gptq", True),
    ("uint8 --per-channel (data-free)", "uint8", True, "gptq", False),
    ("uint8 --per-channel --calib", "uint8", True, "gptq", True),
    ("uint4 --per-channel --calib", "uint4", True, "gptq", True),
    ("int8 --per-channel --calib (ONNX Runtime QDQ)", "int8", True, "gptq", True),
)


NEAR_TIE = 0.1  # logits; the photos' top logit is ~16


def _margins(logits: np.ndarray) -> np.ndarray:
    top2 = np.sort(logits, axis=1)[:, -2:]
    return top2[:, 1] - top2[:, 0]


def _logits(model, images: np.ndarray) -> np.ndarray:
    return np.concatenate([model(images[i:i + 32]) for i in range(0, len(images), 32)])


def measure(checkpoint_path: str, photos: str, labels_csv: str | None, calib_count: int) -> dict:
    from edge.io.checkpoints import load_checkpoint
    from edge.data.folders import list_samples, read_labels
    from edge.inference.runtime import OnnxClassifier
    from edge.inference.torch_backend import TorchClassifier
    from edge.export.exporter import export_onnx, preprocessed_images
    from edge.export.quantize import QuantSpec

    checkpoint = load_checkpoint(checkpoint_path)
    images, source = preprocessed_images(checkpoint, photos, 100_000)
    ids = [s.id for s in list_samples(photos)]
    truth = read_labels(labels_csv, checkpoint.card.config.num_classes) if labels_csv else {}
    known = np.array([i in truth for i in ids])
    labels = np.array([truth.get(i, -1) for i in ids])
    reference = _logits(TorchClassifier(checkpoint), images)
    near_tie = _margins(reference) < NEAR_TIE
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, weights, per_channel, method, calibrate in SCHEMES:
            path = Path(tmp) / "model.onnx"
            calibration = (images[:calib_count], f"first {calib_count} of {source}") if calibrate else (None, "")
            start = time.perf_counter()
            size, _ = export_onnx(checkpoint, path, QuantSpec(weights, per_channel, method), *calibration)
            seconds = time.perf_counter() - start
            logits = _logits(OnnxClassifier(path), images)
            same = logits.argmax(1) == reference.argmax(1)
            rows.append({
                "scheme": label, "bytes": size, "export_s": round(seconds, 1),
                "agreement": float(same.mean()), "agreement_held_out": float(same[calib_count:].mean()),
                "accuracy": float((logits.argmax(1) == labels)[known].mean()) if known.any() else None,
                "relative_logit_error": float(np.square(logits - reference).sum() / np.square(reference).sum()),
                "changed_near_ties": int((~same & near_tie).sum()), "changed_decisive": int((~same & ~near_tie).sum()),
            })
            print(f"{label}: {size:,} B, agreement {rows[-1]['agreement']:.2%}", file=sys.stderr)
    fp32_accuracy = float((reference.argmax(1) == labels)[known].mean()) if known.any() else None
    return {"checkpoint": checkpoint_path, "photos": source, "calib_count": calib_count,
            "fp32_accuracy": fp32_accuracy, "near_ties": int(near_tie.sum()), "rows": rows}


def markdown(result: dict, command: str) -> str:
    held = f"held out (after the first {result['calib_count']})"
    fp32 = "-" if result["fp32_accuracy"] is None else f"{result['fp32_accuracy']:.2%}"
    lines = [f"Command: `{command}`", "",
             f"{result['photos']}; torch fp32 accuracy vs labels {fp32}; {result['near_ties']} photos are near-ties "
             f"(fp32 top-2 logits within {NEAR_TIE}).", "",
             f"| scheme | bytes | agreement | agreement, {held} | changed: near-ties / others | accuracy "
             "| relative logit error |", "|---|---:|---:|---:|---:|---:|---:|"]
    for r in result["rows"]:
        accuracy = "-" if r["accuracy"] is None else f"{r['accuracy']:.2%}"
        lines.append(f"| {r['scheme']} | {r['bytes']:,} | {r['agreement']:.2%} | {r['agreement_held_out']:.2%} "
                     f"| {r['changed_near_ties']} / {r['changed_decisive']} | {accuracy} "
                     f"| {r['relative_logit_error']:.2e} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint")
    parser.add_argument("photos")
    parser.add_argument("--labels")
    parser.add_argument("--calib-count", type=int, default=64)
    parser.add_argument("--json")
    parser.add_argument("--markdown")
    args = parser.parse_args(argv)
    result = measure(args.checkpoint, args.photos, args.labels, args.calib_count)
    command = "python -m studies.quantization_table " + " ".join(sys.argv[1:] if argv is None else argv)
    text = markdown(result, command)
    print(text)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    if args.markdown:
        Path(args.markdown).write_text(text)


if __name__ == "__main__":
    main()
