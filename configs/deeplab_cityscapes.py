"""DeepLabv3 (Chen et al., "Rethinking Atrous Convolution for Semantic Image Segmentation", 2017) on
Cityscapes fine (19 classes), fine-tuned from torchvision's ImageNet ResNet-50.

Command:   python train.py --config configs/deeplab_cityscapes.py --workdir runs/deeplab_cs \
               --config.init_from=/path/to/resnet50-0676ba61.pth
Smoke:     python train.py --config configs/deeplab_cityscapes.py:smoke --workdir /tmp/dl_cs_smoke
Hardware:  accelerators (batch 8 of 512 x 1024 windows at output stride 8). Cityscapes needs a manual
           download (register at cityscapes-dataset.com; a missing dataset stops with the steps and
           the `tfds build` command) and torchvision's ResNet-50 ImageNet file (`init_from`).
Model:     configs/deeplab_pets.py's DeepLabv3 ResNet-50 at output stride 8 (ASPP rates (12, 24,
           36)). Data: `configs/common/datasets.py`: the 19 train ids, no background class (other
           pixels ignored); images fitted to 512 x 1024 (half resolution), random scale 0.5-2 with
           512 x 1024 windows, flips. SGD momentum 0.9, weight decay 1e-4, poly schedule from lr
           0.01, batch 8, 40000 steps (~108 epochs of 2975 images).
           Differences: ResNet-50 instead of ResNet-101; evaluation at half resolution (labels
           resized with nearest neighbour), where the paper scores full 1024 x 2048 images.
Expected:  not measured yet (no accelerator or Cityscapes data on the development machine). For
           comparison, not a claim: the paper reports 81.3 mIoU on the Cityscapes test set
           (ResNet-101, fine + coarse data, multi-scale inference).
Smoke:     the data is not available offline, so `:smoke` is `deeplab_shapes.py:smoke` (the config
           test runs it once for all DeepLab configs); the full-size model is checked with
           jax.eval_shape in the config test.
"""

from configs import deeplab_pets, deeplab_shapes
from configs.common import base, datasets


def get_config(arg: str | None = None):
  if arg not in (None, "smoke"):
    raise ValueError(f"unknown config argument {arg!r}; use configs/deeplab_cityscapes.py or :smoke")
  if arg == "smoke":
    return deeplab_shapes.get_config("smoke")
  c = datasets.cityscapes(base.base_config(), 512)
  deeplab_pets.deeplab_resnet50(c, output_stride=8)
  c.data.batch_size = 8
  c.data.eval_batch_size = 8
  c.optim.learning_rate = 0.01
  c.train.steps = 40000
  c.train.eval_every = 5000
  c.train.checkpoint_every = 1000
  return c
