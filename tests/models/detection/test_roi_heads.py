"""RoI heads (Fast R-CNN, Girshick 2015): RoI sampling fractions and IoU bands, the box loss only on
the gt class (values and gradients), RoI pooling dispatch, heads' shapes, and inference
post-processing (per-class decoding, score threshold, class-aware NMS, static size)."""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxvision.models.detection import roi_heads as heads
from jaxvision.ops import box_coder
from jaxvision.ops import roi as roi_ops
from jaxvision.ops.sampling import RoiSample


def _key(seed=0):
  return jax.random.key(seed, impl="rbg")  # rbg: far cheaper to compile on CPU than threefry


def _iou_boxes(gt, iou, n):
  """``n`` boxes of ``gt``'s size shifted horizontally so that their IoU with ``gt`` is ``iou``."""
  x1, y1, x2, y2 = gt
  w = x2 - x1
  # Shift s: IoU = (w - s) / (w + s)  =>  s = w (1 - iou) / (1 + iou)
  s = w * (1 - iou) / (1 + iou)
  return np.tile(np.array([[x1 + s, y1, x2 + s, y2]], np.float32), (n, 1))


# ------------------------------------------------------------------------------------------------
# Sampling
# ------------------------------------------------------------------------------------------------


def _sample(cfg, proposals, valid, gt_boxes, gt_labels, gt_valid, seed=0):
  fn = jax.jit(functools.partial(heads.sample_training_rois, config=cfg))
  return fn(_key(seed), jnp.asarray(proposals), jnp.asarray(valid), jnp.asarray(gt_boxes),
            jnp.asarray(gt_labels), jnp.asarray(gt_valid))


def _two_image_batch():
  """Image 0: 300 fg proposals (IoU 0.8), 300 bg (IoU 0.3), 100 with IoU 0.05; image 1: no gt."""
  gt = np.array([20, 20, 60, 60], np.float32)
  props = np.concatenate([_iou_boxes(gt, 0.8, 300), _iou_boxes(gt, 0.3, 300),
                          _iou_boxes(gt, 0.05, 100)])
  proposals = np.stack([props, props])
  valid = np.ones((2, 700), bool)
  gt_boxes = np.stack([np.stack([gt, np.zeros(4, np.float32)]), np.zeros((2, 4), np.float32)])
  gt_labels = np.array([[3, 0], [0, 0]], np.int32)
  gt_valid = np.array([[True, False], [False, False]])
  return proposals, valid, gt_boxes, gt_labels, gt_valid


def test_sampling_fractions_torchvision_band():
  cfg = heads.RoIHeadsConfig(batch_size_per_image=512, positive_fraction=0.25, bg_iou_low=0.0)
  s = _sample(cfg, *_two_image_batch())
  assert s.rois.shape == (2, 512, 4) and s.labels.shape == (2, 512)
  labels, valid = np.asarray(s.labels), np.asarray(s.valid)
  # Image 0: 128 foreground (class 3) first, then 384 background (IoU 0.3 and 0.05 both count).
  assert valid[0].all()
  np.testing.assert_array_equal(labels[0, :128], 3)
  np.testing.assert_array_equal(labels[0, 128:], 0)
  # Image 1 has no gt: every proposal is background at IoU 0 (band [0, 0.5)); 512 of 700 sampled.
  assert valid[1].all() and np.all(labels[1] == 0)
  # Regression targets: the matched gt box for foreground rows.
  np.testing.assert_allclose(np.asarray(s.matched_boxes[0, :128]),
                             np.tile([[20, 20, 60, 60]], (128, 1)))


def test_sampling_fast_rcnn_band_ignores_low_iou():
  cfg = heads.RoIHeadsConfig(batch_size_per_image=64, positive_fraction=0.25, bg_iou_low=0.1)
  proposals, valid, gt_boxes, gt_labels, gt_valid = _two_image_batch()
  s = _sample(cfg, proposals, valid, gt_boxes, gt_labels, gt_valid)
  labels, sv, rois = np.asarray(s.labels), np.asarray(s.valid), np.asarray(s.rois)
  assert sv[0].all() and (labels[0] > 0).sum() == 16 and (labels[0] == 0).sum() == 48
  # No sampled background has IoU < 0.1 (the 0.05 boxes start at x1 = 20 + 40*0.95/1.05 = 56.2).
  bg_x1 = rois[0][(labels[0] == 0)][:, 0]
  assert np.all(bg_x1 < 50)
  # Image 1 (no gt): everything is below 0.1, so nothing is sampled -- a valid, empty sample.
  assert not sv[1].any()


