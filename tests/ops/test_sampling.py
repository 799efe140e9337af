"""Tests for jaxvision.ops.sampling: counts vs torchvision, uniformity, determinism, RoI labelling parity."""

from __future__ import annotations

import itertools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from jaxvision.ops import matching, sampling
from jaxvision.ops.matching import IGNORE, NEGATIVE, POSITIVE

# Jitted entry points: one compile per shape instead of op-by-op dispatch (keeps the tests fast).
_sample = jax.jit(sampling.sample_balanced, static_argnames=("num_samples", "positive_fraction"))
_sample_mask = jax.jit(sampling.sample_balanced_mask,
                       static_argnames=("num_samples", "positive_fraction"))
_label_rois = jax.jit(sampling.label_rois, static_argnames=("bg_iou_low",))


def _check_sample(labels, valid_in, idx, lab, ok, num_samples, positive_fraction):
  """Invariants of one sample_balanced output (NumPy), returns (num_pos, num_neg)."""
  labels = np.asarray(labels)
  cand_ok = np.ones_like(labels, bool) if valid_in is None else np.asarray(valid_in)
  idx, lab, ok = np.asarray(idx), np.asarray(lab), np.asarray(ok)
  assert idx.shape == lab.shape == ok.shape == (num_samples,)
  assert idx.dtype == np.int32 and lab.dtype == np.int32 and ok.dtype == bool
  n = int(ok.sum())
  assert ok[:n].all() and not ok[n:].any()  # valid rows first, then padding
  assert (idx[~ok] == -1).all() and (lab[~ok] == -1).all()
  sel = idx[ok]
  assert len(np.unique(sel)) == n  # without replacement
  assert cand_ok[sel].all()  # never an invalid anchor
  pos, neg = lab[ok] == 1, lab[ok] == 0
  assert (pos | neg).all()
  assert (labels[sel[pos]] >= 1).all() and (labels[sel[neg]] == 0).all()  # never an ignored anchor
  num_pos, num_neg = int(pos.sum()), int(neg.sum())
  assert (lab[ok][:num_pos] == 1).all()  # positives first
  assert (np.diff(sel[:num_pos]) > 0).all() and (np.diff(sel[num_pos:]) > 0).all()  # index order
  total_pos = int(((labels >= 1) & cand_ok).sum())
  total_neg = int(((labels == 0) & cand_ok).sum())
  quota = int(num_samples * positive_fraction)
  assert num_pos == min(total_pos, quota)
  assert num_neg == min(total_neg, num_samples - num_pos)
  return num_pos, num_neg


@pytest.mark.parametrize("cfg", ["a", "b", "c", "d"])
def test_counts_match_torchvision(fixture_npz, cfg):
  """Positive/negative counts equal torchvision's BalancedPositiveNegativeSampler on the same labels."""
  d = fixture_npz("matching")
  labels = d["samp_labels"]
  size, frac = int(d[f"samp_{cfg}_size"]), float(d[f"samp_{cfg}_frac"])
  keys = jax.random.split(jax.random.key(ord(cfg)), labels.shape[0])

  def both(k, l):
    return (sampling.sample_balanced(k, l, num_samples=size, positive_fraction=frac),
            sampling.sample_balanced_mask(k, l, num_samples=size, positive_fraction=frac))

  (idx, lab, ok), (pos_mask, neg_mask) = jax.device_get(jax.jit(jax.vmap(both))(keys, labels))
  for c in range(labels.shape[0]):
    num_pos, num_neg = _check_sample(labels[c], None, idx[c], lab[c], ok[c], size, frac)
    assert num_pos == d[f"samp_{cfg}_npos"][c], (c, num_pos)
    assert num_neg == d[f"samp_{cfg}_nneg"][c], (c, num_neg)
    # The mask form selects exactly the same anchors.
    np.testing.assert_array_equal(np.nonzero(pos_mask[c])[0], np.sort(idx[c][ok[c] & (lab[c] == 1)]))
    np.testing.assert_array_equal(np.nonzero(neg_mask[c])[0], np.sort(idx[c][ok[c] & (lab[c] == 0)]))


