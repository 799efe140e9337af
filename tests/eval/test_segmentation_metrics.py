"""Tests for jaxvision.eval.segmentation: confusion matrix and the FCN metrics (+ Dice)."""

from __future__ import annotations

from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax
from jax.sharding import PartitionSpec as P

from jaxvision.eval import SegmentationEvaluator, confusion_matrix, segmentation_metrics


def _np_confusion(labels, preds, c, ignore=255):
  """Obvious reference: one pixel at a time."""
  cm = np.zeros((c, c), np.int64)
  for gt, pr in zip(np.ravel(labels), np.ravel(preds)):
    if gt == ignore or not 0 <= gt < c or not 0 <= pr < c:
      continue
    cm[gt, pr] += 1
  return cm


def _np_metrics(cm):
  """Slow reference following the slide formulas term by term, with the documented exclusions."""
  cm = np.asarray(cm, np.float64)
  c = len(cm)
  t = [sum(cm[i, j] for j in range(c)) for i in range(c)]
  p = [sum(cm[j, i] for j in range(c)) for i in range(c)]
  total = sum(t)
  ious, accs, dices, fw = [], [], [], 0.0
  for i in range(c):
    union = t[i] + p[i] - cm[i, i]
    if union > 0:
      ious.append(cm[i, i] / union)
      dices.append(2 * cm[i, i] / (t[i] + p[i]))
      fw += t[i] * cm[i, i] / union
    if t[i] > 0:
      accs.append(cm[i, i] / t[i])
  return {
      "pixel_accuracy": sum(cm[i, i] for i in range(c)) / total if total else 0.0,
      "mean_accuracy": float(np.mean(accs)) if accs else 0.0,
      "mean_iou": float(np.mean(ious)) if ious else 0.0,
      "fw_iou": fw / total if total else 0.0,
      "dice": float(np.mean(dices)) if dices else 0.0,
  }


def _random_maps(rng, shape, c, ignore_frac=0.1):
  labels = rng.integers(0, c, shape).astype(np.int32)
  labels[rng.random(shape) < ignore_frac] = 255
  preds = np.where(rng.random(shape) < 0.6, labels, rng.integers(0, c, shape)).astype(np.int32)
  preds = np.where(preds == 255, 0, preds)
  return labels, preds


# ------------------------------------------------------------------------------------------------
# confusion_matrix
# ------------------------------------------------------------------------------------------------


def test_confusion_matrix_hand_worked():
  labels = np.array([[0, 0, 1, 1, 7], [2, 2, 255, 1, 0]], np.int32)  # 7: out of range, 255: ignore
  preds = np.array([[0, 1, 1, 1, 0], [2, 0, 0, 1, 5]], np.int32)  # 5: out-of-range prediction
  cm = confusion_matrix(labels, preds, 3)
  # pairs (gt, pred) counted: (0,0) (0,1) (1,1) (1,1) (2,2) (2,0) (1,1)
  expected = np.array([[1, 1, 0], [0, 3, 0], [1, 0, 1]])
  assert cm.dtype == jnp.int32 and cm.shape == (3, 3)
  np.testing.assert_array_equal(cm, expected)
  # ignore_label=None counts 255 nowhere either (out of range), and ignore_label=0 drops class 0.
  np.testing.assert_array_equal(confusion_matrix(labels, preds, 3, ignore_label=None), expected)
  np.testing.assert_array_equal(confusion_matrix(labels, preds, 3, ignore_label=0),
                                [[0, 0, 0], [0, 3, 0], [1, 0, 1]])


def test_confusion_matrix_matches_reference_random_and_uint8():
  rng = np.random.default_rng(0)
  labels, preds = _random_maps(rng, (3, 17, 23), 6)
  expected = _np_confusion(labels, preds, 6)
  np.testing.assert_array_equal(confusion_matrix(labels, preds, 6), expected)
  np.testing.assert_array_equal(confusion_matrix(labels.astype(np.uint8), preds, 6), expected)
  assert expected.sum() == (labels != 255).sum()


def test_confusion_matrix_sums_over_batches_and_under_jit():
  rng = np.random.default_rng(1)
  labels, preds = _random_maps(rng, (4, 9, 11), 5)
  whole = confusion_matrix(labels, preds, 5)
  parts = confusion_matrix(labels[:1], preds[:1], 5) + confusion_matrix(labels[1:], preds[1:], 5)
  np.testing.assert_array_equal(whole, parts)
  jitted = jax.jit(lambda a, b: confusion_matrix(a, b, 5))(labels, preds)
  np.testing.assert_array_equal(jitted, whole)


