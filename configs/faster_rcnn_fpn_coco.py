"""Faster R-CNN (Ren et al., NeurIPS 2015) with a ResNet-50 FPN (Lin et al., "Feature Pyramid
Networks for Object Detection", CVPR 2017) on COCO 2017, COCO box AP through pycocotools.

Command:   python train.py --config configs/faster_rcnn_fpn_coco.py --workdir runs/frcnn_coco \
               --config.init_from=/path/to/resnet50-0676ba61.pth
Smoke:     python train.py --config configs/faster_rcnn_fpn_coco.py:smoke --workdir /tmp/frcnn_coco_smoke
Hardware:  accelerators (the FPN paper: 8 GPUs, 16 images a batch). Needs `coco/2017` prepared as TFDS
           array_record (preparing COCO needs the `tf` extra) and torchvision's ResNet-50 ImageNet
           file (`init_from`).
Model:     configs/faster_rcnn_fpn_voc.py's model (the `fpn` preset: ResNet-50 frozen BatchNorm,
           FPN 256, RPN on P2..P6, RoIAlign 7x7 on P2..P5, 2 FC of 1024). Images fitted into
           800 x 1344 and padded (the paper: shorter side 800, longer at most 1333), flips, up to 100
           boxes an image. The "1x" schedule: SGD momentum 0.9, weight decay 1e-4, lr 0.02 after 500
           warm-up steps, divided by 10 at 60k and 80k, 90k steps of 16 images.
           Differences: portrait images come out smaller than with the paper's resize.
Expected:  not measured yet (no accelerator or COCO data on the development machine). For
           comparison, not a claim: the FPN paper reports 36.2 AP on COCO test-dev for Faster R-CNN
           R50-FPN; torchvision's fasterrcnn_resnet50_fpn (a close recipe) lists 37.0 box AP on val.
Smoke:     COCO is not available offline, so `:smoke` is `faster_rcnn_fpn_shapes.py:smoke` (the config
           test runs it once for all Faster R-CNN FPN configs); the full-size model is checked with
           jax.eval_shape in the config test.
"""

from configs import faster_rcnn_fpn_shapes, faster_rcnn_fpn_voc
from configs.common import base, datasets


def get_config(arg: str | None = None):
  if arg not in (None, "smoke"):
    raise ValueError(f"unknown config argument {arg!r}; use configs/faster_rcnn_fpn_coco.py or "
                     ":smoke")
  if arg == "smoke":
    return faster_rcnn_fpn_shapes.get_config("smoke")
  c = datasets.coco2017(base.base_config())
  faster_rcnn_fpn_voc.faster_rcnn_r50_fpn(c)
  base.coco_1x_schedule(c, learning_rate=0.02)
  return c
