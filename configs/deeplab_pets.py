"""DeepLabv3 (Chen et al., "Rethinking Atrous Convolution for Semantic Image Segmentation", 2017) on
Oxford-IIIT Pet (background vs pet), fine-tuned from torchvision's ImageNet ResNet-50.

Command:   python train.py --config configs/deeplab_pets.py --workdir runs/deeplab_pets \
               --config.init_from=/path/to/resnet50-0676ba61.pth
Smoke:     python train.py --config configs/deeplab_pets.py:smoke --workdir /tmp/deeplab_pets_smoke
Hardware:  one accelerator (the paper: batch 16 of 513 px crops). Needs `oxford_iiit_pet` prepared as
           TFDS array_record and torchvision's ResNet-50 ImageNet file (`init_from`).
Model:     the paper's DeepLabv3 at training output stride 16: ResNet-50 with stages 5 dilated,
           ASPP of 256 channels with rates (6, 12, 18) and the image-pooling branch, BatchNorm
           trained across devices (cross-replica), 1x1 classifier, bilinear upsampling. Data:
           `configs/common/datasets.py` (2 classes, trimap border ignored), 384 x 384 with random
           scale 0.5-2 and flips. SGD momentum 0.9, weight decay 1e-4, the paper's "poly" schedule
           (power 0.9) from lr 0.007, batch 16, 4600 steps (20 epochs).
           Differences: ResNet-50 instead of the paper's ResNet-101, 384 px instead of 513 px crops,
           no multi-grid, no output-stride-8 evaluation, no multi-scale or flipped inference.
Expected:  not measured yet (no accelerator or Pet data on the development machine). For
           comparison, not a claim: the paper reports 77.2 mIoU on PASCAL VOC 2012 val (ResNet-101,
           output stride 16, 21 classes).
Smoke:     the pet data is not available offline, so `:smoke` is `deeplab_shapes.py:smoke` (the same
           family on the shapes tiny split; the config test runs it once for both); the full-size
           model is checked with jax.eval_shape in the config test.
"""

from configs import deeplab_shapes
from configs.common import base, datasets


def get_config(arg: str | None = None):
  if arg not in (None, "smoke"):
    raise ValueError(f"unknown config argument {arg!r}; use configs/deeplab_pets.py or :smoke")
  if arg == "smoke":
    return deeplab_shapes.get_config("smoke")
  c = datasets.oxford_iiit_pet(base.base_config(), 384)
  deeplab_resnet50(c, output_stride=16)
  c.data.batch_size = 16
  c.data.eval_batch_size = 16
  c.optim.learning_rate = 0.007
  c.train.steps = 4600
  c.train.eval_every = 1150
  return c


def deeplab_resnet50(c, *, output_stride: int):
  """The DeepLabv3 ResNet-50 model and the paper's optimizer (SGD 0.9, poly 0.9, weight decay 1e-4)
  on ``c`` (shared with configs/deeplab_scene_parse150.py and configs/deeplab_cityscapes.py)."""
  c.model.name = "deeplab"
  c.model.backbone = "resnet50"
  c.model.width = 64
  c.model.output_stride = output_stride
  c.model.aspp_features = 256
  c.model.image_pooling = True
  c.model.norm = "batch"
  c.model.axis_name = "data"  # cross-replica BatchNorm under data parallelism
  c.optim.name = "sgd"
  c.optim.momentum = 0.9
  c.optim.schedule = "poly"
  c.optim.power = 0.9
  c.optim.warmup_steps = 0
  c.optim.weight_decay = 1e-4
  c.train.log_every = 50
  c.train.checkpoint_every = 500
  return c
