"""Box encodings: the regression targets of anchor-based and anchor-free detectors, and their inverses.

Four parameterizations, each an ``encode`` (ground-truth boxes -> regression targets) and a
``decode`` (network outputs -> xyxy boxes) pair:

* **R-CNN deltas** ``(dx, dy, dw, dh)`` relative to an anchor / proposal (Girshick et al., "Rich
  feature hierarchies...", CVPR 2014, Appendix C; Faster R-CNN, Ren et al. 2015, Eq. 2). Used by the
  RPN, the Fast/Faster R-CNN box head, SSD and RetinaNet. Numerically identical to
  ``torchvision.models.detection._utils.BoxCoder.encode_single`` / ``decode_single``::

      dx = wx (gx - ax) / aw     dy = wy (gy - ay) / ah     dw = ww log(gw / aw)     dh = wh log(gh / ah)

  where ``(ax, ay, aw, ah)`` is the anchor's centre and size, ``(gx, gy, gw, gh)`` the box's.
  The weights ``(wx, wy, ww, wh)`` rescale the targets to unit-ish variance: ``RPN_WEIGHTS`` (1, 1, 1, 1)
  for the RPN and RetinaNet, ``FAST_RCNN_WEIGHTS`` (10, 10, 5, 5) for the Fast R-CNN head. SSD's
  "variances" (0.1, 0.1, 0.2, 0.2) divide instead of multiply, so they are the same (10, 10, 5, 5)
  weights (``SSD_WEIGHTS``).
* **YOLO v1** (Redmon et al., "You Only Look Once", CVPR 2016, Sec. 2): the grid cell containing a box's
  centre is responsible for it; the target is the centre's offset inside that cell, in ``[0, 1]``, and
  the box's width and height relative to the whole image. (The paper's square root of ``w``, ``h``
  belongs to the loss, not to this encoding.)
* **YOLO v2** direct location prediction (Redmon & Farhadi, "YOLO9000", CVPR 2017, Sec. 2, Fig. 3):
  ``bx = sigmoid(tx) + cx``, ``by = sigmoid(ty) + cy``, ``bw = pw exp(tw)``, ``bh = ph exp(th)`` in
  grid-cell units, with ``(cx, cy)`` the cell's top-left corner and ``(pw, ph)`` the prior's size.
* **FCOS** (Tian et al., "FCOS: Fully Convolutional One-Stage Object Detection", ICCV 2019, Eq. 1):
  distances ``(l, t, r, b)`` from a location to the box's four sides, optionally divided by a
  per-location normalizer (the level's stride, as in the paper's improved version). With points at the
  anchors' centres and the anchors' sizes as the normalizer this is exactly torchvision's
  ``BoxLinearCoder(normalize_by_size=True)`` used by its FCOS.

Boxes are xyxy in continuous pixel coordinates (DESIGN.md); every function takes ``[..., 4]`` arrays
(any leading dimensions, broadcast against each other) and is jit-safe and vmappable.

Degenerate input: torchvision divides by the anchor's size and takes ``log`` of the box's, so a
zero-size anchor or box gives ``inf``/``NaN`` targets there. Padded ground truth (all-zero boxes,
DESIGN.md) is common in jaxvision's static-shape batches and a ``NaN`` target poisons a masked loss
(``0 * NaN = NaN``), so the encoders here return 0 for every target that is undefined (and only
those); the result equals torchvision's wherever torchvision's is finite.
"""

from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxvision.ops._checks import check_array, check_positive_int

RPN_WEIGHTS = (1.0, 1.0, 1.0, 1.0)
"""``BoxCoder`` weights of the RPN (and RetinaNet): the raw deltas."""
FAST_RCNN_WEIGHTS = (10.0, 10.0, 5.0, 5.0)
"""``BoxCoder`` weights of the Fast/Faster R-CNN box head."""
SSD_WEIGHTS = (10.0, 10.0, 5.0, 5.0)
"""SSD's variances (0.1, 0.1, 0.2, 0.2) expressed as weights (1 / variance); torchvision's SSD uses these."""
BBOX_XFORM_CLIP = math.log(1000.0 / 16)
"""Upper clamp of ``dw``, ``dh`` before ``exp`` in ``decode_boxes`` (torchvision's ``bbox_xform_clip``)."""


