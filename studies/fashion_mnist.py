"""Collect the full-scale Fashion-MNIST pipeline (studies/fashion_mnist.sh) into bench/results/fashion_mnist.json
(with its ``summary``), fashion_mnist.md and fashion_mnist_slimming.png.

The slimmed student is the smallest round with at most half the distilled student's parameters whose
validation accuracy is within 0.5 pt of the distilled student's (chosen on validation, never on the test set).
A stage's wall time is the sum over every call of it (an interrupted stage resumed later has several).

Usage: python -m studies.fashion_mnist RUN_DIR [RESULTS_DIR]
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from studies.compression_results import RESULTS, _pct, _slim_rows

STAGES = ("teacher", "scratch", "distilled", "slimmed")
MAX_SHARE, MAX_VAL_DROP = 0.5, 0.005  # the slimmed student: <= half the parameters, val within 0.5 pt


def stage_times(run: Path) -> dict:
    """NAME -> {seconds (all calls), calls, cpu, load} from times.tsv."""
    times: dict = {}
    for line in (run / "times.tsv").read_text().splitlines():
        name, ended, seconds, load_before, load_after, cpu = line.split("\t")
        entry = times.setdefault(name, {"seconds": 0.0, "calls": [], "cpu": cpu})
        entry["seconds"] = round(entry["seconds"] + float(seconds), 1)
        entry["calls"].append({"ended": ended, "seconds": round(float(seconds), 1), "load_before": load_before,
                               "load_after": load_after, "cpu": cpu})
    return times


def choose_slimmed(curves: dict) -> tuple[dict, dict] | None:
    """(round 0, the chosen round) of the slimming curve, chosen on validation accuracy."""
    best = None
    for curve in curves["curves"]:
        base = curve["points"][0]
        for point in curve["points"][1:]:
            if (point["parameters"] <= MAX_SHARE * base["parameters"]
                    and point["val_accuracy"] >= base["val_accuracy"] - MAX_VAL_DROP
                    and (best is None or point["parameters"] < best[1]["parameters"])):
                best = (base, {"rate": curve["rate"], **point})
    return best


def summarize(runs: dict, curves: dict, times: dict) -> dict:
    """The issue's summary: each stage's test accuracy (of its best-by-validation epoch), parameters, wall time."""
    def timing(name):
        return {"wall_seconds": times[name]["seconds"], "cpu": times[name]["cpu"]}

    summary = {name: {"test_accuracy": runs[name]["test_accuracy_best"], "parameters": runs[name]["parameters"],
                      "epochs": runs[name]["epochs"], "processes": runs[name]["processes"], **timing(name)}
               for name in ("teacher", "scratch", "distilled")}
    chosen = choose_slimmed(curves)
    if chosen:
        base, point = chosen
        summary["slimmed"] = {"test_accuracy": point["test_accuracy"], "parameters": point["parameters"],
                              "share_of_distilled": round(point["parameters"] / base["parameters"], 4),
                              "widths": point["widths"], "rate": point["rate"], "round": point["round"],
                              **timing("slimmed")}
        summary["slimmed_uint8"] = {"test_accuracy": point["onnx_test_accuracy"], "bytes": point["onnx_bytes"]}
    summary["total_wall_seconds"] = round(sum(times[name]["seconds"] for name in STAGES if name in times), 1)
    return summary


def claims(summary: dict) -> dict:
    """The issue's bars, read from the summary."""
    slim, uint8, dist = summary.get("slimmed"), summary.get("slimmed_uint8"), summary["distilled"]
    return {
        "teacher_at_least_93": summary["teacher"]["test_accuracy"] >= 0.93,
        "distilled_at_least_92": dist["test_accuracy"] >= 0.92,
        "distilled_beats_scratch_at_equal_epochs": (dist["test_accuracy"] > summary["scratch"]["test_accuracy"]
                                                    and dist["epochs"] == summary["scratch"]["epochs"]),
        "slimmed_half_params_within_half_pt": bool(slim) and slim["share_of_distilled"] <= MAX_SHARE
        and slim["test_accuracy"] >= dist["test_accuracy"] - 0.005,
        "uint8_within_0.2pt_of_slimmed": bool(uint8) and uint8["test_accuracy"] >= slim["test_accuracy"] - 0.002,
        "total_within_150_minutes": summary["total_wall_seconds"] <= 150 * 60,
    }


