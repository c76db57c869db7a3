"""An independent scorer for `edge attack --save-adversarial` PNGs: none of edge's model, image or
label code, only the homework's own pipeline (its StudentNet from tests/homework_reference.py,
``torch.load`` of the state dict, PIL, torchvision's CenterCrop(256) + ToTensor, the csv module).

For each PNG (named by image id) it checks the L_inf distance to the homework's centre crop of the
original photo and scores the homework model on it against the labels CSV.

Usage: python -m studies.attack_check PNG_DIR CHECKPOINT.bin PHOTO_DIR LABELS.csv
                                    [--report ATTACK.json --method fgsm --eps 2/255 [--model NAME]]
                                    [--json OUT] [--markdown OUT]
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision import transforms

REPO = Path(__file__).resolve().parents[1]


def homework_model(checkpoint: Path) -> torch.nn.Module:
    sys.path.insert(0, str(REPO))
    from tests.homework_reference import homework_student

    model = homework_student()
    model.load_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=True))
    return model.eval()


def _labels(path: Path) -> dict[str, int]:
    with open(path, newline="", encoding="utf-8-sig") as f:
        return {str(int(row["Id"])): int(row["label"]) for row in csv.DictReader(f)}


def score_pngs(png_dir: Path, checkpoint: Path, photo_dir: Path, labels_csv: Path) -> dict:
    """Accuracy of the homework model on the PNGs and their largest distance to the original crops."""
    model, labels = homework_model(checkpoint), _labels(labels_csv)
    homework = transforms.Compose([transforms.CenterCrop(256), transforms.ToTensor()])
    crop = transforms.CenterCrop(256)
    pngs = sorted(png_dir.glob("*.png"))
    correct, worst = 0, 0
    for png in pngs:
        with Image.open(png) as image:
            attacked = image.convert("RGB")
        original = next(photo_dir.glob(f"{png.stem}.*"))
        with Image.open(original) as image:
            reference = np.asarray(crop(image.convert("RGB")), np.int16)
        worst = max(worst, int(np.abs(np.asarray(attacked, np.int16) - reference).max()))
        with torch.no_grad():
            predicted = int(model(homework(attacked)[None]).argmax(1))
        correct += predicted == labels[str(int(png.stem))]
    return {"png_dir": str(png_dir), "images": len(pngs), "accuracy": correct / len(pngs) if pngs else None,
            "max_linf_255": worst}


def reported_accuracy(report: Path, method: str, eps: str, model: str | None) -> float:
    """The attacked accuracy `edge attack` reported for the white-box ``method`` at ``eps``."""
    doc = json.loads(report.read_text())
    reports = doc["models"] if "models" in doc else {Path(doc["model"]).name: doc}
    chosen = reports[model] if model else next(iter(reports.values()))
    value = float(Fraction(eps))
    return next(r["accuracy"] for r in chosen["attacks"]
                if r["attack"] == "white-box" and r["method"] == method and abs(r["eps"] - value) < 1e-6)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name in ("png_dir", "checkpoint", "photo_dir", "labels"):
        parser.add_argument(name, type=Path)
    parser.add_argument("--report", type=Path, help="edge attack's --json, to compare the accuracy with")
    parser.add_argument("--method", default="fgsm")
    parser.add_argument("--eps", default="2/255")
    parser.add_argument("--model", help="the model's name in a several-model report (default: the first)")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--markdown", type=Path)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    result = score_pngs(args.png_dir, args.checkpoint, args.photo_dir, args.labels)
    result["command"] = "python -m studies.attack_check " + " ".join(sys.argv[1:] if argv is None else argv)
    if args.report:
        result["edge_attack_accuracy"] = reported_accuracy(args.report, args.method, args.eps, args.model)
        result["difference_pt"] = round(100 * (result["accuracy"] - result["edge_attack_accuracy"]), 3)
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    if args.markdown:
        lines = ["# Independent check of `edge attack`'s adversarial PNGs", "", f"Command: `{result['command']}`", "",
                 "The homework's own StudentNet, torch.load, PIL and torchvision's CenterCrop(256) + ToTensor "
                 "score the saved PNGs (no edge code).", "",
                 "| PNGs | images | accuracy (independent) | accuracy (edge attack) | difference | max L∞ vs crop |",
                 "|---|---:|---:|---:|---:|---:|",
                 f"| `{result['png_dir']}` | {result['images']} | {100 * result['accuracy']:.2f}% | "
                 + (f"{100 * result['edge_attack_accuracy']:.2f}% | {result['difference_pt']:+.2f} pt"
                    if args.report else "- | -") + f" | {result['max_linf_255']}/255 |", ""]
        args.markdown.write_text("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