# ------------------------------------------------------------------------------------------------
# Helpers
# ------------------------------------------------------------------------------------------------


def _float(x):
  """Promotes integer arrays to float32 (keeps float dtypes)."""
  return x if jnp.issubdtype(x.dtype, jnp.floating) else x.astype(jnp.float32)


def _check_weights(weights) -> tuple[float, float, float, float]:
  if isinstance(weights, (str, bytes)) or not isinstance(weights, (Sequence, np.ndarray)):
    raise TypeError(f"weights must be a sequence of 4 positive numbers (wx, wy, ww, wh), got {weights!r}.")
  try:
    values = tuple(float(w) for w in weights)
  except (TypeError, ValueError) as e:
    raise TypeError(f"weights must be a sequence of 4 positive numbers, got {weights!r}.") from e
  if len(values) != 4 or not all(math.isfinite(w) and w > 0 for w in values):
    raise ValueError(f"weights must be 4 positive finite numbers (wx, wy, ww, wh), got {weights!r}.")
  return values  # type: ignore[return-value]


def _check_broadcast(a, b, name_a: str, name_b: str) -> None:
  try:
    jnp.broadcast_shapes(a.shape, b.shape)
  except ValueError:
    raise ValueError(f"{name_a} and {name_b} must broadcast against each other, got {name_a} shape "
                     f"{tuple(a.shape)} and {name_b} shape {tuple(b.shape)}.") from None


def _image_hw(image_hw):
  """``(h, w)`` of one image as two float32 scalars (a tuple or a traced ``[2]`` array)."""
  if isinstance(image_hw, (int, float)) or image_hw is None:
    raise TypeError(f"image_hw must be (h, w), got {image_hw!r}.")
  hw = jnp.asarray(image_hw, jnp.float32)
  if hw.shape != (2,):
    raise ValueError(f"image_hw must be (h, w) with shape [2], got shape {tuple(hw.shape)}.")
  return hw[0], hw[1]


def _grid_hw(grid_hw) -> tuple[int, int]:
  if isinstance(grid_hw, (int, np.integer)) and not isinstance(grid_hw, bool):
    grid_hw = (grid_hw, grid_hw)
  if not isinstance(grid_hw, (tuple, list)) or len(grid_hw) != 2:
    raise TypeError(f"grid_hw must be an int S or a pair (S_h, S_w) of Python ints, got {grid_hw!r}.")
  return check_positive_int(grid_hw[0], "grid_hw[0]"), check_positive_int(grid_hw[1], "grid_hw[1]")


def _size_center(boxes):
  """Width, height and centre exactly as torchvision computes them (``x1 + 0.5 * w``)."""
  w = boxes[..., 2] - boxes[..., 0]
  h = boxes[..., 3] - boxes[..., 1]
  return w, h, boxes[..., 0] + 0.5 * w, boxes[..., 1] + 0.5 * h


def _safe_log_ratio(num, den):
  """``log(num / den)`` where both are positive, else 0 (undefined target, see the module docstring)."""
  ok = (num > 0) & (den > 0)
  return jnp.where(ok, jnp.log(jnp.where(ok, num, 1.0) / jnp.where(ok, den, 1.0)), 0.0)


def _safe_div(num, den):
  ok = den > 0
  return jnp.where(ok, num / jnp.where(ok, den, 1.0), 0.0)


# ------------------------------------------------------------------------------------------------
# R-CNN deltas (RPN, Fast R-CNN, SSD, RetinaNet)
# ------------------------------------------------------------------------------------------------


