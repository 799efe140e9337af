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

``ConvTranspose`` is ``nn.ConvTranspose`` (same fields, parameters and outputs) computed as matrix
products when the kernel is a multiple of the stride with ``"VALID"`` padding (U-Net's 2x2
up-convolution, Mask R-CNN's ``conv5_mask``, FCN's ``2f x 2f`` upsampling): XLA:CPU lowers the
gradient of ``lax.conv_transpose`` (an input-dilated convolution) to a slow generic loop, while a
product and a depth-to-space reshape are fast both ways. On a 2-core CPU the product form's
forward + backward was 10-15x faster at U-Net's sizes and 36x for Mask R-CNN's (5812 -> 160 ms for
64 RoIs of 14 x 14 x 256), 2.9x for an FCN 2x upsampling (``benchmarks/conv_layers.py``,
2026-11-22), with the same values to float32 rounding.

``Conv`` is ``nn.Conv`` with ``1 x 1`` kernels computed as one matrix product (XLA:CPU's 1x1
convolutions, and their kernel gradients above all, are slower than its matrix products); every
backbone, neck and head of the library uses it in place of ``nn.Conv``.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

__all__ = ["AtrousConv", "Conv", "ConvNormAct", "ConvTranspose", "ModuleDef"]

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


def _pair(v: int | Sequence[int] | None, default: int | None = None) -> tuple[int, int]:
  """``v`` as ``(h, w)`` ints; None gives ``(default, default)`` (Flax's "unset" strides/dilation)."""
  if v is None and default is not None:
    v = default
  if isinstance(v, int):
    return (v, v)
  v = tuple(int(u) for u in v)
  if len(v) != 2:
    raise ValueError(f"expected an int or a pair (h, w), got {v!r}.")
  return v


def _kernel_and_bias(module, inputs, kernel_shape):
  """The ``"kernel"`` / ``"bias"`` parameters ``nn.Conv`` / ``nn.ConvTranspose`` would create (same
  names, shapes, initialisers), promoted with ``inputs`` to the compute dtype: ``(x, kernel, bias)``."""
  kernel = module.param("kernel", module.kernel_init, kernel_shape, module.param_dtype)
  bias = (module.param("bias", module.bias_init, (module.features,), module.param_dtype)
          if module.use_bias else None)
  return module.promote_dtype(inputs, kernel, bias, dtype=module.dtype)


class Conv(nn.Conv):
  """``flax.linen.Conv`` that computes ``1 x 1`` convolutions as matrix products: same fields,
  parameters (``kernel`` ``[1, 1, C, F]``, ``bias``) and outputs.

  A ``1 x 1`` convolution of stride ``s`` with no padding is ``x[:, ::s, ::s] @ W``. XLA:CPU runs
  it, and above all its kernel gradient, as a generic convolution: on a 2-core CPU the product's
  forward + backward was 1.25-4.4x faster at ResNet-50's 1x1 shapes (e.g. ``[2, 128, 128, 256] ->
  64``: 189 -> 43 ms; ``benchmarks/conv_layers.py``, 2026-11-22). Other configurations (larger
  kernels, padding, groups, masks, input dilation, 1-D/3-D inputs) run ``nn.Conv`` itself. The
  auto-name of an unnamed instance is ``Conv_<i>`` as for ``nn.Conv``, so parameter trees are
  unchanged.
  """

  def _pointwise_strides(self, inputs):
    """``(s_h, s_w)`` when the product form applies, else None."""
    # An int kernel_size is a 1-D convolution in flax.
    if (inputs.ndim != 4 or isinstance(self.kernel_size, int)
        or tuple(self.kernel_size) != (1, 1)):
      return None
    if (self.feature_group_count != 1 or self.mask is not None
        or _pair(self.input_dilation, 1) != (1, 1)
        or self.conv_general_dilated is not None or self.conv_general_dilated_cls is not None):
      return None  # grouped, masked, input-dilated, or a user-supplied convolution function
    pad = self.padding
    if isinstance(pad, str):
      if pad.upper() not in ("SAME", "VALID"):  # a 1x1 kernel needs no "SAME" padding
        return None
    elif isinstance(pad, int):
      if pad != 0:
        return None
    else:
      try:
        if any(int(p) != 0 for side in pad for p in (side if isinstance(side, (tuple, list))
                                                          else (side,))):
          return None
      except TypeError:
        return None
    return _pair(self.strides, 1)

  @nn.compact
  def __call__(self, inputs):
    strides = self._pointwise_strides(inputs)
    if strides is None:
      return super().__call__(inputs)
    x, kernel, bias = _kernel_and_bias(self, inputs, (1, 1, inputs.shape[-1], self.features))
    if strides != (1, 1):
      x = x[:, ::strides[0], ::strides[1]]
    y = jnp.einsum("bhwc,cf->bhwf", x, kernel[0, 0], precision=self.precision)
    return y if bias is None else y + bias


