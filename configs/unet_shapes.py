"""U-Net (Ronneberger et al., MICCAI 2015) on the built-in shapes dataset: the README's default.

Command:   python train.py --config configs/unet_shapes.py --workdir runs/unet
Smoke:     python train.py --config configs/unet_shapes.py:smoke --workdir /tmp/unet_smoke
Hardware:  a 2-core CPU (no accelerator needed); the shapes dataset is prepared offline on first use.
Model:     the padded ("same") U-Net with BatchNorm, 3 down steps, 16 base features (the paper's
           network is `model.preset="paper"`: valid convolutions, 64 features, 4 steps).
Expected:  see README.md's model zoo for the validation mIoU measured with this command.
"""

from configs.common import base


def get_config(arg: str | None = None):
  c = base.base_config()
  c.model.name = "unet"
  c.model.padding = "SAME"
  c.model.depth = 3
  c.model.base_features = 16
  c.model.norm = "batch"
  c.model.axis_name = "data"  # cross-replica BatchNorm under data parallelism
  c.model.upsampling = "transposed"
  c.optim.learning_rate = 3e-3
  c.optim.warmup_steps = 50
  c.train.steps = 1200
  c.train.eval_every = 300
  c.train.checkpoint_every = 300
  if arg == "smoke":
    c = base.apply_smoke(c)
    c.model.depth = 2
    c.model.base_features = 4
  elif arg:
    raise ValueError(f"unknown config argument {arg!r}; use configs/unet_shapes.py or :smoke")
  return c