def test_invalid_anchors_and_padding():
  labels = jnp.array([1, 1, 0, 0, -1, 1, 0, 0, 2, -1], jnp.int32)
  valid = jnp.array([True, False, True, False, True, True, True, True, False, True])
  for seed in range(5):
    out = _sample(jax.random.key(seed), labels, num_samples=8, positive_fraction=0.5,
                                   valid=valid)
    assert _check_sample(labels, valid, *out, 8, 0.5) == (2, 3)  # 2 valid pos, 3 valid neg, 3 pads
  # No candidates at all: everything is padding.
  idx, lab, ok = _sample(jax.random.key(0), jnp.full((6,), -1), num_samples=4,
                                          positive_fraction=0.5)
  np.testing.assert_array_equal(idx, -1)
  np.testing.assert_array_equal(lab, -1)
  assert not np.asarray(ok).any()
  idx, lab, ok = _sample(jax.random.key(0), jnp.zeros((0,), jnp.int32),
                                          num_samples=3, positive_fraction=0.5)
  assert idx.shape == (3,) and not np.asarray(ok).any()
  # positive_fraction 0 and 1, more samples than anchors.
  labels = jnp.array([1, 0, 1, 0, 0], jnp.int32)
  assert _check_sample(labels, None, *_sample(
      jax.random.key(1), labels, num_samples=9, positive_fraction=0.0), 9, 0.0) == (0, 3)
  assert _check_sample(labels, None, *_sample(
      jax.random.key(1), labels, num_samples=9, positive_fraction=1.0), 9, 1.0) == (2, 3)


def test_determinism():
  labels = jnp.asarray(np.random.default_rng(0).integers(-1, 2, size=200), jnp.int32)
  f = jax.jit(lambda k: _sample(k, labels, num_samples=32, positive_fraction=0.25))
  a, b = f(jax.random.key(7)), f(jax.random.key(7))
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x, y)
  c = f(jax.random.key(8))
  assert not np.array_equal(a[0], c[0])
  # Legacy uint32[2] keys work too.
  _sample(jax.random.PRNGKey(0), labels, num_samples=4, positive_fraction=0.5)


def test_uniform_over_candidates():
  """Every candidate is equally likely to be picked, and so is every subset."""
  num_draws = 4000
  labels = np.array([1] * 5 + [0] * 9 + [-1] * 6, np.int32)
  np.random.default_rng(1).shuffle(labels)
  valid = np.ones(20, bool)
  valid[np.nonzero(labels == 0)[0][:1]] = False  # one negative is padding: 8 usable negatives
  keys = jax.random.split(jax.random.key(123), num_draws)
  idx, lab, ok = jax.device_get(jax.jit(jax.vmap(lambda k: _sample(
      k, jnp.asarray(labels), num_samples=8, positive_fraction=0.25, valid=jnp.asarray(valid))))(keys))
  # quota 2 of 5 positives, then 6 of the 8 usable negatives.
  assert ok.all()
  for kind, members, k in ((1, np.nonzero(labels == 1)[0], 2),
                           (0, np.nonzero((labels == 0) & valid)[0], 6)):
    picked = np.where(lab == kind, idx, -1)
    counts = np.array([(picked == m).sum() for m in members])
    assert counts.sum() == num_draws * k
    p = k / len(members)
    expected = num_draws * p
    # Each count is Binomial(N, p) with the total fixed: sum (O - E)^2 / E ~ (1 - p) chi2(n - 1).
    stat = ((counts - expected) ** 2 / expected).sum() / (1 - p)
    assert stats.chi2.sf(stat, len(members) - 1) > 1e-3, (kind, counts)
  # Joint: each of the C(5, 2) = 10 positive pairs equally likely (a multinomial).
  pos = np.sort(idx[:, :2], axis=1)
  pairs = list(itertools.combinations(np.nonzero(labels == 1)[0], 2))
  pair_counts = np.array([((pos[:, 0] == a) & (pos[:, 1] == b)).sum() for a, b in pairs])
  assert pair_counts.sum() == num_draws
  assert stats.chisquare(pair_counts).pvalue > 1e-3, pair_counts
  # Joint for negatives: the left-out pair of the 8 usable negatives, C(8, 2) = 28 equally likely.
  usable = np.nonzero((labels == 0) & valid)[0]
  left_out = [tuple(np.setdiff1d(usable, row)) for row in idx[:, 2:]]
  pair_counts = np.array([left_out.count(p) for p in itertools.combinations(usable, 2)])
  assert pair_counts.sum() == num_draws
  assert stats.chisquare(pair_counts).pvalue > 1e-3, pair_counts


