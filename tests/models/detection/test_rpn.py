"""Region Proposal Network (Ren et al. 2015): anchors, hand-checked anchor labels and targets,
sampling counts, the head's layouts, the loss against a NumPy reference, proposal shapes, order and
NMS."""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxvision.models.detection import rpn
from jaxvision.ops import anchors as anchor_ops
from jaxvision.ops import matching


def _key(seed=0):
  return jax.random.key(seed, impl="rbg")  # rbg: far cheaper to compile on CPU than threefry


# ------------------------------------------------------------------------------------------------
# Anchors
# ------------------------------------------------------------------------------------------------


def test_default_anchors_are_the_papers_nine_per_location():
  cfg = rpn.RPNConfig()
  anchors, counts = rpn.rpn_anchors(cfg, (800, 800), [(50, 50)])
  assert cfg.num_anchors == 9 and counts == (50 * 50 * 9,)
  np.testing.assert_array_equal(np.asarray(anchors),
                                np.asarray(anchor_ops.faster_rcnn_anchors((50, 50), stride=16)))
  # First location, anchor 3 = ratio 1 (h/w), size 128 (ratio-major order): a 128 x 128 box
  # centred on the cell centre (8, 8).
  np.testing.assert_allclose(np.asarray(anchors[3]), [8 - 64, 8 - 64, 8 + 64, 8 + 64], rtol=1e-6)


def test_fpn_anchors_three_per_location_one_size_per_level():
  cfg = rpn.RPNConfig(levels=("P2", "P3", "P4", "P5", "P6"), anchor_sizes=anchor_ops.FPN_SIZES)
  shapes = [(32, 32), (16, 16), (8, 8), (4, 4), (2, 2)]
  anchors, counts = rpn.rpn_anchors(cfg, (128, 128), shapes)
  assert cfg.num_anchors == 3
  assert counts == tuple(h * w * 3 for h, w in shapes) and anchors.shape == (sum(counts), 4)
  # The ratio-1 anchor of each level has the level's size (32 on P2 ... 512 on P6).
  starts = np.cumsum((0,) + counts[:-1])
  for start, (size,) in zip(starts, anchor_ops.FPN_SIZES):
    a = np.asarray(anchors[start + 1])
    np.testing.assert_allclose([a[2] - a[0], a[3] - a[1]], [size, size], rtol=1e-6)


def test_config_rejects_inconsistent_levels():
  with pytest.raises(ValueError, match="one tuple of sizes per level"):
    rpn.RPNConfig(levels=("P2", "P3"), anchor_sizes=((32,),))
  with pytest.raises(ValueError, match="objectness"):
    rpn.RPNConfig(objectness="softplus")
  with pytest.raises(ValueError, match="pre_nms_top_n_train"):
    rpn.RPNConfig(pre_nms_top_n_train=0)


# ------------------------------------------------------------------------------------------------
# Anchor labels and targets (hand-checked)
# ------------------------------------------------------------------------------------------------

# gt 0 = [0, 0, 10, 10] (area 100); gt 1 = [50, 50, 60, 60]; slot 2 is padding.
_GT = np.array([[0, 0, 10, 10], [50, 50, 60, 60], [0, 0, 0, 0]], np.float32)
_GT_VALID = np.array([True, True, False])
_ANCHORS = np.array([
    [0, 0, 10, 10],     # 0: IoU 1.0 with gt 0                          -> positive
    [0, 0, 10, 7],      # 1: IoU 70/100 = 0.7 exactly (>= 0.7)           -> positive
    [0, 0, 10, 6],      # 2: IoU 0.6, in [0.3, 0.7)                      -> ignored
    [0, 0, 10, 2.5],    # 3: IoU 0.25 < 0.3                              -> negative
    [20, 20, 30, 30],   # 4: IoU 0 with both                             -> negative
    [50, 50, 60, 55],   # 5: IoU 0.5 with gt 1, gt 1's best anchor       -> positive (low quality)
    [50, 50, 60, 54],   # 6: IoU 0.4 with gt 1, not the best             -> ignored
    [100, 100, 140, 140],  # 7: far away                                 -> negative
], np.float32)


def _targets(cfg, anchors=_ANCHORS, gt=_GT, gt_valid=_GT_VALID, image_hw=(128, 128), seed=0):
  fn = jax.jit(functools.partial(rpn.rpn_targets, config=cfg))  # one compilation per test
  return fn(_key(seed), jnp.asarray(anchors), jnp.asarray(gt), jnp.asarray(gt_valid),
            jnp.asarray(image_hw, jnp.int32))


