"""RoI feature extraction: RoIAlign, RoIPool, multi-level (FPN) RoIAlign and spatial pyramid pooling.

Every op here takes the whole batch's feature maps plus one image index per RoI, like torchvision:

* ``features``: ``[B, H, W, C]`` float, NHWC (torchvision is NCHW: transpose when comparing).
* ``boxes``: ``[K, 4]`` xyxy in continuous pixel coordinates of the network input; ``spatial_scale``
  maps them onto the feature map (``1/4`` for FPN P2, ``1/16`` for a VGG conv5 map).
* ``box_indices``: ``[K]`` integer image index of each RoI. Entries outside ``[0, B)`` (e.g. ``-1`` on
  padded RoIs) produce all-zero outputs and receive/pass no gradient (torchvision would read out of
  bounds; jaxvision cannot raise on data inside ``jit``).

and returns ``[K, oh, ow, C]`` (``[K, C * sum(b * b)]`` for spatial pyramid pooling).

RoIAlign (He et al., Mask R-CNN, 2017) -- the sampling rules, identical to
``torchvision.ops.roi_align``:

* ``aligned=False``: the RoI is ``[x1 * s, x2 * s]`` with width and height forced to at least 1.
  ``aligned=True``: both ends shift by ``-0.5`` (pixel centres sit at integer + 0.5) and there is no
  minimum size, so degenerate or even inverted boxes are sampled as they are.
* each of the ``oh x ow`` bins holds a ``g_h x g_w`` grid of sample points at the centres of the
  grid cells; ``g = sampling_ratio``, or ``ceil(roi_size / out_size)`` per RoI when
  ``sampling_ratio <= 0`` (adaptive; needs a static ``max_sampling_ratio`` here, see below).
* border rule, per sample coordinate ``y`` (and the same for ``x``): ``y < -1`` or ``y > H``: the sample
  contributes 0 (but still counts in the average); ``-1 <= y <= 0``: ``y = 0``;
  ``H - 1 <= y <= H``: ``y = H - 1``; otherwise bilinear between rows ``floor(y)`` and ``floor(y) + 1``.
* the bin value is the sum of its samples divided by ``max(g_h * g_w, 1)``.

Implementation (the part that differs from the usual JAX ports). The bilinear weights are separable:
a bin's value is ``sum_{rows r, cols c} wy[r] * wx[c] * F[r, c, :]`` over the ``2 g_h`` rows and
``2 g_w`` columns its samples touch. Per axis we compute, for every RoI, bin and sample, the two
neighbouring rows (columns) and their weights: ``[K, oh, g, 2]`` integers and floats, which is tiny.
The op is then a sum over the ``4 g_h g_w`` (sample, corner) *terms*; each term is one gather of
``[K, oh, ow]`` feature rows (``C`` contiguous floats each, NHWC) from the flattened feature map,
scaled by its weight. A ``fori_loop`` over the ``g_h g_w`` samples (4 corners unrolled per step)
accumulates into the output, each step one fused gather-multiply-add loop.

* Work: ``K * oh * ow * 4 * g_h * g_w * C`` multiply-adds forward (the same reads torchvision does),
  the same number of scatter-adds backward.
* Peak memory, forward: the output ``[K, oh, ow, C]`` (float32 accumulator) plus
  ``O(K * (oh + ow) * g)`` index/weight arrays; no ``[K, H, W]`` one-hot matrices and no
  ``[K, oh, ow, 4 g^2, C]`` gathered intermediate (that is 0.8 GB for 1024 RoIs at 7x7, g=2, C=256,
  and it is what a plain ``F[idx]`` + ``sum``, or fully unrolled terms next to a loss, materialise on
  XLA:CPU).
* Backward (a ``custom_vjp``): the feature gradient ``[B, H, W, C]`` (float32) is built by a
  ``fori_loop`` over the ``4 g_h g_w`` terms, each step one in-place scatter-add of a
  ``[K, oh, ow, C]`` update. Measured XLA temporaries for ``value_and_grad(sum(roi_align))`` at 2 x 512
  RoIs on a 2 x 200 x 336 x 256 map: 99 MiB (the cotangent and one update; the output and the
  gradient themselves are outputs). On GPU the scatter-add uses atomics, so the last bits may vary run
  to run, as in torchvision's CUDA backward.
* No gradient flows to ``boxes`` (torchvision's RoIAlign has none either): ``jax.grad`` with respect to
  the boxes returns zeros.
* Coordinates are bit-identical to torchvision's float32 kernel: XLA's reciprocal rewrite of divisions
  and its FMA contraction are blocked on the (small) coordinate arrays, see ``_ieee_div`` and
  ``_rounded``. Otherwise a sample one ulp across -1 or H flips between "contributes" and "zero".

On 2 CPU cores this is 3-5x faster than torchvision's CPU kernel, forward and forward+backward (see
``benchmarks/bench_roi.py``). On TPU the gathers are the slow part; the Scenic-style one-hot einsum
is friendlier there, but over whole maps it costs ``K * H * W * ow * C`` MACs and a
``[K, H, ow, C]`` intermediate (123 GFLOP and 1.4 GB for 1024 RoIs on P2), and cropping a window per
RoI needs a static window size that huge RoIs exceed, so it is not offered.

Multi-level RoIAlign (``multilevel_roi_align``): each RoI is assigned to one FPN level with
torchvision's ``LevelMapper`` rule and pooled only there. Instead of per-level capacities and a
sort/scatter, the levels are flattened into one ``[sum_l B * H_l * W_l, C]`` buffer and each RoI's
sample indices use its own level's size, scale and offset, so every RoI is pooled exactly once in a
single pass (the cost of one ``roi_align`` call over K RoIs), nothing is ever dropped and no capacity
needs choosing. The price is one copy of all levels (the concatenation), ~1.33x the finest map, and
its gradient: 398 MiB of temporaries for P2-P5 in the setting above.

RoIPool (Girshick, Fast R-CNN, 2015) and spatial pyramid pooling (He et al., SPP-net, 2014) take a
max over variable-sized integer windows. The largest window is data dependent, so they run a
``while_loop`` over window offsets ``(dy, dx)`` up to the largest bin in the batch, each step
gathering one ``[K, oh, ow, C]`` slice (memory bounded by the output; time proportional to the
largest bin's area). Their gradients are ``custom_vjp``s (max: routed to the argmax, the first
maximum in row-major order like torchvision; avg: spread evenly over the window).
"""