def markdown(summary: dict, runs: dict, curves: dict, verdicts: dict, times: dict) -> list[str]:
    rows = ["| stage | model | parameters | epochs | val acc (best) | test acc, best-by-val | wall time |",
            "|---|---|---:|---:|---:|---:|---:|"]
    for name, r in runs.items():
        rows.append(f"| {name} | {r['model']} | {r['parameters']:,} | {r['epochs']} "
                    f"| {_pct(r['best'].get('val_accuracy'))} | {_pct(r['test_accuracy_best'])} "
                    f"| {times[name]['seconds'] / 60:.1f} min |")
    if "slimmed" in summary:
        s, u = summary["slimmed"], summary["slimmed_uint8"]
        rows.append(f"| slimmed | dw widths {s['widths']} (rate {s['rate']:g}, round {s['round']}) "
                    f"| {s['parameters']:,} ({s['share_of_distilled']:.0%}) | +{curves['settings']['recipe']['epochs']}/round "
                    f"| | {_pct(s['test_accuracy'])} | {times['slimmed']['seconds'] / 60:.1f} min |")
        rows.append(f"| slimmed, uint8 ONNX | {u['bytes']:,} B | | | | {_pct(u['test_accuracy'])} | |")
    cpu = {t["cpu"] for t in times.values()}
    return [*rows, "", f"Total wall time: {summary['total_wall_seconds'] / 60:.1f} min on {', '.join(sorted(cpu))} "
            "(2 processes under torchrun, 1 thread each).", "", "Slimming rounds (KD fine-tuning from the "
            "distilled student; the slimmed row above is chosen on validation accuracy):", "", *_slim_rows(curves),
            "", "Bars: " + ", ".join(f"{k}: {'yes' if v else 'NO'}" for k, v in verdicts.items()), "",
            "Wall time per call of each stage (load average 1/5/15 min before -> after):", "",
            *[f"- {name}: {c['seconds']:.0f} s, ended {c['ended']}, load {c['load_before']} -> {c['load_after']}"
              for name, t in times.items() for c in t["calls"]]]


def main(argv: list[str]) -> None:
    run = Path(argv[0])
    out = Path(argv[1]) if len(argv) > 1 else RESULTS
    runs = {name: json.loads((run / f"{name}.json").read_text()) for name in STAGES[:3]}
    curves = json.loads((run / "slim" / "curve.json").read_text())
    times = stage_times(run)
    summary = summarize(runs, curves, times)
    verdicts = claims(summary)
    commands = (run / "commands.txt").read_text().splitlines()
    result = {"summary": summary, "claims": verdicts, "runs": runs, "slimming": curves, "times": times,
              "commands": commands}
    out.mkdir(parents=True, exist_ok=True)
    (out / "fashion_mnist.json").write_text(json.dumps(result, indent=2) + "\n")
    shutil.copyfile(run / "slim" / "curve.png", out / "fashion_mnist_slimming.png")
    md = ["# Fashion-MNIST at full scale: the compression pipeline", "",
          "All 60,000 training images (55,000 train, the last 5,000 validate), scored on the 10,000 test "
          "images, which choose nothing. 32 px inputs.", "", *markdown(summary, runs, curves, verdicts, times), "",
          "Commands (`bash studies/fashion_mnist.sh RUN_DIR`, then `python -m studies.fashion_mnist RUN_DIR`; "
          "`[--resume]` is added when a stage continues):", "", "```", *commands, "```"]
    notes = run / "notes.md"  # what the numbers do not say by themselves (written by whoever ran it)
    if notes.exists():
        md += ["", *notes.read_text().splitlines()]
    (out / "fashion_mnist.md").write_text("\n".join(md) + "\n")
    print(f"wrote {out / 'fashion_mnist.json'}, {out / 'fashion_mnist.md'}, {out / 'fashion_mnist_slimming.png'}")


if __name__ == "__main__":
    main(sys.argv[1:])
