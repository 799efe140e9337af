"""RetinaNet R50-FPN (Lin et al., "Focal Loss for Dense Object Detection", ICCV 2017) on COCO 2017.

Command:   python train.py --config configs/retinanet_coco.py --workdir runs/retinanet_coco \
               --config.init_from=/path/to/resnet50-0676ba61.pth
Smoke:     python train.py --config configs/retinanet_coco.py:smoke --workdir /tmp/rn_coco_smoke
Hardware:  accelerators (the paper: 8 GPUs, 16 images per batch). Needs `coco/2017` prepared as TFDS
           array_record (see jaxvision.data.tfds_sources; preparing COCO needs the `tf` extra).
Model:     the paper's RetinaNet (all `make_retinanet` defaults): ResNet-50 with frozen BatchNorm
           (ImageNet weights through `config.init_from`, a torchvision resnet50 file), FPN P3..P7
           with 256 channels (P6 from C5), class and box subnets of 4 x 3x3 conv 256 + ReLU shared
           over levels, 9 anchors per location (areas 32^2..512^2, octave scales 2^0, 2^(1/3),
           2^(2/3), ratios 1:2, 1:1, 2:1), IoU >= 0.5 foreground / < 0.4 background, focal loss
           alpha 0.25 gamma 2 normalized by the number of foreground anchors, smooth-L1 box loss,
           prior 0.01; inference: score 0.05, top 1000 per level, NMS 0.5, 100 detections. SGD,
           momentum 0.9, weight decay 1e-4, batch 16, lr 0.01 for 90k iterations divided by 10 at
           60k and 80k, horizontal flips only (paper Sec. 4.1 "Optimization").
           Differences: images are resized keeping their aspect ratio to fit 800 x 1344 and padded
           to it (the paper: shorter side 800, longer side at most 1333; portrait images come out
           smaller here); a linear warmup over 500 steps (Detectron's code warms up too; the paper
           does not say); smooth-L1 beta 0.11 (Detectron's).
Expected:  not measured yet (no COCO data or accelerator was available when this config was made).
Smoke:     COCO is not available offline, so `:smoke` keeps the RetinaNet family with a ResNet-18 of
           width 8, FPN/heads of 16 channels on P3..P5 at 128 px on the shapes tiny split.
"""

from configs.common import base, datasets


def get_config(arg: str | None = None):
  c = datasets.coco2017(base.base_config())
  c.model.name = "retinanet"
  c.model.backbone = "resnet50"
  c.model.backbone_args = dict(norm="frozen")
  c.model.cls_loss = "focal"
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
    c.model.head_features = 16
    c.model.head_convs = 1
    c.model.anchor_scale = 2.0
    c.optim.warmup_steps = 0
    c.eval.metric = "voc"
    c.eval.best_metric = "mAP"
  elif arg:
    raise ValueError(f"unknown config argument {arg!r}; use configs/retinanet_coco.py or :smoke")
  return c