from __future__ import annotations

import functools
import math
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxvision.ops._checks import check_array, check_positive_int, check_same_leading

__all__ = [
    "roi_align",
    "roi_pool",
    "multilevel_roi_align",
    "assign_fpn_levels",
    "spatial_pyramid_pool",
]



# ------------------------------------------------------------------------------------------------
# Argument checks
# ------------------------------------------------------------------------------------------------


def _check_output_size(output_size: Any) -> tuple[int, int]:
  if isinstance(output_size, (tuple, list)):
    if len(output_size) != 2:
      raise ValueError(f"output_size must be an int or a pair (oh, ow), got {output_size!r}.")
    return (check_positive_int(output_size[0], "output_size[0]"),
            check_positive_int(output_size[1], "output_size[1]"))
  size = check_positive_int(output_size, "output_size")
  return size, size


def _check_scale(spatial_scale: Any, name: str = "spatial_scale") -> float:
  if isinstance(spatial_scale, bool) or not isinstance(spatial_scale, (int, float, np.integer, np.floating)):
    raise TypeError(f"{name} must be a Python float, got {type(spatial_scale).__name__} {spatial_scale!r}.")
  if not (math.isfinite(spatial_scale) and spatial_scale > 0):
    raise ValueError(f"{name} must be a finite number > 0, got {spatial_scale!r}.")
  return float(spatial_scale)


def _check_sampling(sampling_ratio: Any, max_sampling_ratio: Any) -> tuple[int, int | None]:
  """Returns ``(static grid size G, fixed ratio or None when adaptive)``."""
  if isinstance(sampling_ratio, bool) or not isinstance(sampling_ratio, (int, np.integer)):
    raise TypeError(f"sampling_ratio must be a Python int, got {type(sampling_ratio).__name__} "
                    f"{sampling_ratio!r}.")
  sampling_ratio = int(sampling_ratio)
  if sampling_ratio > 0:
    return sampling_ratio, sampling_ratio
  if max_sampling_ratio is None:
    raise ValueError(
        f"sampling_ratio={sampling_ratio} asks for torchvision's adaptive sampling "
        "(ceil(roi_size / output_size) samples per bin), whose grid size depends on the data. Pass a "
        "positive sampling_ratio (torchvision's detectors use 2), or a static upper bound "
        "max_sampling_ratio=G: RoIs needing more than G samples per bin side are then sampled with G.")
  return check_positive_int(max_sampling_ratio, "max_sampling_ratio"), None


def _check_rois(boxes: Any, box_indices: Any) -> tuple[jnp.ndarray, jnp.ndarray]:
  boxes = check_array(boxes, "boxes", ndim=2, last_dim=4, kind="numeric")
  box_indices = check_array(box_indices, "box_indices", ndim=1, kind="int")
  check_same_leading(boxes, box_indices, "boxes", "box_indices")
  # Coordinates are computed in (at least) float32 like torchvision's float kernel.
  boxes = boxes.astype(jnp.promote_types(boxes.dtype, jnp.float32))
  return boxes, box_indices.astype(jnp.int32)


def _check_features(features: Any, name: str = "features") -> jnp.ndarray:
  features = check_array(features, name, ndim=4, kind="float")
  if features.shape[1] < 1 or features.shape[2] < 1:
    raise ValueError(f"{name} must have H >= 1 and W >= 1, got shape {tuple(features.shape)}.")
  return features


def _check_flat_size(rows: int) -> None:
  if rows >= 2**31:
    raise ValueError(f"feature maps hold {rows} positions, more than int32 indexing allows (2**31).")


# ------------------------------------------------------------------------------------------------
# RoIAlign core: separable sample positions + a fused gather-sum with a scatter-add backward
# ------------------------------------------------------------------------------------------------


def _ieee_div(x, d):
  """``x / d`` rounded as IEEE division, like torchvision's C++ (``d`` a Python number or array).

  XLA rewrites division by a constant or by a broadcast scalar into multiplication by the reciprocal,
  which can be one ulp off. That matters here: a sample coordinate landing one ulp on the other side
  of -1 or H switches between "contributes its value" and "contributes 0" (a box of width 30 at 7 bins
  hits -1 exactly), and RoIPool's floor/ceil bin ends jump by a whole cell. The barrier on a full-shape
  divisor keeps the true division; it only touches the small coordinate arrays.
  """
  d = jnp.broadcast_to(jnp.asarray(d, x.dtype), x.shape)
  return x / lax.optimization_barrier(d)


def _rounded(x):
  """Returns the product ``x`` unchanged, but rounded to its dtype before anything is added to it.

  XLA:CPU compiles fused elementwise code with FMA contraction, so ``a * b + c`` is evaluated with a
  single rounding, while torchvision's C++ kernel rounds the product first. On FPN-sized coordinates
  (~300 px, ulp 3e-5) that moved ~5% of the sample points by an ulp and the outputs by up to 1e-4.
  ``optimization_barrier`` does not stop it (XLA:CPU drops barriers before fusion); a select that
  LLVM cannot see through does, and it is an identity (NaN stays NaN). Used on the small
  coordinate arrays only.
  """
  return jnp.where(jnp.isnan(x), jnp.nan, x)