def test_select_largest_ties_and_limits():
  """The sort-free selection: n largest nonzero keys, ties at the threshold go to the lower index."""
  keys = jnp.array([5, 3, 3, 3, 0, 7, 0], jnp.uint32)
  select = jax.jit(sampling._select_largest)
  expected = {0: [], 1: [5], 2: [0, 5], 3: [0, 1, 5], 4: [0, 1, 2, 5], 5: [0, 1, 2, 3, 5],
              6: [0, 1, 2, 3, 5], 9: [0, 1, 2, 3, 5]}
  for n, want in expected.items():
    np.testing.assert_array_equal(np.nonzero(np.asarray(select(keys, jnp.int32(n))))[0], want, str(n))
  big = jnp.array([2**31, 2**31, 1, 2**31 - 1], jnp.uint32)  # extreme key values
  np.testing.assert_array_equal(np.nonzero(np.asarray(select(big, jnp.int32(3))))[0], [0, 1, 3])


def test_uniformity_test_can_fail():
  """The chi-square checks above reject a biased sampler (lowest index first) with the same counts."""
  counts = np.array([4000, 4000, 0, 0, 0])  # deterministic "first two positives"
  expected = 4000 * 2 / 5
  stat = ((counts - expected) ** 2 / expected).sum() / (1 - 2 / 5)
  assert stats.chi2.sf(stat, 4) < 1e-3


# ------------------------------------------------------------------------------------------------
# Fast R-CNN RoIs
# ------------------------------------------------------------------------------------------------


def test_label_rois_matches_torchvision_roi_heads(fixture_npz):
  """label_rois(bg_iou_low=0) == torchvision RoIHeads.add_gt_proposals + assign_targets_to_proposals."""
  d = fixture_npz("matching")
  f = jax.jit(jax.vmap(lambda p, pv, g, gl, gv: _label_rois(p, pv, g, gl, gv, bg_iou_low=0.0)))
  out = jax.device_get(f(*(jnp.asarray(d[f"roi_{k}"]) for k in
                           ("prop", "prop_valid", "gt", "gt_labels", "gt_valid"))))
  num_props = d["roi_prop"].shape[1]
  compared = {"fg": 0, "bg": 0}
  for c in range(d["roi_prop"].shape[0]):
    p, g = int(d["roi_prop_valid"][c].sum()), int(d["roi_gt_valid"][c].sum())
    # torchvision's k-th candidate -> our padded candidate index
    ours = np.concatenate([d["roi_prop_slots"][c][:p], num_props + d["roi_gt_slots"][c][:g]])
    tv_labels, tv_matched = d["roi_tv_labels"][c][:p + g], d["roi_tv_matched"][c][:p + g]
    np.testing.assert_array_equal(out.class_labels[c][ours], tv_labels, err_msg=f"case {c}")
    np.testing.assert_array_equal(out.valid[c][ours], True)
    fg = tv_labels > 0
    np.testing.assert_array_equal(out.matched_gt[c][ours][fg], d["roi_gt_slots"][c][tv_matched[fg]])
    np.testing.assert_array_equal(out.boxes[c][ours[:p]], d["roi_prop"][c][d["roi_prop_slots"][c][:p]])
    invalid = np.ones(out.valid.shape[1], bool)
    invalid[ours] = False
    assert (out.match_labels[c][invalid] == IGNORE).all() and not out.valid[c][invalid].any()
    compared["fg"] += int(fg.sum())
    compared["bg"] += int((tv_labels == 0).sum())
  assert compared["fg"] > 50 and compared["bg"] > 50, compared


