"""Training: the supernet loop, distributed and two-stage training, distillation, the sliced
optimiser, checkpoints and the default supernet of each space."""
