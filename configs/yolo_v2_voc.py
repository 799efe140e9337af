"""YOLOv2 (Redmon and Farhadi, "YOLO9000: Better, Faster, Stronger", CVPR 2017) on PASCAL VOC 07+12,
evaluated on VOC 2007 test.

Command:   python train.py --config configs/yolo_v2_voc.py --workdir runs/yolo_v2_voc
Smoke:     python train.py --config configs/yolo_v2_voc.py:smoke --workdir /tmp/yolo_v2_voc_smoke
Hardware:  one accelerator (Darknet's yolo-voc.cfg: batch 64). Needs `voc/2007` and `voc/2012`
           prepared as TFDS array_record (see jaxvision.data.tfds_sources; needs the `tf` extra).
Model:     the paper's network: Darknet-19 (Table 6) with BatchNorm, the detection head of Sec. 2
           (three 3x3 convs of 1024, passthrough from the 26 x 26 map through a 1x1 conv of 64 and
           space-to-depth), 5 priors per cell (the paper's k-means VOC priors, yolo-voc.cfg), direct
           location prediction, Darknet's region loss. Multi-scale training (Sec. 2): every 10
           steps a size out of 320, 352, ..., 608 (grids 10..19) for the whole batch, one compiled
           step; evaluation at 416 x 416 (13 x 13). Data "07+12" as configs/yolo_v1_voc.py (scale
           0.8-1.2, photometric distortion, flips). The paper's schedule: 160 epochs of batch 64
           (41400 steps), lr 1e-3 divided by 10 at epochs 60 and 90 (steps 15500 and 23300), SGD
           momentum 0.9, weight decay 5e-4.
           Differences: Darknet-19 starts from random weights (the paper pre-trains it on ImageNet,
           not available as a torchvision file); 500 warm-up steps.
Expected:  not measured yet (no accelerator or VOC data on the development machine). For
           comparison, not a claim: the paper reports 76.8 mAP on VOC 2007 test at 416 x 416 (Table 3,
           with its ImageNet pre-training).
Smoke:     VOC is not available offline, so `:smoke` is `yolo_v2_shapes.py:smoke` (the config test
           runs it once for both); the full-size model is checked with jax.eval_shape.
"""

from configs import yolo_v1_voc, yolo_v2_shapes
from configs.common import base


def get_config(arg: str | None = None):
  if arg not in (None, "smoke"):
    raise ValueError(f"unknown config argument {arg!r}; use configs/yolo_v2_voc.py or :smoke")
  if arg == "smoke":
    return yolo_v2_shapes.get_config("smoke")
  c = yolo_v1_voc.voc0712(base.base_config(), 416)
  c.model.name = "yolo_v2"
  c.model.backbone = "paper"
  c.model.norm = "batch"
  c.model.axis_name = "data"  # cross-replica BatchNorm under data parallelism
  c.model.head_width = 1024
  c.model.passthrough_width = 64
  c.model.priors = ()  # empty: the paper's VOC priors (jaxvision.models.detection.yolo.VOC_PRIORS)
  c.model.multiscale_sizes = tuple((s, s) for s in range(320, 609, 32))
  c.model.multiscale_every = 10
  c.model.score_threshold = 0.01
  c.model.iou_threshold = 0.45
  c.model.max_detections = 100
  base.sgd_step_schedule(c, learning_rate=1e-3, decay_steps=(15500, 23300),
                         weight_decay=5e-4)
  c.train.steps = 41400
  return c
