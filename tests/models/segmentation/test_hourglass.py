"""Stacked hourglass (Newell et al. 2016) as a segmentation family: one output per stack,
intermediate supervision (the loss is the weighted sum of every stack's cross-entropy), sizes,
parameter count, upsampling options, config errors and a learning test (slow)."""

from __future__ import annotations

import functools
import time

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxvision.models import MODELS
from jaxvision.models.segmentation import hourglass


def _image(shape, seed=0):
  return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


def _init(module, x):
  return jax.jit(functools.partial(module.init, train=False))(jax.random.key(0, impl="rbg"), x)


def _apply(module, variables, x, **kwargs):
  return jax.jit(functools.partial(module.apply, **kwargs))(variables, x)


def _train_loss(family, variables, batch):
  return jax.jit(lambda v, b: family.train_loss(v, b, rng=jax.random.key(0)))(variables, batch)


def _num_params(params) -> int:
  return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))


@pytest.mark.parametrize("num_stacks", [1, 3])
@pytest.mark.slow
def test_one_output_per_stack_and_the_last_is_the_prediction(num_stacks):
  model = hourglass.StackedHourglass(num_classes=4, num_stacks=num_stacks, depth=2, features=8)
  x = _image((2, 37, 50, 3))  # odd sizes: ceil pooling and cropping
  out = _apply(model, _init(model, x), x, train=False)
  assert len(out["aux"]) == num_stacks
  for logits in out["aux"]:
    chex.assert_shape(logits, (2, 37, 50, 4))
    assert logits.dtype == jnp.float32 and np.all(np.isfinite(logits))
  np.testing.assert_array_equal(out["logits"], out["aux"][-1])
  if num_stacks > 1:  # the stacks really predict differently
    assert not np.allclose(out["aux"][0], out["aux"][-1])


def _np_ce(logits, labels):
  """NumPy per-pixel cross-entropy, 0 at label 255."""
  logits = np.asarray(logits, np.float64)
  z = logits - logits.max(-1, keepdims=True)
  logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
  safe = np.where(labels == 255, 0, labels)
  ce = -np.take_along_axis(logp, safe[..., None], axis=-1)[..., 0]
  return np.where(labels == 255, 0.0, ce)


@pytest.mark.slow
def test_intermediate_supervision_is_the_weighted_sum_of_per_stack_cross_entropies():
  weights = (0.5, 1.0, 2.0)
  family = hourglass.make_hourglass({"num_stacks": 3, "depth": 1, "features": 8,
                                     "stack_loss_weights": weights}, 3)
  x = _image((2, 12, 12, 3))
  variables = _init(family.module, x)
  labels = np.random.default_rng(0).integers(0, 3, (2, 12, 12)).astype(np.int32)
  labels[1, :5] = 255
  batch = {"image": x, "segmentation": jnp.asarray(labels)}
  loss, terms, mutated = _train_loss(family, variables, batch)
  assert set(mutated) == {"batch_stats"}
  outputs = _apply(family.module, variables, x, train=True, mutable=["batch_stats"])[0]
  n = np.sum(labels != 255)
  per_stack = [_np_ce(a, labels).sum() / n for a in outputs["aux"]]
  np.testing.assert_allclose(loss, sum(w * c for w, c in zip(weights, per_stack)), rtol=1e-5)
  for i, c in enumerate(per_stack):
    np.testing.assert_allclose(terms[f"cross_entropy_stack{i}"], c, rtol=1e-5)
  np.testing.assert_allclose(terms["cross_entropy"], loss, rtol=1e-6)
  # Predictions come from the last stack.
  pred = jax.jit(family.predict)(variables, batch)["segmentation"]
  np.testing.assert_array_equal(
      pred, np.argmax(_apply(family.module, variables, x, train=False)["aux"][-1], -1))


