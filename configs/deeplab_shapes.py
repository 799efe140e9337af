"""DeepLabv3 (Chen et al., "Rethinking Atrous Convolution for Semantic Image Segmentation", 2017)
on the built-in shapes dataset, with a CPU-sized atrous ResNet-18.

Command:   python train.py --config configs/deeplab_shapes.py --workdir runs/deeplab
Smoke:     python train.py --config configs/deeplab_shapes.py:smoke --workdir /tmp/deeplab_smoke
Hardware:  a 2-core CPU (no accelerator needed); the shapes dataset is prepared offline on first use.
Model:     ResNet-18 at 1/8 width (8..64 channels) with output stride 8 (stages 4 and 5 dilated),
           ASPP with 32 channels, image pooling and rates (3, 6, 9): the paper's (12, 24, 36) at
           output stride 8 are for 513 px crops (65 px maps); 128 px images give 16 px maps, so
           the rates are scaled by the same 1/4. 1x1 classifier, bilinear upsampling, square roots
           of the median-frequency class weights. The paper's network: model.backbone="resnet101",
           model.width=64, model.aspp_features=256, model.rates=None (by output stride).
Expected:  validation mIoU 0.450, pixel accuracy 0.912 after 2000 steps (0.265 / 0.360 / 0.426 at
           steps 500 / 1000 / 1500), 3 min 28 s wall on an idle 2-core CPU, data prepared
           (measured 2026-11-22 with this command). With the dense CRF at inference, on the same
           checkpoint (`--mode eval --config.model.crf.num_iters=5`, 41 s): mIoU 0.516, pixel
           accuracy 0.941. The learning test (tests/models/segmentation/test_deeplab.py: this
           config, 600 steps of 4 images, one device) measured val mIoU 0.225 (width 16: 0.237).
"""

import ml_collections

from configs.common import backbones, base


def get_config(arg: str | None = None):
  c = base.base_config()
  c.model.name = "deeplab"
  c.model.backbone = backbones.TINY_RESNET18["backbone"]
  c.model.width = backbones.TINY_RESNET18["width"]
  c.model.output_stride = 8
  c.model.aspp_features = 32
  c.model.rates = (3, 6, 9)
  c.model.norm = "batch"
  c.model.axis_name = "data"  # cross-replica BatchNorm under data parallelism
  c.model.class_weights = backbones.SHAPES_SQRT_CLASS_WEIGHTS
  # Dense CRF post-processing at inference (DeepLab v1/v2): off; --config.model.crf.num_iters=5
  # turns it on with benchmarks/crf.py's settings for 128 px shapes images.
  c.model.crf = ml_collections.ConfigDict(dict(
      num_iters=0, sigma_alpha=20.0, sigma_beta=13.0, sigma_gamma=3.0, w_appearance=5.0,
      w_smoothness=3.0))
  c.data.batch_size = 8
  c.optim.learning_rate = 3e-3
  c.optim.warmup_steps = 50
  c.train.steps = 2000
  c.train.eval_every = 500
  c.train.checkpoint_every = 250
  if arg == "smoke":
    c = base.apply_smoke(c)
    c.model.width = 4
    c.model.aspp_features = 8
  elif arg:
    raise ValueError(f"unknown config argument {arg!r}; use configs/deeplab_shapes.py or :smoke")
  return c
