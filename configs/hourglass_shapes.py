"""Stacked hourglass networks (Newell, Yang and Deng, ECCV 2016) for segmentation on shapes.

Command:   python train.py --config configs/hourglass_shapes.py --workdir runs/hourglass
Smoke:     python train.py --config configs/hourglass_shapes.py:smoke --workdir /tmp/hourglass_smoke
Hardware:  a 2-core CPU (no accelerator needed); the shapes dataset is prepared offline on first use.
Model:     the paper's network (7x7/2 stem + residual modules + max pool to 1/4 resolution,
           hourglasses of residual modules with nearest-neighbour upsampling, intermediate
           supervision: the cross-entropy of every stack's prediction is summed) shrunk for CPU:
           2 stacks of depth 3 with 32 channels (paper: 8 stacks, depth 4, 256 channels:
           `--config.model.preset=paper`). Per-pixel class logits replace the paper's joint
           heatmaps; they are bilinearly upsampled from 1/4 resolution to the input size.
Expected:  validation mIoU 0.318, pixel accuracy 0.888 after 2000 steps (0.235 / 0.283 / 0.314 at
           steps 500 / 1000 / 1500; IoU background 0.948, circle 0.376, square 0.149, triangle
           0.093, star 0.125, cross 0.218), 6 min 41 s wall on an idle 2-core CPU, data prepared
           (measured 2026-11-22 with this command). Far below the U-Net's 0.63 at the same budget:
           32 channels throughout and a 1/4-resolution stem give this shrunk hourglass little
           capacity to tell the shapes apart (+0.035 after step 1000). A short run of this model
           (tests/models/segmentation/test_hourglass.py::test_hourglass_learns_shapes: 400 steps of
           batch 8, constant Adam 3e-3, first 100 validation images) measured val mIoU
           0.012 -> 0.221 on a shared 2-core CPU.
"""

from configs.common import base

# Square roots of the median-frequency weights of the train split (configs/unet_shapes.py).
SHAPES_SQRT_MEDIAN_FREQUENCY = (0.25, 0.8, 1.0, 1.24, 1.22, 1.0)


def get_config(arg: str | None = None):
  c = base.base_config()
  c.model.name = "hourglass"
  c.model.num_stacks = 2
  c.model.depth = 3
  c.model.features = 32
  c.model.num_modules = 1
  c.model.stem_downsample = 4
  c.model.upsampling = "nearest"
  c.model.norm = "batch"
  c.model.axis_name = "data"
  c.model.stack_loss_weights = (1.0, 1.0)
  c.model.class_weights = SHAPES_SQRT_MEDIAN_FREQUENCY
  c.data.batch_size = 8
  c.optim.learning_rate = 3e-3
  c.optim.warmup_steps = 50
  c.train.steps = 2000
  c.train.eval_every = 500
  c.train.checkpoint_every = 250
  if arg == "smoke":
    c = base.apply_smoke(c)
    c.model.depth = 1
    c.model.features = 4
  elif arg:
    raise ValueError(f"unknown config argument {arg!r}; use configs/hourglass_shapes.py or :smoke")
  return c
