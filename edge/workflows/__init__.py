"""Layer 10 (above `edge.bench`, layer 9): the long-running commands as library functions: train / distill /
slim (`runs`), compress, attack. Each takes its typed options (`edge.core.options`)."""
