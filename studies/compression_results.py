"""Collect a compression run (studies/fashion_mnist.sh or studies/ta_slimming.sh) into
bench/results/<name>.json, <name>.md and <name>_slimming.png.

Usage: python -m studies.compression_results fashion-mnist|ta-slimming RUN_DIR [RESULTS_DIR]
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parents[1] / "bench" / "results"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


def _slim_rows(curves: dict) -> list[str]:
    first = curves["curves"][0]["points"][0]
    val, test = f"val {first['val_kind']}", f"test {first.get('test_kind', '')}"
    rows = [f"| rate/round | round | widths | parameters | uint8 ONNX bytes | {val} | {val}, before fine-tune "
            f"| {test} (torch) | {test} (uint8 ONNX) |", "|---|---|---|---|---|---|---|---|---|"]
    for curve in curves["curves"]:
        for p in curve["points"]:
            rows.append(f"| {curve['rate']:g} | {p['round']} | {','.join(map(str, p['widths']))} | {p['parameters']:,} "
                        f"| {p['onnx_bytes']:,} | {_pct(p['val_accuracy'])} | {_pct(p.get('val_before_finetune'))} "
                        f"| {_pct(p.get('test_accuracy'))} | {_pct(p.get('onnx_test_accuracy'))} |")
    return rows + ["", f"Slimming wall time: {curves['seconds']:.0f} s for every rate and round above."]


def _smallest_within(curves: dict, points_key: str = "test_accuracy", drop: float = 0.01, share: float = 0.5):
    """The smallest slimmed model with <= ``share`` of the parameters within ``drop`` of round 0."""
    best = None
    for curve in curves["curves"]:
        base = curve["points"][0]
        for p in curve["points"][1:]:
            if p["parameters"] <= share * base["parameters"] and p[points_key] >= base[points_key] - drop:
                if best is None or p["parameters"] < best[1]["parameters"]:
                    best = (curve["rate"], p, base)
    return best


def fashion_mnist(run: Path) -> tuple[dict, list[str]]:
    runs = {name: json.loads((run / f"{name}.json").read_text()) for name in ("teacher", "scratch", "distilled")}
    curves = json.loads((run / "slim" / "curve.json").read_text())
    pick = _smallest_within(curves)
    claims = {
        "distilled_beats_scratch_at_equal_epochs":
            runs["distilled"]["test_accuracy_last"] > runs["scratch"]["test_accuracy_last"],
        "slimmed_half_params_within_1pt": pick is not None,
        "uint8_within_0.5pt_of_slimmed": pick is not None
        and pick[1]["onnx_test_accuracy"] >= pick[1]["test_accuracy"] - 0.005,
    }
    result = {"runs": runs, "slimming": curves, "claims": claims,
              "chosen_slimmed": pick and {"rate": pick[0], **pick[1]}}
    md = ["| model | parameters | epochs | val acc (best) | test acc, last epoch | test acc, best-by-val | wall time |",
          "|---|---|---|---|---|---|---|"]
    for name, r in runs.items():
        md.append(f"| {name}: {r['model']} | {r['parameters']:,} | {r['epochs']} "
                  f"| {_pct(r['best'].get('val_accuracy'))} | {_pct(r.get('test_accuracy_last'))} "
                  f"| {_pct(r.get('test_accuracy_best'))} | {r['seconds']:.0f}s |")
    md += ["", "Slimming the distilled student (KD fine-tuning from the unpruned student, best epoch by val kept):",
           "", *_slim_rows(curves), "", "Claims (test set, 10,000 images): " + ", ".join(
               f"{k}: {'yes' if v else 'NO'}" for k, v in claims.items())]
    if pick:
        rate, p, base = pick
        md.append(f"\nSmallest slimmed model within 1.0 pt: rate {rate:g} round {p['round']}: {p['parameters']:,} "
                  f"parameters ({p['parameters'] / base['parameters']:.0%} of {base['parameters']:,}), test "
                  f"{_pct(p['test_accuracy'])} vs unslimmed {_pct(base['test_accuracy'])}; its uint8 ONNX "
                  f"({p['onnx_bytes']:,} bytes) {_pct(p['onnx_test_accuracy'])}.")
    return result, md


def ta_slimming(run: Path) -> tuple[dict, list[str]]:
    curves = json.loads((run / "slim" / "curve.json").read_text())
    return {"slimming": curves}, _slim_rows(curves)


def main(argv: list[str]) -> None:
    kind, run = argv[0], Path(argv[1])
    out = Path(argv[2]) if len(argv) > 2 else RESULTS
    name = kind.replace("-", "_")
    result, md = {"fashion-mnist": fashion_mnist, "ta-slimming": ta_slimming}[kind](run)
    result["commands"] = (run / "commands.txt").read_text().splitlines()
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    shutil.copyfile(run / "slim" / "curve.png", out / f"{name}_slimming.png")
    commands = ["", "Commands (bench/" + name + ".sh):", "", "```", *result["commands"], "```"]
    notes = run / "notes.md"  # what the numbers do not say by themselves (written by whoever ran it)
    if notes.exists():
        commands += ["", *notes.read_text().splitlines()]
    (out / f"{name}.md").write_text("\n".join([f"# {kind}: compression pipeline results", "", *md, *commands]) + "\n")
    print(f"wrote {out / (name + '.json')}, {out / (name + '.md')}, {out / (name + '_slimming.png')}")


if __name__ == "__main__":
    main(sys.argv[1:])
