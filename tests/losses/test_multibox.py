"""SSD MultiBox loss: matching/encoding, sort-free hard negative mining and the loss vs NumPy."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxvision.losses import multibox


def _np_iou(a, b):
  lt = np.maximum(a[:, None, :2], b[None, :, :2])
  rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
  wh = np.clip(rb - lt, 0, None)
  inter = wh[..., 0] * wh[..., 1]
  area = lambda x: (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])  # noqa: E731
  union = area(a)[:, None] + area(b)[None, :] - inter
  return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def _np_encode(g, p):
  pw, ph = p[:, 2] - p[:, 0], p[:, 3] - p[:, 1]
  px, py = p[:, 0] + 0.5 * pw, p[:, 1] + 0.5 * ph
  gw, gh = g[:, 2] - g[:, 0], g[:, 3] - g[:, 1]
  gx, gy = g[:, 0] + 0.5 * gw, g[:, 1] + 0.5 * gh
  return np.stack([(gx - px) / pw / 0.1, (gy - py) / ph / 0.1, np.log(gw / pw) / 0.2,
                   np.log(gh / ph) / 0.2], -1)


def _np_targets(priors, gt, labels):
  """The paper's matching in plain NumPy (best gt >= 0.5, then each gt forced on its best prior)."""
  iou = _np_iou(priors, gt)
  matched = iou.argmax(1)
  pos = iou.max(1) >= 0.5
  for j in range(len(gt)):
    best = iou[:, j].argmax()
    matched[best], pos[best] = j, True
  lab = np.where(pos, labels[matched], 0)
  loc = np.where(pos[:, None], _np_encode(gt[matched], priors), 0.0)
  return lab, loc, pos


def _priors():
  xs = np.arange(4) * 16.0
  grid = np.stack(np.meshgrid(xs, xs, indexing="xy"), -1).reshape(-1, 2)
  small = np.concatenate([grid, grid + 16.0], -1)  # 16 x 16 cells
  big = np.concatenate([grid[::5], grid[::5] + 32.0], -1)
  return np.concatenate([small, big]).astype(np.float32)  # [20, 4]


GT = np.array([[2.0, 3.0, 20.0, 17.0], [30.0, 30.0, 62.0, 60.0], [0, 0, 0, 0],
               [16.0, 0.0, 33.0, 15.0]], np.float32)
GT_LABELS = np.array([3, 1, 0, 2], np.int32)
GT_VALID = np.array([True, True, False, True])


def test_ssd_targets_match_numpy():
  priors = _priors()
  labels, loc, pos = multibox.ssd_targets(jnp.asarray(priors), jnp.asarray(GT),
                                          jnp.asarray(GT_LABELS), jnp.asarray(GT_VALID))
  ref_lab, ref_loc, ref_pos = _np_targets(priors, GT[GT_VALID], GT_LABELS[GT_VALID])
  np.testing.assert_array_equal(np.asarray(pos), ref_pos)
  np.testing.assert_array_equal(np.asarray(labels), ref_lab)
  np.testing.assert_allclose(np.asarray(loc), ref_loc, rtol=1e-5, atol=1e-5)
  assert ref_pos.sum() >= 3


def _np_hard_negatives(neg_loss, pos, ratio):
  order = np.argsort(-neg_loss, kind="stable")  # descending, ties: lower index first
  order = [i for i in order if not pos[i]]
  n = min(int(math.floor(ratio * pos.sum())), len(order))
  mask = np.zeros_like(pos)
  mask[order[:n]] = True
  return mask


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_hard_negative_mask_equals_a_stable_sort(seed):
  rng = np.random.default_rng(seed)
  a = 500
  neg_loss = rng.exponential(size=a).astype(np.float32)
  neg_loss[rng.integers(0, a, 60)] = 1.25  # many exact ties
  neg_loss[:5] = 0.0
  pos = rng.uniform(size=a) < 0.05
  for ratio in (3.0, 0.5, 100.0):
    got = np.asarray(multibox.hard_negative_mask(jnp.asarray(neg_loss), jnp.asarray(pos),
                                                 neg_pos_ratio=ratio))
    np.testing.assert_array_equal(got, _np_hard_negatives(neg_loss, pos, ratio))


