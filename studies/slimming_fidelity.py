"""How much of a StudentNet's answers does channel slimming keep in fp32, before any rounding, and how much do
the photos at hand let fine-tuning win back? On two splits of the photos (choose on one part, score on the
rest), for `edge compress`'s first cut (``--keep``) of the merged model's widths after the last max-pool:

- each prunable stage cut alone to ``--stage-keep`` (least-squares reconstruction: which stage costs least);
- every prunable stage cut to ``--keep`` by reconstruction alone;
- then function matching against the unslimmed model (`edge.train.matching`: the views and mixup
  `edge compress` trains on) for each ``--schedules`` entry EPOCHS:LR, scored every ``--every`` epochs.

Every row: parameters, top-1 agreement with the model and accuracy against the reference labels on the held-out
photos, and the views KL (`edge.workflows.compress_views`, with its bootstrap standard error) on the
validation photos (every 5th of the chosen part), the signal `edge compress` chooses by. Rows are appended to
``--json`` as they are measured; a second run with the same arguments continues after the last one.

Usage: python -m studies.slimming_fidelity MODEL PHOTOS --labels CSV [--keep 0.9] [--stage-keep 0.7]
       [--schedules 4:5e-5,100:3e-4] [--every 25] [--splits first,swapped] [--cache DIR] --json OUT [--markdown OUT]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


SPLITS = {"first": ("@0:300", "@300:497"), "swapped": ("@300:497", "@0:300")}


def machine_record() -> dict:
    from edge.bench.machine import summary, versions

    return {**summary(), "versions": versions()}


def resumable_rows(path: Path, model: str, command: str):
    """-> (the study's result: read back from ``path`` when a run wrote it before, else a new one; ``emit(row)``,
    which appends a row to it and rewrites ``path``)."""
    result = json.loads(path.read_text()) if path.exists() else \
        {"model": model, "command": command, "machine": machine_record(), "rows": []}

    def emit(row: dict) -> None:
        result["rows"].append(row)
        path.write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps(row), flush=True)

    return result, emit


def open_split(model: str, photos: str, labels: str, which: str, cache: Path | None):
    from edge.core.options import SearchSettings
    from edge.workflows.compress import open_inputs

    chosen, held = SPLITS[which]
    return open_inputs(Path(model), photos + chosen, SearchSettings(target_bytes=1), test=photos + held,
                       test_labels=Path(labels), cache_dir=cache, log=lambda line: None, progress=False)


def fidelity(model: torch.nn.Module, inputs, reference: np.ndarray | None = None) -> dict:
    """Held-out agreement with the model and accuracy; the validation views KL and its noise; with the model's
    held-out logits ``reference``, the held-out answers' mean KL divergence from them too."""
    from edge.data.datasets import normalize
    from edge.export.mixed_precision import kl_from

    model.eval()
    with torch.no_grad():
        logits = model(normalize(inputs.test.pixels, inputs.test.preprocess)).numpy()
        views = inputs.views.score(lambda x: model(x).numpy())
    answers = logits.argmax(1)
    held_out_kl = {} if reference is None else {"held_out_kl": kl_from(reference, logits)}
    return {"held_out_agreement": float(np.mean(answers == inputs.test_reference)),
            "held_out_accuracy": float(np.mean(answers == inputs.test.labels.numpy())),
            "views_kl": views["views_kl"], "views_kl_noise": views["views_kl_noise"], **held_out_kl}


def slimmed(merged, inputs, widths: tuple[int, ...]):
    from edge.prune.reconstruct import prune_reconstruct
    from edge.prune.slim import numpy_state
    from edge.workflows.compress import with_weights

    return with_weights(merged, *prune_reconstruct(merged.spec.config, numpy_state(merged), widths,
                                                   inputs.calibration, pull=0.01))


def schedule_rows(start, inputs, epochs: int, lr: float, every: int, work: Path):
    """Function matching of ``start`` for ``epochs`` (cosine from ``lr``), a row every ``every`` epochs."""
    from edge.data.datasets import Augment
    from edge.prune.reconstruct import head_stages
    from edge.train.loop import Recipe, Run, fit
    from edge.train.matching import FunctionMatching

    objective = FunctionMatching(inputs.teacher, head_stages(inputs.base.spec.config))
    run = Run(start, start.build(), objective, Recipe(epochs=epochs, batch_size=32, lr=lr, weight_decay=0.0, seed=1),
              inputs.train, Augment(start.preprocess.crop), work / "run.pt", inputs.val, torch.device("cpu"), 0, {},
              False)
    for stop in sorted({*range(every, epochs, every), epochs}):
        began = time.time()
        with contextlib.redirect_stderr(io.StringIO()):  # fit's epoch lines
            fit(run, (work / "run.pt").exists(), stop_after=stop)
        yield stop, time.time() - began, run.model


