"""CRF-as-RNN (Zheng et al. 2015): the layer equals the dense-CRF op, gradients through the
iterations are finite and reach the learned CRF parameters, the family's glue, and (slow) learning
on shapes."""

from __future__ import annotations

import functools
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxvision.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from jaxvision.models import MODELS
from jaxvision.models.segmentation import crf_rnn
from jaxvision.ops import crf

TINY = {"depth": 2, "base_features": 4, "norm": "batch", "num_iters": 3, "sigma_alpha": 8.0}


def _key(seed=0):
  return jax.random.key(seed, impl="rbg")  # fast to compile on CPU (see tests/models/test_unet.py)


def _batch(b=2, size=16, seed=0, num_classes=4):
  rng = np.random.default_rng(seed)
  rgb = rng.uniform(0, 255, size=(b, size, size, 3)).astype(np.float32)
  image = (rgb / 255.0 - np.asarray(IMAGENET_MEAN, np.float32)) / np.asarray(IMAGENET_STD, np.float32)
  seg = rng.integers(0, num_classes, size=(b, size, size)).astype(np.int32)
  seg[0, :3] = 255
  return {"image": jnp.asarray(image), "segmentation": jnp.asarray(seg)}, rgb


@functools.lru_cache(maxsize=None)
def _family_and_variables(num_classes=4, size=16):
  family = crf_rnn.make_crf_rnn(TINY, num_classes)
  batch, _ = _batch(size=size, num_classes=num_classes)
  variables = jax.jit(lambda k: family.init_variables(k, batch))(_key())
  return family, variables


@pytest.mark.slow
def test_layer_equals_the_dense_crf_op_and_unnormalises_the_image():
  family, variables = _family_and_variables()
  batch, rgb = _batch()
  out = jax.jit(functools.partial(family.module.apply, train=False))(variables, batch["image"])
  assert out["logits"].shape == out["unary_logits"].shape == (2, 16, 16, 4)
  p = variables["params"]["crf"]
  np.testing.assert_allclose(p["w_appearance"], 5.0)
  np.testing.assert_allclose(p["w_smoothness"], 3.0)
  np.testing.assert_allclose(p["compatibility"], 1.0 - np.eye(4))  # Potts initialisation
  want = jax.jit(jax.vmap(functools.partial(
      crf.dense_crf, num_iters=3, sigma_alpha=8.0, sigma_beta=13.0, sigma_gamma=3.0,
      w_appearance=5.0, w_smoothness=3.0)))(out["unary_logits"], jnp.asarray(rgb))
  np.testing.assert_allclose(jax.nn.softmax(out["logits"], -1), want, atol=2e-5)


@pytest.mark.slow
def test_gradients_through_the_iterations_are_finite_and_reach_crf_parameters():
  family, variables = _family_and_variables()
  batch, _ = _batch()

  @jax.jit
  def grads(params):
    def loss(p):
      total, _, _ = family.train_loss({**variables, "params": p}, batch, rng=_key(1), step=0)
      return total
    return jax.value_and_grad(loss)(params)

  loss, g = grads(variables["params"])
  assert np.isfinite(float(loss))
  for path, leaf in jax.tree_util.tree_leaves_with_path(g):
    assert np.all(np.isfinite(leaf)), path
  for name in ("w_appearance", "w_smoothness", "compatibility"):
    assert float(jnp.max(jnp.abs(g["crf"][name]))) > 0, name
  assert float(jnp.max(jnp.abs(g["cnn"]["head"]["kernel"]))) > 0  # reaches the CNN too


@pytest.mark.slow
def test_family_loss_terms_predict_and_config_errors():
  family, variables = _family_and_variables()
  batch, _ = _batch()
  total, terms, mutated = jax.jit(
      lambda v, b: family.train_loss(v, b, rng=_key(), step=0))(variables, batch)
  assert set(terms) == {"crf_cross_entropy", "unary_cross_entropy"}
  np.testing.assert_allclose(total, terms["crf_cross_entropy"], rtol=1e-6)  # unary weight 0
  assert "batch_stats" in mutated
  pred = jax.jit(family.predict)(variables, batch)["segmentation"]
  assert pred.shape == (2, 16, 16) and pred.dtype == jnp.int32
  with pytest.raises(ValueError, match="unknown crf_rnn"):
    crf_rnn.make_crf_rnn({"num_iter": 3}, 4)
  with pytest.raises(ValueError, match="method"):
    crf_rnn.make_crf_rnn({"method": "grid"}, 4)
  assert MODELS["crf_rnn"](TINY, 4).task == "segmentation"


@pytest.mark.slow
def test_eval_num_iters_and_scalar_weights():
  family = crf_rnn.make_crf_rnn({**TINY, "eval_num_iters": 0, "per_class_weights": False,
                                 "learn_compatibility": False}, 3)
  batch, _ = _batch(num_classes=3)
  variables = jax.jit(lambda k: family.init_variables(k, batch))(_key())
  assert variables["params"]["crf"]["w_appearance"].shape == ()
  assert "compatibility" not in variables["params"]["crf"]
  out = jax.jit(functools.partial(family.module.apply, train=False))(variables, batch["image"])
  # 0 iterations at inference: the CRF returns the unary log-probabilities.
  np.testing.assert_allclose(out["logits"], jax.nn.log_softmax(out["unary_logits"], -1), atol=1e-5)


