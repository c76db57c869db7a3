"""The ``ov-cpu`` backend: an edge ONNX file run by OpenVINO on the CPU, in fp32, bf16 (OpenVINO's inference
precision hint, where the CPU has AVX512_BF16 or AMX), bf16-mixed (bf16 but for the convolutions measured most
sensitive on the calibration photos: `edge.inference.bf16_mixed`) or int8 (the QDQ model of `edge.inference.int8`,
which OpenVINO executes in integers; its float layers stay fp32). No torch.

`OpenVinoClassifier` first opens the file as `edge.inference.runtime.OnnxClassifier` does (the seal, the
weight checks, the metadata card, a blank image through ONNX Runtime), then compiles the same plain ONNX
bytes (an entropy-coded file's expansion) with OpenVINO and lets the ONNX Runtime session go: the same
file, the same preprocessing, the same micro-batches (spread over cores as single-threaded compilations, one
per lane). OpenVINO is the optional ``openvino`` extra.
"""

from __future__ import annotations

import queue

import numpy as np

from edge.inference.runtime import OnnxClassifier

PRECISION_HINTS = {"fp32": "f32", "bf16": "bf16", "bf16-mixed": "bf16", "int8": "f32"}  # int8: the QDQ graph's own
LANE_CONFIG = {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1, "INFERENCE_NUM_THREADS": 1, "ENABLE_CPU_PINNING": False}


class OpenVinoClassifier(OnnxClassifier):
    """An edge ONNX classifier compiled by OpenVINO for the CPU."""

    convolutions = 0  # the model's convolutions (counted for bf16-mixed, which keeps `fp32_layers` of them float32)

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

        self.engine_source = self.int8_bytes(calib) if compute == "int8" else self.plain_bytes()
        self.precision, self.fp32_layers = PRECISION_HINTS[compute], []
        config = {"PERFORMANCE_HINT": "LATENCY"}
        if self.threads:
            config["INFERENCE_NUM_THREADS"] = self.threads
        if compute == "bf16-mixed":
            self.fp32_layers = self._sensitive_layers(calib, config)
        self.request, self.session = self._compile(config).create_infer_request(), None
        self._lane_requests, self.lanes_faster = None, None
        self.version = ov.__version__.split("-")[0]

    def _sensitive_layers(self, calib, config: dict) -> list[str]:
        """The convolutions bf16-mixed keeps float32, measured on ``calib``'s first photos against OpenVINO fp32."""
        from edge.inference import bf16_mixed

        model = self._model()
        images = self.calibration_images(calib, "bf16-mixed", bf16_mixed.SENSITIVITY_IMAGES)
        reference = bf16_mixed.logits(self._compile(config, model, "f32"), images)
        self.convolutions = len(bf16_mixed.convolutions(model))
        return bf16_mixed.sensitive_layers(model, lambda marked: self._compile(config, marked, "bf16"), images,
                                           reference)

    def _model(self):
        """The engine's OpenVINO model, its float32 layers (bf16-mixed) marked."""
        import openvino as ov

        from edge.inference.bf16_mixed import keep_fp32

        return keep_fp32(ov.Core().read_model(self.engine_source, b""), self.fp32_layers)

    def _compile(self, config: dict, model=None, precision: str | None = None):
        """``model`` (default the engine's) compiled for the CPU with ``config`` and the inference ``precision``
        (default the compute precision's)."""
        import openvino as ov

        hint = {"INFERENCE_PRECISION_HINT": precision or self.precision}
        return ov.Core().compile_model(model or self._model(), "CPU", {**hint, **config})

    def spread(self, lanes: int) -> None:
        super().spread(lanes)
        self._lane_requests = None

    def _lane(self):
        """A spread call's micro-batches go to ``lanes`` single-threaded compilations of the model (made on first
        use), one infer request each. Not one compilation with a stream per lane: OpenVINO 2026.4's CPU plugin
        gives wrong logits with NUM_STREAMS > 1 on a file that decodes its weights in the graph (the shipped
        models/food11_student_compressed.onnx: off by hundreds; its uint8 sibling is right; `tests/test_compute.py`
        checks the lanes' answers). Unpinned: pinned, every single-threaded compilation takes the same core
        (measured: two lanes ran at 1.0 cores' CPU time and half the images/s of unpinned ones, 1.7-1.8)."""
        if self._lane_requests is None:
            self._lane_requests = queue.SimpleQueue()
            for _ in range(self.lanes):
                single = self._compile(LANE_CONFIG)
                self._lane_requests.put(single.create_infer_request())
        return self._run_on_a_free_request

    def _run_on_a_free_request(self, images: np.ndarray) -> np.ndarray:
        request = self._lane_requests.get()
        try:
            return request.infer({0: images}, share_inputs=True)[0].copy()
        finally:
            self._lane_requests.put(request)

    @property
    def provider(self) -> str:
        kept = f" ({len(self.fp32_layers)} of {self.convolutions} convolutions fp32)" if self.compute == "bf16-mixed" else ""
        return f"OpenVINO {self.version} CPU {self.compute}{kept}"

    def run(self, images: np.ndarray) -> np.ndarray:
        if self.request is None:  # the ONNX Runtime session that checked the file
            return super().run(images)
        return self.request.infer({0: images}, share_inputs=True)[0].copy()  # read in place: bf16 6-10% faster


def _ov_backend(provider: str):
    from edge.core.backends import OPENVINO, check_available, resolve

    return check_available(resolve(provider, OPENVINO))
