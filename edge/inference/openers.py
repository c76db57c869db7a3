"""The backend registry: each backend kind of `edge.core.backends` (``onnxruntime``, ``openvino``, ``torch``) -> the
`BackendHandler` that opens a model file on one of its backends, for `edge predict` and the API
(`edge.inference.predict.open_model`) and for `edge bench`'s rows (`edge.bench.worker.open_backend`).

A handler class registers itself with ``@register_backend(kind)``. Registering imports nothing heavy:
each handler imports its library only when it opens a model, so ONNX Runtime's never imports torch (nor
OpenVINO). An ONNX bench row's format may end in ``@COMPUTE`` (``uint4@bf16``): the compute precision it runs.
"""

from __future__ import annotations

import os

from edge.core.backends import ONNXRUNTIME, OPENVINO, TORCH, Backend
from edge.core.cpu import cpu_cores
from edge.core.registry import Registry

CHANNELS_LAST = "+cl"  # a torch bench row's format suffix: run in channels_last memory format
COMPUTE_MARK = "@"  # an ONNX bench row's format suffix: ``@bf16``, ``@int8`` (none: fp32)


def with_compute(fmt: str, compute: str) -> str:
    """A bench row's format: the weight format, and the compute precision unless fp32."""
    return fmt if compute == "fp32" else f"{fmt}{COMPUTE_MARK}{compute}"


def compute_of(variant: str) -> str:
    """The compute precision a bench row's format names (fp32 when none)."""
    return variant.partition(COMPUTE_MARK)[2] or "fp32"


def photos_from(folder):
    """``folder`` -> ``calib(card, count)``: its first ``count`` photos as ``card``'s input (None: no folder)."""
    if folder is None:
        return None

    def calib(card, count: int):
        from edge.data.preprocess import first_images

        return first_images(folder, card, count)

    return calib


class BackendHandler:
    """How the backends of one kind open a model file."""

    kind = ""  # set by `register_backend`

    def preload(self) -> None:
        """Import the library, so that no timed load includes its import."""
        raise NotImplementedError

    def open(self, path: str | os.PathLike, backend: Backend, threads: int | None = None,
             pools: tuple[int, ...] | str | None = None, variant: str = "", images_from=None, calib=None):
        """The classifier (``model(images) -> logits``, ``.card``) for ``path`` on ``backend``. ``variant``: a
        bench row's format (`options`); ``pools``: a homework checkpoint's max-pools (``auto``: the placement
        its BatchNorm statistics fit best on the photos of ``images_from``); ``calib``: the photo folder int8
        compute is calibrated on."""
        raise NotImplementedError

    def options(self, variant: str) -> dict:
        """What a bench row's format asks of this library beyond the file (none: the file says it all)."""
        compute = compute_of(variant)
        return {"compute": compute} if compute != "fp32" else {}

    def lanes(self, backend: Backend, threads: int | None) -> tuple[int | None, int]:
        """-> (threads of each model call, how many calls may run at once) for `edge predict`."""
        return threads, 1


_HANDLERS = Registry("backend kind", "edge.inference.openers", tag="kind")


def register_backend(kind: str):
    """Register the decorated `BackendHandler` subclass (one instance) as backend ``kind``'s implementation."""
    return _HANDLERS.register(kind)


def backend_handler(kind: str) -> BackendHandler:
    """The handler of a backend kind (``Backend.kind``)."""
    return _HANDLERS[kind]


def kinds() -> tuple[str, ...]:
    """The backend kinds registered, in registration order."""
    return tuple(_HANDLERS)


@register_backend(ONNXRUNTIME)
class OnnxRuntimeHandler(BackendHandler):
    """`edge.inference.runtime.OnnxClassifier` (no torch). The graph fixes the pools; ``pools`` is ignored."""

    def preload(self) -> None:
        import onnxruntime  # noqa: F401

    def open(self, path, backend, threads=None, pools=None, variant="", images_from=None, calib=None):
        from edge.inference.runtime import OnnxClassifier

        return OnnxClassifier(path, backend.name, threads, compute_of(variant), photos_from(calib))

    def lanes(self, backend, threads):
        """On the CPU, ``threads`` (default: all cores) single-threaded calls at once: no core waits for another
        inside an operator; on a GPU one call at a time."""
        return (1, threads or cpu_cores()) if backend.device == "cpu" else (threads, 1)


@register_backend(OPENVINO)
class OpenVinoHandler(BackendHandler):
    """`edge.inference.openvino_backend.OpenVinoClassifier` (no torch); one call at a time, on ``threads`` (default:
    OpenVINO's, all cores)."""

    def preload(self) -> None:
        import onnxruntime  # noqa: F401 (it checks the file first)
        import openvino  # noqa: F401

    def open(self, path, backend, threads=None, pools=None, variant="", images_from=None, calib=None):
        from edge.inference.openvino_backend import OpenVinoClassifier

        return OpenVinoClassifier(path, backend.name, threads, compute_of(variant), photos_from(calib))


@register_backend(TORCH)
class TorchHandler(BackendHandler):
    """`edge.inference.torch_backend.TorchClassifier` of any model file `edge.io.checkpoints.load_model` reads."""

    def preload(self) -> None:
        import torch  # noqa: F401

    def options(self, variant: str) -> dict:
        """``fp16`` -> half precision, ``+cl`` -> channels_last (``fp32``: neither)."""
        options = {"half": variant.startswith("fp16"), "channels_last": variant.endswith(CHANNELS_LAST)}
        return {name: value for name, value in options.items() if value}

    def open(self, path, backend, threads=None, pools=None, variant="", images_from=None, calib=None):
        from edge.inference.pools import resolve_pools
        from edge.inference.torch_backend import TorchClassifier
        from edge.io.checkpoints import load_model

        model = resolve_pools(path, load_model(path, pools=None if pools == "auto" else pools), pools, images_from)
        return TorchClassifier(model, backend.device, threads, **self.options(variant))
