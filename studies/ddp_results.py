"""Collect a DDP check run (studies/ddp_fashion_mnist.sh) into bench/results/ddp_fashion_mnist.{json,md}:
the last validation accuracy of 2 torchrun processes vs one process on the same run, within 2.5 pt.

Usage: python -m studies.ddp_results RUN_DIR [RESULTS_DIR]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from edge.bench.machine import describe
from edge.core.files import atomic_write

RESULTS = Path(__file__).resolve().parents[1] / "bench" / "results"
NAME = "ddp_fashion_mnist"
TOLERANCE_PT = 2.5


def _run(folder: Path, name: str) -> dict:
    metrics = json.loads((folder / f"{name}.json").read_text())
    last = metrics["last"]
    return {"command": (folder / f"{name}.command").read_text().strip(),
            "wall_seconds": round(float((folder / f"{name}.seconds").read_text()), 1),
            "load_before": (folder / f"{name}.load_before").read_text().strip(),
            "load_after": (folder / f"{name}.load_after").read_text().strip(),
            "model": metrics["model"], "parameters": metrics["parameters"],
            "last_val_accuracy": last["val_accuracy"], "last_train_loss": last["loss"],
            "history": metrics["history"]}


def collect(folder: Path) -> dict:
    ddp, single = _run(folder, "ddp"), _run(folder, "single")
    gap = 100 * abs(ddp["last_val_accuracy"] - single["last_val_accuracy"])
    return {"runs": {"ddp_2_processes": ddp, "single_process": single}, "gap_pt": round(gap, 2),
            "within_pt": TOLERANCE_PT, "passed": gap <= TOLERANCE_PT, "machine": describe()}


def markdown(result: dict) -> str:
    ddp, single = result["runs"]["ddp_2_processes"], result["runs"]["single_process"]
    cpu = result["machine"].get("cpu", {})
    rows = [f"| {label} | {r['last_val_accuracy']:.2%} | {r['last_train_loss']:.4f} | {r['wall_seconds']:.0f} s "
            f"| {r['load_before']} → {r['load_after']} |" for label, r in (("2 processes (torchrun, gloo)", ddp),
                                                                          ("1 process", single))]
    return "\n".join([
        "# DDP check: torchrun with 2 CPU processes vs one process", "",
        f"Fashion-MNIST, the first 4,096 training images, validated on the last 2,000 ({ddp['model']}, "
        f"{ddp['parameters']:,} parameters, 2 epochs, global batch 64, seed 0).", "",
        "| run | last val accuracy | last train loss | wall time | load average (1/5/15 min) before → after |",
        "|---|---:|---:|---:|---|", *rows, "",
        f"Gap: {result['gap_pt']:.2f} pt (required: within {result['within_pt']} pt): "
        f"{'passed' if result['passed'] else 'FAILED'}.", "",
        "Commands (studies/ddp_fashion_mnist.sh, then `python -m studies.ddp_results RUN_DIR`):", "",
        "```", ddp["command"], single["command"], "```", "",
        f"CPU: {cpu.get('model', '?')}, {cpu.get('cores', '?')} cores, shared with other jobs (see the load); "
        "wall times are not a speed claim. Without --sync-bn each process normalises its half of every batch, "
        "so the two runs differ by more than rounding; their accuracy does not.", ""])


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    out = Path(argv[1]) if len(argv) > 1 else RESULTS
    result = collect(Path(argv[0]))
    atomic_write(out / f"{NAME}.json", lambda f: f.write(json.dumps(result, indent=2).encode()))
    atomic_write(out / f"{NAME}.md", lambda f: f.write(markdown(result).encode()))
    print(markdown(result))
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