def test_hard_negative_mask_edge_cases():
  loss = jnp.asarray([0.5, -0.0, 2.0, np.nan, 1.0], jnp.float32)
  none = jnp.zeros(5, bool)
  assert not np.asarray(multibox.hard_negative_mask(loss, none)).any()  # no positives: none
  one = jnp.asarray([False, False, False, False, True])
  got = np.asarray(multibox.hard_negative_mask(loss, one, neg_pos_ratio=3.0))
  np.testing.assert_array_equal(got, [True, True, True, False, False])  # NaN never selected
  every = np.asarray(multibox.hard_negative_mask(loss, one, neg_pos_ratio=None))
  np.testing.assert_array_equal(every, [True, True, True, False, False])
  with pytest.raises(ValueError, match="positive"):
    multibox.hard_negative_mask(loss, jnp.zeros(4, bool))


def _np_loss(logits, deltas, lab, loc, pos, ratio):
  logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  ce = -logp[np.arange(len(lab)), lab]
  if ratio is None:
    neg = ~pos
  else:
    neg = _np_hard_negatives(-logp[:, 0], pos, ratio)
  d = np.abs(deltas - loc)
  sl1 = np.where(d < 1, 0.5 * d * d, d - 0.5).sum(-1)
  return ce[pos | neg].sum(), sl1[pos].sum()


@pytest.mark.parametrize("ratio", [3.0, None])
def test_multibox_loss_matches_numpy(ratio):
  priors = _priors()
  rng = np.random.default_rng(3)
  logits = rng.normal(size=(len(priors), 4)).astype(np.float32)
  deltas = rng.normal(size=(len(priors), 4)).astype(np.float32)
  lab, loc, pos = multibox.ssd_targets(jnp.asarray(priors), jnp.asarray(GT), jnp.asarray(GT_LABELS),
                                       jnp.asarray(GT_VALID))
  out = multibox.multibox_loss(jnp.asarray(logits), jnp.asarray(deltas), lab, loc, pos,
                               neg_pos_ratio=ratio)
  conf, sl1 = _np_loss(logits, deltas, np.asarray(lab), np.asarray(loc), np.asarray(pos), ratio)
  assert float(out["conf"].sum()) == pytest.approx(conf, rel=1e-5)
  assert float(out["loc"].sum()) == pytest.approx(sl1, rel=1e-5)
  p = int(np.asarray(pos).sum())
  assert out["num_positives"] == p
  assert out["num_negatives"] == (min(3 * p, len(priors) - p) if ratio else len(priors) - p)


def test_multibox_bad_boxes_give_finite_losses():
  priors = jnp.asarray(_priors())
  rng = np.random.default_rng(4)
  logits = jnp.asarray(rng.normal(size=(20, 4)), jnp.float32)
  deltas = jnp.asarray(rng.normal(size=(20, 4)), jnp.float32)
  cases = {
      "no boxes": (np.zeros((2, 4)), [False, False]),
      "border": (np.array([[0.0, 0.0, 64.0, 64.0], [48.0, 48.0, 64.0, 64.0]]), [True, True]),
      "degenerate": (np.array([[5.0, 5.0, 5.0, 20.0], [30.0, 30.0, 20.0, 10.0]]), [True, True]),
      "tiny": (np.array([[10.0, 10.0, 10.01, 10.01], [0.0, 0.0, 0.5, 0.5]]), [True, True]),
  }
  for name, (gt, valid) in cases.items():
    def total(lg, dl, gt=gt, valid=valid):
      lab, loc, pos = multibox.ssd_targets(priors, jnp.asarray(gt, jnp.float32),
                                           jnp.asarray([1, 2]), jnp.asarray(valid))
      out = multibox.multibox_loss(lg, dl, lab, loc, pos)
      return jnp.sum(out["conf"]) + jnp.sum(out["loc"]), out["num_positives"]

    (value, npos), grads = jax.jit(jax.value_and_grad(total, argnums=(0, 1), has_aux=True))(
        logits, deltas)
    assert np.isfinite(float(value)), name
    assert all(np.all(np.isfinite(np.asarray(g))) for g in grads), name
    if name in ("no boxes", "degenerate"):
      assert float(value) == 0.0 and float(npos) == 0.0, name  # N = 0: loss 0 (no negatives)
    if name == "tiny":
      assert float(npos) >= 1  # a tiny box still gets its best prior (IoU > 0)
