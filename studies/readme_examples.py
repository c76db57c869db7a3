"""The README's examples, run as a user runs them, with what they print: the source of every number
in the README's output blocks (and of the quick start's byte count, which `tests/test_export.py`
checks against a fresh export).

Each command runs verbatim in a scratch folder laid out like a clone: ``models/`` and ``hw7_test.sh``
of this repository, and the data beside it as ``../shared``. Progress bars are dropped from the
recorded output. ``--only NAME`` re-runs some and keeps the others from the existing JSON (train,
distill and slim use each other's files: re-run them together). Writes ``bench/results/readme_examples.json`` (machine, versions, load, and per
example its command, exit code, seconds and output) and ``.md`` (the same, readable).

Usage: python -m studies.readme_examples [--shared DIR] [--only NAME ...] [--json OUT] [--markdown OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
FASHION = "fashion-mnist:train@:256 --val fashion-mnist:test@:256"
# (name, command) in the README's order; later ones use the files earlier ones write.
EXAMPLES = (
    ("export", "edge export --quant uint8 -o student_uint8.onnx"),
    ("homework", "bash hw7_test.sh ../shared/food11 predictions.csv"),
    ("predict", "edge predict models/food11_student_compressed.onnx ../shared/food11/testing "
                "--labels ../shared/food11/reference_labels.csv -o answers.csv --quiet"),
    ("info", "edge info models/food11_student_compressed.onnx"),
    ("convert", "edge convert models/food11_student_compressed.onnx --to onnx -o plain.onnx"),
    ("bench", "edge bench models/food11_student_compressed.onnx models/food11_student_uint8.onnx "
              "--provider cpu --threads 1 --repeats 1 --batch 1 --quiet"),
    ("train", f"edge train {FASHION} --epochs 1 -o teacher.pt"),
    ("distill", f"edge distill {FASHION} --teacher teacher.best.pt --epochs 1 -o student.pt"),
    ("slim", f"edge slim student.best.pt {FASHION} --rate 0.25 --rounds 1 --finetune-epochs 1 -o slim/"),
    ("attack", "edge attack models/food11_student_uint8.onnx ../shared/food11/testing "
               "--labels ../shared/food11/reference_labels.csv --limit 32 --eps 2/255 --method fgsm "
               "--defense gaussian:1.5 --quiet"),
    ("sensitivity", "edge sensitivity ../shared/hw7/student_custom_small.bin --images ../shared/food11/testing "
                    "--limit 32 --bits 4"),
)
PROGRESS = re.compile(r"\d+%\|| \d+/\d+ \[|it/s\]|s/it\]")


def clean(text: str) -> str:
    """The lines a user keeps on screen: progress-bar frames (carriage-return updates) dropped."""
    lines = []
    for line in text.replace("\r\n", "\n").split("\n"):
        kept = [part for part in line.split("\r") if part.strip() and not PROGRESS.search(part)]
        lines.extend(kept)
    return "\n".join(lines)


def scratch_clone(shared: Path) -> Path:
    """A folder holding ``clone/`` (models/, hw7_test.sh) and ``shared`` -> the data; returns clone/."""
    root = Path(tempfile.mkdtemp(prefix="edge-readme-"))
    clone = root / "clone"
    clone.mkdir()
    (clone / "models").symlink_to(REPO / "models")
    (clone / "hw7_test.sh").symlink_to(REPO / "hw7_test.sh")
    (root / "shared").symlink_to(shared.resolve())
    return clone


def run_example(name: str, command: str, clone: Path) -> dict:
    """Run one command in the scratch clone; its exit code, seconds and cleaned output."""
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    start = time.perf_counter()
    done = subprocess.run(shlex.split(command), cwd=clone, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    output = clean(done.stdout + ("\n" if done.stdout and done.stderr else "") + done.stderr)
    print(f"{name}: exit {done.returncode} in {seconds:.1f} s\n{output}\n", flush=True)
    return {"name": name, "command": command, "exit_code": done.returncode, "seconds": round(seconds, 1),
            "output": output}


def quick_start_bytes(examples: list[dict]) -> int | None:
    """The byte count the quick start's export printed (``wrote FILE: N bytes``)."""
    for example in examples:
        found = re.search(r"wrote \S+: ([\d,]+) bytes", example["output"]) if example["name"] == "export" else None
        if found:
            return int(found.group(1).replace(",", ""))
    return None


def markdown(doc: dict) -> str:
    """The readable report: the machine, then each command and what it printed."""
    machine = doc["machine"]
    lines = [f"Command: `{doc['command']}`", "",
             f"Run {doc['started']} on {machine['cpu'].get('model')}, {machine['cpu'].get('cores')} cores; "
             f"load average {'/'.join(str(x) for x in machine['load_average'])} at start "
             "(other processes share these cores: timings are noisy)", "",
             "Versions: " + ", ".join(f"{k} {v}" for k, v in machine["versions"].items()), "",
             f"Quick start export: {doc['quick_start_bytes']} bytes", ""]
    for example in doc["examples"]:
        lines += [f"## {example['name']}", "", "```bash", example["command"], "```", "",
                  f"exit code {example['exit_code']}, {example['seconds']} s", "", "```text", example["output"], "```", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=Path(os.environ.get("EDGE_SHARED", REPO.parent / "shared")))
    parser.add_argument("--only", action="append", choices=[name for name, _ in EXAMPLES],
                        help="Run only these (the others are kept from the existing --json).")
    parser.add_argument("--json", type=Path, default=RESULTS / "readme_examples.json")
    parser.add_argument("--markdown", type=Path, default=RESULTS / "readme_examples.md")
    args = parser.parse_args(argv)
    from edge.bench.machine import describe

    previous = json.loads(args.json.read_text()) if args.only else {"command": "", "examples": []}
    kept = {e["name"]: e for e in previous["examples"]}
    command = "python -m studies.readme_examples" + "".join(f" --only {n}" for n in args.only or ())
    clone = scratch_clone(args.shared)
    doc = {"command": f"{previous['command']}, then {command}" if args.only else command,
           "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "machine": describe(),
           "quick_start_bytes": None, "examples": []}
    for name, command in EXAMPLES:  # written after each, so an interrupted run keeps what it finished
        doc["examples"].append(run_example(name, command, clone) if not args.only or name in args.only
                               else kept[name])
        doc["quick_start_bytes"] = quick_start_bytes(doc["examples"])
        args.json.write_text(json.dumps(doc, indent=1) + "\n")
        args.markdown.write_text(markdown(doc))
    return 0 if all(e["exit_code"] == 0 for e in doc["examples"]) else 1


if __name__ == "__main__":
    sys.exit(main())
