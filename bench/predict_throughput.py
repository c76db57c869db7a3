"""`edge predict` vs the homework's pipeline on a full-size Food-11 test set, side by side.

    python -m edge.bench.predict_throughput            # writes bench/results/predict_throughput.{json,md}

Makes a test set of ``--images`` JPEGs (default 3,347, the size of Food-11's) by repeating the
real photos of ``../shared/food11/testing``, exports the TA's student to uint8 ONNX with
``edge export``, then runs, interleaved ``--repeats`` times, each in a fresh process:

- ours: ``edge predict MODEL DIR -o CSV`` (ONNX Runtime, no torch), or with ``--hw7`` the homework's
  entry point itself, ``bash hw7_test.sh ROOT CSV`` (its default model unless ``--model``);
- homework: the hw7 test script's way: every image opened and decoded up front into a list,
  a ``DataLoader(batch_size=32)`` over ``CenterCrop(256) + ToTensor()``, the StudentNet in
  torch eager on CPU.

Each row records wall seconds (process start to exit), CPU seconds and peak RSS (``wait4``).
It also reports where our time goes (decode vs inference CPU seconds, from `edge predict`'s
own summary line, and each stage alone on one core), the two CSVs' agreement, and peak RSS
for ``--memory-images`` (20,000) images against the 3,347-image run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("EDGE_SHARED", REPO.parent / "shared"))  # the tests' convention
RESULTS = REPO / "bench" / "results"
LIBRARIES = ("numpy", "onnxruntime", "pillow", "simplejpeg", "torch", "torchvision")
HW7_MODEL = REPO / "models" / "food11_student_compressed.onnx"  # hw7_test.sh's default
SUMMARY = re.compile(r"CPU: decoding ([\d.]+) s, inference ([\d.]+) s")


def make_test_set(photos: Path, folder: Path, count: int) -> Path:
    """``count`` JPEGs named 0000.jpg.. in ``folder``: copies of the real photos, cycled."""
    sources = sorted(p for p in photos.iterdir() if p.suffix.lower() == ".jpg")
    if not sources:
        sys.exit(f"error: {photos}: no .jpg photos to build the test set from")
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        shutil.copyfile(sources[i % len(sources)], folder / f"{i:04d}.jpg")
    return folder


def link_many(source: Path, folder: Path, count: int) -> Path:
    """``count`` names hard-linked to the images of ``source``: a large set without the disk."""
    sources = sorted(source.iterdir())
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        os.link(sources[i % len(sources)], folder / f"{i:05d}.jpg")
    return folder


def timed(command: list[str]) -> dict:
    """Run ``command``; wall and CPU seconds, peak RSS of the process, its stderr."""
    start = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=REPO)
    stderr = child.stderr.read().decode(errors="replace")
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - start
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode:
        sys.exit(f"error: {' '.join(command)} exited {child.returncode}:\n{stderr[-2000:]}")
    return {"wall_s": round(wall, 2), "cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
            "peak_rss_mb": round(usage.ru_maxrss / 1024, 1), "stderr": stderr, "load_before": os.getloadavg()[0]}


def ours_command(model: Path, folder: Path, out: Path, hw7: bool = False) -> list[str]:
    """`edge predict` on ``folder``; ``hw7``: ``bash hw7_test.sh`` on the root that holds it (``folder`` is its
    ``testing/``), with ``model`` as EDGE_MODEL."""
    if hw7:
        return ["env", f"EDGE_MODEL={model}", "bash", str(REPO / "hw7_test.sh"), str(folder.parent), str(out)]
    return [sys.executable, "-m", "edge", "predict", str(model), str(folder), "-o", str(out), "--quiet"]


def homework_command(checkpoint: Path, folder: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "edge.bench.predict_throughput", "--homework", str(checkpoint), str(folder), str(out)]


def homework_predict(checkpoint: Path, folder: Path, out: Path) -> None:
    """The hw7 test script's pipeline (kept as it was, so it is the baseline)."""
    import torch
    import torchvision.transforms as T
    from PIL import Image

    from edge.io.checkpoints import load_checkpoint
    from edge.models.student import build_student

    class Decoded(torch.utils.data.Dataset):
        """hw7's MyDataset: PIL images decoded in __init__, transformed per item."""

        def __init__(self, paths):
            self.images = []
            for path in paths:
                image = Image.open(path)
                image.load()
                self.images.append(image)

        def __len__(self):
            return len(self.images)

        def __getitem__(self, index):
            return transform(self.images[index])

    ckpt = load_checkpoint(checkpoint)
    model = build_student(ckpt.card.config, ckpt.state)
    transform = T.Compose([T.CenterCrop(256), T.ToTensor()])
    loader = torch.utils.data.DataLoader(Decoded(sorted(folder.glob("*.jpg"))), batch_size=32, shuffle=False)
    labels = []
    with torch.no_grad():
        for batch in loader:
            labels += model(batch).argmax(1).tolist()
    out.write_text("Id,label\n" + "".join(f"{i},{label}\n" for i, label in enumerate(labels)))


