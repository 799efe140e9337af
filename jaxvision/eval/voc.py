"""PASCAL VOC detection average precision (AP per class and mAP), on the host with NumPy.

Matching (per class, as in the VOC devkit): all detections of the class, over all images, are sorted
by descending score. Each detection is compared with the ground-truth boxes of its class in its image
and assigned to the one with the highest IoU. If that IoU is ``>= iou_threshold`` (0.5 by default):

* the ground truth is ``difficult``: the detection is ignored (neither true nor false positive);
* the ground truth is not matched yet: true positive, and the ground truth becomes matched;
* the ground truth is already matched: false positive (a duplicate detection).

Otherwise it is a false positive. As in the devkit, a detection is only compared with its best-IoU
ground truth: it is not re-assigned to the next best one when that one is taken. Difficult ground
truths do not count in ``npos``, the number of positives. After matching, with ``TP(k)``/``FP(k)``
the cumulative counts over the ``k`` highest-scoring (non-ignored) detections::

  recall(k)    = TP(k) / npos
  precision(k) = TP(k) / (TP(k) + FP(k))

Average precision, ``use_07_metric=True`` (VOC2007, 11-point interpolation)::

  AP = (1 / 11) sum_{t in {0, 0.1, ..., 1}} max_{k : recall(k) >= t} precision(k)   (max of {} = 0)

``use_07_metric=False`` (VOC2010 and later): the area under the monotone precision envelope
``P(r) = max_{k : recall(k) >= r} precision(k)``, i.e. with ``r_0 = 0`` and the recalls ``r_k``::

  AP = sum_k (r_k - r_{k-1}) * P(r_k)

mAP is the mean of AP over the classes that have at least one non-difficult ground truth; classes
without any are left out of the mean (their AP is NaN) even if they have detections.

**Box convention.** jaxvision's boxes are xyxy in continuous pixel coordinates with no ``+1``
(``width = x2 - x1``), so by default ``IoU = inter / (area_a + area_b - inter)`` with those areas.
The official devkit treats boxes as inclusive pixel indices (``width = x2 - x1 + 1``, also for the
intersection); ``pixel_inclusive=True`` reproduces that. Both give the same AP up to how boxes near
the IoU threshold fall, and numbers reported against the devkit should use ``pixel_inclusive=True``
on boxes in the devkit's 1-based pixel coordinates.

**Details that differ from the Python port of the devkit (py-faster-rcnn ``voc_eval.py``).**
The threshold test is ``>=`` (the MATLAB devkit's ``ovmax >= minoverlap``; the Python port uses
``>``). Ties in score are broken by a stable sort (image order, then detection order). The 11 recall
thresholds are exactly ``k / 10`` (``np.arange(0, 1.1, 0.1)`` has 0.30000000000000004 etc., which
excludes a recall of exactly 0.3). Ignored detections are dropped from the returned precision/recall
curves (the devkit keeps them as repeated points; AP is the same).

Inputs are per-image detections and ground truth in the same (original image) coordinates, given
either as padded arrays with a leading image axis plus ``valid`` masks (the batch contract) or as
lists with one array per image. Labels are 1..K; label 0 is padding and is skipped.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from jaxvision import _host_boxes
from jaxvision.ops._checks import check_array, check_positive_int

__all__ = ["voc_ap", "evaluate_voc", "VocEvaluator"]


def voc_ap(recall, precision, *, use_07_metric: bool = False) -> float:
  """Average precision from a precision/recall curve (module docstring for the formulas).

  Args:
    recall: ``[N]`` recall after each detection, in descending score order (non-decreasing).
    precision: ``[N]`` precision after each detection.
    use_07_metric: VOC2007 11-point interpolation if True, else the VOC2010+ area under the
      monotone precision envelope.

  Returns:
    AP in [0, 1] as a Python float; 0 for an empty curve.
  """
  check_array(recall, "recall", ndim=1, kind="numeric")
  check_array(precision, "precision", shape=(len(recall),), kind="numeric")
  rec = np.asarray(recall, np.float64)
  prec = np.asarray(precision, np.float64)
  if use_07_metric:
    ap = 0.0
    for t in np.arange(11) / 10.0:
      above = prec[rec >= t]
      ap += (above.max() if above.size else 0.0) / 11.0
    return float(ap)
  mrec = np.concatenate([[0.0], rec, [1.0]])
  mpre = np.concatenate([[0.0], prec, [0.0]])
  mpre = np.maximum.accumulate(mpre[::-1])[::-1]  # precision envelope, non-increasing in recall
  changed = np.flatnonzero(mrec[1:] != mrec[:-1]) + 1
  return float(np.sum((mrec[changed] - mrec[changed - 1]) * mpre[changed]))


def _pairwise_iou(a: np.ndarray, b: np.ndarray, pixel_inclusive: bool) -> np.ndarray:
  """IoU ``[N, M]`` in float64 on the host (``+1`` on widths/heights if ``pixel_inclusive``, as the
  devkit); the shared NumPy implementation, since VOC needs the devkit variant and float64."""
  return _host_boxes.box_iou(np.asarray(a, np.float64), np.asarray(b, np.float64),
                             pixel_inclusive=pixel_inclusive)


def _check_host(x: Any, name: str, *, ndim: int, last_dim: int | None = None,
                kind: str | None = None) -> np.ndarray:
  """Validates like ``check_array`` but returns a NumPy array.

  Small arrays go through ``check_array`` itself (same messages). Large ones (instance masks) are
  checked on the host, so that validation never copies them to an accelerator.
  """
  if x is None or isinstance(x, (bool, int, float, complex, str)) or np.size(x) < 65536:
    check_array(x, name, ndim=ndim, last_dim=last_dim, kind=kind)
    return np.asarray(x)
  x = np.asarray(x)
  if x.ndim != ndim:
    raise ValueError(f"{name} must have rank {ndim}, got shape {x.shape} dtype {x.dtype}.")
  if last_dim is not None and x.shape[-1] != last_dim:
    raise ValueError(f"{name} must have last dimension {last_dim}, got shape {x.shape} "
                     f"dtype {x.dtype}.")
  return x


def _per_image(x: Any, name: str, *, num_images: int | None, item_ndim: int,
               last_dim: int | None, kind: str | None) -> list[np.ndarray]:
  """Splits a padded ``[N, D, ...]`` array or a list of ``[D_i, ...]`` arrays into per-image arrays."""
  if isinstance(x, (list, tuple)):
    items = []
    for i, item in enumerate(x):
      if np.size(item) == 0:  # an empty image: [], np.zeros((0, 4)), ...
        items.append(np.zeros((0,) * (item_ndim - 1) + (last_dim or 0,)))
        continue
      items.append(_check_host(item, f"{name}[{i}]", ndim=item_ndim, last_dim=last_dim, kind=kind))
  else:
    try:
      items = list(_check_host(x, name, ndim=item_ndim + 1, last_dim=last_dim, kind=kind))
    except (TypeError, ValueError) as e:
      raise type(e)(f"{e} Expected a padded array with a leading image axis or a list with one "
                    "array per image.") from None
  if num_images is not None and len(items) != num_images:
    raise ValueError(f"{name} must have one entry per image ({num_images} images, as in the other "
                     f"arguments), got {len(items)}.")
  return items


def _check_same(a: Sequence[np.ndarray], b: Sequence[np.ndarray], name_a: str, name_b: str):
  for i, (x, y) in enumerate(zip(a, b)):
    if x.shape[0] != y.shape[0]:
      raise ValueError(f"{name_a} and {name_b} must have the same number of entries per image, got "
                       f"{x.shape[0]} and {y.shape[0]} for image {i}.")


def _gather(boxes, labels, extras: dict[str, Any], valid, prefix: str, num_images: int | None):
  """Validates one group (detections or ground truth) and returns per-image arrays, padding removed."""
  boxes = _per_image(boxes, f"{prefix}boxes", num_images=num_images, item_ndim=2, last_dim=4,
                     kind="numeric")
  n = len(boxes)
  labels = _per_image(labels, f"{prefix}labels", num_images=n, item_ndim=1, last_dim=None, kind="int")
  _check_same(boxes, labels, f"{prefix}boxes", f"{prefix}labels")
  out_extras = {}
  for key, (value, kind, default) in extras.items():
    if value is None and default is None:
      raise TypeError(f"{key} must be an array or a list of arrays, got None.")
    if value is None:
      out_extras[key] = [np.full(len(b), default) for b in boxes]
    else:
      value = _per_image(value, key, num_images=n, item_ndim=1, last_dim=None, kind=kind)
      _check_same(boxes, value, f"{prefix}boxes", key)
      out_extras[key] = value
  if valid is None:
    valid = [np.ones(len(b), bool) for b in boxes]
  else:
    valid = _per_image(valid, f"{prefix}valid", num_images=n, item_ndim=1, last_dim=None, kind="bool")
    _check_same(boxes, valid, f"{prefix}boxes", f"{prefix}valid")
  result = []
  for i in range(n):
    keep = np.asarray(valid[i], bool) & (labels[i] != 0)  # label 0 = padding
    item = {"boxes": np.asarray(boxes[i], np.float64)[keep].reshape(-1, 4),
            "labels": np.asarray(labels[i], np.int64)[keep]}
    for key, vals in out_extras.items():
      item[key] = np.asarray(vals[i])[keep]
    result.append(item)
  return result


def evaluate_voc(
    boxes,
    scores,
    labels,
    gt_boxes,
    gt_labels,
    *,
    valid=None,
    gt_valid=None,
    gt_difficult=None,
    num_classes: int | None = None,
    iou_threshold: float = 0.5,
    use_07_metric: bool = False,
    pixel_inclusive: bool = False,
    class_names: Sequence[str] | None = None,
) -> dict[str, Any]:
  """VOC AP per class and mAP of a set of images (module docstring for the exact rules).

  Each argument is either a padded array with a leading image axis, or a list with one array per
  image (``D_i`` detections, ``G_i`` ground truths). Boxes are xyxy in the same coordinates for
  detections and ground truth (the original image's, for reported numbers).

  Args:
    boxes: detections, ``[N, D, 4]`` or list of ``[D_i, 4]``.
    scores: ``[N, D]`` or list of ``[D_i]`` confidences.
    labels: ``[N, D]`` or list of ``[D_i]`` int class ids in 1..K (0 = padding, skipped).
    gt_boxes: ground truth, ``[N, G, 4]`` or list of ``[G_i, 4]``.
    gt_labels: ``[N, G]`` or list of ``[G_i]`` int class ids in 1..K (0 = padding, skipped).
    valid: optional bool ``[N, D]`` (or list) marking real detections.
    gt_valid: optional bool ``[N, G]`` (or list) marking real ground truths.
    gt_difficult: optional bool ``[N, G]`` (or list) VOC ``difficult`` flags (default all False).
    num_classes: K; default: the largest label seen.
    iou_threshold: minimum IoU (``>=``) for a match, in (0, 1].
    use_07_metric: VOC2007 11-point AP instead of the VOC2010+ area.
    pixel_inclusive: devkit IoU with ``+1`` on widths and heights (module docstring).
    class_names: optional K names for ``ap_per_class`` (default: ``"1"``..``"K"``).

  Returns:
    A dict with
      ``mAP``: mean AP over classes with ground truth (NaN if no class has any);
      ``ap``: float64 ``[K]``, index ``k - 1`` for label ``k``, NaN for classes without ground truth;
      ``ap_per_class``: ``{name: AP}`` for the classes with ground truth;
      ``precision``, ``recall``, ``scores``: lists of K float64 arrays, one point per non-ignored
        detection in descending score order (the PR curve; ``recall`` is 0 where a class has no
        ground truth);
      ``num_positives``: int64 ``[K]`` non-difficult ground truths; ``num_detections``: int64
        ``[K]`` non-ignored detections; ``num_true_positives``: int64 ``[K]``.

  Raises:
    TypeError / ValueError: malformed inputs (naming the argument), labels outside 0..K,
      non-positive ``num_classes`` or ``iou_threshold`` outside (0, 1].
  """
  if isinstance(iou_threshold, bool) or not isinstance(iou_threshold, (int, float, np.floating)):
    raise TypeError(f"iou_threshold must be a float, got {iou_threshold!r}.")
  if not 0.0 < float(iou_threshold) <= 1.0:
    raise ValueError(f"iou_threshold must be in (0, 1], got {iou_threshold}.")
  dets = _gather(boxes, labels, {"scores": (scores, "numeric", None)}, valid, "", None)
  gts = _gather(gt_boxes, gt_labels, {"gt_difficult": (gt_difficult, "bool", False)}, gt_valid,
                "gt_", len(dets))

  max_label = max([int(d["labels"].max(initial=0)) for d in dets + gts] + [0])
  if num_classes is None:
    num_classes = max(max_label, 1)
  num_classes = check_positive_int(num_classes, "num_classes")
  for group, name in ((dets, "labels"), (gts, "gt_labels")):
    for i, item in enumerate(group):
      bad = (item["labels"] < 0) | (item["labels"] > num_classes)
      if bad.any():
        raise ValueError(f"{name} must be in 0..num_classes={num_classes} (0 = padding), got "
                         f"{item['labels'][bad][:5].tolist()} in image {i}.")
  if class_names is not None and len(class_names) != num_classes:
    raise ValueError(f"class_names must have num_classes={num_classes} entries, got "
                     f"{len(class_names)}.")
  names = [str(k + 1) for k in range(num_classes)] if class_names is None else list(class_names)

  # Match every image once, all classes together: IoU with same-class ground truths only.
  # flag: 1 = TP, 0 = FP, -1 = ignored (best match is difficult). Matching of one image does not
  # depend on other images, so per-image greedy matching in score order equals the global one.
  all_labels, all_scores, all_flags = [], [], []
  num_pos = np.zeros(num_classes, np.int64)
  for det, gt in zip(dets, gts):
    difficult = gt["gt_difficult"].astype(bool)
    np.add.at(num_pos, gt["labels"][~difficult] - 1, 1)
    n = len(det["labels"])
    if n == 0:
      continue
    order = np.argsort(-det["scores"], kind="stable")
    d_boxes, d_labels, d_scores = det["boxes"][order], det["labels"][order], det["scores"][order]
    flags = np.zeros(n, np.int8)
    if len(gt["labels"]):
      iou = _pairwise_iou(d_boxes, gt["boxes"], pixel_inclusive)
      iou = np.where(d_labels[:, None] == gt["labels"][None, :], iou, -1.0)
      best = iou.argmax(axis=1)
      hit = iou[np.arange(n), best] >= iou_threshold
      flags[hit & difficult[best]] = -1
      # Among hits on non-difficult ground truths, only the first (highest score) per gt is a TP.
      cand = np.flatnonzero(hit & ~difficult[best])
      _, first = np.unique(best[cand], return_index=True)
      flags[cand[first]] = 1
    all_labels.append(d_labels)
    all_scores.append(d_scores)
    all_flags.append(flags)

  cat = lambda xs, dt: np.concatenate(xs) if xs else np.zeros(0, dt)
  all_labels = cat(all_labels, np.int64)
  all_scores = cat(all_scores, np.float64)
  all_flags = cat(all_flags, np.int8)

  ap = np.full(num_classes, np.nan)
  precisions, recalls, class_scores = [], [], []
  num_det = np.zeros(num_classes, np.int64)
  num_tp = np.zeros(num_classes, np.int64)
  for k in range(num_classes):
    sel = (all_labels == k + 1) & (all_flags >= 0)
    s, f = all_scores[sel], all_flags[sel]
    order = np.argsort(-s, kind="stable")  # ties: image order, then within-image order
    s, f = s[order], f[order]
    tp = np.cumsum(f == 1)
    fp = np.cumsum(f == 0)
    prec = tp / np.maximum(tp + fp, 1)
    rec = tp / num_pos[k] if num_pos[k] > 0 else np.zeros(len(tp))
    precisions.append(prec.astype(np.float64))
    recalls.append(rec.astype(np.float64))
    class_scores.append(s)
    num_det[k] = len(f)
    num_tp[k] = int(tp[-1]) if len(tp) else 0
    if num_pos[k] > 0:
      ap[k] = voc_ap(recalls[-1], precisions[-1], use_07_metric=use_07_metric)

  has_gt = num_pos > 0
  return {
      "mAP": float(ap[has_gt].mean()) if has_gt.any() else float("nan"),
      "ap": ap,
      "ap_per_class": {names[k]: float(ap[k]) for k in range(num_classes) if has_gt[k]},
      "precision": precisions,
      "recall": recalls,
      "scores": class_scores,
      "num_positives": num_pos,
      "num_detections": num_det,
      "num_true_positives": num_tp,
  }


class VocEvaluator:
  """Streaming VOC AP: ``update`` per batch (padded arrays or lists), ``result`` at the end.

  Stores the (unpadded) per-image detections and ground truth on the host and calls
  ``evaluate_voc`` in ``result``. Constructor arguments are those of ``evaluate_voc``.
  """

  def __init__(self, num_classes: int, *, iou_threshold: float = 0.5, use_07_metric: bool = False,
               pixel_inclusive: bool = False, class_names: Sequence[str] | None = None):
    self.num_classes = check_positive_int(num_classes, "num_classes")
    self.kwargs = dict(num_classes=self.num_classes, iou_threshold=iou_threshold,
                       use_07_metric=use_07_metric, pixel_inclusive=pixel_inclusive,
                       class_names=class_names)
    self.reset()

  def reset(self) -> None:
    self._dets: list[dict[str, np.ndarray]] = []
    self._gts: list[dict[str, np.ndarray]] = []

  def update(self, boxes, scores, labels, gt_boxes, gt_labels, *, valid=None, gt_valid=None,
             gt_difficult=None) -> None:
    """Adds a batch of images; arguments as in ``evaluate_voc``."""
    dets = _gather(boxes, labels, {"scores": (scores, "numeric", None)}, valid, "", None)
    gts = _gather(gt_boxes, gt_labels, {"gt_difficult": (gt_difficult, "bool", False)}, gt_valid,
                  "gt_", len(dets))
    self._dets.extend(dets)
    self._gts.extend(gts)

  def result(self) -> dict[str, Any]:
    """``evaluate_voc`` over all images seen so far."""
    d, g = self._dets, self._gts
    return evaluate_voc(
        [x["boxes"] for x in d], [x["scores"] for x in d], [x["labels"] for x in d],
        [x["boxes"] for x in g], [x["labels"] for x in g],
        gt_difficult=[x["gt_difficult"].astype(bool) for x in g], **self.kwargs)
