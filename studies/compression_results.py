"""Collect a slimming run (studies/ta_slimming.sh) into bench/results/<name>.json, <name>.md and
<name>_slimming.png; its table of rounds (`_slim_rows`) serves studies/fashion_mnist.py too.

Usage: python -m studies.compression_results ta-slimming RUN_DIR [RESULTS_DIR]
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


def ta_slimming(run: Path) -> tuple[dict, list[str]]:
    curves = json.loads((run / "slim" / "curve.json").read_text())
    return {"slimming": curves}, _slim_rows(curves)


def main(argv: list[str]) -> None:
    kind, run = argv[0], Path(argv[1])
    out = Path(argv[2]) if len(argv) > 2 else RESULTS
    name = kind.replace("-", "_")
    result, md = {"ta-slimming": ta_slimming}[kind](run)
    result["commands"] = (run / "commands.txt").read_text().splitlines()
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    shutil.copyfile(run / "slim" / "curve.png", out / f"{name}_slimming.png")
    commands = ["", "Commands (studies/" + name + ".sh):", "", "```", *result["commands"], "```"]
    notes = run / "notes.md"  # what the numbers do not say by themselves (written by whoever ran it)
    if notes.exists():
        commands += ["", *notes.read_text().splitlines()]
    (out / f"{name}.md").write_text("\n".join([f"# {kind}: compression pipeline results", "", *md, *commands]) + "\n")
    print(f"wrote {out / (name + '.json')}, {out / (name + '.md')}, {out / (name + '_slimming.png')}")


if __name__ == "__main__":
    main(sys.argv[1:])
