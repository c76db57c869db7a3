"""Layer 1, codecs: integer weight codes (min-max, codebooks), entropy-coded streams, ONNX metadata and the
non-finite scan. numpy only: no torch, no onnx."""
