"""Convolution blocks shared by the segmentation and detection families.

``ConvNormAct`` is the conv -> norm -> activation unit almost every network here is built from
(VGG, U-Net, SegNet, ResNet stems, FPN/ASPP heads). As in Flax's ``examples/imagenet/models.py``,
the block does not choose its convolution, normalization or activation: the parent module injects
them as constructors, usually bound once per ``__call__``::

  conv = functools.partial(nn.Conv, dtype=self.dtype, kernel_init=init)
  norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=0.9,
                           epsilon=1e-5, axis_name=self.axis_name)      # or None: no norm
  x = ConvNormAct(64, conv=conv, norm=norm, act=nn.relu)(x)

so train/eval mode, cross-replica BatchNorm and the compute dtype are decided in one place.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import flax.linen as nn

__all__ = ["ConvNormAct", "ModuleDef"]

ModuleDef = Any  # a Module constructor, e.g. nn.Conv or functools.partial(nn.BatchNorm, ...)


class ConvNormAct(nn.Module):
  """``act(norm(conv(x)))``: a convolution, an optional normalization and an optional activation.

  Attributes:
    features: output channels.
    kernel_size: ``(k_h, k_w)`` (an int means square).
    strides: ``(s_h, s_w)`` (an int means both).
    padding: ``"SAME"``, ``"VALID"`` or explicit pairs, as ``nn.Conv``.
    conv: convolution constructor, called as ``conv(features, kernel_size, strides=..., padding=...,
      use_bias=..., name="conv")``.
    norm: normalization constructor (e.g. ``partial(nn.BatchNorm, use_running_average=...)``), called
      as ``norm(name="norm")``; ``None`` for no normalization.
    act: activation function (e.g. ``nn.relu``); ``None`` for a linear block.
    use_bias: conv bias; ``None`` (default) means a bias only without ``norm`` (a bias before
      BatchNorm is cancelled by its mean subtraction).

  Input ``[B, H, W, C_in]`` (NHWC) -> ``[B, H', W', features]``.
  """
  features: int
  kernel_size: int | Sequence[int] = (3, 3)
  strides: int | Sequence[int] = (1, 1)
  padding: Any = "SAME"
  conv: ModuleDef = nn.Conv
  norm: ModuleDef | None = None
  act: Callable[[Any], Any] | None = nn.relu
  use_bias: bool | None = None

  @nn.compact
  def __call__(self, x):
    kernel_size = _pair(self.kernel_size)
    strides = _pair(self.strides)
    use_bias = self.norm is None if self.use_bias is None else self.use_bias
    x = self.conv(self.features, kernel_size, strides=strides, padding=self.padding,
                  use_bias=use_bias, name="conv")(x)  # (B, H', W', features)
    if self.norm is not None:
      x = self.norm(name="norm")(x)
    if self.act is not None:
      x = self.act(x)
    return x


def _pair(v: int | Sequence[int]) -> tuple[int, int]:
  if isinstance(v, int):
    return (v, v)
  v = tuple(v)
  if len(v) != 2:
    raise ValueError(f"expected an int or a pair (h, w), got {v!r}.")
  return v
