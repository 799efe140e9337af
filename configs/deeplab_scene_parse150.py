"""DeepLabv3 (Chen et al., "Rethinking Atrous Convolution for Semantic Image Segmentation", 2017) on
TFDS scene_parse150 (101 classes), fine-tuned from torchvision's ImageNet ResNet-50.

Command:   python train.py --config configs/deeplab_scene_parse150.py --workdir runs/deeplab_ade \
               --config.init_from=/path/to/resnet50-0676ba61.pth
Smoke:     python train.py --config configs/deeplab_scene_parse150.py:smoke --workdir /tmp/dl_ade_smoke
Hardware:  accelerators (batch 16 of 512 px crops at output stride 8). Needs `scene_parse150` prepared
           as TFDS array_record and torchvision's ResNet-50 ImageNet file (`init_from`).
Model:     configs/deeplab_pets.py's DeepLabv3 ResNet-50 at output stride 8 (stages 4 and 5 dilated,
           ASPP rates (12, 24, 36)). Data: `configs/common/datasets.py`: TFDS's scene_parse150 holds
           the Places Challenge *instance* annotations, so the classes are its 100 object
           categories plus "other" (stuff and unlabelled pixels) as class 0, not the 150-class
           benchmark; 512 x 512 with random scale 0.5-2 and flips. SGD momentum 0.9, weight decay
           1e-4, poly schedule from lr 0.01, batch 16, 40000 steps (~32 epochs of 20210 images).
Expected:  not measured yet (no accelerator or ADE data on the development machine); published
           ADE20K numbers are for the 150-class benchmark and do not apply to these labels.
Smoke:     the data is not available offline, so `:smoke` is `deeplab_shapes.py:smoke` (the config
           test runs it once for all DeepLab configs); the full-size model is checked with
           jax.eval_shape in the config test.
"""

from configs import deeplab_pets, deeplab_shapes
from configs.common import base, datasets


def get_config(arg: str | None = None):
  if arg not in (None, "smoke"):
    raise ValueError(f"unknown config argument {arg!r}; use configs/deeplab_scene_parse150.py or "
                     ":smoke")
  if arg == "smoke":
    return deeplab_shapes.get_config("smoke")
  c = datasets.scene_parse150(base.base_config(), 512)
  deeplab_pets.deeplab_resnet50(c, output_stride=8)
  c.data.batch_size = 16
  c.data.eval_batch_size = 16
  c.optim.learning_rate = 0.01
  c.train.steps = 40000
  c.train.eval_every = 5000
  c.train.checkpoint_every = 1000
  return c
