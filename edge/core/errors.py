"""The one base class of every mistake a user can make with edge.

A file, folder or option that cannot be used raises a subclass of `EdgeError` whose message is
one line naming it; the CLI's error boundary (`edge.cli._user_errors`) catches `EdgeError` alone
and prints ``error: <message>`` with exit code 2, never a traceback. Each module keeps its own
subclass (``CheckpointError``, ``DatasetError``, ...), so callers can still tell them apart.
"""

from __future__ import annotations


class EdgeError(Exception):
    """A user's input (file, folder or option) that edge refuses, with the reason in one line."""


class CheckpointError(EdgeError, ValueError):
    """A weights file that cannot be read as a StudentNet, with the reason."""


class MetadataError(EdgeError, ValueError):
    """An ONNX file without (or with damaged) edge metadata."""
