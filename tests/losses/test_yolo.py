"""YOLO v1 / YOLOv2 target assignment and losses: hand-worked cases and bad input."""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxvision.losses import yolo

# ------------------------------------------------------------------------------------------------
# YOLO v1: S = 2, B = 2, C = 2 on a 100 x 100 image (cells of 50 px)
# ------------------------------------------------------------------------------------------------

GT = np.array([[10.0, 20.0, 40.0, 60.0]], np.float32)  # centre (25, 40): cell (0, 0), x 0.5, y 0.8
LABELS = np.array([2], np.int32)
VALID = np.array([True])


def _v1_pred():
  """Cell (0, 0): box 0 (0.6, 0.7, 0.5, 0.6) conf 0.7, box 1 far away conf 0.4, classes (0.1, 0.8);
  every other predictor has confidence 0.3."""
  pred = np.zeros((2, 2, 12), np.float32)
  pred[..., 4] = 0.3
  pred[..., 9] = 0.3
  pred[0, 0, 0:5] = [0.6, 0.7, 0.5, 0.6, 0.7]
  pred[0, 0, 5:10] = [0.2, 0.2, 0.1, 0.1, 0.4]
  pred[0, 0, 10:12] = [0.1, 0.8]
  pred[1, 1, 10:12] = [0.5, 0.5]  # class scores of empty cells are not penalized
  return pred


def _v1_loss(pred, gt=GT, labels=LABELS, valid=VALID, **kw):
  fn = jax.jit(functools.partial(yolo.yolo_v1_loss, image_hw=(100, 100), num_boxes=2,
                                 num_classes=2, **kw))
  out = fn(jnp.asarray(pred), jnp.asarray(gt), jnp.asarray(labels), jnp.asarray(valid))
  return {k: np.asarray(v) for k, v in out.items()}


def test_yolo_v1_loss_hand_worked():
  out = _v1_loss(_v1_pred())
  # Box 0 decodes to centre (30, 35), size 0.5^2 * 100 = 25 by 0.6^2 * 100 = 36: (17.5, 17, 42.5, 53).
  inter = (40.0 - 17.5) * (53.0 - 20.0)  # 742.5
  iou = inter / (25 * 36 + 30 * 40 - inter)  # 0.54696
  assert out["mean_iou"] == pytest.approx(iou, rel=1e-5)
  expected = {
      "coord_xy": 5 * ((0.5 - 0.6) ** 2 + (0.8 - 0.7) ** 2),
      "coord_wh": 5 * ((math.sqrt(0.3) - 0.5) ** 2 + (math.sqrt(0.4) - 0.6) ** 2),
      "obj": (iou - 0.7) ** 2,  # rescore: the target confidence is the IoU
      "noobj": 0.5 * (0.4 ** 2 + 6 * 0.3 ** 2),  # box 1 of cell (0, 0) + both boxes of 3 cells
      "class": (0.0 - 0.1) ** 2 + (1.0 - 0.8) ** 2,  # label 2 -> one-hot (0, 1)
  }
  for name, value in expected.items():
    assert out[name].shape == (2, 2)
    assert float(out[name].sum()) == pytest.approx(value, rel=1e-5, abs=1e-7), name
  # Only the object cell has coordinate, objectness and class terms.
  for name in ("coord_xy", "coord_wh", "obj", "class"):
    assert np.count_nonzero(out[name][[0, 1, 1], [1, 0, 1]]) == 0
  assert out["num_objects"] == 1 and out["num_dropped"] == 0


def test_yolo_v1_rescore_off_targets_one():
  out = _v1_loss(_v1_pred(), rescore=False)
  assert float(out["obj"].sum()) == pytest.approx((1.0 - 0.7) ** 2, rel=1e-6)


