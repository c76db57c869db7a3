"""Run any model file edge reads (`edge.io.checkpoints.ModelFile`) with torch, with the same call
interface as `OnnxClassifier`."""

from __future__ import annotations

import numpy as np
import torch


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when present; ``cuda`` without a GPU is a clear error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError("torch sees no CUDA GPU here: use --device cpu (or a CUDA build of torch on a GPU machine)")
    return torch.device(name)


class TorchClassifier:
    """A model file's module (``checkpoint``: any `edge.io.checkpoints.ModelFile`), in eval mode, fp32
    (or fp16 on CUDA with ``half``)."""

    def __init__(self, checkpoint, device: str = "cpu", threads: int | None = None,
                 half: bool = False, channels_last: bool = False):
        if threads:
            torch.set_num_threads(threads)
        self.card = checkpoint.card
        self.device = resolve_device(device)
        self.dtype = torch.float16 if half else torch.float32
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.model = checkpoint.build().to(self.device, self.dtype)
        self.model = self.model.to(memory_format=self.memory_format)
        self.provider = f"torch-{self.device.type}"

    @torch.inference_mode()
    def __call__(self, images: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(images)).to(self.device, self.dtype)
        return self.model(x.contiguous(memory_format=self.memory_format)).float().cpu().numpy()
