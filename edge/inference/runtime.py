"""Run an ONNX file we exported with ONNX Runtime: providers, threads, metadata. No torch.

`OnnxClassifier` opens the file on an ONNX Runtime backend of `edge.core.backends` (expanding an
entropy-coded one first, `edge.codec.entropy`), reads its `ModelCard` from the metadata (so it knows its
own preprocessing and classes) and runs batches of preprocessed images to logits, in float32 or (``compute
="int8"``, `edge.inference.int8`) in 8-bit integers calibrated on photos. Other engines of the same bytes
(`edge.inference.openvino_backend`) subclass it: they share its checks, its card and its batching.

A large batch runs as micro-batches of `micro_batch` images: a StudentNet's first activation is 4 MiB per
256x256 image, so a batch of 32 streams 128 MiB through memory between layers where one image stays in cache.
Measured on 1 thread of an AMD EPYC (2 MiB L2 per core, 32 MiB L3; `studies/micro_batch.py`, images per CPU
second, a batch of 32 as micro-batches of 1/2/4/8/32 against b=1): ONNX Runtime fp32 827/815/681/625/521
against 803, int8 1104/1095/941/821/687 against 1121, OpenVINO bf16 838/942/888/877/778 against 799; four or
more images lose 15-35%. One against two, paired per repeat (8 repeats) with b=1 on one photo: ONNX Runtime
fp32 0.993/0.965, int8 0.980/0.981, OpenVINO fp32 0.976/0.850, bf16 0.997/1.011, int8 0.977/0.955, where b=1 on
the photos in turn scores 1.001/0.985/0.983/1.005/0.966: one image per call is b=1's own speed (one image's 4 MiB
already exceeds L2; halving the calls gains nothing measurable), so `ACTIVATION_BUDGET` holds one such image.

With more than one core a batch's micro-batches can run at once on single-threaded lanes (`spread`): no core
waits for another inside an operator, and none spins waiting (ONNX Runtime's two-thread session spent 2.3x
the CPU time per image of a single-threaded one on a loaded machine). But on a quieter machine the session's
own threads were faster: lanes lost 6-15% per image (`edge bench`, 2 cores, load 2; likely because two threads
split one image's 4 MiB activation over two 2 MiB L2 caches, where each lane holds a whole one). So the first
spread batch runs half its micro-batches on the lanes and half one at a time on the session's threads, and the
faster way per image runs the batches after it. One image always keeps the session's threads.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from edge.core.backends import ONNXRUNTIME, Backend, ProviderUnavailable, check_available, compute_missing, resolve
from edge.codec.entropy import EntropyError, session_source
from edge.core.errors import EdgeError
from edge.core.files import InputError, shipped_damage
from edge.codec.checksum import check_seal
from edge.codec.metadata import CARD_KEY, MetadataError, read_metadata, read_net
from edge.codec.onnx_scan import (MAX_OUTPUT_ELEMENTS, metadata_props, nonfinite_tensors, oversized_outputs,
                                  scan_file)
from edge.core.config import ModelCard
from edge.inference.ort_memory import is_out_of_memory, load_session, run_budget, use_capped_arena


class ModelError(EdgeError, ValueError):
    """An ONNX file that cannot be used as an edge classifier."""


CALIBRATION_IMAGES = 100  # the first photos of --calib a compute precision is fitted on (int8 ranges, bf16-mixed)
ACTIVATION_BUDGET = 4 * 2 ** 20  # bytes of first-layer activations a micro-batch may hold (measured: module docstring)


def micro_batch(config) -> int:
    """Images per engine call: as many as keep the first (largest) activation within `ACTIVATION_BUDGET`."""
    per_image = config.widths[0] * config.input_size ** 2 * 4
    return max(1, ACTIVATION_BUDGET // per_image)


def resolve_provider(name: str) -> Backend:
    """A user's backend name (``cpu``, ``cuda``, ``ort-cuda``, ``tensorrt``, ...; `edge.core.backends`) -> the ONNX
    Runtime backend, checked to run here (`ProviderUnavailable`, with what to install, otherwise)."""
    return check_available(resolve(name, ONNXRUNTIME))


def session_options(threads: int | None = None, optimized_path: str | None = None):
    """Full graph optimisation (constant folding turns stored integer weights back into floats)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 4  # fatal only: a failing node is reported once, as our one-line ModelError
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    if optimized_path:
        options.optimized_model_filepath = optimized_path
    return options


