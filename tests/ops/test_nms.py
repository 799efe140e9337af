"""Tests for jaxvision.ops.nms: parity with torchvision (stored fixtures), our rules, vmap, errors.

Fixtures come from ``tests/fixtures/gen_nms.py`` (torchvision CPU); every parity check compares the
keep lists exactly, index by index. Soft-NMS is checked against a NumPy reference written here.
"""

from __future__ import annotations


import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxvision.ops import nms as nms_module
from jaxvision.ops.nms import batched_nms, nms, soft_nms


def run_nms(boxes, scores, iou_threshold, max_output_size=None, score_threshold=None):
  """Runs jitted ``nms`` and returns the valid indices; checks the padding contract on the way."""
  k = len(scores) if max_output_size is None else max_output_size
  # nms jits its core itself (thresholds traced), so eager calls compile once per shape.
  idx, valid = nms(boxes, scores, iou_threshold=iou_threshold, max_output_size=k,
                   score_threshold=score_threshold)
  idx, valid = np.asarray(idx), np.asarray(valid)
  assert idx.shape == (k,) and idx.dtype == np.int32 and valid.shape == (k,) and valid.dtype == bool
  n_valid = int(valid.sum())
  assert valid[:n_valid].all() and not valid[n_valid:].any()  # valid entries form a prefix
  assert (idx[~valid] == -1).all() and (idx[valid] >= 0).all()
  return idx[valid]


# ------------------------------------------------------------------------------------------------
# Parity with torchvision.ops.nms
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("thr", [0.2, 0.5, 0.8])
def test_random_parity(fixture_npz, thr):
  d = fixture_npz("nms_random")
  for seed in range(3):
    keep = run_nms(d[f"boxes_{seed}"], d[f"scores_{seed}"], thr)
    np.testing.assert_array_equal(keep, d[f"keep_{seed}_{thr}"], err_msg=f"seed {seed}")


@pytest.mark.parametrize("thr", [0.2, 0.5, 0.7, 0.8])
def test_pairs_at_and_around_threshold(fixture_npz, thr):
  # Pairs with float32 IoU exactly at, one ulp around and just above/below the threshold. For 0.2
  # and 0.8 float32(thr) > thr, so torchvision (float64 compare) suppresses IoU == float32(thr):
  # a float32 compare with float32(thr) fails this test.
  d = fixture_npz("nms_threshold")
  boxes, scores, ref = d[f"boxes_{thr}"], d[f"scores_{thr}"], d[f"keep_{thr}"]
  assert 0 < len(ref) < len(scores)
  np.testing.assert_array_equal(run_nms(boxes, scores, thr), ref)


@pytest.mark.parametrize("case", ["ties", "negative", "zero"])
def test_special_parity(fixture_npz, case):
  # ties: 5 score levels, ties kept in index order (torchvision sorts stably).
  # negative: coordinates < 0, boxes touching/straddling the origin are ordinary boxes.
  # zero: zero-width/height boxes, identical points, [0, 0, 0, 0] boxes: 0/0 IoU never suppresses.
  d = fixture_npz("nms_special")
  for thr in (0.0, 0.3, 0.5, 1.0):
    keep = run_nms(d[f"boxes_{case}"], d[f"scores_{case}"], thr)
    np.testing.assert_array_equal(keep, d[f"keep_{case}_{thr}"], err_msg=f"thr {thr}")


def test_origin_boxes_are_real_boxes():
  boxes = np.array([[0, 0, 0, 0], [0, 0, 0, 0], [-10, -10, -5, -5], [-10, -10, -5, -6],
                    [0, 0, 10, 10]], np.float32)
  scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5], np.float32)
  # Two identical zero boxes: 0/0 IoU -> both kept; box 3 overlaps box 2 with IoU 0.8.
  np.testing.assert_array_equal(run_nms(boxes, scores, 0.5), [0, 1, 2, 4])


def test_nan_scores_never_selected(fixture_npz):
  d = fixture_npz("nms_nan")
  nan_idx = np.nonzero(np.isnan(d["scores"]))[0]
  for thr in (0.3, 0.5):
    keep = run_nms(d["boxes"], d["scores"], thr)
    assert not np.isin(keep, nan_idx).any()
    np.testing.assert_array_equal(keep, d[f"keep_{thr}"])  # torchvision on the NaN-free subset


def test_all_nan():
  boxes = np.tile(np.array([[0, 0, 4, 4]], np.float32), (5, 1))
  assert run_nms(boxes, np.full(5, np.nan, np.float32), 0.5, max_output_size=3).size == 0


