"""SSD family: heads and default boxes, family contract, static shapes, bad input, SSD300 shapes
(eval_shape), and learning tests on shapes with and without hard negative mining (slow)."""

from __future__ import annotations

import importlib.util
import pathlib
import time

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxvision.models import MODELS
from jaxvision.models.detection import ssd
from jaxvision.ops import anchors

TINY = {"preset": None, "backbone": "tiny", "widths": (4, 8, 8, 16), "depth": 1, "norm": "batch",
        "feature_sources": ("s8", "s16"), "extra_widths": (16,), "aspect_ratios": ((2,), (2, 3), (2,)),
        "s_min": 0.2, "s_max": 0.6, "max_detections": 50}


def _helpers():
  """The shared batch and learning helpers of test_yolo.py (tests are not a package)."""
  path = pathlib.Path(__file__).with_name("test_yolo.py")
  spec = importlib.util.spec_from_file_location("_detection_test_yolo", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


H = _helpers()


@pytest.fixture(scope="module")
def tiny():
  family = MODELS["ssd"](TINY, 3)
  batch = H._batch()
  variables = jax.jit(lambda k: family.init_variables(k, batch))(jax.random.key(0, impl="rbg"))
  return family, variables


@pytest.mark.slow
def test_heads_line_up_with_default_boxes(tiny):
  family, variables = tiny
  out = family.module.apply(variables, jnp.zeros((2, 64, 64, 3)), train=False)
  shapes = [c.shape for c in out["cls_logits"]]
  assert shapes == [(2, 8, 8, 4, 4), (2, 4, 4, 6, 4), (2, 2, 2, 4, 4)]
  assert [d.shape[:4] for d in out["box_deltas"]] == [s[:4] for s in shapes]
  priors = ssd.default_boxes_for([(8, 8), (4, 4), (2, 2)], (64, 64), ((2,), (2, 3), (2,)),
                                 s_min=0.2, s_max=0.6)
  assert priors.shape == (8 * 8 * 4 + 4 * 4 * 6 + 2 * 2 * 4, 4)
  np.testing.assert_allclose(
      priors, np.asarray(anchors.ssd_default_boxes([8, 4, 2], (64, 64), ((2,), (2, 3), (2,)),
                                                   s_min=0.2, s_max=0.6)))


def test_l2norm():
  x = jnp.asarray(np.random.default_rng(0).normal(size=(1, 2, 2, 5)), jnp.float32)
  variables = ssd.L2Norm().init(jax.random.PRNGKey(0), x)
  y = ssd.L2Norm().apply(variables, x)
  np.testing.assert_allclose(np.linalg.norm(np.asarray(y), axis=-1), 20.0, rtol=1e-5)


@pytest.mark.slow
def test_predict_contract(tiny):
  family, variables = tiny
  preds = jax.jit(family.predict)(variables, H._batch())
  chex.assert_shape(preds["boxes"], (2, 50, 4))
  chex.assert_shape([preds["scores"], preds["labels"], preds["valid"]], (2, 50))
  v = np.asarray(preds["valid"])
  labels = np.asarray(preds["labels"])
  assert v.any() and np.all((labels[v] >= 1) & (labels[v] <= 3)) and np.all(labels[~v] == 0)


@pytest.mark.slow
def test_loss_normalized_by_positives(tiny):
  family, variables = tiny
  batch = H._batch(n_valid=3)
  loss, terms, mutated = jax.jit(lambda v: family.train_loss(v, batch, rng=jax.random.PRNGKey(0),
                                                             step=0))(variables)
  assert "batch_stats" in mutated
  n = float(terms["num_positives"])
  assert n >= 6  # every valid gt gets at least its best default box
  assert float(terms["num_negatives"]) == min(3 * n, 2 * 368 - n)
  np.testing.assert_allclose(float(loss), float(terms["conf"] + terms["loc"]), rtol=1e-6)
  # Turning mining off trains on every negative: a larger confidence sum, same normalizer.
  off = MODELS["ssd"](dict(TINY, hard_negative_mining=False), 3)
  _, terms_off, _ = jax.jit(lambda v: off.train_loss(v, batch, rng=jax.random.PRNGKey(0),
                                                      step=0))(variables)
  assert float(terms_off["num_negatives"]) == 2 * 368 - n
  assert float(terms_off["conf"]) > float(terms["conf"])
  assert float(terms_off["loc"]) == pytest.approx(float(terms["loc"]), rel=1e-6)


@pytest.mark.slow
def test_no_recompilation_as_gt_count_varies(tiny):
  family, variables = tiny

  @jax.jit
  @chex.assert_max_traces(n=1)
  def loss_and_grad(v, batch):
    return jax.value_and_grad(
        lambda p: family.train_loss({**v, "params": p}, batch, rng=jax.random.PRNGKey(0),
                                    step=jnp.int32(0))[0])(v["params"])

  chex.clear_trace_counter()
  for n in range(0, 5):
    loss, grads = loss_and_grad(variables, H._batch(n_valid=n, seed=n))
    assert np.isfinite(float(loss)) and (n > 0 or float(loss) == 0.0)
    assert all(np.all(np.isfinite(np.asarray(g))) for g in jax.tree.leaves(grads))


@pytest.mark.slow
def test_bad_input_gives_finite_loss(tiny):
  family, variables = tiny
  batch = H._batch(m=4)
  batch["boxes"] = np.array([[[0, 0, 64, 64], [48, 48, 64, 64], [60, 0, 64, 4], [10, 10, 10, 30]],
                             [[5, 5, 5.01, 5.01], [30, 30, 20, 20], [0, 0, 0, 0], [63.9, 63.9, 64, 64]]],
                            np.float32)
  batch["box_valid"] = np.ones((2, 4), bool)
  batch["labels"] = np.ones((2, 4), np.int32)
  (loss, terms), grads = jax.jit(jax.value_and_grad(
      lambda p: family.train_loss({**variables, "params": p}, batch, rng=jax.random.PRNGKey(0),
                                  step=0)[:2], has_aux=True))(variables["params"])
  assert np.isfinite(float(loss)) and float(loss) > 0
  assert all(np.all(np.isfinite(np.asarray(g))) for g in jax.tree.leaves(grads))
  assert float(terms["num_positives"]) >= 5  # the degenerate (zero/negative size) boxes match nothing


def test_config_errors():
  with pytest.raises(ValueError, match="neg_pos_ration"):
    MODELS["ssd"]({"neg_pos_ration": 3}, 3)
  with pytest.raises(ValueError, match="preset"):
    MODELS["ssd"]({"preset": "ssd512"}, 3)
  family = MODELS["ssd"](dict(TINY, aspect_ratios=((2,), (2,))), 3)
  with pytest.raises(ValueError, match="boxes_per_location"):
    family.init_variables(jax.random.PRNGKey(0), H._batch())


def test_ssd300_shapes():
  """SSD300 (VGG-16, 300 x 300, 21 classes): 8732 default boxes, traced only (eval_shape)."""
  family = MODELS["ssd"]({}, 20)
  batch = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), H._batch(b=1, size=300))
  variables = jax.eval_shape(lambda b: family.init_variables(jax.random.PRNGKey(0), b), batch)
  out = jax.eval_shape(lambda v, b: family.module.apply(v, b["image"], train=False), variables,
                       batch)
  shapes = [c.shape[1:] for c in out["cls_logits"]]
  assert shapes == [(38, 38, 4, 21), (19, 19, 6, 21), (10, 10, 6, 21), (5, 5, 6, 21), (3, 3, 4, 21),
                    (1, 1, 4, 21)]
  assert sum(int(np.prod(s[:3])) for s in shapes) == 8732
  assert "conv4_3_l2norm" in variables["params"]
  n = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(variables["params"]))
  assert 26.0e6 < n < 26.6e6  # torchvision's ssd300_vgg16 with 21 classes: 26.29 M
  loss = jax.eval_shape(lambda v, b: family.train_loss(v, b, rng=jax.random.PRNGKey(0), step=0)[0],
                        variables, batch)
  preds = jax.eval_shape(family.predict, variables, batch)
  assert loss.shape == () and preds["boxes"].shape == (1, 200, 4)
  priors = ssd.default_boxes_for([s[:2] for s in shapes], (300, 300), anchors.SSD300_ASPECT_RATIOS,
                                 scales=ssd.SSD300_SCALES, steps=ssd.SSD300_STEPS)
  assert priors.shape == (8732, 4)
  # conv4_3's smallest box: 0.1 * 300 = 30 px centred at (4, 4) (Caffe step 8).
  np.testing.assert_allclose(priors[0], [4 - 15, 4 - 15, 4 + 15, 4 + 15], atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("mining", [True, False])
def test_ssd_learns_shapes(mining):
  config = H._config("ssd_shapes")
  config.model.hard_negative_mining = mining
  t0 = time.time()
  first, last, map0, map1 = H.learn_shapes(config, steps=300)
  print(f"ssd (mining={mining}): loss {first:.3f} -> {last:.3f}, mAP@0.5 {map0:.4f} -> "
        f"{map1:.4f}, {time.time() - t0:.0f} s")
  # Measured (300 steps, shared 2-core CPU at load ~5-10): mining on: loss 15.3 -> 4.2, mAP 0.000
  # -> 0.243 (101 s); mining off: loss 161 -> 4.0, mAP 0.000 -> 0.307 (99 s).
  assert last < 0.6 * first
  assert map0 < 0.02
  assert map1 > 0.15
