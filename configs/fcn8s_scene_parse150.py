"""FCN-8s (Long, Shelhamer and Darrell, "Fully Convolutional Networks for Semantic Segmentation",
CVPR 2015) on TFDS scene_parse150 (101 classes), fine-tuned from torchvision's ImageNet VGG-16.

Command:   python train.py --config configs/fcn8s_scene_parse150.py --workdir runs/fcn8s_ade \
               --config.init_from=/path/to/vgg16-397923af.pth
Smoke:     python train.py --config configs/fcn8s_scene_parse150.py:smoke --workdir /tmp/fcn_ade_smoke
Hardware:  accelerators (batch 16 of 512 px crops). Needs `scene_parse150` prepared as TFDS
           array_record and torchvision's VGG-16 ImageNet file (`init_from`).
Model:     configs/fcn8s_pets.py's FCN-8s (VGG-16 with fc6/fc7 as convolutions, drop-out 0.5, pool3/
           pool4 skips). Data: `configs/common/datasets.py`: TFDS's scene_parse150 holds the Places
           Challenge *instance* annotations, so the classes are its 100 object categories plus
           "other" as class 0, not the 150-class benchmark; 512 x 512 with random scale 0.5-2 and
           flips. SGD momentum 0.9, weight decay 5e-4, lr 0.01 after 500 warm-up steps, cosine
           decay, batch 16, 40000 steps (~32 epochs of 20210 images).
Expected:  not measured yet (no accelerator or ADE data on the development machine); published
           ADE20K numbers are for the 150-class benchmark and do not apply to these labels.
Smoke:     the data is not available offline, so `:smoke` is `fcn8s_shapes.py:smoke` (the config test
           runs it once for all FCN-8s configs); the full-size model is checked with jax.eval_shape.
"""

from configs import fcn8s_pets, fcn8s_shapes
from configs.common import base, datasets


def get_config(arg: str | None = None):
  if arg not in (None, "smoke"):
    raise ValueError(f"unknown config argument {arg!r}; use configs/fcn8s_scene_parse150.py or "
                     ":smoke")
  if arg == "smoke":
    return fcn8s_shapes.get_config("smoke")
  c = fcn8s_pets.fcn8s_vgg16(datasets.scene_parse150(base.base_config(), 512))
  c.optim.warmup_steps = 500
  c.train.log_every = 50
  c.train.steps = 40000
  c.train.eval_every = 5000
  c.train.checkpoint_every = 1000
  return c