def test_label_rois_paper_background_band():
  """Paper rule (bg in [0.1, 0.5)) against a hand-made case, and the no-gt image."""
  gt = jnp.array([[0, 0, 10, 10], [0, 0, 0, 0]], jnp.float32)
  gt_labels = jnp.array([7, 0], jnp.int32)
  gt_valid = jnp.array([True, False])
  # IoUs with gt 0: 0.5 (fg), 0.49 (bg), 0.1 (bg, at the threshold), 0.09 (ignored), 0 (ignored)
  props = jnp.array([[0, 0, 10, 5], [0, 0, 10, 4.9], [0, 0, 10, 1], [0, 0, 10, 0.9],
                     [20, 20, 30, 30]], jnp.float32)
  out = _label_rois(props, jnp.ones(5, bool), gt, gt_labels, gt_valid)
  np.testing.assert_array_equal(out.class_labels, [7, 0, 0, -1, -1, 7, -1])  # + gt 0, padded gt 1
  np.testing.assert_array_equal(out.match_labels, [POSITIVE, NEGATIVE, NEGATIVE, IGNORE, IGNORE,
                                                   POSITIVE, IGNORE])
  # No valid gt: all ignored with the paper's 0.1, all background with torchvision's 0.
  none = jnp.array([False, False])
  assert (np.asarray(_label_rois(props, jnp.ones(5, bool), gt, gt_labels,
                                         none).match_labels) == IGNORE).all()
  out = _label_rois(props, jnp.ones(5, bool), gt, gt_labels, none, bg_iou_low=0.0)
  np.testing.assert_array_equal(out.match_labels, [0, 0, 0, 0, 0, -1, -1])


def test_sample_rois():
  rng = np.random.default_rng(3)
  num_props, num_gt = 300, 5
  gt = rng.uniform(0, 200, size=(num_gt, 2))
  gt = np.concatenate([gt, gt + rng.uniform(20, 60, size=(num_gt, 2))], axis=1).astype(np.float32)
  gt_labels = np.array([3, 1, 4, 1, 5], np.int32)
  gt_valid = np.array([True, True, True, False, True])
  src = gt[rng.integers(0, num_gt, size=num_props)]
  props = (src + rng.uniform(-15, 15, size=(num_props, 4))).astype(np.float32)
  props[:, 2:] = np.maximum(props[:, 2:], props[:, :2] + 1)
  props_valid = rng.uniform(size=num_props) < 0.9
  args = [jnp.asarray(a) for a in (props, props_valid, gt, gt_labels, gt_valid)]
  f = jax.jit(lambda k: sampling.sample_rois(k, *args))
  s = jax.device_get(f(jax.random.key(0)))
  full = jax.device_get(_label_rois(*args))
  valid = np.asarray(s.valid)
  fg, bg = valid & (np.asarray(s.labels) > 0), valid & (np.asarray(s.labels) == 0)
  n_fg_avail = int((np.asarray(full.match_labels) == POSITIVE).sum())
  n_bg_avail = int((np.asarray(full.match_labels) == NEGATIVE).sum())
  assert fg.sum() == min(16, n_fg_avail) and bg.sum() == min(64 - fg.sum(), n_bg_avail)
  assert n_fg_avail > 16 and n_bg_avail > 48  # the case fills the quota
  # Each row is a real candidate, labelled with its matched gt's class, regression target = that gt.
  cand = np.concatenate([props, gt])
  cand_valid = np.concatenate([props_valid, gt_valid])
  for r in np.nonzero(valid)[0]:
    rows = np.nonzero((cand == np.asarray(s.rois)[r]).all(axis=1) & cand_valid)[0]
    assert len(rows)
    m = int(s.matched_gt[r])
    assert gt_valid[m]
    np.testing.assert_array_equal(np.asarray(s.matched_boxes)[r], gt[m])
    if fg[r]:
      assert int(s.labels[r]) == gt_labels[m]
  assert not np.asarray(s.rois)[~valid].any() and (np.asarray(s.matched_gt)[~valid] == -1).all()
  # Different keys give different samples; same key the same.
  s2 = jax.device_get(f(jax.random.key(1)))
  assert not np.array_equal(np.asarray(s.rois), np.asarray(s2.rois))
  np.testing.assert_array_equal(np.asarray(f(jax.random.key(0)).rois), np.asarray(s.rois))


