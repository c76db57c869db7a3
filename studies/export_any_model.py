"""One export path for every model: bytes, runtime graph and parity of `edge export`'s formats on
the TA student and on torchvision classifiers (seeded random weights, BatchNorm statistics
randomised so folding matters), each written by `edge.export.exporter.export_onnx`.

Recorded per file: bytes on disk, the share of the fp32 file's bytes, whether ONNX Runtime's
optimized graph has the fp32 file's operator multiset, decode ops left after session creation,
and max |logit difference| / top-1 agreement vs the torch model on 32 seeded random inputs.

Usage: python -m studies.export_any_model [--arch NAME ...] [--size 32] [--channels 1]
       [--json OUT] [--markdown OUT]
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
TA_STUDENT = REPO.parent / "shared" / "hw7" / "student_custom_small.bin"
TA_FORMATS = ("uint8", "uint8 minmax", "uint8 per-channel minmax", "uint4 per-channel minmax", "kmeans16 minmax",
              "fp16", "fp32", "int8")
ANY_FORMATS = ("fp32", "fp16", "uint8 minmax", "uint8 per-channel minmax", "int8")


def _spec(name: str):
    from edge.export.quantize import QuantSpec

    words = name.split()
    return QuantSpec(words[0], per_channel="per-channel" in words, method="minmax" if "minmax" in words else "gptq")


def torchvision_file(arch: str, size: int, channels: int, classes: int = 10, seed: int = 0):
    """A model file of ``arch`` (`edge.io.netfile.NetFile`), seeded, with random BatchNorm statistics."""
    import torch

    from edge.core.config import Preprocess, StudentConfig, default_classes
    from edge.io.netfile import NetFile
    from edge.models.registry import NetSpec, build_net

    torch.manual_seed(seed)
    spec = NetSpec(arch, StudentConfig(in_channels=channels, input_size=size, num_classes=classes))
    model = build_net(spec)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 2.0)
    grey = channels == 1
    preprocess = Preprocess(crop=size, mean=(0.0,) * channels, std=(1.0,) * channels, color="L" if grey else "RGB")
    return NetFile(spec, preprocess, default_classes(classes), model.state_dict())


def measure(name: str, model_file, formats, folder: Path) -> list[dict]:
    """Export ``model_file`` in each format and measure the files."""
    import torch

    from edge.export.exporter import export_onnx, leftover_dequantization, runtime_ops
    from edge.inference.runtime import OnnxClassifier

    config = model_file.card.config
    x = np.random.default_rng(1).random((32, config.in_channels, config.input_size, config.input_size), np.float32)
    with torch.no_grad():
        reference = model_file.build()(torch.from_numpy(x)).numpy()
    rows, fp32_ops, fp32_bytes = [], None, None
    for fmt in ("fp32",) + tuple(f for f in formats if f != "fp32"):
        path, start = folder / f"{name}_{fmt.replace(' ', '_')}.onnx", time.perf_counter()
        size, _ = export_onnx(model_file, path, _spec(fmt))
        seconds, ops, logits = time.perf_counter() - start, runtime_ops(path), OnnxClassifier(path)(x)
        fp32_ops, fp32_bytes = fp32_ops or ops, fp32_bytes or size
        rows.append({"model": name, "format": fmt, "bytes": size, "of_fp32": size / fp32_bytes,
                     "same_runtime_ops": ops == fp32_ops, "left_after_load": leftover_dequantization(path),
                     "max_abs_diff": float(np.abs(logits - reference).max()),
                     "logit_scale": float(np.abs(reference).max()),
                     "agreement": float(np.mean(logits.argmax(1) == reference.argmax(1))), "export_s": seconds})
        print(f"{name} {fmt}: {size:,} B ({size / fp32_bytes:.1%} of fp32), agreement {rows[-1]['agreement']:.0%}",
              file=sys.stderr)
    return rows


def markdown(doc: dict) -> str:
    lines = [f"Command: `{doc['command']}`", "", f"Run {doc['date']} on {doc['machine']['cpu']['model']}, "
             f"{doc['machine']['cpu']['cores']} cores (shared with other jobs: export times are not benchmarks)", "",
             "| Model | Format | Bytes | of fp32 | runtime ops = fp32's | decode left after load | max abs logit diff "
             "(scale) | top-1 agreement |", "|---|---|---|---|---|---|---|---|"]
    for r in doc["rows"]:
        lines.append(f"| {r['model']} | {r['format']} | {r['bytes']:,} | {r['of_fp32']:.1%} | "
                     f"{'yes' if r['same_runtime_ops'] else 'no'} | {r['left_after_load'] or 'none'} | "
                     f"{r['max_abs_diff']:.3g} ({r['logit_scale']:.3g}) | {r['agreement']:.1%} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    from edge.bench.machine import describe

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", action="append", help="torchvision classifiers (default: mobilenet_v3_small, "
                                                        "resnet18, mobilenet_v2)")
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--channels", type=int, default=1)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--markdown", type=Path)
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        if TA_STUDENT.exists():
            from edge.io.checkpoints import load_checkpoint

            rows += measure("TA student", load_checkpoint(TA_STUDENT), TA_FORMATS, Path(tmp))
        for arch in args.arch or ("mobilenet_v3_small", "resnet18", "mobilenet_v2"):
            rows += measure(f"{arch} {args.channels}x{args.size}", torchvision_file(arch, args.size, args.channels),
                            ANY_FORMATS, Path(tmp))
    doc = {"command": "python -m studies.export_any_model " + shlex.join(sys.argv[1:] if argv is None else argv),
           "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "machine": describe(), "rows": rows}
    if args.json:
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
    if args.markdown:
        args.markdown.write_text(markdown(doc))
    print(markdown(doc))


if __name__ == "__main__":
    main()
