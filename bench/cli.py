"""What `edge bench` does once click has parsed it: check options, run, print, write the reports."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from edge.bench import report
from edge.core import extras
from edge.core.backends import BackendError, parse_list
from edge.bench.harness import Settings, command_line, default_quants, parse_quants, run_bench
from edge.core.files import InputError, check_input, check_output
from edge.core.formats import is_onnx

MAX_JSON_BYTES = 64 * 1024 * 1024  # an earlier --json: kilobytes per row


def _quants(text: str) -> tuple[str, ...]:
    try:
        return parse_quants(text)
    except ValueError as err:
        raise click.BadParameter(str(err), param_hint="--quant") from None


def settings_from(data, labels, providers, quants, batches, threads, repeats, min_time, pools) -> Settings:
    """Validated `Settings` (bad values are click usage errors, exit 2)."""
    if labels and not data:
        raise click.BadParameter("--labels needs --data (the images they label)", param_hint="--labels")
    if not batches or min(batches) < 1:
        raise click.BadParameter("give one or more positive batch sizes, e.g. 1,32", param_hint="--batch")
    try:
        providers = parse_list(providers)
    except BackendError as err:
        raise click.BadParameter(str(err), param_hint="--provider") from None
    return Settings(providers=providers, quants=_quants(quants), batches=tuple(sorted(set(batches))), threads=threads,
                    repeats=repeats, min_seconds=min_time, data=data, labels=labels, pools=pools)


def _read_previous(path: Path) -> dict:
    """An earlier --json, checked before the run so a wrong file fails at once."""
    try:
        check_input(path, "bench JSON", MAX_JSON_BYTES)
        doc = json.loads(path.read_text())
        if isinstance(doc, dict) and isinstance(doc.get("rows"), list):
            report.compare(doc, doc)  # reads every field a comparison reads: a file lacking one fails now
            return doc
    except InputError as err:
        raise click.BadParameter(str(err), param_hint="--compare") from None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass
    raise click.BadParameter(f"{path} is not an `edge bench --json` file", param_hint="--compare")


def run_command(models: list[Path], *, json_out, markdown_out, plot_out, previous, quiet, **options) -> int:
    """Run the benchmark; print the table; write what was asked. Exit code 1 when a row failed."""
    if models and all(is_onnx(m) for m in models):
        if options["quants"]:
            raise click.BadParameter("formats are made from checkpoints; an ONNX file is run in the format it holds "
                                     "(drop --quant, or give the checkpoint)", param_hint="--quant")
        if options["pools"]:
            raise click.BadParameter("pool positions describe homework checkpoints; an ONNX file's graph fixes its "
                                     "own", param_hint="--pools")
    options["quants"] = options["quants"] or default_quants(models)
    if plot_out:
        extras.require("plot", "--plot")  # the runtime-only install has no matplotlib: say so before the run
    outputs = {"JSON": json_out, "markdown report": markdown_out, "plot": plot_out}
    for what, path in outputs.items():
        if path:
            others = [p for p in outputs.values() if p is not path]
            check_output(path, inputs=(*models, options["labels"], options["data"], previous, *others), what=what)
    settings = settings_from(**options)
    earlier = _read_previous(previous) if previous else None
    doc = run_bench(models, settings, command_line(sys.argv[1:]), progress=not quiet)
    if earlier:
        doc["comparison"] = {"with": str(previous), "lines": report.compare(doc, earlier)}
    click.echo(report.terminal(doc))
    for path, write in ((json_out, report.write_json), (markdown_out, report.write_markdown)):
        if path:
            write(path, doc)
            click.echo(f"wrote {path}", err=True)
    if plot_out:
        from edge.bench.plot import write_plot

        write_plot(plot_out, doc)
        click.echo(f"wrote {plot_out}", err=True)
    failed = [r for r in doc["rows"] if r["status"] == "error"]
    return 1 if failed else 0
