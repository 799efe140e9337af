"""Fine-tuning from ImageNet weights: DeepLabv3 (Chen et al., "Rethinking Atrous Convolution for
Semantic Image Segmentation", 2017) with torchvision's ImageNet ResNet-18 as the backbone, trained
on the built-in shapes dataset.

Command:   python train.py --config configs/deeplab_finetune_shapes.py --workdir runs/deeplab_ft
Smoke:     python train.py --config configs/deeplab_finetune_shapes.py:smoke --workdir /tmp/dl_ft
Weights:   torchvision's resnet18 ImageNet file (44.7 MB), downloaded once by the user, e.g.
             mkdir -p ~/.cache/torch/hub/checkpoints && cd ~/.cache/torch/hub/checkpoints &&
             wget https://download.pytorch.org/models/resnet18-f37072fd.pth
           (where torchvision itself caches it); another path: --config.init_from=/path/file.pth.
           The file is read without executing pickled code and converted to jaxvision's ResNet
           (jaxvision.weights.load_backbone_into: every key and shape checked; the ASPP head and
           classifier start from scratch). Images are normalized with ImageNet's mean and std (the
           base data block), as the backbone was trained.
Hardware:  a 2-core CPU is enough (no accelerator needed); the shapes dataset is prepared offline
           on first use. The smoke variant starts from scratch (no file at test time); the loading
           path is tested in tests/train/test_init_from.py with a synthetic file.
Model:     deeplab_shapes' DeepLabv3 at torchvision's full ResNet-18 width (64..512 channels),
           output stride 8, ASPP 64 channels, rates (3, 6, 9) for 16 px maps, BatchNorm trained
           (batch 8), AdamW at 1e-3 after 50 warmup steps.
Expected:  not measured yet (no torchvision file on the development machine, which has no internet
           access beyond package registries).
"""

import os

from configs import deeplab_shapes

TORCHVISION_RESNET18 = os.path.expanduser("~/.cache/torch/hub/checkpoints/resnet18-f37072fd.pth")


def get_config(arg: str | None = None):
  if arg not in (None, "smoke"):
    raise ValueError(f"unknown config argument {arg!r}; use configs/deeplab_finetune_shapes.py or "
                     ":smoke")
  c = deeplab_shapes.get_config(arg)
  if arg == "smoke":
    c.init_from = ""  # no download at test time
    return c
  c.model.backbone = "resnet18"
  c.model.width = 64  # torchvision's ResNet-18
  c.model.aspp_features = 64
  c.init_from = TORCHVISION_RESNET18
  c.optim.learning_rate = 1e-3
  c.train.steps = 1000
  return c
