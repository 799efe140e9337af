"""U-Net (Ronneberger et al., MICCAI 2015) on the built-in shapes dataset: the README's default.

Command:   python train.py --config configs/unet_shapes.py --workdir runs/unet
Smoke:     python train.py --config configs/unet_shapes.py:smoke --workdir /tmp/unet_smoke
Hardware:  a 2-core CPU (no accelerator needed); the shapes dataset is prepared offline on first use.
Model:     the padded ("same") U-Net with BatchNorm, 4 down steps (the receptive field must cover
           a 56 px shape), 8 base features (the paper's network is `model.preset="paper"`: valid
           convolutions, 64 features, 4 steps).
Expected:  validation mIoU 0.495 (pixel accuracy 0.911) after 2000 steps, 10 min 10 s wall on a
           shared 2-core CPU (measured 2026-11-21 with this command; see README's model zoo).
"""

from configs.common import base


def get_config(arg: str | None = None):
  c = base.base_config()
  c.model.name = "unet"
  c.model.padding = "SAME"
  c.model.depth = 4
  c.model.base_features = 8
  c.model.norm = "batch"
  c.model.axis_name = "data"  # cross-replica BatchNorm under data parallelism
  c.model.upsampling = "transposed"
  # Median-frequency weights of the train split (background is 86% of the pixels), as printed by
  # jaxvision.data.builder.median_frequency_weights(shapes_source("train")[0], 6).
  c.model.class_weights = (0.064, 0.649, 0.999, 1.537, 1.494, 1.001)
  c.data.batch_size = 8
  c.optim.learning_rate = 3e-3
  c.optim.warmup_steps = 50
  c.train.steps = 2000
  c.train.eval_every = 500
  c.train.checkpoint_every = 250
  if arg == "smoke":
    c = base.apply_smoke(c)
    c.model.depth = 2
    c.model.base_features = 4
  elif arg:
    raise ValueError(f"unknown config argument {arg!r}; use configs/unet_shapes.py or :smoke")
  return c