def test_large_parity_many_tiles(fixture_npz):
  d = fixture_npz("nms_large")  # 5,000 boxes: many tiles and several kept-buffer chunks
  for thr in (0.5, 0.7):
    np.testing.assert_array_equal(run_nms(d["boxes"], d["scores"], thr), d[f"keep_{thr}"])


def test_large_parity_small_tiles(fixture_npz):
  # The tile/chunk sizes are performance knobs only: tiny ones must give the same answer.
  d = fixture_npz("nms_large")
  idx, valid = nms(d["boxes"], d["scores"], iou_threshold=0.5, max_output_size=5000, _tile=16,
                   _chunk=24)
  np.testing.assert_array_equal(np.asarray(idx)[np.asarray(valid)], d["keep_0.5"])


def numpy_greedy_nms(boxes, scores, thr):
  """Plain greedy NMS in NumPy float32 with torchvision's CPU arithmetic (for large N only)."""
  order = np.argsort(-scores, kind="stable")
  area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
  suppressed = np.zeros(len(scores), bool)
  keep = []
  for pos, i in enumerate(order):
    if suppressed[i]:
      continue
    keep.append(i)
    j = order[pos + 1:]
    j = j[~suppressed[j]]
    w = np.maximum(np.minimum(boxes[i, 2], boxes[j, 2]) - np.maximum(boxes[i, 0], boxes[j, 0]), 0)
    h = np.maximum(np.minimum(boxes[i, 3], boxes[j, 3]) - np.maximum(boxes[i, 1], boxes[j, 1]), 0)
    inter = w * h
    with np.errstate(invalid="ignore"):
      suppressed[j[inter / ((area[i] + area[j]) - inter) > thr]] = True
  return np.array(keep, np.int64)