def test_yolo_v1_responsible_is_highest_iou():
  pred = _v1_pred()
  pred[0, 0, 5:9] = [0.5, 0.8, math.sqrt(0.3), math.sqrt(0.4)]  # box 1 now equals the gt: IoU 1
  out = _v1_loss(pred)
  assert float(out["coord_xy"].sum()) == pytest.approx(0.0, abs=1e-10)
  assert float(out["coord_wh"].sum()) == pytest.approx(0.0, abs=1e-10)
  assert float(out["obj"].sum()) == pytest.approx((1.0 - 0.4) ** 2, rel=1e-5)
  # Box 0 is not responsible any more: it is pushed to confidence 0 with lambda_noobj.
  assert float(out["noobj"].sum()) == pytest.approx(0.5 * (0.7 ** 2 + 6 * 0.3 ** 2), rel=1e-5)


def test_yolo_v1_rmse_fallback_when_no_overlap():
  pred = _v1_pred()
  pred[0, 0, 0:4] = [0.0, 0.0, 0.05, 0.05]  # tiny box at (0, 0): IoU 0
  pred[0, 0, 5:9] = [0.9, 0.95, 0.05, 0.05]  # tiny box at (45, 47.5), right of the gt: IoU 0
  out = _v1_loss(pred)
  assert out["mean_iou"] == 0.0
  # Both IoUs are 0, so box 1 (smaller squared error on the codes) is responsible, not box 0.
  expected_xy = 5 * ((0.5 - 0.9) ** 2 + (0.8 - 0.95) ** 2)
  assert float(out["coord_xy"].sum()) == pytest.approx(expected_xy, rel=1e-5)
  assert float(out["obj"].sum()) == pytest.approx(0.4 ** 2, rel=1e-5)  # target IoU 0
  assert float(out["noobj"].sum()) == pytest.approx(0.5 * (0.7 ** 2 + 6 * 0.3 ** 2), rel=1e-5)


def test_yolo_v1_one_object_per_cell_largest_wins():
  gt = np.array([[20.0, 20.0, 30.0, 30.0],   # centre (25, 25): cell (0, 0), small
                 [5.0, 5.0, 45.0, 45.0],     # centre (25, 25): cell (0, 0), large -> wins
                 [60.0, 60.0, 90.0, 90.0],   # cell (1, 1)
                 [0.0, 0.0, 0.0, 0.0]], np.float32)
  t = yolo.yolo_v1_targets(jnp.asarray(gt), jnp.asarray([1, 2, 1, 0]),
                           jnp.asarray([True, True, True, False]), image_hw=(100, 100), grid_hw=2,
                           num_classes=2)
  np.testing.assert_array_equal(np.asarray(t["has_obj"]), [[True, False], [False, True]])
  np.testing.assert_allclose(np.asarray(t["boxes"][0, 0]), gt[1])
  np.testing.assert_allclose(np.asarray(t["classes"][0, 0]), [0.0, 1.0])
  np.testing.assert_allclose(np.asarray(t["codes"][1, 1]),
                             [0.5, 0.5, math.sqrt(0.3), math.sqrt(0.3)], rtol=1e-6)
  assert float(t["num_dropped"]) == 1.0


def _finite_v1(gt, valid, labels=None):
  labels = np.ones(len(gt), np.int32) if labels is None else labels
  pred = jnp.asarray(np.random.default_rng(0).normal(size=(2, 2, 12)), jnp.float32)

  def total(p):
    out = yolo.yolo_v1_loss(p, jnp.asarray(gt), jnp.asarray(labels), jnp.asarray(valid),
                            image_hw=(100, 100), num_boxes=2, num_classes=2)
    return sum(jnp.sum(out[k]) for k in ("coord_xy", "coord_wh", "obj", "noobj", "class"))

  value, grad = jax.jit(jax.value_and_grad(total))(pred)
  assert np.isfinite(float(value)) and np.all(np.isfinite(np.asarray(grad)))
  return float(value)


