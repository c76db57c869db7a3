"""The implementations of the weight formats, one module per family of `edge.core.weight_formats.FORMATS`
(`floats`: fp32 and fp16, `uint`, `kmeans`, `int8`; `coded`: what uintN and kmeansK share), each registered
by family in `edge.export.formats.registry`. Importing this package registers them all. A new format: a
row in the table and a module here (imported below) with a ``@register_format`` handler."""

from edge.export.formats import floats, int8, kmeans, uint  # noqa: F401  (each registers its handler)
from edge.export.formats.registry import FormatHandler, families, format_handler, register_format

__all__ = ["FormatHandler", "families", "format_handler", "register_format"]
