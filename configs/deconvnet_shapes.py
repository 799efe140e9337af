"""DeconvNet (Noh, Hong and Han, ICCV 2015) on the built-in shapes dataset.

Command:   python train.py --config configs/deconvnet_shapes.py --workdir runs/deconvnet
Smoke:     python train.py --config configs/deconvnet_shapes.py:smoke --workdir /tmp/deconvnet_smoke
Hardware:  a 2-core CPU (no accelerator needed); the shapes dataset is prepared offline on first use.
Model:     the paper's layout (VGG conv stages with switch variables, fc6 as a convolution covering
           the whole last pooled map so the code is 1 x 1 as on the paper's 224 px proposals, fc7 1x1,
           deconv-fc6, then unpooling + 3x3 deconvolution layers mirroring the encoder, BN after
           every layer) shrunk for 128 px: 4 stages of 2 layers with 8/16/32/32 channels, pool4 is
           8 x 8 so fc6 is 8 x 8 with 64 channels. The paper's network (13 convolutions, 7x7 fc6 of
           4096) is `--config.model.preset=paper` on inputs >= 193 px.
Expected:  validation mIoU 0.183, pixel accuracy 0.805 after 2000 steps (0.131 / 0.152 / 0.173 at
           steps 500 / 1000 / 1500; background IoU 0.88, every shape <= 0.08), 7 min 22 s wall on an
           idle 2-core CPU, data prepared (measured 2026-11-22 with this command): the whole-image
           1 x 1 code of this narrow network does not yet tell the shapes apart at this budget.
           Short runs measured on a shared 2-core CPU at 64 px, 800 steps of batch 8, constant Adam 3e-3 (first 100 validation
           images): val mIoU 0.013 -> 0.158 with the 1 x 1 code (fc_kernel 4), 0.173 with fc_kernel 2
           (tests/models/segmentation/test_deconvnet.py::test_deconvnet_learns_shapes).
"""

from configs.common import base

SHAPES_MEDIAN_FREQUENCY = (0.064, 0.649, 0.999, 1.537, 1.494, 1.001)


def get_config(arg: str | None = None):
  c = base.base_config()
  c.model.name = "deconvnet"
  c.model.stage_depths = (2, 2, 2, 2)
  c.model.widths = (8, 16, 32, 32)
  c.model.fc_features = 64
  c.model.fc_kernel = 8  # 128 / 2**4: fc6 sees the whole pool4 map, as the paper's 7x7 on pool5
  c.model.upsampling = "max_unpool"
  c.model.norm = "batch"
  c.model.axis_name = "data"
  c.model.class_weights = SHAPES_MEDIAN_FREQUENCY
  c.data.batch_size = 8
  c.optim.learning_rate = 3e-3
  c.optim.warmup_steps = 50
  c.train.steps = 2000
  c.train.eval_every = 500
  c.train.checkpoint_every = 250
  if arg == "smoke":
    c = base.apply_smoke(c)
    c.model.stage_depths = (1, 1)
    c.model.widths = (4, 8)
    c.model.fc_features = 8
    c.model.fc_kernel = 3
  elif arg:
    raise ValueError(f"unknown config argument {arg!r}; use configs/deconvnet_shapes.py or :smoke")
  return c
