"""Dense CRF (Krähenbühl and Koltun 2011): a hand-worked 2-pixel case, a float64 NumPy reference of
mean field, the exact separable Gaussian, the permutohedral lattice against the brute force, batching,
gradients, errors, and the CRF cleaning up noisy logits on shapes images."""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxvision.eval.segmentation import confusion_matrix, segmentation_metrics
from jaxvision.ops import crf


def _shapes(n, split="validation", stride=1):
  from jaxvision.data import shapes_gen  # noqa: PLC0415

  exs = [shapes_gen.generate_example(shapes_gen.example_seed(split, i), shapes_gen.SPEC_V1)
         for i in range(n)]
  images = np.stack([e["image"][::stride, ::stride] for e in exs]).astype(np.float32)
  segs = np.stack([e["segmentation"][::stride, ::stride] for e in exs]).astype(np.int32)
  return images, segs


def _noisy_logits(segs, seed, *, signal=2.0, noise=1.5, num_classes=6):
  """Logits derived from the ground truth: ``signal * onehot + noise * N(0, 1)``, i.i.d. per pixel."""
  onehot = np.eye(num_classes, dtype=np.float32)[segs]
  return signal * onehot + noise * np.random.default_rng(seed).normal(size=onehot.shape).astype(
      np.float32)


def _crf(logits, image, **kw):
  """``crf.dense_crf`` jitted (eager dispatch of the lattice build is slow); arrays positional."""
  key = tuple(sorted((k, v if np.isscalar(v) or isinstance(v, str) else None) for k, v in kw.items()))
  arrays = {k: v for k, v in kw.items() if not (np.isscalar(v) or isinstance(v, str))}
  static = {k: v for k, v in kw.items() if k not in arrays}
  if key not in _JITTED:
    _JITTED[key] = jax.jit(lambda lg, im, arr: crf.dense_crf(lg, im, **static, **arr))
  return _JITTED[key](logits, image, arrays)


_JITTED = {}


def _miou(segs, pred, num_classes=6):
  cm = np.asarray(confusion_matrix(jnp.asarray(segs), jnp.asarray(pred), num_classes), np.int64)
  return segmentation_metrics(cm)["mean_iou"]


def _np_mean_field(logits, image, *, num_iters, sigma_alpha, sigma_beta, sigma_gamma, w_app,
                   w_smooth, compat, normalize):
  """The paper's Algorithm 1, float64, dense kernels, written out directly."""
  h, w, c = logits.shape
  n = h * w
  pos = np.stack(np.meshgrid(np.arange(h), np.arange(w), indexing="ij"), -1).reshape(n, 2)
  rgb = image.reshape(n, 3).astype(np.float64)
  dp = np.sum((pos[:, None] - pos[None]) ** 2, -1).astype(np.float64)
  dc = np.sum((rgb[:, None] - rgb[None]) ** 2, -1)
  k_app = np.exp(-dp / (2 * sigma_alpha**2) - dc / (2 * sigma_beta**2))
  k_smooth = np.exp(-dp / (2 * sigma_gamma**2))
  lg = logits.reshape(n, c).astype(np.float64)
  unary = lg - np.log(np.sum(np.exp(lg - lg.max(1, keepdims=True)), 1, keepdims=True)) - lg.max(
      1, keepdims=True)
  q = np.exp(unary)
  for _ in range(num_iters):
    if normalize:
      msg = (w_app * (k_app @ q) / k_app.sum(1, keepdims=True)
             + w_smooth * (k_smooth @ q) / k_smooth.sum(1, keepdims=True))
    else:
      off = 1.0 - np.eye(n)
      msg = w_app * ((k_app * off) @ q) + w_smooth * ((k_smooth * off) @ q)
    energy = unary - msg @ np.asarray(compat, np.float64).T
    q = np.exp(energy - energy.max(1, keepdims=True))
    q /= q.sum(1, keepdims=True)
  return q.reshape(h, w, c)


# ------------------------------------------------------------------------------------------------
# Exact (brute-force) mean field
# ------------------------------------------------------------------------------------------------


