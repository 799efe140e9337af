"""Anchor/proposal to ground-truth matching by IoU thresholds.

References:
  * Ren et al., "Faster R-CNN: Towards Real-Time Object Detection with Region Proposal Networks",
    NeurIPS 2015 (RPN: IoU >= 0.7 positive, < 0.3 negative, plus each gt's best anchor).
  * Girshick, "Fast R-CNN", ICCV 2015 (RoIs: IoU >= 0.5 foreground, [0.1, 0.5) background).
  * Lin et al., "Focal Loss for Dense Object Detection", ICCV 2017 (RetinaNet: >= 0.5 / < 0.4).
  * Liu et al., "SSD: Single Shot MultiBox Detector", ECCV 2016 (best prior per gt, then >= 0.5).
  * The threshold/label lists follow detectron2's ``modeling/matcher.py``; the exact semantics
    (tie rules, low-quality matches, SSD's forced matches) follow torchvision's
    ``models/detection/_utils.py`` ``Matcher`` and ``SSDMatcher``, which the tests check against.

Everything here works on **one image** with static shapes: ``A`` anchors (or proposals, or priors)
against ``G`` ground-truth slots, of which only those with ``gt_valid`` are real. Batch with
``jax.vmap``. The outputs are

* ``matched_gt`` int32 ``[A]``: the gt slot each anchor is matched to. It is only meaningful where
  ``match_labels == POSITIVE``; elsewhere it holds the anchor's best valid gt (or 0 when the image has
  no valid gt), which is always a safe index to gather with.
* ``match_labels`` int8 ``[A]``: ``POSITIVE`` (1), ``NEGATIVE`` (0) or ``IGNORE`` (-1).

Differences from torchvision, all deliberate and tested:

* Padding instead of ragged inputs: invalid gt columns (and NaN entries) never match anything,
  whatever junk they hold.
* Zero valid gt is not an error (torchvision raises). An anchor with no valid gt is treated as having
  IoU 0 with everything, so it gets the label of the bin containing 0: ``NEGATIVE`` for the RPN and
  RetinaNet presets, ``IGNORE`` for Fast R-CNN's ``[0.1, 0.5)`` background (``NEGATIVE`` with
  torchvision's ``[0, 0.5)``), exactly as for an anchor that overlaps no gt in a normal image.
* A gt whose best IoU is 0 (a degenerate zero-area box, or one outside every anchor) makes no
  low-quality or SSD forced match. torchvision would promote *every* anchor with IoU 0 to such a gt
  (low-quality), or force prior 0 onto it (SSD), producing regression targets with ``log(0)``.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Sequence

import jax.numpy as jnp

from jaxvision.ops._checks import check_array
from jaxvision.ops.boxes import box_iou


class MatchLabel(enum.IntEnum):
  """Anchor match labels (DESIGN.md): what each anchor is trained as."""
  POSITIVE = 1
  NEGATIVE = 0
  IGNORE = -1


POSITIVE = MatchLabel.POSITIVE
NEGATIVE = MatchLabel.NEGATIVE
IGNORE = MatchLabel.IGNORE


def _check_thresholds_labels(thresholds, labels) -> tuple[tuple[float, ...], tuple[int, ...]]:
  """Validates the static ``thresholds``/``labels`` lists (detectron2's convention)."""
  if isinstance(thresholds, (int, float)) or not isinstance(thresholds, Sequence):
    raise TypeError(f"thresholds must be a sequence of floats (e.g. [0.3, 0.7]), got {thresholds!r}.")
  if isinstance(labels, (int, float)) or not isinstance(labels, Sequence):
    raise TypeError(f"labels must be a sequence of ints in {{-1, 0, 1}} (e.g. [0, -1, 1]), got {labels!r}.")
  thresholds = tuple(float(t) for t in thresholds)
  labels = tuple(labels)
  if not thresholds:
    raise ValueError("thresholds must hold at least one value, got [].")
  if any(t != t for t in thresholds):  # NaN
    raise ValueError(f"thresholds must not contain NaN, got {list(thresholds)}.")
  if any(b < a for a, b in zip(thresholds[:-1], thresholds[1:])):
    raise ValueError(f"thresholds must be non-decreasing, got {list(thresholds)}.")
  if len(labels) != len(thresholds) + 1:
    raise ValueError(
        f"labels must have len(thresholds) + 1 = {len(thresholds) + 1} entries (one per interval), "
        f"got {len(labels)}: thresholds={list(thresholds)}, labels={list(labels)}.")
  for lab in labels:
    if isinstance(lab, bool) or int(lab) != lab or int(lab) not in (-1, 0, 1):
      raise ValueError(f"labels must be -1 (IGNORE), 0 (NEGATIVE) or 1 (POSITIVE), got {list(labels)}.")
  return thresholds, tuple(int(lab) for lab in labels)


def _masked_quality(iou, gt_valid):
  """``iou`` with invalid gt columns and NaN entries replaced by ``-inf`` (they can never win a max)."""
  ok = gt_valid[None, :] & ~jnp.isnan(iou)
  return jnp.where(ok, iou, -jnp.inf)


def _per_gt_best(quality, gt_valid):
  """Each gt's best quality over anchors ``[G]`` and whether it may force a match.

  A gt can only make low-quality/SSD forced matches when it is valid and its best IoU is > 0 (see the
  module docstring for why torchvision's behaviour at 0 is not kept).
  """
  gt_best = jnp.max(quality, axis=0)  # [G]; -inf for invalid columns
  return gt_best, gt_valid & (gt_best > 0)


def match(iou, gt_valid, *, thresholds: Sequence[float], labels: Sequence[int],
          allow_low_quality_matches: bool = False):
  """Matches each anchor to its best ground truth and labels it by IoU interval.

  ``thresholds`` splits the IoU axis into ``len(thresholds) + 1`` half-open intervals and ``labels``
  gives one label per interval. Worked example, the RPN of Faster R-CNN::

      thresholds = [0.3, 0.7]
      labels     = [0, -1, 1]
      # IoU in [-inf, 0.3) -> 0 NEGATIVE   (background)
      # IoU in [0.3, 0.7)  -> -1 IGNORE    (too ambiguous to train on)
      # IoU in [0.7, inf)  -> 1 POSITIVE   (matched to its best gt)

  An IoU exactly equal to a threshold falls in the interval above it (0.7 is POSITIVE, 0.3 IGNORE),
  as in torchvision, with the comparison done in ``iou``'s dtype. The IoU used is the anchor's best
  over *valid* gts; ties between gts go to the lowest gt index (torchvision's ``max``).

  ``allow_low_quality_matches`` (Faster R-CNN's second rule, "the anchor with the highest IoU with a
  ground-truth box"): for each valid gt, every anchor whose IoU with it equals that gt's maximum over
  all anchors (ties included, maximum > 0) is made POSITIVE even if the IoU is below the top
  threshold. Such an anchor keeps its *own* best gt as ``matched_gt`` -- it is not re-assigned to the
  gt whose maximum it achieved. Example: anchor ``a`` has IoU 0.25 with gt 0 and 0.28 with gt 1, and
  no anchor beats 0.25 on gt 0; then ``a`` becomes POSITIVE matched to gt 1, and gt 0 gets no anchor.
  This is torchvision's ``Matcher.set_low_quality_matches_`` and detectron2's behaviour (detectron2
  notes that it follows Detectron and that changing it has no significant impact).

  Args:
    iou: ``[A, G]`` float match quality (usually ``box_iou(anchors, gt_boxes)``). Note the layout:
      anchors first, the transpose of torchvision's ``[G, A]``. Entries of invalid gts may hold
      anything, NaN included.
    gt_valid: ``[G]`` bool, True for real gt boxes, False for padding.
    thresholds: non-decreasing Python floats, ``len(labels) - 1`` of them.
    labels: Python ints in ``{-1, 0, 1}``, one per interval.
    allow_low_quality_matches: see above.

  Returns:
    ``(matched_gt, match_labels)``: int32 ``[A]`` gt slot (meaningful only where the label is
    POSITIVE; 0 when the image has no valid gt) and int8 ``[A]`` labels. With no valid gt every anchor
    is labelled as if its IoU were 0 (``labels[0]`` whenever ``thresholds[0] > 0``).

  Raises:
    TypeError/ValueError: bad ranks, dtypes, shapes or threshold/label lists (at trace time).
  """
  iou = check_array(iou, "iou", ndim=2, kind="float")
  gt_valid = check_array(gt_valid, "gt_valid", shape=(iou.shape[1],), kind="bool")
  thresholds, labels = _check_thresholds_labels(thresholds, labels)
  num_anchors, num_gt = iou.shape

  quality = _masked_quality(iou, gt_valid)  # [A, G]
  if num_gt == 0:
    matched_gt = jnp.zeros((num_anchors,), jnp.int32)
    best = jnp.zeros((num_anchors,), iou.dtype)
  else:
    matched_gt = jnp.argmax(quality, axis=1).astype(jnp.int32)  # first max: lowest gt index wins ties
    best = jnp.max(quality, axis=1)  # [A]
    # No valid gt (or only NaN) for this anchor: its IoU with "everything" is 0.
    best = jnp.where(jnp.isneginf(best), jnp.zeros_like(best), best)

  # Interval index = how many thresholds the IoU reaches (>=). Thresholds are cast to iou's dtype so
  # that an IoU computed as exactly float32(0.7) counts as reaching the threshold 0.7.
  interval = jnp.zeros((num_anchors,), jnp.int32)
  for t in thresholds:  # static, a handful of entries
    interval += (best >= jnp.asarray(t, iou.dtype)).astype(jnp.int32)
  match_labels = jnp.asarray(labels, jnp.int8)[interval]

  if allow_low_quality_matches and num_anchors > 0 and num_gt > 0:
    gt_best, can_force = _per_gt_best(quality, gt_valid)  # [G], [G]
    # [A, G]: anchor a achieves gt g's maximum (ties included). Exact float equality on purpose,
    # as in torchvision: the maximum is one of the entries, so equality is well defined. Gts that may
    # not force get an unreachable target (+inf). `max` over int8 instead of `any`: XLA:CPU fuses it
    # into a single pass over the [A, G] matrix (about 25% faster for the whole match on CPU).
    target = jnp.where(can_force, gt_best, jnp.inf)  # [G]
    promote = jnp.max((quality == target[None, :]).astype(jnp.int8), axis=1) > 0  # [A]
    match_labels = jnp.where(promote, jnp.int8(POSITIVE), match_labels)
  return matched_gt, match_labels


def match_boxes(anchors, gt_boxes, gt_valid, *, thresholds: Sequence[float], labels: Sequence[int],
                allow_low_quality_matches: bool = False):
  """``match(box_iou(anchors, gt_boxes), gt_valid, ...)``.

  Args:
    anchors: ``[A, 4]`` xyxy.
    gt_boxes: ``[G, 4]`` xyxy (padding rows may hold anything).
    gt_valid: ``[G]`` bool.
    thresholds, labels, allow_low_quality_matches: as in ``match``.

  Returns:
    ``(matched_gt int32 [A], match_labels int8 [A])`` as in ``match``.
  """
  anchors = check_array(anchors, "anchors", ndim=2, last_dim=4, kind="numeric")
  gt_boxes = check_array(gt_boxes, "gt_boxes", ndim=2, last_dim=4, kind="numeric")
  gt_valid = check_array(gt_valid, "gt_valid", shape=(gt_boxes.shape[0],), kind="bool")
  return match(box_iou(anchors, gt_boxes), gt_valid, thresholds=thresholds, labels=labels,
               allow_low_quality_matches=allow_low_quality_matches)


def ssd_match(iou, gt_valid, *, threshold: float = 0.5):
  """SSD's matching strategy (Liu et al. 2016, Sec. 2.2).

  1. Each prior is matched to its best valid gt if that IoU is ``>= threshold`` (POSITIVE), else it is
     NEGATIVE (SSD has no ignore band; hard negative mining picks among the negatives later).
  2. Then every valid gt is *forced* onto its single best prior (the first one on ties), which becomes
     POSITIVE and matched to that gt even if the IoU is below ``threshold`` and even if the prior had
     matched another gt in step 1. If several gts share the same best prior, the gt with the highest
     index wins. This reproduces torchvision's ``SSDMatcher`` (whose ``matches[best_prior] = arange(G)``
     lets the last write win on CPU; we make that rule explicit and deterministic).

  Unlike ``match(..., allow_low_quality_matches=True)``, the forced prior *is* re-assigned to the gt
  whose best prior it is, and only one prior per gt is forced (no ties).

  Args:
    iou: ``[A, G]`` float IoU between priors and gt slots.
    gt_valid: ``[G]`` bool.
    threshold: Python float, the positive IoU threshold (0.5 in the paper and torchvision).

  Returns:
    ``(matched_gt int32 [A], match_labels int8 [A])`` with labels in {POSITIVE, NEGATIVE}.
  """
  iou = check_array(iou, "iou", ndim=2, kind="float")
  gt_valid = check_array(gt_valid, "gt_valid", shape=(iou.shape[1],), kind="bool")
  if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
    raise TypeError(f"threshold must be a Python float, got {threshold!r}.")
  matched_gt, match_labels = match(iou, gt_valid, thresholds=[threshold], labels=[NEGATIVE, POSITIVE])
  num_anchors, num_gt = iou.shape
  if num_anchors == 0 or num_gt == 0:
    return matched_gt, match_labels

  quality = _masked_quality(iou, gt_valid)
  _, can_force = _per_gt_best(quality, gt_valid)  # [G]
  best_prior = jnp.argmax(quality, axis=0).astype(jnp.int32)  # [G]; first max on ties
  # Scatter gt indices onto their best priors; `max` makes the highest gt index win collisions.
  # Gts that cannot force are sent out of range and dropped.
  target = jnp.where(can_force, best_prior, num_anchors)
  forced_gt = jnp.full((num_anchors,), -1, jnp.int32).at[target].max(
      jnp.arange(num_gt, dtype=jnp.int32), mode="drop")  # [A]; -1 where nothing is forced
  is_forced = forced_gt >= 0
  matched_gt = jnp.where(is_forced, forced_gt, matched_gt)
  match_labels = jnp.where(is_forced, jnp.int8(POSITIVE), match_labels)
  return matched_gt, match_labels


def ssd_match_boxes(priors, gt_boxes, gt_valid, *, threshold: float = 0.5):
  """``ssd_match(box_iou(priors, gt_boxes), gt_valid, threshold=threshold)``; priors ``[A, 4]`` xyxy."""
  priors = check_array(priors, "priors", ndim=2, last_dim=4, kind="numeric")
  gt_boxes = check_array(gt_boxes, "gt_boxes", ndim=2, last_dim=4, kind="numeric")
  gt_valid = check_array(gt_valid, "gt_valid", shape=(gt_boxes.shape[0],), kind="bool")
  return ssd_match(box_iou(priors, gt_boxes), gt_valid, threshold=threshold)


# ------------------------------------------------------------------------------------------------
# Presets
# ------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Matcher:
  """A frozen (hashable, so usable as a static argument) set of ``match`` parameters.

  ``Matcher(...)(iou, gt_valid)`` is ``match(iou, gt_valid, thresholds=..., labels=...,
  allow_low_quality_matches=...)``; ``.match_boxes(anchors, gt_boxes, gt_valid)`` likewise.
  """
  thresholds: tuple[float, ...]
  labels: tuple[int, ...]
  allow_low_quality_matches: bool = False

  def __post_init__(self):
    thresholds, labels = _check_thresholds_labels(self.thresholds, self.labels)
    object.__setattr__(self, "thresholds", thresholds)
    object.__setattr__(self, "labels", labels)

  def __call__(self, iou, gt_valid):
    return match(iou, gt_valid, thresholds=self.thresholds, labels=self.labels,
                 allow_low_quality_matches=self.allow_low_quality_matches)

  def match_boxes(self, anchors, gt_boxes, gt_valid):
    return match_boxes(anchors, gt_boxes, gt_valid, thresholds=self.thresholds, labels=self.labels,
                       allow_low_quality_matches=self.allow_low_quality_matches)


# Faster R-CNN's RPN (paper and torchvision's fg 0.7 / bg 0.3, low-quality matches on).
RPN_MATCHER = Matcher(thresholds=(0.3, 0.7), labels=(NEGATIVE, IGNORE, POSITIVE),
                      allow_low_quality_matches=True)
# RetinaNet: the paper says >= 0.5 positive, < 0.4 negative; torchvision (and detectron2's default
# config) also turn on low-quality matches, which we follow.
RETINANET_MATCHER = Matcher(thresholds=(0.4, 0.5), labels=(NEGATIVE, IGNORE, POSITIVE),
                            allow_low_quality_matches=True)


def fast_rcnn_matcher(fg_iou_threshold: float = 0.5, bg_iou_low: float = 0.1,
                      bg_iou_high: float | None = None) -> Matcher:
  """Fast R-CNN's RoI labelling: fg ``>= fg_iou_threshold``, bg in ``[bg_iou_low, bg_iou_high)``.

  Below ``bg_iou_low`` and in ``[bg_iou_high, fg_iou_threshold)`` the RoI is IGNORE. The paper uses
  ``bg_iou_low=0.1`` ("a heuristic for hard example mining"); torchvision's ``RoIHeads`` uses
  ``bg_iou_low=0`` (every RoI below 0.5 is background). ``bg_iou_high`` defaults to the fg threshold.
  """
  bg_iou_high = fg_iou_threshold if bg_iou_high is None else bg_iou_high
  if not 0.0 <= bg_iou_low <= bg_iou_high <= fg_iou_threshold:
    raise ValueError("need 0 <= bg_iou_low <= bg_iou_high <= fg_iou_threshold, got "
                     f"bg_iou_low={bg_iou_low}, bg_iou_high={bg_iou_high}, "
                     f"fg_iou_threshold={fg_iou_threshold}.")
  if bg_iou_high == fg_iou_threshold:  # no ignore band between bg and fg (the usual case)
    return Matcher(thresholds=(bg_iou_low, fg_iou_threshold), labels=(IGNORE, NEGATIVE, POSITIVE))
  return Matcher(thresholds=(bg_iou_low, bg_iou_high, fg_iou_threshold),
                 labels=(IGNORE, NEGATIVE, IGNORE, POSITIVE))


# The paper's Fast R-CNN: fg >= 0.5, bg in [0.1, 0.5), IoU < 0.1 ignored:
# thresholds (0.1, 0.5), labels (IGNORE, NEGATIVE, POSITIVE).
FAST_RCNN_MATCHER = fast_rcnn_matcher()
