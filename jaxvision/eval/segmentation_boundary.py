"""Boundary F-score (BF) for semantic segmentation: Csurka, Larlus and Perronnin, "What is a good
evaluation measure for semantic segmentation?", BMVC 2013.

mIoU is dominated by region interiors; FCN's skip connections (32s -> 16s -> 8s) mostly improve
the boundaries, which the BF score measures directly. For one image and one class ``c``:

* the boundary of a binary mask is its pixels with at least one 4-neighbour outside the mask
  (pixels on the image border are not boundary pixels because of the border);
* precision ``P`` = fraction of the predicted boundary pixels of ``c`` within ``tolerance`` pixels
  (Euclidean) of a ground-truth boundary pixel of ``c``; recall ``R`` = fraction of the ground-truth
  boundary pixels within ``tolerance`` of a predicted one;
* ``F = 2 P R / (P + R)`` (0 when ``P + R = 0``). A class with boundary pixels on only one side
  scores 0; a class with none on either side is not scored for that image.

``boundary_f_score`` averages ``F`` per class over the images where it is scored, then over the
classes that were scored at least once (``mean_boundary_f``). Pixels with ``ignore_label`` count
as outside every class mask for both maps, and boundary pixels on or next to an ignored pixel are
dropped from both sides (the annotation does not say where the boundary is there). Host-side NumPy;
``tolerance`` in pixels at the evaluation resolution (Csurka et al. use 0.75% of the image
diagonal: ``boundary_tolerance(h, w)``).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = ["boundary_f_score", "boundary_map", "boundary_tolerance"]


def boundary_tolerance(height: int, width: int, fraction: float = 0.0075) -> float:
  """Csurka et al.'s tolerance: ``fraction`` (0.75%) of the image diagonal, in pixels."""
  return fraction * math.hypot(height, width)


def boundary_map(mask: np.ndarray) -> np.ndarray:
  """Boundary pixels of a bool ``[H, W]`` mask: in the mask with a 4-neighbour outside it."""
  m = np.asarray(mask, bool)
  inner = m.copy()
  inner[1:, :] &= m[:-1, :]
  inner[:-1, :] &= m[1:, :]
  inner[:, 1:] &= m[:, :-1]
  inner[:, :-1] &= m[:, 1:]
  return m & ~inner


def _dilate(mask: np.ndarray, radius: float) -> np.ndarray:
  """Pixels within Euclidean distance ``radius`` of a True pixel (disk dilation by shifts)."""
  r = int(math.floor(radius))
  out = mask.copy()
  h, w = mask.shape
  for dy in range(-r, r + 1):
    for dx in range(-r, r + 1):
      if (dy, dx) == (0, 0) or dy * dy + dx * dx > radius * radius:
        continue
      ys, yd = (slice(0, h - dy), slice(dy, h)) if dy >= 0 else (slice(-dy, h), slice(0, h + dy))
      xs, xd = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
      out[yd, xd] |= mask[ys, xs]
  return out


def boundary_f_score(labels: Any, predictions: Any, num_classes: int, *, tolerance: float = 2.0,
                     ignore_label: int | None = 255) -> dict[str, Any]:
  """Mean boundary F-score of ``predictions`` against ``labels`` (module docstring).

  Args:
    labels: int ``[B, H, W]`` (or ``[H, W]``) ground truth.
    predictions: int, the same shape.
    num_classes: classes ``0..C-1`` scored (background included, like mIoU).
    tolerance: distance in pixels within which a boundary pixel counts as matched (>= 0).
    ignore_label: label of unannotated pixels, or None.

  Returns:
    ``{"mean_boundary_f": float, "boundary_f": [C] float array (0 where never scored),
    "boundary_f_valid": [C] bool, "boundary_precision": [C], "boundary_recall": [C]}``
    (precision and recall averaged like ``F``).

  Raises:
    ValueError: mismatched shapes, non-integer inputs or a negative tolerance.
  """
  labels = np.asarray(labels)
  predictions = np.asarray(predictions)
  if labels.shape != predictions.shape or labels.ndim not in (2, 3):
    raise ValueError(f"labels and predictions must both be [B, H, W] or [H, W] of the same shape, got "
                     f"{labels.shape} and {predictions.shape}.")
  if not (np.issubdtype(labels.dtype, np.integer) and np.issubdtype(predictions.dtype, np.integer)):
    raise ValueError(f"labels and predictions must be integer label maps, got {labels.dtype} and "
                     f"{predictions.dtype}.")
  if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
    raise ValueError(f"num_classes must be a positive int, got {num_classes!r}.")
  if not tolerance >= 0:
    raise ValueError(f"tolerance must be >= 0 pixels, got {tolerance!r}.")
  if labels.ndim == 2:
    labels, predictions = labels[None], predictions[None]

  sums = np.zeros((3, num_classes))  # F, P, R
  counts = np.zeros(num_classes)
  for gt, pred in zip(labels, predictions):
    ignored = (gt == ignore_label) if ignore_label is not None else np.zeros(gt.shape, bool)
    usable = ~_dilate(ignored, 1.0)
    for c in range(num_classes):
      gt_b = boundary_map((gt == c) & ~ignored) & usable
      pr_b = boundary_map((pred == c) & ~ignored) & usable
      n_gt, n_pr = int(gt_b.sum()), int(pr_b.sum())
      if n_gt == 0 and n_pr == 0:
        continue
      precision = float((pr_b & _dilate(gt_b, tolerance)).sum()) / n_pr if n_pr else 0.0
      recall = float((gt_b & _dilate(pr_b, tolerance)).sum()) / n_gt if n_gt else 0.0
      f = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
      sums[:, c] += (f, precision, recall)
      counts[c] += 1
  valid = counts > 0
  per_class = np.where(valid, sums / np.maximum(counts, 1), 0.0)
  return {"mean_boundary_f": float(per_class[0][valid].mean()) if valid.any() else 0.0,
          "boundary_f": per_class[0], "boundary_f_valid": valid,
          "boundary_precision": per_class[1], "boundary_recall": per_class[2]}
