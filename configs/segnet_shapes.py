"""SegNet (Badrinarayanan, Kendall and Cipolla, TPAMI 2017) on the built-in shapes dataset.

Command:   python train.py --config configs/segnet_shapes.py --workdir runs/segnet
Smoke:     python train.py --config configs/segnet_shapes.py:smoke --workdir /tmp/segnet_smoke
Hardware:  a 2-core CPU (no accelerator needed); the shapes dataset is prepared offline on first use.
Model:     the paper's encoder-decoder with index unpooling (3x3 conv + BN + ReLU stages, 2x2 max
           pools whose argmax indices the decoder's max unpooling reuses, 1x1 classifier), shrunk for
           128 px CPU training: 4 stages of 2 convolutions with 8/16/32/32 channels. The paper's
           network (VGG16's 13 convolutions, 64..512 channels) is `--config.model.preset=paper`;
           median-frequency class balancing as in the paper (Sec. 3.1).
Expected:  validation mIoU 0.225, pixel accuracy 0.844 after 2000 steps (0.169 / 0.209 / 0.219 at
           steps 500 / 1000 / 1500; background IoU 0.94, every shape <= 0.14), 7 min 43 s wall on an
           idle 2-core CPU, data prepared (measured 2026-11-22 with this command): this narrow
           SegNet barely separates the shapes from each other at this budget (FCN-8s, same CPU and
           steps: 0.631). Widening the two deepest stages, `"--config.model.widths=(8,16,64,128)"`
           (2026-11-22, idle CPU, 11 min): 0.225 again (0.184 / 0.205 / 0.214 at 500 / 1000 /
           1500, pixel accuracy 0.857), so the bottom's width is not what limits it. Short runs measured on a shared 2-core CPU: tests/models/segmentation/test_segnet.py::test_segnet_learns_shapes (64 px,
           stages (1, 1, 2, 2), 900 steps of batch 8, constant Adam 3e-3) val mIoU 0.019 -> 0.195;
           this model at 64 px, 1500 steps: 0.186 (on the first 100 validation images).
"""

from configs.common import base

# Median-frequency weights of the train split (background is 86% of the pixels), as computed by
# jaxvision.data.builder.median_frequency_weights on the train split (same as configs/unet_shapes.py).
SHAPES_MEDIAN_FREQUENCY = (0.064, 0.649, 0.999, 1.537, 1.494, 1.001)


def get_config(arg: str | None = None):
  c = base.base_config()
  c.model.name = "segnet"
  c.model.stage_depths = (2, 2, 2, 2)
  c.model.widths = (8, 16, 32, 32)
  c.model.kernel_size = 3
  c.model.upsampling = "max_unpool"
  c.model.norm = "batch"
  c.model.axis_name = "data"  # cross-replica BatchNorm under data parallelism
  c.model.class_weights = SHAPES_MEDIAN_FREQUENCY
  c.data.batch_size = 8
  c.optim.learning_rate = 3e-3
  c.optim.warmup_steps = 50
  c.train.steps = 2000
  c.train.eval_every = 500
  c.train.checkpoint_every = 250
  if arg == "smoke":
    c = base.apply_smoke(c)
    c.model.stage_depths = (1, 2)
    c.model.widths = (4, 8)
  elif arg:
    raise ValueError(f"unknown config argument {arg!r}; use configs/segnet_shapes.py or :smoke")
  return c
