"""Least-squares channel pruning vs |gamma| pruning on a real StudentNet, before any fine-tuning.

The classifier is merged into the last pointwise conv first (exact: `edge.models.merge.merge_classifier`);
then, for each keep fraction, the prunable widths (after the last max-pool) are cut to that fraction
two ways and compared on photos never used to fit anything:

- ``least squares``: channels chosen by OBS on each next layer's least-squares problem, survivors
  re-solved (`edge.prune.reconstruct.prune_reconstruct`), on the first ``--fit`` photos;
- ``gamma magnitude``: the same widths, the channels with the smallest BatchNorm |gamma| removed, the
  removed channels' constant folded into the next bias (`edge.prune.slim.prune`), no data.

Agreement with the unpruned model and accuracy against reference labels, fp32 torch.

Usage: python -m studies.reconstruction MODEL PHOTOS --labels CSV [--fit N] [--keep 0.9,0.8,0.7]
       [--json OUT] [--markdown OUT]
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch


def _logits(config, state, images: torch.Tensor) -> torch.Tensor:
    from edge.models.student import build_student

    model = build_student(config, state)
    with torch.no_grad():
        return torch.cat([model(images[i:i + 64]) for i in range(0, len(images), 64)])


def gamma_pruned(config, state, widths):
    from edge.prune.reconstruct import prunable_widths
    from edge.prune.slim import importance, prune

    scores = importance(config, state)
    keep = [np.arange(w) for w in config.widths[:-1]]
    for i in prunable_widths(config):
        keep[i] = np.sort(np.argsort(-scores[i], kind="stable")[:widths[i]])
    return prune(config, state, keep)


def run(model: str, photos: str, labels: str, fit: int, keeps: list[float]) -> dict:
    from edge.data.folders import read_labels
    from edge.data.datasets import decode_image_set, normalize
    from edge.io.checkpoints import load_net
    from edge.models.merge import merge_classifier
    from edge.prune.reconstruct import prune_reconstruct, target_widths
    from edge.prune.slim import numpy_state

    torch.set_num_threads(1)
    net = load_net(model)
    config, state = net.spec.config, numpy_state(net)
    data = decode_image_set(photos, net.preprocess)
    images = normalize(data.pixels, net.preprocess)
    truth = read_labels(labels)
    y = np.array([truth[i] for i in data.ids[fit:]])
    held_out = images[fit:]
    reference = _logits(config, state, held_out).argmax(1).numpy()
    merged_config, merged = merge_classifier(config, state)
    merged_logits = _logits(merged_config, merged, held_out)
    rows = [{"method": "unpruned", "keep": 1.0, "widths": list(config.widths), "parameters": config.num_parameters(),
             "agreement": 1.0, "accuracy": float(np.mean(reference == y))},
            {"method": "classifier merged (exact)", "keep": 1.0, "widths": list(merged_config.widths),
             "parameters": merged_config.num_parameters(),
             "agreement": float(np.mean(merged_logits.argmax(1).numpy() == reference)),
             "accuracy": float(np.mean(merged_logits.argmax(1).numpy() == y)),
             "max_logit_change": float((merged_logits - _logits(config, state, held_out)).abs().max())}]
    for keep in keeps:
        widths = target_widths(merged_config, keep)
        began = time.time()
        small_config, small = prune_reconstruct(merged_config, merged, widths, images[:fit])
        seconds = time.time() - began
        for method, (c, s) in (("least squares", (small_config, small)),
                               ("gamma magnitude", gamma_pruned(merged_config, merged, widths))):
            answers = _logits(c, s, held_out).argmax(1).numpy()
            rows.append({"method": method, "keep": keep, "widths": list(c.widths), "parameters": c.num_parameters(),
                         "agreement": float(np.mean(answers == reference)), "accuracy": float(np.mean(answers == y)),
                         **({"seconds": round(seconds, 1)} if method == "least squares" else {})})
            print(rows[-1], flush=True)
    return {"model": model, "photos": photos, "fit_photos": fit, "held_out_photos": len(y), "rows": rows}


def markdown(result: dict, command: str) -> str:
    lines = [f"Command: `{command}`", "",
             f"Fit on the first {result['fit_photos']} photos of {result['photos']} by id (no labels); scored on the "
             f"other {result['held_out_photos']} (fp32 torch, no fine-tuning): agreement with the unpruned model and "
             "accuracy against the reference labels.", "",
             "| method | keep | widths | parameters | agreement | accuracy | reconstruction s |",
             "|---|---:|---|---:|---:|---:|---:|"]
    for r in result["rows"]:
        lines.append(f"| {r['method']} | {r['keep']:.2f} | {r['widths']} | {r['parameters']:,} | "
                     f"{100 * r['agreement']:.2f}% | {100 * r['accuracy']:.2f}% | {r.get('seconds', '-')} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    import shlex
    import sys

    from studies.slimming_fidelity import photo_study_parser

    parser = photo_study_parser(__doc__)
    parser.add_argument("--fit", type=int, default=250)
    parser.add_argument("--keep", default="0.9,0.8,0.7")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--markdown", type=Path)
    args = parser.parse_args()
    result = run(args.model, args.photos, args.labels, args.fit, [float(k) for k in args.keep.split(",")])
    command = "python -m studies.reconstruction " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    result["command"] = command
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    if args.markdown:
        args.markdown.write_text(markdown(result, command))


if __name__ == "__main__":
    main()
