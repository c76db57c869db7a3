"""Layer 8 (above `edge.export`, layer 7), pruning: network slimming and least-squares channel pruning."""
