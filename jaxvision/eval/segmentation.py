"""Semantic segmentation metrics from a confusion matrix (FCN, Long et al. 2015, Sec. 5).

Let ``n_ij`` be the number of pixels of ground-truth class ``i`` predicted as class ``j`` (rows are
ground truth, columns are predictions), ``t_i = sum_j n_ij`` the number of ground-truth pixels of class
``i``, ``p_i = sum_j n_ji`` the number of pixels predicted as class ``i`` and ``n_cl`` the number of
classes. The metrics are the four of the FCN paper, plus per-class values and Dice::

  pixel accuracy        PA    = sum_i n_ii / sum_i t_i
  mean accuracy         MA    = (1 / n_cl) sum_i n_ii / t_i
  mean IoU              mIoU  = (1 / n_cl) sum_i n_ii / (t_i + p_i - n_ii)
  frequency weighted IoU fwIoU = (sum_k t_k)^-1 sum_i t_i n_ii / (t_i + p_i - n_ii)
  Dice                  Dice  = (1 / n_cl) sum_i 2 n_ii / (t_i + p_i)

**Which classes are averaged** (``n_cl`` above is the number of classes that take part in each mean):

* mean IoU and Dice average over the classes whose union ``t_i + p_i - n_ii`` is non-zero, i.e. the
  classes present in the ground truth *or* in the predictions. A class that is predicted but absent
  from the ground truth has ``n_ii = 0`` and a non-empty union: it counts with IoU 0 (and Dice 0).
* mean accuracy averages over the classes present in the ground truth (``t_i > 0``); a class that is
  only predicted has no defined accuracy and is left out.
* a class absent from both ground truth and predictions is left out of every mean.
* frequency weighted IoU needs no exclusion: a class with ``t_i = 0`` has weight 0.

Everything is NaN-free: undefined per-class values are reported as 0 and flagged ``False`` in the
``iou_valid`` / ``accuracy_valid`` masks, and a mean over an empty set of classes (an all-zero
confusion matrix) is 0.

Ignored pixels (``ignore_label``, 255 by default, the jaxvision label-map contract) and ground-truth
labels or predictions outside ``[0, num_classes)`` are not counted. Resize logits back to the original
resolution before calling these (jaxvision evaluates at the original resolution).

The confusion matrix of a union of pixel sets is the sum of the confusion matrices, so it can be
accumulated over batches (``SegmentationEvaluator``) and across devices (``lax.psum`` of per-device
matrices inside ``shard_map``/``pmap``).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxvision.ops._checks import check_array, check_positive_int

__all__ = ["confusion_matrix", "segmentation_metrics", "SegmentationEvaluator"]


def _check_ignore_label(ignore_label: Any) -> int | None:
  if ignore_label is None:
    return None
  if isinstance(ignore_label, bool) or not isinstance(ignore_label, (int, np.integer)):
    raise TypeError(f"ignore_label must be a Python int or None, got {ignore_label!r}.")
  return int(ignore_label)


@functools.partial(jax.jit, static_argnames=("num_classes", "ignore_label"))
def _confusion_matrix(labels, predictions, num_classes: int, ignore_label: int | None):
  labels = labels.reshape(-1).astype(jnp.int32)
  predictions = predictions.reshape(-1).astype(jnp.int32)
  valid = (labels >= 0) & (labels < num_classes) & (predictions >= 0) & (predictions < num_classes)
  if ignore_label is not None:
    valid &= labels != ignore_label
  # Invalid pixels go to one extra bin that is dropped: static length, no boolean indexing.
  index = jnp.where(valid, labels * num_classes + predictions, num_classes * num_classes)
  counts = jnp.bincount(index, length=num_classes * num_classes + 1)
  return counts[:-1].reshape(num_classes, num_classes).astype(jnp.int32)


def confusion_matrix(labels, predictions, num_classes: int, *, ignore_label: int | None = 255):
  """Confusion matrix ``n_ij`` of a (batch of) label map(s); jit-, vmap- and shard_map-safe.

  Args:
    labels: ground-truth class ids, integer ``[...]`` (e.g. ``[B, H, W]``), values in
      ``[0, num_classes)`` or ``ignore_label``.
    predictions: predicted class ids, integer, same shape as ``labels`` (``argmax`` of the logits).
    num_classes: ``C``, the number of classes (a static Python int > 0).
    ignore_label: ground-truth value whose pixels are not counted (``None``: none ignored).

  Returns:
    int32 ``[C, C]`` with ``[i, j]`` = number of pixels with ground truth ``i`` predicted as ``j``.
    Pixels with ``labels == ignore_label``, or with a label or prediction outside ``[0, C)``, are
    not counted. Counts are int32: sum matrices of very large datasets in int64 on the host (as
    ``SegmentationEvaluator`` does).

  Raises:
    TypeError: non-integer ``labels``/``predictions`` or a non-int ``num_classes``.
    ValueError: shapes differ or ``num_classes <= 0``.
  """
  num_classes = check_positive_int(num_classes, "num_classes")
  ignore_label = _check_ignore_label(ignore_label)
  labels = check_array(labels, "labels", kind="int")
  predictions = check_array(predictions, "predictions", kind="int")
  if labels.shape != predictions.shape:
    raise ValueError(
        f"labels and predictions must have the same shape, got labels shape {tuple(labels.shape)} "
        f"and predictions shape {tuple(predictions.shape)}.")
  return _confusion_matrix(labels, predictions, num_classes, ignore_label)


def _check_confmat(confmat: Any) -> Any:
  """Validates a square confusion matrix without converting NumPy int64 to int32 (would overflow)."""
  if confmat is None or isinstance(confmat, (bool, int, float, complex, str)):
    raise TypeError(f"confmat must be a [C, C] array, got {type(confmat).__name__} {confmat!r}.")
  if not hasattr(confmat, "shape"):
    confmat = np.asarray(confmat)
  shape = tuple(confmat.shape)
  if len(shape) != 2 or shape[0] != shape[1] or shape[0] == 0:
    raise ValueError(
        f"confmat must be a non-empty square [C, C] array, got shape {shape} dtype {confmat.dtype}.")
  dt = np.dtype(confmat.dtype)
  if not (np.issubdtype(dt, np.integer) or np.issubdtype(dt, np.floating)):
    raise TypeError(f"confmat must have an int or float dtype, got shape {shape} dtype {dt}.")
  return confmat


def segmentation_metrics(confmat) -> dict[str, Any]:
  """Pixel accuracy, mean accuracy, mean IoU, frequency weighted IoU and Dice (module docstring).

  Works on a NumPy array (computed in float64 on the host; scalars come back as Python floats) or
  on a JAX array, including a traced one inside ``jit`` (float32; scalars are 0-d arrays).

  Args:
    confmat: ``[C, C]`` confusion matrix, rows = ground truth, columns = predictions (as returned by
      ``confusion_matrix`` or accumulated by ``SegmentationEvaluator``).

  Returns:
    A dict with the scalars ``pixel_accuracy``, ``mean_accuracy``, ``mean_iou``, ``fw_iou``,
    ``dice`` (mean Dice) and the ``[C]`` arrays ``per_class_iou``, ``per_class_accuracy``,
    ``per_class_dice`` (0 where undefined), ``iou_valid`` (class in ground truth or prediction;
    the classes averaged by ``mean_iou`` and ``dice``) and ``accuracy_valid`` (class in ground
    truth; the classes averaged by ``mean_accuracy``).

  Raises:
    TypeError / ValueError: ``confmat`` is not a non-empty square numeric array.
  """
  confmat = _check_confmat(confmat)
  if isinstance(confmat, jax.Array):
    return _metrics_jax(confmat)
  out = _metrics(np.asarray(confmat, np.float64), np)
  return {k: (float(v) if np.ndim(v) == 0 else v) for k, v in out.items()}


@jax.jit
def _metrics_jax(confmat):
  return _metrics(confmat.astype(jnp.float32), jnp)


def _metrics(cm, xp) -> dict[str, Any]:
  """The formulas of the module docstring with ``xp`` = ``np`` (float64) or ``jnp`` (float32)."""

  def div(num, den):  # 0 where den == 0, without evaluating num / 0 (no NaN, no warning).
    ok = den > 0
    return xp.where(ok, num / xp.where(ok, den, 1.0), 0.0)

  n_ii = xp.diagonal(cm)
  t = cm.sum(axis=1)  # ground-truth pixels per class
  p = cm.sum(axis=0)  # predicted pixels per class
  total = t.sum()
  union = t + p - n_ii

  iou_valid = union > 0
  acc_valid = t > 0
  iou = div(n_ii, union)
  acc = div(n_ii, t)
  dice = div(2.0 * n_ii, t + p)  # t + p > 0 exactly where union > 0

  def masked_mean(x, mask):
    return div(xp.where(mask, x, 0.0).sum(), mask.sum().astype(cm.dtype))

  return {
      "pixel_accuracy": div(n_ii.sum(), total),
      "mean_accuracy": masked_mean(acc, acc_valid),
      "mean_iou": masked_mean(iou, iou_valid),
      "fw_iou": div((t * iou).sum(), total),
      "dice": masked_mean(dice, iou_valid),
      "per_class_iou": iou,
      "per_class_accuracy": acc,
      "per_class_dice": dice,
      "iou_valid": iou_valid,
      "accuracy_valid": acc_valid,
  }


class SegmentationEvaluator:
  """Streaming segmentation metrics: ``update`` per batch, ``result`` at the end.

  The per-batch confusion matrix is computed with the jitted ``confusion_matrix`` and summed on the
  host in int64, so arbitrarily large datasets do not overflow. In a multi-device evaluation step,
  compute ``confusion_matrix`` per device, ``lax.psum`` it and pass it to
  ``add_confusion_matrix``.

  Example::

    evaluator = SegmentationEvaluator(num_classes=21)
    for batch in data:
      logits = predict(batch["image"])            # [B, H, W, C], at the label resolution
      evaluator.update(batch["segmentation"], logits)
    metrics = evaluator.result()                  # {"mean_iou": ..., ...}
  """

  def __init__(self, num_classes: int, *, ignore_label: int | None = 255):
    self.num_classes = check_positive_int(num_classes, "num_classes")
    self.ignore_label = _check_ignore_label(ignore_label)
    self.reset()

  def reset(self) -> None:
    """Clears the accumulated confusion matrix."""
    self._confmat = np.zeros((self.num_classes, self.num_classes), np.int64)

  @property
  def confmat(self) -> np.ndarray:
    """The accumulated int64 ``[C, C]`` confusion matrix (a copy)."""
    return self._confmat.copy()

  def update(self, labels, logits_or_predictions) -> None:
    """Adds one batch.

    Args:
      labels: integer ground truth ``[...]`` (e.g. ``[B, H, W]``), ``ignore_label`` where ignored.
      logits_or_predictions: float logits/probabilities ``[..., C]`` (argmax over the last axis is
        taken) or integer class predictions with the same shape as ``labels``.

    Raises:
      ValueError / TypeError: shapes or dtypes that fit neither form, naming the argument.
    """
    labels = check_array(labels, "labels", kind="int")
    x = check_array(logits_or_predictions, "logits_or_predictions", kind="numeric")
    if jnp.issubdtype(x.dtype, jnp.floating):
      if x.shape != labels.shape + (self.num_classes,):
        raise ValueError(
            "float logits_or_predictions must have shape labels.shape + (num_classes,) = "
            f"{tuple(labels.shape) + (self.num_classes,)}, got shape {tuple(x.shape)} "
            f"dtype {x.dtype}.")
      predictions = _argmax_last(x)
    else:
      if x.shape != labels.shape:
        raise ValueError(
            "integer logits_or_predictions must have the same shape as labels "
            f"{tuple(labels.shape)}, got shape {tuple(x.shape)} dtype {x.dtype}.")
      predictions = x
    cm = confusion_matrix(labels, predictions, self.num_classes, ignore_label=self.ignore_label)
    self._confmat += np.asarray(cm, np.int64)

  def add_confusion_matrix(self, confmat) -> None:
    """Adds a precomputed ``[C, C]`` confusion matrix (e.g. ``psum``-ed over devices)."""
    confmat = _check_confmat(confmat)
    if tuple(confmat.shape) != (self.num_classes,) * 2:
      raise ValueError(f"confmat must have shape [{self.num_classes}, {self.num_classes}], got "
                       f"shape {tuple(confmat.shape)}.")
    self._confmat += np.asarray(confmat, np.int64)

  def result(self) -> dict[str, Any]:
    """``segmentation_metrics`` of everything seen so far (Python floats and NumPy arrays)."""
    return segmentation_metrics(self._confmat)


@jax.jit
def _argmax_last(x):
  return jnp.argmax(x, axis=-1).astype(jnp.int32)
