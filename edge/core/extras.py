"""The optional parts of the install and the one line that names a missing one.

``pip install edge-compress`` is the runtime an edge device needs: `edge predict`, `edge info` and
`edge bench` on ONNX files (ONNX Runtime, numpy, Pillow; neither torch nor onnx). The ``torch`` extra adds what
export, train, distill, slim, compress, attack and every checkpoint need; the ``plot`` extra (in
``torch`` too) adds matplotlib for the PNGs; the ``openvino`` extra adds OpenVINO (the ``ov-cpu`` backend). Nothing
here imports torch, matplotlib or openvino.
"""

from __future__ import annotations

import importlib.util
import sys

from edge.core.errors import EdgeError

DISTRIBUTION = "edge-compress"
EXTRAS = {"torch": ("torch", "torchvision", "onnx"), "plot": ("matplotlib",), "openvino": ("openvino",)}


class MissingExtra(EdgeError, ImportError):
    """A command or option that needs an extra this install lacks (the message says what to install)."""


def install_line(extra: str) -> str:
    return f'pip install "{DISTRIBUTION}[{extra}]"'


def _importable(module: str) -> bool:
    if module in sys.modules:  # None there: imports of it are blocked
        return sys.modules[module] is not None
    return importlib.util.find_spec(module) is not None


def absent(extra: str) -> str | None:
    """Why ``extra`` (a key of `EXTRAS`) cannot be used here, with the install line; None when it can."""
    missing = [m for m in EXTRAS[extra] if not _importable(m)]
    return f"{', '.join(missing)} not installed: {install_line(extra)}" if missing else None


def needs(extra: str, what: str = "this command") -> MissingExtra:
    """The error saying that ``what`` needs ``extra``, with the install line."""
    return MissingExtra(f"{what} needs the {extra} extra: {install_line(extra)}")


def require(extra: str, what: str = "this command") -> None:
    """`MissingExtra` naming ``what`` and the install line when ``extra`` is absent."""
    if absent(extra):
        raise needs(extra, what)


def missing_extra(err: ImportError, what: str = "this command") -> MissingExtra | None:
    """The `MissingExtra` for a failed import of a module of an extra this install lacks (torch,
    matplotlib, ...); None for any other import error (a broken install or a bug, not an install choice)."""
    root = (err.name or "").partition(".")[0]
    extra = next((name for name, modules in EXTRAS.items() if root in modules), None)
    return needs(extra, what) if extra and absent(extra) else None