def test_yolo_v1_bad_boxes_give_finite_losses():
  empty = _finite_v1(np.zeros((3, 4), np.float32), np.zeros(3, bool))
  # Zero gt boxes: only the no-object term remains.
  pred = np.random.default_rng(0).normal(size=(2, 2, 12)).astype(np.float32)
  conf = pred[..., [4, 9]]
  assert empty == pytest.approx(0.5 * float(np.sum(conf ** 2)), rel=1e-5)
  # Boxes touching the border (centre on the right/bottom edge), degenerate and tiny boxes.
  border = np.array([[80.0, 80.0, 100.0, 100.0], [0.0, 0.0, 100.0, 100.0], [90, 0, 110, 20]],
                    np.float32)
  _finite_v1(border, np.ones(3, bool))
  degenerate = np.array([[10.0, 10.0, 10.0, 30.0], [50.0, 50.0, 40.0, 40.0],
                         [np.nan, 0, 5, 5]], np.float32)
  assert _finite_v1(degenerate, np.ones(3, bool)) == pytest.approx(empty, rel=1e-6)
  tiny = np.array([[30.0, 30.0, 30.01, 30.01]], np.float32)
  _finite_v1(tiny, np.ones(1, bool))


def test_yolo_v1_bad_arguments():
  with pytest.raises(ValueError, match="5B \\+ C"):
    yolo.yolo_v1_loss(jnp.zeros((2, 2, 11)), jnp.asarray(GT), jnp.asarray(LABELS),
                      jnp.asarray(VALID), image_hw=(100, 100), num_boxes=2, num_classes=2)
  with pytest.raises(ValueError, match="gt_labels"):
    yolo.yolo_v1_loss(jnp.zeros((2, 2, 12)), jnp.asarray(GT), jnp.asarray([1, 2]),
                      jnp.asarray(VALID), image_hw=(100, 100), num_boxes=2, num_classes=2)
  with pytest.raises(ValueError, match="lambda_noobj"):
    yolo.yolo_v1_loss(jnp.zeros((2, 2, 12)), jnp.asarray(GT), jnp.asarray(LABELS),
                      jnp.asarray(VALID), image_hw=(100, 100), num_boxes=2, num_classes=2,
                      lambda_noobj=-1.0)


# ------------------------------------------------------------------------------------------------
# YOLOv2: S = 2, A = 2, C = 2 on a 64 x 64 image (stride 32)
# ------------------------------------------------------------------------------------------------

PRIORS = np.array([[0.5, 0.5], [1.5, 1.5]], np.float32)
GT2 = np.array([[8.0, 8.0, 40.0, 24.0]], np.float32)  # 1.0 x 0.5 cells, centre (24, 16): cell (0, 0)


def _v2_loss(pred, gt=GT2, valid=(True,), **kw):
  fn = jax.jit(functools.partial(yolo.yolo_v2_loss, priors=jnp.asarray(PRIORS), image_hw=(64, 64),
                                 num_classes=2, **kw))
  out = fn(jnp.asarray(pred), jnp.asarray(gt), jnp.asarray([2] * len(gt)), jnp.asarray(valid))
  return {k: np.asarray(v) for k, v in out.items()}


def test_yolo_v2_loss_hand_worked():
  pred = np.zeros((2, 2, 2, 7), np.float32)
  pred[0, 0, 0, 4] = 1.0  # objectness logit of the responsible slot
  out = _v2_loss(pred)
  # Prior 0 (0.5 x 0.5) has shape IoU 0.5 with the 1.0 x 0.5 box, prior 1 (1.5 x 1.5) 0.222.
  coord = (2.0 - 32 * 16 / 64 ** 2) * ((0.5 - 0.75) ** 2 + (0.5 - 0.5) ** 2 + math.log(2.0) ** 2)
  # The slot's box: centre (16, 16), 16 x 16 -> IoU with the gt = 256 / 512.
  sig = 1.0 / (1.0 + math.exp(-1.0))
  assert float(out["coord"].sum()) == pytest.approx(coord, rel=1e-5)
  assert float(out["coord"][0, 0, 0]) == pytest.approx(coord, rel=1e-5)
  assert float(out["obj"].sum()) == pytest.approx(5.0 * (0.5 - sig) ** 2, rel=1e-5)
  assert float(out["noobj"].sum()) == pytest.approx(7 * 0.25, rel=1e-5)  # all below IoU 0.6
  assert float(out["class"].sum()) == pytest.approx(math.log(2.0), rel=1e-5)
  assert float(out["prior"].sum()) == 0.0
  assert out["mean_iou"] == pytest.approx(0.5, rel=1e-5)


