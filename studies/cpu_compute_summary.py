"""Issue 28's verdicts from one `edge bench --compute ... --calib ... --data ...` JSON (studies/cpu_compute.sh):
the speed against agreement frontier of every backend x compute precision at b=1 (each ratio paired per
repeat with ONNX Runtime fp32 in the same run), whether the fastest row with >= 99.5% held-out agreement
is >= 1.3x ONNX Runtime fp32, b=32 against b=1 images/s (paired per repeat), and the --provider auto choice; the CPU's model
and flags. Writes markdown.

    python -m studies.cpu_compute_summary bench/results/cpu_compute_1thread.json -o bench/results/cpu_compute.md
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

AGREEMENT, TARGET = 0.995, 1.3
FLAGS_SHOWN = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8")


def _pct(value) -> str:
    return f"{value:.2%}" if value is not None else "-"


def _ratio(stats) -> str:
    return f"{stats['median']:.2f} ({stats['min']:.2f}-{stats['max']:.2f})" if stats else "-"


def batch_ratio(row: dict, large: int = 32, small: int = 1) -> dict | None:
    """b=``large`` images/s over b=``small``'s, paired per repeat (both ran back to back in it): median, min, max."""
    ratios = sorted(run["img_s"][str(large)] / run["img_s"][str(small)] for run in row.get("repeats", ())
                    if str(large) in run["img_s"] and str(small) in run["img_s"])
    return {"median": ratios[len(ratios) // 2], "min": ratios[0], "max": ratios[-1]} if ratios else None


def repeat_noise(row: dict, batch: int = 1) -> float | None:
    """How far b=``batch``'s images/s moved between this run's repeats, relative to its median ((max - min) /
    median): the same measurement against itself, the noise a b=32 / b=1 ratio is read against."""
    rates = sorted(run["img_s"][str(batch)] for run in row.get("repeats", ()) if str(batch) in run["img_s"])
    return (rates[-1] - rates[0]) / rates[len(rates) // 2] if len(rates) > 1 else None


def batch_verdict(rows: list[dict]) -> str:
    """b=32 against b=1 on every row, by the median of its per-repeat ratios; a row below 1 is within the noise when
    it is below by no more than b=1 moved between repeats by itself (`repeat_noise`), slower when by more."""
    below = [r for r in rows if r["ratio"] and r["ratio"]["median"] < 1]
    if not below:
        return "b=32 images/s >= b=1 images/s on every row (median of the per-repeat ratios)."
    ties = [r for r in below if 1 - r["ratio"]["median"] <= (r["noise"] or 0)]
    slower = [r for r in below if r not in ties]

    def named(group):
        return ", ".join(f"{r['row']} ({r['ratio']['median']:.3f}; b=1 moved {r['noise'] or 0:.1%})" for r in group)

    return " ".join([f"b=32 images/s < b=1 images/s (median of the per-repeat ratios) on: "
                     f"{', '.join(r['row'] for r in below)}."]
                    + ([f"Within the noise (below by no more than b=1 moved between repeats by itself): "
                        f"{named(ties)}."] if ties else [])
                    + ([f"Slower beyond the noise: {named(slower)}."] if slower else []))


def frontier_rows(doc: dict) -> list[dict]:
    """Every ok row: p50, speed-up over the fp32 reference, agreements, own-peak share, b=32/b=1 images/s."""
    out = []
    for row in (r for r in doc["rows"] if r["status"] == "ok"):
        img_s = {int(b): s["median"] for b, s in row["img_s"].items()}
        vs = row.get("vs_fp32") or {}
        out.append({"row": f"{row['backend']} {row['format']}", "compute": row["compute"],
                    "p50_ms": row["p50_ms"]["median"], "speedup": (vs.get("speedup") or {}).get("median"),
                    "agreement": vs.get("agreement"), "calib_agreement": vs.get("calib_agreement"),
                    "peak_share": row.get("peak_share"), "b1": img_s.get(1), "b32": img_s.get(32),
                    "best_batch": row.get("best_batch"), "ratio": batch_ratio(row),
                    "noise": repeat_noise(row)})
    return sorted(out, key=lambda r: r["p50_ms"])


def markdown(doc: dict, source: str) -> str:
    cpu = doc["machine"]["cpu"]
    rows = frontier_rows(doc)
    flags = [f for f in FLAGS_SHOWN if f in cpu.get("flags", cpu.get("simd", []))]
    keep = [r for r in rows if (r["agreement"] or 0) >= AGREEMENT]
    best = keep[0] if keep else None
    lines = [f"# Speed against agreement on {cpu['model']} ({cpu['cores']} cores; flags: {', '.join(flags)})", "",
             f"Source: {source}", "",
             f"From `{doc['command']}` (run {doc['started']}, load average "
             f"{'/'.join(map(str, doc['machine']['load_at_start']['load_average']))} at start, threads "
             f"{doc['settings']['threads'] or 'all'}). Every ratio is paired per repeat within this one run; "
             "agreement is top-1 with ONNX Runtime fp32 on the held-out --data photos (calib: on the --calib ones).", "",
             "| row | compute | p50 ms b=1 | x ort fp32 | agreement held-out | agreement calib | % own peak | "
             "img/s b=1 | img/s b=32 | b=32 / b=1 per repeat | best batch |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['row']} | {r['compute']} | {r['p50_ms']:.3f} | "
                     f"{r['speedup']:.2f} | {_pct(r['agreement'])} | {_pct(r['calib_agreement'])} | "
                     f"{_pct(r['peak_share'])} | {r['b1']:.0f} | {r['b32']:.0f} | {_ratio(r['ratio'])} | "
                     f"{r['best_batch']} |")
    frontier, fastest_so_far = [], None
    for r in sorted(rows, key=lambda r: -(r["agreement"] or 0)):
        if fastest_so_far is None or r["p50_ms"] < fastest_so_far:
            frontier.append(r["row"])
            fastest_so_far = r["p50_ms"]
    lines += ["", f"Frontier (no other row is both faster and more faithful): {', '.join(frontier)}.", ""]
    if best:
        verdict = "meets" if best["speedup"] >= TARGET else "misses"
        lines.append(f"Fastest row with >= {AGREEMENT:.1%} held-out agreement: {best['row']}, "
                     f"{best['speedup']:.2f}x ONNX Runtime fp32 at b=1: {verdict} the {TARGET}x target; every faster "
                     "row agrees less (the frontier above).")
    choice = doc.get("auto_choice")
    lines.append(f"--provider auto: {choice['backend']} {choice['format']} ({_pct(choice['agreement'])} on "
                 f"{choice['agreement_on']})." if choice else "--provider auto: no row qualifies.")
    lines.append(batch_verdict(rows))
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("json", type=Path)
    parser.add_argument("-o", "--output", type=Path, required=True)
    args = parser.parse_args(argv)
    doc = json.loads(args.json.read_text())
    args.output.write_text(markdown(doc, f"{args.json.as_posix()}"))
    print(args.output.read_text())


if __name__ == "__main__":
    main()