def encode_boxes(boxes, anchors, weights: Sequence[float] = RPN_WEIGHTS):
  """Encodes ``boxes`` as ``(dx, dy, dw, dh)`` deltas relative to ``anchors``.

  Equal to torchvision's ``BoxCoder(weights).encode_single(boxes, anchors)`` (note the order: the
  ground truth first, like torchvision's ``reference_boxes``).

  Args:
    boxes: ``[..., 4]`` xyxy target boxes (e.g. the matched ground truth of each anchor).
    anchors: ``[..., 4]`` xyxy anchors or proposals, broadcastable against ``boxes``.
    weights: ``(wx, wy, ww, wh)``, positive: ``RPN_WEIGHTS`` (default), ``FAST_RCNN_WEIGHTS`` or
      ``SSD_WEIGHTS``.

  Returns:
    ``[..., 4]`` float deltas ``(wx dx, wy dy, ww log(gw/aw), wh log(gh/ah))``. A delta whose formula is
    undefined (anchor of non-positive width for ``dx``/``dw``; box of non-positive width for ``dw``;
    likewise for heights) is 0 instead of torchvision's ``inf``/``NaN``, so padded boxes stay finite.

  Raises:
    TypeError, ValueError: bad ``boxes``/``anchors``/``weights``, naming the argument.
  """
  wx, wy, ww, wh = _check_weights(weights)
  boxes = _float(check_array(boxes, "boxes", last_dim=4, kind="numeric"))
  anchors = _float(check_array(anchors, "anchors", last_dim=4, kind="numeric"))
  _check_broadcast(boxes, anchors, "boxes", "anchors")
  aw, ah, ax, ay = _size_center(anchors)
  gw, gh, gx, gy = _size_center(boxes)
  # Same operation order as torchvision: (w * (g - a)) / a_size, then w * log(g_size / a_size).
  dx = _safe_div(wx * (gx - ax), aw)
  dy = _safe_div(wy * (gy - ay), ah)
  dw = ww * _safe_log_ratio(gw, aw)
  dh = wh * _safe_log_ratio(gh, ah)
  return jnp.stack([dx, dy, dw, dh], axis=-1)


def decode_boxes(deltas, anchors, weights: Sequence[float] = RPN_WEIGHTS,
                 clip: float | None = BBOX_XFORM_CLIP):
  """Applies ``(dx, dy, dw, dh)`` deltas to ``anchors``; the inverse of ``encode_boxes``.

  Equal to torchvision's ``BoxCoder(weights, bbox_xform_clip=clip).decode_single``: the deltas are
  divided by the weights, ``dw``/``dh`` are clamped from above at ``clip`` (only from above: very
  negative values give ~0-size boxes) so ``exp`` cannot overflow, and the box is rebuilt around the
  shifted centre as ``centre -/+ 0.5 * size``. torchvision's class-specific layout ``[N, 4 C]`` is
  ``deltas`` of shape ``[N, C, 4]`` with ``anchors[:, None, :]`` here.

  Args:
    deltas: ``[..., 4]`` network outputs ``(dx, dy, dw, dh)`` (still multiplied by the weights).
    anchors: ``[..., 4]`` xyxy anchors, broadcastable against ``deltas``.
    weights: as in ``encode_boxes``.
    clip: upper clamp of ``dw``, ``dh`` after dividing by the weights; ``None`` for no clamp.

  Returns:
    ``[..., 4]`` xyxy boxes (not clipped to the image: use ``boxes.clip_boxes``).
  """
  wx, wy, ww, wh = _check_weights(weights)
  if clip is not None and (isinstance(clip, bool) or not isinstance(clip, (int, float))):
    raise TypeError(f"clip must be a Python float or None, got {clip!r}.")
  deltas = _float(check_array(deltas, "deltas", last_dim=4, kind="numeric"))
  anchors = check_array(anchors, "anchors", last_dim=4, kind="numeric").astype(deltas.dtype)
  _check_broadcast(deltas, anchors, "deltas", "anchors")
  aw, ah, ax, ay = _size_center(anchors)
  dx = deltas[..., 0] / wx
  dy = deltas[..., 1] / wy
  dw = deltas[..., 2] / ww
  dh = deltas[..., 3] / wh
  if clip is not None:
    dw = jnp.minimum(dw, clip)
    dh = jnp.minimum(dh, clip)
  cx = dx * aw + ax
  cy = dy * ah + ay
  half_w = 0.5 * (jnp.exp(dw) * aw)
  half_h = 0.5 * (jnp.exp(dh) * ah)
  return jnp.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], axis=-1)


# ------------------------------------------------------------------------------------------------
# YOLO v1
# ------------------------------------------------------------------------------------------------


