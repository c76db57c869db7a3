"""Layer 0, the core: the one error root, configs and model cards, file guards, file sniffing, the safe
unpickler, and the data tables (weight formats, backends) and typed command options. Imports nothing
of edge above it, and neither torch nor onnx."""
