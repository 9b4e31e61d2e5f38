"""Training: run setup, the epoch loop, the jitted steps, optimizers, fine-tuning phases, checkpoints."""
