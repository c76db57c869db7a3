"""Bytes vs agreement for the weight formats of `edge.core.weight_formats` (uintN, kmeansK, --entropy,
--low-rank) on one checkpoint, every number from the shipped commands, side by side in one run.

Each variant is written by ``edge export CHECKPOINT --calib PHOTOS --calib-images N <variant>``
(calibration on the first N photos in id order; ``--split last``: on the last N, through a folder of
links to them) and run by ``edge predict`` on the other photos (a folder of links to them). Recorded: the file's bytes on disk, top-1 agreement with the fp32
file's answers, accuracy against the reference labels, and ONNX Runtime latency (batch 1, one
thread) measured in interleaved rounds with the fp32 file, so a busy machine slows all alike.

Usage: python -m studies.weight_sharing [CHECKPOINT] [PHOTOS] [--labels CSV] [--calib-count N]
       [--split first|last] [--variant "--quant kmeans16 --entropy" ...] [--json OUT] [--markdown OUT]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
TARGET_BYTES, TARGET_AGREEMENT = 140_000, 0.97
VARIANTS = (
    "--quant fp32",
    "--quant uint8",
    "--quant uint6 --per-channel",
    "--quant uint4 --per-channel",
    "--quant uint4 --per-channel --entropy",
    "--quant kmeans16",
    "--quant kmeans16 --entropy",
    "--quant kmeans32 --entropy",
    "--quant fp16 --low-rank 0.95",
)
LATENCY_ROUNDS, LATENCY_RUNS = 5, 20


def _edge(*args: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "edge", *args], capture_output=True, text=True, env=env)
    if done.returncode:
        raise RuntimeError(f"edge {' '.join(args)} failed:\n{done.stderr}")
    return done.stdout


def _answers(csv_path: Path) -> dict[str, int]:
    with open(csv_path, newline="") as f:
        return {row["Id"]: int(row["label"]) for row in csv.DictReader(f)}


def _split_folders(photos: Path, calib_count: int, split: str, tmp: Path) -> tuple[Path, list[str]]:
    """(the folder to calibrate on, the held-out ids, linked in ``tmp / "held_out"``): calibration on
    the first ``calib_count`` photos in id order (as --calib takes them) or, ``split == "last"``, on
    the last ``calib_count`` (linked in ``tmp / "calib"``); held out: the others."""
    from edge.data.folders import list_samples

    samples = list_samples(photos)
    if split == "first":
        calib, held_out = photos, samples[calib_count:]
    else:
        calib, held_out = _link_folder(samples[-calib_count:], tmp / "calib"), samples[:-calib_count]
    _link_folder(held_out, tmp / "held_out")
    return calib, [s.id for s in held_out]


def _calibrated(variant: str) -> bool:
    """Whether `edge export` calibrates this variant (it refuses --calib for formats that do not)."""
    from edge.export.quantize import QuantSpec

    words = shlex.split(variant)
    option = {name: words[words.index(name) + 1] for name in ("--quant", "--method") if name in words}
    return QuantSpec(option.get("--quant", "fp32"), **({"method": option["--method"]} if "--method" in option else {})).calibrated


def _link_folder(samples, folder: Path) -> Path:
    folder.mkdir()
    for sample in samples:
        (folder / Path(sample.path).name).symlink_to(Path(sample.path).resolve())
    return folder


def _latencies(paths: dict[str, Path], image: np.ndarray) -> dict[str, float]:
    """Median ms per batch-1 call for each file, rounds interleaved across files."""
    from edge.inference.runtime import OnnxClassifier

    models = {name: OnnxClassifier(path, threads=1) for name, path in paths.items()}
    times = {name: [] for name in models}
    for _ in range(LATENCY_ROUNDS):
        for name, model in models.items():
            model(image)
            start = time.perf_counter()
            for _ in range(LATENCY_RUNS):
                model(image)
            times[name].append((time.perf_counter() - start) / LATENCY_RUNS * 1000)
    return {name: float(np.median(t)) for name, t in times.items()}


def measure(checkpoint: Path, photos: Path, labels: Path | None, calib_count: int, variants,
            split: str = "first") -> dict:
    from edge.data.folders import read_labels
    from edge.export.exporter import preprocessed_images

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        calib, ids = _split_folders(photos, calib_count, split, tmp)
        truth = read_labels(labels) if labels else {}
        rows, paths = [], {}
        for index, variant in enumerate(variants):
            path = paths[variant] = tmp / f"v{index}.onnx"
            start = time.time()
            calibration = ["--calib", str(calib), "--calib-images", str(calib_count)] if _calibrated(variant) else []
            _edge("export", str(checkpoint), "-o", str(path), *calibration, *shlex.split(variant))
            export_s = time.time() - start
            _edge("predict", str(path), str(tmp / "held_out"), "-o", str(tmp / f"v{index}.csv"), "--quiet")
            answers = _answers(tmp / f"v{index}.csv")
            rows.append({"variant": variant, "bytes": path.stat().st_size, "export_s": round(export_s, 1),
                         "answers": [answers[i] for i in ids]})
            print(f"{variant}: {rows[-1]['bytes']:,} B", file=sys.stderr)
        reference = rows[0]["answers"]
        from edge.io.checkpoints import load_checkpoint

        image, _ = preprocessed_images(load_checkpoint(checkpoint), tmp / "held_out", 1)
        latency = _latencies(paths, image)
    known = [i for i in ids if i in truth]
    for row in rows:
        answers = row.pop("answers")
        row["agreement"] = float(np.mean(np.array(answers) == np.array(reference)))
        if known:
            by_id = dict(zip(ids, answers))
            row["accuracy"] = float(np.mean([by_id[i] == truth[i] for i in known]))
        row["latency_ms"] = round(latency[row["variant"]], 3)
    from edge.bench.machine import describe

    return {"checkpoint": str(checkpoint), "photos": str(photos), "calib_count": calib_count, "split": split,
            "held_out": len(ids), "labelled": len(known), "machine": describe(), "rows": rows}


def markdown(result: dict, command: str) -> str:
    cpu = result["machine"].get("cpu", {})
    lines = [f"Command: `{command}`", "",
             f"CPU: {cpu.get('model', '?')} ({cpu.get('cores', '?')} cores, shared with other jobs: latencies "
             "are comparable within this run only).", "",
             f"{result['photos']}: each variant calibrated on the {result.get('split', 'first')} "
             f"{result['calib_count']} photos in id order "
             f"(`edge export --calib`), answers from `edge predict` on the other {result['held_out']}; agreement "
             f"is with the fp32 file's answers, accuracy against the reference labels ({result['labelled']} "
             f"photos). Target: <= {TARGET_BYTES:,} B and >= {TARGET_AGREEMENT:.0%} agreement.", "",
             "| `edge export` options | bytes on disk | agreement | accuracy | ORT latency, batch 1 (ms) | vs fp32 "
             "| meets both |", "|---|---:|---:|---:|---:|---:|---|"]
    base = result["rows"][0]["latency_ms"]
    for row in result["rows"]:
        meets = row["bytes"] <= TARGET_BYTES and row["agreement"] >= TARGET_AGREEMENT
        accuracy = f"{row['accuracy']:.2%}" if "accuracy" in row else "-"
        lines.append(f"| `{row['variant']}` | {row['bytes']:,} | {row['agreement']:.2%} | {accuracy} | "
                     f"{row['latency_ms']:.2f} | {row['latency_ms'] / base:.2f}x | {'yes' if meets else 'no'} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", nargs="?", type=Path, default=SHARED / "hw7" / "student_custom_small.bin")
    parser.add_argument("photos", nargs="?", type=Path, default=SHARED / "food11" / "testing")
    parser.add_argument("--labels", type=Path, default=SHARED / "food11" / "reference_labels.csv")
    parser.add_argument("--calib-count", type=int, default=250)
    parser.add_argument("--split", choices=("first", "last"), default="first",
                        help="calibrate on the first (default) or the last --calib-count photos; the others are held out")
    parser.add_argument("--variant", action="append", help="`edge export` options of one variant (repeatable; "
                                                             "the first is the reference, fp32 by default)")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--markdown", type=Path)
    args = parser.parse_args(argv)
    variants = args.variant or VARIANTS
    result = measure(args.checkpoint, args.photos, args.labels, args.calib_count, variants, args.split)
    result["command"] = "python -m studies.weight_sharing " + " ".join(
        shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    text = markdown(result, result["command"])
    print(text)
    if args.markdown:
        args.markdown.write_text(text)


if __name__ == "__main__":
    main()
