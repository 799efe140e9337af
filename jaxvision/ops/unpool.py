"""Upsampling and unpooling: max unpooling, nearest / bed-of-nails unpooling, sub-pixel, resizing.

The decoder of an encoder-decoder segmentation network has to undo the encoder's down-sampling.
This module collects the fixed (parameter-free) ways of doing so and the one initializer that turns a
learnable transposed convolution into a fixed one:

* **Max unpooling** (SegNet: Badrinarayanan, Kendall and Cipolla, "SegNet: A Deep Convolutional
  Encoder-Decoder Architecture for Image Segmentation", TPAMI 2017; also DeconvNet: Noh, Hong and Han,
  "Learning Deconvolution Network for Semantic Segmentation", ICCV 2015). The encoder's max pooling
  remembers *where* each maximum was (``max_pool_with_argmax``), and the decoder writes each value back
  to that position, zeros elsewhere (``max_unpool``). Same index convention as PyTorch's
  ``max_pool2d(return_indices=True)`` / ``max_unpool2d``.
* **Nearest-neighbour unpooling** (every value copied into its ``f x f`` block) and **bed of nails**
  (the value at the block's top-left corner, zeros elsewhere).
* **Sub-pixel convolution** (Shi et al., "Real-Time Single Image and Video Super-Resolution Using an
  Efficient Sub-Pixel Convolutional Neural Network", CVPR 2016): ``pixel_shuffle`` rearranges
  ``C * r^2`` channels into an ``r x r`` spatial block, with PyTorch's channel order.
* **Resizing** with PyTorch's exact ``F.interpolate`` semantics (``resize_bilinear``,
  ``resize_nearest``), and ``bilinear_kernel``, the fixed bilinear filter FCN (Long, Shelhamer and
  Darrell, "Fully Convolutional Networks for Semantic Segmentation", CVPR 2015) uses to initialise its
  transposed convolutions.

Layout: images are NHWC. Every function takes one image ``[H, W, C]`` or a batch ``[B, H, W, C]`` and
returns the same rank (these ops are naturally batched, so no ``vmap`` is needed). All shape
arguments (``factor``, ``window``, ``out_hw``, ...) are static Python ints, so every output shape is
static and everything is ``jit``-safe and differentiable.
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxvision.ops._checks import check_array, check_positive_int

__all__ = [
    "max_pool_with_argmax",
    "max_unpool",
    "nearest_unpool",
    "bed_of_nails_unpool",
    "pixel_shuffle",
    "pixel_unshuffle",
    "resize_bilinear",
    "resize_nearest",
    "bilinear_kernel",
]

IntOrPair = int | Sequence[int]


# ------------------------------------------------------------------------------------------------
# Argument helpers
# ------------------------------------------------------------------------------------------------


def _batched(x, name: str, *, kind: str | None = None):
  """Returns ``x`` as ``[B, H, W, C]`` and whether the caller passed a single image."""
  x = check_array(x, name, ndim=(3, 4), kind=kind)
  single = x.ndim == 3
  return (x[None] if single else x), single


def _unbatch(y, single: bool):
  return y[0] if single else y


def _pair(v, name: str, *, allow_zero: bool = False) -> tuple[int, int]:
  """A static ``int`` or ``(h, w)`` pair of ints, each checked with ``check_positive_int``."""
  if isinstance(v, (tuple, list)):
    if len(v) != 2:
      raise ValueError(f"{name} must be an int or a pair (h, w), got {v!r}.")
    return (check_positive_int(v[0], f"{name}[0]", allow_zero=allow_zero),
            check_positive_int(v[1], f"{name}[1]", allow_zero=allow_zero))
  v = check_positive_int(v, name, allow_zero=allow_zero)
  return v, v


# ------------------------------------------------------------------------------------------------
# Max pooling with indices / max unpooling (SegNet)
# ------------------------------------------------------------------------------------------------


def max_pool_with_argmax(x, window: IntOrPair = 2, stride: IntOrPair | None = None,
                         padding: str | IntOrPair = "VALID"):
  r"""Max pooling that also returns where each maximum came from.

  For output position :math:`(i, j)` the window covers input rows
  :math:`i s_h - p_h + [0, k_h)` and columns :math:`j s_w - p_w + [0, k_w)`; positions in the
  padding count as :math:`-\infty`. The output sizes are
  :math:`\lfloor (H + 2 p_h - k_h) / s_h \rfloor + 1` (floor mode, PyTorch's default).

  Args:
    x: ``[B, H, W, C]`` or ``[H, W, C]`` float or int array.
    window: pooling window ``k`` (int or ``(k_h, k_w)``).
    stride: stride ``s`` (int or pair); ``None`` means ``window`` (non-overlapping pooling).
    padding: ``"VALID"`` (no padding) or an int / ``(p_h, p_w)`` of implicit ``-inf`` padding on each
      side, as PyTorch's ``padding`` (at most half the window).

  Returns:
    ``(pooled, indices)``, both ``[B, h, w, C]`` (or ``[h, w, C]``). ``indices`` is int32 and holds
    the flat position ``row * W + col`` of the maximum inside its own ``H x W`` plane of the
    *unpadded* input (one plane per image and channel): exactly the convention of
    ``torch.nn.functional.max_pool2d(..., return_indices=True)`` after an NCHW -> NHWC transpose.
    Ties go to the first maximum in row-major order inside the window, as PyTorch's scan does.

  Gradients flow only to the selected element (not split among ties), like PyTorch's.
  """
  x, single = _batched(x, "x", kind="numeric")
  kh, kw = _pair(window, "window")
  sh, sw = (kh, kw) if stride is None else _pair(stride, "stride")
  if isinstance(padding, str):
    if padding.upper() != "VALID":
      raise ValueError(f"padding must be 'VALID' or an int / (p_h, p_w) pair, got {padding!r}.")
    ph = pw = 0
  else:
    ph, pw = _pair(padding, "padding", allow_zero=True)
  if 2 * ph > kh or 2 * pw > kw:
    raise ValueError(f"padding must be at most half the window, got padding {(ph, pw)} for window "
                     f"{(kh, kw)}.")
  b, h, w, c = x.shape
  oh, ow = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
  if oh <= 0 or ow <= 0:
    raise ValueError(f"x with spatial size {(h, w)} is smaller than the window {(kh, kw)} "
                     f"(padding {(ph, pw)}), got x {x.shape}.")
  # -inf (or the integer minimum) padding never wins, as PyTorch's implicit padding.
  low = -jnp.inf if jnp.issubdtype(x.dtype, jnp.floating) else jnp.iinfo(x.dtype).min
  xp = jnp.pad(x, ((0, 0), (ph, ph), (pw, pw), (0, 0)), constant_values=low)
  # One strided view per window offset, stacked in PyTorch's scan order (row-major inside the
  # window), so argmax's "first maximum" is PyTorch's tie rule. k_h * k_w copies of the output is
  # cheap for the 2x2 / 3x3 windows used in practice and keeps everything a plain gather.
  views = []
  for di in range(kh):
    for dj in range(kw):
      views.append(xp[:, di:di + sh * (oh - 1) + 1:sh, dj:dj + sw * (ow - 1) + 1:sw, :])
  stack = jnp.stack(views, axis=0)  # [k_h * k_w, B, oh, ow, C]
  arg = jnp.argmax(stack, axis=0)  # first maximum; NaN counts as the maximum (propagates)
  # take_along_axis (not jnp.max) so the gradient goes to one element only, as in PyTorch.
  pooled = jnp.take_along_axis(stack, arg[None], axis=0)[0]
  di, dj = arg // kw, arg % kw
  rows = jnp.arange(oh, dtype=jnp.int32)[None, :, None, None] * sh - ph + di.astype(jnp.int32)
  cols = jnp.arange(ow, dtype=jnp.int32)[None, None, :, None] * sw - pw + dj.astype(jnp.int32)
  indices = (rows * w + cols).astype(jnp.int32)
  return _unbatch(pooled, single), _unbatch(indices, single)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _scatter_planes(values, indices, size: int):
  """``out[b, c, indices[b, c, n]] = values[b, c, n]`` into ``[B, C, size]`` zeros (size is static)."""
  b, c, _ = values.shape
  bi = jnp.arange(b)[:, None, None]
  ci = jnp.arange(c)[None, :, None]
  # Out-of-range indices (incl. -1 padding) are sent past the end and dropped, never wrapped.
  idx = jnp.where((indices >= 0) & (indices < size), indices, size)
  return jnp.zeros((b, c, size), values.dtype).at[bi, ci, idx].set(values, mode="drop")


def _scatter_planes_fwd(values, indices, size):
  return _scatter_planes(values, indices, size), indices


def _scatter_planes_bwd(size, indices, g):
  # PyTorch's max_unpool2d backward: every input element reads the output gradient at its index,
  # also when several inputs share one index (overlapping pooling windows). JAX's own scatter
  # transpose would give the gradient to the winning update only.
  valid = (indices >= 0) & (indices < size)
  gv = jnp.take_along_axis(g, jnp.where(valid, indices, 0), axis=-1)
  return jnp.where(valid, gv, 0).astype(g.dtype), None  # integer indices: no cotangent


_scatter_planes.defvjp(_scatter_planes_fwd, _scatter_planes_bwd)


def max_unpool(x, indices, output_hw: Sequence[int]):
  r"""Max unpooling: writes every value to the position its max-pooling index points at.

  .. math::
    y_{b, \lfloor n / W \rfloor, n \bmod W, c} = x_{b, i, j, c}
    \quad\text{for } n = \mathrm{indices}_{b, i, j, c}, \qquad y = 0 \text{ elsewhere}.

  Equal to ``torch.nn.functional.max_unpool2d(x, indices, output_size=output_hw)`` after NCHW <-> NHWC
  transposes, forward and backward (the gradient w.r.t. ``x`` reads the output gradient at each index).

  Args:
    x: ``[B, h, w, C]`` or ``[h, w, C]`` values (e.g. the decoder's features at the pooled size).
    indices: int array of the same shape, flat ``row * W + col`` positions from
      ``max_pool_with_argmax``.
    output_hw: static ``(H, W)`` of the unpooled map (the encoder's pre-pooling size).

  Returns:
    ``[B, H, W, C]`` (or ``[H, W, C]``), zero except at the indexed positions. Indices outside
    ``[0, H * W)`` are dropped (PyTorch raises; a jitted function cannot). If two entries share an
    index (overlapping windows) one of them is written; after ``max_pool_with_argmax`` both hold the
    same value, so this only matters for hand-made indices.

  Differentiable in reverse mode (``grad``/``vjp``, through a custom VJP that gives PyTorch's
  gradient); forward mode (``jvp``/``jacfwd``) is not supported for ``max_unpool``.
  """
  x, single = _batched(x, "x", kind="numeric")
  indices = check_array(indices, "indices", ndim=x.ndim - (1 if single else 0), kind="int")
  indices = indices[None] if single else indices
  if indices.shape != x.shape:
    raise ValueError(f"indices must have the shape of x {tuple(x.shape)}, got indices shape "
                     f"{tuple(indices.shape)}.")
  if not isinstance(output_hw, (tuple, list)) or len(output_hw) != 2:
    raise ValueError(f"output_hw must be a pair (H, W) of ints, got {output_hw!r}.")
  oh = check_positive_int(output_hw[0], "output_hw[0]")
  ow = check_positive_int(output_hw[1], "output_hw[1]")
  b, h, w, c = x.shape
  # Work in [B, C, h*w] planes, PyTorch's layout, where the index is a flat position.
  planes = jnp.transpose(x, (0, 3, 1, 2)).reshape(b, c, h * w)
  idx = jnp.transpose(indices, (0, 3, 1, 2)).reshape(b, c, h * w)
  out = _scatter_planes(planes, idx, oh * ow)
  out = jnp.transpose(out.reshape(b, c, oh, ow), (0, 2, 3, 1))
  return _unbatch(out, single)


# ------------------------------------------------------------------------------------------------
# Fixed unpooling and sub-pixel rearrangement
# ------------------------------------------------------------------------------------------------


def nearest_unpool(x, factor: IntOrPair):
  """Nearest-neighbour unpooling: every pixel becomes an ``f_h x f_w`` block of copies.

  ``y[b, i, j, c] = x[b, i // f_h, j // f_w, c]``; equal to ``resize_nearest`` with an integer
  factor and to PyTorch's ``F.interpolate(scale_factor=f, mode='nearest')``.

  Args:
    x: ``[B, H, W, C]`` or ``[H, W, C]``.
    factor: int or ``(f_h, f_w)``.

  Returns:
    ``[B, H * f_h, W * f_w, C]`` (or unbatched).
  """
  x, single = _batched(x, "x")
  fh, fw = _pair(factor, "factor")
  y = jnp.repeat(jnp.repeat(x, fh, axis=1), fw, axis=2)
  return _unbatch(y, single)


def bed_of_nails_unpool(x, factor: IntOrPair):
  """"Bed of nails" unpooling: each value at the top-left of its ``f_h x f_w`` block, zeros elsewhere.

  ``y[b, f_h i, f_w j, c] = x[b, i, j, c]`` and ``y = 0`` at every other position. It is max
  unpooling with all indices at the window's first position, and a stride-``f`` transposed
  convolution with a 1x1 identity kernel.

  Args:
    x: ``[B, H, W, C]`` or ``[H, W, C]``.
    factor: int or ``(f_h, f_w)``.

  Returns:
    ``[B, H * f_h, W * f_w, C]`` (or unbatched).
  """
  x, single = _batched(x, "x")
  fh, fw = _pair(factor, "factor")
  b, h, w, c = x.shape
  # [B, H, 1, W, 1, C] padded to [B, H, f_h, W, f_w, C]: the value sits at sub-position (0, 0).
  y = jnp.pad(x[:, :, None, :, None, :], ((0, 0), (0, 0), (0, fh - 1), (0, 0), (0, fw - 1), (0, 0)))
  return _unbatch(y.reshape(b, h * fh, w * fw, c), single)


def pixel_shuffle(x, factor: int):
  r"""Sub-pixel rearrangement ``[B, H, W, C r^2] -> [B, H r, W r, C]`` (Shi et al. 2016).

  .. math::
    y_{b,\, r i + u,\, r j + v,\, c} = x_{b,\, i,\, j,\, c r^2 + u r + v}

  which is ``torch.nn.functional.pixel_shuffle`` after NCHW <-> NHWC transposes (PyTorch's input
  channel ``c r^2 + u r + v`` goes to output channel ``c`` at sub-pixel ``(u, v)``). Preceded by a
  convolution with ``C r^2`` outputs it is the "sub-pixel convolution" upsampling layer, free of the
  checkerboard artefacts of a transposed convolution whose kernel is not divisible by its stride.

  Args:
    x: ``[B, H, W, C * r^2]`` or ``[H, W, C * r^2]``.
    factor: the upscale factor ``r``.

  Returns:
    ``[B, H r, W r, C]`` (or unbatched).
  """
  x, single = _batched(x, "x")
  r = check_positive_int(factor, "factor")
  b, h, w, cr2 = x.shape
  if cr2 % (r * r):
    raise ValueError(f"x's channel count must be divisible by factor**2 = {r * r}, got x {_shape(x)}.")
  c = cr2 // (r * r)
  y = x.reshape(b, h, w, c, r, r)  # channel = c * r^2 + u * r + v
  y = jnp.transpose(y, (0, 1, 4, 2, 5, 3))  # [B, H, u, W, v, C]
  return _unbatch(y.reshape(b, h * r, w * r, c), single)


def pixel_unshuffle(x, factor: int):
  """Inverse of ``pixel_shuffle``: ``[B, H r, W r, C] -> [B, H, W, C r^2]``.

  Equal to ``torch.nn.functional.pixel_unshuffle`` after NCHW <-> NHWC transposes (a lossless
  "space to depth" with PyTorch's channel order).

  Args:
    x: ``[B, H * r, W * r, C]`` or unbatched; both spatial sizes must be divisible by ``r``.
    factor: the downscale factor ``r``.

  Returns:
    ``[B, H, W, C r^2]`` (or unbatched).
  """
  x, single = _batched(x, "x")
  r = check_positive_int(factor, "factor")
  b, hr, wr, c = x.shape
  if hr % r or wr % r:
    raise ValueError(f"x's height and width must be divisible by factor = {r}, got x {_shape(x)}.")
  h, w = hr // r, wr // r
  y = x.reshape(b, h, r, w, r, c)  # [B, H, u, W, v, C]
  y = jnp.transpose(y, (0, 1, 3, 5, 2, 4))  # [B, H, W, C, u, v]
  return _unbatch(y.reshape(b, h, w, c * r * r), single)


def _shape(x) -> str:
  return f"shape {tuple(x.shape)} dtype {x.dtype}"


# ------------------------------------------------------------------------------------------------
# Resizing with PyTorch's exact semantics
# ------------------------------------------------------------------------------------------------


def _out_hw(out_hw) -> tuple[int, int]:
  if not isinstance(out_hw, (tuple, list)) or len(out_hw) != 2:
    raise ValueError(f"out_hw must be a pair (H, W) of Python ints, got {out_hw!r}.")
  return check_positive_int(out_hw[0], "out_hw[0]"), check_positive_int(out_hw[1], "out_hw[1]")


def _linear_matrix(in_size: int, out_size: int, align_corners: bool) -> np.ndarray:
  """``[out, in]`` float32 matrix of PyTorch's 1-D linear interpolation weights.

  Mirrors ATen's ``area_pixel_compute_scale`` / ``area_pixel_compute_source_index`` and
  ``compute_indices_weights_linear`` (``UpSampleKernel.cpp``) step by step *in float32*, as PyTorch
  computes them for float32 input, so the sampled positions are bit-identical:

  * ``align_corners=True``:  ``src = dst * (in - 1) / (out - 1)`` (0 if ``out == 1``);
  * ``align_corners=False``: ``src = max((dst + 0.5) * in / out - 0.5, 0)`` (half-pixel centres,
    clamped at 0 on the left; no antialiasing when downsampling, unlike ``jax.image.resize``);

  then ``i0 = floor(src)``, ``i1 = min(i0 + 1, in - 1)``, weights ``1 - (src - i0)`` and ``src - i0``.
  """
  f32 = np.float32
  if align_corners:
    scale = f32(in_size - 1) / f32(out_size - 1) if out_size > 1 else f32(0)
    src = f32(scale) * np.arange(out_size, dtype=f32)
  else:
    scale = f32(in_size) / f32(out_size)
    src = f32(scale) * (np.arange(out_size, dtype=f32) + f32(0.5)) - f32(0.5)
    src = np.maximum(src, f32(0))
  src = src.astype(f32)
  i0 = src.astype(np.int64)  # src >= 0, so truncation is floor
  lam1 = np.clip(src - i0.astype(f32), f32(0), f32(1)).astype(f32)
  lam0 = (f32(1) - lam1).astype(f32)
  i1 = np.minimum(i0 + 1, in_size - 1)
  m = np.zeros((out_size, in_size), np.float64)
  rows = np.arange(out_size)
  np.add.at(m, (rows, i0), lam0)
  np.add.at(m, (rows, i1), lam1)  # i1 == i0 at the last row: the weights add up to 1 there
  return m.astype(np.float32)


def resize_bilinear(x, out_hw: Sequence[int], *, align_corners: bool):
  r"""Bilinear resize, equal to ``torch.nn.functional.interpolate(mode='bilinear', antialias=False)``.

  The resize is separable, :math:`Y_{b,:,:,c} = M_h X_{b,:,:,c} M_w^\top`, with fixed ``[out, in]``
  interpolation matrices built at trace time from PyTorch's source-index rule (see
  ``_linear_matrix``): each output pixel blends the 2 x 2 nearest input pixels. This is *not*
  ``jax.image.resize(method='bilinear')``, which antialiases when downsampling (a wider triangle
  filter) and has no ``align_corners=True`` mode. Use it to bring logits back to label resolution
  (DeepLab, FCN evaluation) or to reproduce PyTorch models.

  Args:
    x: ``[B, H, W, C]`` or ``[H, W, C]`` float array.
    out_hw: static ``(H_out, W_out)``; up- and downsampling are both exact.
    align_corners: PyTorch's flag. ``True`` maps the corner pixel centres onto each other
      (``src = dst (in - 1) / (out - 1)``); ``False`` uses half-pixel centres
      (``src = (dst + 1/2) in / out - 1/2``, clamped at 0).

  Returns:
    ``[B, H_out, W_out, C]`` (or unbatched), same dtype as ``x``.
  """
  x, single = _batched(x, "x", kind="float")
  oh, ow = _out_hw(out_hw)
  if not isinstance(align_corners, bool):
    raise TypeError(f"align_corners must be a bool, got {align_corners!r}.")
  _, h, w, _ = x.shape
  mh = jnp.asarray(_linear_matrix(h, oh, align_corners), x.dtype)
  mw = jnp.asarray(_linear_matrix(w, ow, align_corners), x.dtype)
  # HIGHEST: on accelerators the default matmul precision (bf16 passes) would cost ~3 digits.
  hi = jax.lax.Precision.HIGHEST
  y = jnp.einsum("oh,bhwc->bowc", mh, x, precision=hi)
  y = jnp.einsum("pw,bowc->bopc", mw, y, precision=hi)
  return _unbatch(y, single)


def _nearest_index(in_size: int, out_size: int) -> np.ndarray:
  """PyTorch's ``nearest_idx``: ``min(floor(dst * (in / out)), in - 1)`` evaluated in float32."""
  dst = np.arange(out_size)
  if out_size == in_size:
    return dst
  if out_size == 2 * in_size:
    return dst >> 1
  scale = np.float32(in_size) / np.float32(out_size)
  src = np.floor(dst.astype(np.float32) * scale).astype(np.int64)
  return np.minimum(src, in_size - 1)


def resize_nearest(x, out_hw: Sequence[int]):
  """Nearest-neighbour resize, equal to ``torch.nn.functional.interpolate(mode='nearest')``.

  Output pixel ``(i, j)`` copies input pixel ``(floor(i * H / H_out), floor(j * W / W_out))``
  (PyTorch's legacy ``'nearest'`` rule, computed in float32 like PyTorch, not ``'nearest-exact'``'s
  half-pixel rule). It is a pure gather, so it works for any dtype: use it for integer label maps
  (255 = ignore stays 255) as well as for features.

  Args:
    x: ``[B, H, W, C]`` or ``[H, W, C]``, any dtype. (For a label map ``[B, H, W]`` add a channel
      axis: ``resize_nearest(labels[..., None], hw)[..., 0]``.)
    out_hw: static ``(H_out, W_out)``.

  Returns:
    ``[B, H_out, W_out, C]`` (or unbatched), same dtype as ``x``.
  """
  x, single = _batched(x, "x")
  oh, ow = _out_hw(out_hw)
  _, h, w, _ = x.shape
  rows = jnp.asarray(_nearest_index(h, oh), jnp.int32)
  cols = jnp.asarray(_nearest_index(w, ow), jnp.int32)
  y = jnp.take(jnp.take(x, rows, axis=1), cols, axis=2)
  return _unbatch(y, single)


def bilinear_kernel(kernel_size: int, channels: int, dtype=jnp.float32):
  r"""The fixed bilinear upsampling filter FCN uses to initialise transposed convolutions.

  For upsampling by an integer factor ``f`` use ``kernel_size = 2 f - f % 2``, stride ``f`` and
  (Caffe/PyTorch) padding ``(kernel_size - f) / 2`` (i.e. crop that many pixels on each side of a
  ``'VALID'`` transposed convolution). The 1-D taps are

  .. math::
    k(t) = 1 - \frac{|t - c|}{\phi}, \quad \phi = \lceil k / 2 \rceil,
    \quad c = \begin{cases} \phi - 1 & k \text{ odd} \\ \phi - 1/2 & k \text{ even} \end{cases}

  and the 2-D filter is their outer product (FCN's ``upsample_filt``). With that geometry the
  transposed convolution equals ``resize_bilinear(x, (f H, f W), align_corners=False)`` away from
  the image border (at the border it fades towards zero padding instead of clamping).

  Args:
    kernel_size: the filter's height and width ``k``.
    channels: number of input (= output) channels; the filter acts on each channel separately
      (a diagonal kernel: channel ``c`` only feeds channel ``c``), as in FCN.
    dtype: output dtype.

  Returns:
    ``[k, k, channels, channels]`` kernel in HWIO layout, Flax's ``nn.ConvTranspose`` kernel
    layout (``kernel_init=lambda *_: bilinear_kernel(k, c)``) and ``lax.conv_transpose``'s with
    ``dimension_numbers=('NHWC', 'HWIO', 'NHWC')``. It is symmetric, so flipping is irrelevant.
  """
  k = check_positive_int(kernel_size, "kernel_size")
  c = check_positive_int(channels, "channels")
  factor = (k + 1) // 2
  center = factor - 1 if k % 2 == 1 else factor - 0.5
  t = np.arange(k, dtype=np.float64)
  taps = 1.0 - np.abs(t - center) / factor
  filt = np.outer(taps, taps)  # [k, k]
  kernel = filt[:, :, None, None] * np.eye(c)[None, None, :, :]
  return jnp.asarray(kernel, dtype)
