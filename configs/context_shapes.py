"""Front-end + basic context module (Yu and Koltun, "Multi-Scale Context Aggregation by Dilated
Convolutions", ICLR 2016) on the built-in shapes dataset, with a CPU-sized front-end.

Command:   python train.py --config configs/context_shapes.py --workdir runs/context
Smoke:     python train.py --config configs/context_shapes.py:smoke --workdir /tmp/context_smoke
Hardware:  a 2-core CPU (no accelerator needed); the shapes dataset is prepared offline on first use.
Model:     the dilated VGG-16 front-end (pools 4 and 5 removed, conv5 dilation 2, fc6 dilation 4;
           output stride 8) at 1/8 width with 64-channel fc6 (3x3 instead of 7x7) / fc7 and
           BatchNorm (not in the paper), then the basic context module (C = 6 channels, dilations
           1, 1, 2, 4, 8, 16, 1, identity initialisation), trained jointly with an auxiliary loss on
           the front-end's scores (the paper trains the front-end first), bilinear upsampling,
           square roots of the median-frequency class weights. The paper's network:
           model.width=64, model.fc_features=4096, model.fc6_kernel=7, model.norm=None.
Expected:  validation mIoU 0.632, pixel accuracy 0.941 after 2000 steps (0.320 / 0.463 / 0.609 at
           steps 500 / 1000 / 1500; IoU background 0.954, circle 0.775, square 0.602, triangle
           0.503, star 0.435, cross 0.521), 6 min 8 s wall on an idle 2-core CPU, data prepared
           (measured 2026-11-22 with this command). Short runs of this config (600 steps of 4
           images, one device, the learning test's setting) measured val mIoU 0.238 on the shared
           2-core CPU (0.200 with context_lr_scale 1.0; the front-end alone 0.256).
"""

from configs.common import backbones, base


def get_config(arg: str | None = None):
  c = base.base_config()
  c.model.name = "context"
  c.model.width = backbones.TINY_VGG16["width"]
  c.model.fc_features = backbones.TINY_VGG16["fc_features"]
  c.model.fc6_kernel = 3
  c.model.norm = backbones.TINY_VGG16["norm"]
  c.model.dropout_rate = 0.1
  c.model.context = "basic"
  # The paper trains the front-end alone first; here one stage, with the front-end's own upsampled
  # scores as an auxiliary loss (weight 1) so it is supervised directly, not only through the
  # module's ReLUs (which pass no gradient for negative scores).
  c.model.aux_frontend = True
  c.model.aux_weight = 1.0
  # Adam moves every weight by about the learning rate per step: the identity-initialised module
  # drifts as fast as the front-end learns. Its updates are scaled by 0.1 (600 steps of 4 images:
  # val mIoU 0.238 with 0.1, 0.255 with 0.01, 0.200 with 1.0; the front-end alone 0.256).
  c.model.context_lr_scale = 0.1
  c.model.axis_name = "data"  # cross-replica BatchNorm under data parallelism
  c.model.class_weights = backbones.SHAPES_SQRT_CLASS_WEIGHTS
  c.data.batch_size = 8
  c.optim.learning_rate = 3e-3
  c.optim.warmup_steps = 50
  c.train.steps = 2000
  c.train.eval_every = 500
  c.train.checkpoint_every = 250
  if arg == "smoke":
    c = base.apply_smoke(c)
    c.model.width = 4
    c.model.fc_features = 8
  elif arg:
    raise ValueError(f"unknown config argument {arg!r}; use configs/context_shapes.py or :smoke")
  return c
