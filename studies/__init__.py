"""One-off studies that write bench/results/: not installed with edge. Run from the repository root as
``python -m studies.NAME``."""
