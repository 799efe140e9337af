"""Faster R-CNN (Ren et al., NeurIPS 2015), ResNet-C4 style, on the built-in shapes dataset.

Command:   python train.py --config configs/faster_rcnn_shapes.py --workdir runs/faster_rcnn_shapes
Smoke:     python train.py --config configs/faster_rcnn_shapes.py:smoke --workdir /tmp/frcnn_smoke
Hardware:  a 2-core CPU (no accelerator needed); the shapes dataset is prepared offline on first use.
Model:     the paper's C4 design at a tiny width: a ResNet-18 (width 16, BatchNorm, trained from
           scratch, C4 dilated to stride 8: 16 x 16 for 128 px) feeding the RPN with k = 9 anchors
           (3 scales x 3 ratios, scaled to the 11-56 px shapes: 16/32/64 px) and 2k softmax
           scores; proposals: top 600 -> NMS 0.7 -> 150 (train) / 100 (test); 64 RoIs per image
           (25% foreground, background [0, 0.5)); RoIAlign 7 x 7 on C4 and a one-convolution box
           head + FC 256 (the paper's C4 head, ResNet's res5 on 14 x 14 RoIs, is
           model.box_head.kind="res5" with model.roi_heads.output_size=14: 4-5x slower per step
           in CPU measurements); softmax classifier and class-specific box regression. AdamW 2e-3, cosine,
           1500 steps of 8 images. (Paper-size settings: model.preset="c4" with the default
           ResNet-50, 800 px images.)
Expected:  validation mAP@0.5 0.613 (VOC AP, all-point; 0.307 at step 500, 0.532 at 1000) after
           1500 steps: 39 min wall on the shared 2-core CPU under a load average of ~17 (6.6 min
           of CPU time), measured 2026-11-21 with
           `python train.py --config configs/faster_rcnn_shapes.py --workdir /tmp/runs/frcnn`.
"""

from configs.common import base


def get_config(arg: str | None = None):
  c = base.base_config()
  c.task = "detection"
  c.eval.best_metric = "mAP"
  c.eval.metric = "voc"
  c.model.name = "faster_rcnn"
  c.model.preset = "c4"
  c.model.axis_name = "data"  # cross-replica BatchNorm under data parallelism
  c.model.backbone = {"name": "resnet18", "width": 16, "norm": "batch", "output_stride": 8}
  c.model.rpn = {
      "levels": ("C4",),
      "anchor_sizes": ((16, 32, 64),),
      "pre_nms_top_n_train": 600,
      "post_nms_top_n_train": 150,
      "pre_nms_top_n_test": 600,
      "post_nms_top_n_test": 100,
  }
  c.model.roi_heads = {
      "feature": "C4",
      "output_size": 7,
      "batch_size_per_image": 64,
      "detections_per_image": 50,
  }
  # The paper's res5 head on 14 x 14 RoIs ({"kind": "res5"}, roi_heads.output_size=14) made a
  # step 4-5x slower on the CPU; a one-convolution head keeps the run short.
  c.model.box_head = {"kind": "conv", "num_convs": 1, "conv_features": 32,
                      "representation_size": 256}
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
    c.model.rpn.pre_nms_top_n_train = 100
    c.model.rpn.post_nms_top_n_train = 32
    c.model.rpn.pre_nms_top_n_test = 100
    c.model.rpn.post_nms_top_n_test = 32
    c.model.roi_heads.batch_size_per_image = 32
    c.model.roi_heads.detections_per_image = 20
  elif arg:
    raise ValueError(f"unknown config argument {arg!r}; use configs/faster_rcnn_shapes.py or :smoke")
  return c
