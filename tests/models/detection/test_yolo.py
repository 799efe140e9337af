"""YOLO v1 / YOLOv2 families: modules, passthrough, family contract, static shapes, bad input,
full-size shapes (eval_shape) and a learning test on shapes (slow)."""

from __future__ import annotations

import time

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxvision.models import MODELS
from jaxvision.models.detection import yolo

TINY_V1 = {"backbone": "tiny", "widths": (4, 8, 8, 16), "depth": 1, "norm": "batch", "grid_size": 4,
           "hidden": 16, "dropout_rate": 0.0}
TINY_V2 = {"backbone": "tiny", "widths": (4, 8, 8, 16), "depth": 1, "head_width": 16,
           "passthrough_width": 4, "priors": ((1.0, 1.0), (2.0, 2.0), (3.0, 1.5))}


def _batch(b=2, size=64, m=4, n_valid=None, seed=0):
  rng = np.random.default_rng(seed)
  xy = rng.uniform(0, size * 0.7, (b, m, 2))
  wh = rng.uniform(4, size * 0.4, (b, m, 2))
  boxes = np.concatenate([xy, np.minimum(xy + wh, size)], -1).astype(np.float32)
  if n_valid is None:
    valid = rng.uniform(size=(b, m)) < 0.7
  else:
    valid = np.arange(m)[None, :] < n_valid
    valid = np.broadcast_to(valid, (b, m)).copy()
  return {"image": rng.normal(size=(b, size, size, 3)).astype(np.float32),
          "boxes": np.where(valid[..., None], boxes, 0).astype(np.float32),
          "labels": np.where(valid, rng.integers(1, 4, (b, m)), 0).astype(np.int32),
          "box_valid": valid, "image_hw": np.full((b, 2), size, np.int32),
          "example_valid": np.ones((b,), bool)}


@pytest.fixture(scope="module", params=["yolo_v1", "yolo_v2"])
def tiny(request):
  cfg = TINY_V1 if request.param == "yolo_v1" else TINY_V2
  family = MODELS[request.param](cfg, 3)
  batch = _batch()
  variables = jax.jit(lambda k: family.init_variables(k, batch))(jax.random.key(0, impl="rbg"))
  return request.param, family, variables


def test_space_to_depth_matches_numpy():
  x = np.arange(2 * 4 * 6 * 3, dtype=np.float32).reshape(2, 4, 6, 3)
  got = np.asarray(yolo.space_to_depth(jnp.asarray(x), 2))
  assert got.shape == (2, 2, 3, 12)
  for i in range(2):
    for j in range(3):
      block = x[:, 2 * i:2 * i + 2, 2 * j:2 * j + 2, :]  # (B, 2, 2, C): rows, cols, channels
      np.testing.assert_array_equal(got[:, i, j], block.reshape(2, 12))
  with pytest.raises(ValueError, match="divisible"):
    yolo.space_to_depth(jnp.zeros((1, 3, 4, 1)), 2)


@pytest.mark.slow
def test_output_shapes(tiny):
  name, family, variables = tiny
  out = family.module.apply(variables, jnp.zeros((2, 64, 64, 3)), train=False)
  expected = (2, 4, 4, 5 * 2 + 3) if name == "yolo_v1" else (2, 4, 4, 3, 5 + 3)
  assert out["pred"].shape == expected
  if name == "yolo_v2":  # fully convolutional: any multiple of the stride (multi-scale training)
    out = family.module.apply(variables, jnp.zeros((1, 96, 80, 3)), train=False)
    assert out["pred"].shape == (1, 6, 5, 3, 8)


@pytest.mark.slow
def test_predict_contract(tiny):
  _, family, variables = tiny
  preds = jax.jit(family.predict)(variables, _batch())
  chex.assert_shape(preds["boxes"], (2, 100, 4))
  chex.assert_shape([preds["scores"], preds["labels"], preds["valid"]], (2, 100))
  assert preds["labels"].dtype == jnp.int32 and preds["valid"].dtype == jnp.bool_
  v = np.asarray(preds["valid"])
  labels = np.asarray(preds["labels"])
  assert v.any()
  assert np.all((labels[v] >= 1) & (labels[v] <= 3)) and np.all(labels[~v] == 0)
  boxes = np.asarray(preds["boxes"])[v]
  assert np.all(boxes >= 0) and np.all(boxes <= 64)  # clipped to image_hw
  assert np.all(np.diff(np.asarray(preds["scores"])[0][v[0]]) <= 0)  # sorted by score