@pytest.mark.slow
def test_paper_parameter_count():
  # Arithmetic of the released network (F = 256, 8 stacks, depth 4, 16 joints): a residual module
  # from C_in to F has BatchNorm (2 C each) before its three convolutions (with bias)
  # 1x1 C_in -> F/2, 3x3 F/2 -> F/2, 1x1 F/2 -> F, plus a 1x1 skip when C_in != F.
  def res(cin, f):
    h = f // 2
    n = 2 * cin + cin * h + h + 2 * h + 9 * h * h + h + 2 * h + h * f + f
    return n + (cin * f + f if cin != f else 0)

  f, k, stacks, depth = 256, 16, 8, 4
  stem = 7 * 7 * 3 * 64 + 2 * 64 + res(64, 128) + res(128, 128) + res(128, 256)
  hg = (3 * depth + 1) * res(f, f)  # per level up1, low1, low3; one at the bottom
  head = res(f, f) + (f * f + 2 * f) + (f * k + k)  # residual, lin (conv no bias + BN), output
  remap = (f * f + f) + (k * f + f)  # ll_ and out_ for every stack but the last
  expected = stem + stacks * (hg + head) + (stacks - 1) * remap
  model = hourglass.StackedHourglassPaper(num_classes=k)
  x = jax.ShapeDtypeStruct((1, 256, 256, 3), jnp.float32)
  variables = jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0), x)
  assert _num_params(variables["params"]) == expected
  assert abs(expected - 25.4e6) < 0.1e6  # ~25M parameters (8-stack network)
  out = jax.eval_shape(functools.partial(model.apply, train=False), variables, x)
  assert len(out["aux"]) == 8 and out["logits"].shape == (1, 256, 256, k)


@pytest.mark.parametrize("upsampling", ["transposed", "bilinear", "max_unpool"])
@pytest.mark.slow
def test_upsampling_options(upsampling):
  model = hourglass.StackedHourglass(num_classes=2, num_stacks=1, depth=2, features=8,
                                     stem_downsample=2, upsampling=upsampling)
  x = _image((1, 15, 18, 3))
  variables = _init(model, x)
  chex.assert_shape(_apply(model, variables, x, train=False)["logits"], (1, 15, 18, 2))
  learned_up = "up" in variables["params"]["hg0"]
  assert learned_up == (upsampling == "transposed")


def test_bad_config_raises():
  with pytest.raises(ValueError, match=r"unknown hourglass model config keys \['stacks'\]"):
    hourglass.make_hourglass({"stacks": 2}, 3)
  with pytest.raises(ValueError, match="stack_loss_weights must be 2"):
    hourglass.make_hourglass({"num_stacks": 2, "stack_loss_weights": [1.0, 1.0, 1.0]}, 3)
  with pytest.raises(ValueError, match="stem_downsample"):
    model = hourglass.StackedHourglass(num_classes=2, stem_downsample=3, features=8)
    model.init(jax.random.key(0), _image((1, 16, 16, 3)), train=False)
  family = MODELS["hourglass"]({"name": "hourglass", "preset": "tiny"}, 3)
  assert family.module.num_stacks == 2


# ------------------------------------------------------------------------------------------------
# Learning on the shapes dataset
# ------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_hourglass_learns_shapes(shapes_dir, train_and_evaluate):
  # 128 px images, 2 stacks of depth 3 at 1/4 resolution, intermediate supervision, square roots of
  # the median-frequency class weights. An all-background prediction scores mIoU 0.142 here.
  start = time.time()
  family = MODELS["hourglass"]({"num_stacks": 2, "depth": 3, "features": 32, "stem_downsample": 4,
                                "class_weights": (0.25, 0.8, 1.0, 1.24, 1.22, 1.0)}, 6)
  losses, before, after = train_and_evaluate(family, shapes_dir, steps=400, batch_size=8,
                                             image_size=(128, 128), learning_rate=3e-3)
  print(f"hourglass shapes: loss {losses[:5].mean():.3f} -> {losses[-10:].mean():.3f}, val mIoU "
        f"{before:.3f} -> {after:.3f}, {time.time() - start:.0f} s")
  assert np.all(np.isfinite(losses))
  assert losses[-10:].mean() < 0.75 * losses[:5].mean()
  assert after > 0.19 and after > before + 0.1  # measured 0.012 -> 0.221
