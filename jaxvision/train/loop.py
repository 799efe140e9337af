"""``train_and_evaluate(config, workdir)`` and ``evaluate(config, workdir)``: the training system.

One loop for every family; what differs between tasks lives in the family (module, loss,
post-processing) and in the task's step/eval functions below. The loop:

1. saves the resolved config to ``workdir/config.json``; builds the data (``jaxvision.data.builder``),
   the family (``jaxvision.models.MODELS``), the optimizer (``jaxvision.train.optim``);
2. initialises the state, or resumes it from the newest readable checkpoint in ``workdir`` (the data
   pipeline restarts exactly at the resumed step, so a killed and resumed run ends with the same
   parameters as an uninterrupted one);
3. runs the per-device train step under data parallelism (``jaxvision.train.parallel``), with a
   progress bar (step, loss, ETA), JSON-lines metrics in ``workdir/metrics.jsonl``, periodic
   evaluation with the task's metrics and periodic/best checkpoints;
4. stops cleanly on SIGTERM (saving a checkpoint first) and stops with a clear error on a non-finite
   loss, leaving the last good checkpoint in place.

Random numbers: the initial parameters come from ``config.train.seed``; augmentation randomness is
seeded per example in the data pipeline (position in the shuffled stream), so it does not depend on
the number of devices or workers.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import time
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from jaxvision import models
from jaxvision.data import builder as data_builder
from jaxvision.eval import segmentation as seg_metrics
from jaxvision.train import checkpoint as ckpt_lib
from jaxvision.train import optim as optim_lib
from jaxvision.train import parallel

log = logging.getLogger(__name__)


class NonFiniteLossError(FloatingPointError):
  """The training loss became NaN or infinite."""


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any


# ------------------------------------------------------------------------------------------------
# Per-device steps (semantic segmentation)
# ------------------------------------------------------------------------------------------------


def _variables(params, batch_stats):
  return {"params": params, **({"batch_stats": batch_stats} if batch_stats else {})}


def make_segmentation_train_step(family, tx):
  """The per-device train step: the loss is normalized by the global count of labelled pixels."""

  def step(state: TrainState, batch):
    def loss_fn(params):
      outputs, updates = family.module.apply(
          _variables(params, state.batch_stats), batch["image"], train=True, mutable=["batch_stats"])
      # Each device divides its local sum by the global normalizer, so the psum of the per-device
      # losses (and of their gradients) is the global mean, whatever the number of devices.
      normalizer = jax.lax.psum(family.loss_normalizer(outputs, batch), parallel.AXIS)
      loss, terms = family.loss(outputs, batch, normalizer=normalizer)
      return loss, (terms, updates)

    (loss, (terms, updates)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    grads = jax.lax.psum(grads, parallel.AXIS)
    updates_opt, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates_opt)
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                              batch_stats=updates.get("batch_stats", state.batch_stats))
    metrics = parallel.psum_metrics({"loss": loss, **terms})
    metrics["grad_norm"] = optax.tree.norm(grads)
    return new_state, metrics

  return step


def _center_crop_to(labels, hw):
  h, w = labels.shape[1:3]
  top, left = (h - hw[0]) // 2, (w - hw[1]) // 2
  return labels[:, top:top + hw[0], left:left + hw[1]]


def make_segmentation_eval_step(family, num_classes: int, ignore_label: int):
  """The per-device eval step: a confusion matrix psum-ed over devices (padding examples ignored)."""

  def step(state: TrainState, batch):
    outputs = family.module.apply(_variables(state.params, state.batch_stats), batch["image"],
                                  train=False)
    preds = family.postprocess(outputs)  # (b, h, w)
    labels = _center_crop_to(batch["segmentation"], preds.shape[1:3])
    labels = jnp.where(batch["example_valid"][:, None, None], labels, ignore_label)
    cm = seg_metrics.confusion_matrix(labels, preds, num_classes, ignore_label=ignore_label)
    return state, jax.lax.psum(cm, parallel.AXIS)

  return step


# ------------------------------------------------------------------------------------------------
# Setup shared by train and eval
# ------------------------------------------------------------------------------------------------


def _setup(config: ml_collections.ConfigDict, workdir: str):
  if config.task != "segmentation":
    raise ValueError(f"config.task {config.task!r} is not supported yet; supported: 'segmentation'.")
  if config.model.name not in models.MODELS:
    raise ValueError(f"config.model.name {config.model.name!r} is unknown; available: "
                     f"{sorted(models.MODELS)}.")
  info = data_builder.dataset_info(config.data)
  family = models.MODELS[config.model.name](config.model, info.num_seg_classes)
  tx = optim_lib.make_optimizer(config.optim, int(config.train.steps))
  ckpt = ckpt_lib.Checkpointer(workdir, keep=int(config.train.get("keep_checkpoints", 2)),
                               best_metric=config.eval.get("best_metric"),
                               best_mode=config.eval.get("best_mode", "max"))
  return info, family, tx, ckpt


def _init_state(config, family, tx) -> TrainState:
  h, w = config.data.image_size
  dummy = jnp.zeros((1, h, w, 3), jnp.float32)
  variables = jax.jit(lambda k: family.module.init(k, dummy, train=False))(
      jax.random.PRNGKey(int(config.train.seed)))
  params = variables["params"]
  return TrainState(step=jnp.asarray(0, jnp.int32), params=params,
                    batch_stats=variables.get("batch_stats", {}), opt_state=tx.init(params))


def _host(state: TrainState) -> dict:
  """The checkpointed form of a state: a dict of NumPy arrays."""
  return jax.tree.map(np.asarray, flax.serialization.to_state_dict(jax.device_get(state)))


def _from_host(template: TrainState, restored: dict) -> TrainState:
  return flax.serialization.from_state_dict(template, restored)


class _MetricsWriter:
  """JSON lines in ``workdir/metrics.jsonl`` and TensorBoard events in ``workdir/tensorboard``.

  The event files are written by tensorboardX (protobuf only, no TensorFlow); view them with
  ``tensorboard --logdir <workdir>/tensorboard``. Only process 0 writes.
  """

  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, "metrics.jsonl")
    self._tb = None
    if jax.process_index() == 0:
      from tensorboardX import SummaryWriter  # noqa: PLC0415

      self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

  def write(self, step: int, split: str, metrics: dict[str, Any]) -> None:
    if jax.process_index() != 0:
      return
    row = {"step": int(step), "split": split, "time": time.time()}
    row.update({k: _jsonable(v) for k, v in metrics.items()})
    with open(self.path, "a") as f:
      f.write(json.dumps(row) + "\n")
    for k, v in metrics.items():
      if np.ndim(v) == 0:
        self._tb.add_scalar(f"{split}/{k}", float(np.asarray(v)), int(step))
    self._tb.flush()

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()


def _jsonable(v):
  v = np.asarray(v)
  return v.item() if v.ndim == 0 else v.tolist()


def run_evaluation(config, state_on_devices, eval_runner, eval_ds, info) -> dict[str, Any]:
  """Runs the eval step over one pass of ``eval_ds``; returns the segmentation metrics."""
  cm = np.zeros((info.num_seg_classes,) * 2, np.int64)
  for batch in eval_ds:
    _, batch_cm = eval_runner(state_on_devices, eval_runner.put_batch(batch))
    cm += np.asarray(jax.device_get(batch_cm)).reshape(-1, *cm.shape)[0]
  metrics = seg_metrics.segmentation_metrics(cm)
  out = {k: float(metrics[k]) for k in ("pixel_accuracy", "mean_accuracy", "mean_iou", "fw_iou",
                                        "dice")}
  for name, iou in zip(info.seg_class_names, np.asarray(metrics["per_class_iou"])):
    out[f"iou/{name}"] = float(iou)
  return out


# ------------------------------------------------------------------------------------------------
# Entry points
# ------------------------------------------------------------------------------------------------


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains ``config`` in ``workdir`` (resuming if it holds checkpoints); returns the last eval."""
  os.makedirs(workdir, exist_ok=True)
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json_best_effort(indent=2))
  info, family, tx, ckpt = _setup(config, workdir)
  total = int(config.train.steps)
  state = _init_state(config, family, tx)
  restored = ckpt.restore_latest(_host(state))
  start = 0
  if restored is not None:
    state, start = _from_host(state, restored[0]), int(restored[1])
    log.info("resumed from step %d in %s", start, workdir)
  train_runner = parallel.DataParallel(make_segmentation_train_step(family, tx),
                                       parallelism=config.parallelism)
  eval_runner = parallel.DataParallel(
      make_segmentation_eval_step(family, info.num_seg_classes, info.ignore_label),
      parallelism=config.parallelism, donate_state=False)
  train_ds = data_builder.make_split(config.data, train=True, start_step=start)
  eval_ds = data_builder.make_split(config.data, train=False)
  writer = _MetricsWriter(workdir)
  state = train_runner.put_state(state)

  stop = {"sigterm": False}
  previous = signal.signal(signal.SIGTERM, lambda *_: stop.update(sigterm=True))
  log_every = int(config.train.log_every)
  eval_every = int(config.train.eval_every)
  ckpt_every = int(config.train.checkpoint_every)
  last_eval: dict[str, Any] = {}
  progress = _progress(total, start)
  step = start
  try:
    for step in range(start + 1, total + 1):
      batch = train_ds[step - start - 1]
      state, metrics = train_runner(state, train_runner.put_batch(batch))
      loss = float(np.asarray(metrics["loss"]).reshape(-1)[0])
      if not np.isfinite(loss):
        raise NonFiniteLossError(
            f"the training loss is {loss} at step {step}; stopping. The last good checkpoint "
            f"(step {max(ckpt.all_steps(), default='none')}) is kept in {ckpt.directory}. Try a lower "
            "config.optim.learning_rate or config.optim.grad_clip_norm.")
      progress.update(1)
      progress.set_postfix(loss=f"{loss:.4f}")
      if step % log_every == 0 or step == total:
        host_metrics = {k: np.asarray(v).reshape(-1)[0] for k, v in metrics.items()}
        host_metrics["num_dropped_boxes"] = int(np.sum(batch.get("num_dropped_boxes", 0)))
        host_metrics["learning_rate"] = float(optim_lib.learning_rate_schedule(config.optim,
                                                                               total)(step - 1))
        writer.write(step, "train", host_metrics)
      if step % eval_every == 0 or step == total:
        last_eval = run_evaluation(config, state, eval_runner, eval_ds, info)
        writer.write(step, "eval", last_eval)
        progress.write(f"step {step}: eval mean_iou {last_eval['mean_iou']:.4f} "
                       f"pixel_accuracy {last_eval['pixel_accuracy']:.4f}")
        ckpt.save_best(step, _host(train_runner.get_state(state)), last_eval)
      if step % ckpt_every == 0 or step == total or stop["sigterm"]:
        ckpt.save(step, _host(train_runner.get_state(state)))
      if stop["sigterm"]:
        log.warning("SIGTERM: saved a checkpoint at step %d and stopping.", step)
        break
  finally:
    progress.close()
    writer.close()
    signal.signal(signal.SIGTERM, previous)
    ckpt.close()
  return last_eval


