"""Turn a bench results document into a terminal table, a markdown report, JSON, and a comparison.

Cells show the median over repeats; latency and throughput also show (min-max) over repeats,
so a reader can tell a real difference from noise. Rows that did not run say why in a note.
"""

from __future__ import annotations

import json
from pathlib import Path

from edge.core.backends import resolve
from edge.bench.rows import REFERENCE
from edge.core.files import atomic_write

COLUMNS = ("Backend", "Format", "Status", "Bytes", "Params", "Accuracy", "Agree", "Agree calib", "Load ms", "p50 ms",
           "p90 ms", "img/s", "best b", "GFLOP/s", "RSS MB", "x torch", "x fp32", "predict img/s")


def _range(stats: dict | None, digits: int) -> str:
    if not stats:
        return ""
    return f"{stats['median']:.{digits}f} ({stats['min']:.{digits}f}-{stats['max']:.{digits}f})"


def _median(stats: dict | None, digits: int) -> str:
    return f"{stats['median']:.{digits}f}" if stats else ""


def _pct(value: float | None) -> str:
    return f"{value:.1%}" if value is not None else ""


def _gflops(row: dict, share: float | None) -> str:
    """GFLOP/s at the largest batch and its share of the row's own peak (`peak_share`)."""
    stats = row["gflops"]
    if not stats:
        return ""
    return f"{stats['median']:.1f}" + (f" ({share:.0%})" if share is not None else "")


def usable_peak(doc: dict, compute: str = "fp32") -> tuple[float | None, int]:
    """The rough CPU peak of the cores a row could use (``--threads`` caps them) in ``compute`` (fp32's times
    the precision's factor, `edge.bench.machine`; None where the CPU lacks its instructions), and their count."""
    cpu = doc["machine"]["cpu"]
    cores = min(doc["settings"]["threads"] or cpu["cores"], cpu["cores"])
    peak = (cpu.get("peak_gops") or {}).get(compute) if compute != "fp32" else cpu.get("peak_gflops")
    return (peak * cores / cpu["cores"] if peak else None), cores


def peak_share(doc: dict, row: dict) -> float | None:
    """A row's GFLOP/s at its largest batch over its own peak (`usable_peak` of its compute precision; the
    peak is the CPU's, so None on a GPU)."""
    peak = usable_peak(doc, row.get("compute", "fp32"))[0]
    on_cpu = resolve(row["backend"]).device == "cpu"
    return row["gflops"]["median"] / peak if row.get("gflops") and peak and on_cpu else None


def _fp32(row: dict, key: str):
    return (row.get("vs_fp32") or {}).get(key)


def _cells(row: dict, share: float | None, note: int | None) -> list[str]:
    if row["status"] != "ok":
        return [row["backend"], row["format"], f"{row['status']} [{note}]"] + [""] * (len(COLUMNS) - 3)
    predict = row["predict"] or {}
    accuracy = predict.get("accuracy")
    top = row["gflops_batch"]
    rss = "/".join(f"{mb:.0f}" for mb in row["peak_rss_mb"].values())
    agreement = row["agreement_vs_torch_fp32"]
    vs_torch = (row.get("vs_fp32") or {}).get("reference") == " ".join(REFERENCE)
    return [row["backend"], row["format"], "ok", f"{row['bytes']:,}", f"{row['parameters']:,}",
            _pct(accuracy[0] if accuracy else None), _pct(agreement if agreement is not None else _fp32(row, "agreement")),
            _pct(_fp32(row, "calib_agreement")), _median(row["load_ms"], 0), _range(row["p50_ms"], 2),
            _median(row["p90_ms"], 2), _range(row["img_s"][str(top)], 1), str(row.get("best_batch") or ""),
            _gflops(row, share), rss, _range(row["speedup_vs_torch_cpu_fp32"], 2),
            "" if vs_torch else _range(_fp32(row, "speedup"), 2), _end_to_end(predict)]


def _end_to_end(predict: dict) -> str:
    """`edge predict`'s images/s and the share of its CPU time spent decoding + preprocessing."""
    if not predict.get("images"):
        return ""
    cpu = predict["decode_cpu_s"] + predict["infer_cpu_s"]
    return f"{predict['img_s']:.1f} ({predict['decode_cpu_s'] / cpu:.0%} decode)" if cpu else f"{predict['img_s']:.1f}"