# ------------------------------------------------------------------------------------------------
# Learning (slow)
# ------------------------------------------------------------------------------------------------


def _shapes_batches(split, n, size, seed=0):
  """``n`` shapes examples at ``size`` px (area-downsampled images, strided labels), normalised."""
  from jaxvision.data import shapes_gen  # noqa: PLC0415

  s = 128 // size
  images, segs = [], []
  for i in range(n):
    ex = shapes_gen.generate_example(shapes_gen.example_seed(split, i), shapes_gen.SPEC_V1)
    img = ex["image"].astype(np.float32).reshape(size, s, size, s, 3).mean((1, 3))
    images.append((img / 255.0 - np.asarray(IMAGENET_MEAN)) / np.asarray(IMAGENET_STD))
    segs.append(ex["segmentation"][s // 2::s, s // 2::s].astype(np.int32))
  return np.stack(images).astype(np.float32), np.stack(segs)


@pytest.mark.slow
def test_crf_rnn_learns_shapes():
  from jaxvision.eval.segmentation import confusion_matrix, segmentation_metrics  # noqa: PLC0415

  # Measured on the shared 2-core CPU under heavy load (1-min load 15-20): loss 5.44 -> 1.44, val
  # mIoU 0.007 -> 0.200 (the jointly trained CNN's own logits: 0.090), 327-410 s. The CRF makes
  # each step ~10x a plain U-Net's here (lattice build + 5 iterations forward and backward).
  size, steps, batch_size, num_classes = 64, 150, 8, 6
  train_x, train_y = _shapes_batches("train", steps * batch_size // 3, size)  # ~3 epochs
  val_x, val_y = _shapes_batches("validation", 48, size)
  family = crf_rnn.make_crf_rnn({"depth": 3, "base_features": 8, "norm": "batch",
                                 "num_iters": 5, "sigma_alpha": 10.0,
                                 "class_weights": (0.064, 0.649, 0.999, 1.537, 1.494, 1.001)},
                                num_classes)
  variables = jax.jit(lambda k: family.init_variables(k, {"image": train_x[:1]}))(_key())
  params, stats = variables["params"], variables["batch_stats"]
  tx = optax.adam(3e-3)
  opt_state = tx.init(params)

  @jax.jit
  def train_step(params, stats, opt_state, image, seg):
    def loss_fn(p):
      loss, terms, mut = family.train_loss({"params": p, "batch_stats": stats},
                                           {"image": image, "segmentation": seg}, rng=_key(),
                                           step=0)
      return loss, mut["batch_stats"]
    (loss, stats), g = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(g, opt_state, params)
    return optax.apply_updates(params, updates), stats, opt_state, loss

  @jax.jit
  def confusion(params, stats, image, seg):
    v = {"params": params, "batch_stats": stats}
    out = family.module.apply(v, image, train=False)
    crf_cm = confusion_matrix(seg, jnp.argmax(out["logits"], -1), num_classes)
    unary_cm = confusion_matrix(seg, jnp.argmax(out["unary_logits"], -1), num_classes)
    return crf_cm, unary_cm

  def miou(params, stats):
    cms = [confusion(params, stats, val_x[i:i + 16], val_y[i:i + 16]) for i in range(0, 48, 16)]
    crf_cm = sum(np.asarray(c[0], np.int64) for c in cms)
    unary_cm = sum(np.asarray(c[1], np.int64) for c in cms)
    return (segmentation_metrics(crf_cm)["mean_iou"], segmentation_metrics(unary_cm)["mean_iou"])

  start = time.time()
  before, _ = miou(params, stats)
  losses = []
  n = len(train_x)
  for i in range(steps):
    idx = np.arange(i * batch_size, (i + 1) * batch_size) % n
    params, stats, opt_state, loss = train_step(params, stats, opt_state, train_x[idx], train_y[idx])
    losses.append(float(loss))
  after, unary_after = miou(params, stats)
  w = params["crf"]
  print(f"CRF-RNN shapes {size}px: loss {np.mean(losses[:5]):.3f} -> {np.mean(losses[-10:]):.3f}, "
        f"val mIoU {before:.3f} -> {after:.3f} (the CNN's own logits: {unary_after:.3f}); "
        f"w_app {np.round(np.asarray(w['w_appearance']), 2)}, w_smooth "
        f"{np.round(np.asarray(w['w_smoothness']), 2)}; {steps} steps in {time.time() - start:.0f} s")
  assert np.all(np.isfinite(losses))
  assert np.mean(losses[-10:]) < 0.6 * np.mean(losses[:5])
  assert after > before + 0.15
