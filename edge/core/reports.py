"""What a command hands back to whoever called it (the CLI or the Python API): `Report`, the lines a
person reads, the one JSON document ``--json`` prints, the exit code, and the Python value the API returns."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Report:
    """A finished command's result. ``lines``: its human-readable summary (on stderr when ``stderr``, e.g.
    `edge predict`, whose stdout stays free); ``document``: the same as JSON-ready data; ``exit_code``: 0, or
    1 when the command ran but something in it failed (a bench row); ``value``: what the API returns."""

    lines: tuple[str, ...]
    document: dict
    exit_code: int = 0
    stderr: bool = False
    value: object = field(default=None, compare=False)
