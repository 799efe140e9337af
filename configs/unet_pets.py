"""U-Net (Ronneberger, Fischer and Brox, MICCAI 2015) on Oxford-IIIT Pet (background vs pet), from
scratch.

Command:   python train.py --config configs/unet_pets.py --workdir runs/unet_pets
Smoke:     python train.py --config configs/unet_pets.py:smoke --workdir /tmp/unet_pets_smoke
Hardware:  one accelerator. Needs `oxford_iiit_pet` prepared as TFDS array_record (a missing dataset
           stops with the command). No pretrained weights: U-Net trains from scratch.
Model:     the padded ("same") U-Net with 64 base features (the paper's widths, 64..1024), 4 down
           steps, 2x2 up-convolutions, BatchNorm (not in the paper) and drop-out 0.5 at the bottom
           (the paper's "drop-out layers at the end of the contracting path"); the paper's elastic
           deformation (3 x 3 grid, sigma 10 px) plus flips and random scale 0.5-2 on 256 x 256
           images. Data: `configs/common/datasets.py` (2 classes, trimap border ignored). AdamW at
           1e-3 after 200 warm-up steps, cosine decay, weight decay 1e-4, batch 16, 4600 steps
           (20 epochs).
           Differences: padded convolutions (`model.preset="paper"` is the valid network with
           overlap-tile mirror padding), BatchNorm, AdamW instead of SGD momentum 0.99 with batch 1,
           no per-pixel border weight map (`model.weight_map=True` and the data transform add it).
Expected:  not measured yet (no accelerator or Pet data on the development machine).
Smoke:     the pet data is not available offline, so `:smoke` is `unet_shapes.py:smoke` (the config
           test runs it once for both); the full-size model is checked with jax.eval_shape.
"""

from configs import unet_shapes
from configs.common import base, datasets


def get_config(arg: str | None = None):
  if arg not in (None, "smoke"):
    raise ValueError(f"unknown config argument {arg!r}; use configs/unet_pets.py or :smoke")
  if arg == "smoke":
    return unet_shapes.get_config("smoke")
  c = datasets.oxford_iiit_pet(base.base_config(), 256)
  c.data.augment.elastic = True
  c.model.name = "unet"
  c.model.padding = "SAME"
  c.model.depth = 4
  c.model.base_features = 64
  c.model.norm = "batch"
  c.model.dropout_rate = 0.5
  c.model.axis_name = "data"  # cross-replica BatchNorm under data parallelism
  c.model.upsampling = "transposed"
  c.data.batch_size = 16
  c.data.eval_batch_size = 16
  c.optim.learning_rate = 1e-3
  c.optim.warmup_steps = 200
  c.optim.weight_decay = 1e-4
  c.train.steps = 4600
  c.train.log_every = 50
  c.train.eval_every = 1150
  c.train.checkpoint_every = 500
  return c