def test_sampling_appends_gt_and_drops_invalid_proposals():
  cfg = heads.RoIHeadsConfig(batch_size_per_image=8, positive_fraction=0.5)
  proposals = np.zeros((1, 4, 4), np.float32)
  proposals[0, :] = [[20, 20, 60, 60]] * 4  # perfect proposals, but marked invalid
  gt = np.array([[[20, 20, 60, 60], [80, 80, 100, 110]]], np.float32)
  s = _sample(cfg, proposals, np.zeros((1, 4), bool), gt, np.array([[1, 2]], np.int32),
              np.array([[True, True]]))
  # Only the two appended gt boxes are candidates (both foreground).
  np.testing.assert_array_equal(np.asarray(s.valid[0]), [1, 1, 0, 0, 0, 0, 0, 0])
  assert sorted(np.asarray(s.labels[0, :2]).tolist()) == [1, 2]


# ------------------------------------------------------------------------------------------------
# Loss
# ------------------------------------------------------------------------------------------------


def _loss_inputs(seed=0, s=6, k=4):
  rng = np.random.default_rng(seed)
  rois = np.array([[10, 10, 40, 50], [0, 0, 20, 20], [30, 30, 90, 70], [5, 5, 25, 35],
                   [0, 0, 10, 10], [0, 0, 0, 0]], np.float32)[:s]
  matched = rois + rng.uniform(-3, 3, rois.shape).astype(np.float32)
  labels = np.array([2, 0, 4, 1, 0, 0], np.int32)[:s]
  valid = np.array([1, 1, 1, 1, 1, 0], bool)[:s]
  sample = RoiSample(rois=jnp.asarray(rois), labels=jnp.asarray(labels),
                     matched_boxes=jnp.asarray(np.where(valid[:, None], matched, 0)),
                     matched_gt=jnp.zeros((s,), jnp.int32), valid=jnp.asarray(valid))
  logits = jnp.asarray(rng.normal(size=(s, k + 1)).astype(np.float32))
  deltas = jnp.asarray(rng.normal(size=(s, k, 4)).astype(np.float32))
  return logits, deltas, sample, (rois, matched, labels, valid)


def test_box_loss_matches_numpy_and_only_uses_gt_class():
  cfg = heads.RoIHeadsConfig(smooth_l1_beta=1.0)
  logits, deltas, sample, (rois, matched, labels, valid) = _loss_inputs()
  loss = jax.jit(functools.partial(heads.box_head_loss, config=cfg))
  cls, box = loss(logits, deltas, sample)
  # NumPy reference.
  lg = np.asarray(logits, np.float64)
  logp = lg - np.log(np.exp(lg).sum(-1, keepdims=True))
  n = valid.sum()
  ref_cls = -sum(logp[i, labels[i]] for i in range(len(labels)) if valid[i]) / n
  t = np.asarray(box_coder.encode_boxes(jnp.asarray(matched), jnp.asarray(rois),
                                        box_coder.FAST_RCNN_WEIGHTS))
  ref_box = 0.0
  for i in range(len(labels)):
    if valid[i] and labels[i] > 0:
      d = np.abs(np.asarray(deltas)[i, labels[i] - 1] - t[i])
      ref_box += np.where(d < 1.0, 0.5 * d * d, d - 0.5).sum()
  np.testing.assert_allclose(float(cls), ref_cls, rtol=1e-5)
  np.testing.assert_allclose(float(box), ref_box / n, rtol=1e-5)

  # Gradient w.r.t. the deltas: non-zero only at (fg RoI, its gt class).
  g = np.asarray(jax.jit(jax.grad(lambda d: loss(logits, d, sample)[1]))(deltas))
  nonzero = np.abs(g).sum(-1) > 0  # (S, K)
  expected = np.zeros_like(nonzero)
  for i, lab in enumerate(labels):
    if valid[i] and lab > 0:
      expected[i, lab - 1] = True
  np.testing.assert_array_equal(nonzero, expected)


def test_box_loss_finite_with_no_valid_rois():
  cfg = heads.RoIHeadsConfig()
  logits, deltas, sample, _ = _loss_inputs()
  empty = sample._replace(valid=jnp.zeros_like(sample.valid))
  cls, box = jax.jit(functools.partial(heads.box_head_loss, config=cfg))(logits, deltas, empty)
  assert float(cls) == 0.0 and float(box) == 0.0


