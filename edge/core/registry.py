"""The one registry shape behind edge's tables: a row's name leads to its implementation.

Architectures (`edge.models.registry`), weight-format families (`edge.export.formats`) and backend kinds
(`edge.inference.openers`) each keep one `Registry`, filled by ``register`` decorators where the
implementations live; a name nobody registered is a `KeyError` saying where to register it.
"""

from __future__ import annotations


class Registry(dict):
    """``{name: implementation}`` in registration order. ``what`` names a row kind in messages, ``where`` the
    module that registers them; ``tag``: the attribute a registered handler gets its own name under."""

    def __init__(self, what: str, where: str, tag: str | None = None):
        super().__init__()
        self.what, self.where, self.tag = what, where, tag

    def register(self, *names: str):
        """Decorator: register the function, or one instance of the class, under each of ``names``."""
        def add(implementation):
            item = implementation() if isinstance(implementation, type) else implementation
            for name in names:
                assert name not in self, f"{self.what} {name!r} registered twice"
                if self.tag:
                    setattr(item, self.tag, name)
                self[name] = item
            return implementation
        return add

    def __missing__(self, name: str):
        raise KeyError(f"{self.what} {name!r} has no handler: register one in {self.where}")