def test_two_pixel_case_worked_by_hand():
  # A 1 x 2 image; 2 labels. Pixel 0 at (0, 0) black, pixel 1 at (0, 1) with red 100. With
  # sigma_alpha = 1, sigma_beta = 100, sigma_gamma = 1 the kernels between the two pixels are
  # k_app = exp(-1/2 - 1/2) = e^-1 and k_smooth = exp(-1/2); w_app = 2, w_smooth = 1, so every
  # message is K * Q_other with K = 2 e^-1 + e^-1/2 (the paper's j != i, unnormalised).
  logits = np.array([[[2.0, 0.0], [0.0, 1.0]]], np.float32)  # (1, 2, 2)
  image = np.array([[[0, 0, 0], [100, 0, 0]]], np.float32)
  kw = dict(sigma_alpha=1.0, sigma_beta=100.0, sigma_gamma=1.0, w_appearance=2.0,
            w_smoothness=1.0, method="brute_force")
  q = _crf(logits, image, num_iters=1, normalize=False, **kw)
  sig = lambda z: 1.0 / (1.0 + math.exp(-z))  # noqa: E731
  big_k = 2 * math.exp(-1) + math.exp(-0.5)
  q0, q1 = sig(2.0), sig(-1.0)  # initial Q_i(label 0): softmax([2, 0]), softmax([0, 1])
  # Potts: the energy of label l at pixel i is the message of the other label from the other pixel:
  # logit(0) - logit(1) = (unary difference) - K (Q_j(1) - Q_j(0)).
  new0 = sig(2.0 - big_k * ((1 - q1) - q1))
  new1 = sig(-1.0 - big_k * ((1 - q0) - q0))
  np.testing.assert_allclose(q[0, :, 0], [new0, new1], rtol=1e-5)
  np.testing.assert_allclose(q.sum(-1), 1.0, rtol=1e-6)
  assert new0 == pytest.approx(0.7989, abs=1e-4) and new1 == pytest.approx(0.5056, abs=1e-4)

  # Normalised kernels: the message is (Q_i + k Q_j) / (1 + k) per kernel (j = i included).
  qn = _crf(logits, image, num_iters=1, normalize=True, **kw)
  ka, ks = math.exp(-1), math.exp(-0.5)

  def diff_msg(q_self, q_other):  # message(label 1) - message(label 0) for q = Q(label 0)
    m = lambda k, a, b: (a + k * b) / (1 + k)  # noqa: E731
    return (2 * (m(ka, 1 - q_self, 1 - q_other) - m(ka, q_self, q_other))
            + (m(ks, 1 - q_self, 1 - q_other) - m(ks, q_self, q_other)))

  np.testing.assert_allclose(qn[0, :, 0], [sig(2.0 - diff_msg(q0, q1)), sig(-1.0 - diff_msg(q1, q0))],
                             rtol=1e-5)


@pytest.mark.parametrize("normalize", [True, False])
def test_brute_force_matches_numpy_reference(normalize):
  rng = np.random.default_rng(0)
  h, w, c = 5, 4, 3
  logits = rng.normal(size=(h, w, c)).astype(np.float32) * 2
  image = rng.uniform(0, 255, size=(h, w, 3)).astype(np.float32)
  compat = rng.uniform(0, 1, size=(c, c)).astype(np.float32)
  w_app = np.array([1.0, 2.0, 0.5], np.float32)
  kw = dict(num_iters=4, sigma_alpha=2.0, sigma_beta=60.0, sigma_gamma=1.5)
  q = _crf(logits, image, w_appearance=w_app, w_smoothness=0.7, compatibility=compat,
           normalize=normalize, method="brute_force", **kw)
  want = _np_mean_field(logits, image, w_app=w_app, w_smooth=0.7, compat=compat,
                        normalize=normalize, **kw)
  np.testing.assert_allclose(q, want, atol=2e-5)


def test_zero_iterations_is_the_softmax():
  logits = np.random.default_rng(1).normal(size=(4, 6, 3)).astype(np.float32)
  q = _crf(logits, np.zeros((4, 6, 3), np.float32), num_iters=0, sigma_alpha=3.0)
  np.testing.assert_allclose(q, jax.nn.softmax(logits, -1), rtol=1e-6)


# ------------------------------------------------------------------------------------------------
# Efficient filtering
# ------------------------------------------------------------------------------------------------


def test_separable_spatial_gaussian_is_exact():
  rng = np.random.default_rng(2)
  values = rng.normal(size=(7, 9, 3)).astype(np.float32)
  out = crf.spatial_gaussian_filter(values, sigma=2.5)
  pos = np.stack(np.meshgrid(np.arange(7), np.arange(9), indexing="ij"), -1).reshape(-1, 2)
  d2 = np.sum((pos[:, None] - pos[None]) ** 2, -1)
  want = (np.exp(-d2 / (2 * 2.5**2)) @ values.reshape(-1, 3).astype(np.float64)).reshape(7, 9, 3)
  np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5)


