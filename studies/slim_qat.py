"""Channel slimming that keeps the answers at 4 bits: rounding after slimming vs quantization-aware
fine-tuning of the slimmed model's codes against the unslimmed model, on two splits of the photos.

For each split (choose on one part of the photos, score on the rest against the reference labels):
the classifier is merged (exact), the widths after the last max-pool are cut to ``--keep`` by
least-squares reconstruction on the fit photos (`edge.prune.reconstruct`), and the slimmed model is
exported as uint4 per-channel ``--entropy`` (GPTQ, bias correction) in variants:

- ``fp32``: the slimmed model unrounded (the bytes are over any 4-bit target: a reference);
- ``rounded``: as calibrated (what `edge compress` measured before: slim in fp32, then round);
- ``qat E lr``: then E epochs of trained quantization (`edge.export.finetune`: latent weights on the
  fixed per-channel grid, straight-through rounding) whose teacher is the *unslimmed* fp32 model, on
  function-matching views (flip, rotation, rescale, shift, mixup) of the fit photos
  (`edge.export.quantize.Matching`).

Each file: bytes; accuracy against the reference labels and top-1 agreement with the model on the
held-out photos; on the validation photos (every 5th of the chosen part) agreement and KL on the
clean photos and on ``--views`` function-matching views of each (`edge.workflows.compress_views`),
with the bootstrap standard error of the views signal over photos.

Usage: python -m studies.slim_qat MODEL PHOTOS --labels CSV --keep K [--variants rounded,qat:4:3e-4]
       [--splits first,swapped] [--first 300] [--views 16] [--json OUT] [--markdown OUT]
       python -m studies.slim_qat --merge RUN.json ... [--json OUT] [--markdown OUT]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch


def split_positions(count: int, first: int, which: str) -> tuple[np.ndarray, np.ndarray]:
    """(chosen, held out) positions: the first ``first`` photos and the rest, or swapped."""
    head, rest = np.arange(first), np.arange(first, count)
    return (head, rest) if which == "first" else (rest, head)


def parse_variant(text: str) -> dict:
    """``fp32`` | ``rounded`` | ``qat:EPOCHS:LR`` (the slimmed model) | ``mixed3[:EPOCHS:LR]`` (the unslimmed one)."""
    if text in ("rounded", "fp32"):
        return {"name": text, "epochs": 0, "lr": 0.0, "weights": "uint4" if text == "rounded" else "fp32"}
    kind, _, rest = text.partition(":")
    epochs, lr = rest.split(":") if rest else ("0", "0")
    if kind == "mixed3":
        name = "unslimmed uint3 + mixed" + (f", qat {epochs} epochs lr {lr}" if int(epochs) else "")
        return {"name": name, "epochs": int(epochs), "lr": float(lr), "weights": "uint3", "mixed": True}
    return {"name": f"qat {epochs} epochs lr {lr}", "epochs": int(epochs), "lr": float(lr), "weights": "uint4"}


def mixed_bits(merged, spec, calibration: np.ndarray, target: int, work: Path) -> dict:
    """{layer: bits} raising the layers of ``merged`` whose extra bits lower the KL most per byte, so its
    ``spec`` file fits ``target`` (`edge.export.mixed_precision`; retried on a smaller budget on overshoot)."""
    from edge.export.mixed_precision import STREAM_BYTES, allocate, layer_sensitivity
    from edge.workflows.compress import _export

    rows = layer_sensitivity(merged.build(), calibration, (spec.bits, 4, 5, 6, 8), 1024, progress=False)
    budget = target - _export(merged, spec, work / "base.onnx", calibration, progress=False)
    layer_bits = {}
    for _ in range(3):
        layer_bits = allocate(rows, spec.bits, 0.95 * budget, STREAM_BYTES)
        over = _export(merged, spec, work / "mixed.onnx", calibration, layer_bits, progress=False) - target
        if over <= 0:
            break
        budget -= 1.5 * over
    return layer_bits


def run_split(net, images, truth, chosen, held, keep: float, variants: list[dict], views: int, work: Path,
              log, target: int = 90_000) -> list[dict]:
    from edge.export.mixed_precision import kl_from
    from edge.export.quantize import Matching, QuantSpec
    from edge.models.merge import merge_classifier
    from edge.prune.reconstruct import prune_reconstruct, target_widths
    from edge.prune.slim import numpy_state
    from edge.workflows.compress import _export, _onnx_logits, _scorer, split, with_weights
    from edge.workflows.compress_views import ViewSignal

    fit_at, val_at = (chosen[p] for p in split(len(chosen)))
    teacher = net.build()
    config, state = merge_classifier(net.spec.config, numpy_state(net))
    widths = target_widths(config, keep)
    began = time.time()
    slim = with_weights(net, *prune_reconstruct(config, state, widths, images[fit_at[:256]], pull=0.01))
    merged, allocations = with_weights(net, config, state), {}
    log(f"  reconstruction to {list(widths)}: {time.time() - began:.0f} s")
    with torch.no_grad():
        reference_held = teacher(images[held]).argmax(1).numpy()
        reference_val = teacher(images[val_at]).numpy()
    signal = ViewSignal.of(teacher, images[val_at], views)
    rows = []
    for variant in variants:
        spec = QuantSpec("fp32") if variant["weights"] == "fp32" else \
            QuantSpec(variant["weights"], per_channel=True, entropy=True, train_epochs=variant["epochs"])
        matching = Matching(teacher, images[fit_at].numpy(), variant["lr"]) if variant["epochs"] else None
        path = work / f"{variant['name'].replace(' ', '_').replace(',', '')}.onnx"
        began = time.time()
        calibration, model, layer_bits = images[fit_at[:64]].numpy(), slim, None
        if variant.get("mixed"):
            if spec.weights not in allocations:
                allocations[spec.weights] = mixed_bits(merged, replace(spec, train_epochs=0), calibration, target, work)
            model, layer_bits = merged, allocations[spec.weights]
        size = _export(model, spec, path, calibration, layer_bits, progress=False, matching=matching)
        seconds = time.time() - began
        scorer = _scorer(path)
        answers = _onnx_logits(scorer, images[held]).argmax(1)
        val_logits = _onnx_logits(scorer, images[val_at])
        scores = {"val_agreement": float(np.mean(val_logits.argmax(1) == reference_val.argmax(1))),
                  "val_kl": kl_from(reference_val, val_logits), **signal.score(scorer)}
        row = {"variant": variant["name"], "keep": 1.0 if variant.get("mixed") else keep,
               "widths": list(model.spec.config.widths), "bytes": size, "layer_bits": layer_bits,
               "held_out": len(held), "test_accuracy": float(np.mean(answers == truth[held])),
               "test_agreement": float(np.mean(answers == reference_held)), **scores, "seconds": round(seconds, 1)}
        log(f"  {row}")
        rows.append(row)
    with torch.no_grad():
        fp32 = teacher(images[held]).argmax(1).numpy()
    rows.append({"variant": "model fp32", "held_out": len(held), "test_accuracy": float(np.mean(fp32 == truth[held]))})
    return rows


def run(model: str, photos: str, labels: str, keep: float, variants: list[str], splits: list[str], first: int,
        views: int, log=print) -> dict:
    from edge.data.datasets import decode_image_set, normalize
    from edge.data.folders import read_labels
    from edge.io.checkpoints import load_net

    torch.set_num_threads(1)
    torch.manual_seed(0)
    net = load_net(model)
    data = decode_image_set(photos, net.preprocess, progress=False)
    reference = read_labels(labels, len(net.classes))
    truth = np.array([reference[i] for i in data.ids])
    images = normalize(data.pixels, net.preprocess)
    result = {"model": model, "photos": photos, "labels": labels, "keep": keep, "first": first, "views": views,
              "splits": {}}
    with tempfile.TemporaryDirectory() as work:
        for which in splits:
            chosen, held = split_positions(len(images), first, which)
            log(f"split {which}: choose on {len(chosen)} photos, score on {len(held)}")
            result["splits"][which] = run_split(net, images, truth, chosen, held, keep,
                                                [parse_variant(v) for v in variants], views, Path(work), log)
    return result


def markdown(result: dict) -> str:
    lines = [f"# At most 90,000 B: slimmed (keep {result['keep']}) at 4 bits or unslimmed at 3 bits + mixed precision, "
             "rounded or trained at the bit width", "",
             f"Photos: {result['photos']}; chosen on the first {result['first']} (split first) or the rest (swapped), "
             "every 5th of them held back for validation, the others fit; scored on the other part against "
             f"{result['labels']}. {result['views']} augmented views per validation photo.", "",
             "| split | keep | variant | bytes | held-out accuracy | model fp32 | agreement with the model | "
             "val agreement | val KL | views agreement | views KL (± bootstrap s.e.) | seconds |",
             "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for which, rows in result["splits"].items():
        fp32 = next(r for r in rows if r["variant"] == "model fp32")["test_accuracy"]
        for r in rows:
            if r["variant"] == "model fp32":
                continue
            lines.append(f"| {which} ({r['held_out']}) | {r['keep']:.2f} | {r['variant']} | {r['bytes']:,} | {r['test_accuracy']:.2%} | "
                         f"{fp32:.2%} | {r['test_agreement']:.2%} | {r['val_agreement']:.2%} | {r['val_kl']:.4f} | "
                         f"{r['views_agreement']:.2%} | {r['views_kl']:.4f} ± {r['views_kl_noise']:.4f} | "
                         f"{r['seconds']:.0f} |")
    return "\n".join(lines) + "\n"


def merged(paths: list[str]) -> dict:
    """The results of several runs (other variants or splits) as one: each split's rows in run order, the
    model's fp32 row once."""
    runs = [json.loads(Path(p).read_text()) for p in paths]
    result = {**runs[0], "splits": {}}
    for run in runs:
        for which, rows in run["splits"].items():
            have = result["splits"].setdefault(which, [])
            have[:] = [r for r in have if r["variant"] != "model fp32"] + rows
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?")
    parser.add_argument("photos", nargs="?")
    parser.add_argument("--merge", nargs="+", metavar="JSON", help="Write the results of these runs as one (no run).")
    parser.add_argument("--labels")
    parser.add_argument("--keep", type=float)
    parser.add_argument("--variants", default="rounded,qat:4:3e-4")
    parser.add_argument("--splits", default="first,swapped")
    parser.add_argument("--first", type=int, default=300)
    parser.add_argument("--views", type=int, default=16)
    parser.add_argument("--json")
    parser.add_argument("--markdown")
    args = parser.parse_args()
    if args.merge:
        result = merged(args.merge)
    else:
        result = run(args.model, args.photos, args.labels, args.keep, args.variants.split(","), args.splits.split(","),
                     args.first, args.views, log=lambda line: print(line, flush=True))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    if args.markdown:
        Path(args.markdown).write_text(markdown(result))


if __name__ == "__main__":
    main()
