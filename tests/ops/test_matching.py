"""Tests for jaxvision.ops.matching: parity with torchvision's Matcher/SSDMatcher, edge cases, errors.

Reference outputs come from tests/fixtures/gen_matching.py (torchvision, run once offline).
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxvision.ops import matching
from jaxvision.ops.matching import IGNORE, NEGATIVE, POSITIVE

# Jitted entry points: one compile per shape instead of op-by-op dispatch (keeps the tests fast).
_match = jax.jit(matching.match, static_argnames=("thresholds", "labels", "allow_low_quality_matches"))
_rpn = jax.jit(matching.RPN_MATCHER)
_ssd = jax.jit(matching.ssd_match)

# torchvision matcher name -> (jaxvision function of (quality-or-boxes, valid), label for torchvision's
# code -1 (below low), label for code -2 (between thresholds)).
_CONFIGS = {
    "rpn": (matching.RPN_MATCHER, NEGATIVE, IGNORE),
    "rpn_nolq": (matching.Matcher((0.3, 0.7), (0, -1, 1)), NEGATIVE, IGNORE),
    "retina": (matching.RETINANET_MATCHER, NEGATIVE, IGNORE),
    "roi_tv": (matching.fast_rcnn_matcher(bg_iou_low=0.0), NEGATIVE, IGNORE),
    "frcnn": (matching.FAST_RCNN_MATCHER, IGNORE, NEGATIVE),
    "ssd": (None, NEGATIVE, IGNORE),
}


def _run_all(inputs, valid, boxes: bool):
  """All matcher configs on a stack of cases, in one compiled function."""

  def one(x, v):
    out = {}
    for name, (m, _, _) in _CONFIGS.items():
      if name == "ssd":
        out[name] = (matching.ssd_match_boxes(x[0], x[1], v) if boxes else matching.ssd_match(x, v))
      else:
        out[name] = m.match_boxes(x[0], x[1], v) if boxes else m(x, v)
    return out

  return jax.device_get(jax.jit(jax.vmap(one))(inputs, valid))


_OUTPUTS = {}  # computed once per session; the npz itself is loaded by conftest's fixture_npz


@pytest.fixture
def data(fixture_npz):
  d = fixture_npz("matching")
  if not _OUTPUTS:
    _OUTPUTS["iou_out"] = _run_all(jnp.asarray(d["iou_iou"]), jnp.asarray(d["iou_valid"]), boxes=False)
    _OUTPUTS["box_out"] = _run_all((jnp.asarray(d["box_anchors"]), jnp.asarray(d["box_gt"])),
                                   jnp.asarray(d["box_valid"]), boxes=True)
  d.update(_OUTPUTS)
  return d


def _expected(tv, slots, raised, below, between, lowest_for_zero_iou):
  """Maps torchvision's matches ([A], index among real gts or -1/-2) to (matched slot, label)."""
  if raised:  # no (usable) gt: every anchor is labelled as having IoU 0
    return None, np.full(tv.shape, lowest_for_zero_iou, np.int8)
  labels = np.where(tv >= 0, POSITIVE, np.where(tv == -1, below, between)).astype(np.int8)
  matched = np.where(tv >= 0, slots[np.maximum(tv, 0)], -1)
  return matched, labels


def _label_of_zero_iou(name):
  if name == "frcnn":
    return IGNORE  # 0 < bg_iou_low = 0.1
  return NEGATIVE


