"""FCN-8s (Long, Shelhamer and Darrell, "Fully Convolutional Networks for Semantic Segmentation",
CVPR 2015) on Oxford-IIIT Pet (background vs pet), fine-tuned from torchvision's ImageNet VGG-16.

Command:   python train.py --config configs/fcn8s_pets.py --workdir runs/fcn8s_pets \
               --config.init_from=/path/to/vgg16-397923af.pth
Smoke:     python train.py --config configs/fcn8s_pets.py:smoke --workdir /tmp/fcn8s_pets_smoke
Hardware:  one accelerator (the paper: one GPU, 20 images a batch). Needs `oxford_iiit_pet`
           prepared as TFDS array_record (a missing dataset stops with the command) and
           torchvision's VGG-16 ImageNet file (`init_from`: its fc6/fc7 become the 7x7 and 1x1
           convolutions, read without executing pickled code).
Model:     the paper's FCN-8s: VGG-16 (64..512 channels, fc6/fc7 4096, no BatchNorm, drop-out 0.5 on
           fc6/fc7), 1x1 score layers on pool3/pool4/fc7, skip fusion by sum, learned
           bilinear-initialised upsampling. Data: `configs/common/datasets.py` (2 classes, trimap
           border ignored), 320 x 320 with random scale 0.5-2 and flips. SGD momentum 0.9, weight
           decay 5e-4 (the paper's), lr 0.01 on the per-pixel mean loss after 200 warm-up steps,
           cosine decay, batch 16, 4600 steps (20 epochs).
           Differences: the paper's "same"-sized geometry instead of Caffe's pad-100 alignment
           (model.alignment="paper" restores it), momentum 0.9 on a mean loss instead of 0.99 on a
           summed loss at lr 1e-4, scale augmentation (the paper has none), no doubled bias lr.
Expected:  not measured yet (no accelerator or Pet data on the development machine). For
           comparison, not a claim: the paper reports 62.2 mIoU on PASCAL VOC 2011 test (21 classes).
Smoke:     the pet data is not available offline, so `:smoke` is `fcn8s_shapes.py:smoke` (the same
           family on the shapes tiny split; the config test runs it once for both); the full-size
           model is checked with jax.eval_shape in the config test.
"""

from configs import fcn8s_shapes
from configs.common import base, datasets


def get_config(arg: str | None = None):
  if arg not in (None, "smoke"):
    raise ValueError(f"unknown config argument {arg!r}; use configs/fcn8s_pets.py or :smoke")
  if arg == "smoke":
    return fcn8s_shapes.get_config("smoke")
  c = fcn8s_vgg16(datasets.oxford_iiit_pet(base.base_config(), 320))
  c.optim.warmup_steps = 200
  c.train.steps = 4600
  c.train.log_every = 50
  c.train.eval_every = 1150
  c.train.checkpoint_every = 500
  return c


def fcn8s_vgg16(c):
  """The paper's FCN-8s VGG-16 and this file's optimizer (SGD 0.9, weight decay 5e-4, lr 0.01,
  cosine) on ``c``, batch 16 (shared with configs/fcn8s_scene_parse150.py)."""
  c.model.name = "fcn"
  c.model.variant = "8s"
  c.model.alignment = "same"
  c.model.width = 64
  c.model.fc_features = 4096
  c.model.norm = None
  c.model.dropout_rate = 0.5
  c.data.batch_size = 16
  c.data.eval_batch_size = 16
  c.optim.name = "sgd"
  c.optim.momentum = 0.9
  c.optim.learning_rate = 0.01
  c.optim.schedule = "cosine"
  c.optim.weight_decay = 5e-4
  return c
