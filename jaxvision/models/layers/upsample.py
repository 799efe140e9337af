"""2x down/upsampling blocks of the encoder-decoder families (SegNet, DeconvNet, stacked hourglass).

The lecture's upsampling options, in one place so a family can make the choice a config key:

* ``"max_unpool"``: SegNet/DeconvNet's unpooling with the encoder's max-pooling indices ("switch
  variables"): each value goes back exactly where the maximum came from, zeros elsewhere
  (``jaxvision.ops.unpool.max_unpool``). Needs the ``indices`` of ``max_pool_2x2_with_argmax``.
* ``"nearest"``: nearest-neighbour unpooling (each value copied into its 2x2 block; the stacked
  hourglass's choice).
* ``"bed_of_nails"``: the value at the top-left of its 2x2 block, zeros elsewhere.
* ``"bilinear"``: fixed bilinear resizing (PyTorch's ``align_corners=False``).
* ``"transposed"``: a learnable stride-2 transposed convolution ("deconvolution"), kernel
  ``kernel_size`` (2: no overlap; 3: overlapping, the lecture's checkerboard example).
* ``"resize_conv"``: nearest-neighbour 2x resize then a 3x3 convolution (Odena et al. 2016's remedy
  for checkerboard artefacts: upsampling separated from the convolution).
* ``"pixel_shuffle"``: a 3x3 convolution to ``4 x features`` channels, then the sub-pixel
  rearrangement (Shi et al. 2016).

Odd sizes. ``max_pool_2x2_with_argmax`` pools in *ceil* mode (Caffe's, which SegNet and DeconvNet
used): an odd height or width gets one row/column of ``-inf`` at the bottom/right, so no pixel is
dropped and ``ceil(H / 2)`` rows come out; the indices are flat positions ``row * W + col`` in the
*unpadded* ``H x W`` plane (PyTorch's ``ceil_mode=True`` convention), so ``max_unpool`` can write
straight back into ``H x W``. Every method of ``Upsample2x`` takes the target size ``out_hw``
(the encoder's pre-pooling size) and crops its ``2h x 2w`` result to it.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from jaxvision.models.layers.conv import Conv, ConvTranspose, ModuleDef
from jaxvision.ops.unpool import (bed_of_nails_unpool, max_pool_with_argmax, max_unpool,
                                  nearest_unpool, pixel_shuffle, resize_bilinear, resize_nearest)

__all__ = ["UPSAMPLE_METHODS", "LEARNABLE_UPSAMPLE_METHODS", "max_pool_2x2_with_argmax",
           "max_pool_2x2", "Upsample2x"]

UPSAMPLE_METHODS = ("max_unpool", "nearest", "bed_of_nails", "bilinear", "transposed",
                    "resize_conv", "pixel_shuffle")
LEARNABLE_UPSAMPLE_METHODS = ("transposed", "resize_conv", "pixel_shuffle")


def _ceil_pad(x):
  """Pads an odd height/width of ``x [B, H, W, C]`` by one row/column of ``-inf`` (bottom/right)."""
  _, h, w, _ = x.shape
  if h % 2 == 0 and w % 2 == 0:
    return x
  return jnp.pad(x, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), constant_values=-jnp.inf)


def max_pool_2x2_with_argmax(x):
  """2x2 stride-2 max pooling in ceil mode that also returns the argmax ("switch") positions.

  Args:
    x: float ``[B, H, W, C]``.

  Returns:
    ``(pooled, indices)``, both ``[B, ceil(H/2), ceil(W/2), C]``; ``indices`` int32 flat
    positions ``row * W + col`` in the unpadded ``H x W`` plane of each image and channel (the
    padding never wins: each window holds at least one real pixel), so
    ``max_unpool(pooled, indices, (H, W))`` puts every maximum back in place.
  """
  if not hasattr(x, "ndim") or x.ndim != 4 or not jnp.issubdtype(x.dtype, jnp.floating):
    raise ValueError(f"x must be a float [B, H, W, C] array, got {getattr(x, 'shape', type(x))} "
                     f"{getattr(x, 'dtype', '')}.")
  _, h, w, _ = x.shape
  xp = _ceil_pad(x)  # (B, H + H%2, W + W%2, C)
  pooled, idx = max_pool_with_argmax(xp, 2, 2)  # idx in the padded plane of width W + W%2
  if w % 2:
    row, col = idx // (w + 1), idx % (w + 1)
    idx = row * w + col  # the same pixel in the unpadded plane (col < W: padding never wins)
  return pooled, idx.astype(jnp.int32)


def max_pool_2x2(x):
  """2x2 stride-2 max pooling in ceil mode, without indices: ``[B, ceil(H/2), ceil(W/2), C]``."""
  return nn.max_pool(_ceil_pad(x), (2, 2), strides=(2, 2), padding="VALID")


class Upsample2x(nn.Module):
  """2x upsampling by ``method`` (see the module docstring), cropped to ``out_hw``.

  Attributes:
    method: one of ``UPSAMPLE_METHODS``.
    features: output channels of the learnable methods (``LEARNABLE_UPSAMPLE_METHODS``); ``None``
      keeps the input's. The fixed methods always keep the input's channels.
    kernel_size: kernel of ``"transposed"`` (2: each output pixel has one input pixel; larger kernels
      overlap, ``"SAME"`` padding keeps the output at exactly ``2h x 2w``).
    conv, conv_transpose: convolution constructors (``nn.Conv`` / ``nn.ConvTranspose`` with the
      parent's dtype and initializer).

  ``__call__(x [B, h, w, C], out_hw, indices=None) -> [B, H, W, C']`` with ``(H, W) = out_hw``,
  ``2h - 1 <= H <= 2h`` (ceil-mode pooling of an odd size gives ``h = ceil(H / 2)``).
  ``indices`` (from ``max_pool_2x2_with_argmax`` of the ``H x W`` map) is required by
  ``"max_unpool"`` and ignored otherwise.
  """
  method: str = "nearest"
  features: int | None = None
  kernel_size: int = 2
  conv: ModuleDef = Conv
  conv_transpose: ModuleDef = ConvTranspose

  @nn.compact
  def __call__(self, x, out_hw: Sequence[int], indices=None):
    if self.method not in UPSAMPLE_METHODS:
      raise ValueError(f"upsampling method must be one of {UPSAMPLE_METHODS}, got {self.method!r}.")
    b, h, w, c = x.shape
    oh, ow = int(out_hw[0]), int(out_hw[1])
    if not (2 * h - 1 <= oh <= 2 * h and 2 * w - 1 <= ow <= 2 * w):
      raise ValueError(f"out_hw {(oh, ow)} is not a 2x upsampling of x's size {(h, w)} (expected "
                       f"{2 * h - 1}..{2 * h} x {2 * w - 1}..{2 * w}).")
    features = c if self.features is None else self.features
    if self.method == "max_unpool":
      if indices is None:
        raise ValueError("upsampling 'max_unpool' needs the encoder's max-pooling indices.")
      return max_unpool(x, indices, (oh, ow))  # (B, H, W, C): values at their argmax, 0 elsewhere
    if self.method == "nearest":
      y = nearest_unpool(x, 2)  # (B, 2h, 2w, C)
    elif self.method == "bed_of_nails":
      y = bed_of_nails_unpool(x, 2)  # (B, 2h, 2w, C)
    elif self.method == "bilinear":
      # Resizing h -> H directly (not 2h then crop) keeps the sample grid aligned for odd H.
      return resize_bilinear(x, (oh, ow), align_corners=False)  # (B, H, W, C)
    elif self.method == "transposed":
      k = self.kernel_size
      y = self.conv_transpose(features, (k, k), strides=(2, 2), padding="SAME",
                              name="conv")(x)  # (B, 2h, 2w, F)
    elif self.method == "resize_conv":
      y = resize_nearest(x, (2 * h, 2 * w))  # (B, 2h, 2w, C)
      y = self.conv(features, (3, 3), padding="SAME", name="conv")(y)  # (B, 2h, 2w, F)
    else:  # pixel_shuffle
      y = self.conv(4 * features, (3, 3), padding="SAME", name="conv")(x)  # (B, h, w, 4F)
      y = pixel_shuffle(y, 2)  # (B, 2h, 2w, F)
    return y[:, :oh, :ow]  # (B, H, W, C'): drop the ceil-mode row/column