@pytest.mark.parametrize("prefix", ["iou", "box"])
@pytest.mark.parametrize("name", list(_CONFIGS))
def test_parity_with_torchvision(data, prefix, name):
  """Labels equal torchvision's everywhere; matched gt equals torchvision's wherever POSITIVE."""
  _, below, between = _CONFIGS[name]
  matched, labels = data[f"{prefix}_out"][name]
  num_cases = labels.shape[0]
  checked_pos = 0
  for c in range(num_cases):
    exp_matched, exp_labels = _expected(
        data[f"{prefix}_{name}_tvr"][c], data[f"{prefix}_rslots"][c], data[f"{prefix}_rraised"][c],
        below, between, _label_of_zero_iou(name))
    np.testing.assert_array_equal(labels[c], exp_labels, err_msg=f"case {c} labels")
    if exp_matched is not None:
      pos = exp_labels == POSITIVE
      np.testing.assert_array_equal(matched[c][pos], exp_matched[pos], err_msg=f"case {c} matched")
      checked_pos += int(pos.sum())
    # matched_gt is always a valid slot to gather from
    assert matched[c].min() >= 0 and matched[c].max() < data[f"{prefix}_valid"].shape[1]
  assert checked_pos > 30  # the fixtures really exercise positives


@pytest.mark.parametrize("prefix", ["iou", "box"])
def test_fixtures_cover_adversarial_cases(data, prefix):
  """The fixtures contain the cases the parity test is meant to cover (guards the generator)."""
  if prefix == "iou":
    iou, valid = data["iou_iou"], data["iou_valid"]
  else:
    iou = np.stack([_np_iou(a, g) for a, g in zip(data["box_anchors"], data["box_gt"])])
    valid = data["box_valid"]
  real = np.where(valid[:, None, :], iou, -1.0)
  for t in (0.3, 0.4, 0.5, 0.7, 0.1):
    assert (real == np.float32(t)).sum() > 3, t  # IoU exactly at each threshold
  gt_max = real.max(axis=1)  # [C, G]
  ties = ((real == gt_max[:, None, :]) & (gt_max[:, None, :] > 0)).sum(axis=1)
  assert (ties > 1).sum() > 5  # gts whose max is achieved by several anchors
  anchor_max = real.max(axis=2)
  assert (((real == anchor_max[:, :, None]) & (anchor_max[:, :, None] > 0)).sum(axis=2) > 1).sum() > 5
  assert (~valid).any() and (data[f"{prefix}_kind"] == 2).any() and (data[f"{prefix}_kind"] == 1).any()
  # torchvision's low-quality rule matters: many anchors are positive only through it, and some of
  # them are matched to their own best gt, not to the gt whose maximum they hold.
  promoted = (data[f"{prefix}_rpn_tvr"] >= 0) & (data[f"{prefix}_rpn_nolq_tvr"] < 0)
  assert promoted.sum() > 20
  kept_own = 0
  for c, a in zip(*np.nonzero(promoted)):
    slot = data[f"{prefix}_rslots"][c][data[f"{prefix}_rpn_tvr"][c, a]]
    kept_own += real[c, a, slot] < gt_max[c, slot]
  assert kept_own > 0


def _np_iou(a, b):
  area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
  area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
  lt = np.maximum(a[:, None, :2], b[None, :, :2])
  rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
  wh = np.clip(rb - lt, 0, None)
  inter = wh[..., 0] * wh[..., 1]
  union = area_a[:, None] + area_b[None, :] - inter
  with np.errstate(invalid="ignore", divide="ignore"):
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0).astype(np.float32)


@pytest.mark.parametrize("prefix", ["iou", "box"])
def test_zero_max_gt_documented_difference(data, prefix):
  """A gt with best IoU 0 forces nothing here; torchvision would promote every anchor (RPN)."""
  cases = np.nonzero(data[f"{prefix}_kind"] == 1)[0]
  assert len(cases)
  matched, labels = data[f"{prefix}_out"]["rpn"]
  for c in cases:
    tv_full = data[f"{prefix}_rpn_tv"][c]
    assert (tv_full >= 0).all()  # torchvision: all anchors "positive" via the zero-IoU gt
    assert (labels[c] == POSITIVE).sum() < len(tv_full)


def test_empty_gt(data):
  """No valid gt (torchvision raises): matched_gt 0, every anchor labelled as IoU 0, no NaN."""
  for prefix in ("iou", "box"):
    for c in np.nonzero(data[f"{prefix}_kind"] == 2)[0]:
      for name in _CONFIGS:
        matched, labels = data[f"{prefix}_out"][name]
        assert data[f"{prefix}_raised"][c]
        np.testing.assert_array_equal(matched[c], 0)
        np.testing.assert_array_equal(labels[c], _label_of_zero_iou(name))


