"""YOLO v1 (Redmon et al., "You Only Look Once: Unified, Real-Time Object Detection", CVPR 2016) on
PASCAL VOC 07+12, evaluated on VOC 2007 test.

Command:   python train.py --config configs/yolo_v1_voc.py --workdir runs/yolo_v1_voc
Smoke:     python train.py --config configs/yolo_v1_voc.py:smoke --workdir /tmp/yolo_v1_voc_smoke
Hardware:  one accelerator (the paper: batch 64). Needs `voc/2007` and `voc/2012` prepared as TFDS
           array_record (see jaxvision.data.tfds_sources; needs the `tf` extra).
Model:     the paper's network: 24 conv layers (Fig. 3, leaky ReLU 0.1) on 448 x 448 images, two FC
           layers (4096, dropout 0.5) to the 7 x 7 x 30 grid (S = 7, B = 2, C = 20); sum-squared loss
           with lambda_coord 5, lambda_noobj 0.5, sqrt(w), sqrt(h); class-specific confidence at
           inference, NMS 0.45. Data "07+12": VOC 2007 trainval + VOC 2012 trainval
           (`data.extra_train`, 16551 images), the paper's augmentation approximated by random
           scaling of up to 20% (`scale_jitter` 0.8-1.2, with random crops/translations),
           photometric distortion and flips. The paper's schedule over 135 epochs of batch 64
           (34900 steps): lr raised to 1e-2 (500 warm-up steps), 1e-2 to epoch 76, 1e-3 to 106,
           1e-4 to 135; SGD momentum 0.9, weight decay 5e-4. Evaluation: VOC 2007 test, 11-point
           VOC07 mAP@0.5.
           Differences: BatchNorm after every conv (`model.norm="batch"`; the paper has none but
           pre-trains the first 20 layers on ImageNet for a week, which is not available as a
           torchvision file; `--config.model.norm=None` gives the paper's layers).
Expected:  not measured yet (no accelerator or VOC data on the development machine). For
           comparison, not a claim: the paper reports 63.4 mAP on VOC 2007 test (with its ImageNet
           pre-training).
Smoke:     VOC is not available offline, so `:smoke` is `yolo_v1_shapes.py:smoke` (the config test
           runs it once for both); the full-size model is checked with jax.eval_shape.
"""

from configs import yolo_v1_shapes
from configs.common import base, datasets


def get_config(arg: str | None = None):
  if arg not in (None, "smoke"):
    raise ValueError(f"unknown config argument {arg!r}; use configs/yolo_v1_voc.py or :smoke")
  if arg == "smoke":
    return yolo_v1_shapes.get_config("smoke")
  c = voc0712(base.base_config(), 448)
  c.model.name = "yolo_v1"
  c.model.backbone = "paper"
  c.model.grid_size = 7
  c.model.num_boxes = 2
  c.model.head = "fc"
  c.model.hidden = 4096
  c.model.dropout_rate = 0.5
  c.model.norm = "batch"
  c.model.axis_name = "data"  # cross-replica BatchNorm under data parallelism
  c.model.lambda_coord = 5.0
  c.model.lambda_noobj = 0.5
  c.model.score_threshold = 0.01
  c.model.iou_threshold = 0.45
  c.model.max_detections = 100
  base.sgd_step_schedule(c, learning_rate=1e-2, decay_steps=(19700, 27400),
                         weight_decay=5e-4)
  c.train.steps = 34900
  return c


def voc0712(c, size: int):
  """``datasets.voc0712`` at ``size x size``, batch 64, with YOLO's scale 0.8-1.2 and photometric
  distortion; 11-point VOC07 mAP@0.5; logging and checkpoint intervals (shared with
  configs/yolo_v2_voc.py)."""
  datasets.voc0712(c, (size, size), 64)
  c.data.augment.photometric = True
  c.data.augment.scale_jitter = (0.8, 1.2)
  c.train.log_every = 100
  c.train.eval_every = 5000
  c.train.checkpoint_every = 1000
  c.eval.metric = "voc"
  c.eval.use_07_metric = True
  c.eval.best_metric = "mAP"
  c.eval.best_mode = "max"
  return c
