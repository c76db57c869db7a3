"""bf16-mixed compute for the ``ov-cpu`` backend: bf16 except the convolutions whose bf16 rounding moves the
answers most, measured on calibration photos; those stay float32.

A convolution's sensitivity is the KL divergence of the logits from fp32 on the calibration photos when it alone
is kept float32 and everything else runs in bf16 (lower: keeping it helps more). The most sensitive are kept, in
that order, while the divergence is above `KL_FRACTION` of all-bf16's and each one still lowers it (at most
`MAX_FP32_LAYERS`; none where bf16 already gives fp32's logits). On the Food-11 student this keeps one layer, the
first depthwise convolution (`bench/results/cpu_compute_1thread_summary.md` has its speed and agreement).

OpenVINO's Python API cannot set the CPU plugin's per-layer precision attribute (``DisablePrecisionConversion``,
which keeps a layer out of the bf16 inference precision), so the model goes through its IR: saved, the attribute
written into the chosen layers' ``rt_info``, read back. No torch.
"""

from __future__ import annotations

import tempfile
import xml.etree.ElementTree as ElementTree
from pathlib import Path
from typing import Callable

import numpy as np

from edge.core.backends import ProviderUnavailable

KL_FRACTION = 0.5  # keep layers float32 until the divergence from fp32 is at most this share of all-bf16's
MAX_FP32_LAYERS = 3  # at most this many convolutions stay float32 (each costs speed)
SENSITIVITY_IMAGES = 32  # calibration photos the divergences are measured on: a compile per convolution dominates
# the search (the Food-11 student: 2.6 s with 32 photos, 4.1 s with 100; the same layer kept with 16, 32 or 100)
LAYER_TYPES = ("Convolution", "GroupConvolution")
KEEP_FP32 = {"name": "DisablePrecisionConversion", "version": "0", "value": "dynamic:f16"}  # the CPU plugin's attribute


def convolutions(model) -> list[str]:
    """The names of ``model``'s convolutions (an OpenVINO model), in graph order."""
    return [op.get_friendly_name() for op in model.get_ordered_ops() if op.get_type_name() in LAYER_TYPES]


def keep_fp32(model, names: list[str]):
    """A copy of the OpenVINO ``model`` whose layers ``names`` stay float32 under a bf16 inference precision."""
    import openvino as ov

    if not names:
        return model
    with tempfile.TemporaryDirectory(prefix="edge-bf16-") as tmp:
        xml, weights = Path(tmp) / "model.xml", Path(tmp) / "model.bin"
        ov.save_model(model, xml, compress_to_fp16=False)
        tree = ElementTree.parse(xml)  # OpenVINO's own output, just written
        for layer in tree.getroot().iter("layer"):
            if layer.get("name") in names:
                info = layer.find("rt_info")
                info = ElementTree.SubElement(layer, "rt_info") if info is None else info
                if info.find(f"attribute[@name='{KEEP_FP32['name']}']") is None:  # kept already: once is enough
                    ElementTree.SubElement(info, "attribute", KEEP_FP32)
        text = ElementTree.tostring(tree.getroot())
        try:
            return ov.Core().read_model(text, ov.Tensor(np.fromfile(weights, np.uint8)))
        except RuntimeError as err:  # an OpenVINO that does not know the attribute
            said = [line for line in str(err).splitlines() if line.strip()] or [type(err).__name__]
            raise ProviderUnavailable(f"bf16-mixed needs an OpenVINO that keeps single layers float32 (2026.4 does); "
                                      f"OpenVINO {ov.__version__.split('-')[0]} refused it: {said[-1]}") from None


def logits(compiled, images: np.ndarray) -> np.ndarray:
    """``compiled``'s logits for ``images``, one image per call (as the classifier runs them)."""
    request = compiled.create_infer_request()
    return np.concatenate([request.infer({0: images[i:i + 1]})[0].copy() for i in range(len(images))])


def divergence(reference: np.ndarray, guess: np.ndarray) -> float:
    """Mean KL(softmax(reference) || softmax(guess)) over the images, in float64."""
    def log_softmax(x):
        x = x.astype(np.float64) - x.max(-1, keepdims=True)
        return x - np.log(np.exp(x).sum(-1, keepdims=True))

    target = log_softmax(reference)
    return float((np.exp(target) * (target - log_softmax(guess))).sum(-1).mean())


def sensitive_layers(model, compile_bf16: Callable, images: np.ndarray, reference: np.ndarray) -> list[str]:
    """The convolutions of ``model`` to keep float32 (module docstring), from ``compile_bf16(model)``'s logits on
    ``images`` (`SENSITIVITY_IMAGES` of them, say) against fp32's ``reference``."""
    def kl(names: list[str]) -> float:
        return divergence(reference, logits(compile_bf16(keep_fp32(model, names)), images))

    everything = kl([])
    alone = {name: kl([name]) for name in convolutions(model)}
    kept, current = [], everything
    for name in sorted(alone, key=alone.get)[:MAX_FP32_LAYERS]:
        trial = alone[name] if not kept else kl(kept + [name])
        if current <= KL_FRACTION * everything or trial >= current:
            break
        kept, current = kept + [name], trial
    return kept
