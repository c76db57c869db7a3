"""Do synthesised inputs let a slimmed StudentNet keep the model's answers, where a few hundred photos do not?

The data-free route of DeepInversion (Yin et al., CVPR 2020) and ZeroQ (Cai et al., CVPR 2020): images optimised
so that every BatchNorm layer of the model sees the batch statistics it was trained on (its running mean and
variance), while the model answers a chosen class. On two splits of the photos (choose on one part, score on the
rest), `edge compress`'s slimming (`--keep` of every width after the last max-pool, least-squares reconstruction
on the training photos) is fine-tuned by function matching against the unslimmed model (`edge.train.matching`,
as a compress round) for ``--epochs`` at ``--lr`` on:

- the training photos alone;
- plus ``--from-noise`` images synthesised from noise (shared by both splits: they come from the model alone);
- plus ``--from-photos`` images started from mixups of two training photos each and pushed to a random class
  (boundary samples: photo-like inputs near the model's decision boundaries);
- plus the held-out photos themselves: an oracle, the most that more real photos of the same kind could give.

Every row: held-out agreement with the model, accuracy against the reference labels, the mean KL divergence of
the held-out answers from the model's (less noisy than agreement), and the views KL of `edge compress` on the
validation photos. Synthesised images are kept in ``--work`` (``.npy``); rows are appended to ``--json`` as they
are measured, and a second run with the same arguments continues after the last one.

Usage: python -m studies.synthetic_inputs MODEL PHOTOS --labels CSV --work DIR --json OUT [--markdown OUT] [--png OUT]
       [--keep 0.9] [--epochs 30] [--lr 3e-4] [--from-noise 128] [--from-photos 256] [--splits first,swapped]
       [--cache DIR]
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

BATCH = 32  # images synthesised together: BatchNorm statistics are matched per batch
FIRST_BN_WEIGHT = 10.0  # the first BatchNorm sees raw colours: its statistics are weighted up (as DeepInversion)


@dataclasses.dataclass(frozen=True)
class Synthesis:
    """One DeepInversion setting: Adam steps on the pixels (0..1) of a batch."""

    iterations: int
    lr: float
    jitter: int  # the batch is rolled by up to this many pixels (and flipped) at every step
    bn_weight: float = 2.0
    tv_weight: float = 0.5  # total variation: neighbouring pixels alike


FROM_NOISE = Synthesis(iterations=200, lr=0.05, jitter=16)
FROM_PHOTOS = Synthesis(iterations=40, lr=0.02, jitter=8)


def batchnorm_losses(model: nn.Module) -> tuple[list, list]:
    """Forward hooks on every BatchNorm2d of ``model``: each call appends ``|mean - running_mean| + |var - running_var|``
    of the layer's input batch to the returned list."""
    losses = []

    def hook(module, args, output):
        x = args[0]
        losses.append(torch.norm(x.mean((0, 2, 3)) - module.running_mean)
                      + torch.norm(x.var((0, 2, 3), unbiased=False) - module.running_var))

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    return losses, handles


def total_variation(x: torch.Tensor) -> torch.Tensor:
    return (x[..., 1:, :] - x[..., :-1, :]).pow(2).mean() + (x[..., :, 1:] - x[..., :, :-1]).pow(2).mean()


def moves(how: Synthesis, generator: torch.Generator) -> tuple[int, int, bool]:
    """One step's jitter (rows, columns) and whether it flips."""
    dy, dx = torch.randint(-how.jitter, how.jitter + 1, (2,), generator=generator).tolist()
    return dy, dx, torch.rand(1, generator=generator).item() < 0.5


def deep_inversion(model: nn.Module, start: torch.Tensor, targets: torch.Tensor, how: Synthesis,
                   generator: torch.Generator) -> torch.Tensor:
    """``start`` (N, C, H, W pixels 0..1) optimised towards the model's BatchNorm statistics and ``targets``
    -> uint8 pixels."""
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    x = start.clone().requires_grad_(True)
    optimiser = torch.optim.Adam([x], lr=how.lr, betas=(0.5, 0.9))
    losses, handles = batchnorm_losses(model)
    try:
        for _ in range(how.iterations):
            dy, dx, flip = moves(how, generator)
            moved = torch.roll(x, (dy, dx), (2, 3))
            if flip:
                moved = moved.flip(3)
            losses.clear()
            logits = model(moved)
            statistics = FIRST_BN_WEIGHT * losses[0] + sum(losses[1:])
            loss = F.cross_entropy(logits, targets) + how.bn_weight * statistics \
                + how.tv_weight * total_variation(moved)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            with torch.no_grad():
                x.clamp_(0, 1)
    finally:
        for handle in handles:
            handle.remove()
    return (x.detach() * 255).round().to(torch.uint8)