def _axis_samples(start, bin_size, grid, n_bins: int, n_grid: int, size, stride, offset):
  """Neighbouring rows (or columns) and bilinear weights of every sample point along one axis.

  Args:
    start: ``[K]`` float, RoI start on the feature map (already scaled and shifted).
    bin_size: ``[K]`` float.
    grid: Python int (fixed sampling ratio) or ``[K]`` int32 (adaptive, already clipped to
      ``[0, n_grid]``): the number of samples per bin along this axis.
    n_bins: static number of output bins along this axis.
    n_grid: static number of sample slots per bin (``grid``'s upper bound).
    size: ``[K]`` int32, the feature map's extent along this axis at each RoI's level.
    stride: ``[K]`` int32, flat-index stride of one step along this axis (W for rows, 1 for cols).
    offset: ``[K]`` int32 added to every index (image and level offset for rows, 0 for cols).

  Returns:
    ``(idx, w)``: ``[K, n_bins, n_grid, 2]`` int32 flat-index contributions of the two neighbours and
    their float weights. Invalid samples (outside ``[-1, size]``, NaN, or beyond an adaptive grid) have
    weight 0 and an in-range index.
  """
  dtype = start.dtype
  b = jnp.arange(n_bins, dtype=dtype)[None, :, None]  # [1, nb, 1]
  i = jnp.arange(n_grid)
  frac = (i.astype(dtype) + 0.5)[None, None, :]  # [1, 1, G]
  start, bin_size = start[:, None, None], bin_size[:, None, None]  # [K, 1, 1]
  if isinstance(grid, int):
    grid_f = jnp.asarray(grid, dtype)
    in_grid = True
  else:
    # An adaptive grid of 0 (degenerate aligned RoI) has no samples; max(., 1) only avoids 0 / 0.
    grid_f = jnp.maximum(grid, 1).astype(dtype)[:, None, None]
    in_grid = i[None, None, :] < grid[:, None, None]
  # Same operation order as torchvision: (start + bin * bin_size) + ((i + .5) * bin_size) / grid.
  p = (start + _rounded(b * bin_size)) + _ieee_div(frac * bin_size, grid_f)  # [K, nb, G]
  size = size[:, None, None]
  size_f = size.astype(dtype)
  valid = (p >= -1.0) & (p <= size_f) & in_grid  # written so that NaN is invalid
  # Samples in [-1, 0] read row 0, samples in [H - 1, H] read row H - 1. Using the pair
  # (H - 2, H - 1) with weight 1 on the second row for the latter keeps a fixed 2-row footprint.
  p = jnp.clip(p, 0.0, size_f - 1.0)
  p0 = jnp.clip(jnp.floor(p).astype(jnp.int32), 0, jnp.maximum(size - 2, 0))
  p1 = jnp.minimum(p0 + 1, size - 1)  # == p0 only when size == 1, where the weight on p1 is 0
  l = p - p0.astype(dtype)
  w = jnp.stack([jnp.where(valid, 1.0 - l, 0.0), jnp.where(valid, l, 0.0)], axis=-1)  # [K, nb, G, 2]
  idx = jnp.stack([p0, p1], axis=-1) * stride[:, None, None, None] + offset[:, None, None, None]
  return idx, w


def _term(yidx, wy, xidx, wx, gy, gx, cy, cx):
  """Flat indices ``[K, oh, ow]`` and weights of the (sample ``gy, gx``, corner ``cy, cx``) term.

  The four positions may be Python ints (unrolled) or traced ints (inside a ``fori_loop``).
  """

  def pick(a, g, c):  # [K, n, G, 2] -> [K, n]
    a = lax.dynamic_index_in_dim(a, c, axis=3, keepdims=False)
    return lax.dynamic_index_in_dim(a, g, axis=2, keepdims=False)

  yi, yw = pick(yidx, gy, cy), pick(wy, gy, cy)  # [K, oh]
  xi, xw = pick(xidx, gx, cx), pick(wx, gx, cx)  # [K, ow]
  return yi[:, :, None] + xi[:, None, :], yw[:, :, None] * xw[:, None, :]


def _gather(flat, idx):
  # Indices are clamped in range by construction; promise_in_bounds skips XLA's own clamping.
  return flat.at[idx].get(mode="promise_in_bounds")


def _stand_in(x):
  """A zero-size ``[0, *x.shape]`` array: carries ``x``'s shape and dtype into a backward pass."""
  return jnp.zeros((0,) + x.shape, x.dtype)


@jax.custom_vjp
def _bilinear_sum(flat, yidx, wy, xidx, wx):
  """``out[k, i, j] = sum over terms of w * flat[idx]`` -> ``[K, oh, ow, C]`` float32 (or wider).

  ``flat`` is ``[N, C]``; ``yidx``/``wy`` are ``[K, oh, G, 2]``, ``xidx``/``wx`` are ``[K, ow, G, 2]``.
  """
  n_grid = yidx.shape[2]
  acc_dtype = jnp.promote_types(flat.dtype, wy.dtype)
  out_shape = (yidx.shape[0], yidx.shape[1], xidx.shape[1], flat.shape[1])

  def body(sample, acc):
    gy, gx = sample // n_grid, sample % n_grid
    for cy in (0, 1):
      for cx in (0, 1):
        idx, w = _term(yidx, wy, xidx, wx, gy, gx, cy, cx)
        acc = acc + w[..., None].astype(acc_dtype) * _gather(flat, idx).astype(acc_dtype)
    return acc

  # A fori_loop over samples with the 4 corners unrolled: each step is one fused loop (4 row gathers,
  # weights, add) updating the carry in place. Fully unrolling all terms is ~20% faster alone on
  # XLA:CPU, but once a consumer (a loss, jvp) is fused in, XLA materialises each gathered term
  # (measured: 0.9 GB of temporaries at 1024 RoIs); the loop keeps the bound in every context.
  return lax.fori_loop(0, n_grid * n_grid, body, jnp.zeros(out_shape, acc_dtype))