def _cell_and_offset(centre, cell_size, n_cells: int):
  """Cell index ``floor(centre / cell_size)`` clipped to the grid, and the centre's offset in it.

  A centre exactly on the border between two cells belongs to the cell on its right/bottom (floor),
  except on the image's right/bottom edge, which belongs to the last cell (offset 1). Centres outside
  the image are assigned to the nearest border cell and their offsets clipped to ``[0, 1]``.
  """
  g = centre / cell_size  # grid units
  cell = jnp.clip(jnp.floor(g), 0, n_cells - 1)
  return cell.astype(jnp.int32), jnp.clip(g - cell, 0.0, 1.0)


def encode_yolo_v1(boxes, image_hw, grid_hw):
  """YOLO v1 targets: the responsible cell of each box and ``(x, y, w, h)`` relative to it / the image.

  Args:
    boxes: ``[..., 4]`` xyxy boxes in pixels.
    image_hw: ``(h, w)`` of the network input (tuple or traced ``[2]`` array).
    grid_hw: ``S`` or ``(S_h, S_w)``, Python ints (the paper: ``S = 7``).

  Returns:
    ``(cells, codes)``: ``cells`` int32 ``[..., 2]`` = ``(row, col)`` of the cell containing the box's
    centre (see ``_cell_and_offset`` for the border rule); ``codes`` float ``[..., 4]`` = ``(x, y, w, h)``
    with ``x, y`` in ``[0, 1]`` the centre's offset inside that cell and ``w, h`` the box's size divided
    by the image's. Scattering codes into the ``[S_h, S_w, ...]`` target grid (and resolving two boxes in
    one cell) is the family's ``assign_targets``'s job.
  """
  sh, sw = _grid_hw(grid_hw)
  boxes = _float(check_array(boxes, "boxes", last_dim=4, kind="numeric"))
  img_h, img_w = _image_hw(image_hw)
  w, h, cx, cy = _size_center(boxes)
  col, x = _cell_and_offset(cx, img_w / sw, sw)
  row, y = _cell_and_offset(cy, img_h / sh, sh)
  return jnp.stack([row, col], axis=-1), jnp.stack([x, y, w / img_w, h / img_h], axis=-1)


def _cell_corners(sh: int, sw: int, ndim: int):
  """Column and row index of every cell, shaped to broadcast against ``[S_h, S_w, ...]`` (float32)."""
  col = jnp.arange(sw, dtype=jnp.float32).reshape((1, sw) + (1,) * (ndim - 2))
  row = jnp.arange(sh, dtype=jnp.float32).reshape((sh, 1) + (1,) * (ndim - 2))
  return col, row


def decode_yolo_v1(codes, image_hw):
  """Turns a YOLO v1 prediction grid into xyxy pixel boxes; the inverse of ``encode_yolo_v1``.

  Args:
    codes: ``[S_h, S_w, 4]`` or ``[S_h, S_w, B, 4]`` ``(x, y, w, h)`` per cell (and per box predictor):
      ``x, y`` the centre's offset inside the cell, ``w, h`` relative to the image (after undoing any
      square root).
    image_hw: ``(h, w)`` of the network input.

  Returns:
    xyxy pixel boxes with the shape of ``codes``: centre ``((col + x) W / S_w, (row + y) H / S_h)``,
    size ``(w W, h H)``.
  """
  codes = _float(check_array(codes, "codes", ndim=(3, 4), last_dim=4, kind="numeric"))
  img_h, img_w = _image_hw(image_hw)
  sh, sw = codes.shape[0], codes.shape[1]
  col, row = _cell_corners(sh, sw, codes.ndim - 1)
  cx = (col + codes[..., 0]) * (img_w / sw)
  cy = (row + codes[..., 1]) * (img_h / sh)
  w = codes[..., 2] * img_w
  h = codes[..., 3] * img_h
  return jnp.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], axis=-1)


# ------------------------------------------------------------------------------------------------
# YOLO v2 (direct location prediction)
# ------------------------------------------------------------------------------------------------


