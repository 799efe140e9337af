r"""YOLO v1 and YOLOv2 target assignment and losses (one image; ``jax.vmap`` over a batch).

**YOLO v1** (Redmon, Divvala, Girshick and Farhadi, "You Only Look Once: Unified, Real-Time Object
Detection", CVPR 2016, Sec. 2.2, Eq. 3). The image is divided into an ``S x S`` grid; the cell that
contains a ground-truth box's centre is responsible for it. Each cell predicts ``B`` boxes
``(x, y, sqrt(w), sqrt(h), C)`` and ``C`` class probabilities ``Pr(class_c | object)`` (one set
per cell): an ``S x S x (5B + C)`` tensor. Of the ``B`` predictors of a cell with an object, the one
whose current box has the highest IoU with the ground truth is "responsible" and the sum-squared
loss is

.. math::
  \lambda_{coord} \sum_{i,j} 1^{obj}_{ij} [(x_i - \hat x_i)^2 + (y_i - \hat y_i)^2]
  + \lambda_{coord} \sum_{i,j} 1^{obj}_{ij} [(\sqrt{w_i} - \sqrt{\hat w_i})^2
                                            + (\sqrt{h_i} - \sqrt{\hat h_i})^2]
  + \sum_{i,j} 1^{obj}_{ij} (C_i - \hat C_i)^2
  + \lambda_{noobj} \sum_{i,j} 1^{noobj}_{ij} (C_i - \hat C_i)^2
  + \sum_i 1^{obj}_i \sum_c (p_i(c) - \hat p_i(c))^2

with :math:`\lambda_{coord} = 5`, :math:`\lambda_{noobj} = 0.5`; ``x, y`` are the centre's offset in
its cell, ``w, h`` relative to the image (``jaxvision.ops.box_coder.encode_yolo_v1``); the target
confidence of the responsible predictor is the IoU of its box with the ground truth ("we want the
confidence score to equal the IOU", Sec. 2; ``rescore=False`` uses 1), every other predictor (also
the non-responsible ones in an object cell) is pushed to confidence 0 with weight
:math:`\lambda_{noobj}`, and the class target is the one-hot class of the cell's object.

Details the paper leaves open, decided here (and what Darknet's ``detection_layer.c`` does):

* *Several objects in one cell.* The paper's formulation has one object per cell. With static shapes
  each cell keeps exactly one ground truth: the **largest-area** box whose centre falls in the cell
  wins (ties: the lower slot index); the others get no loss at all and are counted in
  ``num_dropped``. (Darknet keeps the first box its loader wrote, in random order.)
* *Responsible predictor when every IoU is 0* (early training, or boxes that do not overlap): the
  predictor with the smallest squared error on ``(x, y, sqrt w, sqrt h)`` (Darknet's ``box_rmse``
  fallback); otherwise the highest IoU, ties to the lower predictor index.
* *Centres on a cell border* belong to the right/bottom cell; on the image's right/bottom edge to the
  last cell (``encode_yolo_v1``).
* *Degenerate ground truth*: boxes of non-positive width or height (or non-finite coordinates) are
  treated as padding, so ``sqrt`` never sees a negative size and the loss stays finite.

**YOLOv2** (Redmon and Farhadi, "YOLO9000: Better, Faster, Stronger", CVPR 2017, Sec. 2). Each cell
has ``A`` anchor priors ``(p_w, p_h)`` (k-means "dimension clusters", in grid-cell units) and predicts,
per prior, ``(t_x, t_y, t_w, t_h, t_o)`` and ``C`` class logits, decoded by direct location prediction
``b_x = sigmoid(t_x) + c_x``, ``b_w = p_w e^{t_w}``, ``Pr(object) IOU = sigmoid(t_o)``. The paper does
not print the loss; this is Darknet's ``region_layer.c`` (``yolo-voc.cfg``), written as a sum of
squares (+ softmax cross-entropy, whose gradient is Darknet's ``onehot - p``):

* a ground truth is assigned to the cell containing its centre and to the prior with the highest
  shape IoU (``wh_iou`` of centred boxes); one ground truth per (cell, prior) slot, the largest wins;
* responsible slot: ``coord_scale (2 - w h) [(sigmoid(t_x) - x)^2 + (sigmoid(t_y) - y)^2 +
  (t_w - \log(w / p_w))^2 + (t_h - \log(h / p_h))^2]`` (``w, h`` relative to the image in the
  weight), ``object_scale (IoU - sigmoid(t_o))^2`` with the decoded box's IoU (``rescore``), and
  ``class_scale CE(softmax(logits), class)``;
* every other slot: ``noobject_scale sigmoid(t_o)^2``, except slots whose decoded box already has
  IoU ``> ignore_threshold`` (0.6) with some ground truth, which get no objectness loss;
* optionally (``prior_weight > 0``, Darknet's first 12800 images) every non-responsible slot is
  pulled towards its prior: ``prior_weight [(sigmoid(t_x) - 0.5)^2 + (sigmoid(t_y) - 0.5)^2 + t_w^2
  + t_h^2]``.

Both losses return per-cell (YOLO v1) or per-slot (YOLOv2) terms, already weighted by their
lambdas; the family sums them and divides by the number of images (``psum``-ed across devices).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jaxvision.losses._common import check_number
from jaxvision.ops import box_coder
from jaxvision.ops._checks import check_array, check_positive_int
from jaxvision.ops.anchors import wh_iou
from jaxvision.ops.boxes import box_iou, elementwise_box_iou

__all__ = [
    "yolo_v1_targets", "yolo_v1_split", "yolo_v1_decode", "yolo_v1_loss", "yolo_v2_targets",
    "yolo_v2_loss", "usable_gt",
]


def usable_gt(gt_boxes, gt_valid):
  """``gt_valid`` and a positive, finite width and height: the boxes a loss can train on."""
  w = gt_boxes[..., 2] - gt_boxes[..., 0]
  h = gt_boxes[..., 3] - gt_boxes[..., 1]
  finite = jnp.all(jnp.isfinite(gt_boxes), axis=-1)
  return gt_valid & finite & (w > 0) & (h > 0)


def _check_gt(gt_boxes, gt_labels, gt_valid):
  gt_boxes = check_array(gt_boxes, "gt_boxes", ndim=2, last_dim=4, kind="numeric").astype(jnp.float32)
  g = gt_boxes.shape[0]
  gt_labels = check_array(gt_labels, "gt_labels", shape=(g,), kind="int")
  gt_valid = check_array(gt_valid, "gt_valid", shape=(g,), kind="bool")
  # Zero the padding so that nothing downstream meets NaN/inf from unused slots.
  ok = usable_gt(gt_boxes, gt_valid)
  return jnp.where(ok[:, None], gt_boxes, 0.0), gt_labels, ok


def _one_per_slot(slot, ok, area, num_slots: int):
  """Which gt each slot keeps: the largest-area valid gt assigned to it (ties: lowest gt index).

  Args:
    slot: int32 ``[G]`` slot of each gt; ok: bool ``[G]``; area: ``[G]``.

  Returns:
    ``(has, winner, num_dropped)``: bool ``[num_slots]``, int32 ``[num_slots]`` (0 where empty) and the
    number of valid gts that lost their slot to a larger one.
  """
  member = (slot[None, :] == jnp.arange(num_slots)[:, None]) & ok[None, :]  # [S, G]
  has = jnp.any(member, axis=1)
  winner = jnp.argmax(jnp.where(member, area[None, :], -jnp.inf), axis=1).astype(jnp.int32)
  num_dropped = jnp.sum(ok) - jnp.sum(has)
  return has, jnp.where(has, winner, 0), num_dropped


# ------------------------------------------------------------------------------------------------
# YOLO v1
# ------------------------------------------------------------------------------------------------


def yolo_v1_targets(gt_boxes, gt_labels, gt_valid, *, image_hw, grid_hw, num_classes: int):
  """Per-cell YOLO v1 targets of one image (one object per cell, the largest wins).

  Args:
    gt_boxes: ``[G, 4]`` xyxy pixels; gt_labels: int ``[G]`` in 1..K; gt_valid: bool ``[G]``.
    image_hw: ``(h, w)`` of the network input.
    grid_hw: ``S`` or ``(S_h, S_w)`` (Python ints).
    num_classes: ``K``.

  Returns:
    dict with ``has_obj`` bool ``[S_h, S_w]``; ``codes`` ``[S_h, S_w, 4]`` = ``(x, y, sqrt w,
    sqrt h)`` (offset in the cell, square roots of the size relative to the image); ``boxes``
    ``[S_h, S_w, 4]`` the xyxy gt box; ``classes`` ``[S_h, S_w, K]`` one-hot; ``num_dropped``: valid
    gts that share a cell with a larger one and get no loss. Empty cells hold zeros.
  """
  k = check_positive_int(num_classes, "num_classes")
  sh, sw = box_coder._grid_hw(grid_hw)  # noqa: SLF001 - the coder's own grid check
  gt_boxes, gt_labels, ok = _check_gt(gt_boxes, gt_labels, gt_valid)
  cells, codes = box_coder.encode_yolo_v1(gt_boxes, image_hw, (sh, sw))  # [G, 2], [G, 4]
  slot = cells[:, 0] * sw + cells[:, 1]
  area = (gt_boxes[:, 2] - gt_boxes[:, 0]) * (gt_boxes[:, 3] - gt_boxes[:, 1])
  has, winner, num_dropped = _one_per_slot(slot, ok, area, sh * sw)
  codes = jnp.concatenate([codes[:, :2], jnp.sqrt(codes[:, 2:])], axis=-1)  # (x, y, sqrt w, sqrt h)
  onehot = jax.nn.one_hot(gt_labels - 1, k, dtype=jnp.float32)  # [G, K]; label 0 -> zeros
  m = has[:, None].astype(jnp.float32)
  return {
      "has_obj": has.reshape(sh, sw),
      "codes": (codes[winner] * m).reshape(sh, sw, 4),
      "boxes": (gt_boxes[winner] * m).reshape(sh, sw, 4),
      "classes": (onehot[winner] * m).reshape(sh, sw, k),
      "num_dropped": num_dropped.astype(jnp.float32),
  }


def yolo_v1_split(pred, *, num_boxes: int, num_classes: int):
  """Splits a ``[..., S_h, S_w, 5B + C]`` YOLO v1 output into its parts.

  Layout per cell: ``B`` groups of ``(x, y, sqrt w, sqrt h, confidence)``, then the ``C`` class
  scores. Returns ``(box_codes [..., S_h, S_w, B, 4], confidence [..., S_h, S_w, B],
  class_scores [..., S_h, S_w, C])``.
  """
  nb = check_positive_int(num_boxes, "num_boxes")
  k = check_positive_int(num_classes, "num_classes")
  if pred.shape[-1] != 5 * nb + k:
    raise ValueError(f"YOLO v1 predictions must have 5B + C = {5 * nb + k} channels (B={nb}, "
                     f"C={k}), got shape {tuple(pred.shape)}.")
  boxes = pred[..., :5 * nb].reshape(pred.shape[:-1] + (nb, 5))  # (..., S, S, B, 5)
  return boxes[..., :4], boxes[..., 4], pred[..., 5 * nb:]


def yolo_v1_decode(box_codes, image_hw):
  """``(x, y, sqrt w, sqrt h)`` codes ``[S_h, S_w, B, 4]`` -> xyxy pixel boxes (``w = (sqrt w)^2``)."""
  sizes = jnp.square(box_codes[..., 2:])
  return box_coder.decode_yolo_v1(jnp.concatenate([box_codes[..., :2], sizes], axis=-1), image_hw)


def yolo_v1_loss(pred, gt_boxes, gt_labels, gt_valid, *, image_hw, num_boxes: int,
                 num_classes: int, lambda_coord: float = 5.0, lambda_noobj: float = 0.5,
                 rescore: bool = True) -> dict[str, Any]:
  """The YOLO v1 loss of one image (module docstring, Eq. 3 of the paper), per cell.

  Args:
    pred: ``[S_h, S_w, 5B + C]`` raw (linear) network outputs, layout as ``yolo_v1_split``.
    gt_boxes, gt_labels, gt_valid: ``[G, 4]``, ``[G]``, ``[G]`` ground truth (xyxy pixels, 1..K).
    image_hw: ``(h, w)`` of the network input.
    num_boxes: ``B``; num_classes: ``C``.
    lambda_coord, lambda_noobj: the paper's 5 and 0.5.
    rescore: confidence target = IoU of the responsible box with its ground truth (paper), else 1.

  Returns:
    dict of float ``[S_h, S_w]`` weighted terms -- ``coord_xy``, ``coord_wh``, ``obj``, ``noobj``,
    ``class`` (their total sum is the image's loss) -- plus scalars ``num_objects`` (cells with an
    object), ``num_dropped`` and ``mean_iou`` (mean IoU of the responsible boxes, 0 if none).
  """
  pred = check_array(pred, "pred", ndim=3, kind="float")
  lambda_coord = check_number(lambda_coord, "lambda_coord", low=0.0)
  lambda_noobj = check_number(lambda_noobj, "lambda_noobj", low=0.0)
  sh, sw = pred.shape[:2]
  t = yolo_v1_targets(gt_boxes, gt_labels, gt_valid, image_hw=image_hw, grid_hw=(sh, sw),
                      num_classes=num_classes)
  codes, conf, cls = yolo_v1_split(pred, num_boxes=num_boxes, num_classes=num_classes)
  has = t["has_obj"]  # [S, S]

  # Responsible predictor: highest IoU of the predicted box with the cell's gt; if all are 0, the
  # smallest squared error on the codes (Darknet's rmse fallback). Selection is not differentiated.
  pred_boxes = yolo_v1_decode(jax.lax.stop_gradient(codes), image_hw)  # [S, S, B, 4]
  gt_b = jnp.broadcast_to(t["boxes"][:, :, None, :], pred_boxes.shape)
  iou = elementwise_box_iou(pred_boxes, gt_b)  # [S, S, B]
  sq_err = jnp.sum(jnp.square(jax.lax.stop_gradient(codes) - t["codes"][:, :, None, :]), axis=-1)
  best = jnp.where(jnp.max(iou, axis=-1) > 0, jnp.argmax(iou, axis=-1), jnp.argmin(sq_err, axis=-1))
  resp = (jax.nn.one_hot(best, codes.shape[2], dtype=jnp.float32) *
          has[..., None].astype(jnp.float32))  # [S, S, B]: 1^obj_ij

  err = jnp.square(codes - t["codes"][:, :, None, :])  # [S, S, B, 4]
  coord_xy = lambda_coord * jnp.sum(resp * (err[..., 0] + err[..., 1]), axis=-1)
  coord_wh = lambda_coord * jnp.sum(resp * (err[..., 2] + err[..., 3]), axis=-1)
  conf_target = jax.lax.stop_gradient(iou) if rescore else jnp.ones_like(iou)
  obj = jnp.sum(resp * jnp.square(conf - conf_target), axis=-1)
  noobj = lambda_noobj * jnp.sum((1.0 - resp) * jnp.square(conf), axis=-1)
  class_term = has.astype(jnp.float32) * jnp.sum(jnp.square(cls - t["classes"]), axis=-1)
  n_obj = jnp.sum(has.astype(jnp.float32))
  mean_iou = jnp.sum(resp * iou) / jnp.maximum(n_obj, 1.0)
  return {"coord_xy": coord_xy, "coord_wh": coord_wh, "obj": obj, "noobj": noobj,
          "class": class_term, "num_objects": n_obj, "num_dropped": t["num_dropped"],
          "mean_iou": mean_iou}


# ------------------------------------------------------------------------------------------------
# YOLOv2
# ------------------------------------------------------------------------------------------------


def yolo_v2_targets(gt_boxes, gt_labels, gt_valid, *, priors, image_hw, grid_hw, num_classes: int):
  """Per-slot YOLOv2 targets of one image: ``S_h x S_w`` cells times ``A`` priors.

  Args:
    gt_boxes, gt_labels, gt_valid: ``[G, 4]`` xyxy pixels, ``[G]`` labels 1..K, ``[G]`` bool.
    priors: ``[A, 2]`` prior ``(p_w, p_h)`` in grid-cell units.
    image_hw: ``(h, w)`` of the network input (Python numbers or a ``[2]`` array).
    grid_hw: ``(S_h, S_w)`` Python ints.
    num_classes: ``K``.

  Returns:
    dict with ``has_obj`` bool ``[S_h, S_w, A]``; ``xy`` ``[S_h, S_w, A, 2]`` the centre's offset in
    its cell (in ``[0, 1]``); ``twh`` ``[S_h, S_w, A, 2]`` = ``log(w / p_w), log(h / p_h)`` (grid
    units); ``area`` ``[S_h, S_w, A]`` = ``w h`` relative to the image; ``boxes`` ``[S_h, S_w, A, 4]``
    xyxy; ``labels`` int32 ``[S_h, S_w, A]`` (1..K, 0 where empty); ``num_dropped``.
  """
  check_positive_int(num_classes, "num_classes")
  sh, sw = box_coder._grid_hw(grid_hw)  # noqa: SLF001
  priors = check_array(priors, "priors", ndim=2, last_dim=2, kind="numeric").astype(jnp.float32)
  a = priors.shape[0]
  gt_boxes, gt_labels, ok = _check_gt(gt_boxes, gt_labels, gt_valid)
  cells, v1 = box_coder.encode_yolo_v1(gt_boxes, image_hw, (sh, sw))  # offsets and relative sizes
  wh_grid = jnp.stack([v1[:, 2] * sw, v1[:, 3] * sh], axis=-1)  # [G, 2] grid units
  best_prior = jnp.argmax(wh_iou(wh_grid, priors), axis=1).astype(jnp.int32)  # [G]; ties: first
  _, v2 = box_coder.encode_yolo_v2(gt_boxes, priors[best_prior], image_hw, (sh, sw))
  slot = (cells[:, 0] * sw + cells[:, 1]) * a + best_prior
  area_px = (gt_boxes[:, 2] - gt_boxes[:, 0]) * (gt_boxes[:, 3] - gt_boxes[:, 1])
  has, winner, num_dropped = _one_per_slot(slot, ok, area_px, sh * sw * a)
  m = has.astype(jnp.float32)
  shape = (sh, sw, a)
  return {
      "has_obj": has.reshape(shape),
      "xy": (v1[winner, :2] * m[:, None]).reshape(shape + (2,)),
      "twh": (v2[winner, 2:] * m[:, None]).reshape(shape + (2,)),
      "area": (v1[winner, 2] * v1[winner, 3] * m).reshape(shape),
      "boxes": (gt_boxes[winner] * m[:, None]).reshape(shape + (4,)),
      "labels": jnp.where(has, gt_labels[winner], 0).astype(jnp.int32).reshape(shape),
      "num_dropped": num_dropped.astype(jnp.float32),
  }


def yolo_v2_loss(pred, gt_boxes, gt_labels, gt_valid, *, priors, image_hw, num_classes: int,
                 coord_scale: float = 1.0, object_scale: float = 5.0, noobject_scale: float = 1.0,
                 class_scale: float = 1.0, ignore_threshold: float = 0.6, rescore: bool = True,
                 prior_weight=0.0) -> dict[str, Any]:
  """The YOLOv2 (Darknet region-layer) loss of one image, per slot (see the module docstring).

  Args:
    pred: ``[S_h, S_w, A, 5 + C]`` raw outputs ``(t_x, t_y, t_w, t_h, t_o, class logits)``.
    gt_boxes, gt_labels, gt_valid: the image's ground truth.
    priors: ``[A, 2]`` in grid-cell units.
    image_hw: ``(h, w)`` of the network input.
    num_classes: ``C``.
    coord_scale, object_scale, noobject_scale, class_scale, ignore_threshold: ``yolo-voc.cfg``'s
      1, 5, 1, 1 and 0.6.
    rescore: objectness target = IoU of the decoded box with its gt (Darknet), else 1.
    prior_weight: weight of the pull of non-responsible slots towards their prior (Darknet: 0.01
      during the first 12800 images, then 0); may be a traced scalar (a function of the step).

  Returns:
    dict of float ``[S_h, S_w, A]`` weighted terms ``coord``, ``obj``, ``noobj``, ``class``,
    ``prior`` plus scalars ``num_objects``, ``num_dropped`` and ``mean_iou``.
  """
  pred = check_array(pred, "pred", ndim=4, kind="float")
  sh, sw, a, ch = pred.shape
  k = check_positive_int(num_classes, "num_classes")
  if ch != 5 + k:
    raise ValueError(f"YOLOv2 predictions must be [S_h, S_w, A, 5 + C] with C = {k}, got shape "
                     f"{tuple(pred.shape)}.")
  for v, name in ((coord_scale, "coord_scale"), (object_scale, "object_scale"),
                  (noobject_scale, "noobject_scale"), (class_scale, "class_scale")):
    check_number(v, name, low=0.0)
  ignore_threshold = check_number(ignore_threshold, "ignore_threshold", low=0.0, high=1.0)
  priors = check_array(priors, "priors", shape=(a, 2), kind="numeric").astype(jnp.float32)
  t = yolo_v2_targets(gt_boxes, gt_labels, gt_valid, priors=priors, image_hw=image_hw,
                      grid_hw=(sh, sw), num_classes=k)
  has = t["has_obj"].astype(jnp.float32)  # [S, S, A]
  gt_boxes_c, _, ok = _check_gt(gt_boxes, gt_labels, gt_valid)

  boxes = box_coder.decode_yolo_v2(jax.lax.stop_gradient(pred[..., :4]), priors, image_hw,
                                  clip=box_coder.BBOX_XFORM_CLIP)
  # Best IoU of every decoded box with any valid gt: slots above the threshold are not negatives.
  iou_all = box_iou(boxes.reshape(-1, 4), gt_boxes_c)  # [S S A, G]
  best_iou = jnp.max(jnp.where(ok[None, :], iou_all, 0.0), axis=1, initial=0.0).reshape(sh, sw, a)
  iou_resp = elementwise_box_iou(boxes, t["boxes"])  # [S, S, A] IoU with the assigned gt

  sig_xy = jax.nn.sigmoid(pred[..., 0:2])
  twh = pred[..., 2:4]
  obj_p = jax.nn.sigmoid(pred[..., 4])
  coord_w = coord_scale * (2.0 - t["area"])
  coord = has * coord_w * (jnp.sum(jnp.square(sig_xy - t["xy"]), axis=-1) +
                           jnp.sum(jnp.square(twh - t["twh"]), axis=-1))
  obj_target = jax.lax.stop_gradient(iou_resp) if rescore else jnp.ones_like(iou_resp)
  obj = object_scale * has * jnp.square(obj_target - obj_p)
  negative = (1.0 - has) * (best_iou <= ignore_threshold).astype(jnp.float32)
  noobj = noobject_scale * negative * jnp.square(obj_p)
  log_p = jax.nn.log_softmax(pred[..., 5:], axis=-1)
  label = jnp.maximum(t["labels"] - 1, 0)
  ce = -jnp.take_along_axis(log_p, label[..., None], axis=-1)[..., 0]
  class_term = class_scale * has * ce
  prior = jnp.asarray(prior_weight, jnp.float32) * (1.0 - has) * (
      jnp.sum(jnp.square(sig_xy - 0.5), axis=-1) + jnp.sum(jnp.square(twh), axis=-1))
  n_obj = jnp.sum(has)
  return {"coord": coord, "obj": obj, "noobj": noobj, "class": class_term, "prior": prior,
          "num_objects": n_obj, "num_dropped": t["num_dropped"],
          "mean_iou": jnp.sum(has * iou_resp) / jnp.maximum(n_obj, 1.0)}
