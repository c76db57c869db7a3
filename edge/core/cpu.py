"""What the CPU this process runs on is: its model name and instruction-set flags, from /proc/cpuinfo
(Linux; elsewhere nothing is known and no flag is claimed). `edge.core.backends` asks it whether a
compute precision (bf16, int8) has the instructions that make it fast; `edge.bench.machine` reports it."""

from __future__ import annotations

import os
import platform
from functools import lru_cache
from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")


def first_processor(text: str) -> dict[str, str]:
    """The first processor's ``key: value`` lines of a /proc/cpuinfo text."""
    fields: dict[str, str] = {}
    for line in text.split("\n\n")[0].splitlines():
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    return fields


@lru_cache(maxsize=1)
def fields() -> dict[str, str]:
    """This machine's first processor's /proc/cpuinfo fields ({} where there is none)."""
    try:
        return first_processor(CPUINFO.read_text())
    except OSError:
        return {}


def flags() -> frozenset[str]:
    return frozenset(fields().get("flags", "").split())


def has_any(wanted: tuple[str, ...]) -> bool:
    return bool(flags() & set(wanted))


def model_name() -> str:
    return fields().get("model name") or platform.processor() or platform.machine()


def cpu_cores() -> int:
    """Cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