@pytest.mark.slow
def test_no_recompilation_as_gt_count_varies(tiny):
  _, family, variables = tiny

  @jax.jit
  @chex.assert_max_traces(n=1)
  def loss_and_grad(v, batch):
    return jax.value_and_grad(
        lambda p: family.train_loss({**v, "params": p}, batch, rng=jax.random.PRNGKey(0),
                                    step=jnp.int32(3))[0])(v["params"])

  chex.clear_trace_counter()
  for n in range(0, 5):  # 0..max_boxes valid gt boxes, same shapes
    loss, grads = loss_and_grad(variables, _batch(n_valid=n, seed=n))
    assert np.isfinite(float(loss))
    assert all(np.all(np.isfinite(np.asarray(g))) for g in jax.tree.leaves(grads))


@pytest.mark.slow
def test_bad_input_gives_finite_loss(tiny):
  _, family, variables = tiny
  batch = _batch(m=4)
  batch["boxes"] = np.array([[[0, 0, 64, 64], [48, 48, 64, 64], [60, 0, 64, 4], [10, 10, 10, 30]],
                             [[5, 5, 5.01, 5.01], [30, 30, 20, 20], [0, 0, 0, 0], [63.9, 63.9, 64, 64]]],
                            np.float32)
  batch["box_valid"] = np.ones((2, 4), bool)
  batch["labels"] = np.ones((2, 4), np.int32)
  empty = dict(batch, box_valid=np.zeros((2, 4), bool))
  for b in (batch, empty):
    (loss, terms), grads = jax.jit(jax.value_and_grad(
        lambda p, b=b: family.train_loss({**variables, "params": p}, b, rng=jax.random.PRNGKey(0),
                                         step=0)[:2], has_aux=True))(variables["params"])
    assert np.isfinite(float(loss)) and float(loss) > 0
    assert all(np.isfinite(float(v)) for v in terms.values())
    assert all(np.all(np.isfinite(np.asarray(g))) for g in jax.tree.leaves(grads))
  _, terms, _ = jax.jit(lambda v: family.train_loss(v, empty, rng=jax.random.PRNGKey(0),
                                                    step=0))(variables)
  assert float(terms["num_objects"]) == 0.0


def test_config_errors():
  with pytest.raises(ValueError, match="lambda_cord"):
    MODELS["yolo_v1"]({"lambda_cord": 5.0}, 3)
  with pytest.raises(ValueError, match="priors"):
    MODELS["yolo_v2"]({"priors": ((1.0,), (2.0,))}, 3)
  with pytest.raises(ValueError, match="grid_size"):
    family = MODELS["yolo_v1"](dict(TINY_V1, head="conv", grid_size=7), 3)
    family.init_variables(jax.random.PRNGKey(0), _batch())


def _eval_shapes(family, size, b=1):
  batch = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), _batch(b=b, size=size))
  variables = jax.eval_shape(lambda bt: family.init_variables(jax.random.PRNGKey(0), bt), batch)
  out = jax.eval_shape(lambda v, bt: family.module.apply(v, bt["image"], train=False), variables,
                       batch)
  loss = jax.eval_shape(lambda v, bt: family.train_loss(v, bt, rng=jax.random.PRNGKey(0),
                                                        step=jnp.int32(0))[0], variables, batch)
  preds = jax.eval_shape(family.predict, variables, batch)
  n = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(variables["params"]))
  return out["pred"].shape, loss.shape, preds["boxes"].shape, n


def test_paper_yolo_v1_shapes():
  # 448 x 448 -> 7 x 7 x 30 for VOC (S = 7, B = 2, C = 20), the paper's Fig. 3 network.
  shape, loss, boxes, n = _eval_shapes(MODELS["yolo_v1"]({}, 20), 448)
  assert shape == (1, 7, 7, 30) and loss == () and boxes == (1, 100, 4)
  # 24 convs (60.1 M) + FC 7*7*1024 x 4096 (205.5 M) + FC 4096 x 1470 (6.0 M)
  assert 271e6 < n < 272.5e6


def test_paper_yolo_v2_shapes():
  # Darknet-19 + detection head at 416 px -> 13 x 13 x 5 x 25 (VOC: 5 priors, 20 classes).
  shape, loss, boxes, n = _eval_shapes(MODELS["yolo_v2"]({}, 20), 416)
  assert shape == (1, 13, 13, 5, 25) and loss == () and boxes == (1, 100, 4)
  assert 45e6 < n < 55e6  # Darknet's yolo-voc.cfg has ~50.6 M weights