def test_anchor_labels_hand_checked():
  t = _targets(rpn.RPNConfig())
  P, N, I = int(matching.POSITIVE), int(matching.NEGATIVE), int(matching.IGNORE)
  np.testing.assert_array_equal(np.asarray(t.match_labels), [P, P, I, N, N, P, I, N])
  # 256 samples >> 8 anchors: every positive and every negative is sampled, nothing else.
  np.testing.assert_array_equal(np.asarray(t.positive), [1, 1, 0, 0, 0, 1, 0, 0])
  np.testing.assert_array_equal(np.asarray(t.negative), [0, 0, 0, 1, 1, 0, 0, 1])
  # Targets (Eq. 2, weights 1) of the positives, by hand.
  expected = np.zeros((8, 4), np.float32)
  expected[1] = [0.0, (5.0 - 3.5) / 7.0, 0.0, math.log(10.0 / 7.0)]  # gt 0 vs anchor 1
  expected[5] = [0.0, (55.0 - 52.5) / 5.0, 0.0, math.log(10.0 / 5.0)]  # gt 1 vs anchor 5
  np.testing.assert_allclose(np.asarray(t.box_targets), expected, atol=1e-6)


def test_without_low_quality_matches_gt_one_gets_no_anchor():
  t = _targets(rpn.RPNConfig(allow_low_quality_matches=False))
  assert not bool(t.positive[5]) and int(t.match_labels[5]) == int(matching.IGNORE)


def test_cross_boundary_anchors_ignored_when_asked():
  # Anchor 0 crosses the left border with IoU 100/120 = 0.83; anchor 3 crosses the right border.
  anchors = np.array([[-2, 0, 10, 10], [0, 0, 10, 10], [60, 60, 70, 70], [120, 0, 130, 8]],
                     np.float32)
  gt = np.array([[0, 0, 10, 10]], np.float32)
  t = _targets(rpn.RPNConfig(ignore_cross_boundary=True), anchors, gt, np.array([True]))
  np.testing.assert_array_equal(np.asarray(t.positive), [0, 1, 0, 0])
  np.testing.assert_array_equal(np.asarray(t.negative), [0, 0, 1, 0])  # outside: never sampled
  t = _targets(rpn.RPNConfig(), anchors, gt, np.array([True]))  # torchvision: all anchors count
  np.testing.assert_array_equal(np.asarray(t.positive), [1, 1, 0, 0])
  np.testing.assert_array_equal(np.asarray(t.negative), [0, 0, 1, 1])


def test_no_gt_all_negative_and_finite_targets():
  gt = np.zeros((3, 4), np.float32)
  t = _targets(rpn.RPNConfig(), gt=gt, gt_valid=np.zeros(3, bool))
  assert not np.any(np.asarray(t.positive))
  np.testing.assert_array_equal(np.asarray(t.negative), np.ones(8, bool))
  assert np.all(np.isfinite(np.asarray(t.box_targets)))


@pytest.mark.parametrize("num_pos,expect_pos", [(400, 128), (3, 3)])
def test_sampling_256_up_to_half_positive(num_pos, expect_pos):
  # 1000 anchors on a line; the first `num_pos` coincide with the gt (IoU 1), the rest are far.
  a = np.tile(np.array([[200, 200, 210, 210]], np.float32), (1000, 1))
  a[:num_pos] = [0, 0, 10, 10]
  gt = np.array([[0, 0, 10, 10]], np.float32)
  t = _targets(rpn.RPNConfig(), a, gt, np.array([True]), image_hw=(300, 300))
  n_pos, n_neg = int(np.sum(t.positive)), int(np.sum(t.negative))
  assert n_pos == expect_pos and n_pos + n_neg == 256
  assert not np.any(np.asarray(t.positive)[num_pos:])
  assert not np.any(np.asarray(t.negative)[:num_pos])


# ------------------------------------------------------------------------------------------------
# Head and loss
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("objectness,per_anchor", [("softmax", 2), ("sigmoid", 1)])
def test_head_layouts_and_shared_weights(objectness, per_anchor):
  head = rpn.RPNHead(num_anchors=9, objectness=objectness, conv_features=16)
  maps = [jnp.ones((2, 6, 5, 8)), jnp.ones((2, 3, 3, 8))]
  variables = jax.jit(head.init)(_key(), maps)
  (s0, s1), (d0, d1) = jax.jit(head.apply)(variables, maps)
  if per_anchor == 2:
    assert s0.shape == (2, 6 * 5 * 9, 2) and s1.shape == (2, 3 * 3 * 9, 2)
  else:
    assert s0.shape == (2, 6 * 5 * 9) and s1.shape == (2, 3 * 3 * 9)
  assert d0.shape == (2, 270, 4) and d1.shape == (2, 81, 4)
  p = variables["params"]
  assert p["cls_logits"]["kernel"].shape == (1, 1, 16, 9 * per_anchor)
  assert p["bbox_pred"]["kernel"].shape == (1, 1, 16, 36)
  # One set of weights for any number of levels.
  one_level = jax.eval_shape(head.init, _key(), maps[:1])
  assert jax.tree.map(jnp.shape, one_level) == jax.tree.map(jnp.shape, variables)


