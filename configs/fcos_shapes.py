"""FCOS (Tian et al., "FCOS: Fully Convolutional One-Stage Object Detection", ICCV 2019) on shapes.

Command:   python train.py --config configs/fcos_shapes.py --workdir runs/fcos_shapes
Smoke:     python train.py --config configs/fcos_shapes.py:smoke --workdir /tmp/fcos_smoke
Hardware:  a 2-core CPU (no accelerator needed); the shapes dataset is prepared offline on first use.
Model:     CPU-sized FCOS: ResNet-18 of width 16 (BatchNorm, trained from scratch), FPN with 64
           channels on P3..P5 only (at 128 x 128, P6/P7 would be 2 x 2 and 1 x 1; the shapes are
           11-56 px), head towers of 2 convs x 64 with GroupNorm. Regression ranges are the paper's
           halved (``size_of_interest=(32, 64)``: P3 takes max(l, t, r, b) <= 32 px, P4 32-64, P5
           the rest), so the 128 px images use all three levels. Otherwise the improved FCOS as in
           torchvision: centre sampling radius 1.5, GIoU loss, centerness on the regression branch,
           relu distances in strides, focal loss alpha 0.25 gamma 2, prior 0.01; inference: class
           probability > 0.05, score sqrt(cls * centerness), top-1000 per level, NMS 0.6, 100
           detections.
Expected:  validation mAP@0.5 (VOC, 200 images) 0.624 after 1500 steps (0.372 at 500, 0.572 at
           1000; AP circle 0.82, cross 0.67, square 0.59, star 0.55, triangle 0.49); about 44 min
           wall on the shared 2-core CPU under heavy load from other jobs (load average ~18-20),
           so expect it faster on idle cores (measured 2026-11-21 with this command).
"""

from configs.common import base


def get_config(arg: str | None = None):
  c = base.base_config()
  c.task = "detection"
  c.model.name = "fcos"
  c.model.backbone = "resnet18"
  c.model.backbone_args = dict(width=16, norm="batch", axis_name="data")
  c.model.fpn_features = 64
  c.model.min_level = 3
  c.model.max_level = 5
  c.model.head_features = 64
  c.model.head_convs = 2
  c.model.head_norm = "group"
  c.model.size_of_interest = (32.0, 64.0)
  c.model.center_sampling_radius = 1.5
  c.model.reg_activation = "relu"
  c.model.box_loss = "giou"
  c.model.centerness_on_reg = True
  c.model.score_threshold = 0.05
  c.model.topk_per_level = 1000
  c.model.nms_threshold = 0.6
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
    raise ValueError(f"unknown config argument {arg!r}; use configs/fcos_shapes.py or :smoke")
  return c