def evaluate(config: ml_collections.ConfigDict, workdir: str, *, which: str = "latest") -> dict:
  """Evaluates the ``latest`` (or ``best``) checkpoint in ``workdir`` on ``config.data.eval_split``."""
  info, family, tx, ckpt = _setup(config, workdir)
  template = _init_state(config, family, tx)
  restored = ckpt.restore_best(_host(template)) if which == "best" else ckpt.restore_latest(
      _host(template))
  ckpt.close()
  if restored is None:
    raise FileNotFoundError(f"no {which} checkpoint in {workdir}: train first with "
                            f"`python train.py --config <config> --workdir {workdir}`.")
  state, step = _from_host(template, restored[0]), int(restored[1])
  runner = parallel.DataParallel(
      make_segmentation_eval_step(family, info.num_seg_classes, info.ignore_label),
      parallelism=config.parallelism, donate_state=False)
  metrics = run_evaluation(config, runner.put_state(state), runner,
                           data_builder.make_split(config.data, train=False), info)
  metrics["step"] = step
  return metrics


def _progress(total: int, start: int):
  from tqdm.auto import tqdm  # noqa: PLC0415

  return tqdm(total=total, initial=start, desc="train", unit="step", dynamic_ncols=True,
              disable=jax.process_index() != 0)
