"""The backends edge runs models on, in one table: `edge predict --provider`, `edge bench --provider`,
`edge.inference.runtime` (ONNX Runtime providers) and `edge.bench` read it from here.

A backend is a library (``kind``: ``onnxruntime`` and ``openvino`` run .onnx files, ``torch`` runs checkpoints;
a row of `LIBRARIES` each, whose handler in `edge.inference.openers` opens models) on a device, computing in
one of the precisions it lists (`COMPUTES`: fp32, and bf16 or int8 where the CPU has the instructions). Users name it by
its canonical name (``ort-cuda``) or an alias (``cuda``). The plain device names ``cpu`` and ``cuda``
follow the model: ONNX Runtime's for an .onnx file (and in `edge bench`), torch's for a checkpoint
(`resolve` with ``kind``). Nothing here imports onnxruntime or torch until availability is asked
(`check_available`); OpenVINO is an optional extra (``pip install "edge-compress[openvino]"``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from edge.core import cpu, extras
from edge.core.errors import EdgeError

ONNXRUNTIME, OPENVINO, TORCH = "onnxruntime", "openvino", "torch"
ONNX_FILES = ".onnx files"  # what the ONNX libraries run (`Library.runs`)
_GPU_HINT = "install onnxruntime-gpu (pip install onnxruntime-gpu, in place of onnxruntime) and make sure a CUDA GPU " \
            "and its driver are present"


@dataclass(frozen=True)
class Backend:
    name: str  # canonical: what bench rows and reports say
    kind: str  # ONNXRUNTIME | TORCH
    device: str  # cpu | cuda
    description: str
    provider: str | None = None  # ONNX Runtime's execution provider (kind onnxruntime)
    aliases: tuple[str, ...] = ()
    install_hint: str = ""  # what to do when it is not available
    computes: tuple[str, ...] = ("fp32",)  # the compute precisions it runs (`COMPUTES`)

    @property
    def is_onnx(self) -> bool:
        """Whether it runs .onnx files (ONNX Runtime, OpenVINO), not checkpoints."""
        return self.library.runs == ONNX_FILES

    @property
    def library(self) -> "Library":
        """Its kind's row of `LIBRARIES`."""
        return LIBRARIES[self.kind]

    @property
    def spellings(self) -> tuple[str, ...]:
        return (self.name, *self.aliases)


BACKENDS = (
    Backend("ort-cpu", ONNXRUNTIME, "cpu", "ONNX Runtime on the CPU", "CPUExecutionProvider", ("cpu",),
            computes=("fp32", "int8")),
    Backend("ort-cuda", ONNXRUNTIME, "cuda", "ONNX Runtime on an NVIDIA GPU", "CUDAExecutionProvider", ("cuda",),
            _GPU_HINT),
    Backend("ort-tensorrt", ONNXRUNTIME, "cuda", "ONNX Runtime's TensorRT provider on an NVIDIA GPU",
            "TensorrtExecutionProvider", ("tensorrt",),
            "install onnxruntime-gpu with TensorRT libraries on a machine with an NVIDIA GPU"),
    Backend("ov-cpu", OPENVINO, "cpu", "OpenVINO on the CPU (the openvino extra)", aliases=("openvino",),
            install_hint=extras.install_line("openvino"), computes=("fp32", "bf16", "bf16-mixed", "int8")),
    Backend("torch-cpu", TORCH, "cpu", "torch (eager) on the CPU"),
    Backend("torch-cuda", TORCH, "cuda", "torch (eager) on an NVIDIA GPU",
            install_hint="use a CUDA build of torch on a GPU machine"),
)
NAMES = tuple(b.name for b in BACKENDS)
SPELLINGS = tuple(sorted(s for b in BACKENDS for s in b.spellings))


def _onnxruntime_missing(backend: Backend) -> str | None:
    import onnxruntime as ort

    available = ort.get_available_providers()
    if backend.provider not in available:
        return (f"{backend.name} ({backend.provider}) is not available in this onnxruntime build (it has "
                f"{', '.join(available)}): {backend.install_hint}")
    return None


def _openvino_missing(backend: Backend) -> str | None:
    return extras.absent("openvino")


def _torch_missing(backend: Backend) -> str | None:
    if (reason := extras.absent("torch")):
        return reason
    if backend.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            build = f"a CUDA {torch.version.cuda} build" if torch.version.cuda else "a CPU-only build"
            return f"torch {torch.__version__} ({build}) sees no CUDA GPU: {backend.install_hint}"
    return None


@dataclass(frozen=True)
class Library:
    """A backend kind: the library behind its backends and the model files it runs (opened by the kind's
    handler, `edge.inference.openers`)."""

    kind: str
    runs: str  # the model files it runs
    a_file: str  # what one of them is, for messages
    advice: str  # what else a user can do with such a file
    missing: Callable[[Backend], str | None]  # why a backend of it cannot run here (imports the library)
    extra: str | None = None  # the install extra that brings the library (None: the base install has it)


