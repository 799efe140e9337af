"""YOLOv2 (Redmon and Farhadi, "YOLO9000: Better, Faster, Stronger", CVPR 2017) on the built-in
shapes dataset.

Command:   python train.py --config configs/yolo_v2_shapes.py --workdir runs/yolo_v2_shapes
Smoke:     python train.py --config configs/yolo_v2_shapes.py:smoke --workdir /tmp/yolo_v2_smoke
Hardware:  a 2-core CPU (no accelerator needed); the shapes dataset is prepared offline on first use.
Model:     YOLOv2's head on a CPU-sized backbone: TinyBackbone (BatchNorm, leaky ReLU, 4 stride-2
           stages of 16-128 channels) to an 8 x 8 grid at 128 px (stride 16), passthrough layer from
           the 16 x 16 map (1x1 conv to 16 channels, space-to-depth 2x2), three 3x3 head convs of
           128, 5 priors per cell, direct location prediction, Darknet's region loss.
Priors:    k-means (1 - IoU distance, k = 5) of the 7009 training boxes in grid units (stride 16),
           computed with
             python -c "import numpy as np; from jaxvision.data import pipeline;
             from jaxvision.ops.anchors import kmeans_anchors as km; s, _ = pipeline.shapes_source('train');
             b = np.concatenate([pipeline.decode_shapes(s[i])['boxes'] for i in range(len(s))]);
             print(km((b[:, 2:] - b[:, :2]) / 16, 5, seed=0))"
           (mean best IoU of the boxes with their prior: 0.846; 0.789 with k = 3).
Multi-scale: `configs/yolo_v2_shapes.py:multiscale` (off by default): every 10 steps a new size
           out of 96, 128, 160 px (grids 6, 8, 10) for the whole batch, resized on the device; one
           compiled step holds the three sizes as branches of a lax.switch. Evaluation runs at
           128 px. On XLA:CPU the convolutions inside the switch ran ~8x slower per step than the
           same step without it (tiny model, batch 16: 8-27 s vs 1.0-1.5 s on the shared 2-core
           machine), so the CPU default trains at the single size 128.
Expected:  validation mAP@0.5 (VOC, all points) 0.460 after 1500 steps (0.297 at 500, 0.432 at
           1000), single size 128; 59 min wall on the shared 2-core CPU under a load of 15-25 from
           other jobs (5.4 min of CPU time), measured 2026-11-21 with this command.
"""

from configs.common import base

SHAPES_PRIORS = ((1.009, 0.998), (1.383, 1.375), (1.808, 1.837), (2.335, 2.282), (2.875, 2.904))


def get_config(arg: str | None = None):
  c = base.base_config()
  c.task = "detection"
  c.model.name = "yolo_v2"
  c.model.backbone = "tiny"
  c.model.widths = (16, 32, 64, 128)
  c.model.depth = 2
  c.model.norm = "batch"
  c.model.axis_name = "data"
  c.model.head_width = 128
  c.model.passthrough_width = 16
  c.model.priors = SHAPES_PRIORS
  c.model.multiscale_sizes = ()  # `:multiscale`: ((96, 96), (128, 128), (160, 160))
  c.model.multiscale_every = 10
  c.model.score_threshold = 0.01
  c.model.iou_threshold = 0.45
  c.model.max_detections = 100
  c.data.batch_size = 16
  c.data.max_boxes = 8
  c.optim.name = "adamw"
  c.optim.learning_rate = 1e-3
  c.optim.warmup_steps = 50
  c.optim.weight_decay = 5e-4
  c.optim.grad_clip_norm = 10.0
  c.train.steps = 1500
  c.train.eval_every = 500
  c.train.checkpoint_every = 250
  c.eval.best_metric = "mAP"
  c.eval.best_mode = "max"
  if arg == "multiscale":
    c.model.multiscale_sizes = ((96, 96), (128, 128), (160, 160))
  elif arg == "smoke":
    c = base.apply_smoke(c)
    c.model.widths = (4, 8, 8, 16)
    c.model.depth = 1
    c.model.head_width = 16
    c.model.passthrough_width = 4
  elif arg:
    raise ValueError(f"unknown config argument {arg!r}; use configs/yolo_v2_shapes.py, "
                     ":multiscale or :smoke")
  return c
