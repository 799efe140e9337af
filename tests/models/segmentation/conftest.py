"""Learning-test helpers shared by the segmentation families' tests (the ``shapes_dir`` fixture is
in ``tests/conftest.py``).

Two ways to train on shapes on one device, so a result does not depend on the 8 fake test devices:
``train_and_evaluate`` takes a family built in the test; ``train_on_shapes`` takes a config from
``configs/`` and uses its own data pipeline and optimizer (the pieces ``jaxvision.train.loop`` uses).
"""

from __future__ import annotations

import functools
import importlib
import pathlib
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[3]


def _train_and_evaluate(family, data_dir, *, steps, batch_size, image_size, learning_rate,
                       num_val=100):
  """Adam on the shapes train split at ``image_size``; ``(losses, val mIoU before, after)``."""
  from jaxvision.data import pipeline, transforms  # noqa: PLC0415
  from jaxvision.eval.segmentation import confusion_matrix, segmentation_metrics  # noqa: PLC0415

  def decode(record):
    return {"image": np.asarray(record["image"], np.uint8),
            "segmentation": np.asarray(record["segmentation"], np.int32)}

  resize = functools.partial(transforms.resize, target_hw=image_size)
  train_source, info = pipeline.shapes_source("train", data_dir=data_dir)
  val_source, _ = pipeline.shapes_source("validation", data_dir=data_dir)
  c = info.num_seg_classes
  train = pipeline.make_dataset(train_source, batch_size=batch_size, decode=decode, train=True,
                                transform=transforms.compose(transforms.random_horizontal_flip,
                                                             resize, transforms.normalize_image))
  val = pipeline.make_dataset(val_source, batch_size=num_val // 2, decode=decode, train=False,
                              transform=transforms.compose(resize, transforms.normalize_image))
  val = [val[i] for i in range(2)]
  variables = jax.jit(lambda k, x: family.init_variables(k, {"image": x}))(
      jax.random.key(0, impl="rbg"), jnp.zeros((1, *image_size, 3)))
  params, rest = variables["params"], {k: v for k, v in variables.items() if k != "params"}
  tx = optax.adam(learning_rate)
  opt_state = tx.init(params)

  @jax.jit
  def train_step(params, rest, opt_state, batch, step):
    def loss_fn(p):
      loss, _, mutated = family.train_loss({"params": p, **rest}, batch,
                                           rng=jax.random.fold_in(jax.random.key(1), step))
      return loss, mutated
    (loss, mutated), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), {**rest, **mutated}, opt_state, loss

  @jax.jit
  def eval_step(params, rest, batch):
    pred = family.predict({"params": params, **rest}, batch)["segmentation"]
    return confusion_matrix(batch["segmentation"], pred, c)

  def miou(params, rest):
    cm = sum(np.asarray(eval_step(params, rest, {k: b[k] for k in ("image", "segmentation")}),
                        np.int64) for b in val)
    return segmentation_metrics(cm)["mean_iou"]

  before = miou(params, rest)
  losses = []
  for i in range(steps):
    batch = {k: train[i][k] for k in ("image", "segmentation")}
    params, rest, opt_state, loss = train_step(params, rest, opt_state, batch, i)
    losses.append(float(loss))
  return np.asarray(losses), before, miou(params, rest)


def _load_config(name: str):
  if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
  return importlib.import_module(f"configs.{name}").get_config()


def _train_on_shapes(config, *, steps: int, batch_size: int, seed: int = 0):
  """Trains ``config``'s family on one device with its own loss, optimizer and data pipeline (the
  pieces ``jaxvision.train.loop`` uses, without its multi-device runner, so the result does not
  depend on the 8 fake test devices); returns (val mIoU before, after, train losses, seconds)."""
  from jaxvision.data import builder as data_builder  # noqa: PLC0415
  from jaxvision.eval.segmentation import confusion_matrix, segmentation_metrics  # noqa: PLC0415
  from jaxvision.train import loop, optim  # noqa: PLC0415

  config.data.batch_size = batch_size
  config.train.steps = steps
  config.optim.warmup_steps = min(int(config.optim.warmup_steps), steps // 10)
  config.model.axis_name = None  # one device: per-batch BatchNorm statistics
  info, family = loop.build_family(config)
  train_ds = data_builder.make_split(config.data, train=True)
  val_ds = data_builder.make_split(config.data, train=False)
  tx = (family.make_optimizer or optim.make_optimizer)(config.optim, steps)
  variables = jax.jit(family.init_variables)(jax.random.key(seed, impl="rbg"),
                                             {"image": jnp.asarray(train_ds[0]["image"])})
  params = variables["params"]
  rest = {k: v for k, v in variables.items() if k != "params"}
  opt_state = tx.init(params)

  @jax.jit
  def train_step(params, rest, opt_state, batch, step):
    def loss_fn(p):
      loss, _, mutated = family.train_loss({"params": p, **rest}, batch, rng=jax.random.key(step, impl="rbg"), step=step)
      return loss, mutated
    (loss, mutated), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), {**rest, **mutated}, opt_state, loss

  @jax.jit
  def eval_step(params, rest, batch):
    pred = family.predict({"params": params, **rest}, batch)["segmentation"]
    labels = jnp.where(batch["example_valid"][:, None, None], batch["segmentation"], 255)
    return confusion_matrix(labels, pred, info.num_seg_classes)

  def val_miou(params, rest):
    cm = sum(np.asarray(eval_step(params, rest, {k: val_ds[i][k] for k in
                                                ("image", "segmentation", "example_valid")}))
             for i in range(len(val_ds)))
    return float(segmentation_metrics(cm)["mean_iou"])

  start = time.time()
  before = val_miou(params, rest)
  losses = []
  for i in range(steps):
    batch = {k: train_ds[i][k] for k in ("image", "segmentation")}
    params, rest, opt_state, loss = train_step(params, rest, opt_state, batch, jnp.int32(i))
    losses.append(float(loss))
  after = val_miou(params, rest)
  return before, after, losses, time.time() - start


@pytest.fixture
def train_and_evaluate():
  return _train_and_evaluate


@pytest.fixture
def train_on_shapes():
  return _train_on_shapes


@pytest.fixture
def load_config():
  return _load_config
