"""edge: compress a Food-11 StudentNet and ship it as a small, self-describing ONNX file.

The core library (no torch needed on the ONNX path): StudentNet configs, checkpoint
readers for our files and the homework's, quantization codecs, image preprocessing,
the ONNX Runtime wrapper, prediction and the `edge` command line.
"""

__version__ = "0.1.0"
