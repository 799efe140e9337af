"""FCN-8s (Long, Shelhamer and Darrell, "Fully Convolutional Networks for Semantic Segmentation",
CVPR 2015) on the built-in shapes dataset, with a CPU-sized VGG-16.

Command:   python train.py --config configs/fcn8s_shapes.py --workdir runs/fcn8s
Smoke:     python train.py --config configs/fcn8s_shapes.py:smoke --workdir /tmp/fcn8s_smoke
Hardware:  a 2-core CPU (no accelerator needed); the shapes dataset is prepared offline on first use.
Model:     VGG-16 at 1/8 width (8..64 channels, fc6/fc7 64) with BatchNorm (not in the paper), the
           "same" alignment (padded convolutions, pools rounding up; model.alignment="paper" is
           Caffe's pad-100 geometry), skips from pool4 and pool3, learned bilinear-initialised
           upsampling, square roots of the median-frequency class weights. The paper's network:
           model.width=64, model.fc_features=4096, model.norm=None, model.alignment="paper".
Expected:  validation mIoU 0.631, pixel accuracy 0.940 after 2000 steps (0.316 / 0.490 / 0.620 at
           steps 500 / 1000 / 1500), 6 min 29 s wall on an idle 2-core CPU, data prepared
           (measured 2026-11-22 with this command; the same 0.631 again in the side-by-side run below).
           With `python benchmarks/fcn_variants_shapes.py --steps 2000 --batch_size 8` (the three
           configs' full budget, evaluated once at the end; idle 2-core CPU, 2026-11-22;
           benchmarks/results_fcn_variants_2000_cpu.jsonl): FCN-32s / 16s / 8s val mIoU
           0.382 / 0.589 / 0.631, pixel accuracy 0.887 / 0.929 / 0.940, boundary F (2 px)
           0.198 / 0.352 / 0.436, training 6.0 / 6.4 / 6.3 min wall.
           Earlier, on the shared 2-core CPU,
           with `python benchmarks/fcn_variants_shapes.py --steps 600 --batch_size 4` (this config,
           600 steps of 4 images): val mIoU 0.242, pixel accuracy 0.880, boundary F (2 px)
           0.168; FCN-32s / 16s / 8s: mIoU 0.170 / 0.210 / 0.242, boundary F 0.033 / 0.099 / 0.168.
"""

from configs.common import backbones, base


def get_config(arg: str | None = None):
  c = base.base_config()
  c.model.name = "fcn"
  c.model.variant = "8s"
  c.model.alignment = "same"
  c.model.width = backbones.TINY_VGG16["width"]
  c.model.fc_features = backbones.TINY_VGG16["fc_features"]
  c.model.norm = backbones.TINY_VGG16["norm"]
  c.model.dropout_rate = 0.1
  c.model.axis_name = "data"  # cross-replica BatchNorm under data parallelism
  c.model.class_weights = backbones.SHAPES_SQRT_CLASS_WEIGHTS
  c.data.batch_size = 8
  c.optim.learning_rate = 3e-3
  c.optim.warmup_steps = 50
  c.train.steps = 2000
  c.train.eval_every = 500
  c.train.checkpoint_every = 250
  if arg == "smoke":
    c = base.apply_smoke(c)
    c.model.width = 4
    c.model.fc_features = 8
  elif arg:
    raise ValueError(f"unknown config argument {arg!r}; use configs/fcn8s_shapes.py or :smoke")
  return c
