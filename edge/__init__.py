"""edge: compress a Food-11 StudentNet (or another small classifier) and ship it as a small,
self-describing ONNX file.

The Python API (`edge.api`): `load_model` reads any model file edge knows, `export_model` writes an
ONNX file in a weight format of `edge.core.weight_formats`, `predict_images` answers a folder of images
on a backend of `edge.core.backends`, `benchmark` measures models x backends x formats. ``import edge`` is cheap (no
torch, no onnxruntime); predicting with an ONNX file never imports torch. The `edge` command line
(`edge.cli`) does the same with options. Every refusal of a user's input is an `EdgeError`.

    >>> import edge
    >>> result = edge.export_model("student.bin", "student.onnx", quant="uint8")
    >>> edge.predict_images(result.path, "food-11/testing")[:1]
    [Prediction(id='0', label=5, name='Meat')]
"""

from edge.api import ExportResult, Prediction, benchmark, export_model, load_model, predict_images
from edge.core.errors import EdgeError

__version__ = "0.1.0"
__all__ = ["EdgeError", "ExportResult", "Prediction", "__version__", "benchmark", "export_model", "load_model",
           "predict_images"]
