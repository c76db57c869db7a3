"""Layer 0, the core: the one error root, configs and model cards, file guards, file sniffing, the safe
unpickler, the data tables (weight formats, backends), typed command options, and the install's optional
extras (torch, plot). Imports nothing of edge above it, and neither torch nor onnx."""