LIBRARIES = {
    ONNXRUNTIME: Library(ONNXRUNTIME, ONNX_FILES, "an ONNX file, run by ONNX Runtime", "", _onnxruntime_missing),
    OPENVINO: Library(OPENVINO, ONNX_FILES, "an ONNX file, run by OpenVINO", "", _openvino_missing, "openvino"),
    TORCH: Library(TORCH, "checkpoints", "a checkpoint, run by torch", ", or `edge export` it first", _torch_missing,
                   "torch"),
}


class BackendError(EdgeError, ValueError):
    """A backend name edge does not know, or one that does not run this kind of model file."""


class ProviderUnavailable(EdgeError, RuntimeError):
    """The backend is known but cannot run here (no GPU, no onnxruntime-gpu, ...)."""


def resolve(name: str, kind: str | None = None) -> Backend:
    """A user's spelling (any case) -> its `Backend`. With ``kind``, the device names ``cpu``/``cuda`` mean
    that library's backend, and a backend of a library that runs other files is a `BackendError`."""
    key = name.strip().lower()
    if kind is not None:
        for backend in BACKENDS:
            if backend.kind == kind and key == backend.device:
                return backend
    for backend in BACKENDS:
        if key in backend.spellings:
            if kind is not None and backend.library.runs != LIBRARIES[kind].runs:
                raise BackendError(f"{name} is {backend.kind}'s backend, which runs {backend.library.runs}")
            return backend
    raise BackendError(f"unknown backend {name!r}: choose from {', '.join(SPELLINGS)}")


def parse_list(text: str) -> tuple[str, ...]:
    """``"cpu,torch-cpu"`` -> canonical names, in order, each once (aliases mean ONNX Runtime's)."""
    names = [resolve(n).name for n in text.split(",") if n.strip()]
    if not names:
        raise BackendError(f"no backend named in {text!r}: choose from {', '.join(SPELLINGS)}")
    return tuple(dict.fromkeys(names))


def unavailable(backend: Backend) -> str | None:
    """Why ``backend`` cannot run on this machine, with what to install; None when it can."""
    return backend.library.missing(backend)


def check_available(backend: Backend) -> Backend:
    """``backend`` when it runs here; `ProviderUnavailable` saying why and what to install otherwise."""
    reason = unavailable(backend)
    if reason:
        raise ProviderUnavailable(reason)
    return backend


@dataclass(frozen=True)
class Compute:
    """A compute precision: the instructions that make it fast (`edge.core.cpu`) and its peak over fp32's."""

    name: str
    description: str
    cpu_flags: tuple[str, ...] = ()  # any one of them will do (none: every CPU)
    peak_factor: int = 1  # operations per cycle over fp32 FLOPs with the same SIMD width


COMPUTES = {
    "fp32": Compute("fp32", "float32 arithmetic"),
    "bf16": Compute("bf16", "bfloat16 multiplies, float32 sums (OpenVINO's inference precision hint)",
                    ("avx512_bf16", "amx_bf16"), 2),
    "bf16-mixed": Compute("bf16-mixed", "bf16 but for the convolutions whose rounding moves the answers most on "
                          "--calib images, which stay float32", ("avx512_bf16", "amx_bf16"), 2),
    "int8": Compute("int8", "8-bit integer convolutions (QDQ, calibrated on --calib images), sensitive layers fp32",
                    ("avx512_vnni", "avx_vnni", "amx_int8"), 4),
}


class ComputeError(EdgeError, ValueError):
    """A compute precision edge does not know, or one this backend does not run."""


def parse_computes(text: str) -> tuple[str, ...]:
    """``"fp32,bf16"`` -> the names, each once, each a key of `COMPUTES` (`ComputeError` otherwise)."""
    names = tuple(dict.fromkeys(n.strip().lower() for n in text.split(",") if n.strip()))
    unknown = [n for n in names or ("",) if n not in COMPUTES]
    if unknown:
        raise ComputeError(f"unknown compute precision {unknown[0]!r}: choose from {', '.join(COMPUTES)}")
    return names


def compute_missing(backend: Backend, compute: str) -> str | None:
    """Why ``backend`` cannot compute in ``compute`` here (not one of its precisions, or the CPU lacks the
    instructions); None when it can."""
    if compute not in backend.computes:
        return f"{backend.name} computes in {', '.join(backend.computes)}, not {compute}"
    needed = COMPUTES[compute].cpu_flags
    if needed and not cpu.has_any(needed):
        return f"{compute} needs a CPU with {' or '.join(needed)}; this one ({cpu.model_name()}) has none of them"
    return None


def help_text() -> str:
    """One line per backend for ``--help``: name, aliases, what it is."""
    return "; ".join(f"{b.name}{' (' + ', '.join(b.aliases) + ')' if b.aliases else ''}: {b.description}"
                     for b in BACKENDS)