def encode_yolo_v2(boxes, priors, image_hw, grid_hw, *, eps: float = 1e-6):
  """YOLOv2 targets ``(tx, ty, tw, th)``: the inverse of ``b = sigmoid(t) + c``, ``b = p exp(t)``.

  Args:
    boxes: ``[..., 4]`` xyxy boxes in pixels.
    priors: ``[..., 2]`` prior ``(pw, ph)`` in grid-cell units (YOLOv2's anchors, e.g. from
      ``anchors.kmeans_anchors`` on sizes divided by the stride), broadcastable against ``boxes[..., :2]``:
      usually the prior matched to each box.
    image_hw: ``(h, w)`` of the network input.
    grid_hw: ``S`` or ``(S_h, S_w)`` (YOLOv2 at 416 px: 13).
    eps: the centre's offset in its cell is clipped to ``[eps, 1 - eps]`` before the logit, so a centre
      on a cell border gives a large finite ``tx`` rather than ``+-inf``.

  Returns:
    ``(cells, codes)``: ``cells`` int32 ``[..., 2]`` ``(row, col)`` of the responsible cell (as
    ``encode_yolo_v1``); ``codes`` ``[..., 4]`` ``(logit(bx - cx), logit(by - cy), log(bw / pw),
    log(bh / ph))``, with ``tw``/``th`` 0 where the box or prior has a non-positive size.
  """
  sh, sw = _grid_hw(grid_hw)
  if not isinstance(eps, float) or not 0.0 < eps < 0.5:
    raise ValueError(f"eps must be a Python float in (0, 0.5), got {eps!r}.")
  boxes = _float(check_array(boxes, "boxes", last_dim=4, kind="numeric"))
  priors = _float(check_array(priors, "priors", last_dim=2, kind="numeric"))
  _check_broadcast(boxes[..., :2], priors, "boxes[..., :2]", "priors")
  img_h, img_w = _image_hw(image_hw)
  w, h, cx, cy = _size_center(boxes)
  stride_x, stride_y = img_w / sw, img_h / sh
  col, fx = _cell_and_offset(cx, stride_x, sw)
  row, fy = _cell_and_offset(cy, stride_y, sh)
  fx = jnp.clip(fx, eps, 1.0 - eps)
  fy = jnp.clip(fy, eps, 1.0 - eps)
  tx = jnp.log(fx) - jnp.log1p(-fx)  # logit
  ty = jnp.log(fy) - jnp.log1p(-fy)
  tw = _safe_log_ratio(w / stride_x, priors[..., 0])
  th = _safe_log_ratio(h / stride_y, priors[..., 1])
  return jnp.stack([row, col], axis=-1), jnp.stack([tx, ty, tw, th], axis=-1)


def decode_yolo_v2(codes, priors, image_hw, *, clip: float | None = None):
  """Turns a YOLOv2 prediction grid into xyxy pixel boxes (the paper's Fig. 3).

  Args:
    codes: ``[S_h, S_w, A, 4]`` raw ``(tx, ty, tw, th)``, one row per prior.
    priors: ``[A, 2]`` prior ``(pw, ph)`` in grid-cell units.
    image_hw: ``(h, w)`` of the network input; one grid cell is ``(h / S_h, w / S_w)`` pixels.
    clip: optional upper clamp of ``tw``, ``th`` before ``exp`` (the paper has none; ``None``).

  Returns:
    ``[S_h, S_w, A, 4]`` xyxy pixel boxes with centre ``(sigmoid(tx) + col, sigmoid(ty) + row)`` and size
    ``(pw exp(tw), ph exp(th))``, both in grid units, times the cell size.
  """
  codes = _float(check_array(codes, "codes", ndim=4, last_dim=4, kind="numeric"))
  priors = _float(check_array(priors, "priors", shape=(codes.shape[2], 2), kind="numeric"))
  img_h, img_w = _image_hw(image_hw)
  sh, sw = codes.shape[0], codes.shape[1]
  col, row = _cell_corners(sh, sw, 3)  # [1, S_w, 1], [S_h, 1, 1]
  tw, th = codes[..., 2], codes[..., 3]
  if clip is not None:
    tw, th = jnp.minimum(tw, clip), jnp.minimum(th, clip)
  stride_x, stride_y = img_w / sw, img_h / sh
  cx = (jax.nn.sigmoid(codes[..., 0]) + col) * stride_x
  cy = (jax.nn.sigmoid(codes[..., 1]) + row) * stride_y
  w = priors[:, 0] * jnp.exp(tw) * stride_x
  h = priors[:, 1] * jnp.exp(th) * stride_y
  return jnp.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], axis=-1)