def test_softmax_objectness_is_sigmoid_of_logit_difference_and_same_loss():
  scores = jax.random.normal(_key(1), (2, 50, 2)) * 3
  logit = rpn.objectness_logits(scores, "softmax")
  np.testing.assert_allclose(np.asarray(jax.nn.sigmoid(logit)),
                             np.asarray(jax.nn.softmax(scores, -1)[..., 1]), rtol=1e-5, atol=1e-6)
  labels = jax.random.bernoulli(_key(2), 0.3, (2, 50))
  targets = rpn.RPNTargets(positive=labels, negative=~labels, box_targets=jnp.zeros((2, 50, 4)),
                           match_labels=labels.astype(jnp.int8))
  loss = jax.jit(functools.partial(rpn.rpn_loss, config=rpn.RPNConfig()))
  cls, _ = loss(logit, jnp.zeros((2, 50, 4)), targets)
  ce = -jnp.take_along_axis(jax.nn.log_softmax(scores, -1), labels[..., None].astype(int), -1)
  np.testing.assert_allclose(float(cls), float(jnp.mean(ce)), rtol=1e-5)


def test_rpn_loss_matches_numpy_reference():
  rng = np.random.default_rng(0)
  b, a = 2, 40
  logits = rng.normal(size=(b, a)).astype(np.float32) * 2
  deltas = rng.normal(size=(b, a, 4)).astype(np.float32)
  box_t = rng.normal(size=(b, a, 4)).astype(np.float32)
  u = rng.uniform(size=(b, a))
  pos, neg = u < 0.2, (u >= 0.2) & (u < 0.7)
  t = rpn.RPNTargets(jnp.asarray(pos), jnp.asarray(neg), jnp.asarray(box_t),
                     jnp.zeros((b, a), jnp.int8))
  beta = 1.0 / 9.0
  loss = jax.jit(functools.partial(rpn.rpn_loss, config=rpn.RPNConfig()))
  cls, box = loss(jnp.asarray(logits), jnp.asarray(deltas), t)
  p = 1 / (1 + np.exp(-logits.astype(np.float64)))
  bce = -(pos * np.log(p) + (1 - pos) * np.log(1 - p))
  n = (pos | neg).sum()
  d = np.abs(deltas - box_t)
  sl1 = np.where(d < beta, 0.5 * d * d / beta, d - 0.5 * beta).sum(-1)
  np.testing.assert_allclose(float(cls), bce[pos | neg].sum() / n, rtol=1e-5)
  np.testing.assert_allclose(float(box), sl1[pos].sum() / n, rtol=1e-5)
  # The normalizer argument (the psum over devices) divides both sums.
  cls2, box2 = loss(jnp.asarray(logits), jnp.asarray(deltas), t, normalizer=2.0 * n)
  np.testing.assert_allclose([float(cls2), float(box2)], [float(cls) / 2, float(box) / 2],
                             rtol=1e-6)


# ------------------------------------------------------------------------------------------------
# Proposals
# ------------------------------------------------------------------------------------------------


def _proposals(anchors, logits, deltas=None, *, counts=None, image_hw=(100, 100), **cfg_kwargs):
  anchors = jnp.asarray(anchors, jnp.float32)
  if deltas is None:
    deltas = jnp.zeros(anchors.shape, jnp.float32)
  counts = counts or (anchors.shape[0],)
  levels = tuple(f"P{i}" for i in range(len(counts)))
  cfg = rpn.RPNConfig(levels=levels, anchor_sizes=((32,),) * len(counts), **cfg_kwargs)
  fn = jax.jit(functools.partial(rpn.generate_proposals, level_counts=counts, config=cfg,
                                 train=False))
  return fn(anchors, jnp.asarray(logits, jnp.float32), jnp.asarray(deltas),
            jnp.asarray(image_hw, jnp.int32))


def test_proposals_static_shape_descending_order_and_nms():
  anchors = np.array([
      [10, 10, 30, 30],  # 0 score 5
      [11, 11, 31, 31],  # 1 score 6: IoU with 0 is 361/439 = 0.82 > 0.7 -> suppresses 0
      [50, 50, 70, 70],  # 2 score 1
      [-20, -20, 5, 5],  # 3 score 3: clipped to [0, 0, 5, 5]
      [60, 10, 60.0005, 40],  # 4 score 9: width 5e-4 < min_size 1e-3 -> dropped
  ], np.float32)
  logits = np.array([5, 6, 1, 3, 9], np.float32)
  p = _proposals(anchors, logits, pre_nms_top_n_test=10, post_nms_top_n_test=6)
  assert p.boxes.shape == (6, 4) and p.valid.shape == (6,) and p.scores.shape == (6,)
  np.testing.assert_array_equal(np.asarray(p.valid), [1, 1, 1, 0, 0, 0])
  np.testing.assert_allclose(np.asarray(p.boxes[:3]),
                             [[11, 11, 31, 31], [0, 0, 5, 5], [50, 50, 70, 70]])
  np.testing.assert_allclose(np.asarray(p.scores[:3]), [6, 3, 1])
  assert np.all(np.asarray(p.boxes[3:]) == 0) and np.all(np.isneginf(np.asarray(p.scores[3:])))