def synthesise(model: nn.Module, count: int, side: int, classes: int, how: Synthesis, seed: int,
               photos: torch.Tensor | None, path: Path) -> torch.Tensor:
    """``count`` images (uint8), batch by batch, from noise or (``photos``: 0..1) from mixups of two photos;
    kept in ``path`` as they are made and reused from there."""
    from tqdm import tqdm

    done = [torch.from_numpy(np.load(path, allow_pickle=False))] if path.exists() else []
    made = sum(len(d) for d in done)
    generator = torch.Generator().manual_seed(seed)
    with tqdm(total=count, initial=made, desc=f"synthesising {path.stem}", unit="image") as bar:
        for first in range(0, count, BATCH):
            n = min(BATCH, count - first)
            targets = torch.randperm(n, generator=generator) % classes
            if photos is None:
                start = 0.5 + 0.2 * torch.randn(n, 3, side, side, generator=generator)
            else:
                pair = torch.randint(len(photos), (2, n), generator=generator)
                weight = torch.rand(n, 1, 1, 1, generator=generator)
                start = weight * photos[pair[0]] + (1 - weight) * photos[pair[1]]
            if first < made:  # made before: its steps' draws are replayed, so later batches come out the same
                for _ in range(how.iterations):
                    moves(how, generator)
                continue
            done.append(deep_inversion(model, start.clamp(0, 1), targets, how, generator))
            np.save(path, torch.cat(done).numpy(), allow_pickle=False)
            bar.update(n)
    return torch.cat(done)


def with_images(train, pixels: torch.Tensor):
    """``train`` (canvases with boxes) plus ``pixels`` (N, C, crop, crop uint8), each centred on a canvas of its own:
    function matching's random crop then has no room to travel; flips and rotations still apply."""
    from edge.data.datasets import ImageSet

    n, channels, side, _ = pixels.shape
    size = train.pixels.shape[-1]
    at = (size - side) // 2
    canvas = torch.zeros(n, channels, size, size, dtype=torch.uint8)
    canvas[:, :, at:at + side, at:at + side] = pixels
    return ImageSet(pixels=torch.cat([train.pixels, canvas]), labels=torch.cat([train.labels, torch.full((n,), -1)]),
                    ids=list(train.ids) + [f"extra{i}" for i in range(n)], classes=train.classes,
                    preprocess=train.preprocess,
                    boxes=torch.cat([train.boxes, torch.tensor([[at, at, side, side]] * n)]))


def example_grid(images: torch.Tensor, path: Path, count: int = 8, side: int = 128) -> None:
    """The first ``count`` of ``images`` (uint8 NCHW) in a row, each ``side`` pixels: a PNG at ``path``."""
    from PIL import Image

    shown = [Image.fromarray(image).resize((side, side), Image.LANCZOS) for image in images[:count].permute(0, 2, 3, 1).numpy()]
    Image.fromarray(np.concatenate([np.asarray(image) for image in shown], axis=1)).save(path, optimize=True)


def measure_split(args, which: str, noise: torch.Tensor | None, done: set, emit) -> None:
    from edge.data.datasets import normalize
    from edge.prune.reconstruct import target_widths
    from edge.workflows.compress import merged as merge
    from studies.slimming_fidelity import fidelity, open_split, schedule_rows, slimmed

    inputs = open_split(args.model, args.photos, args.labels, which, args.cache)
    base = merge(inputs.base)
    with torch.no_grad():
        reference = inputs.base.build().eval()(normalize(inputs.test.pixels, inputs.test.preprocess)).numpy()
    widths = target_widths(inputs.base.spec.config, args.keep)[:-1] + (base.spec.config.widths[-1],)
    start = slimmed(base, inputs, widths)

    def row(variant: str, model: nn.Module, **extra) -> None:
        emit({"split": which, "variant": variant, "widths": list(start.spec.config.widths), **extra,
              **fidelity(model, inputs, reference)})

    def from_photos() -> torch.Tensor:
        return synthesise(inputs.base.build(), args.from_photos, inputs.base.preprocess.crop,
                          len(inputs.base.classes), FROM_PHOTOS, 2, inputs.fit_images,
                          args.work / f"from_photos_{which}.npy")

    if (which, "reconstruction alone") not in done:
        row("reconstruction alone", start.build())
    photos = inputs.train
    extras = {"training photos alone": lambda: None}  # fine-tuning variant -> the images it adds (made when run)
    if noise is not None:
        extras[f"+ {args.from_noise} from noise"] = lambda: noise
    if args.from_photos:
        extras[f"+ {args.from_photos} from photo mixups"] = from_photos
    extras["+ the held-out photos (oracle)"] = lambda: inputs.test.pixels
    for variant, added in extras.items():
        if (which, variant) in done:
            continue
        began = time.time()
        pixels = added()
        synthesis_seconds = time.time() - began
        inputs.train = photos if pixels is None else with_images(photos, pixels)
        with tempfile.TemporaryDirectory() as work:
            for _, seconds, model in schedule_rows(start, inputs, args.epochs, args.lr, args.epochs, Path(work)):
                row(variant, model, images=len(inputs.train), seconds=round(seconds, 1),
                    synthesis_seconds=round(synthesis_seconds, 1))
        inputs.train = photos


