"""Instance-mask ops of Mask R-CNN (He, Gkioxari, Dollar and Girshick, "Mask R-CNN", ICCV 2017,
https://arxiv.org/abs/1703.06870): training targets cropped from the ground-truth masks at the
RoIs, pasting the ``m x m`` predictions back into the image, and the IoU of binary masks.

All static-shape and ``jit``/``vmap``-safe; no Python loop over boxes.

* ``mask_targets`` (paper Sec. 3, "the intersection between an RoI and its associated ground-truth
  mask"): each positive RoI's gt mask resampled to ``m x m`` **by RoIAlign at the RoI** (aligned,
  i.e. pixel centres at ``+0.5``, fixed ``sampling_ratio``), then thresholded at 0.5, as Detectron2
  does. The masks may be stored at a reduced resolution (``mask_stride`` ``s``: the batch's
  ``masks`` are ``[B, M, H / s, W / s]``, mask pixel ``(i, j)`` covering input pixels
  ``[s i, s (i + 1)) x [s j, s (j + 1))``); the RoIs stay in input pixels and the op scales them by
  ``1 / s``. The masks of a whole batch are one ``[B M, H / s, W / s, 1]`` "feature map" and each
  RoI reads its gt's slice (``image * M + gt``), so memory is that of the masks themselves.
* ``paste_masks`` (paper Sec. 3 "Inference": "the m x m floating-number mask output is then resized
  to the RoI size, and binarized at a threshold of 0.5"): each ``m x m`` mask is resampled
  bilinearly onto the image pixels its box covers, with the half-pixel convention of
  ``torch.nn.functional.grid_sample(align_corners=False)`` and zero padding outside the mask grid
  (Detectron2's ``paste_masks_in_image``): image pixel ``x`` (centre ``x + 0.5``) reads the mask at
  ``u = (x + 0.5 - x1) / (x2 - x1) * m - 0.5``. Bilinear weights are separable, so the paste is
  two small matrix products per detection: ``P = W_y  mask  W_x^T`` with ``W_y [H, m]``,
  ``W_x [W, m]``, ``W[x, c] = max(0, 1 - |u(x) - c|)`` (zero beyond the grid = zero padding).
  Work ``D (H m^2 + H W m)`` multiply-adds, no gathers, no ``[D, H, W, 4]`` index arrays.
  Degenerate (zero or negative side, non-finite) boxes paste nothing.
"""

from __future__ import annotations

from typing import Sequence

import jax.numpy as jnp

from jaxvision.ops import roi as roi_ops
from jaxvision.ops._checks import check_array

__all__ = ["mask_targets", "paste_masks", "paste_weights", "mask_iou"]


def _check_size(size, name: str) -> tuple[int, int]:
  if isinstance(size, int):
    size = (size, size)
  try:
    h, w = (int(v) for v in size)
  except (TypeError, ValueError):
    raise ValueError(f"{name} must be an int or a pair (H, W) of positive ints, got {size!r}.") from None
  if h <= 0 or w <= 0:
    raise ValueError(f"{name} must be positive, got {size!r}.")
  return h, w


def mask_targets(gt_masks, rois, image_index, gt_index, *, output_size: int = 28,
                 mask_stride: int = 1, sampling_ratio: int = 2, threshold: float | None = 0.5):
  """Mask R-CNN's ``m x m`` targets: each RoI's gt mask RoIAligned at the RoI.

  Args:
    gt_masks: ``[B, M, Hm, Wm]`` bool (or float in ``[0, 1]``) instance masks of the batch at
      stride ``mask_stride`` of the network input (the batch contract's ``masks``).
    rois: ``[N, 4]`` xyxy RoIs in network-input pixels.
    image_index: ``[N]`` int image of each RoI; gt_index: ``[N]`` int gt slot (``0..M-1``) of each
      RoI (``RoiSample.matched_gt``). A row with either index outside its range (e.g. -1 on
      padding or background RoIs) gets an all-zero target.
    output_size: ``m`` (28 in the paper).
    mask_stride: ``s``: ``Hm = H / s``. The RoIs are mapped onto the masks with scale ``1 / s``.
    sampling_ratio: RoIAlign samples per bin side (2).
    threshold: binarize at this value (0.5, Detectron2); None returns the soft RoIAligned values.

  Returns:
    ``[N, m, m]`` float32 targets (0/1 when thresholded).

  Raises:
    ValueError, TypeError: bad shapes, dtypes or settings (naming the argument).
  """
  gt_masks = check_array(gt_masks, "gt_masks", ndim=4)
  if not (jnp.issubdtype(gt_masks.dtype, jnp.number) or gt_masks.dtype == jnp.bool_):
    raise TypeError(f"gt_masks must be bool or numeric, got dtype {gt_masks.dtype}.")
  rois = check_array(rois, "rois", ndim=2, last_dim=4, kind="numeric")
  n = rois.shape[0]
  image_index = check_array(image_index, "image_index", shape=(n,), kind="int")
  gt_index = check_array(gt_index, "gt_index", shape=(n,), kind="int")
  m, _ = _check_size(output_size, "output_size")
  if isinstance(mask_stride, bool) or not isinstance(mask_stride, int) or mask_stride < 1:
    raise ValueError(f"mask_stride must be a positive int, got {mask_stride!r}.")
  b, num_gt, hm, wm = gt_masks.shape
  if b * num_gt == 0:
    return jnp.zeros((n, m, m), jnp.float32)
  ok = (image_index >= 0) & (image_index < b) & (gt_index >= 0) & (gt_index < num_gt)
  flat_index = jnp.where(ok, image_index * num_gt + gt_index, -1).astype(jnp.int32)
  planes = gt_masks.reshape(b * num_gt, hm, wm, 1).astype(jnp.float32)  # (B M, Hm, Wm, 1)
  soft = roi_ops.roi_align(planes, jnp.asarray(rois, jnp.float32), flat_index, output_size=m,
                           spatial_scale=1.0 / mask_stride, sampling_ratio=sampling_ratio,
                           aligned=True)[..., 0]  # (N, m, m)
  soft = jnp.where(ok[:, None, None] & jnp.isfinite(soft), soft, 0.0)
  if threshold is None:
    return soft
  return (soft >= threshold).astype(jnp.float32)