@pytest.mark.slow
def test_beyond_fast_sort_size():
  # N > 46340 takes the generic (key, index) sort path.
  rng = np.random.default_rng(0)
  n = nms_module._FAST_SORT_MAX_N + 3000
  c = rng.uniform(0, 2000, (n // 20, 2))[rng.integers(0, n // 20, n)] + rng.normal(0, 5, (n, 2))
  wh = rng.uniform(10, 60, (n, 2))
  boxes = np.concatenate([c - wh / 2, c + wh / 2], 1).astype(np.float32)
  scores = (rng.integers(0, 5000, n) / 5000).astype(np.float32)  # with ties
  ref = numpy_greedy_nms(boxes, scores, 0.6)
  np.testing.assert_array_equal(run_nms(boxes, scores, 0.6, max_output_size=len(ref) + 5), ref)


@pytest.mark.parametrize("n", [1, 7, 1000, nms_module._FAST_SORT_MAX_N + 1])
@pytest.mark.parametrize("ties", [False, True])
def test_descending_order(n, ties):
  # The sort behind nms: candidates by descending score, ties by index, -0.0 == 0.0, +-inf
  # ordinary, non-candidates last in index order. Both paths (no ties / ties) and the generic sort.
  rng = np.random.default_rng(n)
  if ties:
    scores = (rng.integers(-3, 4, n) / 2).astype(np.float32)
    scores[rng.integers(0, n, n // 5 + 1)] = -0.0
    scores[rng.integers(0, n, n // 7 + 1)] = np.inf
    scores[rng.integers(0, n, n // 7 + 1)] = -np.inf
  else:
    scores = rng.permutation(n).astype(np.float32) - n / 2
  candidate = rng.uniform(size=n) > 0.2
  scores[~candidate & (rng.uniform(size=n) > 0.5)] = np.nan
  got = np.asarray(jax.jit(nms_module._descending_order)(scores, candidate))
  cand = np.nonzero(candidate)[0]
  expected = np.concatenate([cand[np.argsort(-scores[cand], kind="stable")],
                             np.nonzero(~candidate)[0]])
  np.testing.assert_array_equal(got, expected)
  if n > 1:
    classes = rng.integers(0, 5, n).astype(np.int32)
    got = np.asarray(jax.jit(nms_module._class_major_order)(expected, classes, candidate))
    key = np.where(candidate, classes, n)[expected]
    np.testing.assert_array_equal(got, expected[np.argsort(key, kind="stable")])


# ------------------------------------------------------------------------------------------------
# Output size, score threshold, empty input
# ------------------------------------------------------------------------------------------------


def test_truncation_and_padding(fixture_npz):
  d = fixture_npz("nms_random")
  boxes, scores, ref = d["boxes_0"], d["scores_0"], d["keep_0_0.5"]
  np.testing.assert_array_equal(run_nms(boxes, scores, 0.5, max_output_size=10), ref[:10])
  # More slots than boxes: everything kept, rest padded (run_nms checks the padding).
  np.testing.assert_array_equal(run_nms(boxes, scores, 0.5, max_output_size=len(scores) + 37), ref)


def test_score_threshold(fixture_npz):
  # Boxes above the threshold are only ever suppressed by higher (so also above) boxes, so the
  # reference is torchvision's keep list with the low-scoring boxes dropped.
  d = fixture_npz("nms_random")
  boxes, scores, ref = d["boxes_1"], d["scores_1"], d["keep_1_0.5"]
  st = float(scores[ref[len(ref) // 2]])  # a kept box sits exactly at it: equality is not enough
  keep = run_nms(boxes, scores, 0.5, score_threshold=st)
  np.testing.assert_array_equal(keep, ref[scores[ref] > st])
  assert ref[len(ref) // 2] not in keep and (scores[keep] > st).all()


def test_empty_input():
  for k in (0, 5):
    idx, valid = nms(jnp.zeros((0, 4)), jnp.zeros((0,)), iou_threshold=0.5, max_output_size=k)
    assert idx.shape == (k,) and valid.shape == (k,)
    assert (np.asarray(idx) == -1).all() and not np.asarray(valid).any()
  idx, sc, valid = soft_nms(jnp.zeros((0, 4)), jnp.zeros((0,)), max_output_size=3)
  assert (np.asarray(idx) == -1).all() and not np.asarray(valid).any() and sc.shape == (3,)
  idx, valid = batched_nms(jnp.zeros((0, 4)), jnp.zeros((0,)), jnp.zeros((0,), jnp.int32),
                           iou_threshold=0.5, max_output_size=2)
  assert (np.asarray(idx) == -1).all()


def test_traced_threshold():
  boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 6], [20, 20, 30, 30]], np.float32)  # IoU 0.6
  scores = np.array([0.9, 0.8, 0.7], np.float32)
  f = jax.jit(lambda thr: nms(boxes, scores, iou_threshold=thr, max_output_size=3))
  for thr, expected in ((0.5, [0, 2]), (0.7, [0, 1, 2])):
    idx, valid = f(jnp.float32(thr))
    np.testing.assert_array_equal(np.asarray(idx)[np.asarray(valid)], expected)


def test_compiles_once_for_varying_valid_counts():
  rng = np.random.default_rng(0)

  @chex.assert_max_traces(n=1)
  def fn(boxes, scores):
    return nms(boxes, scores, iou_threshold=0.5, max_output_size=20, score_threshold=0.25)

  jitted = jax.jit(fn)
  boxes = np.concatenate([rng.uniform(0, 50, (64, 2)), rng.uniform(60, 100, (64, 2))], 1)
  boxes = boxes.astype(np.float32)
  for n_valid in (0, 1, 7, 64):
    scores = rng.uniform(0.3, 1, 64).astype(np.float32)
    scores[n_valid:] = np.where(np.arange(64 - n_valid) % 2 == 0, np.nan, 0.1)
    idx, valid = jitted(boxes, scores)
    keep = np.asarray(idx)[np.asarray(valid)]
    assert len(keep) <= max(n_valid, 0) and (keep < n_valid).all()
    if n_valid:
      assert keep[0] == np.argmax(scores[:n_valid])


# ------------------------------------------------------------------------------------------------
# batched_nms
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [600, 2000])
@pytest.mark.parametrize("class_major", [False, True])
def test_batched_parity(fixture_npz, n, class_major):
  # Both visiting orders (score-major with early exit, class-major) must give the same answer.
  d = fixture_npz("nms_batched")
  for thr in (0.3, 0.5):
    idx, valid = batched_nms(d[f"boxes_{n}"], d[f"scores_{n}"], d[f"classes_{n}"].astype(np.int32),
                             iou_threshold=thr, max_output_size=n, _class_major=class_major)
    np.testing.assert_array_equal(np.asarray(idx)[np.asarray(valid)], d[f"keep_{n}_{thr}"])
  # max_output_size counts all classes together.
  ref = d[f"keep_{n}_0.5"]
  idx, valid = batched_nms(d[f"boxes_{n}"], d[f"scores_{n}"], d[f"classes_{n}"].astype(np.int32),
                           iou_threshold=0.5, max_output_size=50, _class_major=class_major)
  np.testing.assert_array_equal(np.asarray(idx), ref[:50])
  assert np.asarray(valid).all()


@pytest.mark.parametrize("class_major", [False, True])
def test_batched_negative_coordinates(fixture_npz, class_major):
  # Reference: per-class loop of torchvision.ops.nms (torchvision's own offset trick assumes
  # coordinates >= 0); our class test needs no offsets. Class ids are shifted to arbitrary
  # (negative, large) values: only equality matters. Tiny tiles/chunks: many of both per class.
  d = fixture_npz("nms_batched")
  classes = (d["classes_neg"].astype(np.int64) * 1000003 - 7_000_000).astype(np.int32)
  idx, valid = batched_nms(d["boxes_neg"], d["scores_neg"], classes, iou_threshold=0.5,
                           max_output_size=800, _class_major=class_major, _tile=16, _chunk=8)
  np.testing.assert_array_equal(np.asarray(idx)[np.asarray(valid)], d["keep_neg_0.5"])


def test_batched_classes_never_suppress_each_other():
  boxes = np.tile(np.array([[-5, -5, 5, 5]], np.float32), (4, 1))  # four identical boxes
  scores = np.array([0.1, 0.4, 0.3, 0.2], np.float32)
  idx, valid = batched_nms(boxes, scores, np.array([0, 1, 0, 7], np.int32), iou_threshold=0.5,
                           max_output_size=4)
  np.testing.assert_array_equal(np.asarray(idx), [1, 2, 3, -1])
  np.testing.assert_array_equal(np.asarray(valid), [True, True, True, False])


# ------------------------------------------------------------------------------------------------
# soft_nms
# ------------------------------------------------------------------------------------------------


def soft_nms_reference(boxes, scores, max_output_size, sigma, score_threshold, method,
                       iou_threshold):
  """Bodla et al. 2017, written plainly in NumPy float32 (the rule documented in nms.py)."""
  boxes = boxes.astype(np.float32)
  s = scores.astype(np.float32).copy()
  area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
  alive = ~np.isnan(s) & (s > np.float32(score_threshold))
  out_idx, out_s = [], []
  while len(out_idx) < max_output_size and alive.any():
    m = int(np.argmax(np.where(alive, s, -np.inf)))
    out_idx.append(m)
    out_s.append(s[m])
    alive[m] = False
    w = np.maximum(np.minimum(boxes[m, 2], boxes[:, 2]) - np.maximum(boxes[m, 0], boxes[:, 0]), 0)
    h = np.maximum(np.minimum(boxes[m, 3], boxes[:, 3]) - np.maximum(boxes[m, 1], boxes[:, 1]), 0)
    inter = w * h
    union = area[m] + area - inter
    with np.errstate(invalid="ignore", divide="ignore"):
      iou = np.where(union > 0, inter / union, 0).astype(np.float32)
    if method == "gaussian":
      decay = np.exp(-(iou * iou) / np.float32(sigma))
    else:
      decay = np.where(iou > iou_threshold, 1 - iou, 1)
    s = np.where(alive, s * decay, s).astype(np.float32)
    alive &= s > np.float32(score_threshold)
  return np.array(out_idx, np.int64), np.array(out_s, np.float32)


@pytest.mark.parametrize("method,kwargs", [("gaussian", dict(sigma=0.5)),
                                           ("linear", dict(iou_threshold=0.3))])
def test_soft_nms_matches_reference(fixture_npz, method, kwargs):
  d = fixture_npz("nms_random")
  boxes, scores = d["boxes_2"][:200], d["scores_2"][:200].copy()
  scores[[3, 50]] = np.nan
  cfg = dict(max_output_size=120, score_threshold=0.05, method=method, **kwargs)
  idx, dec, valid = (np.asarray(a) for a in soft_nms(boxes, scores, **cfg))
  full = dict(sigma=0.5, iou_threshold=0.3) | cfg
  ref_idx, ref_s = soft_nms_reference(boxes, scores, **full)
  n = int(valid.sum())
  assert n == len(ref_idx) and valid[:n].all() and (idx[n:] == -1).all() and (dec[n:] == 0).all()
  np.testing.assert_array_equal(idx[:n], ref_idx)
  np.testing.assert_allclose(dec[:n], ref_s, rtol=1e-5)
  assert not np.isin(idx[:n], [3, 50]).any()
  assert (np.diff(dec[:n]) <= 0).all()  # selection order is by decayed score


def test_soft_nms_exhausts_and_pads():
  boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 10], [50, 50, 60, 60]], np.float32)
  scores = np.array([0.9, 0.8, 0.0001], np.float32)  # box 2 is below the default 0.001
  idx, dec, valid = soft_nms(boxes, scores, max_output_size=5, method="linear", iou_threshold=0.5)
  # Linear: identical box decays by (1 - 1) = 0 and drops out.
  np.testing.assert_array_equal(np.asarray(idx), [0, -1, -1, -1, -1])
  np.testing.assert_allclose(np.asarray(dec), [0.9, 0, 0, 0, 0])
  idx, dec, valid = soft_nms(boxes, scores, max_output_size=5, sigma=0.5)
  # Gaussian: identical box keeps exp(-1 / 0.5) of its score.
  np.testing.assert_array_equal(np.asarray(idx), [0, 1, -1, -1, -1])
  np.testing.assert_allclose(np.asarray(dec)[:2], [0.9, 0.8 * np.exp(-2.0)], rtol=1e-6)
  # No threshold: the low box is selected too, and the output stops when every box is selected.
  idx, dec, valid = soft_nms(boxes, scores, max_output_size=5, score_threshold=None)
  np.testing.assert_array_equal(np.asarray(idx), [0, 1, 2, -1, -1])
  np.testing.assert_array_equal(np.asarray(valid), [True, True, True, False, False])


# ------------------------------------------------------------------------------------------------
# vmap
# ------------------------------------------------------------------------------------------------


def test_vmap_matches_per_image(fixture_npz):
  d = fixture_npz("nms_random")
  boxes = np.stack([d[f"boxes_{s}"][:96] for s in range(3)])
  scores = np.stack([d[f"scores_{s}"][:96] for s in range(3)])
  scores[1, :10] = np.nan
  classes = (np.arange(96)[None] * np.array([[1], [3], [7]]) % 5).astype(np.int32)
  fns = {
      "nms": lambda b, s, c: nms(b, s, iou_threshold=0.5, max_output_size=40, score_threshold=0.1),
      "batched": lambda b, s, c: batched_nms(b, s, c, iou_threshold=0.5, max_output_size=40),
      "soft": lambda b, s, c: soft_nms(b, s, max_output_size=40, score_threshold=0.1),
  }
  for name, fn in fns.items():
    batched = jax.jit(jax.vmap(fn))(boxes, scores, classes)
    for i in range(3):
      single = fn(boxes[i], scores[i], classes[i])
      for a, b in zip(batched, single):
        np.testing.assert_array_equal(np.asarray(a)[i], np.asarray(b), err_msg=f"{name} image {i}")


# ------------------------------------------------------------------------------------------------
# Argument errors
# ------------------------------------------------------------------------------------------------


def test_bad_arguments():
  b, s = np.zeros((5, 4), np.float32), np.zeros((5,), np.float32)
  kw = dict(iou_threshold=0.5, max_output_size=3)
  with pytest.raises(ValueError, match="boxes"):
    nms(np.zeros((5, 4, 1), np.float32), s, **kw)  # rank
  with pytest.raises(ValueError, match="boxes"):
    nms(np.zeros((5, 3), np.float32), s, **kw)  # last dim
  with pytest.raises(ValueError, match="scores"):
    nms(b, np.zeros((6,), np.float32), **kw)  # mismatched N
  with pytest.raises(TypeError, match="scores"):
    nms(b, 0.5, **kw)  # scalar scores
  with pytest.raises(ValueError, match="scores"):
    nms(b, np.zeros((5, 1), np.float32), **kw)
  with pytest.raises(TypeError, match="max_output_size"):
    nms(b, s, iou_threshold=0.5, max_output_size=2.0)
  with pytest.raises(TypeError, match="max_output_size"):
    nms(b, s, iou_threshold=0.5, max_output_size=jnp.int32(3))
  with pytest.raises(ValueError, match="max_output_size"):
    nms(b, s, iou_threshold=0.5, max_output_size=-1)
  with pytest.raises(ValueError, match="iou_threshold"):
    nms(b, s, iou_threshold=float("nan"), max_output_size=3)
  with pytest.raises(TypeError, match="boxes"):
    nms(np.zeros((5, 4), bool), s, **kw)
  with pytest.raises(TypeError, match="classes"):
    batched_nms(b, s, np.zeros((5,), np.float32), **kw)
  with pytest.raises(ValueError, match="classes"):
    batched_nms(b, s, np.zeros((4,), np.int32), **kw)
  with pytest.raises(ValueError, match="method"):
    soft_nms(b, s, max_output_size=3, method="hard")
  with pytest.raises(ValueError, match="sigma"):
    soft_nms(b, s, max_output_size=3, sigma=0.0)
  with pytest.raises(TypeError, match="max_output_size"):
    soft_nms(b, s, max_output_size=None)
