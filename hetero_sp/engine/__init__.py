"""Training engine: DeepSpeed step, loss normalisation, checkpoints, metrics."""