def test_worked_example_low_quality_keeps_own_argmax():
  # Columns are gts. gt0's best anchor is anchor 0 (0.25), gt1's best is anchor 1 (0.4).
  iou = jnp.array([[0.25, 0.28], [0.1, 0.4], [0.75, 0.1], [0.0, 0.0]], jnp.float32)
  iou = iou.at[2, 0].set(0.2)  # anchor 2 no longer beats anchor 0 on gt0
  valid = jnp.array([True, True])
  matched, labels = _rpn(iou, valid)
  # anchor 0 holds gt0's max: POSITIVE, but matched to its own best gt (gt1, 0.28), like torchvision.
  # anchor 1 holds gt1's max: POSITIVE, matched to gt1. Anchor 2 (0.2) and 3 (0) stay NEGATIVE.
  np.testing.assert_array_equal(labels, [POSITIVE, POSITIVE, NEGATIVE, NEGATIVE])
  np.testing.assert_array_equal(matched[:2], [1, 1])
  # Without low-quality matches, 0.28 and 0.4 are below / inside the ignore band.
  _, labels = _match(iou, valid, thresholds=(0.3, 0.7), labels=(0, -1, 1))
  np.testing.assert_array_equal(labels, [NEGATIVE, IGNORE, NEGATIVE, NEGATIVE])
  # SSD re-assigns instead: anchor 0 is gt0's best prior, so it is forced to gt0.
  matched, labels = _ssd(iou, valid)
  np.testing.assert_array_equal(labels, [POSITIVE, POSITIVE, NEGATIVE, NEGATIVE])
  np.testing.assert_array_equal(matched[:2], [0, 1])


def test_invalid_columns_and_nan_ignored():
  iou = jnp.array([[0.2, 1.0, jnp.nan], [0.8, jnp.nan, 0.9]], jnp.float32)
  valid = jnp.array([True, False, False])
  matched, labels = _rpn(iou, valid)
  np.testing.assert_array_equal(matched, [0, 0])
  np.testing.assert_array_equal(labels, [NEGATIVE, POSITIVE])
  # NaN in a valid column never wins and never makes NaN labels.
  matched, labels = _rpn(jnp.array([[jnp.nan, 0.75]], jnp.float32),
                                         jnp.array([True, True]))
  assert int(matched[0]) == 1 and int(labels[0]) == POSITIVE


def test_ssd_collision_highest_gt_wins():
  # Both gts have prior 1 as their best; torchvision's CPU last write (gt 1) wins.
  iou = jnp.array([[0.1, 0.2], [0.3, 0.4], [0.0, 0.0]], jnp.float32)
  matched, labels = _ssd(iou, jnp.array([True, True]))
  np.testing.assert_array_equal(labels, [NEGATIVE, POSITIVE, NEGATIVE])
  assert int(matched[1]) == 1
  # An invalid gt never forces.
  matched, labels = _ssd(iou, jnp.array([True, False]))
  assert int(matched[1]) == 0 and int(labels[1]) == POSITIVE


def test_static_edge_shapes():
  m, l = _rpn(jnp.zeros((5, 0), jnp.float32), jnp.zeros((0,), bool))
  np.testing.assert_array_equal(m, 0)
  np.testing.assert_array_equal(l, NEGATIVE)
  m, l = _ssd(jnp.zeros((0, 3), jnp.float32), jnp.ones((3,), bool))
  assert m.shape == (0,) and l.shape == (0,)
  assert m.dtype == jnp.int32 and l.dtype == jnp.int8


def test_duplicate_thresholds_allowed():
  # [0.5, 0.5] with labels [0, -1, 1] is SSD/torchvision's Matcher(0.5, 0.5): empty ignore band.
  iou = jnp.array([[0.49], [0.5], [0.51]], jnp.float32)
  _, labels = _match(iou, jnp.array([True]), thresholds=(0.5, 0.5), labels=(0, -1, 1))
  np.testing.assert_array_equal(labels, [0, 1, 1])