# ------------------------------------------------------------------------------------------------
# FCOS (l, t, r, b)
# ------------------------------------------------------------------------------------------------


def _normalizer(normalizer, points):
  """``normalizer`` as ``[..., 2]`` ``(nx, ny)`` broadcastable against ``points``."""
  if normalizer is None:
    return None
  n = _float(check_array(normalizer, "normalizer", kind="numeric")) if not isinstance(
      normalizer, (int, float)) else jnp.asarray(normalizer, jnp.float32)
  if n.ndim == points.ndim:  # per axis: [..., 2] = (nx, ny), e.g. the anchors' (w, h)
    if n.shape[-1] != 2:
      raise ValueError(f"normalizer with the rank of points must have last dimension 2 (nx, ny), got "
                       f"shape {tuple(n.shape)} for points shape {tuple(points.shape)}.")
  else:  # one value per point, e.g. the level's stride
    n = jnp.stack([n, n], axis=-1)
  _check_broadcast(n, points, "normalizer", "points")
  return n


def encode_ltrb(boxes, points, normalizer=None):
  """FCOS targets: distances ``(l, t, r, b)`` from ``points`` to the sides of ``boxes``.

  ``l = px - x1``, ``t = py - y1``, ``r = x2 - px``, ``b = y2 - py``, divided by ``normalizer``. All four
  are positive exactly when the point lies inside the box (FCOS's positive-sample condition).

  Args:
    boxes: ``[..., 4]`` xyxy boxes.
    points: ``[..., 2]`` ``(x, y)`` locations, broadcastable against ``boxes[..., :2]``.
    normalizer: ``None`` (raw pixel distances, the FCOS paper), a scalar or ``[...]`` per-point value
      (the level's stride), or ``[..., 2]`` per axis ``(nx, ny)``. torchvision's
      ``BoxLinearCoder(normalize_by_size=True).encode(anchors, boxes)`` is ``points`` = the anchors'
      centres and ``normalizer`` = their ``(w, h)``.

  Returns:
    ``[..., 4]`` ``(l, t, r, b)`` (divided by the normalizer).
  """
  boxes = _float(check_array(boxes, "boxes", last_dim=4, kind="numeric"))
  points = _float(check_array(points, "points", last_dim=2, kind="numeric"))
  _check_broadcast(boxes[..., :2], points, "boxes[..., :2]", "points")
  px, py = points[..., 0], points[..., 1]
  ltrb = jnp.stack([px - boxes[..., 0], py - boxes[..., 1], boxes[..., 2] - px, boxes[..., 3] - py], -1)
  n = _normalizer(normalizer, points)
  if n is not None:
    ltrb = ltrb / jnp.concatenate([n, n], axis=-1)  # (nx, ny, nx, ny)
  return ltrb


def decode_ltrb(distances, points, normalizer=None):
  """Inverse of ``encode_ltrb``: ``(px - l n_x, py - t n_y, px + r n_x, py + b n_y)`` xyxy boxes.

  Args:
    distances: ``[..., 4]`` ``(l, t, r, b)`` (network outputs, e.g. after FCOS's ``relu``/``exp``).
    points: ``[..., 2]`` locations, broadcastable against ``distances[..., :2]``.
    normalizer: as in ``encode_ltrb``.

  Returns:
    ``[..., 4]`` xyxy boxes; equal to torchvision's ``BoxLinearCoder(True).decode(distances, anchors)``
    for points at the anchors' centres and the anchors' sizes as normalizer.
  """
  distances = _float(check_array(distances, "distances", last_dim=4, kind="numeric"))
  points = check_array(points, "points", last_dim=2, kind="numeric").astype(distances.dtype)
  _check_broadcast(distances[..., :2], points, "distances[..., :2]", "points")
  n = _normalizer(normalizer, points)
  if n is not None:
    distances = distances * jnp.concatenate([n, n], axis=-1)
  px, py = points[..., 0], points[..., 1]
  return jnp.stack([px - distances[..., 0], py - distances[..., 1], px + distances[..., 2],
                    py + distances[..., 3]], axis=-1)