# ------------------------------------------------------------------------------------------------
# Learning test
# ------------------------------------------------------------------------------------------------


def _shapes_batches(config, steps):
  from jaxvision.data import builder, pipeline, shapes  # noqa: PLC0415

  data_dir = shapes.default_data_dir()
  shapes.prepare_shapes(data_dir, splits=["train", "validation"])
  train_src, _ = pipeline.shapes_source("train", data_dir)
  val_src, _ = pipeline.shapes_source("validation", data_dir)
  train = pipeline.make_dataset(train_src, batch_size=config.data.batch_size,
                                decode=pipeline.decode_shapes,
                                transform=builder.make_transform(config.data, train=True),
                                train=True, seed=0)
  val = pipeline.make_dataset(val_src, batch_size=50, decode=pipeline.decode_shapes,
                              transform=builder.make_transform(config.data, train=False),
                              train=False)
  return [train[i] for i in range(steps)], [val[i] for i in range(len(val))]


def learn_shapes(config, steps):
  """Trains ``config``'s family for ``steps`` on one device with the config's optimizer (schedule
  over ``steps``); returns the mean loss of the first and last 10 steps and the validation mAP@0.5
  before and after training."""
  from jaxvision.eval.voc import evaluate_voc  # noqa: PLC0415
  from jaxvision.train import loop  # noqa: PLC0415
  from jaxvision.train import optim  # noqa: PLC0415

  config.model.axis_name = None
  _, family = loop.build_family(config)
  train, val = _shapes_batches(config, steps)
  variables = jax.jit(lambda k: family.init_variables(k, train[0]))(jax.random.PRNGKey(0))
  params, rest = variables["params"], {k: v for k, v in variables.items() if k != "params"}
  tx = optim.make_optimizer(config.optim, steps)
  opt_state = tx.init(params)

  @jax.jit
  def step(params, rest, opt_state, batch, i):
    def f(p):
      loss, _, mutated = family.train_loss({"params": p, **rest}, batch, rng=jax.random.PRNGKey(0),
                                           step=i)
      return loss, mutated
    (loss, mutated), grads = jax.value_and_grad(f, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), {**rest, **mutated}, opt_state, loss

  predict = jax.jit(family.predict)

  def mean_ap(params, rest):
    dets, gts = [], []
    for batch in val:
      p = predict({"params": params, **rest}, batch)
      dets.append({k: np.asarray(v) for k, v in p.items()})
      gts.append(batch)
    cat = lambda xs, k: np.concatenate([x[k] for x in xs])  # noqa: E731
    return evaluate_voc(cat(dets, "boxes"), cat(dets, "scores"), cat(dets, "labels"),
                        cat(gts, "boxes"), cat(gts, "labels"), valid=cat(dets, "valid"),
                        gt_valid=cat(gts, "box_valid"), num_classes=5)["mAP"]

  map0 = mean_ap(params, rest)
  losses = []
  for i, batch in enumerate(train):
    params, rest, opt_state, loss = step(params, rest, opt_state, batch, jnp.int32(i))
    losses.append(float(loss))
  return np.mean(losses[:10]), np.mean(losses[-10:]), map0, mean_ap(params, rest)


def _config(name):
  import importlib.util  # noqa: PLC0415
  import pathlib  # noqa: PLC0415
  import sys  # noqa: PLC0415

  root = pathlib.Path(__file__).resolve().parents[3]
  if str(root) not in sys.path:
    sys.path.insert(0, str(root))
  spec = importlib.util.spec_from_file_location(name, root / "configs" / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


@pytest.mark.slow
@pytest.mark.parametrize("name", ["yolo_v1", "yolo_v2"])
def test_yolo_learns_shapes(name):
  config = _config(f"{name}_shapes")  # YOLOv2 at one size (multi-scale is off in the CPU config)
  t0 = time.time()
  first, last, map0, map1 = learn_shapes(config, steps=300)
  print(f"{name}: loss {first:.3f} -> {last:.3f}, mAP@0.5 {map0:.4f} -> {map1:.4f}, "
        f"{time.time() - t0:.0f} s")
  # Measured (300 steps, shared 2-core CPU at load ~5-10): YOLO v1 loss 84.5 -> 4.9, mAP 0.000 ->
  # 0.105 (192 s); YOLOv2 loss 93.7 -> 9.3, mAP 0.002 -> 0.166 (93 s).
  assert last < 0.6 * first
  assert map0 < 0.02
  assert map1 > (0.05 if name == "yolo_v1" else 0.1)
