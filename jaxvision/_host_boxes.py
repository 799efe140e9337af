"""NumPy box helpers for host-side code (data transforms in grain workers, VOC evaluation).

The jnp ops in ``jaxvision.ops.boxes`` are the library's box functions; this module holds the few
that host code needs without importing JAX (grain worker processes stay light, and evaluation runs
in float64). Same conventions: xyxy, continuous pixel coordinates, no ``+1`` unless asked.
"""

from __future__ import annotations

import numpy as np


def box_area(boxes: np.ndarray, *, pixel_inclusive: bool = False) -> np.ndarray:
  """``[N, 4] -> [N]`` area; inverted boxes count as 0. ``pixel_inclusive`` adds the devkit's ``+1``."""
  one = 1.0 if pixel_inclusive else 0.0
  return (np.clip(boxes[:, 2] - boxes[:, 0] + one, 0.0, None) *
          np.clip(boxes[:, 3] - boxes[:, 1] + one, 0.0, None))


def box_iou(a: np.ndarray, b: np.ndarray, *, pixel_inclusive: bool = False) -> np.ndarray:
  """``[N, 4] x [M, 4] -> [N, M]`` IoU, 0 where the union is 0 (as ``jaxvision.ops.boxes.box_iou``).

  ``pixel_inclusive=True`` reproduces the PASCAL VOC devkit (``+1`` on widths and heights).
  """
  one = 1.0 if pixel_inclusive else 0.0
  iw = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]) + one
  ih = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]) + one
  inter = np.clip(iw, 0.0, None) * np.clip(ih, 0.0, None)
  union = (box_area(a, pixel_inclusive=pixel_inclusive)[:, None] +
           box_area(b, pixel_inclusive=pixel_inclusive)[None, :] - inter)
  ok = union > 0
  return np.where(ok, inter / np.where(ok, union, 1.0), 0.0)