class ConvTranspose(nn.ConvTranspose):
  """``flax.linen.ConvTranspose`` computed as matrix products when the kernel is a multiple of the
  stride (module docstring).

  Same fields, parameter names, shapes and initialisation as ``nn.ConvTranspose`` (checkpoints and
  converted weights load unchanged) and the same outputs. With ``"VALID"`` padding a transposed
  convolution of stride ``s`` and kernel ``k`` writes ``x[i] @ W[a]`` to output ``s i + a``
  (``0 <= a < k``), ``W`` the kernel flipped in both spatial axes (``transpose_kernel=False``) or
  with its channel axes swapped (``True``). When ``k = m s``, ``a = q s + r`` splits it into
  ``m x m`` non-overlapping transposed convolutions (blocks ``q`` of ``W``), each one product
  ``[.., C] @ [C, s s F]`` and a depth-to-space reshape, summed at offsets ``q s``: ``m = 1`` for
  U-Net's 2x2 up-convolution and Mask R-CNN's ``conv5_mask``, ``m = 2`` for FCN's ``2f x 2f``
  stride-``f`` upsampling. Other configurations (kernels not a multiple of the stride, other
  paddings, dilation, masks, 1-D/3-D inputs) run ``nn.ConvTranspose`` itself.
  """

  def _block_factors(self, inputs):
    """``(m_h, m_w)`` when the product form applies, else None."""
    if inputs.ndim != 4:
      return None
    kernel, strides = _pair(self.kernel_size), _pair(self.strides, 1)
    if (not isinstance(self.padding, str) or self.padding.upper() != "VALID"
        or _pair(self.kernel_dilation, 1) != (1, 1) or self.mask is not None
        or self.preferred_element_type is not None
        or any(k % s for k, s in zip(kernel, strides))):
      return None
    return tuple(k // s for k, s in zip(kernel, strides))

  @nn.compact
  def __call__(self, inputs):
    blocks = self._block_factors(inputs)
    if blocks is None:
      return super().__call__(inputs)
    kh, kw = _pair(self.kernel_size)
    sh, sw = _pair(self.strides, 1)
    c = inputs.shape[-1]
    shape = (kh, kw, self.features, c) if self.transpose_kernel else (kh, kw, c, self.features)
    x, kernel, bias = _kernel_and_bias(self, inputs, shape)
    w = jnp.swapaxes(kernel, 2, 3) if self.transpose_kernel else kernel[::-1, ::-1]
    b, h, wd, _ = x.shape
    out_h, out_w = sh * (h - 1) + kh, sw * (wd - 1) + kw
    y = None
    for qy in range(blocks[0]):
      for qx in range(blocks[1]):
        block = w[qy * sh:(qy + 1) * sh, qx * sw:(qx + 1) * sw]  # (s_h, s_w, C, F)
        part = jnp.einsum("bhwc,ijco->bhiwjo", x, block, precision=self.precision)
        part = part.reshape(b, h * sh, wd * sw, self.features)
        part = jnp.pad(part, ((0, 0), (qy * sh, out_h - h * sh - qy * sh),
                              (qx * sw, out_w - wd * sw - qx * sw), (0, 0)))
        y = part if y is None else y + part
    return y if bias is None else y + bias


class AtrousConv(nn.Conv):
  """``flax.linen.Conv`` that skips the taps of a dilated ("atrous") convolution which can only read
  padding: same fields, parameters and outputs.

  With an odd ``k x k`` kernel, stride 1, dilation ``r`` and the "same" padding ``r (k // 2)`` on each
  side, an off-centre tap along an axis of size ``n`` lands ``>= r`` pixels away, outside the map
  for every output position when ``r >= n``. DeepLab's ASPP hits this on small maps (rates 12 / 24 /
  36 on the 16 x 16 map of a 128 px image at output stride 8; paper Fig. 4: the branch degenerates
  to a 1x1 filter): the taps along such an axis are dropped from the computation (the kernel
  parameter keeps its full shape), which XLA:CPU otherwise spends on a padded input up to
  ``(n + 2 r)^2`` large. Any other configuration runs ``nn.Conv`` itself.
  """

  def _kept_taps(self, inputs):
    """Per spatial axis: the slice of kernel taps to keep, or None to run ``nn.Conv`` as is."""
    if inputs.ndim != 4:
      return None
    kernel, dilation = _pair(self.kernel_size), _pair(self.kernel_dilation, 1)
    if (_pair(self.strides, 1) != (1, 1) or self.feature_group_count != 1
        or self.mask is not None or isinstance(self.padding, str)
        or _pair(self.input_dilation, 1) != (1, 1)):
      return None
    try:
      pads = [tuple(int(p) for p in pad) for pad in self.padding]
    except TypeError:
      return None
    keep = []
    for n, k, r, pad in zip(inputs.shape[1:3], kernel, dilation, pads):
      if k % 2 != 1 or pad != (r * (k // 2),) * 2:
        return None
      keep.append(slice(k // 2, k // 2 + 1) if r >= n and k > 1 else slice(0, k))
    return keep if any(s.stop - s.start == 1 for s, k in zip(keep, kernel) if k > 1) else None

  @nn.compact
  def __call__(self, inputs):
    keep = self._kept_taps(inputs)
    if keep is None:
      return super().__call__(inputs)
    kh, kw = _pair(self.kernel_size)
    x, kernel, bias = _kernel_and_bias(self, inputs, (kh, kw, inputs.shape[-1], self.features))
    kernel = kernel[keep[0], keep[1]]
    dilation = _pair(self.kernel_dilation, 1)
    pads = [(0, 0) if s.stop - s.start == 1 else (d * (k // 2),) * 2
            for s, d, k in zip(keep, dilation, (kh, kw))]
    y = jax.lax.conv_general_dilated(x, kernel, (1, 1), pads, rhs_dilation=dilation,
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                     precision=self.precision)
    return y if bias is None else y + bias
