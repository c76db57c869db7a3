"""`edge bench` / `edge.benchmark` once their options are built (`edge.core.options.BenchOptions`):
check the options and every output, run the harness, and report (the terminal table, the JSON document,
the markdown report and the plot that were asked for)."""

from __future__ import annotations

from pathlib import Path

from edge.bench import report
from edge.bench.harness import Settings, default_quants, parse_quants, run_bench
from edge.core import extras
from edge.core.backends import BackendError, ComputeError, parse_computes, parse_list
from edge.core.config import ConfigError
from edge.core.files import InputError, check_input, check_output
from edge.core.formats import is_onnx
from edge.core.json_text import loads
from edge.core.options import BenchOptions
from edge.core.reports import Report

MAX_JSON_BYTES = 64 * 1024 * 1024  # an earlier --json: kilobytes per row


def bench_command(options: BenchOptions, command: str = "edge.benchmark(...)") -> Report:
    """Run the benchmark; the report's lines are the table, its exit code 1 when a row failed."""
    models = list(options.models)
    settings = settings_from(options)
    _check_outputs(options)
    if options.plot_out:
        extras.require("plot", "--plot")  # the runtime-only install has no matplotlib: say so before the run
    earlier = _read_previous(options.previous) if options.previous else None
    doc = run_bench(models, settings, command, progress=not options.quiet)
    for row in doc["rows"]:
        row["peak_share"] = report.peak_share(doc, row) if row["status"] == "ok" else None
    if earlier:
        doc["comparison"] = {"with": str(options.previous), "lines": report.compare(doc, earlier)}
    return Report((report.terminal(doc), *_write_outputs(options, doc)), doc,
                  exit_code=1 if any(r["status"] == "error" for r in doc["rows"]) else 0)


def settings_from(options: BenchOptions) -> Settings:
    """Validated harness `Settings` (a bad value is a `ConfigError` naming its option)."""
    models = list(options.models)
    if models and all(is_onnx(m) for m in models):
        if options.quants:
            raise ConfigError("--quant: formats are made from checkpoints; an ONNX file is run in the format it "
                              "holds (drop --quant, or give the checkpoint)")
        if options.pools:
            raise ConfigError("--pools: pool positions describe homework checkpoints; an ONNX file's graph fixes "
                              "its own")
    if options.labels and not options.data:
        raise ConfigError("--labels needs --data (the images they label)")
    try:
        providers = parse_list(options.providers)
    except BackendError as err:
        raise ConfigError(f"--provider: {err}") from None
    try:
        quants = parse_quants(options.quants or default_quants(models))
    except ValueError as err:
        raise ConfigError(f"--quant: {err}") from None
    try:
        computes = parse_computes(options.computes)
    except ComputeError as err:
        raise ConfigError(f"--compute: {err}") from None
    if options.calib and not options.calib.is_dir():
        raise ConfigError(f"--calib: {options.calib} is not a folder of images")
    return Settings(providers=providers, quants=quants, computes=computes, calib=options.calib,
                    batches=tuple(sorted(set(options.batches))),
                    threads=options.threads, repeats=options.repeats, min_seconds=options.min_time,
                    data=options.data, labels=options.labels, pools=options.pools)


def _outputs(options: BenchOptions) -> dict:
    return {"JSON": options.json_out, "markdown report": options.markdown_out, "plot": options.plot_out}


def _check_outputs(options: BenchOptions) -> None:
    outputs = _outputs(options)
    for what, path in outputs.items():
        if path:
            others = [p for p in outputs.values() if p is not path]
            check_output(path, inputs=(*options.models, options.labels, options.data, options.calib, options.previous,
                                       *others),
                         overwrite=options.overwrite, what=what)


def _write_outputs(options: BenchOptions, doc: dict) -> list[str]:
    """Write the JSON, markdown and plot asked for; -> a line per file written."""
    written = []
    for path, write in ((options.json_out, report.write_json), (options.markdown_out, report.write_markdown)):
        if path:
            write(path, doc)
            written.append(f"wrote {path}")
    if options.plot_out:
        from edge.bench.plot import write_plot

        write_plot(options.plot_out, doc)
        written.append(f"wrote {options.plot_out}")
    return written


def _read_previous(path: Path) -> dict:
    """An earlier --json, checked before the run so a wrong file fails at once."""
    try:
        check_input(path, "bench JSON", MAX_JSON_BYTES)
        doc = loads(path.read_text())
        if isinstance(doc, dict) and isinstance(doc.get("rows"), list):
            report.compare(doc, doc)  # reads every field a comparison reads: a file lacking one fails now
            return doc
    except InputError as err:
        raise ConfigError(f"--compare: {err}") from None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass
    raise ConfigError(f"--compare: {path} is not an `edge bench --json` file")