def stage_costs(model: Path, folder: Path, count: int = 200) -> dict:
    """Each stage alone on one core: ms per image to read+decode+preprocess, and to infer."""
    code = f"""
import time, numpy as np
from edge.data.folders import list_samples
from edge.inference.predict import open_model
from edge.data.preprocess import read_image, to_array
model, _ = open_model({str(model)!r}, threads=1)
spec = model.card.preprocess
samples = list_samples({str(folder)!r})[:{count}]
start = time.thread_time()
arrays = np.stack([to_array(read_image(s.path, spec)[0], spec) for s in samples])
decode = time.thread_time() - start
model(arrays[:8])
start = time.thread_time()
for i in range(0, len(arrays), 8):
    model(arrays[i:i + 8])
print(len(arrays), decode / len(arrays) * 1e3, (time.thread_time() - start) / len(arrays) * 1e3)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    images, decode, infer = done.stdout.split()
    return {"decode_ms_per_image_1core": round(float(decode), 2),
            "inference_ms_per_image_1core": round(float(infer), 2), "images": int(images)}


def agreement(a: Path, b: Path) -> float:
    rows_a, rows_b = a.read_text().splitlines()[1:], b.read_text().splitlines()[1:]
    assert len(rows_a) == len(rows_b)
    return sum(x == y for x, y in zip(rows_a, rows_b)) / len(rows_a)


def machine() -> dict:
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = re.search(r"model name\s*:\s*(.+)", cpuinfo)
    versions = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return {"cpu": model.group(1) if model else platform.processor(), "cores": len(os.sched_getaffinity(0)),
            "os": platform.platform(), "versions": versions}


def summarize(runs: list[dict]) -> dict:
    walls = [r["wall_s"] for r in runs]
    return {"wall_s_median": statistics.median(walls), "wall_s_min": min(walls), "wall_s_max": max(walls),
            "cpu_s_median": statistics.median(r["cpu_s"] for r in runs),
            "peak_rss_mb_max": max(r["peak_rss_mb"] for r in runs),
            "runs": [{k: v for k, v in r.items() if k != "stderr"} for r in runs]}


def run(args) -> dict:
    work = Path(tempfile.mkdtemp(prefix="predict_bench_"))
    try:
        return _run(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _run(args, work: Path) -> dict:
    folder = make_test_set(args.photos, work / "testing", args.images)
    model = args.model or (HW7_MODEL if args.hw7 else work / "student_uint8.onnx")
    if not args.model and not args.hw7:
        subprocess.run([sys.executable, "-m", "edge", "export", str(args.checkpoint), "--quant", "uint8",
                        "-o", str(model)], cwd=REPO, check=True, stdout=subprocess.DEVNULL)
    ours, homework = [], []
    for i in range(args.repeats):
        print(f"round {i + 1}/{args.repeats}", file=sys.stderr)
        ours.append(timed(ours_command(model, folder, work / "ours.csv", args.hw7)))
        homework.append(timed(homework_command(args.checkpoint, folder, work / "homework.csv")))
    splits = [SUMMARY.search(r["stderr"]) for r in ours]
    result = {
        "images": args.images, "ours_command": "bash hw7_test.sh" if args.hw7 else "edge predict",
        "model": str(args.model or (model if args.hw7 else f"edge export {args.checkpoint} --quant uint8")),
        "ours": summarize(ours), "homework": summarize(homework),
        "ours_cpu_split_s": [{"decoding": float(m.group(1)), "inference": float(m.group(2))} for m in splits if m],
        "stage_costs": stage_costs(model, folder),
        "csv_agreement_ours_vs_homework": agreement(work / "ours.csv", work / "homework.csv"),
    }
    result["speedup_median"] = round(result["homework"]["wall_s_median"] / result["ours"]["wall_s_median"], 2)
    if args.memory_images:
        many = link_many(folder, work / "many", args.memory_images)
        result["memory"] = {"images": args.memory_images,
                            **{k: v for k, v in timed(ours_command(model, many, work / "many.csv")).items()
                               if k != "stderr"}}
    return result


def markdown(result: dict, command: str, info: dict) -> str:
    ours, hw = result["ours"], result["homework"]
    n = result["images"]
    split = result["ours_cpu_split_s"]
    stages = result["stage_costs"]
    lines = [
        "# `edge predict` throughput vs the homework pipeline", "",
        f"Command: `{command}`", "",
        f"Machine: {info['cpu']}, {info['cores']} cores, {info['os']}; "
        + ", ".join(f"{k} {v}" for k, v in info["versions"].items()), "",
        f"Test set: {n} JPEGs (the real Food-11 test photos, repeated). Model: {result['model']}. "
        "Each run is a fresh process, timed from start to exit; runs interleaved, median (min-max).", "",
        "| pipeline | wall s | images/s | CPU s | peak RSS MB |", "| --- | --- | --- | --- | --- |",
    ]
    ours_name = "`bash hw7_test.sh`" if result.get("ours_command") == "bash hw7_test.sh" else "`edge predict`"
    for name, row in ((f"{ours_name} (ONNX Runtime)", ours), ("homework (PIL up front, torch eager, batch 32)", hw)):
        lines.append(f"| {name} | {row['wall_s_median']:.2f} ({row['wall_s_min']:.2f}-{row['wall_s_max']:.2f}) "
                     f"| {n / row['wall_s_median']:.0f} | {row['cpu_s_median']:.1f} | {row['peak_rss_mb_max']:.0f} |")
    loads = [r["load_before"] for r in ours["runs"] + hw["runs"]]
    cores = info["cores"]
    lines += [
        "", f"Load average (1 min) before the runs: {min(loads):.1f}-{max(loads):.1f} on {cores} cores: other "
        "jobs shared the machine, so wall times include waiting for a core. Our CPU seconds / cores = "
        f"{ours['cpu_s_median'] / cores:.1f} s: the wall time on an idle machine if every core stayed busy "
        "(a lower bound: start-up is single-threaded).",
        "", f"Speed-up (median wall): **{result['speedup_median']:.2f}x**. "
        f"Predictions agree on {result['csv_agreement_ours_vs_homework']:.2%} of images "
        f"({result['model']} vs the homework's fp32 original).", "",
        "Where our time goes: CPU seconds inside `edge predict` (all threads): "
        + "; ".join(f"decoding {s['decoding']:.1f} s, inference {s['inference']:.1f} s" for s in split) + ". "
        f"Each stage alone on one core ({stages['images']} images): read+decode+preprocess "
        f"{stages['decode_ms_per_image_1core']:.2f} ms/image, inference (batch 8) "
        f"{stages['inference_ms_per_image_1core']:.2f} ms/image.",
    ]
    if "memory" in result:
        mem = result["memory"]
        lines += ["", f"Memory: {mem['images']:,} images in {mem['wall_s']:.1f} s, peak RSS {mem['peak_rss_mb']:.0f} MB "
                  f"(vs {ours['peak_rss_mb_max']:.0f} MB for {n:,}): images are streamed, never held."]
    return "\n".join(lines) + "\n"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, default=SHARED / "hw7" / "student_custom_small.bin",
                        help="the TA's student (homework baseline; exported to uint8 ONNX for ours)")
    parser.add_argument("--model", type=Path, help="an ONNX file for ours (default: export --checkpoint to uint8; with "
                                                   "--hw7, hw7_test.sh's own model)")
    parser.add_argument("--hw7", action="store_true", help="time `bash hw7_test.sh` itself as ours")
    parser.add_argument("--photos", type=Path, default=SHARED / "food11" / "testing")
    parser.add_argument("--images", type=int, default=3347)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--memory-images", type=int, default=20000, help="0 to skip the memory run")
    parser.add_argument("--json", type=Path, default=RESULTS / "predict_throughput.json")
    parser.add_argument("--markdown", type=Path, default=RESULTS / "predict_throughput.md")
    parser.add_argument("--homework", nargs=3, type=Path, metavar=("CHECKPOINT", "DIR", "OUT"),
                        help=argparse.SUPPRESS)  # the baseline's own process
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.homework:
        homework_predict(*args.homework)
        return
    command = "python -m edge.bench.predict_throughput " + " ".join(sys.argv[1:])
    info = machine()
    result = {"command": command, "machine": info, "load_average_start": os.getloadavg(), **run(args),
              "load_average_end": os.getloadavg()}
    from edge.core.files import atomic_write

    args.json.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(args.json, lambda f: f.write(json.dumps(result, indent=2) + "\n"), binary=False)
    atomic_write(args.markdown, lambda f: f.write(markdown(result, command, info)), binary=False)
    print(markdown(result, command, info))


if __name__ == "__main__":
    main()
