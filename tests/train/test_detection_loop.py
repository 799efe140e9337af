"""The training loop with a detection family: the train step compiles once whatever the number of
ground-truth boxes, evaluation gives VOC and COCO AP, EMA parameters are kept and restored.

The family here is a deliberately small toy (a conv net regressing D boxes and their classes) so the
test exercises the loop's detection path, not a detector.
"""

import pathlib
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxvision import models
from jaxvision.models.family import Family
from jaxvision.train import loop, parallel

ROOT = pathlib.Path(__file__).resolve().parents[2]
D = 4


class _ToyDetector(nn.Module):
  num_classes: int

  @nn.compact
  def __call__(self, x, train: bool = False):
    del train
    h, w = x.shape[1:3]
    y = nn.relu(nn.Conv(8, (3, 3), strides=(4, 4))(x))
    y = jnp.mean(y, axis=(1, 2))
    boxes = nn.sigmoid(nn.Dense(D * 4)(y)).reshape(-1, D, 4)
    lo = jnp.minimum(boxes[..., :2], boxes[..., 2:])
    hi = jnp.maximum(boxes[..., :2], boxes[..., 2:])
    boxes = jnp.concatenate([lo, hi], -1) * jnp.array([w, h, w, h], jnp.float32)
    logits = nn.Dense(D * self.num_classes)(y).reshape(-1, D, self.num_classes)
    return {"boxes": boxes, "logits": logits}


def make_toy(model_config, num_classes, traces=None):
  module = _ToyDetector(num_classes)

  def train_loss(variables, batch, *, rng, step=None, axis_name=None):
    del rng, step
    if traces is not None:
      traces.append(1)  # runs once per trace
    out = module.apply(variables, batch["image"], train=True)
    gt = batch["boxes"][:, :D]
    valid = batch["box_valid"][:, :D].astype(jnp.float32)
    labels = jnp.maximum(batch["labels"][:, :D] - 1, 0)
    n = jnp.sum(valid)
    if axis_name is not None:
      n = jax.lax.psum(n, axis_name)
    box_l1 = jnp.sum(jnp.abs(out["boxes"] - gt).sum(-1) * valid) / jnp.maximum(n, 1.0) / 128.0
    ce = -jnp.take_along_axis(jax.nn.log_softmax(out["logits"]), labels[..., None], -1)[..., 0]
    cls = jnp.sum(ce * valid) / jnp.maximum(n, 1.0)
    return box_l1 + cls, {"box_l1": box_l1, "cls": cls}, {}

  def predict(variables, batch):
    out = module.apply(variables, batch["image"], train=False)
    probs = jax.nn.softmax(out["logits"])
    return {"boxes": out["boxes"], "scores": jnp.max(probs, -1),
            "labels": jnp.argmax(probs, -1).astype(jnp.int32) + 1,
            "valid": jnp.ones(out["boxes"].shape[:2], bool)}

  return Family(module=module, task="detection", train_loss=train_loss, predict=predict,
                num_classes=num_classes)


def _config(data_dir, **eval_kw):
  if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
  from configs.common import base

  c = base.apply_smoke(base.base_config())
  c.task = "detection"
  c.model.name = "toy_det"
  c.data.data_dir = data_dir
  c.eval.best_metric = "mAP"
  c.optim.ema_decay = 0.9
  for k, v in eval_kw.items():
    c.eval[k] = v
  return c


def test_train_step_compiles_once_while_the_box_count_varies():
  traces = []
  family = make_toy(None, 5, traces)
  import optax

  tx = optax.adam(1e-3)
  batch = loop.example_batch(_config(None), 8)
  variables = family.init_variables(jax.random.PRNGKey(0), batch)
  state = loop.TrainState(step=jnp.int32(0), params=variables["params"], batch_stats={},
                          opt_state=tx.init(variables["params"]), ema_params={})
  runner = parallel.DataParallel(loop.make_train_step(family, tx), devices=jax.devices()[:2])
  state = runner.put_state(state)
  rng = np.random.default_rng(0)
  m = batch["boxes"].shape[1]
  for count in range(m + 1):  # 0 .. max_boxes valid boxes in every image
    b = dict(batch)
    xy = rng.uniform(0, 64, (8, m, 2)).astype(np.float32)
    b["boxes"] = np.concatenate([xy, xy + 32], -1)
    b["box_valid"] = np.arange(m)[None, :].repeat(8, 0) < count
    b["labels"] = np.where(b["box_valid"], 1 + np.arange(m)[None] % 5, 0).astype(np.int32)
    state, metrics = runner(state, runner.put_batch(b))
    assert np.isfinite(float(np.asarray(metrics["loss"]).reshape(-1)[0])), count
  assert len(traces) == 1