def table(doc: dict) -> tuple[list[str], list[list[str]], list[str]]:
    """Headers, cell rows and numbered notes (why a row did not run); a Model column when several."""
    batches = doc["settings"]["batches"]
    headers = list(COLUMNS)
    headers[headers.index("p50 ms")] = f"p50 ms b={min(batches)}"
    headers[headers.index("p90 ms")] = f"p90 ms b={min(batches)}"
    headers[headers.index("img/s")] = f"img/s b={max(batches)}"
    headers[headers.index("RSS MB")] = "peak RSS MB b=" + "/".join(str(b) for b in batches)
    notes: list[str] = []
    cells = []
    for row in doc["rows"]:
        note = None
        if row["status"] != "ok":
            text = f"{row['backend']}: {row['reason']}"
            if text not in notes:
                notes.append(text)
            note = notes.index(text) + 1
        cells.append(_cells(row, peak_share(doc, row) if row["status"] == "ok" else None, note))
    if len(doc["models"]) > 1:
        headers.insert(0, "Model")
        cells = [[row["model"], *c] for row, c in zip(doc["rows"], cells)]
    keep = [i for i, h in enumerate(headers) if any(c[i] for c in cells) or h in COLUMNS[:3]]
    return [headers[i] for i in keep], [[c[i] for i in keep] for c in cells], notes


def latency_ratios(doc: dict) -> list[str]:
    """For each ONNX Runtime provider: every format's batch-1 latency / fp32's, paired per repeat."""
    lines = []
    rows = [r for r in doc["rows"] if r["status"] == "ok" and resolve(r["backend"]).is_onnx]
    for base in (r for r in rows if r["format"] == "fp32"):
        for other in rows:
            if (other["model"], other["backend"]) != (base["model"], base["backend"]) or other is base:
                continue
            ratios = [o["p50_ms"] / b["p50_ms"] for o, b in zip(other["repeats"], base["repeats"])]
            ratios.sort()
            lines.append(f"{base['backend']} {other['format']} / fp32 p50 latency ({base['model']}): "
                         f"{ratios[len(ratios) // 2]:.3f} (per repeat {ratios[0]:.3f}-{ratios[-1]:.3f})")
    return lines


def terminal(doc: dict) -> str:
    """A padded plain-text table (like `yolo benchmark`'s) with the notes and ratios below it."""
    headers, cells, notes = table(doc)
    widths = [max(len(str(x)) for x in column) for column in zip(headers, *cells)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in cells]
    lines += [f"[{i}] {text}" for i, text in enumerate(notes, 1)]
    return "\n".join(lines + latency_ratios(doc) + _auto_lines(doc) + [_legend(doc)] + _comparison(doc))


def _auto_lines(doc: dict) -> list[str]:
    """The row `--provider auto` picks, when one qualifies (and the rule)."""
    choice = doc.get("auto_choice")
    if not choice:
        return ["--provider auto: no row agrees with fp32 enough to be chosen"] if "auto_choice" in doc else []
    return [f"--provider auto: {choice['backend']} {choice['format']} ({choice['rule']}; "
            f"{choice['agreement']:.2%} on {choice['agreement_on']}, p50 {choice['p50_ms']:.2f} ms)"]


def _comparison(doc: dict) -> list[str]:
    compared = doc.get("comparison")
    return [f"compared with {compared['with']}:", *compared["lines"]] if compared else []


def _legend(doc: dict) -> str:
    cpu = doc["machine"]["cpu"]
    settings = doc["settings"]
    peak, cores = usable_peak(doc)
    return (f"median (min-max) over {settings['repeats']} interleaved repeats; CPU {cpu['model']}, "
            f"{cpu['cores']} cores, load average {_load(doc['machine']['load_at_start'])} at start; "
            f"peak {peak or 0:.0f} GFLOP/s on the {cores} core(s) used ({cpu['peak_note']}); "
            f"GFLOP/s at b={max(settings['batches'])} (% of the row's own peak: bf16 and int8 rows against their "
            f"precision's), x torch = torch-cpu fp32 p50 / row p50, x fp32 = the fp32 reference row's p50 / row p50 "
            f"(paired per repeat); Agree: top-1 agreement with fp32 on --data, Agree calib: on --calib's first photos; "
            f"predict img/s: one pass of `edge predict` over the folder (not repeated)")