def measure_split(args, which: str, done: set, emit) -> None:
    from edge.prune.reconstruct import prunable_widths, target_widths
    from edge.workflows.compress import merged as merge

    inputs = open_split(args.model, args.photos, args.labels, which, args.cache)
    merged = merge(inputs.base)
    config = merged.spec.config

    def row(name: str, net, model=None, **extra):
        if (which, name) not in done:
            emit({"split": which, "variant": name, "widths": list(net.spec.config.widths),
                  "parameters": net.spec.config.num_parameters(), **extra, **fidelity(model or net.build(), inputs)})

    row("model (merged)", merged)
    for stage in prunable_widths(config):
        widths = tuple(round(args.stage_keep * w) if i == stage else w for i, w in enumerate(config.widths))
        if (which, f"stage {stage} cut to {args.stage_keep:g}") not in done:
            row(f"stage {stage} cut to {args.stage_keep:g}", slimmed(merged, inputs, widths))
    widths = target_widths(inputs.base.spec.config, args.keep)[:-1] + (config.widths[-1],)
    start = slimmed(merged, inputs, widths)
    row(f"keep {args.keep:g}, reconstruction alone", start)
    for epochs, lr in args.schedules:
        names = [f"keep {args.keep:g}, function matching {epochs} epochs lr {lr:g}: epoch {e}"
                 for e in sorted({*range(args.every, epochs, args.every), epochs})]
        if all((which, n) in done for n in names):
            continue
        with tempfile.TemporaryDirectory() as work:
            for epoch, seconds, model in schedule_rows(start, inputs, epochs, lr, args.every, Path(work)):
                name = f"keep {args.keep:g}, function matching {epochs} epochs lr {lr:g}: epoch {epoch}"
                row(name, start, model, epoch=epoch, seconds=round(seconds, 1))


def markdown(result: dict) -> str:
    lines = [f"# Slimming fidelity in fp32: {Path(result['model']).name}", "",
             f"From `{result['command']}` on {result['machine']['cpu']} ({result['machine']['cores']} cores).", "",
             "Held out: the photos not chosen on (agreement: top-1 with the model; accuracy: against the reference "
             "labels); views KL: mean KL from the model over 8 augmented views of each validation photo, ± its "
             "bootstrap standard error (what `edge compress` chooses by).", "",
             "| split | variant | widths | parameters | held-out agreement | held-out accuracy | views KL (± s.e.) |",
             "|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['split']} | {r['variant']} | {r['widths']} | {r['parameters']:,} | "
                     f"{100 * r['held_out_agreement']:.2f}% | {100 * r['held_out_accuracy']:.2f}% | "
                     f"{r['views_kl']:.4f} ± {r['views_kl_noise']:.4f} |")
    return "\n".join(lines) + "\n"


def photo_study_parser(doc: str) -> argparse.ArgumentParser:
    """The arguments every study over a model and the shared photos takes: MODEL PHOTOS --labels CSV."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("photos")
    parser.add_argument("--labels", required=True)
    return parser


def parse_schedules(text: str) -> list[tuple[int, float]]:
    return [(int(e), float(lr)) for e, lr in (item.split(":") for item in text.split(","))]


def main() -> None:
    import sys

    parser = photo_study_parser(__doc__)
    parser.add_argument("--keep", type=float, default=0.9)
    parser.add_argument("--stage-keep", type=float, default=0.7)
    parser.add_argument("--schedules", type=parse_schedules, default=parse_schedules("4:5e-5,100:3e-4"))
    parser.add_argument("--every", type=int, default=25)
    parser.add_argument("--splits", default="first,swapped")
    parser.add_argument("--cache", type=Path)
    parser.add_argument("--json", type=Path, required=True)
    parser.add_argument("--markdown", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(2)
    result, emit = resumable_rows(args.json, args.model, "python -m studies.slimming_fidelity " + " ".join(sys.argv[1:]))
    done = {(r["split"], r["variant"]) for r in result["rows"]}
    for which in args.splits.split(","):
        measure_split(args, which, done, emit)
    if args.markdown:
        args.markdown.write_text(markdown(result))


if __name__ == "__main__":
    main()