def test_confusion_matrix_psum_over_8_devices_shard_map_and_pmap():
  n = jax.device_count()
  assert n == 8
  rng = np.random.default_rng(2)
  labels, preds = _random_maps(rng, (n, 6, 10), 4)
  single = np.asarray(confusion_matrix(labels, preds, 4))
  np.testing.assert_array_equal(single, _np_confusion(labels, preds, 4))

  def per_device(l, p):
    return lax.psum(confusion_matrix(l, p, 4), "data")

  mesh = jax.make_mesh((n,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
  sharded = jax.jit(jax.shard_map(per_device, mesh=mesh, in_specs=(P("data"), P("data")),
                                  out_specs=P()))
  np.testing.assert_array_equal(sharded(labels, preds), single)

  pmapped = jax.pmap(per_device, axis_name="data")(labels, preds)  # [n, C, C], replicated
  assert pmapped.shape == (n, 4, 4)
  for d in range(n):
    np.testing.assert_array_equal(pmapped[d], single)


# ------------------------------------------------------------------------------------------------
# segmentation_metrics
# ------------------------------------------------------------------------------------------------

# 5 classes: class 2 absent from ground truth and prediction, class 3 predicted but not in ground truth.
_CM = np.array([
    [3, 1, 0, 0, 0],  # t0 = 4
    [0, 2, 0, 1, 0],  # t1 = 3
    [0, 0, 0, 0, 0],  # t2 = 0, p2 = 0: excluded from every mean
    [0, 0, 0, 0, 0],  # t3 = 0, p3 = 1: IoU 0 in mean IoU, excluded from mean accuracy
    [1, 0, 0, 0, 1],  # t4 = 2
])


def test_metrics_hand_worked():
  m = segmentation_metrics(_CM)
  # p = (4, 3, 0, 1, 1), total 9, diagonal (3, 2, 0, 0, 1).
  assert m["pixel_accuracy"] == pytest.approx(6 / 9)
  # accuracy over classes 0, 1, 4: (3/4 + 2/3 + 1/2) / 3
  assert m["mean_accuracy"] == pytest.approx((3 / 4 + 2 / 3 + 1 / 2) / 3)
  # IoU: 3/(4+4-3), 2/(3+3-2), class 3: 0/(0+1-0), 1/(2+1-1); mean over 4 classes
  assert m["mean_iou"] == pytest.approx((3 / 5 + 2 / 4 + 0 + 1 / 2) / 4)
  # fwIoU: (4 * 3/5 + 3 * 2/4 + 2 * 1/2) / 9
  assert m["fw_iou"] == pytest.approx((4 * 0.6 + 3 * 0.5 + 2 * 0.5) / 9)
  # Dice: 2*3/8, 2*2/6, 0/1, 2*1/3; mean over 4 classes
  assert m["dice"] == pytest.approx((6 / 8 + 4 / 6 + 0 + 2 / 3) / 4)
  np.testing.assert_allclose(m["per_class_iou"], [0.6, 0.5, 0, 0, 0.5])
  np.testing.assert_allclose(m["per_class_accuracy"], [0.75, 2 / 3, 0, 0, 0.5])
  np.testing.assert_array_equal(m["iou_valid"], [True, True, False, True, True])
  np.testing.assert_array_equal(m["accuracy_valid"], [True, True, False, False, True])
  for key in ("pixel_accuracy", "mean_accuracy", "mean_iou", "fw_iou", "dice"):
    assert isinstance(m[key], float), key


def test_metrics_match_slow_reference_random():
  rng = np.random.default_rng(3)
  for trial in range(5):
    c = int(rng.integers(2, 9))
    cm = rng.integers(0, 50, (c, c)) * (rng.random((c, c)) < 0.7)
    if trial % 2:
      cm[rng.integers(0, c)] = 0  # a class absent from the ground truth
      cm[:, rng.integers(0, c)] = 0  # a class never predicted
    ours = segmentation_metrics(cm)
    ref = _np_metrics(cm)
    for key, value in ref.items():
      assert ours[key] == pytest.approx(value, rel=1e-12, abs=1e-12), (trial, key)


def test_metrics_exact_fractions_fcn_definition():
  # Independent check in exact arithmetic of the FCN formulas on a matrix where every class is present.
  cm = np.array([[5, 2, 1], [1, 7, 0], [2, 1, 4]])
  n = [[Fraction(int(v)) for v in row] for row in cm]
  t = [sum(r) for r in n]
  p = [sum(n[j][i] for j in range(3)) for i in range(3)]
  iu = [n[i][i] / (t[i] + p[i] - n[i][i]) for i in range(3)]
  m = segmentation_metrics(cm)
  assert m["mean_iou"] == pytest.approx(float(sum(iu) / 3))
  assert m["fw_iou"] == pytest.approx(float(sum(t[i] * iu[i] for i in range(3)) / sum(t)))
  assert m["mean_accuracy"] == pytest.approx(float(sum(n[i][i] / t[i] for i in range(3)) / 3))


def test_metrics_jit_matches_numpy():
  m_np = segmentation_metrics(_CM)
  m_jit = jax.jit(segmentation_metrics)(jnp.asarray(_CM, jnp.int32))
  for key, value in m_np.items():
    np.testing.assert_allclose(np.asarray(m_jit[key], np.float64), np.asarray(value, np.float64),
                               rtol=1e-6, err_msg=key)


def test_metrics_nan_free_on_empty_and_degenerate():
  for cm in (np.zeros((3, 3), np.int64), jnp.zeros((3, 3), jnp.int32),
             np.array([[0, 0], [4, 0]])):  # class 1 never predicted right, class 0 only predicted
    m = segmentation_metrics(cm)
    for key, value in m.items():
      assert np.all(np.isfinite(np.asarray(value, np.float64))), key
  m = segmentation_metrics(np.zeros((3, 3), np.int64))
  assert m["mean_iou"] == 0.0 and m["pixel_accuracy"] == 0.0


def test_metrics_large_counts_do_not_overflow():
  cm = np.array([[2**33, 2**32], [0, 2**33]], np.int64)  # beyond int32
  m = segmentation_metrics(cm)
  assert m["pixel_accuracy"] == pytest.approx(2**34 / (2**34 + 2**32))
  assert m["mean_iou"] == pytest.approx((2 / 3 + 2 / 3) / 2)


# ------------------------------------------------------------------------------------------------
# SegmentationEvaluator
# ------------------------------------------------------------------------------------------------


def test_evaluator_streams_logits_and_predictions():
  rng = np.random.default_rng(4)
  c = 4
  ev = SegmentationEvaluator(c)
  all_labels, all_preds = [], []
  for _ in range(3):
    labels, _ = _random_maps(rng, (2, 5, 7), c)
    logits = rng.normal(size=(2, 5, 7, c)).astype(np.float32)
    ev.update(labels, logits)
    all_labels.append(labels)
    all_preds.append(np.argmax(logits, -1))
  preds = rng.integers(0, c, (2, 5, 7)).astype(np.int32)
  labels, _ = _random_maps(rng, (2, 5, 7), c)
  ev.update(labels, preds)
  all_labels.append(labels)
  all_preds.append(preds)
  expected = _np_confusion(np.concatenate(all_labels), np.concatenate(all_preds), c)
  np.testing.assert_array_equal(ev.confmat, expected)
  assert ev.confmat.dtype == np.int64
  result = ev.result()
  for key, value in _np_metrics(expected).items():
    assert result[key] == pytest.approx(value), key
  ev.add_confusion_matrix(expected)
  np.testing.assert_array_equal(ev.confmat, 2 * expected)
  ev.reset()
  assert ev.confmat.sum() == 0


def test_errors_name_the_argument():
  labels = np.zeros((2, 4, 4), np.int32)
  with pytest.raises(ValueError, match="labels and predictions"):
    confusion_matrix(labels, np.zeros((2, 4, 5), np.int32), 3)
  with pytest.raises(TypeError, match="labels"):
    confusion_matrix(labels.astype(np.float32), labels, 3)
  with pytest.raises(TypeError, match="predictions"):
    confusion_matrix(labels, labels.astype(np.float32), 3)
  with pytest.raises(ValueError, match="num_classes"):
    confusion_matrix(labels, labels, 0)
  with pytest.raises(ValueError, match="num_classes"):
    SegmentationEvaluator(-2)
  with pytest.raises(TypeError, match="num_classes"):
    confusion_matrix(labels, labels, 3.0)
  with pytest.raises(ValueError, match="confmat"):
    segmentation_metrics(np.zeros((3, 4)))
  with pytest.raises(ValueError, match="confmat"):
    segmentation_metrics(np.zeros((2, 3, 3)))
  with pytest.raises(TypeError, match="confmat"):
    segmentation_metrics(None)
  ev = SegmentationEvaluator(3)
  with pytest.raises(ValueError, match="logits_or_predictions"):
    ev.update(labels, np.zeros((2, 4, 4, 5), np.float32))  # wrong number of classes
  with pytest.raises(ValueError, match="logits_or_predictions"):
    ev.update(labels, np.zeros((2, 4, 3), np.int32))
  with pytest.raises(ValueError, match="confmat"):
    ev.add_confusion_matrix(np.zeros((4, 4), np.int64))
