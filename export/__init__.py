"""torch/numpy StudentNet weights -> self-describing ONNX files (fp32, fp16, uint8 with min-max)."""
