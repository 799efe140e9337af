"""Dilated front-end + context module (Yu & Koltun 2016): the receptive field measured from
gradients grows exponentially with depth while parameters grow linearly (vs the analytic formulas),
identity initialisation (basic and large), shapes and parameter counts, errors, and a learning test
on shapes (slow)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxvision.models import MODELS
from jaxvision.models.segmentation import dilated

# Learning-test budget (slow test): STEPS steps of BATCH shapes images. Measured with the config's
# settings on the shared 2-core CPU: val mIoU 0.116 -> 0.238 (context_lr_scale 0.1; 0.200 without
# it), about 90 s CPU time (270 s wall under load).
STEPS, BATCH, MIN_MIOU = 600, 4, 0.2


def _num_params(tree) -> int:
  return sum(int(np.prod(a.shape)) for a in jax.tree.leaves(tree))


def _positive(shapes, seed=0):
  """Positive weights: every ReLU stays on, so the gradient reaches the whole receptive field."""
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda s: jnp.asarray(rng.uniform(0.1, 1.0, s.shape), jnp.float32), shapes)


def test_receptive_field_exponential_parameters_linear():
  c, size = 3, 97
  dilations = dilated.BASIC_DILATIONS[:6]  # 1, 1, 2, 4, 8, 16
  fields, params = [], []
  for depth in range(1, len(dilations) + 1):
    module = dilated.ContextModule(num_classes=c, dilations=dilations[:depth])
    x = jax.ShapeDtypeStruct((1, size, size, c), jnp.float32)
    variables = _positive(jax.eval_shape(module.init, jax.random.key(0), x), seed=depth)
    rf = dilated.receptive_field_from_gradients(jax.jit(module.apply), variables, x.shape)
    fields.append(rf)
    params.append(_num_params(variables["params"]))
    expected = dilated.context_receptive_field(dilations[:depth])
    assert rf == (expected, expected), (depth, rf, expected)
    assert params[-1] == dilated.context_num_params(c, depth)
  assert [f[0] for f in fields] == [3, 5, 9, 17, 33, 65]  # paper Table 1
  # exponential: (rf - 1) doubles per layer after the second; linear: a constant increment
  assert all(fields[i + 1][0] - 1 == 2 * (fields[i][0] - 1) for i in range(1, 5))
  assert len(set(np.diff(params))) == 1 and np.diff(params)[0] == 9 * c * c + c
  # the whole basic module: 67 = 1 + 2 (1 + 1 + 2 + 4 + 8 + 16 + 1)
  assert dilated.context_receptive_field() == 67


def test_receptive_field_sees_only_live_paths_and_front_end_stride():
  """A plain (stride 1) conv stack measured by the same function, and an identity-initialised
  module whose weights carry no off-centre gradient (the function sees only live paths)."""
  module = dilated.ContextModule(num_classes=2)
  x = jax.ShapeDtypeStruct((1, 31, 31, 2), jnp.float32)
  v = jax.jit(module.init)(jax.random.key(0, impl="rbg"), jnp.zeros(x.shape))
  assert dilated.receptive_field_from_gradients(module.apply, v, x.shape) == (1, 1)
  fe = dilated.FrontEnd(num_classes=2, width=4, fc_features=4, fc6_kernel=3, dropout_rate=0.0)
  xs = jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32)
  shapes = jax.eval_shape(functools.partial(fe.init, train=False), jax.random.key(0), xs)
  out = jax.eval_shape(functools.partial(fe.apply, train=False), shapes, xs)
  assert out.shape == (1, 8, 8, 2)
  with pytest.raises(ValueError, match="input_shape"):
    dilated.receptive_field_from_gradients(module.apply, v, (31, 31, 2))


@pytest.mark.parametrize("multipliers", [None, dilated.LARGE_MULTIPLIERS])
def test_identity_initialisation_passes_the_scores_through(multipliers):
  """Paper Sec. 3: at initialisation each layer passes its input on, so the module is relu(x);
  the large module's generalised initialisation too (without noise)."""
  module = dilated.ContextModule(num_classes=4, channel_multipliers=multipliers, init_noise=0.0)
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 9, 11, 4)), jnp.float32)
  v = jax.jit(module.init)(jax.random.key(0, impl="rbg"), x)
  np.testing.assert_allclose(jax.jit(module.apply)(v, x), jax.nn.relu(x), rtol=1e-5, atol=1e-6)
  if multipliers is not None:
    k = np.asarray(v["params"]["ctx_conv1"]["kernel"])  # [3, 3, 4, 8]
    assert k.shape == (3, 3, 4, 8) and np.count_nonzero(k) == 8
    np.testing.assert_allclose(k[1, 1, :, ::2], 0.5 * np.eye(4))


