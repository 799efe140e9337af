"""Faster R-CNN (Ren et al., NeurIPS 2015) with a ResNet-50 FPN (Lin et al., "Feature Pyramid
Networks for Object Detection", CVPR 2017) on PASCAL VOC 07+12, evaluated on VOC 2007 test.

Command:   python train.py --config configs/faster_rcnn_fpn_voc.py --workdir runs/frcnn_voc \
               --config.init_from=/path/to/resnet50-0676ba61.pth
Smoke:     python train.py --config configs/faster_rcnn_fpn_voc.py:smoke --workdir /tmp/frcnn_voc_smoke
Hardware:  accelerators (batch 16). Needs `voc/2007` and `voc/2012` prepared as TFDS array_record (see
           jaxvision.data.tfds_sources; needs the `tf` extra) and torchvision's ResNet-50 ImageNet file
           (`init_from`; without it the backbone starts from scratch).
Model:     the `fpn` preset of jaxvision.models.detection.faster_rcnn: ResNet-50 with frozen
           BatchNorm, FPN of 256 channels, RPN on P2..P6 with one anchor size per level (32..512)
           and 3 ratios, 256 sampled anchors per image, proposals by decode + clip + top-k + NMS
           0.7, RoIAlign 7x7 on P2..P5 by the FPN level rule, 2 FC of 1024, 512 sampled RoIs per
           image (25% foreground), the four losses. Data "07+12": VOC 2007 trainval + VOC 2012
           trainval (`data.extra_train`, 16551 images), images fitted into 600 x 1000 (the paper's
           shorter side 600, longer at most 1000) and padded, flips. SGD momentum 0.9, weight decay
           1e-4, lr 0.02 after 500 warm-up steps, divided by 10 at steps 8280 and 11380 (epochs 8
           and 11 of 12), batch 16. Evaluation: VOC 2007 test, 11-point VOC07 mAP@0.5.
Expected:  not measured yet (no accelerator or VOC data on the development machine). For
           comparison, not a claim: the Faster R-CNN paper reports 73.2 mAP on VOC 2007 test for
           VGG-16 trained on 07+12; FPN's paper reports COCO numbers only.
Smoke:     VOC is not available offline, so `:smoke` is `faster_rcnn_fpn_shapes.py:smoke` (the config
           test runs it once for all Faster R-CNN FPN configs); the full-size model is checked with
           jax.eval_shape in the config test.
"""

from configs import faster_rcnn_fpn_shapes
from configs.common import base, datasets


def get_config(arg: str | None = None):
  if arg not in (None, "smoke"):
    raise ValueError(f"unknown config argument {arg!r}; use configs/faster_rcnn_fpn_voc.py or :smoke")
  if arg == "smoke":
    return faster_rcnn_fpn_shapes.get_config("smoke")
  c = datasets.voc0712(base.base_config(), (600, 1000), 16)
  faster_rcnn_r50_fpn(c)
  base.sgd_step_schedule(c, learning_rate=0.02, decay_steps=(8280, 11380), weight_decay=1e-4)
  c.train.steps = 12420
  c.train.log_every = 50
  c.train.eval_every = 4140
  c.train.checkpoint_every = 1000
  c.eval.metric = "voc"
  c.eval.use_07_metric = True
  c.eval.best_metric = "mAP"
  return c


def faster_rcnn_r50_fpn(c):
  """The ``fpn`` preset model with an ImageNet ResNet-50 backbone on ``c`` (shared with
  configs/faster_rcnn_fpn_coco.py)."""
  c.model.name = "faster_rcnn"
  c.model.preset = "fpn"
  c.model.backbone = {"name": "resnet50", "norm": "frozen"}
  c.init_from_at = "backbone"
  c.eval.best_mode = "max"
  return c