def paste_weights(start, end, out_size: int, m: int):
  """Bilinear paste weights along one axis: ``[D, out_size, m]``.

  ``W[d, x, c] = max(0, 1 - |u - c|)`` with ``u = (x + 0.5 - start) / (end - start) * m - 0.5``;
  all zero for a degenerate (``end <= start``) or non-finite interval.
  """
  start = jnp.asarray(start, jnp.float32)[:, None, None]  # (D, 1, 1)
  end = jnp.asarray(end, jnp.float32)[:, None, None]
  length = end - start
  ok = jnp.isfinite(start) & jnp.isfinite(end) & (length > 0)
  centres = jnp.arange(out_size, dtype=jnp.float32)[None, :, None] + 0.5  # (1, X, 1)
  u = (centres - start) / jnp.where(ok, length, 1.0) * m - 0.5  # (D, X, 1)
  taps = jnp.arange(m, dtype=jnp.float32)[None, None, :]  # (1, 1, m)
  w = jnp.maximum(0.0, 1.0 - jnp.abs(u - taps))  # (D, X, m)
  return jnp.where(ok, w, 0.0)


def paste_masks(masks, boxes, image_size: Sequence[int] | int, *, threshold: float | None = 0.5):
  """Pastes ``[D, m, m]`` mask probabilities into ``[D, H, W]`` image masks at their boxes.

  Args:
    masks: ``[D, m, m]`` (or ``[D, mh, mw]``) float probabilities (apply the sigmoid first).
    boxes: ``[D, 4]`` xyxy in image pixels (the image is ``[0, W] x [0, H]``).
    image_size: static ``(H, W)`` of the output.
    threshold: output ``masks >= threshold`` as bool (0.5 in the paper); None returns the
      resampled float probabilities.

  Returns:
    ``[D, H, W]`` bool (or float32 if ``threshold`` is None). Zero outside each box (up to the
    half-pixel bilinear fall-off at its edge) and for degenerate boxes.
  """
  masks = check_array(masks, "masks", ndim=3, kind="float")
  d, mh, mw = masks.shape
  boxes = check_array(boxes, "boxes", shape=(d, 4), kind="numeric")
  h, w = _check_size(image_size, "image_size")
  boxes = boxes.astype(jnp.float32)
  wy = paste_weights(boxes[:, 1], boxes[:, 3], h, mh)  # (D, H, mh)
  wx = paste_weights(boxes[:, 0], boxes[:, 2], w, mw)  # (D, W, mw)
  rows = jnp.einsum("dym,dmn->dyn", wy, masks.astype(jnp.float32))  # (D, H, mw)
  pasted = jnp.einsum("dyn,dxn->dyx", rows, wx)  # (D, H, W)
  pasted = jnp.where(jnp.isfinite(pasted), pasted, 0.0)
  if threshold is None:
    return pasted
  return pasted >= threshold


def mask_iou(a, b, *, axes: Sequence[int] = (-2, -1)):
  """IoU of binary masks along ``axes`` (default the last two): ``|a & b| / |a | b|``, 0 where both
  are empty. ``a`` and ``b`` broadcast; nonzero is foreground."""
  a = jnp.asarray(a) != 0
  b = jnp.asarray(b) != 0
  axes = tuple(axes)
  inter = jnp.sum(a & b, axis=axes, dtype=jnp.float32)
  union = jnp.sum(a | b, axis=axes, dtype=jnp.float32)
  return jnp.where(union > 0, inter / jnp.maximum(union, 1.0), 0.0)
