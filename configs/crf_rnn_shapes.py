"""CRF-as-RNN (Zheng et al., "Conditional Random Fields as Recurrent Neural Networks", ICCV 2015) on
the built-in shapes dataset: a small same-padded U-Net followed by 5 mean-field iterations of a
fully connected CRF (Krähenbühl and Koltun 2011) with learned kernel weights and compatibility,
trained end to end from scratch.

Command:   python train.py --config configs/crf_rnn_shapes.py --workdir runs/crf_rnn
Smoke:     python train.py --config configs/crf_rnn_shapes.py:smoke --workdir /tmp/crf_rnn_smoke
Hardware:  a 2-core CPU works (no accelerator needed); the permutohedral lattice costs ~0.2 s per
           128 x 128 image to build on such a CPU, so an accelerator is much faster.
Model:     U-Net depth 4, 8 base features, BatchNorm (as configs/unet_shapes.py); CRF kernels
           sigma_alpha 20 px, sigma_beta 13 (RGB 0..255), sigma_gamma 3 px, initial weights 5 / 3,
           one weight per class, Potts-initialised compatibility; T = 5 in training and at test.
Expected:  not measured yet with this command. On the idle 2-core CPU (2026-11-22) it runs 2.0-2.3 s
           a step (the lattice builds for 8 images at 128 px dominate), so the 2000 steps take
           ~75 min; that run was stopped at step ~376 (training CRF cross-entropy 1.79 at step 40
           -> 1.61 at step 360) to free the CPU. Run it on an accelerator.
           The 64 x 64, 150-step run in tests/models/segmentation/test_crf_rnn.py (depth 3) went
           from val mIoU 0.007 to 0.200 (measured 2026-11, shared 2-core CPU).
"""

from configs.common import base


def get_config(arg: str | None = None):
  c = base.base_config()
  c.model.name = "crf_rnn"
  c.model.depth = 4
  c.model.base_features = 8
  c.model.norm = "batch"
  c.model.axis_name = "data"  # cross-replica BatchNorm under data parallelism
  c.model.num_iters = 5
  c.model.sigma_alpha = 20.0
  c.model.sigma_beta = 13.0
  c.model.sigma_gamma = 3.0
  c.model.w_appearance = 5.0
  c.model.w_smoothness = 3.0
  c.model.per_class_weights = True
  c.model.unary_loss_weight = 0.0
  c.model.image_mean = c.data.mean  # the CRF undoes the input normalisation (RGB 0..255)
  c.model.image_std = c.data.std
  # Median-frequency weights of the train split (as configs/unet_shapes.py).
  c.model.class_weights = (0.064, 0.649, 0.999, 1.537, 1.494, 1.001)
  c.data.batch_size = 8
  c.optim.learning_rate = 3e-3
  c.optim.warmup_steps = 50
  c.train.steps = 2000
  c.train.eval_every = 500
  c.train.checkpoint_every = 250
  if arg == "smoke":
    c = base.apply_smoke(c)
    c.model.depth = 2
    c.model.base_features = 4
    c.model.num_iters = 2
    c.data.image_size = (64, 64)  # the lattice build dominates a CPU smoke step
  elif arg:
    raise ValueError(f"unknown config argument {arg!r}; use configs/crf_rnn_shapes.py or :smoke")
  return c
