"""Layer 6, training: the loop, knowledge distillation, function matching and torchrun/DDP."""
