"""Atrous Spatial Pyramid Pooling, DeepLabv3 style: Chen, Papandreou, Schroff and Adam, "Rethinking
Atrous Convolution for Semantic Image Segmentation", 2017 (https://arxiv.org/abs/1706.05587),
Sec. 3.3; the pyramid of parallel atrous convolutions comes from DeepLabv2 (Chen et al., TPAMI 2018).

Branches, all ``features`` channels with norm + ReLU (paper: 256 with BatchNorm), applied to the same
input and concatenated:

* a 1x1 convolution;
* one 3x3 convolution per rate in ``rates`` with that dilation (paper: 6, 12, 18 at output stride 16,
  doubled to 12, 24, 36 at output stride 8);
* image pooling (``image_pooling=True``): global average pool -> 1x1 convolution -> norm -> ReLU ->
  bilinear upsampling to the input size (a constant map). It supplies the global context that the
  3x3 branches lose when their rate approaches the map size (their taps then fall in the padding
  and they degenerate to 1x1 filters, paper Fig. 4);

then a 1x1 projection to ``features`` + norm + ReLU and drop-out (``dropout_rate``; torchvision 0.5,
active only in training). Module names follow torchvision's ``ASPP`` order: ``branch0`` (1x1),
``branch1..`` (rates), ``pooling``, ``project``.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from jaxvision.models.layers.conv import AtrousConv, Conv, ConvNormAct
from jaxvision.models.layers.norm import make_norm

__all__ = ["ASPP"]

conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


class ASPP(nn.Module):
  """Atrous spatial pyramid pooling; see the module docstring.

  Attributes:
    features: channels of every branch and of the output (256).
    rates: dilation of each 3x3 branch.
    image_pooling: add the global-average-pooling branch.
    norm: ``"batch"``, ``"frozen"`` or None (then the convolutions have biases).
    dropout_rate: drop-out after the projection (training only; needs a ``"dropout"`` rng).
    axis_name, dtype: cross-replica BatchNorm axis, compute dtype.

  ``__call__(x [B, H, W, C], train)`` -> ``[B, H, W, features]``.
  """
  features: int = 256
  rates: Sequence[int] = (6, 12, 18)
  image_pooling: bool = True
  norm: str | None = "batch"
  dropout_rate: float = 0.5
  axis_name: str | None = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    if x.ndim != 4:
      raise ValueError(f"ASPP expects [B, H, W, C], got shape {tuple(x.shape)}.")
    if any(int(r) < 1 for r in self.rates):
      raise ValueError(f"ASPP rates must be positive ints, got {tuple(self.rates)}.")
    norm = make_norm(self.norm, train=train, axis_name=self.axis_name, dtype=self.dtype)
    conv = functools.partial(Conv, kernel_init=conv_init, dtype=self.dtype)
    unit = functools.partial(ConvNormAct, self.features, conv=conv, norm=norm, act=nn.relu)
    _, h, w, _ = x.shape
    branches = [unit((1, 1), padding="VALID", name="branch0")(x)]  # (B, H, W, F)
    for i, r in enumerate(self.rates, start=1):
      # AtrousConv = nn.Conv minus the taps that can only read padding (rate >= map size).
      dil_conv = functools.partial(AtrousConv, kernel_init=conv_init, dtype=self.dtype,
                                   kernel_dilation=(int(r), int(r)))
      branches.append(ConvNormAct(self.features, (3, 3), padding=((r, r), (r, r)), conv=dil_conv,
                                  norm=norm, act=nn.relu, name=f"branch{i}")(x))  # (B, H, W, F)
    if self.image_pooling:
      g = jnp.mean(x, axis=(1, 2), keepdims=True)  # (B, 1, 1, C)
      g = unit((1, 1), padding="VALID", name="pooling")(g)  # (B, 1, 1, F)
      # Bilinear upsampling of a 1x1 map is a broadcast.
      branches.append(jnp.broadcast_to(g, (g.shape[0], h, w, self.features)))
    y = jnp.concatenate(branches, axis=-1)  # (B, H, W, F * n_branches)
    y = unit((1, 1), padding="VALID", name="project")(y)  # (B, H, W, F)
    return nn.Dropout(self.dropout_rate, deterministic=not train or self.dropout_rate == 0)(y)
