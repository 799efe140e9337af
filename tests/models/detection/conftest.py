"""Helpers shared by the detection families' tests."""

import jax
import pytest
from jax.sharding import PartitionSpec as P


def _summed_losses(family, variables, batch, key, num_devices: int):
  """``(total, terms)`` of ``family.train_loss`` with the batch split over ``num_devices`` devices,
  each device's share ``psum``-med (what the training step adds up)."""

  def local(v, b):
    total, terms, _ = family.train_loss(v, b, rng=key, axis_name="data")
    return jax.lax.psum(total, "data"), jax.tree.map(lambda t: jax.lax.psum(t, "data"), terms)

  mesh = jax.make_mesh((num_devices,), ("data",), axis_types=(jax.sharding.AxisType.Auto,),
                       devices=jax.devices()[:num_devices])
  fn = jax.jit(jax.shard_map(local, mesh=mesh, in_specs=(P(), P("data")), out_specs=P(),
                             check_vma=False))
  return fn(variables, batch)


@pytest.fixture
def summed_losses():
  return _summed_losses


def _shapes_data(shapes_dir, **overrides):
  """``configs/common/base.py``'s data block on ``shapes_dir`` (128 px, flips, 8 boxes, ImageNet
  normalization) with batches of 8 (evaluation: 50) and ``overrides``."""
  import pathlib  # noqa: PLC0415
  import sys  # noqa: PLC0415

  root = str(pathlib.Path(__file__).resolve().parents[3])
  if root not in sys.path:
    sys.path.insert(0, root)  # configs/ is not an installed package
  from configs.common import base  # noqa: PLC0415

  data = base.base_config().data
  data.data_dir = str(shapes_dir)
  data.batch_size = 8
  data.eval_batch_size = 50
  for key, value in overrides.items():
    data[key] = value
  return data


@pytest.fixture
def shapes_data():
  return _shapes_data


def _run_learning(data, name, model, *, steps, lr, num_val=100, weight_decay=1e-4, warmup=None,
                  last=10):
  """Trains ``MODELS[name](model, 5)`` on the shapes ``data`` block (the ``shapes_data`` fixture;
  its batch size and proposals) for ``steps`` AdamW steps (``warmup`` steps of linear warm-up,
  default 10%, then cosine decay); VOC mAP@0.5 on the first ``num_val`` validation images (whole
  eval batches; None: all of them) before and after. Returns (and prints) ``{"loss_first",
  "loss_last"`` (means of the first 10 / last ``last`` steps), ``"map_untrained", "map_trained",
  "wall_s", "cpu_s"}``."""
  import time  # noqa: PLC0415

  import numpy as np  # noqa: PLC0415
  import optax  # noqa: PLC0415

  from jaxvision.data import builder  # noqa: PLC0415
  from jaxvision.eval.voc import VocEvaluator  # noqa: PLC0415
  from jaxvision.models import MODELS  # noqa: PLC0415

  start, cpu_start = time.time(), time.process_time()
  train = builder.make_split(data, train=True)
  val = builder.make_split(data, train=False)
  num_batches = len(val) if num_val is None else max(num_val // int(data.eval_batch_size), 1)
  val = [val[i] for i in range(min(len(val), num_batches))]
  family = MODELS[name](model, 5)
  predict = jax.jit(family.predict)

  def voc_map(variables):
    ev = VocEvaluator(5)
    for batch in val:
      p = jax.device_get(predict(variables, batch))
      ev.update(p["boxes"], p["scores"], p["labels"], batch["boxes"], batch["labels"],
                valid=p["valid"], gt_valid=batch["box_valid"])
    return float(ev.result()["mAP"])

  variables = jax.jit(family.init)(jax.random.PRNGKey(0), val[0])
  untrained = voc_map(variables)
  warmup = max(steps // 10, 1) if warmup is None else warmup
  tx = optax.adamw(optax.warmup_cosine_decay_schedule(0.0, lr, warmup, steps),
                   weight_decay=weight_decay)
  params, rest = variables["params"], {k: v for k, v in variables.items() if k != "params"}
  opt_state = tx.init(params)

  @jax.jit
  def step(params, rest, opt_state, batch, key):
    def loss_fn(p):
      total, _, mutated = family.train_loss({"params": p, **rest}, batch, rng=key)
      return total, mutated
    (total, mutated), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), {**rest, **mutated}, opt_state, total

  losses = []
  for i in range(steps):
    params, rest, opt_state, total = step(params, rest, opt_state, train[i], jax.random.PRNGKey(i))
    losses.append(float(total))
  trained = voc_map({"params": params, **rest})
  result = {"loss_first": float(np.mean(losses[:10])), "loss_last": float(np.mean(losses[-last:])),
            "map_untrained": untrained, "map_trained": trained, "wall_s": time.time() - start,
            "cpu_s": time.process_time() - cpu_start}
  print(result)
  return result


@pytest.fixture
def run_learning():
  """``_run_learning``: a short AdamW training run on shapes with VOC mAP before and after."""
  return _run_learning
