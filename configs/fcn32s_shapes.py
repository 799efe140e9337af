"""FCN-32s (Long, Shelhamer and Darrell, "Fully Convolutional Networks for Semantic Segmentation",
CVPR 2015) on the built-in shapes dataset: configs/fcn8s_shapes.py with model.variant="32s".

Command:   python train.py --config configs/fcn32s_shapes.py --workdir runs/fcn32s
Smoke:     python train.py --config configs/fcn32s_shapes.py:smoke --workdir /tmp/fcn32s_smoke
Hardware:  a 2-core CPU (no accelerator needed); the shapes dataset is prepared offline on first use.
Model:     as configs/fcn8s_shapes.py (VGG-16 at 1/8 width with BatchNorm), no skips, one
           upsampling by 32 from the stride-32 scores.
Expected:  validation mIoU 0.382, pixel accuracy 0.887, boundary F (2 px) 0.198 after 2000 steps,
           6 min 3 s of training on an idle 2-core CPU (2026-11-22).
           Measured with `python benchmarks/fcn_variants_shapes.py --steps 2000 --batch_size 8`
           (this config's full budget, evaluated once at the end), which trains FCN-32s/16s/8s
           side by side; the three results are in that script's docstring.
           Earlier, on the shared 2-core CPU,
           with `python benchmarks/fcn_variants_shapes.py --steps 600 --batch_size 4` (this config,
           600 steps of 4 images): val mIoU 0.170, pixel accuracy 0.859, boundary F (2 px)
           0.033; FCN-32s / 16s / 8s: mIoU 0.170 / 0.210 / 0.242, boundary F 0.033 / 0.099 / 0.168.
"""

from configs import fcn8s_shapes


def get_config(arg: str | None = None):
  c = fcn8s_shapes.get_config(arg)
  c.model.variant = "32s"
  return c