# ------------------------------------------------------------------------------------------------
# Pooling and heads
# ------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_pool_rois_single_level_equals_roi_align_and_pool():
  feats = {"C4": jax.random.normal(_key(1), (2, 8, 8, 3))}
  rois = jnp.array([[[0, 0, 64, 64], [16, 8, 100, 120]], [[4, 4, 40, 40], [0, 0, 0, 0]]],
                   jnp.float32)
  valid = jnp.array([[True, True], [True, False]])
  cfg = heads.RoIHeadsConfig(feature="C4", output_size=3, sampling_ratio=2)
  out = jax.jit(functools.partial(heads.pool_rois, config=cfg, image_size=(128, 128)))(
      feats, rois, valid)
  flat = rois.reshape(4, 4)
  ref = jax.jit(functools.partial(roi_ops.roi_align, output_size=3, spatial_scale=1 / 16,
                                  sampling_ratio=2, aligned=False))(
      feats["C4"], flat, jnp.array([0, 0, 1, -1]))
  np.testing.assert_allclose(np.asarray(out), np.asarray(ref), rtol=1e-6)
  assert np.all(np.asarray(out[3]) == 0)  # padded RoI pools to zeros
  cfg = heads.RoIHeadsConfig(feature="C4", output_size=3, pooler="pool")
  out = jax.jit(functools.partial(heads.pool_rois, config=cfg, image_size=(128, 128)))(
      feats, rois, valid)
  ref = jax.jit(functools.partial(roi_ops.roi_pool, output_size=3, spatial_scale=1 / 16))(
      feats["C4"], flat, jnp.array([0, 0, 1, -1]))
  np.testing.assert_allclose(np.asarray(out), np.asarray(ref), rtol=1e-6)