def test_proposals_decode_deltas_and_clip():
  anchors = np.array([[10, 10, 30, 30]], np.float32)
  deltas = np.array([[0.5, 0.0, math.log(2.0), 0.0]], np.float32)  # move right 10 px, double width
  p = _proposals(anchors, [1.0], deltas, post_nms_top_n_test=1, image_hw=(100, 45))
  np.testing.assert_allclose(np.asarray(p.boxes[0]), [10, 10, 45, 30], rtol=1e-6)  # x2 = 50 -> 45


def test_pre_nms_top_n_is_per_level_and_nms_is_per_level():
  # Level 0: 3 anchors at the same place; level 1: 1 anchor at that place too.
  anchors = np.array([[10, 10, 30, 30]] * 3 + [[10, 10, 30, 30]], np.float32)
  logits = np.array([5, 4, 3, 0], np.float32)  # level 1's anchor scores lowest overall
  p = _proposals(anchors, logits, counts=(3, 1), pre_nms_top_n_test=1, post_nms_top_n_test=4)
  # top-1 per level: anchor 0 (level 0) and anchor 3 (level 1); identical boxes survive NMS
  # because levels never suppress each other.
  np.testing.assert_array_equal(np.asarray(p.valid), [1, 1, 0, 0])
  np.testing.assert_allclose(np.asarray(p.scores[:2]), [5, 0])
  # Single level: the duplicates suppress each other.
  p1 = _proposals(anchors, logits, pre_nms_top_n_test=4, post_nms_top_n_test=4)
  np.testing.assert_array_equal(np.asarray(p1.valid), [1, 0, 0, 0])


def test_proposals_ignore_nan_and_stop_gradient():
  anchors = np.array([[0, 0, 10, 10], [50, 50, 60, 60]], np.float32)

  def total(logits, deltas):
    p = _proposals(anchors, logits, deltas, post_nms_top_n_test=2)
    return jnp.sum(p.boxes), p

  _, p = jax.jit(total)(jnp.array([jnp.nan, 1.0]), jnp.zeros((2, 4)))
  np.testing.assert_array_equal(np.asarray(p.valid), [1, 0])
  np.testing.assert_allclose(np.asarray(p.boxes[0]), [50, 50, 60, 60])
  g = jax.jit(jax.grad(lambda d: total(jnp.array([2.0, 1.0]), d)[0]))(jnp.zeros((2, 4)))
  assert np.all(np.asarray(g) == 0)


def test_proposals_batched_with_vmap_and_per_image_clip():
  anchors, counts = rpn.rpn_anchors(rpn.RPNConfig(anchor_sizes=((16, 32, 64),)), (64, 64), [(4, 4)])
  logits = jax.random.normal(_key(3), (2, anchors.shape[0]))
  deltas = 0.1 * jax.random.normal(_key(4), (2, anchors.shape[0], 4))
  cfg = rpn.RPNConfig(anchor_sizes=((16, 32, 64),), pre_nms_top_n_test=50, post_nms_top_n_test=20)
  fn = functools.partial(rpn.generate_proposals, level_counts=counts, config=cfg, train=False)
  hw = jnp.array([[64, 64], [40, 30]], jnp.int32)
  p = jax.jit(jax.vmap(fn, in_axes=(None, 0, 0, 0)))(anchors, logits, deltas, hw)
  assert p.boxes.shape == (2, 20, 4)
  b = np.asarray(p.boxes)
  assert b[1, :, 2].max() <= 30 and b[1, :, 3].max() <= 40
  s = np.asarray(p.scores)
  for i in range(2):
    v = np.asarray(p.valid[i])
    assert np.all(np.diff(s[i][v]) <= 0)  # descending among valid rows, valid rows first
    assert np.all(v[:v.sum()])


def test_strides_of_odd_sizes():
  # 600 x 1000 input: C4 of a ResNet is 38 x 63 (ceil halving); its stride is 16, which
  # torchvision's integer division reads as 15.
  assert rpn.feature_strides((600, 1000), [(38, 63)]) == [(16, 16)]
  assert rpn.feature_strides((600, 1000), [(38, 63)], torchvision=True) == [(15, 15)]
  assert rpn.feature_strides((128, 128), [(32, 32), (16, 16), (2, 2)]) == [(4, 4), (8, 8), (64, 64)]
