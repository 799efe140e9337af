"""Faster R-CNN with a Feature Pyramid Network (Ren et al., NeurIPS 2015; Lin et al., CVPR 2017)
on the built-in shapes dataset.

Command:   python train.py --config configs/faster_rcnn_fpn_shapes.py --workdir runs/faster_rcnn_fpn_shapes
Smoke:     python train.py --config configs/faster_rcnn_fpn_shapes.py:smoke --workdir /tmp/frcnn_fpn_smoke
Hardware:  a 2-core CPU (no accelerator needed); the shapes dataset is prepared offline on first use.
Model:     the FPN design at a tiny width: ResNet-18 (width 16, BatchNorm, from scratch) + FPN
           (64 channels, P2..P6 with P6 by max pooling); the RPN runs on P2..P4 with one anchor
           size per level (16, 32, 64 px: the paper's 32..512 halved and cut to the 11-56 px
           shapes) x 3 ratios, 2k softmax scores, per-level top 300 before NMS 0.7, 150 (train) /
           100 (test) proposals; RoIAlign 7 x 7 from P2..P5 by the FPN level rule (at 128 px every
           RoI lands on P2), two FC layers of 256 (the paper's 1024) and the softmax / class-specific
           box predictor; 64 RoIs per image. AdamW 2e-3, cosine. (Paper-size settings:
           model.preset="fpn" with the default ResNet-50, 800 px.)
Expected:  validation mAP@0.5 0.695 (VOC AP, all-point; 0.392 at step 500, 0.620 at 1000) after
           1500 steps of 8 images: 32.5 min wall on the shared 2-core CPU under a load average of
           ~15 (6.8 min of CPU time), measured 2026-11-21 with
           `python train.py --config configs/faster_rcnn_fpn_shapes.py --workdir /tmp/runs/frcnn_fpn`.
"""

from configs.common import base


def get_config(arg: str | None = None):
  c = base.base_config()
  c.task = "detection"
  c.eval.best_metric = "mAP"
  c.eval.metric = "voc"
  c.model.name = "faster_rcnn"
  c.model.preset = "fpn"
  c.model.axis_name = "data"  # cross-replica BatchNorm under data parallelism
  c.model.backbone = {"name": "resnet18", "width": 16, "norm": "batch"}
  c.model.neck = {"features": 64}
  c.model.rpn = {
      "levels": ("P2", "P3", "P4"),
      "anchor_sizes": ((16,), (32,), (64,)),
      "pre_nms_top_n_train": 300,
      "post_nms_top_n_train": 150,
      "pre_nms_top_n_test": 300,
      "post_nms_top_n_test": 100,
  }
  c.model.roi_heads = {
      "fpn_levels": (2, 3, 4, 5),
      "output_size": 7,
      "batch_size_per_image": 64,
      "detections_per_image": 50,
  }
  c.model.box_head = {"kind": "mlp", "representation_size": 256}
  c.data.batch_size = 8
  c.data.max_boxes = 8
  c.optim.learning_rate = 2e-3
  c.optim.warmup_steps = 100
  c.optim.weight_decay = 1e-4
  c.optim.grad_clip_norm = 10.0
  c.train.steps = 1500
  c.train.log_every = 25
  c.train.eval_every = 500
  c.train.checkpoint_every = 250
  if arg == "smoke":
    c = base.apply_smoke(c)
    c.model.backbone = {"name": "resnet18", "width": 4, "norm": "batch"}
    c.model.neck = {"features": 8}
    c.model.rpn.pre_nms_top_n_train = 50
    c.model.rpn.post_nms_top_n_train = 32
    c.model.rpn.pre_nms_top_n_test = 50
    c.model.rpn.post_nms_top_n_test = 32
    c.model.roi_heads.batch_size_per_image = 32
    c.model.roi_heads.detections_per_image = 20
    c.model.box_head.representation_size = 32
  elif arg:
    raise ValueError(f"unknown config argument {arg!r}; use configs/faster_rcnn_fpn_shapes.py or "
                     ":smoke")
  return c