class OnnxClassifier:
    """An exported StudentNet (or any edge ONNX classifier) ready to run."""

    memory_cap = 0  # bytes the CPU arena may hold (`edge.inference.ort_memory`); 0: a GPU provider's own
    lanes = 1  # micro-batches of one call that run at once, each from a thread of its own (`spread`)
    _lane_session = None  # the single-threaded session the lanes share (`_lane`)
    lanes_faster: bool | None = None  # whether lanes beat the session's threads per image (None: not measured yet)

    def __init__(self, path: str | os.PathLike, provider: str = "cpu", threads: int | None = None,
                 compute: str = "fp32", calib=None):
        """``compute``: a precision of `edge.core.backends.COMPUTES` this backend runs (int8 is calibrated on
        ``calib(card, count)``: photos the model will see, as its input); `ProviderUnavailable` says why one
        cannot run here."""
        self.path, self.threads, self.compute = Path(path), threads, "fp32"
        if not self.path.is_file():
            raise ModelError(f"{self.path}: " + ("not a regular file (a folder, device, pipe or socket)"
                                                 if self.path.exists() else "no such model file"))
        self.backend = backend = resolve_provider(provider)
        wanted = backend.provider
        try:
            sealed = check_seal(self.path)  # before anything else reads it: a damaged file goes no further
            source = session_source(self.path)
        except (EntropyError, InputError, MetadataError) as err:  # names the file (and the stream)
            raise ModelError(str(err)) from None
        except OSError:
            sealed, source = False, str(self.path)  # ONNX Runtime names what is wrong with the file
        damage = None if sealed else shipped_damage(self.path)
        if damage:
            raise ModelError(f"{self.path}: {damage}")
        self._check_stored_weights(source)
        self.source = self.engine_source = source
        self.session = self._open_session(source)
        if wanted not in self.session.get_providers():
            raise ProviderUnavailable(f"{wanted} did not start for {self.path} (session runs on "
                                      f"{self.session.get_providers()}): {backend.install_hint}")
        try:
            props = self.session.get_modelmeta().custom_metadata_map
            self.card, self.quant = read_metadata(props, str(self.path), sealed)
            self.micro_batch = micro_batch(self.card.config)
            self.net = read_net(props, str(self.path))  # None on a StudentNet; a baseline's arch and size
            self.input_name = self.session.get_inputs()[0].name
            self._check_io()
            self._check_finite()
        except MetadataError as err:
            raise ModelError(str(err)) from None
        except (UnicodeDecodeError, IndexError) as err:  # damaged names or a graph without inputs/outputs
            raise ModelError(f"{self.path}: damaged ONNX model ({type(err).__name__}: {err})") from None
        if compute != "fp32":
            self.use_compute(compute, calib)

    def _open_session(self, source: str | bytes, threads: int | None = None):
        """ONNX Runtime's session of ``source`` on this backend (on ``threads``, default the classifier's), its CPU
        memory capped (`edge.inference.ort_memory`)."""
        options, model_bytes = session_options(threads or self.threads), self._model_bytes(source)
        if self.backend.provider == "CPUExecutionProvider":
            self.memory_cap = use_capped_arena(options, run_budget(model_bytes, self._image_bytes(source)))
        try:
            return load_session(source, options, [self.backend.provider], model_bytes)
        except Exception as err:  # onnxruntime's Fail/InvalidGraph/InvalidProtobuf/... types
            raise ModelError(f"{self.path}: not a loadable ONNX model ({str(err).splitlines()[0]})") from None

    def plain_bytes(self) -> bytes:
        """The plain ONNX bytes the engine runs (an entropy-coded file's expansion, else the file's own)."""
        return self.source if isinstance(self.source, bytes) else self.path.read_bytes()

    def use_compute(self, compute: str, calib=None) -> None:
        """Run in ``compute`` from now on (`ProviderUnavailable` when this backend or CPU cannot), checked
        again on a blank image."""
        reason = compute_missing(self.backend, compute)
        if reason:
            raise ProviderUnavailable(reason)
        self._engine(compute, calib)
        self.compute = compute
        self._check_finite()

    def calibration_images(self, calib, compute: str, count: int = CALIBRATION_IMAGES) -> np.ndarray:
        """The first ``count`` photos of ``calib(card, count)``, which ``compute`` is fitted on."""
        if calib is None:
            raise ProviderUnavailable(f"{compute} compute is calibrated on photos the model will see: give --calib DIR")
        return calib(self.card, count)

    def int8_bytes(self, calib) -> bytes:
        """The QDQ model of this file, calibrated on ``calib(card, count)``'s photos (`edge.inference.int8`)."""
        from edge.inference import int8

        if int8.missing():
            raise ProviderUnavailable(int8.missing())
        return int8.quantize(self.plain_bytes(), self.calibration_images(calib, "int8"))

    def _engine(self, compute: str, calib) -> None:
        """ONNX Runtime's session for ``compute`` (fp32 is the one opened first)."""
        self.engine_source = self.int8_bytes(calib) if compute == "int8" else self.source
        self.session, self._lane_session, self.lanes_faster = self._open_session(self.engine_source), None, None

    def _check_io(self) -> None:
        config, preprocess = self.card.config, self.card.preprocess
        if preprocess.crop != config.input_size or len(preprocess.color) != config.in_channels:
            raise ModelError(f"{self.path}: its metadata disagrees with itself: preprocessing makes "
                             f"{len(preprocess.color)}x{preprocess.crop}x{preprocess.crop} inputs, the network takes "
                             f"{config.in_channels}x{config.input_size}x{config.input_size}")
        shape = self.session.get_inputs()[0].shape
        expected = [config.in_channels, config.input_size, config.input_size]
        if len(shape) != 4 or list(shape[1:]) != expected:
            raise ModelError(f"{self.path}: input shape {shape} does not match its metadata (N, {expected})")
        out = self.session.get_outputs()[0].shape
        if len(out) != 2 or out[1] != config.num_classes:
            raise ModelError(f"{self.path}: output shape {out} does not match {config.num_classes} classes")

    def _model_bytes(self, source: str | bytes) -> int:
        return len(source) if isinstance(source, bytes) else self.path.stat().st_size

    def _image_bytes(self, source: str | bytes) -> int:
        """Bytes of one float32 input image, as the model card says (0 when it cannot be read yet: the
        checks after loading name what is wrong)."""
        try:
            props = metadata_props(source) if isinstance(source, bytes) else scan_file(self.path, metadata_props)
            config = ModelCard.from_json(props[CARD_KEY]).config
            return 4 * config.in_channels * config.input_size ** 2
        except (OSError, KeyError, ValueError, TypeError, AttributeError, EdgeError):
            return 0

    def _check_stored_weights(self, source: str | bytes) -> None:
        """Non-finite weights are an error even where the logits would hide them (a clipped bias), and so is a
        constant shape that would make ONNX Runtime build a huge tensor when it folds constants at load."""
        try:
            bad = nonfinite_tensors(source) if isinstance(source, bytes) else scan_file(self.path, nonfinite_tensors)
        except OSError:
            return  # ONNX Runtime names what is wrong with the file
        if bad:
            raise ModelError(f"{self.path}: non-finite weights (NaN or inf) in {', '.join(bad[:3])}"
                             f"{f' and {len(bad) - 3} more' if len(bad) > 3 else ''}; a damaged model, refused")
        huge = oversized_outputs(source) if isinstance(source, bytes) else scan_file(self.path, oversized_outputs)
        if huge:
            raise ModelError(f"{self.path}: refused: {', '.join(huge[:3])} would build a tensor of more than "
                             f"{MAX_OUTPUT_ELEMENTS:,} elements when the model is loaded (no classifier edge writes "
                             f"does)")

    def _check_finite(self) -> None:
        """Non-finite weights are an error, not a prediction: a blank image through the graph (its
        constant-folded weights included) must give finite logits."""
        config = self.card.config
        blank = np.zeros((1, config.in_channels, config.input_size, config.input_size), np.float32)
        logits = self(blank)
        if not np.isfinite(logits).all():
            raise ModelError(f"{self.path}: its weights hold NaN or inf (a blank image gives non-finite logits); "
                             "a damaged model, refused")

    @property
    def provider(self) -> str:
        """ONNX Runtime's provider, and the compute precision unless fp32."""
        name = self.session.get_providers()[0]
        return name if self.compute == "fp32" else f"{name} {self.compute}"

    def spread(self, lanes: int) -> None:
        """Let a batch of several micro-batches run ``lanes`` of them at once, each single-threaded on a core of its
        own (the engine releases the GIL), where that is measured faster per image than one at a time on the
        session's own threads (on the first such batch: the module docstring)."""
        self.lanes, self.lanes_faster = max(1, int(lanes)), None

    def _lane(self):
        """What runs one micro-batch of a spread call: a single-threaded session (this one, or one opened on first
        use), so no lane's core waits for another inside an operator nor spins on a core another lane needs."""
        if self.threads == 1 or self.backend.provider != "CPUExecutionProvider":
            return self.run
        if self._lane_session is None:
            self._lane_session = self._open_session(self.engine_source, threads=1)
        return lambda images: self.run(images, self._lane_session)

    def run(self, images: np.ndarray, session=None) -> np.ndarray:
        """One engine call (on ``session``, default the classifier's): contiguous float32 images -> logits."""
        try:
            return (session or self.session).run(None, {self.input_name: images})[0]
        except Exception as err:  # onnxruntime's RuntimeException/Fail/...: a graph that cannot run
            if is_out_of_memory(err):
                cap = f"the {self.memory_cap / 2**20:,.0f} MiB edge allows" if self.memory_cap else "the device holds"
                raise ModelError(f"{self.path}: refused: it asks for more memory than {cap} to run {len(images)} "
                                 "image(s) (a graph that builds huge tensors; no classifier edge writes does)") from None
            raise ModelError(f"{self.path}: fails on {'a blank image' if not images.any() else 'these images'} "
                             f"({str(err).splitlines()[0]})") from None

    def __call__(self, images: np.ndarray) -> np.ndarray:
        """float32 (N, C, H, W) preprocessed images -> (N, classes) logits, `micro_batch` images per engine call,
        up to `lanes` calls at once."""
        images = np.ascontiguousarray(images, dtype=np.float32)
        step = self.micro_batch
        if len(images) <= step:
            return self.run(images)
        parts = [images[i:i + step] for i in range(0, len(images), step)]
        if self.lanes == 1 or self.lanes_faster is False or len(parts) < 2 * self.lanes:
            return np.concatenate([self.run(part) for part in parts])
        lane = self._lane()  # made before anything is timed
        return np.concatenate(self._on_lanes(lane, parts) if self.lanes_faster else self._race(lane, parts))

    def _race(self, lane, parts: list[np.ndarray]) -> list[np.ndarray]:
        """The first half of ``parts`` on the lanes, the rest one at a time on the session's own threads; the faster
        way per image is `lanes_faster` from now on."""
        half = len(parts) // 2
        start = time.perf_counter()
        spread = self._on_lanes(lane, parts[:half])
        middle = time.perf_counter()
        one_at_a_time = [self.run(part) for part in parts[half:]]
        self.lanes_faster = (middle - start) / half <= (time.perf_counter() - middle) / (len(parts) - half)
        return spread + one_at_a_time

    def _on_lanes(self, lane, parts: list[np.ndarray]) -> list[np.ndarray]:
        with ThreadPoolExecutor(min(self.lanes, len(parts)), thread_name_prefix="lane") as pool:
            return list(pool.map(lane, parts))
