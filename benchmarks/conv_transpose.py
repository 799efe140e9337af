"""Transposed convolutions: ``flax.linen.ConvTranspose`` vs ``jaxvision.models.layers.ConvTranspose``.

The two compute the same function with the same parameters; jaxvision's writes a kernel that is a
multiple of the stride as matrix products + depth-to-space, because XLA:CPU lowers the gradient of
``lax.conv_transpose`` to a slow generic loop. Times the forward and the forward + backward (input
and kernel gradients) of each at the shapes of U-Net's up-convolutions (8 images of the default's
64 px input), Mask R-CNN's ``conv5_mask`` (RoIs of 14 x 14 x 256) and an FCN 2x upsampling, side by
side in one run; one JSON line per (shape, pass) with ``ratio = flax_ms / jaxvision_ms``.

    python benchmarks/conv_transpose.py
    python benchmarks/conv_transpose.py --repeats 7
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
CASES = (
    ("unet_up1", (8, 8, 8, 256), 128, 2, 2, False),
    ("unet_up2", (8, 16, 16, 128), 64, 2, 2, False),
    ("unet_up3", (8, 32, 32, 64), 32, 2, 2, False),
    ("unet_up4", (8, 64, 64, 32), 16, 2, 2, False),
    ("mask_rcnn_conv5_mask_64_rois", (64, 14, 14, 256), 256, 2, 2, False),
    ("fcn_2x_upsample", (8, 16, 16, 21), 21, 4, 2, True),
)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--repeats", type=int, default=5)
  args = parser.parse_args()

  import flax.linen as nn  # noqa: PLC0415
  import jax  # noqa: PLC0415
  import jax.numpy as jnp  # noqa: PLC0415

  from jaxvision.models.layers import ConvTranspose  # noqa: PLC0415

  env = _common.environment()
  for name, shape, features, k, s, tk in CASES:
    x = jnp.asarray(np.random.default_rng(0).normal(size=shape), jnp.float32)
    kw = dict(features=features, kernel_size=(k, k), strides=(s, s), padding="VALID",
              transpose_kernel=tk)
    mods = {"flax": nn.ConvTranspose(**kw), "jaxvision": ConvTranspose(**kw)}
    variables = mods["flax"].init(jax.random.PRNGKey(0), x[:1])
    for mode in ("forward", "forward_backward"):
      fns = {}
      for side, mod in mods.items():
        if mode == "forward":
          f = jax.jit(mod.apply)
        else:
          f = jax.jit(jax.grad(lambda v, x, mod=mod: jnp.sum(mod.apply(v, x) ** 2),
                               argnums=(0, 1)))
        fns[side] = lambda f=f: jax.block_until_ready(f(variables, x))
      times = _common.time_interleaved(fns, repeats=args.repeats, warmup=1)
      fm, jm = times["flax"]["median_ms"], times["jaxvision"]["median_ms"]
      _common.emit({"benchmark": "conv_transpose", "case": name, "mode": mode,
                    "input_nhwc": list(shape), "features": features, "kernel": k, "stride": s,
                    "flax_ms": fm, "jaxvision_ms": jm, "ratio": round(fm / jm, 2), **env})


if __name__ == "__main__":
  main()