@pytest.mark.slow
def test_pool_rois_fpn_levels():
  feats = {f"P{l}": jax.random.normal(_key(l), (1, 256 // 2**l, 256 // 2**l, 2))
           for l in (2, 3, 4, 5)}
  rois = jnp.array([[[0, 0, 30, 30], [0, 0, 250, 250]]], jnp.float32)
  cfg = heads.RoIHeadsConfig(fpn_levels=(2, 3, 4, 5), output_size=2)
  out = jax.jit(functools.partial(heads.pool_rois, config=cfg, image_size=(256, 256)))(
      feats, rois, jnp.ones((1, 2), bool))
  ref = jax.jit(functools.partial(roi_ops.multilevel_roi_align, levels=(2, 3, 4, 5),
                                  output_size=2, sampling_ratio=2))(
      feats, rois[0], jnp.zeros((2,), jnp.int32))
  np.testing.assert_allclose(np.asarray(out), np.asarray(ref), rtol=1e-6)
  assert heads.feature_scale((800, 800), (50, 50)) == 1 / 16
  assert heads.feature_scale((600, 1000), (38, 63)) == 1 / 16


def test_config_errors():
  with pytest.raises(ValueError, match="pooler"):
    heads.RoIHeadsConfig(pooler="max")
  with pytest.raises(ValueError, match="RoIAlign only"):
    heads.RoIHeadsConfig(pooler="pool", fpn_levels=(2, 3))
  with pytest.raises(ValueError, match="feature"):
    heads.pool_rois({"C5": jnp.zeros((1, 4, 4, 2))}, jnp.zeros((1, 1, 4)), jnp.ones((1, 1), bool),
                    config=heads.RoIHeadsConfig(feature="C4"), image_size=(64, 64))


@pytest.mark.parametrize("background_slot", [False, True])
def test_predictor_layout(background_slot):
  pred = heads.FastRCNNPredictor(num_classes=5, background_slot=background_slot)
  x = jnp.ones((7, 16))
  variables = jax.eval_shape(pred.init, _key(), x)
  assert variables["params"]["bbox_pred"]["kernel"].shape == (16, 4 * (6 if background_slot else 5))
  logits, deltas = jax.eval_shape(pred.apply, variables, x)
  assert logits.shape == (7, 6) and deltas.shape == (7, 5, 4)


def test_heads_shapes():
  x = jax.ShapeDtypeStruct((3, 14, 14, 32), jnp.float32)
  for head, dim in [(heads.TwoMLPHead(64), 64), (heads.ConvBoxHead(8, 2, 32), 32),
                    (heads.Res5Head(depth=18, width=4, norm="batch"), 32),
                    (heads.Res5Head(depth=50, width=4, norm="frozen"), 128)]:
    variables = jax.eval_shape(head.init, _key(), x)
    out = jax.eval_shape(functools.partial(head.apply, train=False), variables, x)
    assert out.shape == (3, dim), (head, out.shape)


# ------------------------------------------------------------------------------------------------
# Inference
# ------------------------------------------------------------------------------------------------


def _post(cfg, logits, deltas, rois, valid, image_hw=(100, 100)):
  fn = jax.jit(functools.partial(heads.postprocess_detections, config=cfg))
  return fn(jnp.asarray(logits, jnp.float32), jnp.asarray(deltas, jnp.float32),
            jnp.asarray(rois, jnp.float32), jnp.asarray(valid), jnp.asarray(image_hw, jnp.int32))


def test_postprocess_hand_case():
  k = 3
  rois = np.array([[10, 10, 50, 50],    # class 2, confident
                   [12, 10, 52, 50],    # class 2 too, overlaps RoI 0 (IoU 0.9): suppressed
                   [11, 10, 51, 50],    # class 3: another class, survives NMS
                   [60, 60, 90, 95],    # all probabilities below 0.05 except background
                   [0, 0, 30, 30]],     # invalid RoI
                  np.float32)
  big = 8.0
  logits = np.full((5, k + 1), -big, np.float32)
  logits[0, 2] = big
  logits[1, 2] = big - 1
  logits[2, 3] = big - 2
  logits[3, 0] = big
  logits[4, 1] = big
  deltas = np.zeros((5, k, 4), np.float32)
  deltas[0, 1] = [1.0, 0.0, 0.0, 0.0]  # class-2 deltas of RoI 0: dx = 1 / 10 -> shift by 4 px
  cfg = heads.RoIHeadsConfig(detections_per_image=6)
  d = _post(cfg, logits, deltas, rois, np.array([1, 1, 1, 1, 0], bool))
  assert d.boxes.shape == (6, 4) and d.labels.shape == (6,)
  np.testing.assert_array_equal(np.asarray(d.valid), [1, 1, 0, 0, 0, 0])
  np.testing.assert_array_equal(np.asarray(d.labels[:2]), [2, 3])
  np.testing.assert_allclose(np.asarray(d.boxes[0]), [14, 10, 54, 50], rtol=1e-5)
  np.testing.assert_allclose(np.asarray(d.boxes[1]), [11, 10, 51, 50], rtol=1e-5)
  p = jax.nn.softmax(jnp.asarray(logits), -1)
  np.testing.assert_allclose(np.asarray(d.scores[:2]), [p[0, 2], p[2, 3]], rtol=1e-5)
  np.testing.assert_array_equal(np.asarray(d.roi_index[:2]), [0, 2])
  assert np.all(np.asarray(d.labels[2:]) == 0) and np.all(np.asarray(d.boxes[2:]) == 0)


def test_postprocess_clips_and_keeps_at_most_d():
  rng = np.random.default_rng(0)
  r, k = 40, 4
  rois = np.concatenate([rng.uniform(0, 60, (r, 2)), rng.uniform(70, 140, (r, 2))], 1)
  logits = rng.normal(size=(r, k + 1)).astype(np.float32)
  cfg = heads.RoIHeadsConfig(detections_per_image=10, nms_threshold=0.99)
  d = _post(cfg, logits, rng.normal(size=(r, k, 4)) * 0.1, rois, np.ones(r, bool))
  assert int(np.sum(d.valid)) == 10
  b = np.asarray(d.boxes)
  assert b.min() >= 0 and b[:, 2].max() <= 100 and b[:, 3].max() <= 100
  s = np.asarray(d.scores)
  assert np.all(np.diff(s) <= 0) and s.min() > 0.05


def test_row_buckets():
  assert heads.row_buckets(1000, 4) == (1000, 500, 250, 125)
  assert heads.row_buckets(5, 4) == (5, 3, 2, 1)
  assert heads.row_buckets(512, 1) == (512,)
  assert heads.row_buckets(1, 4) == (1,)
  with pytest.raises(ValueError, match="row_buckets"):
    heads.RoIHeadsConfig(row_buckets=0)


class _RowsProbe(nn.Module):
  """Returns the bucket ``switch_on_rows`` ran and a Dense layer's padded output on the rows."""
  buckets: int = 4

  @nn.compact
  def __call__(self, x, valid):
    def fn(mdl, n, x):
      y = mdl.dense(x[:, :n])
      return jnp.int32(n), heads.pad_rows(y, x.shape[1])
    return heads.switch_on_rows(self, fn, valid, x, buckets=self.buckets)

  def setup(self):
    self.dense = nn.Dense(3)


@pytest.mark.parametrize("last_valid, expected", [(0, 2), (2, 2), (3, 4), (5, 8), (9, 16),
                                                  (16, 16)])
def test_switch_on_rows_takes_the_smallest_bucket_holding_every_valid_row(last_valid, expected):
  # S = 16 -> buckets 16, 8, 4, 2. Image 0 has valid rows up to ``last_valid``; image 1 only its
  # first row: the batch's largest last-valid index decides, whatever the rows before it.
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 16, 5)), jnp.float32)
  valid = np.zeros((2, 16), bool)
  valid[0, max(last_valid - 1, 0)] = last_valid > 0
  valid[1, 0] = True
  module = _RowsProbe()
  variables = module.init(jax.random.PRNGKey(0), x, jnp.asarray(valid))
  n, y = jax.jit(module.apply)(variables, x, jnp.asarray(valid))
  assert int(n) == expected
  full = _RowsProbe(buckets=1).apply(variables, x, jnp.asarray(valid))[1]
  # The rows the bucket computed equal the full computation; the others are zeros.
  np.testing.assert_allclose(np.asarray(y)[:, :expected], np.asarray(full)[:, :expected],
                             rtol=1e-6, atol=1e-6)
  assert not np.any(np.asarray(y)[:, expected:])
