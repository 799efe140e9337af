"""Convolution layers: ``flax.linen`` vs jaxvision's drop-in subclasses, side by side.

Each pair computes the same function with the same parameters; jaxvision's rewrites a case that
XLA:CPU handles badly as matrix products:

* ``conv_transpose``: ``nn.ConvTranspose`` vs ``jaxvision.models.layers.ConvTranspose`` (a kernel
  that is a multiple of the stride as products + depth-to-space; XLA:CPU lowers the gradient of
  ``lax.conv_transpose`` to a slow generic loop) at the shapes of U-Net's up-convolutions (8 images
  of the default's 64 px input), Mask R-CNN's ``conv5_mask`` (RoIs of 14 x 14 x 256) and an FCN 2x
  upsampling.
* ``conv1x1``: ``nn.Conv`` vs ``jaxvision.models.layers.Conv`` (a ``1 x 1`` convolution as
  ``x[:, ::s, ::s] @ W``) at the shapes of ResNet-50's bottleneck 1x1 convolutions and projection
  shortcuts for 2 images of 128 px (output stride 8, as the segmentation pairs of
  ``train_step.py``) and of 512 px (output stride 32).

Times the forward and the forward + backward (input and parameter gradients) of each, interleaved;
one JSON line per (case, pass) with ``ratio = flax_ms / jaxvision_ms``.

    python benchmarks/conv_layers.py                      # both kinds
    python benchmarks/conv_layers.py --kinds conv1x1 --repeats 7
"""

from __future__ import annotations

import argparse
import pathlib
import sys

import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import _common  # noqa: E402

# (name, input NHWC, features, kernel, stride, transpose_kernel)
CONV_TRANSPOSE_CASES = (
    ("unet_up1", (8, 8, 8, 256), 128, 2, 2, False),
    ("unet_up2", (8, 16, 16, 128), 64, 2, 2, False),
    ("unet_up3", (8, 32, 32, 64), 32, 2, 2, False),
    ("unet_up4", (8, 64, 64, 32), 16, 2, 2, False),
    ("mask_rcnn_conv5_mask_64_rois", (64, 14, 14, 256), 256, 2, 2, False),
    ("fcn_2x_upsample", (8, 16, 16, 21), 21, 4, 2, True),
)

# (name, input NHWC, features, stride): ResNet-50 1x1 convolutions.
CONV1X1_CASES = (
    ("r50_128px_os8_layer1_expand", (2, 32, 32, 64), 256, 1),
    ("r50_128px_os8_layer2_reduce", (2, 16, 16, 512), 128, 1),
    ("r50_128px_os8_layer3_reduce", (2, 16, 16, 1024), 256, 1),
    ("r50_128px_os8_layer3_expand", (2, 16, 16, 256), 1024, 1),
    ("r50_128px_os8_layer4_expand", (2, 16, 16, 512), 2048, 1),
    ("r50_128px_layer2_shortcut", (2, 32, 32, 256), 512, 2),
    ("r50_512px_layer1_reduce", (2, 128, 128, 256), 64, 1),
    ("r50_512px_layer2_expand", (2, 64, 64, 128), 512, 1),
    ("r50_512px_layer3_reduce", (2, 32, 32, 1024), 256, 1),
    ("r50_512px_layer4_expand", (2, 16, 16, 512), 2048, 1),
)
KINDS = ("conv_transpose", "conv1x1")


def _compare(kind, name, mods, variables, x, repeats, env, fields):
  import jax  # noqa: PLC0415
  import jax.numpy as jnp  # noqa: PLC0415

  for mode in ("forward", "forward_backward"):
    fns = {}
    for side, mod in mods.items():
      if mode == "forward":
        f = jax.jit(mod.apply)
      else:
        f = jax.jit(jax.grad(lambda v, x, mod=mod: jnp.sum(mod.apply(v, x) ** 2), argnums=(0, 1)))
      fns[side] = lambda f=f: jax.block_until_ready(f(variables, x))
    times = _common.time_interleaved(fns, repeats=repeats, warmup=1)
    fm, jm = times["flax"]["median_ms"], times["jaxvision"]["median_ms"]
    _common.emit({"benchmark": kind, "case": name, "mode": mode, **fields,
                  "flax_ms": fm, "jaxvision_ms": jm, "ratio": round(fm / jm, 2), **env})


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--kinds", default=",".join(KINDS),
                      help=f"comma-separated subset of {KINDS}")
  args = parser.parse_args()
  kinds = [k for k in args.kinds.split(",") if k]
  if not kinds or any(k not in KINDS for k in kinds):
    parser.error(f"--kinds must be a comma-separated subset of {KINDS}, got {args.kinds!r}")

  import flax.linen as nn  # noqa: PLC0415
  import jax  # noqa: PLC0415
  import jax.numpy as jnp  # noqa: PLC0415

  from jaxvision.models.layers import Conv, ConvTranspose  # noqa: PLC0415

  env = _common.environment()

  def inputs(shape):
    return jnp.asarray(np.random.default_rng(0).normal(size=shape), jnp.float32)

  if "conv_transpose" in kinds:
    for name, shape, features, k, s, tk in CONV_TRANSPOSE_CASES:
      x = inputs(shape)
      kw = dict(features=features, kernel_size=(k, k), strides=(s, s), padding="VALID",
                transpose_kernel=tk)
      mods = {"flax": nn.ConvTranspose(**kw), "jaxvision": ConvTranspose(**kw)}
      variables = mods["flax"].init(jax.random.PRNGKey(0), x[:1])
      _compare("conv_transpose", name, mods, variables, x, args.repeats, env,
               {"input_nhwc": list(shape), "features": features, "kernel": k, "stride": s})
  if "conv1x1" in kinds:
    for name, shape, features, s in CONV1X1_CASES:
      x = inputs(shape)
      kw = dict(features=features, kernel_size=(1, 1), strides=(s, s), padding=((0, 0), (0, 0)),
                use_bias=False)
      mods = {"flax": nn.Conv(**kw), "jaxvision": Conv(**kw)}
      variables = mods["flax"].init(jax.random.PRNGKey(0), x[:1])
      _compare("conv1x1", name, mods, variables, x, args.repeats, env,
               {"input_nhwc": list(shape), "features": features, "stride": s})


if __name__ == "__main__":
  main()
