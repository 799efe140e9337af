"""Sliding-window CNN detector, convolutionalized (Sermanet et al., "OverFeat: Integrated
Recognition, Localization and Detection using Convolutional Networks", ICLR 2014) on the built-in
shapes dataset.

Command:   python train.py --config configs/sliding_window_shapes.py --workdir runs/sliding_window
Smoke:     python train.py --config configs/sliding_window_shapes.py:smoke --workdir /tmp/sw_smoke
Hardware:  a 2-core CPU (no accelerator needed); the shapes dataset is prepared offline on first use.
Model:     jaxvision.models.detection.sliding_window: a window classifier over K + 1 classes
           (3 stages of 3x3 VALID conv + ReLU + 2x2 max pool, 16/32/64 channels; a 2 x 2 "FC"
           layer of 128; window 30 px, stride 8) trained on sampled window crops (64 per image,
           25% positive: IoU >= 0.5 with a gt box) with a class-agnostic box regressor (OverFeat's
           localization head); at test time the same weights run as convolutions over the image
           at 5 scales (2, 1.41, 1, 0.71, 0.5: windows of 15-60 original pixels, 1460 windows),
           softmax scores, class-wise NMS at IoU 0.3. No proposals.
Expected:  validation mAP@0.5 0.121 (VOC AP, all-point; 0.103 at step 300) after 600 steps of 8
           images, 9.8 min wall on the shared 2-core CPU (load average 8-10 from other jobs),
           measured 2026-11-21 with
           `python train.py --config configs/sliding_window_shapes.py --workdir /tmp/runs/sw`.
"""

from configs.common import base


def get_config(arg: str | None = None):
  c = base.base_config()
  c.task = "detection"
  c.eval.best_metric = "mAP"
  c.eval.metric = "voc"
  c.model.name = "sliding_window"
  c.model.features = (16, 32, 64)
  c.model.fc_size = 2
  c.model.hidden = 128
  c.model.scales = (2.0, 1.41, 1.0, 0.71, 0.5)
  c.model.box_regression = True
  c.model.windows_per_image = 64
  c.model.positive_fraction = 0.25
  c.model.detections_per_image = 50
  c.data.batch_size = 8
  c.data.eval_batch_size = 20
  c.data.max_boxes = 8
  c.optim.learning_rate = 3e-3
  c.optim.warmup_steps = 50
  c.optim.weight_decay = 1e-4
  c.train.steps = 600
  c.train.log_every = 50
  c.train.eval_every = 300
  c.train.checkpoint_every = 300
  if arg == "smoke":
    c = base.apply_smoke(c)
    c.model.features = (4, 8)  # window 14, stride 4
    c.model.hidden = 16
    c.model.scales = (0.5, 0.25)
    c.model.windows_per_image = 16
    c.model.pre_nms_top_n = 100
    c.model.detections_per_image = 10
  elif arg:
    raise ValueError(f"unknown config argument {arg!r}; use configs/sliding_window_shapes.py or "
                     ":smoke")
  return c
