"""What the benchmark ran on: CPU model, cores, SIMD flags, a rough fp32 peak, GPU, library versions.

The peak is a back-of-the-envelope number (cores x clock x fp32 FLOPs per cycle from the widest
SIMD FMA the CPU advertises), there so a user sees how far from the limit each backend runs;
it ignores turbo, memory bandwidth (which bounds depthwise convs) and shared cores. A bf16 or int8
row's own peak is fp32's times its `edge.core.backends.Compute.peak_factor` (2 bf16 or 4 int8
multiply-adds per fp32 lane: AVX512_BF16's and VNNI's dot products), where the CPU has them.
"""

from __future__ import annotations

import os
import platform
import re
import sys
from importlib import metadata
from pathlib import Path

from edge.core.backends import COMPUTES
from edge.core.cpu import cpu_cores, first_processor

CPUINFO = Path("/proc/cpuinfo")
MAX_FREQ = Path("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq")
LIBRARIES = ("edge-compress", "numpy", "onnx", "onnxruntime", "onnxruntime-gpu", "openvino", "torch", "pillow")


def flops_per_cycle(flags: set[str], vendor: str = "", family: int = 0, model: int = 0) -> tuple[int, str]:
    """fp32 FLOPs per cycle per core (2 FMA pipes x SIMD lanes x 2) and the reason."""
    if "avx512f" in flags:
        return 64, "AVX-512 FMA, 2 pipes x 16 lanes x 2"
    if "avx2" in flags and "fma" in flags:
        if vendor == "AuthenticAMD" and family == 23 and model < 0x30:
            return 16, "AVX2 FMA on Zen 1 (256-bit ops split in two), 2 pipes x 4 lanes x 2"
        return 32, "AVX2 FMA, 2 pipes x 8 lanes x 2"
    if "avx" in flags:
        return 16, "AVX without FMA, 8 lanes x (add + mul)"
    return 8, "SSE, 4 lanes x (add + mul)"


def _frequency_ghz(fields: dict[str, str]) -> float | None:
    """The maximum clock from cpufreq, else the MHz /proc/cpuinfo reports (a VM's nominal clock)."""
    try:
        return int(MAX_FREQ.read_text()) / 1e6
    except (OSError, ValueError):
        pass
    try:
        return float(fields["cpu MHz"]) / 1e3
    except (KeyError, ValueError):
        return None


def cpu_info() -> dict:
    """CPU model, usable cores, SIMD flags and the rough fp32 peak in GFLOP/s (None off Linux)."""
    cores = cpu_cores()
    try:
        fields = first_processor(CPUINFO.read_text())
    except OSError:
        return {"model": platform.processor() or platform.machine(), "cores": cores, "peak_gflops": None,
                "peak_note": "no /proc/cpuinfo: peak unknown"}
    flags = set(fields.get("flags", "").split())
    per_cycle, why = flops_per_cycle(flags, fields.get("vendor_id", ""), _int(fields.get("cpu family")),
                                     _int(fields.get("model")))
    ghz = _frequency_ghz(fields)
    note = f"rough: {cores} cores x {ghz:.2f} GHz x {per_cycle} FLOP/cycle ({why})" if ghz else "clock unknown"
    peak = cores * ghz * per_cycle if ghz else None
    return {"model": fields.get("model name", platform.machine()), "cores": cores, "ghz": ghz,
            "simd": sorted(flags & {"sse4_2", "avx", "avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni",
                                    "amx_bf16", "amx_int8"}),
            "flags": sorted(flags), "peak_gflops": peak, "peak_note": note,
            "peak_gops": {name: peak * compute.peak_factor for name, compute in COMPUTES.items()
                          if peak and (not compute.cpu_flags or flags & set(compute.cpu_flags))}}


def summary() -> dict:
    """A run's record of the CPU its seconds were measured on, in short: model, cores, wide SIMD flags, load."""
    cpu = cpu_info()
    return {"cpu": cpu["model"], "cores": cpu["cores"], "simd": cpu.get("simd", []), **load()}


def _int(value: str | None) -> int:
    return int(value) if value and re.fullmatch(r"\d+", value) else 0


def gpu_info() -> str | None:
    """The CUDA GPU's name as torch sees it (None when torch was not needed and so not loaded)."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_name(0)


def versions() -> dict[str, str]:
    """Installed versions of the libraries that decide the numbers (absent ones left out)."""
    found = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def load() -> dict:
    """What else was running: the 1/5/15-minute load averages and this process's nice value."""
    averages = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {"load_average": [round(a, 2) for a in averages] if averages else None,
            "nice": os.getpriority(os.PRIO_PROCESS, 0) if hasattr(os, "getpriority") else None}


BUSY_PER_CORE = 0.5  # a 1-minute load average above half the cores: other work shares the CPU
NOISY_SPREAD = 1.5  # a row's slowest repeat this many times its fastest: the timings are noise-bound


def steadier(threads: int | None) -> str:
    """What to do about noisy timings with these ``threads``."""
    return "--threads 1 gives steadier numbers" if threads != 1 else "rerun when the machine is idle"


def busy_note(state: dict, cores: int, threads: int | None) -> str | None:
    """One line when ``state`` (`load`) says other work shares the CPU; None when it is quiet enough."""
    averages = state.get("load_average")
    if not averages or averages[0] < BUSY_PER_CORE * cores:
        return None
    return (f"note: the machine is busy (load average {averages[0]:.1f} over the last minute on {cores} cores): "
            f"timings on {_threads(threads)} will be noisy; {steadier(threads)}")


def _threads(threads: int | None) -> str:
    return "all cores" if threads is None else f"{threads} thread{'s' * (threads > 1)}"


def describe() -> dict:
    return {"cpu": cpu_info(), "gpu": gpu_info(), "os": platform.platform(), "versions": versions(), **load()}
