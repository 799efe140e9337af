"""FCOS R50-FPN (Tian et al., "FCOS: Fully Convolutional One-Stage Object Detection", ICCV 2019) on
COCO 2017.

Command:   python train.py --config configs/fcos_coco.py --workdir runs/fcos_coco \
               --config.init_from=/path/to/resnet50-0676ba61.pth
Smoke:     python train.py --config configs/fcos_coco.py:smoke --workdir /tmp/fcos_coco_smoke
Hardware:  accelerators (the paper: 8 GPUs, 16 images per batch). Needs `coco/2017` prepared as TFDS
           array_record (see jaxvision.data.tfds_sources; preparing COCO needs the `tf` extra).
Model:     `make_fcos` defaults: ResNet-50 with frozen BatchNorm (ImageNet weights through
           `config.init_from`), FPN P3..P7 with 256 channels (P6/P7 from P5), head towers of 4 x 3x3
           conv 256 + GroupNorm + ReLU shared over levels, regression ranges 0/64/128/256/512/inf,
           smallest-area assignment, focal loss alpha 0.25 gamma 2, centerness BCE, prior 0.01;
           the improved-FCOS settings that torchvision's fcos_resnet50_fpn also uses (centre
           sampling radius 1.5, GIoU loss, centerness on the regression branch, relu distances in
           strides); inference: class probability 0.05, score sqrt(cls * centerness), top 1000 per
           level, NMS 0.6, 100 detections. SGD, momentum 0.9, weight decay 1e-4, batch 16,
           lr 0.01 for 90k iterations divided by 10 at 60k and 80k (paper Sec. 4).
           The ICCV paper's original head: --config.model.center_sampling_radius=0
           --config.model.box_loss=iou --config.model.reg_activation=exp
           --config.model.centerness_on_reg=False.
           Differences: images are resized keeping their aspect ratio to fit 800 x 1344 and padded
           to it (the paper: shorter side 800, longer side at most 1333); a linear warmup over 500
           steps (the released code warms up too).
Expected:  not measured yet (no COCO data or accelerator was available when this config was made).
Smoke:     COCO is not available offline, so `:smoke` keeps the FCOS family with a ResNet-18 of
           width 8, FPN/heads of 16 channels on P3..P5 at 128 px on the shapes tiny split.
"""

from configs.common import base, datasets


def get_config(arg: str | None = None):
  c = datasets.coco2017(base.base_config())
  c.model.name = "fcos"
  c.model.backbone = "resnet50"
  c.model.backbone_args = dict(norm="frozen")
  c.init_from_at = "backbone"
  base.coco_1x_schedule(c, learning_rate=0.01)
  if arg == "smoke":
    c = base.apply_smoke(c)
    c.data.name = "shapes"
    c.data.image_size = (128, 128)
    c.data.max_boxes = 8
    c.model.backbone = "resnet18"
    c.model.backbone_args = dict(width=8, norm="batch")
    c.model.fpn_features = 16
    c.model.max_level = 5
    c.model.size_of_interest = (32.0, 64.0)
    c.model.head_features = 16
    c.model.head_convs = 1
    c.optim.warmup_steps = 0
    c.eval.metric = "voc"
    c.eval.best_metric = "mAP"
  elif arg:
    raise ValueError(f"unknown config argument {arg!r}; use configs/fcos_coco.py or :smoke")
  return c