def test_yolo_v2_ignores_good_non_responsible_boxes():
  pred = np.zeros((2, 2, 2, 7), np.float32)
  # Slot (0, 0, prior 1) predicts the gt exactly: IoU 1 > 0.6, so no no-object loss there.
  pred[0, 0, 1, :4] = [math.log(3.0), 0.0, math.log(1.0 / 1.5), math.log(0.5 / 1.5)]
  out = _v2_loss(pred)
  assert float(out["noobj"][0, 0, 1]) == 0.0
  assert float(out["noobj"].sum()) == pytest.approx(6 * 0.25, rel=1e-5)
  assert float(out["coord"][0, 0, 1]) == 0.0  # still not the responsible slot
  out = _v2_loss(pred, ignore_threshold=1.0)
  assert float(out["noobj"].sum()) == pytest.approx(7 * 0.25, rel=1e-5)


def test_yolo_v2_prior_term():
  pred = np.zeros((2, 2, 2, 7), np.float32)
  pred[1, 1, 0, 2] = 1.0  # tw of an empty slot
  out = _v2_loss(pred, prior_weight=0.01)
  assert float(out["prior"].sum()) == pytest.approx(0.01 * 1.0, rel=1e-5)


def test_yolo_v2_targets_one_per_slot_and_any_grid():
  gt = np.array([[8.0, 8.0, 40.0, 24.0], [10.0, 10.0, 38.0, 22.0], [40.0, 40.0, 64.0, 64.0]],
                np.float32)
  for s in (2, 3):  # multi-scale: any grid size
    t = yolo.yolo_v2_targets(jnp.asarray(gt), jnp.asarray([1, 2, 1]), jnp.asarray([True] * 3),
                             priors=jnp.asarray(PRIORS), image_hw=(64, 64), grid_hw=(s, s),
                             num_classes=2)
    assert t["has_obj"].shape == (s, s, 2)
  t = jax.jit(functools.partial(yolo.yolo_v2_targets, priors=jnp.asarray(PRIORS), image_hw=(64, 64),
                                grid_hw=(2, 2), num_classes=2))(
                                    jnp.asarray(gt), jnp.asarray([1, 2, 1]), jnp.asarray([True] * 3))
  assert float(t["num_dropped"]) == 1.0  # box 1 shares box 0's cell and prior and is smaller
  assert int(t["labels"][0, 0, 0]) == 1
  # Box 2 (24 x 24 px = 0.75 cells, centre on the bottom-right edge) -> last cell, prior 0.
  assert bool(t["has_obj"][1, 1, 0])
  np.testing.assert_allclose(np.asarray(t["twh"][1, 1, 0]), [math.log(1.5)] * 2, rtol=1e-5)


def test_yolo_v2_bad_boxes_give_finite_losses():
  rng = np.random.default_rng(1)
  pred = jnp.asarray(rng.normal(size=(2, 2, 2, 7)), jnp.float32)
  cases = [
      (np.zeros((2, 4), np.float32), [False, False]),
      (np.array([[40.0, 40.0, 64.0, 64.0], [0.0, 0.0, 64.0, 64.0]], np.float32), [True, True]),
      (np.array([[5.0, 5.0, 5.0, 20.0], [30.0, 30.0, 20.0, 20.0]], np.float32), [True, True]),
      (np.array([[31.99, 31.99, 32.0, 32.0], [0.0, 0.0, 0.001, 0.001]], np.float32), [True, True]),
  ]
  for gt, valid in cases:
    def total(p, gt=gt, valid=valid):
      out = yolo.yolo_v2_loss(p, jnp.asarray(gt), jnp.asarray([1, 1]), jnp.asarray(valid),
                              priors=jnp.asarray(PRIORS), image_hw=(64, 64), num_classes=2)
      return sum(jnp.sum(out[k]) for k in ("coord", "obj", "noobj", "class", "prior"))

    value, grad = jax.jit(jax.value_and_grad(total))(pred)
    assert np.isfinite(float(value)) and np.all(np.isfinite(np.asarray(grad))), gt