@functools.lru_cache(maxsize=None)
def _lattice_fn(sigma_alpha, sigma_beta):
  return jax.jit(lambda im: crf._appearance_lattice(im, sigma_alpha, sigma_beta))


def test_lattice_weights_and_linear_filter():
  images, _ = _shapes(1, stride=4)  # (1, 32, 32, 3)
  feats, lat = _lattice_fn(10.0, 13.0)(jnp.asarray(images[0]))
  n = 32 * 32
  assert lat.vertex.shape == (n, 6) and lat.weight.shape == (n, 6)
  assert np.all(np.asarray(lat.weight) >= -1e-6)
  np.testing.assert_allclose(np.sum(lat.weight, -1), 1.0, rtol=1e-5)
  assert 6 <= int(lat.num_vertices) <= 6 * n
  assert int(jnp.max(lat.vertex)) == int(lat.num_vertices) - 1
  rng = np.random.default_rng(3)
  a = jnp.asarray(rng.normal(size=(n, 2)), jnp.float32)
  b = jnp.asarray(rng.normal(size=(n, 2)), jnp.float32)
  filt = jax.jit(crf.permutohedral_filter)
  fa, fb = filt(lat, a), filt(lat, b)
  np.testing.assert_allclose(filt(lat, 2 * a + b), 2 * fa + fb, rtol=1e-4, atol=1e-4)  # linear
  ones = filt(lat, jnp.ones((n, 1)))
  assert np.all(np.asarray(ones) > 0)  # every pixel gets its own weight back at least


@pytest.mark.parametrize("sigma_alpha,sigma_beta", [(10.0, 13.0), (5.0, 5.0)])
def test_lattice_approximates_the_normalised_gaussian(sigma_alpha, sigma_beta):
  # (5, 5) has narrow kernels: its keys need two int32 sort words.
  images, segs = _shapes(2, stride=2)  # (2, 64, 64, 3)
  for image, seg in zip(images, segs):
    feats, lat = _lattice_fn(sigma_alpha, sigma_beta)(jnp.asarray(image))
    n = feats.shape[0]
    q = 0.7 * np.eye(6, dtype=np.float32)[seg.reshape(-1)] + 0.05  # a Q that follows the image
    values = jnp.asarray(np.concatenate([q, np.ones((n, 1), np.float32)], -1))
    exact = np.asarray(crf.brute_force_gaussian_filter(feats, values), np.float64)
    approx = np.asarray(jax.jit(crf.permutohedral_filter)(lat, values), np.float64)
    msg_exact, msg_approx = exact[:, :-1] / exact[:, -1:], approx[:, :-1] / approx[:, -1:]
    err = np.abs(msg_exact - msg_approx)
    spread = np.mean(np.abs(msg_exact - msg_exact.mean(0)))
    print(f"sigma ({sigma_alpha}, {sigma_beta}): normalised message mean abs err {err.mean():.5f} "
          f"(spread {spread:.4f}), max {err.max():.3f}; unnormalised scale "
          f"{np.mean(approx[:, -1] / exact[:, -1]):.3f}")
    assert err.mean() < 0.1 * spread
    assert np.quantile(err, 0.99) < 0.1


def test_efficient_gaussian_part_is_exact():
  images, segs = _shapes(1, stride=4)
  logits = _noisy_logits(segs[0], 0)
  kw = dict(num_iters=3, sigma_alpha=10.0, sigma_beta=13.0, sigma_gamma=2.0, w_appearance=0.0,
            w_smoothness=3.0)
  fast = _crf(logits, images[0], **kw)
  brute = _crf(logits, images[0], method="brute_force", **kw)
  np.testing.assert_allclose(fast, brute, atol=3e-5)


def test_efficient_matches_brute_force_on_shapes_images():
  images, segs = _shapes(2, stride=3)  # (2, 43, 43, 3)
  logits = jnp.asarray(np.stack([_noisy_logits(s, i) for i, s in enumerate(segs)]))
  kw = dict(num_iters=5, sigma_alpha=10.0, sigma_beta=13.0, sigma_gamma=3.0, w_appearance=10.0,
            w_smoothness=3.0)
  fast = jax.jit(jax.vmap(functools.partial(crf.dense_crf, **kw)))(logits, images)
  brute = jax.jit(jax.vmap(functools.partial(crf.dense_crf, method="brute_force", **kw)))(
      logits, images)
  agree = float(jnp.mean(jnp.argmax(fast, -1) == jnp.argmax(brute, -1)))
  diff = float(jnp.mean(jnp.abs(fast - brute)))
  print(f"permutohedral vs brute force: argmax agreement {agree:.4f}, mean |dQ| {diff:.5f}")
  assert agree >= 0.98  # measured 0.996-0.997
  assert diff < 5e-3  # measured ~1e-3


