"""The bytes-vs-accuracy frontier of one checkpoint, per compression technique, from committed results.

For each technique (a weight format family with its options: uintN per tensor or per channel,
kmeansK, each with or without --entropy, fp16 with --low-rank, and `edge compress`'s slimming
combined with a format), the smallest file whose accuracy on held-out photos stays within
``--points`` (1) of the fp32 file's accuracy in the same run. Reads the JSON of
`studies.weight_sharing` runs (each row: ``edge export`` options, bytes, agreement, accuracy;
the fp32 row is the reference) and of `edge compress --report` runs (points of the slimming and
quantization series, with their test accuracy; the quantization-only fp32 point is the reference).
Nothing is re-measured: every number names the results file it comes from.

Usage: python -m studies.frontier --runs A.json B.json ... [--compress C.json] [--points 1]
       [--json OUT] [--markdown OUT]
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path


def technique(variant: str) -> str:
    """``--quant uint4 --per-channel --entropy`` -> ``uintN per-channel + entropy``."""
    words = shlex.split(variant)
    quant = words[words.index("--quant") + 1] if "--quant" in words else "fp32"
    family = quant.rstrip("0123456789") if quant.startswith(("uint", "kmeans")) else quant
    name = family + ("N" if family == "uint" else "K" if family == "kmeans" else "")
    name += " per-channel" if "--per-channel" in words else (" per-tensor" if family in ("uint", "kmeans") else "")
    extras = [label for flag, label in (("--entropy", "entropy"), ("--low-rank", "low rank"),
                                        ("--train-epochs", "trained"), ("--fp16-below", "fp16 small layers"))
              if flag in words]
    return " + ".join([name] + extras)


def run_points(path: Path) -> list[dict]:
    """The rows of one `studies.weight_sharing` JSON, each with its technique and the run's fp32 accuracy."""
    result = json.loads(path.read_text())
    reference = next(r for r in result["rows"] if shlex.split(r["variant"])[-1] == "fp32")
    split = result.get("split", "first")
    return [{"technique": technique(r["variant"]), "options": r["variant"], "bytes": r["bytes"],
             "accuracy": r["accuracy"], "fp32_accuracy": reference["accuracy"], "agreement": r["agreement"],
             "held_out": f"{result['held_out']} photos ({split} {result['calib_count']} calibrate)",
             "source": path.name} for r in result["rows"] if r is not reference]


def compress_technique(point: dict) -> str:
    """``slimming + uint4 per-channel + entropy``; a mixed-precision point (its format names the wider
    layers, ``uint4 per-channel entropy=True cnn.2.3:8 ...``) -> ``mixed precision: uint4 per-channel + entropy``."""
    base = point["format"].split(" cnn.")[0].replace(" entropy=True", " + entropy")
    return f"mixed precision: {base}" if point["stage"] == "mixed" else f"slimming + {base}"


def compress_points(path: Path) -> list[dict]:
    """The slimmed and mixed-precision points of an `edge compress` report JSON (the quantization-only fp32 point
    is the reference)."""
    result = json.loads(path.read_text())
    points = result["points"]
    reference = next(p for p in points if p["stage"] == "quantization" and p["format"] == "fp32")
    held_out = result["about"]["test"]
    return [{"technique": compress_technique(p),
             "options": f"edge compress: keep {p['keep']:.3f}, widths {p['widths']}, {p['format']}",
             "bytes": p["bytes"], "accuracy": p["test_accuracy"], "fp32_accuracy": reference["test_accuracy"],
             "agreement": p["test_agreement"], "held_out": held_out, "source": path.name}
            for p in points if p["stage"] in ("slimming", "mixed")]


def frontier(points: list[dict], drop: float) -> list[dict]:
    """Per technique, the smallest point within ``drop`` of its run's fp32 accuracy (None when none is)."""
    best = {}
    for p in points:
        best.setdefault(p["technique"], None)
        if p["accuracy"] >= p["fp32_accuracy"] - drop and (best[p["technique"]] is None
                                                            or p["bytes"] < best[p["technique"]]["bytes"]):
            best[p["technique"]] = p
    return [{"technique": t, "best": best[t]} for t in sorted(best, key=lambda t: (best[t] is None,
                                                                                  best[t] and best[t]["bytes"]))]


def markdown(rows: list[dict], command: str, points: float) -> str:
    lines = [f"Command: `{command}`", "",
             f"Per technique, the smallest file whose accuracy on held-out photos is within {points:g} pt of the "
             "fp32 file's in the same run (no new measurement: each row names its results file). Accuracy on a few "
             "hundred photos moves 0.4-0.5 pt per photo, so the agreement column (answers kept from fp32) is the steadier "
             "measure of what a technique changes.", "",
             f"| technique | smallest file within {points:g} pt | bytes | accuracy (fp32) | agreement | held out | source |",
             "|---|---|---:|---:|---:|---|---|"]
    for row in rows:
        p = row["best"]
        if p is None:
            lines.append(f"| {row['technique']} | none within {points:g} pt | - | - | - | - | - |")
            continue
        lines.append(f"| {row['technique']} | `{p['options']}` | {p['bytes']:,} | {p['accuracy']:.2%} "
                     f"({p['fp32_accuracy']:.2%}) | {p['agreement']:.2%} | {p['held_out']} | {p['source']} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", nargs="+", type=Path, required=True, help="studies.weight_sharing JSON files")
    parser.add_argument("--compress", nargs="*", type=Path, default=[], help="edge compress report JSON files")
    parser.add_argument("--points", type=float, default=1.0, help="accuracy drop allowed, in points")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--markdown", type=Path)
    args = parser.parse_args(argv)
    points = [p for path in args.runs for p in run_points(path)] + [p for path in args.compress
                                                                   for p in compress_points(path)]
    rows = frontier(points, args.points / 100)
    command = "python -m studies.frontier " + " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    if args.json:
        args.json.write_text(json.dumps({"command": command, "points": args.points, "rows": rows}, indent=2) + "\n")
    text = markdown(rows, command, args.points)
    print(text)
    if args.markdown:
        args.markdown.write_text(text)


if __name__ == "__main__":
    main()
