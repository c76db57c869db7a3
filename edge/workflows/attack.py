"""`edge attack`: FGSM / iterative FGSM against a model and its compressed exports, and what
input-side defenses (`edge.workflows.defenses`) win back.

Images are attacked in the model's input space: the 8-bit pixels after its own preprocessing
(the homework's CenterCrop 256 of the raw photo), before any mean/std normalisation. An attack
works on ``x = pixels / 255`` and its result is rounded back to 8-bit pixels, clipped to
``[0, 255]`` and to ``eps * 255`` levels of the original, so ``L_inf <= eps`` holds for the
pixels a PNG stores (and ``== eps`` for FGSM, wherever a pixel is not pinned at 0 or 255).

- ``fgsm``:  ``x' = x + eps * sign(grad_x CE(model(x), y))`` (Goodfellow et al.)
- ``ifgsm``: ``steps`` signed-gradient steps of ``2.5 * eps / steps``, each projected back into the
  eps-ball and [0, 1] (Kurakin et al.'s iterative FGSM with Madry et al.'s step size), no random start.

White-box: on a checkpoint's StudentNet, or on an ONNX file rebuilt in torch from its decoded
weights (`edge.inference.onnx_torch`). Transfer: adversarial images made on a ``source`` model, scored
by the target as it runs (ONNX Runtime for .onnx). Every score uses the target's own runtime.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from edge.core.config import ModelCard
from edge.data.folders import DatasetError, Sample
from edge.workflows.defenses import Defense
from edge.core.errors import EdgeError
from edge.core.files import real_path
from edge.data.preprocess import center_crop, read_image

METHODS = ("fgsm", "ifgsm")
EXAMPLES = 3  # images of the first batch shown in the grid
IFGSM_STEP_SCALE = 2.5  # step = 2.5 * eps / steps: enough to reach the ball's surface from any start


class AttackError(EdgeError, ValueError):
    """Bad --eps / --method values or models that cannot be attacked together."""


@dataclass(frozen=True)
class Epsilon:
    """An L_inf budget as the user wrote it (``2/255``) and in 8-bit levels."""

    text: str
    value: float

    @property
    def levels(self) -> int:
        """Whole 8-bit steps allowed: the rounding of an attacked image may use no more."""
        return math.floor(self.value * 255 + 1e-6)

    @property
    def slug(self) -> str:
        """A file-name-safe name: ``eps2`` for 2/255, else the value (``eps0.05``)."""
        exact = abs(self.value * 255 - round(self.value * 255)) < 1e-6
        return f"eps{round(self.value * 255)}" if exact else f"eps{self.value:g}"


def parse_eps(text: str) -> tuple[Epsilon, ...]:
    """``1/255,2/255,0.03`` -> budgets (fractions or decimals) in increasing order; each must allow
    at least one 8-bit step (>= 1/255) and at most 1."""
    budgets = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        try:
            value = float(Fraction(part))
        except (ValueError, ZeroDivisionError):
            raise AttackError(f"--eps: {part!r} is not a number or fraction (e.g. 2/255)") from None
        if value < 1 / 255 - 1e-9:
            raise AttackError(f"--eps: {part} is below 1/255: 8-bit images cannot move by less than 1/255")
        if value > 1:
            raise AttackError(f"--eps: {part} is above 1: pixels lie in [0, 1], so no budget exceeds 1 (= 255/255)")
        budgets.append(Epsilon(part, value))
    if not budgets:
        raise AttackError("--eps: give one or more budgets, e.g. 1/255,2/255,8/255")
    unique = {round(b.value * 255, 6): b for b in budgets}  # 2/255 and 0.0078431373 are one budget
    return tuple(sorted(unique.values(), key=lambda b: b.value))


def parse_methods(text: str) -> tuple[str, ...]:
    methods = tuple(dict.fromkeys(m.strip().lower() for m in text.split(",") if m.strip()))
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise AttackError(f"--method: {', '.join(unknown) or 'nothing given'}: choose from {', '.join(METHODS)}")
    return methods


class PixelModel(torch.nn.Module):
    """A classifier taking [0, 1] pixels: the card's mean/std normalisation, then the network."""

    def __init__(self, network: torch.nn.Module, card: ModelCard):
        super().__init__()
        self.network = network.eval().requires_grad_(False)
        self.register_buffer("mean", torch.tensor(card.preprocess.mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(card.preprocess.std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.network((x - self.mean) / self.std)


def _input_gradient(model: PixelModel, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    x = x.detach().requires_grad_(True)
    loss = F.cross_entropy(model(x), labels, reduction="sum")
    (grad,) = torch.autograd.grad(loss, x)
    return grad


def to_pixels(x: torch.Tensor, original: torch.Tensor, eps: Epsilon) -> torch.Tensor:
    """Attacked [0, 1] images -> uint8 pixels within ``eps.levels`` of ``original`` (uint8) and [0, 255]."""
    rounded = torch.round(x * 255)
    low = (original.to(torch.int16) - eps.levels).clamp(min=0)
    high = (original.to(torch.int16) + eps.levels).clamp(max=255)
    return torch.maximum(torch.minimum(rounded.to(torch.int16), high), low).to(torch.uint8)


def fgsm(model: PixelModel, pixels: torch.Tensor, labels: torch.Tensor, budgets: tuple[Epsilon, ...]
         ) -> dict[Epsilon, torch.Tensor]:
    """One gradient for every budget: ``{eps: uint8 adversarial pixels}``."""
    x = pixels.float() / 255
    direction = _input_gradient(model, x, labels).sign()
    return {eps: to_pixels((x + eps.value * direction).clamp(0, 1), pixels, eps) for eps in budgets}


def ifgsm(model: PixelModel, pixels: torch.Tensor, labels: torch.Tensor, eps: Epsilon, steps: int) -> torch.Tensor:
    """Iterative FGSM: projected signed-gradient steps, then rounded to 8-bit pixels."""
    x = pixels.float() / 255
    step = IFGSM_STEP_SCALE * eps.value / steps
    adversarial = x.clone()
    for _ in range(steps):
        adversarial = adversarial + step * _input_gradient(model, adversarial, labels).sign()
        adversarial = torch.clamp(torch.minimum(torch.maximum(adversarial, x - eps.value), x + eps.value), 0, 1)
    return to_pixels(adversarial, pixels, eps)


def craft(model: PixelModel, pixels: torch.Tensor, labels: torch.Tensor, methods: tuple[str, ...],
          budgets: tuple[Epsilon, ...], steps: int) -> dict[tuple[str, Epsilon], torch.Tensor]:
    """Every (method, eps) adversarial batch for ``model``."""
    out = {}
    if "fgsm" in methods:
        out.update({("fgsm", eps): adv for eps, adv in fgsm(model, pixels, labels, budgets).items()})
    if "ifgsm" in methods:
        out.update({("ifgsm", eps): ifgsm(model, pixels, labels, eps, steps) for eps in budgets})
    return out


# --- models: what is attacked, what crafts, what scores ---


@dataclass
class Target:
    """A model under test: ``score`` runs it as it is deployed ((N,C,H,W) [0, 1] float32 -> logits),
    ``white_box`` is its differentiable torch twin (None: transfer only)."""

    key: str
    path: Path
    card: ModelCard
    kind: str
    score: object
    white_box: PixelModel | None


def _normalise(card: ModelCard, x: np.ndarray) -> np.ndarray:
    spec = card.preprocess
    if any(spec.mean) or any(s != 1 for s in spec.std):
        x = (x - np.asarray(spec.mean, np.float32)[:, None, None]) / np.asarray(spec.std, np.float32)[:, None, None]
    return x


def open_target(path: Path, pools: tuple[int, ...] | None = None, white_box: bool = True) -> Target:
    """A checkpoint (a StudentNet or a cnn / group baseline, scored and attacked by the same torch module)
    or one of our ONNX files (scored by ONNX Runtime, attacked through `edge.inference.onnx_torch`)."""
    path = Path(path)
    if path.suffix.lower() == ".onnx":
        from edge.inference.onnx_torch import torch_from_onnx
        from edge.inference.runtime import OnnxClassifier

        onnx_model = OnnxClassifier(path, threads=1)
        card, quant = onnx_model.card, onnx_model.quant
        kind = str(quant.get("weights", "onnx")) + (" per-channel" if quant.get("per_channel") else "")
        score = lambda x: onnx_model(_normalise(card, x))  # noqa: E731 - ONNX inputs are normalised
        network = PixelModel(torch_from_onnx(path), card) if white_box else None
        return Target(path.name, path, card, f"{kind} (ONNX Runtime)", score, network)
    from edge.io.checkpoints import load_model
    from edge.inference.torch_backend import TorchClassifier

    checkpoint = load_model(path, pools=pools)
    network = PixelModel(TorchClassifier(checkpoint).model, checkpoint.card)

    def score(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return network(torch.from_numpy(x)).numpy()

    return Target(path.name, path, checkpoint.card, "fp32 (torch)", score, network)


# --- the run ---


@dataclass
class Counts:
    """Running totals for one report row."""

    images: int = 0
    correct: int = 0
    clean_correct: int = 0
    flipped: int = 0  # right on the clean image, wrong on the attacked one
    max_levels: int = 0
    defended: dict[str, int] = field(default_factory=dict)
    defended_clean: dict[str, int] = field(default_factory=dict)


@dataclass
class Settings:
    methods: tuple[str, ...]
    budgets: tuple[Epsilon, ...]
    steps: int
    defenses: tuple[Defense, ...]
    batch: int = 8
    save_dir: Path | None = None


def load_crops(samples: list[Sample], card: ModelCard) -> torch.Tensor:
    """Decoded, centre-cropped uint8 pixels (N, C, H, W) of ``samples``: the model's input space."""
    crops = [center_crop(read_image(s.path, card.preprocess)[0], card.preprocess.crop) for s in samples]
    return torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).contiguous()


def _predict(target: Target, pixels: torch.Tensor, defense: Defense | None = None) -> np.ndarray:
    x = pixels.float() / 255
    if defense is not None:
        x = defense(x)
    return target.score(np.ascontiguousarray(x.numpy(), dtype=np.float32)).argmax(1)


def _answers(target: Target, pixels: torch.Tensor, defenses: tuple[Defense, ...]) -> dict:
    """Predicted classes without defense (key None) and behind each defense (key: its name)."""
    return {None: _predict(target, pixels), **{d.name: _predict(target, pixels, d) for d in defenses}}


def _tally(counts: Counts, clean: dict, attacked: dict, levels: int, labels: np.ndarray) -> None:
    right_clean, right = clean[None] == labels, attacked[None] == labels
    counts.images += len(labels)
    counts.correct += int(right.sum())
    counts.clean_correct += int(right_clean.sum())
    counts.flipped += int((right_clean & ~right).sum())
    counts.max_levels = max(counts.max_levels, levels)
    for name in (k for k in clean if k is not None):
        counts.defended[name] = counts.defended.get(name, 0) + int((attacked[name] == labels).sum())
        counts.defended_clean[name] = counts.defended_clean.get(name, 0) + int((clean[name] == labels).sum())


def save_pngs(folder: Path, samples: list[Sample], pixels: torch.Tensor) -> None:
    """Lossless PNGs named by the image's file stem (``0007.png``)."""
    folder.mkdir(parents=True, exist_ok=True)
    for sample, picture in zip(samples, pixels.permute(0, 2, 3, 1).numpy()):
        Image.fromarray(picture.squeeze(-1) if picture.shape[-1] == 1 else picture).save(
            folder / f"{Path(sample.path).stem}.png", compress_level=1)


@dataclass
class Run:
    """Everything `report` needs: totals per row, clean totals, example images for the grid."""

    targets: list[Target]
    source: Target | None
    settings: Settings
    clean: dict[str, Counts] = field(default_factory=dict)
    rows: dict[tuple, Counts] = field(default_factory=dict)
    examples: dict = field(default_factory=dict)
    saved: dict[str, str] = field(default_factory=dict)


def _rows_of(target: Target, source: Target | None) -> list[tuple[str, Target]]:
    """(kind, crafting model) pairs that attack ``target``: white-box, and transfer from ``source``."""
    rows = [("white-box", target)] if target.white_box is not None else []
    if source is not None and real_path(source.path) != real_path(target.path):
        rows.append(("transfer", source))
    return rows


def _save_folder(run: Run, crafter: Target, method: str, eps: Epsilon) -> Path:
    crafters = {t.key for t in run.targets if t.white_box is not None} | ({run.source.key} if run.source else set())
    leaf = f"{method}-{eps.slug}"
    return run.settings.save_dir / (Path(crafter.key) / leaf if len(crafters) > 1 else Path(leaf))


def _attack_batch(run: Run, samples: list[Sample], pixels: torch.Tensor, labels: np.ndarray,
                  keep_examples: bool) -> None:
    settings, crafted = run.settings, {}
    for target in run.targets:
        clean = _answers(target, pixels, settings.defenses)
        _tally(run.clean.setdefault(target.key, Counts()), clean, clean, 0, labels)
        if keep_examples:
            run.examples[target.key] = {"pixels": pixels[:EXAMPLES], "attacked": {}, "labels": labels[:EXAMPLES]}
        for kind, crafter in _rows_of(target, run.source):
            if crafter.key not in crafted:
                crafted[crafter.key] = craft(crafter.white_box, pixels, torch.from_numpy(labels), settings.methods,
                                             settings.budgets, settings.steps)
            for (method, eps), adversarial in crafted[crafter.key].items():
                levels = int((adversarial.int() - pixels.int()).abs().max())
                _tally(run.rows.setdefault((target.key, kind, method, eps), Counts()), clean,
                       _answers(target, adversarial, settings.defenses), levels, labels)
                if keep_examples:
                    run.examples[target.key]["attacked"][(kind, method, eps)] = adversarial[:EXAMPLES]
    if settings.save_dir is not None:
        _save_batch(run, samples, crafted)


def _save_batch(run: Run, samples: list[Sample], crafted: dict) -> None:
    models = {t.key: t for t in [*run.targets, run.source] if t is not None}
    for key, sets in crafted.items():
        for (method, eps), adversarial in sets.items():
            folder = _save_folder(run, models[key], method, eps)
            save_pngs(folder, samples, adversarial)
            run.saved[f"{key} {method} {eps.text}"] = str(folder)


def check_compatible(targets: list[Target], source: Target | None) -> None:
    """All models must see the same input space (crop, colour) and classes."""
    first, paths = targets[0], {}
    for model in [*targets, *([source] if source else [])]:
        if paths.setdefault(model.key, real_path(model.path)) != real_path(model.path):
            raise AttackError(f"{model.path} and {paths[model.key]}: two models named {model.key}; rename one")
    for other in [*targets[1:], *([source] if source else [])]:
        a, b = first.card.preprocess, other.card.preprocess
        if (a.crop, a.resize, a.color, a.exif_transpose) != (b.crop, b.resize, b.color, b.exif_transpose):
            raise AttackError(f"{other.path}: its input ({b.crop} px crop, resize {b.resize}, {b.color}) differs "
                              f"from {first.path}'s ({a.crop} px, resize {a.resize}, {a.color})")
        if len(other.card.classes) != len(first.card.classes):
            raise AttackError(f"{other.path}: {len(other.card.classes)} classes, {first.path} has "
                              f"{len(first.card.classes)}")
    if source is not None and source.white_box is None:
        raise AttackError(f"{source.path}: a transfer source must be a model edge can run in torch")


def resolve_labels(samples: list[Sample], truth: dict[str, int] | None) -> tuple[list[int] | None, str]:
    """True labels from ``truth`` or the file names; None (use the first model's clean answers) when
    no image has one; a `DatasetError` when only some have."""
    labels = [truth.get(s.id) if truth is not None else s.label for s in samples]
    missing = [s.id for s, label in zip(samples, labels) if label is None]
    if not missing:
        return labels, "reference labels" if truth is not None else "labels from the file names"
    if truth is not None or len(missing) < len(samples):
        raise DatasetError(f"{len(missing)} image(s) have no label (e.g. id {missing[0]})")
    return None, "the first model's clean predictions (no labels given)"


def run_attack(targets: list[Target], source: Target | None, samples: list[Sample], labels: list[int] | None,
               settings: Settings, progress: bool = True) -> Run:
    """Attack every target on ``samples`` batch by batch; totals and examples in the returned `Run`."""
    from tqdm import tqdm

    check_compatible(targets, source)
    run = Run(targets, source, settings)
    with tqdm(total=len(samples), unit="img", disable=not progress, file=sys.stderr, desc="attack") as bar:
        for start in range(0, len(samples), settings.batch):
            chunk = samples[start:start + settings.batch]
            pixels = load_crops(chunk, targets[0].card)
            batch_labels = np.asarray(labels[start:start + settings.batch]) if labels is not None \
                else _predict(targets[0], pixels)
            _attack_batch(run, chunk, pixels, batch_labels.astype(np.int64), keep_examples=start == 0)
            bar.update(len(chunk))
    return run
