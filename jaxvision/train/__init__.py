"""Training system: data-parallel steps, checkpoints, the train/eval loop."""