def test_full_size_parameters_and_shapes():
  family = MODELS["context"]({}, 21)
  x = jax.ShapeDtypeStruct((1, 500, 375, 3), jnp.float32)
  v = jax.eval_shape(functools.partial(family.module.init, train=False), jax.random.key(0), x)
  out = jax.eval_shape(functools.partial(family.module.apply, train=False), v, x)
  assert out["logits"].shape == (1, 500, 375, 21)
  p = v["params"]
  front = _num_params(p["frontend"])
  # VGG-16 convolutions + fc6 (7x7x512x4096, dilation 4) + fc7 + final 1x1 to 21 classes
  assert front == 14_714_688 + (49 * 512 * 4096 + 4096) + (4096 * 4096 + 4096) + (4096 * 21 + 21)
  assert _num_params(p["context"]) == dilated.context_num_params(21, 7)
  assert p["frontend"]["fc6"]["kernel"].shape == (7, 7, 512, 4096)


def test_context_lr_scale_scales_only_the_module_updates():
  import ml_collections  # noqa: PLC0415

  family = MODELS["context"]({"width": 4, "fc_features": 4, "fc6_kernel": 3,
                              "context_lr_scale": 0.1}, 3)
  optim = ml_collections.ConfigDict({"name": "adamw", "learning_rate": 1e-2, "schedule": "constant",
                                     "warmup_steps": 0, "weight_decay": 0.0})
  tx = family.make_optimizer(optim, 10)
  params = {"frontend": {"w": jnp.ones(3)}, "context": {"w": jnp.ones(3)}}
  grads = {"frontend": {"w": jnp.full(3, 0.5)}, "context": {"w": jnp.full(3, 0.5)}}
  updates, _ = tx.update(grads, tx.init(params), params)
  np.testing.assert_allclose(updates["context"]["w"], 0.1 * updates["frontend"]["w"], rtol=1e-6)
  assert MODELS["context"]({}, 3).make_optimizer is None


def test_config_errors():
  with pytest.raises(ValueError, match="unknown context model config keys"):
    dilated.make_context_net({"dilation": (1, 2)}, 3)
  with pytest.raises(ValueError, match="context"):
    dilated.make_context_net({"context": "huge"}, 3)
  module = dilated.ContextModule(num_classes=3, channel_multipliers=(1, 2))
  with pytest.raises(ValueError, match="channel_multipliers"):
    module.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)))
  with pytest.raises(ValueError, match="input channels"):
    dilated.ContextModule(num_classes=3).init(jax.random.key(0), jnp.zeros((1, 8, 8, 4)))


@pytest.mark.slow
def test_context_net_learns_shapes(train_on_shapes, load_config):
  before, after, losses, seconds = train_on_shapes(load_config("context_shapes"), steps=STEPS,
                                                   batch_size=BATCH)
  print(f"Context net shapes: loss {np.mean(losses[:10]):.3f} -> {np.mean(losses[-20:]):.3f}, val "
        f"mIoU {before:.3f} -> {after:.3f}, {STEPS} steps of {BATCH} in {seconds:.0f} s")
  assert np.all(np.isfinite(losses))
  assert np.mean(losses[-20:]) < 0.75 * np.mean(losses[:10])
  assert after > MIN_MIOU and after > before + 0.05