def markdown(result: dict) -> str:
    lines = [f"# Synthesised inputs for a slimmed student: {Path(result['model']).name}", "",
             f"From `{result['command']}` on {result['machine']['cpu']} ({result['machine']['cores']} cores).", "",
             f"Every width after the last max-pool cut to keep {result['settings']['keep']:g} by least-squares "
             f"reconstruction, then {result['settings']['epochs']} epochs of function matching (lr "
             f"{result['settings']['lr']:g}) against the unslimmed model on the images named. Held out: the photos not chosen on "
             "(agreement: top-1 with the model; accuracy: against the reference labels; KL: mean KL divergence of the "
             "answers from the model's); views KL: what `edge compress` chooses by, on the validation photos. Seconds: "
             "the fine-tuning's, and in brackets the synthesis's (from photo mixups: per split; from noise: "
             f"{result.get('noise_synthesis_seconds', 0):.0f} s once, shared by both splits).", "",
             "| split | fine-tuned on | images | held-out agreement | held-out accuracy | held-out KL "
             "| views KL (± s.e.) | seconds (synthesis) |", "|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        seconds = f"{r['seconds']:.0f} ({r['synthesis_seconds']:.0f})" if "seconds" in r else "-"
        lines.append(f"| {r['split']} | {r['variant']} | {r.get('images', '-')} | {100 * r['held_out_agreement']:.2f}% | "
                     f"{100 * r['held_out_accuracy']:.2f}% | {r['held_out_kl']:.4f} | "
                     f"{r['views_kl']:.4f} ± {r['views_kl_noise']:.4f} | {seconds} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    import sys

    from edge.io.checkpoints import load_net
    from studies.slimming_fidelity import photo_study_parser, resumable_rows

    parser = photo_study_parser(__doc__)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--keep", type=float, default=0.9)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--from-noise", type=int, default=128)
    parser.add_argument("--from-photos", type=int, default=256)
    parser.add_argument("--splits", default="first,swapped")
    parser.add_argument("--cache", type=Path)
    parser.add_argument("--json", type=Path, required=True)
    parser.add_argument("--markdown", type=Path)
    parser.add_argument("--png", type=Path, help="a grid of the first images synthesised from noise")
    args = parser.parse_args()
    torch.set_num_threads(2)
    args.work.mkdir(parents=True, exist_ok=True)
    result, emit = resumable_rows(args.json, args.model, "python -m studies.synthetic_inputs " + " ".join(sys.argv[1:]))
    done = {(r["split"], r["variant"]) for r in result["rows"]}
    result.setdefault("settings", {"keep": args.keep, "epochs": args.epochs, "lr": args.lr})

    net = load_net(Path(args.model))
    if any(net.preprocess.mean) or any(s != 1 for s in net.preprocess.std):
        raise SystemExit(f"{args.model}: synthesis here works on 0..1 pixels; this model's input is normalised")
    began = time.time()
    noise = synthesise(net.build(), args.from_noise, net.preprocess.crop, len(net.classes), FROM_NOISE, 1, None,
                       args.work / "from_noise.npy") if args.from_noise else None
    result.setdefault("noise_synthesis_seconds", round(time.time() - began, 1))
    if args.png and noise is not None:
        example_grid(noise, args.png)
    for which in args.splits.split(","):
        measure_split(args, which, noise, done, emit)
    if args.markdown:
        args.markdown.write_text(markdown(result))


if __name__ == "__main__":
    main()
