"""Box formats, areas, IoU variants and the geometric helpers used by augmentations.

jaxvision's one box format is **xyxy in continuous pixel coordinates** of the (padded) network input:
``[x1, y1, x2, y2]`` with ``x1 <= x2``, ``y1 <= y2``. Width is ``x2 - x1`` (no ``+1``), exactly as in
torchvision. Every other format is converted here and only here:

* ``xywh``: ``[x1, y1, w, h]`` (COCO annotation format).
* ``cxcywh``: ``[cx, cy, w, h]`` (YOLO, DETR, SSD encodings).
* normalized: any of the above divided by the image size (``normalize_boxes``/``denormalize_boxes``).
* ``yxyx`` normalized: what TFDS stores (``tfds.features.BBox``): ``[ymin, xmin, ymax, xmax]`` in [0, 1].

All functions take ``[..., 4]`` arrays (any leading batch dimensions) and work with ``jnp`` on traced
values. Pairwise functions take one set of ``N`` boxes and one of ``M`` boxes and return ``[N, M]``;
``vmap`` them for a batch.

IoU conventions (identical to ``torchvision.ops.box_iou``): ``iou = inter / (area_a + area_b - inter)``.
Two zero-area boxes give ``0 / 0``; torchvision returns NaN there, jaxvision returns 0 so that padded
boxes never match anything (see ``box_iou``'s docstring).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxvision.ops._checks import check_array

_FORMATS = ("xyxy", "xywh", "cxcywh", "yxyx")


# ------------------------------------------------------------------------------------------------
# Format conversions
# ------------------------------------------------------------------------------------------------


def xyxy_to_xywh(boxes):
  """``[x1, y1, x2, y2] -> [x1, y1, w, h]``."""
  boxes = check_array(boxes, "boxes", last_dim=4)
  x1, y1, x2, y2 = jnp.moveaxis(boxes, -1, 0)
  return jnp.stack([x1, y1, x2 - x1, y2 - y1], axis=-1)


def xywh_to_xyxy(boxes):
  """``[x1, y1, w, h] -> [x1, y1, x2, y2]``."""
  boxes = check_array(boxes, "boxes", last_dim=4)
  x1, y1, w, h = jnp.moveaxis(boxes, -1, 0)
  return jnp.stack([x1, y1, x1 + w, y1 + h], axis=-1)


def xyxy_to_cxcywh(boxes):
  """``[x1, y1, x2, y2] -> [cx, cy, w, h]``."""
  boxes = check_array(boxes, "boxes", last_dim=4)
  x1, y1, x2, y2 = jnp.moveaxis(boxes, -1, 0)
  return jnp.stack([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], axis=-1)


def cxcywh_to_xyxy(boxes):
  """``[cx, cy, w, h] -> [x1, y1, x2, y2]``."""
  boxes = check_array(boxes, "boxes", last_dim=4)
  cx, cy, w, h = jnp.moveaxis(boxes, -1, 0)
  return jnp.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=-1)


def yxyx_to_xyxy(boxes):
  """``[y1, x1, y2, x2] -> [x1, y1, x2, y2]`` (TFDS ``BBox`` order); the same swap is its own inverse."""
  boxes = check_array(boxes, "boxes", last_dim=4)
  return boxes[..., jnp.array([1, 0, 3, 2])]


xyxy_to_yxyx = yxyx_to_xyxy


def convert_boxes(boxes, in_fmt: str, out_fmt: str):
  """Converts between ``"xyxy"``, ``"xywh"``, ``"cxcywh"`` and ``"yxyx"`` (like torchvision's ``box_convert``)."""
  for name, fmt in (("in_fmt", in_fmt), ("out_fmt", out_fmt)):
    if fmt not in _FORMATS:
      raise ValueError(f"{name} must be one of {_FORMATS}, got {fmt!r}.")
  boxes = check_array(boxes, "boxes", last_dim=4)
  to_xyxy = {"xyxy": lambda b: b, "xywh": xywh_to_xyxy, "cxcywh": cxcywh_to_xyxy, "yxyx": yxyx_to_xyxy}
  from_xyxy = {"xyxy": lambda b: b, "xywh": xyxy_to_xywh, "cxcywh": xyxy_to_cxcywh, "yxyx": xyxy_to_yxyx}
  return from_xyxy[out_fmt](to_xyxy[in_fmt](boxes))


def normalize_boxes(boxes, image_hw):
  """Divides xyxy pixel boxes by the image size: ``image_hw`` is ``(h, w)`` (array or tuple)."""
  boxes = check_array(boxes, "boxes", last_dim=4)
  h, w = _split_hw(image_hw)
  return boxes / jnp.stack([w, h, w, h], axis=-1)


def denormalize_boxes(boxes, image_hw):
  """Multiplies normalized xyxy boxes by the image size: ``image_hw`` is ``(h, w)``."""
  boxes = check_array(boxes, "boxes", last_dim=4)
  h, w = _split_hw(image_hw)
  return boxes * jnp.stack([w, h, w, h], axis=-1)


def _split_hw(image_hw):
  """``(h, w)`` of one image (ops work on one image; vmap for a batch) as two float32 scalars."""
  hw = jnp.asarray(image_hw, jnp.float32)
  if hw.shape != (2,):
    raise ValueError(f"image_hw must be (h, w) with shape [2], got shape {tuple(hw.shape)}.")
  return hw[0], hw[1]


# ------------------------------------------------------------------------------------------------
# Area, clipping, validity, geometric transforms
# ------------------------------------------------------------------------------------------------


def box_area(boxes):
  """Area ``(x2 - x1) * (y2 - y1)`` of xyxy boxes, ``[...]``; no ``+1`` (torchvision's convention)."""
  boxes = check_array(boxes, "boxes", last_dim=4)
  return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def clip_boxes(boxes, image_hw):
  """Clips xyxy boxes to ``[0, w] x [0, h]`` (torchvision's ``clip_boxes_to_image``)."""
  boxes = check_array(boxes, "boxes", last_dim=4)
  h, w = _split_hw(image_hw)
  x = jnp.clip(boxes[..., 0::2], 0.0, w)  # (x1, x2)
  y = jnp.clip(boxes[..., 1::2], 0.0, h)  # (y1, y2)
  return jnp.stack([x[..., 0], y[..., 0], x[..., 1], y[..., 1]], axis=-1)


def is_valid_box(boxes, min_size: float = 0.0):
  """True where both sides are longer than ``min_size`` (``w > min_size and h > min_size``)."""
  boxes = check_array(boxes, "boxes", last_dim=4)
  w = boxes[..., 2] - boxes[..., 0]
  h = boxes[..., 3] - boxes[..., 1]
  return (w > min_size) & (h > min_size)


def scale_boxes(boxes, scale):
  """Scales xyxy boxes by ``scale`` (a scalar, ``(sy, sx)``, or per-box ``[..., 2]`` as (sy, sx))."""
  boxes = check_array(boxes, "boxes", last_dim=4)
  s = jnp.asarray(scale, boxes.dtype)
  if s.ndim == 0:
    return boxes * s
  sy, sx = s[..., 0], s[..., 1]
  return boxes * jnp.stack([sx, sy, sx, sy], axis=-1)


def translate_boxes(boxes, offset):
  """Adds ``offset = (dy, dx)`` to xyxy boxes (crops use a negative offset)."""
  boxes = check_array(boxes, "boxes", last_dim=4)
  o = jnp.asarray(offset, boxes.dtype)
  dy, dx = o[..., 0], o[..., 1]
  return boxes + jnp.stack([dx, dy, dx, dy], axis=-1)


def flip_boxes_horizontal(boxes, image_width):
  """Mirrors xyxy boxes in an image of width ``image_width``: ``x -> W - x`` (x1 and x2 swap)."""
  boxes = check_array(boxes, "boxes", last_dim=4)
  w = jnp.asarray(image_width, boxes.dtype)
  return jnp.stack([w - boxes[..., 2], boxes[..., 1], w - boxes[..., 0], boxes[..., 3]], axis=-1)


def flip_boxes_vertical(boxes, image_height):
  """Mirrors xyxy boxes in an image of height ``image_height``: ``y -> H - y``."""
  boxes = check_array(boxes, "boxes", last_dim=4)
  h = jnp.asarray(image_height, boxes.dtype)
  return jnp.stack([boxes[..., 0], h - boxes[..., 3], boxes[..., 2], h - boxes[..., 1]], axis=-1)


# ------------------------------------------------------------------------------------------------
# Pairwise overlap
# ------------------------------------------------------------------------------------------------


def _pairwise_checks(boxes1, boxes2):
  boxes1 = check_array(boxes1, "boxes1", ndim=2, last_dim=4, kind="numeric")
  boxes2 = check_array(boxes2, "boxes2", ndim=2, last_dim=4, kind="numeric")
  return boxes1.astype(jnp.promote_types(boxes1.dtype, jnp.float32)), boxes2.astype(
      jnp.promote_types(boxes2.dtype, jnp.float32))


def _inter_union(boxes1, boxes2):
  area1 = box_area(boxes1)  # [N]
  area2 = box_area(boxes2)  # [M]
  lt = jnp.maximum(boxes1[:, None, :2], boxes2[None, :, :2])  # [N, M, 2]
  rb = jnp.minimum(boxes1[:, None, 2:], boxes2[None, :, 2:])  # [N, M, 2]
  wh = jnp.clip(rb - lt, 0.0)
  inter = wh[..., 0] * wh[..., 1]  # [N, M]
  union = area1[:, None] + area2[None, :] - inter
  return inter, union


def _safe_div(num, den):
  """``num / den`` with 0 where ``den <= 0`` (degenerate boxes), never NaN."""
  ok = den > 0
  return jnp.where(ok, num / jnp.where(ok, den, 1.0), 0.0)


def box_iou(boxes1, boxes2):
  """Pairwise intersection over union.

  Args:
    boxes1: ``[N, 4]`` xyxy.
    boxes2: ``[M, 4]`` xyxy.

  Returns:
    ``[N, M]`` float32 IoU. Equal to ``torchvision.ops.box_iou`` wherever the union is positive; where
    the union is zero (two zero-area boxes, e.g. padding) the result is 0 instead of torchvision's NaN,
    so padded boxes can never win a match.
  """
  boxes1, boxes2 = _pairwise_checks(boxes1, boxes2)
  inter, union = _inter_union(boxes1, boxes2)
  return _safe_div(inter, union)


def box_ioa(boxes1, boxes2):
  """Pairwise intersection over the area of ``boxes2`` (``[N, M]``), used by min-IoU crops and crowd matching."""
  boxes1, boxes2 = _pairwise_checks(boxes1, boxes2)
  inter, _ = _inter_union(boxes1, boxes2)
  return _safe_div(inter, box_area(boxes2)[None, :])


def _enclosing(boxes1, boxes2):
  lt = jnp.minimum(boxes1[:, None, :2], boxes2[None, :, :2])
  rb = jnp.maximum(boxes1[:, None, 2:], boxes2[None, :, 2:])
  return lt, rb


def generalized_box_iou(boxes1, boxes2):
  """Pairwise generalized IoU (Rezatofighi et al. 2019): ``iou - (|C| - union) / |C|``, in [-1, 1].

  ``C`` is the smallest box enclosing both. Equal to ``torchvision.ops.generalized_box_iou`` for
  non-degenerate boxes; degenerate pairs (zero union or zero enclosing area) give 0 terms, not NaN.
  """
  boxes1, boxes2 = _pairwise_checks(boxes1, boxes2)
  inter, union = _inter_union(boxes1, boxes2)
  iou = _safe_div(inter, union)
  lt, rb = _enclosing(boxes1, boxes2)
  wh = jnp.clip(rb - lt, 0.0)
  area_c = wh[..., 0] * wh[..., 1]
  return iou - _safe_div(area_c - union, area_c)


def _center_distance_terms(boxes1, boxes2):
  """Squared centre distance ``rho^2`` and squared enclosing diagonal ``c^2`` (``[N, M]`` each)."""
  lt, rb = _enclosing(boxes1, boxes2)
  c2 = jnp.sum(jnp.square(rb - lt), axis=-1)
  ctr1 = (boxes1[:, :2] + boxes1[:, 2:]) / 2
  ctr2 = (boxes2[:, :2] + boxes2[:, 2:]) / 2
  rho2 = jnp.sum(jnp.square(ctr1[:, None, :] - ctr2[None, :, :]), axis=-1)
  return rho2, c2


def distance_box_iou(boxes1, boxes2, eps: float = 1e-7):
  """Pairwise distance IoU (Zheng et al. 2020): ``iou - rho^2 / c^2``, as ``torchvision.ops.distance_box_iou``."""
  boxes1, boxes2 = _pairwise_checks(boxes1, boxes2)
  inter, union = _inter_union(boxes1, boxes2)
  iou = _safe_div(inter, union)
  rho2, c2 = _center_distance_terms(boxes1, boxes2)
  return iou - rho2 / (c2 + eps)


def _aspect_angle(w, h):
  """``atan(w / h)`` as torchvision computes it (no ``eps``), made finite where it is not.

  ``h = 0`` gives ``sign(w) * pi / 2`` (torchvision's ``atan(+-inf)``) with a zero gradient, so a point
  box (``w = h = 0``, torchvision: NaN) has angle 0. Unlike ``atan2`` this keeps ``atan``'s range for
  inverted boxes (``h < 0``), which raw predictions can be.
  """
  ok = h != 0
  return jnp.where(ok, jnp.arctan(w / jnp.where(ok, h, 1.0)), jnp.sign(w) * (jnp.pi / 2))


def complete_box_iou(boxes1, boxes2, eps: float = 1e-7):
  """Pairwise complete IoU (Zheng et al. 2020): DIoU minus the aspect-ratio term ``alpha * v``.

  ``v = 4 / pi^2 (atan(w2/h2) - atan(w1/h1))^2`` and ``alpha = v / (1 - iou + v)``, as
  ``torchvision.ops.complete_box_iou``. ``alpha`` carries no gradient (as in torchvision). A box with
  ``w = h = 0`` has aspect angle 0 here, where torchvision's ``atan(0 / 0)`` makes the whole row NaN.
  """
  boxes1, boxes2 = _pairwise_checks(boxes1, boxes2)
  inter, union = _inter_union(boxes1, boxes2)
  iou = _safe_div(inter, union)
  rho2, c2 = _center_distance_terms(boxes1, boxes2)
  w1 = boxes1[:, 2] - boxes1[:, 0]
  h1 = boxes1[:, 3] - boxes1[:, 1]
  w2 = boxes2[:, 2] - boxes2[:, 0]
  h2 = boxes2[:, 3] - boxes2[:, 1]
  v = (4 / jnp.pi**2) * jnp.square(_aspect_angle(w1, h1)[:, None] - _aspect_angle(w2, h2)[None, :])
  alpha = v / (1 - iou + v + eps)
  # alpha is a weight, not a path for gradients (Zheng et al. 2020, Sec. 3.2; torchvision computes it
  # under no_grad too).
  return iou - rho2 / (c2 + eps) - jax.lax.stop_gradient(alpha) * v


def elementwise_box_iou(boxes1, boxes2, kind: str = "iou", eps: float = 1e-7):
  """IoU-family score of matching pairs ``boxes1[i]`` vs ``boxes2[i]`` (``[..., 4]`` each -> ``[...]``).

  ``kind`` is ``"iou"``, ``"giou"``, ``"diou"`` or ``"ciou"``. Used by box-regression losses, where the
  prediction and its target are already paired, so no ``[N, M]`` matrix is built.
  """
  if kind not in ("iou", "giou", "diou", "ciou"):
    raise ValueError(f"kind must be 'iou', 'giou', 'diou' or 'ciou', got {kind!r}.")
  boxes1 = check_array(boxes1, "boxes1", last_dim=4, kind="numeric")
  boxes2 = check_array(boxes2, "boxes2", last_dim=4, kind="numeric")
  if boxes1.shape != boxes2.shape:
    raise ValueError(f"boxes1 and boxes2 must have the same shape, got {boxes1.shape} and {boxes2.shape}.")
  area1, area2 = box_area(boxes1), box_area(boxes2)
  lt = jnp.maximum(boxes1[..., :2], boxes2[..., :2])
  rb = jnp.minimum(boxes1[..., 2:], boxes2[..., 2:])
  wh = jnp.clip(rb - lt, 0.0)
  inter = wh[..., 0] * wh[..., 1]
  union = area1 + area2 - inter
  iou = _safe_div(inter, union)
  if kind == "iou":
    return iou
  c_lt = jnp.minimum(boxes1[..., :2], boxes2[..., :2])
  c_rb = jnp.maximum(boxes1[..., 2:], boxes2[..., 2:])
  if kind == "giou":
    c_wh = jnp.clip(c_rb - c_lt, 0.0)
    area_c = c_wh[..., 0] * c_wh[..., 1]
    return iou - _safe_div(area_c - union, area_c)
  c2 = jnp.sum(jnp.square(c_rb - c_lt), axis=-1)
  ctr1 = (boxes1[..., :2] + boxes1[..., 2:]) / 2
  ctr2 = (boxes2[..., :2] + boxes2[..., 2:]) / 2
  rho2 = jnp.sum(jnp.square(ctr1 - ctr2), axis=-1)
  diou = iou - rho2 / (c2 + eps)
  if kind == "diou":
    return diou
  w1, h1 = boxes1[..., 2] - boxes1[..., 0], boxes1[..., 3] - boxes1[..., 1]
  w2, h2 = boxes2[..., 2] - boxes2[..., 0], boxes2[..., 3] - boxes2[..., 1]
  v = (4 / jnp.pi**2) * jnp.square(_aspect_angle(w2, h2) - _aspect_angle(w1, h1))
  alpha = v / (1 - iou + v + eps)
  # alpha is a weight, not a path for gradients (Zheng et al. 2020, Sec. 3.2).
  return diou - jax.lax.stop_gradient(alpha) * v
