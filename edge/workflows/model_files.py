"""`edge info` and `edge convert` once their options are built: what a model file is, and the same
model rewritten in another format. An ONNX file is read without torch."""

from __future__ import annotations

from edge.core.config import ConfigError
from edge.core.files import check_output
from edge.core.options import ConvertOptions, InfoOptions
from edge.core.reports import Report


def info_command(options: InfoOptions) -> Report:
    """The model's config, preprocessing, classes, weight format, size: an aligned listing and its JSON."""
    from edge.core.formats import is_onnx

    summary = _onnx_info(options) if is_onnx(options.model) else _checkpoint_info(options)
    return Report(info_lines(summary), summary)


def _onnx_info(options: InfoOptions) -> dict:
    from edge.codec.metadata import model_size
    from edge.inference.runtime import OnnxClassifier

    if options.pools:
        raise ConfigError(f"--pools: {options.model} is an ONNX file, whose graph fixes its pools")
    loaded = OnnxClassifier(options.model)
    card, net, extra = loaded.card, loaded.net, {"weights": loaded.quant}
    parameters, flops = model_size(card, net)
    if net:
        extra["architecture"] = {"arch": net["arch"], "groups": net["groups"]}
    return _summary(options, card, parameters, flops, extra)


def _checkpoint_info(options: InfoOptions) -> dict:
    from edge.io.checkpoints import load_model

    model = load_model(options.model, pools=options.pools)
    return _summary(options, model.card, model.parameters, model.flops,
                    {"format": model.source, "model": model.describe()})


def _summary(options: InfoOptions, card, parameters: int, flops: float, extra: dict) -> dict:
    return {"file": str(options.model), "bytes": options.model.stat().st_size, "parameters": parameters,
            "mflops": round(flops / 1e6, 1), **card.to_dict(), **extra}


def info_lines(summary: dict) -> tuple[str, ...]:
    """``key: value`` lines, keys aligned; a list is comma-joined, a nested dict ``k=v`` pairs (its lists in [])."""
    def text(value, nested: bool = False) -> str:
        if isinstance(value, dict):
            return ", ".join(f"{k}={text(v, True)}" for k, v in value.items())
        if isinstance(value, (list, tuple)):
            joined = ", ".join(map(str, value))
            return f"[{joined}]" if nested else joined
        return f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else str(value)

    width = max(map(len, summary))
    return tuple(f"{key + ':':<{width + 1}} {text(value)}" for key, value in summary.items())


def convert_command(options: ConvertOptions) -> Report:
    """Rewrite the model file as an edge checkpoint, a homework pickle, or (an entropy-coded .onnx) plain ONNX."""
    from edge.io.checkpoints import load_checkpoint, save_checkpoint, save_homework_pickle

    check_output(options.output, inputs=(options.checkpoint,), overwrite=options.overwrite, writes_model=True,
                 what="converted model")
    if options.target == "onnx":
        from edge.codec.entropy import write_plain

        size, kind = write_plain(options.checkpoint, options.output), "plain ONNX"
    else:
        model = load_checkpoint(options.checkpoint, pools=options.pools)
        if options.target == "edge":
            save_checkpoint(options.output, model.card, model.state)
        else:
            save_homework_pickle(options.output, model.state, bits=8 if options.target == "homework8" else 16)
        size, kind = options.output.stat().st_size, options.target
    document = {"input": str(options.checkpoint), "output": str(options.output), "bytes": size, "to": options.target}
    return Report((f"wrote {options.output}: {size:,} bytes ({kind})",), document)