def _bilinear_sum_fwd(flat, yidx, wy, xidx, wx):
  # Only shapes and dtypes of ``flat`` are needed backward: store a zero-size stand-in, not the map.
  return _bilinear_sum(flat, yidx, wy, xidx, wx), (_stand_in(flat), yidx, wy, xidx, wx)


def _bilinear_sum_bwd(res, g):
  stand_in, yidx, wy, xidx, wx = res
  flat_shape, flat_dtype = stand_in.shape[1:], stand_in.dtype
  n_grid = yidx.shape[2]
  acc_dtype = g.dtype

  def body(t, dflat):
    s, corner = t // 4, t % 4
    idx, w = _term(yidx, wy, xidx, wx, s // n_grid, s % n_grid, corner // 2, corner % 2)
    return dflat.at[idx].add(w[..., None].astype(acc_dtype) * g, mode="promise_in_bounds")

  # One scatter-add per (sample, corner) term, in a fori_loop: XLA:CPU updates the loop carry in
  # place, while an unrolled chain of scatters (or several per loop step) gets copied; measured for
  # value_and_grad at 1024 RoIs, 7x7, g=2, C=256: 0.1 GB of temporaries here vs 0.9 GB.
  dflat = lax.fori_loop(0, 4 * n_grid * n_grid, body, jnp.zeros(flat_shape, acc_dtype))
  return dflat.astype(flat_dtype), None, None, None, None


_bilinear_sum.defvjp(_bilinear_sum_fwd, _bilinear_sum_bwd)


def _sample_grid(boxes, scale, aligned: bool, output_size, n_grid: int, fixed, heights, widths,
                 row_offset):
  """torchvision's RoIAlign geometry: sample rows/columns and weights per RoI, bin and sample.

  Args:
    boxes: ``[K, 4]`` float; scale: ``[K]`` spatial scale of each RoI's level.
    n_grid, fixed: from ``_check_sampling``. heights, widths: ``[K]`` int32 map size at each RoI's
      level. row_offset: ``[K]`` int32 flat index of the RoI's image (and level) in the buffer.

  Returns:
    ``(yidx, wy, xidx, wx, count)``: ``_axis_samples`` outputs for rows (flat offsets, including the
    image offset) and columns, and the divisor of each bin (scalar, or ``[K, 1, 1, 1]`` if adaptive).
  """
  oh, ow = output_size
  dtype = boxes.dtype
  num = boxes.shape[0]
  offset = 0.5 if aligned else 0.0
  scaled = _rounded(boxes * scale[:, None])  # [K, 4]; rounded before the offset, like torchvision
  x1, y1, x2, y2 = (scaled[:, j] - offset for j in range(4))
  roi_w = x2 - x1
  roi_h = y2 - y1
  if not aligned:
    # torchvision forces malformed (and sub-pixel) RoIs to be at least 1x1 when not aligned.
    roi_w = jnp.maximum(roi_w, 1.0)
    roi_h = jnp.maximum(roi_h, 1.0)
  bin_w = _ieee_div(roi_w, ow)
  bin_h = _ieee_div(roi_h, oh)
  if fixed is not None:
    grid_h = grid_w = fixed
    count = jnp.asarray(float(fixed * fixed), dtype)
  else:
    # torchvision: ceil(roi_h / oh) samples per bin (0 or negative for degenerate aligned RoIs, which
    # then sample nothing); clipped to the static bound.
    grid_h = jnp.clip(jnp.ceil(bin_h), 0, n_grid).astype(jnp.int32)
    grid_w = jnp.clip(jnp.ceil(bin_w), 0, n_grid).astype(jnp.int32)
    count = jnp.maximum(grid_h * grid_w, 1).astype(dtype)[:, None, None, None]
  zeros = jnp.zeros((num,), jnp.int32)
  yidx, wy = _axis_samples(y1, bin_h, grid_h, oh, n_grid, heights, widths, row_offset)
  xidx, wx = _axis_samples(x1, bin_w, grid_w, ow, n_grid, widths, jnp.ones_like(widths), zeros)
  return yidx, wy, xidx, wx, count


def _roi_align_flat(flat, boxes, box_indices, *, batch: int, level_sizes, level_offsets, levels,
                    scales, output_size, sampling_ratio, max_sampling_ratio, aligned, out_dtype):
  """RoIAlign over a flattened buffer of one or more levels.

  Args:
    flat: ``[N, C]``, the levels' ``[B, H_l, W_l, C]`` maps flattened and concatenated.
    boxes, box_indices: checked ``[K, 4]`` float and ``[K]`` int32.
    batch: B.
    level_sizes: static tuple of ``(H_l, W_l)``.
    level_offsets: static tuple of each level's first row in ``flat``.
    levels: ``[K]`` int32 level slot (0-based) of each RoI, or None for a single level.
    scales: static tuple of spatial scales, one per level.
  """
  n_grid, fixed = _check_sampling(sampling_ratio, max_sampling_ratio)
  num = boxes.shape[0]

  def per_level(values, np_dtype):
    table = jnp.asarray(np.asarray(values, np_dtype))
    return jnp.broadcast_to(table[0], (num,)) if levels is None else table[levels]

  heights = per_level([s[0] for s in level_sizes], np.int32)
  widths = per_level([s[1] for s in level_sizes], np.int32)
  scale = per_level(scales, np.float32).astype(boxes.dtype)
  base = per_level(level_offsets, np.int32)
  in_batch = (box_indices >= 0) & (box_indices < batch)
  image_offset = jnp.clip(box_indices, 0, batch - 1) * heights * widths + base  # [K]

  yidx, wy, xidx, wx, count = _sample_grid(boxes, scale, aligned, output_size, n_grid, fixed, heights,
                                           widths, image_offset)
  # RoIs pointing at no image read image 0 with weight 0: zero output, zero gradient.
  wy = jnp.where(in_batch[:, None, None, None], wy, 0.0)
  out = _bilinear_sum(flat, yidx, wy, xidx, wx) / count
  return out.astype(out_dtype)


def roi_align(features, boxes, box_indices, *, output_size, spatial_scale: float = 1.0,
              sampling_ratio: int, aligned: bool = False, max_sampling_ratio: int | None = None):
  """RoIAlign, equal to ``torchvision.ops.roi_align`` (NHWC instead of NCHW).

  Args:
    features: ``[B, H, W, C]`` float feature maps (any float dtype; accumulation is in float32).
    boxes: ``[K, 4]`` xyxy boxes in input-image pixels.
    box_indices: ``[K]`` integer image index of each box (outside ``[0, B)``: zero output).
    output_size: ``oh`` or ``(oh, ow)``.
    spatial_scale: feature-map size / input size (e.g. ``1/16``).
    sampling_ratio: samples per bin side; ``<= 0`` is torchvision's adaptive ``ceil(roi / out)``
      and then requires ``max_sampling_ratio``. Keyword-only and without default on purpose: the
      torchvision default (-1, adaptive) has no static shape.
    aligned: ``False``: torchvision's legacy RoIs of at least 1x1 pixel; ``True``: -0.5 pixel shift
      (Detectron2's setting), no minimum size.
    max_sampling_ratio: static bound on the adaptive grid (only used when ``sampling_ratio <= 0``).
      RoIs whose adaptive grid is larger are sampled with the bound (and differ from torchvision);
      cost grows with ``max_sampling_ratio ** 2``.

  Returns:
    ``[K, oh, ow, C]`` with ``features``' dtype. Differentiable with respect to ``features`` (the
    gradient equals torchvision's backward); no gradient flows to ``boxes``.

  Raises:
    TypeError, ValueError: bad ranks, shapes, dtypes or hyper-parameters (at trace time).
  """
  features = _check_features(features)
  boxes, box_indices = _check_rois(boxes, box_indices)
  output_size = _check_output_size(output_size)
  spatial_scale = _check_scale(spatial_scale)
  b, h, w, c = features.shape
  _check_flat_size(b * h * w)
  return _roi_align_flat(
      features.reshape(b * h * w, c), boxes, box_indices, batch=b, level_sizes=((h, w),),
      level_offsets=(0,), levels=None, scales=(spatial_scale,), output_size=output_size,
      sampling_ratio=sampling_ratio, max_sampling_ratio=max_sampling_ratio, aligned=bool(aligned),
      out_dtype=features.dtype)


# ------------------------------------------------------------------------------------------------
# Multi-level (FPN) RoIAlign
# ------------------------------------------------------------------------------------------------


def assign_fpn_levels(boxes, *, k_min: int, k_max: int, canonical_scale: float = 224,
                      canonical_level: int = 4, eps: float = 1e-6):
  """FPN level of each box (Lin et al. 2017, Eqn. 1), exactly as torchvision's ``LevelMapper``.

  ``k = floor(canonical_level + log2(sqrt(area) / canonical_scale) + eps)`` clamped to
  ``[k_min, k_max]``, computed in float32 with the area ``(x2 - x1) * (y2 - y1)`` (no +1). torchvision
  adds ``eps = 1e-6`` inside the floor (no other epsilon, no ``+1e-8``), so a box whose
  ``sqrt(area)`` falls a hair below a boundary ``224 * 2**j`` through float rounding (relative deficit
  up to ~7e-7) still lands on level ``4 + j``. Zero-area boxes go to ``k_min`` (``log2(0) = -inf``),
  as in torchvision. Inverted boxes with a negative area also go to ``k_min`` here; torchvision's
  level is NaN for them, so ``MultiScaleRoIAlign`` leaves their output all-zero.

  Args:
    boxes: ``[K, 4]`` xyxy in input-image pixels.
    k_min, k_max: the finest and coarsest level (e.g. 2 and 5 for P2-P5).

  Returns:
    ``[K]`` int32 levels in ``[k_min, k_max]`` (the level number itself, not a 0-based slot).
  """
  boxes = check_array(boxes, "boxes", ndim=2, last_dim=4, kind="numeric").astype(jnp.float32)
  k_min = int(k_min)
  k_max = int(k_max)
  if k_max < k_min:
    raise ValueError(f"k_max must be >= k_min, got k_min={k_min}, k_max={k_max}.")
  area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
  s = jnp.sqrt(area)
  k = jnp.floor(canonical_level + jnp.log2(_ieee_div(s, canonical_scale)) + jnp.float32(eps))
  k = jnp.where(jnp.isnan(k), k_min, k)
  return jnp.clip(k, k_min, k_max).astype(jnp.int32)


def _level_maps(features, levels) -> tuple[list[jnp.ndarray], list[int]]:
  if levels is None:
    raise ValueError("levels must be given: the FPN level of each feature map, e.g. (2, 3, 4, 5).")
  try:
    levels = [int(l) for l in levels]
  except TypeError as e:
    raise TypeError(f"levels must be a sequence of ints, got {levels!r}.") from e
  if not levels or levels != list(range(levels[0], levels[0] + len(levels))):
    raise ValueError(f"levels must be consecutive increasing ints like (2, 3, 4, 5), got {levels}.")
  if isinstance(features, Mapping):
    missing = [f"P{l}" for l in levels if f"P{l}" not in features]
    if missing:
      raise ValueError(f"features (a mapping) must hold the maps {[f'P{l}' for l in levels]} for "
                       f"levels {levels}; missing {missing}, got keys {sorted(features)}.")
    maps = [features[f"P{l}"] for l in levels]
    names = [f"features['P{l}']" for l in levels]
  elif isinstance(features, (list, tuple)):
    if len(features) != len(levels):
      raise ValueError(f"features has {len(features)} maps but levels has {len(levels)} entries "
                       f"({levels}); give one level per map, finest first.")
    maps = list(features)
    names = [f"features[{i}]" for i in range(len(maps))]
  else:
    raise TypeError("features must be a list of [B, H, W, C] maps (finest first) or a mapping "
                    f"'P<level>' -> map, got {type(features).__name__}.")
  maps = [_check_features(m, n) for m, n in zip(maps, names)]
  for m, n in zip(maps[1:], names[1:]):
    if (m.shape[0], m.shape[3]) != (maps[0].shape[0], maps[0].shape[3]) or m.dtype != maps[0].dtype:
      raise ValueError(f"all levels must share B, C and dtype: {names[0]} has shape "
                       f"{tuple(maps[0].shape)} dtype {maps[0].dtype}, {n} has shape {tuple(m.shape)} "
                       f"dtype {m.dtype}.")
  return maps, levels


def multilevel_roi_align(features, boxes, box_indices, *, levels: Sequence[int], output_size,
                         sampling_ratio: int, aligned: bool = False, canonical_scale: float = 224,
                         canonical_level: int = 4, max_sampling_ratio: int | None = None):
  """FPN RoIAlign: each RoI pooled once, at its own level; equal to ``torchvision.ops.MultiScaleRoIAlign``.

  Level ``l``'s map is taken to have spatial scale ``2**-l`` (P2 of an 800x1344 input is 200x336:
  scale 1/4), which is what torchvision infers from the image and map sizes (it rounds
  ``log2(map / image)``). Each RoI goes to ``assign_fpn_levels(boxes, k_min=levels[0],
  k_max=levels[-1], ...)`` and is pooled by ``roi_align`` rules at that level only.

  Single pass, no capacities: all levels are flattened into one buffer and every RoI gathers from its
  own level's slice (see the module docstring). Work equals one ``roi_align`` over the K RoIs;
  nothing is dropped whatever the level distribution.

  Args:
    features: list of ``[B, H_l, W_l, C]`` maps, finest first, one per entry of ``levels``; or a
      mapping with keys ``"P<level>"`` (the jaxvision FPN's names; other keys are ignored).
    boxes: ``[K, 4]`` xyxy in input-image pixels.
    box_indices: ``[K]`` integer image index of each box.
    levels: consecutive FPN levels of the maps, e.g. ``(2, 3, 4, 5)``.
    output_size, sampling_ratio, aligned, max_sampling_ratio: as in ``roi_align`` (torchvision's
      detectors use ``output_size=7`` (14 for masks), ``sampling_ratio=2``, ``aligned=False``).
    canonical_scale, canonical_level: the FPN paper's 224 and 4.

  Returns:
    ``[K, oh, ow, C]``, differentiable with respect to every level's map.
  """
  maps, levels = _level_maps(features, levels)
  boxes, box_indices = _check_rois(boxes, box_indices)
  output_size = _check_output_size(output_size)
  b, c = maps[0].shape[0], maps[0].shape[3]
  sizes = tuple((m.shape[1], m.shape[2]) for m in maps)
  offsets = tuple(int(o) for o in np.cumsum([0] + [b * h * w for h, w in sizes])[:-1])
  _check_flat_size(sum(b * h * w for h, w in sizes))
  flat = jnp.concatenate([m.reshape(-1, c) for m in maps], axis=0)  # [sum_l B*H_l*W_l, C]
  slot = assign_fpn_levels(boxes, k_min=levels[0], k_max=levels[-1], canonical_scale=canonical_scale,
                           canonical_level=canonical_level) - levels[0]
  return _roi_align_flat(
      flat, boxes, box_indices, batch=b, level_sizes=sizes, level_offsets=offsets,
      levels=slot if len(levels) > 1 else None, scales=tuple(2.0**-l for l in levels),
      output_size=output_size, sampling_ratio=sampling_ratio, max_sampling_ratio=max_sampling_ratio,
      aligned=bool(aligned), out_dtype=maps[0].dtype)


# ------------------------------------------------------------------------------------------------
# RoIPool and spatial pyramid pooling: max (or mean) over integer windows
# ------------------------------------------------------------------------------------------------


def _round_half_away(v):
  """C's ``round``: halves go away from zero (``jnp.round`` rounds them to even)."""
  t = jnp.trunc(v)
  return jnp.where(jnp.abs(v - t) == 0.5, t + jnp.sign(v), jnp.round(v))


def _pool_windows(boxes, spatial_scale: float, n_bins: int, lo: int, size: int):
  """Integer bin windows ``[start, end)`` along one axis: ``[K, n_bins]`` each (torchvision's rule).

  ``lo`` selects x (0) or y (1). The RoI's ends are rounded (half away from zero) after scaling,
  its extent is ``end - start + 1`` (inclusive pixels, at least 1), bin ``i`` spans
  ``[floor(i * e / n), ceil((i + 1) * e / n))`` from the RoI start, clipped to ``[0, size]``.
  """
  scale = jnp.asarray(spatial_scale, boxes.dtype)
  # _rounded: _round_half_away computes v - trunc(v), which FMA contraction would otherwise evaluate
  # on the unrounded product (2.4999999 instead of torchvision's 2.5 -> a different cell).
  start = _round_half_away(_rounded(boxes[:, lo] * scale)).astype(jnp.int32)
  end = _round_half_away(_rounded(boxes[:, lo + 2] * scale)).astype(jnp.int32)
  extent = jnp.maximum(end - start + 1, 1)
  bin_size = _ieee_div(extent.astype(boxes.dtype), n_bins)  # [K]
  i = jnp.arange(n_bins, dtype=boxes.dtype)
  lo_ = jnp.floor(i[None, :] * bin_size[:, None]).astype(jnp.int32)
  hi_ = jnp.ceil((i[None, :] + 1) * bin_size[:, None]).astype(jnp.int32)
  return (jnp.clip(lo_ + start[:, None], 0, size), jnp.clip(hi_ + start[:, None], 0, size))


def _window_offsets(hstart, hend, wstart, wend):
  """Largest window extents in the batch (traced ints) -> the loop's trip count."""
  max_h = jnp.max(jnp.maximum(hend - hstart, 0), initial=0)
  max_w = jnp.max(jnp.maximum(wend - wstart, 0), initial=0)
  return max_h, max_w


def _window_index(t, max_w, hstart, hend, wstart, wend, base, width):
  """Flat indices ``[K, oh, ow]`` and validity of window offset ``t = dy * max_w + dx``."""
  dy = t // jnp.maximum(max_w, 1)
  dx = t % jnp.maximum(max_w, 1)
  rows = hstart + dy  # [K, oh]
  cols = wstart + dx  # [K, ow]
  ok = (rows < hend)[:, :, None] & (cols < wend)[:, None, :]
  # Clamp so that masked positions still index inside the image (their values are ignored).
  rows = jnp.minimum(rows, jnp.maximum(hend - 1, 0))
  cols = jnp.minimum(cols, jnp.maximum(wend - 1, 0))
  idx = base[:, None, None] + rows[:, :, None] * width + cols[:, None, :]
  return idx, ok


def _window_max(flat, hstart, hend, wstart, wend, base, width: int):
  """Max over each window and the flat index of its first maximum (row-major), -1 if empty."""
  num, oh, ow, c = hstart.shape[0], hstart.shape[1], wstart.shape[1], flat.shape[1]
  max_h, max_w = _window_offsets(hstart, hend, wstart, wend)
  empty = (hend <= hstart)[:, :, None] | (wend <= wstart)[:, None, :]  # [K, oh, ow]
  # torchvision starts from -FLT_MAX (0 for empty bins) and keeps the first strictly larger value.
  init_val = jnp.where(empty[..., None], 0.0, jnp.finfo(flat.dtype).min).astype(flat.dtype)
  init_val = jnp.broadcast_to(init_val, (num, oh, ow, c))
  init_arg = jnp.full((num, oh, ow, c), -1, jnp.int32)

  def body(t, carry):
    val, arg = carry
    idx, ok = _window_index(t, max_w, hstart, hend, wstart, wend, base, width)
    v = _gather(flat, idx)  # [K, oh, ow, C]
    better = ok[..., None] & (v > val)
    return jnp.where(better, v, val), jnp.where(better, idx[..., None], arg)

  return lax.fori_loop(0, max_h * max_w, body, (init_val, init_arg))


def _window_sum(flat, hstart, hend, wstart, wend, base, width: int):
  num, oh, ow, c = hstart.shape[0], hstart.shape[1], wstart.shape[1], flat.shape[1]
  acc_dtype = jnp.promote_types(flat.dtype, jnp.float32)
  max_h, max_w = _window_offsets(hstart, hend, wstart, wend)

  def body(t, acc):
    idx, ok = _window_index(t, max_w, hstart, hend, wstart, wend, base, width)
    return acc + jnp.where(ok[..., None], _gather(flat, idx).astype(acc_dtype), 0.0)

  return lax.fori_loop(0, max_h * max_w, body, jnp.zeros((num, oh, ow, c), acc_dtype))


@functools.partial(jax.custom_vjp, nondiff_argnums=(6, 7))
def _pool_op(flat, hstart, hend, wstart, wend, base, width: int, mode: str):
  """Max or mean of ``flat`` over integer windows -> ``[K, oh, ow, C]`` (empty windows give 0)."""
  return _pool_op_fwd(flat, hstart, hend, wstart, wend, base, width, mode)[0]


def _pool_op_fwd(flat, hstart, hend, wstart, wend, base, width, mode):
  if mode == "max":
    val, arg = _window_max(flat, hstart, hend, wstart, wend, base, width)
    return val, (_stand_in(flat), arg, None)
  area = (jnp.maximum(hend - hstart, 0)[:, :, None] * jnp.maximum(wend - wstart, 0)[:, None, :])
  total = _window_sum(flat, hstart, hend, wstart, wend, base, width)
  inv = jnp.where(area > 0, 1.0 / jnp.maximum(area, 1).astype(total.dtype), 0.0)[..., None]
  return (total * inv).astype(flat.dtype), (_stand_in(flat), (hstart, hend, wstart, wend, base), inv)


def _pool_op_bwd(width, mode, res, g):
  stand_in, saved, inv = res
  flat_shape, flat_dtype = stand_in.shape[1:], stand_in.dtype
  n, c = flat_shape
  if mode == "max":
    arg = saved  # [K, oh, ow, C] spatial flat index of the max, -1 where nothing was pooled
    # One scalar scatter per output element; -1 becomes an out-of-range index and is dropped.
    elem = jnp.where(arg >= 0, arg * c + jnp.arange(c, dtype=jnp.int32), n * c)
    d = jnp.zeros((n * c,), jnp.promote_types(g.dtype, jnp.float32))
    d = d.at[elem.reshape(-1)].add(g.reshape(-1).astype(d.dtype), mode="drop")
    dflat = d.reshape(n, c)
  else:
    hstart, hend, wstart, wend, base = saved
    max_h, max_w = _window_offsets(hstart, hend, wstart, wend)
    gs = g.astype(inv.dtype) * inv

    def body(t, dflat):
      idx, ok = _window_index(t, max_w, hstart, hend, wstart, wend, base, width)
      return dflat.at[idx].add(jnp.where(ok[..., None], gs, 0.0), mode="promise_in_bounds")

    dflat = lax.fori_loop(0, max_h * max_w, body, jnp.zeros(flat_shape, gs.dtype))
  return dflat.astype(flat_dtype), None, None, None, None, None


_pool_op.defvjp(_pool_op_fwd, _pool_op_bwd)


def _roi_pool_impl(features, boxes, box_indices, oh: int, ow: int, spatial_scale: float, mode: str):
  b, h, w, c = features.shape
  hstart, hend = _pool_windows(boxes, spatial_scale, oh, 1, h)  # [K, oh]
  wstart, wend = _pool_windows(boxes, spatial_scale, ow, 0, w)  # [K, ow]
  in_batch = (box_indices >= 0) & (box_indices < b)
  # RoIs pointing at no image get empty windows: zero output, no gradient.
  hend = jnp.where(in_batch[:, None], hend, hstart)
  base = jnp.clip(box_indices, 0, b - 1) * (h * w)
  return _pool_op(features.reshape(b * h * w, c), hstart, hend, wstart, wend, base, w, mode)


def roi_pool(features, boxes, box_indices, *, output_size, spatial_scale: float = 1.0):
  """RoIPool (Fast R-CNN), equal to ``torchvision.ops.roi_pool`` (NHWC instead of NCHW).

  Box ends are scaled and rounded half away from zero (C ``round``) to integer cells; the RoI covers
  ``x2 - x1 + 1`` cells (inclusive ends, at least 1); bin ``i`` of ``n`` covers cells
  ``[floor(i * e / n), ceil((i + 1) * e / n))`` from the RoI start, clipped to the map, so bins may
  overlap by one cell; each output is the max over its bin, 0 for an empty bin (fully outside the map).

  Args:
    features: ``[B, H, W, C]`` float.
    boxes: ``[K, 4]`` xyxy in input-image pixels.
    box_indices: ``[K]`` integer image index (outside ``[0, B)``: zero output).
    output_size: ``oh`` or ``(oh, ow)``.
    spatial_scale: feature-map size / input size.

  Returns:
    ``[K, oh, ow, C]``. The gradient goes to the first maximum of each bin in row-major order (as in
    torchvision); ties therefore match torchvision too.

  Cost: a ``while_loop`` of ``max bin height x max bin width`` steps (the largest bin in the batch),
  each gathering ``[K, oh, ow, C]``; memory is bounded by a few copies of the output.
  """
  features = _check_features(features)
  boxes, box_indices = _check_rois(boxes, box_indices)
  oh, ow = _check_output_size(output_size)
  spatial_scale = _check_scale(spatial_scale)
  _check_flat_size(features.shape[0] * features.shape[1] * features.shape[2])
  return _roi_pool_impl(features, boxes, box_indices, oh, ow, spatial_scale, "max")


def spatial_pyramid_pool(features, boxes, box_indices, *, bins: Sequence[int] = (1, 2, 4),
                         spatial_scale: float = 1.0, pool: str = "max"):
  """Spatial pyramid pooling of RoIs (He et al., SPP-net, 2014): one fixed-length vector per region.

  For every pyramid level ``n`` in ``bins`` the RoI's window on the conv map is split into ``n x n``
  bins and each bin is max-pooled (``pool="max"``, the paper's) or averaged (``pool="avg"``). Bin
  boundaries follow ``roi_pool``'s rule (Fast R-CNN's RoI pooling layer is SPP with one level): box
  ends scaled and rounded half away from zero, inclusive extent ``e = x2 - x1 + 1``, bin ``i`` covers
  ``[floor(i * e / n), ceil((i + 1) * e / n))`` cells from the RoI start, clipped to the map; empty bins
  give 0. So ``spatial_pyramid_pool(..., bins=(n,))`` equals ``roi_pool(..., output_size=n)``
  flattened.

  Args:
    features: ``[B, H, W, C]`` float conv maps.
    boxes: ``[K, 4]`` xyxy in input-image pixels.
    box_indices: ``[K]`` integer image index.
    bins: pyramid levels, e.g. ``(1, 2, 4)`` (the paper uses ``(1, 2, 3, 6)`` for detection).
    spatial_scale: conv-map size / input size (1/16 for ZF-5 / conv5).
    pool: ``"max"`` or ``"avg"``.

  Returns:
    ``[K, C * sum(n * n for n in bins)]``: levels concatenated in the order of ``bins``; within a level
    the ``[n, n, C]`` bins flattened row-major (row, column, channel), i.e. NHWC order (torch/Caffe
    implementations flatten ``[C, n, n]`` instead). Differentiable with respect to ``features``.
  """
  features = _check_features(features)
  boxes, box_indices = _check_rois(boxes, box_indices)
  spatial_scale = _check_scale(spatial_scale)
  if pool not in ("max", "avg"):
    raise ValueError(f"pool must be 'max' or 'avg', got {pool!r}.")
  if isinstance(bins, (int, np.integer)) or not isinstance(bins, Sequence) or not bins:
    raise TypeError(f"bins must be a non-empty sequence of positive ints, got {bins!r}.")
  bins = [check_positive_int(n, f"bins[{i}]") for i, n in enumerate(bins)]
  _check_flat_size(features.shape[0] * features.shape[1] * features.shape[2])
  num, c = boxes.shape[0], features.shape[-1]
  parts = [
      _roi_pool_impl(features, boxes, box_indices, n, n, spatial_scale, pool).reshape(num, n * n * c)
      for n in bins
  ]
  return jnp.concatenate(parts, axis=-1)