@pytest.mark.parametrize("metric", ["voc", "coco"])
def test_detection_train_evaluate_restore(tmp_path, monkeypatch, metric):
  monkeypatch.setitem(models.MODELS, "toy_det", make_toy)
  config = _config(str(tmp_path / "tfds"), metric=metric)
  config.eval.best_metric = "mAP" if metric == "voc" else "bbox/AP"
  result = loop.train_and_evaluate(config, str(tmp_path / "run"))
  key = config.eval.best_metric
  assert 0.0 <= result[key] <= 1.0
  if metric == "voc":
    from jaxvision.data.shapes_gen import SHAPES_CLASSES

    per_class = {k[3:] for k in result if k.startswith("ap/")}
    assert per_class and per_class <= set(SHAPES_CLASSES)
  restored = loop.evaluate(config, str(tmp_path / "run"))
  assert restored["step"] == config.train.steps
  np.testing.assert_allclose(restored[key], result[key], atol=1e-6)


def test_ema_params_are_averaged_and_used_for_eval(tmp_path, monkeypatch):
  monkeypatch.setitem(models.MODELS, "toy_det", make_toy)
  config = _config(str(tmp_path / "tfds"))
  config.optim.learning_rate = 1e-2
  config.optim.warmup_steps = 0
  loop.train_and_evaluate(config, str(tmp_path / "run"))
  from jaxvision.train.checkpoint import Checkpointer

  ck = Checkpointer(str(tmp_path / "run"))
  info, family = loop.build_family(config)
  template = loop._init_state(config, family, loop._setup(config, str(tmp_path / "x"))[2])
  state = loop._from_host(template, ck.restore_latest(loop._host(template))[0])
  ck.close()
  p = jax.tree.leaves(state.params)
  e = jax.tree.leaves(state.ema_params)
  assert len(p) == len(e) > 0
  # After 3 steps the average lags the parameters but is not equal to the initial values.
  init = jax.tree.leaves(template.params)
  assert any(not np.allclose(a, b) for a, b in zip(p, e))
  assert any(not np.allclose(a, b) for a, b in zip(init, e))
  assert float(loop.ema_decay_at(0, 0.9)) == pytest.approx(0.1)
  assert float(loop.ema_decay_at(10**6, 0.9)) == pytest.approx(0.9)


def test_predictor_maps_detections_back_to_original_pixels(tmp_path, monkeypatch):
  from jaxvision.predict import Predictor

  monkeypatch.setitem(models.MODELS, "toy_det", make_toy)
  config = _config(str(tmp_path / "tfds"))
  loop.train_and_evaluate(config, str(tmp_path / "run"))
  predictor = Predictor(config, loop.load_variables(config, str(tmp_path / "run")), batch_size=2)
  image = np.random.default_rng(0).integers(0, 255, (64, 256, 3), dtype=np.uint8)  # scale 0.5
  out = predictor([image])[0]
  ex = predictor.preprocess(image)
  assert float(ex["scale"]) == pytest.approx(0.5)
  batch = {k: v[None].repeat(2, 0) for k, v in ex.items()}
  raw = jax.device_get(jax.jit(predictor.family.predict)(predictor.variables, batch))
  np.testing.assert_allclose(out["boxes"], np.clip(raw["boxes"][0] / 0.5, 0, [256, 64, 256, 64]),
                             rtol=1e-5)
  assert out["class_names"] == [("circle", "square", "triangle", "star", "cross")[k - 1]
                                for k in raw["labels"][0]]