# ------------------------------------------------------------------------------------------------
# Batching, gradients, errors
# ------------------------------------------------------------------------------------------------


def test_vmap_equals_one_image_at_a_time():
  images, segs = _shapes(2, stride=4)
  logits = np.stack([_noisy_logits(s, i) for i, s in enumerate(segs)])
  fn = functools.partial(crf.dense_crf, num_iters=2, sigma_alpha=8.0)
  batched = jax.jit(jax.vmap(fn))(logits, images)
  single = jax.jit(fn)
  for i in range(2):
    np.testing.assert_allclose(batched[i], single(logits[i], images[i]), atol=1e-5)


def test_gradients_are_finite_and_reach_every_input():
  images, segs = _shapes(1, stride=8)  # (16, 16)
  logits = jnp.asarray(_noisy_logits(segs[0], 0))

  def loss(lg, wa, ws, mu):
    q = crf.dense_crf(lg, images[0], num_iters=3, sigma_alpha=5.0, w_appearance=wa,
                      w_smoothness=ws, compatibility=mu)
    return -jnp.mean(jnp.log(q[..., 1] + 1e-6))

  grads = jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3)))(
      logits, jnp.full((6,), 5.0), jnp.float32(3.0), crf.potts_compatibility(6))
  for g in grads:
    assert np.all(np.isfinite(g)) and float(jnp.max(jnp.abs(g))) > 0


def test_bad_arguments_name_the_argument():
  lg, im = np.zeros((4, 5, 3), np.float32), np.zeros((4, 5, 3), np.float32)
  with pytest.raises(ValueError, match="logits"):
    crf.dense_crf(np.zeros((4, 5), np.float32), im)
  with pytest.raises(ValueError, match="image"):
    crf.dense_crf(lg, np.zeros((4, 6, 3), np.float32))
  with pytest.raises(ValueError, match="image"):
    crf.dense_crf(lg, np.zeros((4, 5, 4), np.float32))
  with pytest.raises(ValueError, match="compatibility"):
    crf.dense_crf(lg, im, compatibility=np.zeros((2, 2), np.float32))
  with pytest.raises(ValueError, match="w_appearance"):
    crf.dense_crf(lg, im, w_appearance=np.ones((4,), np.float32))
  with pytest.raises(ValueError, match="sigma_beta"):
    crf.dense_crf(lg, im, sigma_beta=0.0)
  with pytest.raises(ValueError, match="num_iters"):
    crf.dense_crf(lg, im, num_iters=-1)
  with pytest.raises(ValueError, match="method"):
    crf.dense_crf(lg, im, method="grid")
  with pytest.raises(ValueError, match="normalize=False"):
    crf.dense_crf(lg, im, normalize=False)
  with pytest.raises(TypeError, match="logits"):
    crf.dense_crf(np.zeros((4, 5, 3), np.int32), im)


# ------------------------------------------------------------------------------------------------
# Does it help?
# ------------------------------------------------------------------------------------------------


def test_crf_cleans_noisy_logits_and_keeps_clean_ones():
  # Logits derived from the ground truth plus i.i.d. Gaussian noise (not a trained network: see
  # benchmarks/crf.py for a briefly trained U-Net's logits). 64 x 64 (every 2nd pixel) to stay fast.
  images, segs = _shapes(4, stride=2)
  kw = dict(num_iters=5, sigma_alpha=10.0, sigma_beta=13.0, sigma_gamma=3.0, w_appearance=5.0,
            w_smoothness=3.0)
  fn = jax.jit(jax.vmap(functools.partial(crf.dense_crf, **kw)))
  noisy = np.stack([_noisy_logits(s, i) for i, s in enumerate(segs)])
  before = _miou(segs, np.argmax(noisy, -1))
  after = _miou(segs, np.asarray(jnp.argmax(fn(noisy, images), -1)))
  clean = 4.0 * np.eye(6, dtype=np.float32)[segs]  # perfect logits stay (almost) perfect
  clean_after = _miou(segs, np.asarray(jnp.argmax(fn(clean, images), -1)))
  print(f"noisy logits: mIoU {before:.3f} -> {after:.3f} with the CRF; clean logits -> "
        f"{clean_after:.3f}")
  assert after > before + 0.3
  assert clean_after > 0.95
