"""The ``ov-cpu`` backend: an edge ONNX file run by OpenVINO on the CPU, in fp32, bf16 (OpenVINO's inference
precision hint, where the CPU has AVX512_BF16 or AMX) or int8 (the QDQ model of `edge.inference.int8`,
which OpenVINO executes in integers; its float layers stay fp32). No torch.

`OpenVinoClassifier` first opens the file as `edge.inference.runtime.OnnxClassifier` does (the seal, the
weight checks, the metadata card, a blank image through ONNX Runtime), then compiles the same plain ONNX
bytes (an entropy-coded file's expansion) with OpenVINO and lets the ONNX Runtime session go: the same
file, the same preprocessing, the same micro-batches. OpenVINO is the optional ``openvino`` extra.
"""

from __future__ import annotations

import numpy as np

from edge.inference.runtime import OnnxClassifier

PRECISION_HINTS = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}  # int8: the QDQ graph's own; other layers f32


class OpenVinoClassifier(OnnxClassifier):
    """An edge ONNX classifier compiled by OpenVINO for the CPU."""

    def __init__(self, path, provider: str = "ov-cpu", threads: int | None = None, compute: str = "fp32",
                 calib=None):
        import openvino  # noqa: F401 (a missing extra fails here, before any work)

        self.request = None
        super().__init__(path, "ort-cpu", 1)
        self.threads = threads
        self.backend = _ov_backend(provider)
        self.use_compute(compute, calib)

    def _engine(self, compute: str, calib) -> None:
        import openvino as ov

        source = self.int8_bytes(calib) if compute == "int8" else self.plain_bytes()
        core = ov.Core()
        config = {"INFERENCE_PRECISION_HINT": PRECISION_HINTS[compute], "PERFORMANCE_HINT": "LATENCY"}
        if self.threads:
            config["INFERENCE_NUM_THREADS"] = self.threads
        compiled = core.compile_model(core.read_model(source, b""), "CPU", config)
        self.request, self.session = compiled.create_infer_request(), None
        self.version = ov.__version__.split("-")[0]

    @property
    def provider(self) -> str:
        return f"OpenVINO {self.version} CPU {self.compute}"

    def run(self, images: np.ndarray) -> np.ndarray:
        if self.request is None:  # the ONNX Runtime session that checked the file
            return super().run(images)
        return self.request.infer({0: images})[0].copy()


def _ov_backend(provider: str):
    from edge.core.backends import OPENVINO, check_available, resolve

    return check_available(resolve(provider, OPENVINO))
