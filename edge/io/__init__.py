"""Layer 4, model files: every format edge reads (edge files, the homework .bin and pickles, torchvision
state dicts) and writes, never running code from a file."""
