"""RetinaNet (Lin et al., "Focal Loss for Dense Object Detection", ICCV 2017) on the shapes dataset.

Command:   python train.py --config configs/retinanet_shapes.py --workdir runs/retinanet_shapes
Smoke:     python train.py --config configs/retinanet_shapes.py:smoke --workdir /tmp/retinanet_smoke
Hardware:  a 2-core CPU (no accelerator needed); the shapes dataset is prepared offline on first use.
Model:     CPU-sized RetinaNet: ResNet-18 of width 16 (BatchNorm, trained from scratch: there are no
           pretrained weights offline), FPN with 64 channels on P3..P5 only (at 128 x 128, P6/P7
           would be 2 x 2 and 1 x 1, and the shapes are 11-56 px), head towers of 2 convs x 64.
           Anchors are half the paper's size (``anchor_scale=2``: 16-25 px on P3 ... 64-101 px on
           P5) to cover the 11-56 px shapes; everything else is the paper's (9 anchors, IoU
           0.5 / 0.4 matching with low-quality matches, focal loss alpha 0.25 gamma 2, prior
           0.01, smooth-L1 deltas, score 0.05, top-1000 per level, NMS 0.5, 100 detections).
           ``--config.model.cls_loss=bce`` or ``bce_ohem`` give the paper's Table 1 baselines
           (see benchmarks/focal_vs_bce.py).
Expected:  validation mAP@0.5 (VOC, 200 images) 0.464 after 1500 steps (0.272 at 500, 0.421 at
           1000; AP circle 0.74, square 0.52, cross 0.41, star 0.35, triangle 0.31); about 31 min
           wall on the shared 2-core CPU under heavy load from other jobs (load average ~15), so
           expect it faster on idle cores (measured 2026-11-21 with this command).
"""

from configs.common import base


def get_config(arg: str | None = None):
  c = base.base_config()
  c.task = "detection"
  c.model.name = "retinanet"
  c.model.backbone = "resnet18"
  c.model.backbone_args = dict(width=16, norm="batch", axis_name="data")
  c.model.fpn_features = 64
  c.model.min_level = 3
  c.model.max_level = 5
  c.model.head_features = 64
  c.model.head_convs = 2
  c.model.anchor_scale = 2.0
  c.model.cls_loss = "focal"  # "focal" | "bce" | "bce_ohem"
  c.model.focal_alpha = 0.25
  c.model.focal_gamma = 2.0
  c.model.box_loss = "smooth_l1"
  c.model.smooth_l1_beta = 0.11
  c.model.score_threshold = 0.05
  c.model.topk_per_level = 1000
  c.model.nms_threshold = 0.5
  c.model.max_detections = 100
  c.data.batch_size = 16
  c.data.max_boxes = 8
  c.optim.name = "adamw"
  c.optim.learning_rate = 2e-3
  c.optim.warmup_steps = 100
  c.optim.weight_decay = 1e-4
  c.optim.grad_clip_norm = 10.0
  c.train.steps = 1500
  c.train.eval_every = 500
  c.train.checkpoint_every = 250
  c.eval.best_metric = "mAP"
  c.eval.best_mode = "max"
  if arg == "smoke":
    c = base.apply_smoke(c)
    c.model.backbone_args = dict(width=8, norm="batch", axis_name="data")
    c.model.fpn_features = 16
    c.model.head_features = 16
    c.model.head_convs = 1
  elif arg:
    raise ValueError(f"unknown config argument {arg!r}; use configs/retinanet_shapes.py or :smoke")
  return c
