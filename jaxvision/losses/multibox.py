r"""SSD's MultiBox loss with hard negative mining, at static shapes (one image; ``jax.vmap`` a batch).

Liu et al., "SSD: Single Shot MultiBox Detector", ECCV 2016, Sec. 2.2 ("Training objective",
"Hard negative mining"):

.. math::
  L(x, c, l, g) = \frac{1}{N} \left(L_{conf}(x, c) + \alpha L_{loc}(x, l, g)\right)

* **Matching** (``ssd_targets``): every default box is matched to the ground truth of highest
  Jaccard overlap if that overlap is ``>= 0.5``, and every ground truth is also forced onto its
  best default box (``jaxvision.ops.matching.ssd_match``). Matched boxes are positives; ``N`` is
  their number.
* :math:`L_{loc}`: smooth-L1 (``beta = 1``) between the predicted offsets and the matched ground truth
  encoded relative to the default box, ``(g^{cx}, g^{cy}, g^w, g^h)`` divided by the variances
  ``(0.1, 0.1, 0.2, 0.2)`` (``box_coder.encode_boxes`` with ``SSD_WEIGHTS``), positives only.
* :math:`L_{conf}`: softmax cross-entropy over ``K + 1`` classes (0 = background) on the positives
  and on the selected negatives.
* **Hard negative mining**: "we sort them using the highest confidence loss for each default box
  and pick the top ones so that the ratio between the negatives and positives is at most 3:1": per
  image, the ``min(3 P, A - P)`` negatives with the largest background loss ``-log p_0`` are kept.
  ``neg_pos_ratio=None`` turns mining off (every negative counts; the ablation baseline).
* If ``N = 0`` the loss is 0 (the paper's rule); the family divides by ``max(N, 1)`` with ``N``
  ``psum``-ed over devices, and an image without positives selects no negatives.

**Sort-free mining.** The ``n``-th largest loss is found without sorting: the non-negative float32
losses are reinterpreted as unsigned integers (their bit patterns are in the same order as the
values), and a 32-step binary search over the bits finds the largest threshold ``t`` with at least
``n`` keys ``>= t`` (``jaxvision.ops.sampling``'s selection; ``n`` may be traced). Everything above
``t`` is taken, plus the lowest-index losses equal to ``t`` until ``n`` are taken: exactly a
descending sort's first ``n``, with ties broken by the lower default-box index. The selection is
not differentiated (a mask), as in every implementation.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jaxvision.losses._common import check_number
from jaxvision.losses.regression import smooth_l1_loss
from jaxvision.ops import box_coder
from jaxvision.ops._checks import check_array
from jaxvision.ops.boxes import box_iou
from jaxvision.ops.matching import POSITIVE, ssd_match
from jaxvision.ops.sampling import _select_largest  # noqa: PLC2701 - the shared top-n selection

__all__ = ["ssd_targets", "hard_negative_mask", "multibox_loss"]


def ssd_targets(priors, gt_boxes, gt_labels, gt_valid, *, iou_threshold: float = 0.5,
                weights=box_coder.SSD_WEIGHTS):
  """Matches default boxes to ground truth and encodes the regression targets (one image).

  Args:
    priors: ``[A, 4]`` xyxy default boxes (pixels).
    gt_boxes: ``[G, 4]`` xyxy pixels; gt_labels: int ``[G]`` in 1..K; gt_valid: bool ``[G]``.
      Boxes of non-positive width or height (or non-finite) are treated as padding.
    iou_threshold: the positive overlap (0.5).
    weights: the box coder weights (SSD's variances as ``1 / variance``).

  Returns:
    ``(labels int32 [A] in 0..K (0 = background), loc_targets [A, 4] (0 for negatives),
    positive bool [A])``.
  """
  priors = check_array(priors, "priors", ndim=2, last_dim=4, kind="numeric").astype(jnp.float32)
  gt_boxes = check_array(gt_boxes, "gt_boxes", ndim=2, last_dim=4, kind="numeric").astype(jnp.float32)
  g = gt_boxes.shape[0]
  gt_labels = check_array(gt_labels, "gt_labels", shape=(g,), kind="int")
  gt_valid = check_array(gt_valid, "gt_valid", shape=(g,), kind="bool")
  w = gt_boxes[:, 2] - gt_boxes[:, 0]
  h = gt_boxes[:, 3] - gt_boxes[:, 1]
  ok = gt_valid & jnp.all(jnp.isfinite(gt_boxes), axis=-1) & (w > 0) & (h > 0)
  gt_boxes = jnp.where(ok[:, None], gt_boxes, 0.0)
  matched, match_labels = ssd_match(box_iou(priors, gt_boxes), ok, threshold=iou_threshold)
  positive = match_labels == POSITIVE
  labels = jnp.where(positive, gt_labels[matched], 0).astype(jnp.int32)
  loc = box_coder.encode_boxes(gt_boxes[matched], priors, weights)
  loc = jnp.where(positive[:, None], loc, 0.0)
  return labels, loc, positive


def hard_negative_mask(neg_loss, positive, *, neg_pos_ratio: float | None = 3.0, valid=None):
  """The negatives kept by hard negative mining (one image): bool ``[A]``.

  Args:
    neg_loss: ``[A]`` the loss each default box would have as background (``-log p_0``); only its
      order matters. Values are clamped at 0; NaN is never selected.
    positive: bool ``[A]``; positives are never negatives.
    neg_pos_ratio: keep ``min(ratio * P, #negatives)`` negatives (``floor``), the largest losses
      first; ``None`` keeps every negative.
    valid: optional bool ``[A]``: default boxes that may be used at all.

  Returns:
    bool ``[A]``, True for the selected negatives.
  """
  neg_loss = check_array(neg_loss, "neg_loss", ndim=1, kind="float")
  positive = check_array(positive, "positive", shape=neg_loss.shape, kind="bool")
  eligible = ~positive & ~jnp.isnan(neg_loss)
  if valid is not None:
    eligible &= check_array(valid, "valid", shape=neg_loss.shape, kind="bool")
  if neg_pos_ratio is None:
    return eligible
  ratio = check_number(neg_pos_ratio, "neg_pos_ratio", low=0.0)
  n = jnp.floor(ratio * jnp.sum(positive, dtype=jnp.float32)).astype(jnp.int32)
  # +0.0 for every value <= 0 (also -0.0, whose bit pattern would sort above everything).
  clean = jnp.where(neg_loss > 0, neg_loss, 0.0).astype(jnp.float32)
  keys = jax.lax.bitcast_convert_type(clean, jnp.uint32) + jnp.uint32(1)  # order-preserving, >= 1
  keys = jnp.where(eligible, keys, jnp.uint32(0))  # 0 = never selected
  return _select_largest(keys, n)


def multibox_loss(cls_logits, loc_preds, labels, loc_targets, positive, *,
                  neg_pos_ratio: float | None = 3.0, alpha: float = 1.0,
                  beta: float = 1.0) -> dict[str, Any]:
  """SSD's loss terms of one image, per default box (sum them and divide by the global ``N``).

  Args:
    cls_logits: ``[A, K + 1]`` class logits (column 0 = background).
    loc_preds: ``[A, 4]`` predicted encoded offsets.
    labels, loc_targets, positive: ``ssd_targets``'s outputs.
    neg_pos_ratio: hard negative mining ratio (3), ``None`` for all negatives.
    alpha: weight of the localization term (1 in the paper).
    beta: smooth-L1 switch point (1).

  Returns:
    dict: ``conf`` ``[A]`` (cross-entropy of positives and selected negatives, 0 elsewhere), ``loc``
    ``[A]`` (``alpha`` times the smooth-L1 summed over the 4 offsets, positives only),
    ``num_positives`` and ``num_negatives`` (scalars, float32).
  """
  cls_logits = check_array(cls_logits, "cls_logits", ndim=2, kind="float")
  a = cls_logits.shape[0]
  loc_preds = check_array(loc_preds, "loc_preds", shape=(a, 4), kind="float")
  labels = check_array(labels, "labels", shape=(a,), kind="int")
  loc_targets = check_array(loc_targets, "loc_targets", shape=(a, 4), kind="numeric")
  positive = check_array(positive, "positive", shape=(a,), kind="bool")
  alpha = check_number(alpha, "alpha", low=0.0)
  log_p = jax.nn.log_softmax(cls_logits, axis=-1)  # [A, K + 1]
  ce = -jnp.take_along_axis(log_p, labels[:, None], axis=-1)[:, 0]  # [A]
  negatives = hard_negative_mask(jax.lax.stop_gradient(-log_p[:, 0]), positive,
                                 neg_pos_ratio=neg_pos_ratio)
  pos_f = positive.astype(cls_logits.dtype)
  conf = jnp.where(positive | negatives, ce, 0.0)
  loc = alpha * pos_f * jnp.sum(smooth_l1_loss(loc_preds, loc_targets.astype(loc_preds.dtype),
                                               beta=beta), axis=-1)
  return {"conf": conf, "loc": loc, "num_positives": jnp.sum(pos_f),
          "num_negatives": jnp.sum(negatives.astype(jnp.float32))}