def test_errors_name_the_argument():
  key = jax.random.key(0)
  lab = jnp.zeros((4,), jnp.int32)
  with pytest.raises(TypeError, match="labels"):
    sampling.sample_balanced(key, jnp.zeros(4), num_samples=2, positive_fraction=0.5)
  with pytest.raises(ValueError, match="labels"):
    sampling.sample_balanced(key, jnp.zeros((4, 1), jnp.int32), num_samples=2, positive_fraction=0.5)
  with pytest.raises(ValueError, match="num_samples"):
    sampling.sample_balanced(key, lab, num_samples=0, positive_fraction=0.5)
  with pytest.raises(TypeError, match="num_samples"):
    sampling.sample_balanced(key, lab, num_samples=2.0, positive_fraction=0.5)
  with pytest.raises(ValueError, match="positive_fraction"):
    sampling.sample_balanced(key, lab, num_samples=2, positive_fraction=1.5)
  with pytest.raises(ValueError, match="valid"):
    sampling.sample_balanced(key, lab, num_samples=2, positive_fraction=0.5, valid=jnp.ones(3, bool))
  with pytest.raises(TypeError, match="key"):
    sampling.sample_balanced(0, lab, num_samples=2, positive_fraction=0.5)
  with pytest.raises(ValueError, match="key"):
    sampling.sample_balanced(jax.random.split(key, 2), lab, num_samples=2, positive_fraction=0.5)
  with pytest.raises(ValueError, match="gt_labels"):
    sampling.sample_rois(key, jnp.zeros((3, 4)), jnp.ones(3, bool), jnp.zeros((2, 4)),
                         jnp.zeros(3, jnp.int32), jnp.ones(2, bool))
  with pytest.raises(ValueError, match="bg_iou_low"):
    sampling.sample_rois(key, jnp.zeros((3, 4)), jnp.ones(3, bool), jnp.zeros((2, 4)),
                         jnp.zeros(2, jnp.int32), jnp.ones(2, bool), bg_iou_low=0.7)


def test_match_and_sample_trace_once():
  """RPN and Fast R-CNN target assignment compile once for 0..G valid gt boxes (batched with vmap)."""
  rng = np.random.default_rng(0)
  num_anchors, num_props, num_gt, batch = 96, 40, 5, 2
  xy = rng.uniform(0, 80, size=(num_anchors, 2))
  anchors = jnp.asarray(np.concatenate([xy, xy + 20], axis=1), jnp.float32)

  @jax.jit
  @chex.assert_max_traces(n=1)
  def assign(keys, props, props_valid, gt, gt_labels, gt_valid):
    def one(key, p, pv, g, gl, gv):
      k1, k2 = jax.random.split(key)
      _, labels = matching.RPN_MATCHER.match_boxes(anchors, g, gv)
      rpn = sampling.sample_balanced_mask(k1, labels, num_samples=32, positive_fraction=0.5)
      rois = sampling.sample_rois(k2, p, pv, g, gl, gv, num_samples=16)
      return rpn, rois
    return jax.vmap(one)(keys, props, props_valid, gt, gt_labels, gt_valid)

  chex.clear_trace_counter()
  for n in range(num_gt + 1):
    xy = rng.uniform(0, 80, size=(batch, num_gt, 2))
    gt = jnp.asarray(np.concatenate([xy, xy + 25], axis=-1), jnp.float32)
    xy = rng.uniform(0, 80, size=(batch, num_props, 2))
    props = jnp.asarray(np.concatenate([xy, xy + 22], axis=-1), jnp.float32)
    gt_valid = jnp.broadcast_to(jnp.arange(num_gt) < n, (batch, num_gt))
    keys = jax.random.split(jax.random.key(n), batch)
    (pos, neg), rois = assign(keys, props, jnp.ones((batch, num_props), bool), gt,
                              jnp.ones((batch, num_gt), jnp.int32), gt_valid)
    assert int(pos.sum()) <= batch * 16 and int((pos | neg).sum()) <= batch * 32
    if n == 0:
      assert not pos.any() and not (rois.labels > 0).any()
    else:
      assert pos.any() and (rois.labels > 0).any()