def test_presets():
  assert matching.RPN_MATCHER.thresholds == (0.3, 0.7) and matching.RPN_MATCHER.allow_low_quality_matches
  assert matching.RETINANET_MATCHER.thresholds == (0.4, 0.5)
  assert matching.FAST_RCNN_MATCHER == matching.Matcher((0.1, 0.5), (-1, 0, 1))
  assert matching.fast_rcnn_matcher(0.5, 0.1, 0.4).labels == (-1, 0, -1, 1)
  hash(matching.RPN_MATCHER)  # usable as a static jit argument


@pytest.mark.parametrize("call, exc, words", [
    (lambda: matching.match(np.zeros((3,)), np.ones(3, bool), thresholds=[0.5], labels=[0, 1]),
     ValueError, "iou"),
    (lambda: matching.match(np.zeros((3, 2), np.int32), np.ones(2, bool), thresholds=[0.5],
                            labels=[0, 1]), TypeError, "iou"),
    (lambda: matching.match(np.zeros((3, 2), np.float32), np.ones(3, bool), thresholds=[0.5],
                            labels=[0, 1]), ValueError, "gt_valid"),
    (lambda: matching.match(np.zeros((3, 2), np.float32), np.ones(2, np.int32), thresholds=[0.5],
                            labels=[0, 1]), TypeError, "gt_valid"),
    (lambda: matching.match(np.zeros((3, 2), np.float32), np.ones(2, bool), thresholds=[0.7, 0.3],
                            labels=[0, -1, 1]), ValueError, "thresholds"),
    (lambda: matching.match(np.zeros((3, 2), np.float32), np.ones(2, bool), thresholds=0.5,
                            labels=[0, 1]), TypeError, "thresholds"),
    (lambda: matching.match(np.zeros((3, 2), np.float32), np.ones(2, bool), thresholds=[0.5],
                            labels=[0, -1, 1]), ValueError, "labels"),
    (lambda: matching.match(np.zeros((3, 2), np.float32), np.ones(2, bool), thresholds=[0.5],
                            labels=[0, 2]), ValueError, "labels"),
    (lambda: matching.match_boxes(np.zeros((3, 3), np.float32), np.zeros((2, 4), np.float32),
                                  np.ones(2, bool), thresholds=[0.5], labels=[0, 1]),
     ValueError, "anchors"),
    (lambda: matching.fast_rcnn_matcher(0.5, 0.6), ValueError, "bg_iou_low"),
])
def test_errors_name_the_argument(call, exc, words):
  with pytest.raises(exc, match=words):
    call()


def test_traces_once_for_any_number_of_valid_gt():
  """One compilation serves images with 0..G valid gt boxes (static shapes, nothing data-dependent)."""
  rng = np.random.default_rng(0)
  num_anchors, num_gt = 64, 6
  xy = rng.uniform(0, 48, size=(num_anchors, 2)).astype(np.float32)
  anchors = jnp.asarray(np.concatenate([xy, xy + 16], axis=1))

  @jax.jit
  @chex.assert_max_traces(n=1)
  def f(gt_boxes, gt_valid):
    return (matching.RPN_MATCHER.match_boxes(anchors, gt_boxes, gt_valid),
            matching.ssd_match_boxes(anchors, gt_boxes, gt_valid))

  chex.clear_trace_counter()
  for n in range(num_gt + 1):
    xy = rng.uniform(0, 48, size=(num_gt, 2)).astype(np.float32)
    gt = jnp.asarray(np.concatenate([xy, xy + 20], axis=1))
    valid = jnp.arange(num_gt) < n
    (m, l), (sm, sl) = f(gt, valid)
    assert np.all(np.asarray(l) >= -1) and np.all(np.asarray(sl) >= 0)
    if n == 0:
      assert not np.any(np.asarray(l) == POSITIVE)
    else:
      assert np.asarray(valid)[np.asarray(m)[np.asarray(l) == POSITIVE]].all()