def markdown(doc: dict) -> str:
    """The report for bench/results and the README: command, machine, versions, table, notes."""
    headers, cells, notes = table(doc)
    machine = doc["machine"]
    versions = ", ".join(f"{k} {v}" for k, v in machine["versions"].items())
    lines = [f"Command: `{doc['command']}`", "",
             f"Run {doc['started']} ({doc['seconds']:.0f} s) on {machine['cpu']['model']}, "
             f"{machine['cpu']['cores']} cores, GPU: {machine['gpu'] or 'none'}; {machine['os']}; "
             f"load average {_load(machine['load_at_start'])} at start, {_load(machine)} at end "
             f"(other processes share these cores), nice {machine['nice']}", "",
             f"Versions: {versions}", "", *_model_lines(doc), "",
             "| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(c.replace("|", "/") for c in row) + " |" for row in cells]
    lines += [""] + [f"[{i}] {text}" for i, text in enumerate(notes, 1)]
    lines += [""] + [f"- {line}" for line in latency_ratios(doc) + _auto_lines(doc)] + ["", _legend(doc), ""]
    compared = _comparison(doc)
    if compared:
        lines += [compared[0], "", "```", *compared[1:], "```", ""]
    return "\n".join(lines)


def _load(state: dict) -> str:
    averages = state.get("load_average")
    return "/".join(f"{a:.1f}" for a in averages) if averages else "unknown"


def _model_lines(doc: dict) -> list[str]:
    return [f"- {m['name']}: {m['parameters']:,} parameters, {m['mflops_per_image']:.1f} MFLOP per image at "
            f"{m['input_size']}x{m['input_size']}" for m in doc["models"]]


def compare(doc: dict, previous: dict) -> list[str]:
    """Row by row (p50, throughput, speed-up over torch): ``agree`` when each run's median lies within
    the other's min-max, ``overlap`` when only the min-max ranges overlap, ``DIFFER`` when disjoint."""
    def key(row):
        return row["model"], row["backend"], row["format"]

    earlier = {key(r): r for r in previous["rows"] if r["status"] == "ok"}
    lines, verdicts = [], []
    for row in (r for r in doc["rows"] if r["status"] == "ok" and key(r) in earlier):
        old = earlier[key(row)]
        top = str(row["gflops_batch"])
        pairs = [("p50 ms", row["p50_ms"], old["p50_ms"]),
                 (f"img/s b={top}", row["img_s"].get(top), old["img_s"].get(top))]
        if (row["backend"], row["format"]) != REFERENCE:  # the reference's own ratio is 1 by definition
            pairs.append(("x torch", row["speedup_vs_torch_cpu_fp32"], old["speedup_vs_torch_cpu_fp32"]))
        for label, new_stats, old_stats in pairs:
            if new_stats and old_stats:
                verdicts.append(_verdict(new_stats, old_stats))
                lines.append(f"{verdicts[-1]:7} {row['backend']} {row['format']} {label}: "
                             f"now {_range(new_stats, 1)}, before {_range(old_stats, 1)}")
    counts = ", ".join(f"{verdicts.count(v)} {v}" for v in ("agree", "overlap", "DIFFER"))
    return [f"{len(verdicts)} medians compared with the other run's min-max: {counts}", *lines]


def _verdict(stats: dict, other: dict) -> str:
    if _within(stats, other) and _within(other, stats):
        return "agree"
    return "overlap" if stats["min"] <= other["max"] and other["min"] <= stats["max"] else "DIFFER"


def _within(stats: dict, other: dict) -> bool:
    return other["min"] <= stats["median"] <= other["max"]


def write_json(path: Path, doc: dict) -> None:
    atomic_write(path, lambda f: json.dump(doc, f, indent=1, sort_keys=False), binary=False)


def write_markdown(path: Path, doc: dict) -> None:
    atomic_write(path, lambda f: f.write(markdown(doc)), binary=False)
