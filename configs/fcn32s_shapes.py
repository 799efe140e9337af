"""FCN-32s (Long, Shelhamer and Darrell, "Fully Convolutional Networks for Semantic Segmentation",
CVPR 2015) on the built-in shapes dataset: configs/fcn8s_shapes.py with model.variant="32s".

Command:   python train.py --config configs/fcn32s_shapes.py --workdir runs/fcn32s
Smoke:     python train.py --config configs/fcn32s_shapes.py:smoke --workdir /tmp/fcn32s_smoke
Hardware:  a 2-core CPU (no accelerator needed); the shapes dataset is prepared offline on first use.
Model:     as configs/fcn8s_shapes.py (VGG-16 at 1/8 width with BatchNorm), no skips, one
           upsampling by 32 from the stride-32 scores.
Expected:  not measured yet with this command (benchmarks/fcn_variants_shapes.py compares the three
           variants on an equal short budget).
"""

from configs import fcn8s_shapes


def get_config(arg: str | None = None):
  c = fcn8s_shapes.get_config(arg)
  c.model.variant = "32s"
  return c
