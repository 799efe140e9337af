"""Tests for jaxvision.losses against PyTorch/torchvision fixtures and NumPy formulas.

Fixtures come from tests/fixtures/gen_unpool_losses.py: float32 inputs, references evaluated by
PyTorch in float64, so the float32 losses here are compared with the exact values.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxvision.losses as L

RTOL, ATOL = 1e-5, 1e-6


def _value_and_vjp(fn, x, g):
  y, vjp = jax.vjp(fn, jnp.asarray(x))
  (gx,) = vjp(jnp.asarray(g, y.dtype))
  return np.asarray(y), np.asarray(gx)


def _all_finite(tree):
  return all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in jax.tree_util.tree_leaves(tree))


# ------------------------------------------------------------------------------------------------
# Focal loss
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("targets", ["binary", "soft"])
def test_sigmoid_focal_loss_matches_torchvision(fixture_npz, targets):
  f = fixture_npz("losses_focal")
  for alpha in (0.25, -1.0, 0.9):
    for gamma in (2.0, 0.0, 1.5):
      key = f"{targets}_a{alpha}_g{gamma}"
      fn = lambda x: L.sigmoid_focal_loss(x, f[targets], alpha=alpha, gamma=gamma)  # noqa: E731
      loss, grad = _value_and_vjp(fn, f["logits"], f["g"])
      np.testing.assert_allclose(loss, f[f"{key}_loss"], rtol=RTOL, atol=ATOL, err_msg=key)
      np.testing.assert_allclose(grad, f[f"{key}_grad"], rtol=RTOL, atol=ATOL, err_msg=key)
  # alpha=None is torchvision's alpha=-1.
  np.testing.assert_allclose(L.sigmoid_focal_loss(f["logits"], f[targets], alpha=None),
                             f[f"{targets}_a-1.0_g2.0_loss"], rtol=RTOL, atol=ATOL)


def test_sigmoid_focal_loss_extreme_logits_finite_and_jit():
  x = jnp.array([100.0, -100.0, 100.0, -100.0, 1e4, -1e4, 0.0])
  t = jnp.array([1.0, 0.0, 0.0, 1.0, 0.5, 1.0, 1.0])
  fn = jax.jit(lambda x: jnp.sum(L.sigmoid_focal_loss(x, t, alpha=0.25, gamma=0.5)))
  assert _all_finite(fn(x)) and _all_finite(jax.grad(fn)(x))
  loss = L.sigmoid_focal_loss(x, t)
  np.testing.assert_allclose(loss[:2], 0.0, atol=1e-30)  # confident and right: ~0
  np.testing.assert_allclose(loss[2:4], [0.75 * 100, 0.25 * 100], rtol=1e-6)  # confident, wrong


def _np_softmax_focal(logits, labels, alpha, gamma, ignore_label):
  x = logits.astype(np.float64)
  logp = x - x.max(-1, keepdims=True)
  logp = logp - np.log(np.exp(logp).sum(-1, keepdims=True))
  valid = (labels >= 0) & (labels < x.shape[-1]) & (labels != ignore_label)
  safe = np.where(valid, labels, 0)
  logpt = np.take_along_axis(logp, safe[..., None], -1)[..., 0]
  pt = np.exp(logpt)
  a = 1.0 if alpha is None else np.asarray(alpha, np.float64)[safe] if np.ndim(alpha) else alpha
  return np.where(valid, -a * (1 - pt) ** gamma * logpt, 0.0)


def test_softmax_focal_loss_matches_numpy(fixture_npz):
  f = fixture_npz("losses_ce")  # logits [2, 5, 6, 4] incl. +-100, labels with 255
  for alpha in (None, 0.25, f["weights"]):
    for gamma in (0.0, 2.0, 0.5):
      got = L.softmax_focal_loss(f["logits"], f["labels"], alpha=alpha, gamma=gamma, ignore_label=255)
      want = _np_softmax_focal(f["logits"], f["labels"], alpha, gamma, 255)
      np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)
  # gamma = 0 without alpha is the plain cross-entropy.
  np.testing.assert_allclose(
      L.softmax_focal_loss(f["logits"], f["labels"], gamma=0.0, ignore_label=255),
      f["now_ls0.0_loss"], rtol=RTOL, atol=ATOL)


def test_softmax_focal_loss_extreme_gradients_finite():
  x = jnp.array([[200.0, -200.0, 0.0], [0.0, 0.0, 0.0], [-100.0, 100.0, 0.0]])
  y = jnp.array([0, 2, 0])
  for gamma in (0.5, 2.0):
    fn = lambda x: jnp.sum(L.softmax_focal_loss(x, y, gamma=gamma))  # noqa: E731
    assert _all_finite(fn(x)) and _all_finite(jax.grad(fn)(x))


# ------------------------------------------------------------------------------------------------
# Regression losses
# ------------------------------------------------------------------------------------------------


def test_smooth_l1_matches_torch(fixture_npz):
  f = fixture_npz("losses_regression")
  # 1.0: Fast R-CNN; 0.0: pure L1 (torch special case); 1/9: torchvision's RPN / RoI heads.
  for beta in (1.0, 0.0, 1.0 / 9.0, 0.5):
    key = f"sl1_b{beta:.6f}"
    fn = lambda p: L.smooth_l1_loss(p, f["sl1_target"], beta=beta)  # noqa: E731
    loss, grad = _value_and_vjp(fn, f["sl1_pred"], f["sl1_g"])
    np.testing.assert_allclose(loss, f[f"{key}_loss"], rtol=RTOL, atol=ATOL, err_msg=key)
    np.testing.assert_allclose(grad, f[f"{key}_grad"], rtol=RTOL, atol=ATOL, err_msg=key)
  g0 = jax.grad(lambda p: jnp.sum(L.smooth_l1_loss(p, jnp.zeros(3), beta=0.0)))(jnp.zeros(3))
  assert _all_finite(g0)


@pytest.mark.parametrize("name", ["giou", "diou", "ciou"])
def test_iou_losses_match_torchvision(fixture_npz, name):
  f = fixture_npz("losses_regression")
  fn = jax.jit({"giou": L.giou_loss, "diou": L.diou_loss, "ciou": L.ciou_loss}[name],
               static_argnums=())
  loss, grad = _value_and_vjp(lambda b: fn(b, f["boxes2"]), f["boxes1"], f["boxes_g"])
  np.testing.assert_allclose(loss, f[f"{name}_loss"], rtol=RTOL, atol=ATOL)
  # Pair 3 touches along an edge (intersection width exactly 0): a kink where torchvision's
  # masked intersection and jnp.clip pick different (equally valid) subgradients; skip it there.
  keep = np.arange(len(grad)) != 3
  np.testing.assert_allclose(grad[keep], f[f"{name}_grad"][keep], rtol=RTOL, atol=ATOL)


def test_iou_loss_matches_torchvision_box_iou(fixture_npz):
  f = fixture_npz("losses_regression")
  np.testing.assert_allclose(L.iou_loss(f["boxes1"], f["boxes2"]), f["iou_loss"], rtol=RTOL,
                             atol=ATOL)
  # Leading batch dimensions are kept.
  b1 = f["boxes1"].reshape(4, 10, 4)
  assert L.giou_loss(b1, f["boxes2"].reshape(4, 10, 4)).shape == (4, 10)


@pytest.mark.parametrize("fn", [L.iou_loss, L.giou_loss, L.diou_loss, L.ciou_loss])
def test_iou_losses_degenerate_boxes_finite(fn):
  b1 = jnp.array([
      [0.0, 0.0, 10.0, 10.0],  # identical
      [5.0, 5.0, 5.0, 5.0],  # both zero-area, identical
      [5.0, 5.0, 5.0, 5.0],  # zero-area vs normal
      [0.0, 0.0, 4.0, 0.0],  # zero height vs normal
      [0.0, 0.0, 0.0, 0.0],  # all-zero padding vs all-zero
      [0.0, 0.0, 2.0, 2.0],  # disjoint
  ])
  b2 = jnp.array([
      [0.0, 0.0, 10.0, 10.0],
      [5.0, 5.0, 5.0, 5.0],
      [0.0, 0.0, 10.0, 10.0],
      [0.0, 0.0, 4.0, 3.0],
      [0.0, 0.0, 0.0, 0.0],
      [5.0, 5.0, 8.0, 9.0],
  ])
  loss = fn(b1, b2)
  g1, g2 = jax.grad(lambda a, b: jnp.sum(fn(a, b)), argnums=(0, 1))(b1, b2)
  assert _all_finite((loss, g1, g2))
  np.testing.assert_allclose(loss[0], 0.0, atol=1e-6)  # identical boxes: no loss


# ------------------------------------------------------------------------------------------------
# Cross-entropy
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_softmax_cross_entropy_matches_torch(fixture_npz, weighted, smoothing):
  f = fixture_npz("losses_ce")
  key = f"{'w' if weighted else 'now'}_ls{smoothing}"
  w = f["weights"] if weighted else None
  fn = lambda x: L.softmax_cross_entropy(x, f["labels"], class_weights=w,  # noqa: E731
                                         label_smoothing=smoothing)
  loss, grad = _value_and_vjp(fn, f["logits"], f["g"])
  np.testing.assert_allclose(loss, f[f"{key}_loss"], rtol=RTOL, atol=ATOL)
  np.testing.assert_allclose(grad, f[f"{key}_grad"], rtol=RTOL, atol=ATOL)
  assert np.all(loss[f["labels"] == 255] == 0)
  # sum / normalizer is torch's reduction='mean' (weighted: divided by the sum of target weights).

  def mean_fn(x):
    n = L.cross_entropy_normalizer(f["labels"], num_classes=4, class_weights=w)
    return jnp.sum(fn(x)) / n

  mean, mgrad = jax.value_and_grad(mean_fn)(jnp.asarray(f["logits"]))
  np.testing.assert_allclose(mean, f[f"{key}_mean"], rtol=RTOL)
  np.testing.assert_allclose(mgrad, f[f"{key}_mean_grad"], rtol=RTOL, atol=1e-7)


def test_cross_entropy_ignore_and_out_of_range_labels():
  logits = jnp.zeros((2, 3))
  labels = jnp.array([255, 7])
  assert float(jnp.sum(L.softmax_cross_entropy(logits, labels))) == 0.0
  assert float(L.cross_entropy_normalizer(labels, num_classes=3)) == 0.0
  # ignore_label=None: every in-range label counts.
  np.testing.assert_allclose(
      L.softmax_cross_entropy(logits, jnp.array([0, 2]), ignore_label=None), np.log(3.0), rtol=1e-6)
  g = jax.grad(lambda x: jnp.sum(L.softmax_cross_entropy(x, jnp.array([0, 1]))))(
      jnp.array([[100.0, -100.0], [100.0, -100.0]]))
  assert _all_finite(g)


# ------------------------------------------------------------------------------------------------
# Segmentation losses
# ------------------------------------------------------------------------------------------------


def _np_dice(probs, labels, smooth, squared, ignore_label=255):
  c = probs.shape[-1]
  valid = ((labels >= 0) & (labels < c) & (labels != ignore_label))[..., None].astype(np.float64)
  onehot = (labels[..., None] == np.arange(c)).astype(np.float64) * valid
  p = probs.astype(np.float64) * valid
  axes = tuple(range(1, probs.ndim - 1))
  inter = (p * onehot).sum(axes)
  den = ((p * p) if squared else p).sum(axes) + onehot.sum(axes)
  return 1.0 - (2 * inter + smooth) / (den + smooth)


def test_dice_loss_matches_numpy(fixture_npz):
  f = fixture_npz("losses_ce")
  x = f["logits"].astype(np.float64)
  probs = np.exp(x - x.max(-1, keepdims=True))
  probs /= probs.sum(-1, keepdims=True)
  for smooth in (1.0, 1e-3):
    for squared in (False, True):
      got = L.dice_loss(f["logits"], f["labels"], smooth=smooth, squared=squared)
      assert got.shape == (2, 4)
      np.testing.assert_allclose(got, _np_dice(probs, f["labels"], smooth, squared), rtol=RTOL,
                                 atol=ATOL)
      got = L.dice_loss(probs.astype(np.float32), f["labels"], from_logits=False, smooth=smooth,
                        squared=squared)
      np.testing.assert_allclose(got, _np_dice(probs, f["labels"], smooth, squared), rtol=RTOL,
                                 atol=ATOL)


def test_dice_loss_perfect_empty_and_zero_smooth():
  labels = jnp.array([[[0, 0], [1, 255]]])  # class 2 absent
  probs = jax.nn.one_hot(labels, 3) * (labels != 255)[..., None]
  got = L.dice_loss(probs, labels, from_logits=False, smooth=0.0)
  np.testing.assert_allclose(got, 0.0, atol=1e-7)  # perfect, and 0/0 for class 2 defined as 0
  g = jax.grad(lambda x: jnp.sum(L.dice_loss(x, labels, smooth=0.0)))(
      jnp.array([[[[100.0, -100.0, 0.0]] * 2] * 2]))
  assert _all_finite(g)


def test_binary_mask_loss_matches_torch(fixture_npz):
  f = fixture_npz("losses_mask_adv")
  valid = np.array([True, False, True])
  loss = jax.jit(L.binary_mask_loss)(f["mask_logits"], f["mask_targets"], valid)
  want = f["mask_loss"] * valid[:, None, None]
  np.testing.assert_allclose(loss, want, rtol=RTOL, atol=ATOL)
  # Garbage in invalid RoIs never reaches values or gradients.
  targets = f["mask_targets"].copy()
  targets[1] = np.nan
  g = jax.grad(lambda x: jnp.sum(L.binary_mask_loss(x, targets, valid)))(jnp.asarray(f["mask_logits"]))
  assert _all_finite(g) and np.all(np.asarray(g)[1] == 0)
  # bool targets are accepted.
  b = L.binary_mask_loss(f["mask_logits"][:1], f["mask_targets"][:1] > 0.5, valid[:1])
  np.testing.assert_allclose(b, f["mask_loss"][:1], rtol=RTOL, atol=ATOL)


# ------------------------------------------------------------------------------------------------
# Adversarial
# ------------------------------------------------------------------------------------------------


def test_adversarial_terms_match_torch(fixture_npz):
  f = fixture_npz("losses_mask_adv")
  np.testing.assert_allclose(L.discriminator_loss(f["real"], f["fake"]), f["disc_loss"], rtol=RTOL,
                             atol=ATOL)
  np.testing.assert_allclose(L.generator_adversarial_loss(f["fake"]), f["gen_nonsat"], rtol=RTOL,
                             atol=ATOL)
  np.testing.assert_allclose(L.generator_adversarial_loss(f["fake"], mode="saturating"),
                             f["gen_sat"], rtol=RTOL, atol=ATOL)
  x = jnp.array([100.0, -100.0])
  for fn in (lambda z: L.discriminator_loss(z, -z),
             lambda z: L.generator_adversarial_loss(z, mode="saturating"),
             L.generator_adversarial_loss):
    assert _all_finite(jax.grad(lambda z: jnp.sum(fn(z)))(x))
  # The saturating term's gradient vanishes when the discriminator rejects the fake (z -> -inf);
  # the non-saturating one's does not (Goodfellow et al.).
  z = -10.0 * jnp.ones(1)
  g_sat = jax.grad(lambda z: jnp.sum(L.generator_adversarial_loss(z, mode="saturating")))(z)
  g_ns = jax.grad(lambda z: jnp.sum(L.generator_adversarial_loss(z)))(z)
  assert abs(float(g_sat[0])) < 1e-4 < abs(float(g_ns[0]))


def test_hybrid_segmentation_loss_matches_torch(fixture_npz):
  f = fixture_npz("losses_mask_adv")
  fn = jax.jit(lambda s, d: L.hybrid_segmentation_loss(s, f["seg_labels"], d, adv_weight=0.3))
  total, terms = fn(f["seg_logits"], f["fake"])
  np.testing.assert_allclose(terms["ce"], f["hybrid_ce"], rtol=RTOL)
  np.testing.assert_allclose(terms["adv"], f["hybrid_adv"], rtol=RTOL)
  np.testing.assert_allclose(total, f["hybrid_total_lambda0.3"], rtol=RTOL)
  # All pixels ignored: ce is 0, not NaN; an explicit normalizer is honoured.
  ign = np.full_like(f["seg_labels"], 255)
  total, terms = L.hybrid_segmentation_loss(f["seg_logits"], ign, f["fake"], adv_weight=0.0)
  assert float(terms["ce"]) == 0.0 and float(total) == 0.0
  _, terms = L.hybrid_segmentation_loss(f["seg_logits"], f["seg_labels"], f["fake"], adv_weight=1.0,
                                        ce_normalizer=2.0 * np.sum(f["seg_labels"] != 255))
  np.testing.assert_allclose(terms["ce"], f["hybrid_ce"] / 2, rtol=RTOL)


# ------------------------------------------------------------------------------------------------
# Bad input
# ------------------------------------------------------------------------------------------------


def test_bad_inputs_raise_naming_the_argument():
  x4 = jnp.zeros((1, 2, 2, 3))
  lab = jnp.zeros((1, 2, 2), jnp.int32)
  cases = [
      (TypeError, "logits must be an array", lambda: L.sigmoid_focal_loss(1.0, 1.0)),
      (TypeError, "logits must have a float dtype",
       lambda: L.sigmoid_focal_loss(jnp.zeros(3, jnp.int32), jnp.zeros(3))),
      (ValueError, "logits and targets must have the same shape",
       lambda: L.sigmoid_focal_loss(jnp.zeros(3), jnp.zeros(4))),
      (ValueError, "alpha must be in", lambda: L.sigmoid_focal_loss(jnp.zeros(3), jnp.zeros(3),
                                                                    alpha=1.5)),
      (ValueError, "gamma must be in", lambda: L.softmax_focal_loss(x4, lab, gamma=-1.0)),
      (ValueError, "alpha must have shape", lambda: L.softmax_focal_loss(x4, lab, alpha=jnp.ones(2))),
      (TypeError, "labels must have a int dtype", lambda: L.softmax_cross_entropy(x4, lab * 1.0)),
      (ValueError, r"labels must have shape logits.shape\[:-1\]",
       lambda: L.softmax_cross_entropy(x4, lab[0])),
      (ValueError, "logits must have rank >= 1", lambda: L.softmax_cross_entropy(jnp.zeros(()), lab)),
      (ValueError, "class_weights must have shape",
       lambda: L.softmax_cross_entropy(x4, lab, class_weights=jnp.ones(4))),
      (ValueError, "label_smoothing must be in",
       lambda: L.softmax_cross_entropy(x4, lab, label_smoothing=2.0)),
      (TypeError, "ignore_label must be a Python int",
       lambda: L.softmax_cross_entropy(x4, lab, ignore_label=255.0)),
      (ValueError, "num_classes", lambda: L.cross_entropy_normalizer(lab, num_classes=0)),
      (ValueError, "beta must be in", lambda: L.smooth_l1_loss(jnp.zeros(2), jnp.zeros(2), beta=-1.0)),
      (ValueError, "pred and target must have the same shape",
       lambda: L.smooth_l1_loss(jnp.zeros(2), jnp.zeros(3))),
      (ValueError, "pred_boxes must have last dimension 4",
       lambda: L.giou_loss(jnp.zeros((2, 3)), jnp.zeros((2, 3)))),
      (ValueError, "pred_boxes and target_boxes must have the same shape",
       lambda: L.ciou_loss(jnp.zeros((2, 4)), jnp.zeros((3, 4)))),
      (TypeError, "pred_boxes must be an array", lambda: L.iou_loss(None, jnp.zeros((2, 4)))),
      (ValueError, "logits must have rank >= 3", lambda: L.dice_loss(jnp.zeros((2, 3)), lab[0, 0])),
      (TypeError, "from_logits must be a bool", lambda: L.dice_loss(x4, lab, from_logits=1)),
      (ValueError, "valid must have shape",
       lambda: L.binary_mask_loss(jnp.zeros((2, 3, 3)), jnp.zeros((2, 3, 3)), jnp.ones(3, bool))),
      (TypeError, "valid must have a bool dtype",
       lambda: L.binary_mask_loss(jnp.zeros((2, 3, 3)), jnp.zeros((2, 3, 3)), jnp.ones(2))),
      (ValueError, "real_logits and fake_logits must have the same shape",
       lambda: L.discriminator_loss(jnp.zeros(2), jnp.zeros(3))),
      (ValueError, "mode must be one of", lambda: L.generator_adversarial_loss(jnp.zeros(2), mode="x")),
      (ValueError, "seg_logits must have rank 4",
       lambda: L.hybrid_segmentation_loss(x4[0], lab, jnp.zeros(1), adv_weight=1.0)),
      (ValueError, "disc_fake_logits must be",
       lambda: L.hybrid_segmentation_loss(x4, lab, jnp.zeros(2), adv_weight=1.0)),
      (ValueError, "adv_weight must be in",
       lambda: L.hybrid_segmentation_loss(x4, lab, jnp.zeros(1), adv_weight=-1.0)),
  ]
  for exc, msg, call in cases:
    with pytest.raises(exc, match=msg):
      call()
