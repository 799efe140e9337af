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

import dataclasses
import json
import logging
import os
import signal
import sys
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
from jaxvision.data import pipeline as data_pipeline
from jaxvision.train import checkpoint as ckpt_lib
from jaxvision.train import evaluators
from jaxvision.train import optim as optim_lib
from jaxvision.train import parallel

log = logging.getLogger(__name__)


TASKS = ("segmentation", "detection", "instance_segmentation")


class NonFiniteLossError(FloatingPointError):
  """The training loss became NaN or infinite."""


@flax.struct.dataclass
class TrainState:
  """Everything a step changes. ``ema_params`` is ``{}`` unless ``config.optim.ema_decay > 0``."""
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  ema_params: Any = dataclasses.field(default_factory=dict)

  def eval_params(self):
    """The parameters evaluation uses: the EMA when it is kept, else the trained ones."""
    return self.ema_params if self.ema_params else self.params


# ------------------------------------------------------------------------------------------------
# The per-device train step (every family)
# ------------------------------------------------------------------------------------------------


def _variables(params, batch_stats):
  return {"params": params, **({"batch_stats": batch_stats} if batch_stats else {})}


def ema_decay_at(step, decay: float):
  """The EMA decay at ``step``: ``min(decay, (1 + step) / (10 + step))`` (early averages stay fresh)."""
  step = jnp.asarray(step, jnp.float32)
  return jnp.minimum(decay, (1.0 + step) / (10.0 + step))


def make_train_step(family, tx, *, seed: int = 0, ema_decay: float = 0.0):
  """The per-device train step of ``family`` (``jaxvision.models.family.Family``).

  ``family.train_loss`` returns this device's share of the global loss (local sum / ``psum``-ed
  normalizer), so the ``psum`` of the per-device losses and gradients is the global loss and its
  gradient whatever the number of devices. The step's random key is derived from ``seed``, the step
  and the device's position on the ``data`` axis.
  """
  base = jax.random.PRNGKey(seed)

  def step(state: TrainState, batch):
    rng = jax.random.fold_in(jax.random.fold_in(base, state.step), jax.lax.axis_index(parallel.AXIS))

    def loss_fn(params):
      loss, terms, mutated = family.train_loss(_variables(params, state.batch_stats), batch,
                                               rng=rng, step=state.step, axis_name=parallel.AXIS)
      return loss, (terms, mutated)

    (loss, (terms, mutated)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    grads = jax.lax.psum(grads, parallel.AXIS)
    updates_opt, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates_opt)
    ema = state.ema_params
    if ema_decay > 0:
      d = ema_decay_at(state.step, ema_decay)
      ema = jax.tree.map(lambda e, p: d * e + (1.0 - d) * p, ema, params)
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                              batch_stats=mutated.get("batch_stats", state.batch_stats),
                              ema_params=ema)
    metrics = parallel.psum_metrics({"loss": loss, **terms})
    metrics["grad_norm"] = optax.tree.norm(grads)
    return new_state, metrics

  return step


def make_segmentation_train_step(family, tx):
  """Kept for callers of the first release: ``make_train_step`` for a segmentation family."""
  return make_train_step(family, tx)


# ------------------------------------------------------------------------------------------------
# Setup shared by train and eval
# ------------------------------------------------------------------------------------------------


def build_family(config: ml_collections.ConfigDict):
  """``(info, family)`` for ``config``: the dataset's ``DatasetInfo`` and the model family."""
  if config.task not in TASKS:
    raise ValueError(f"config.task must be one of {TASKS}, got {config.task!r}.")
  if config.model.name not in models.MODELS:
    raise ValueError(f"config.model.name {config.model.name!r} is unknown; available: "
                     f"{sorted(models.MODELS)}.")
  info = data_builder.dataset_info(config.data)
  num_classes = info.num_seg_classes if config.task == "segmentation" else info.num_classes
  family = models.MODELS[config.model.name](config.model, num_classes)
  if family.task != config.task:
    raise ValueError(f"config.task is {config.task!r} but model {config.model.name!r} is a "
                     f"{family.task!r} family; set config.task = {family.task!r}.")
  return info, family


def _setup(config: ml_collections.ConfigDict, workdir: str):
  info, family = build_family(config)
  make_tx = family.make_optimizer or optim_lib.make_optimizer
  tx = make_tx(config.optim, int(config.train.steps))
  ckpt = ckpt_lib.Checkpointer(workdir, keep=int(config.train.get("keep_checkpoints", 2)),
                               best_metric=config.eval.get("best_metric"),
                               best_mode=config.eval.get("best_mode", "max"))
  return info, family, tx, ckpt


def example_batch(config: ml_collections.ConfigDict, batch_size: int = 1) -> dict[str, np.ndarray]:
  """An all-padding batch with the contract's shapes for ``config`` (used to initialise models)."""
  h, w = (int(s) for s in config.data.image_size)
  m = int(config.data.max_boxes)
  s = int(config.data.get("mask_stride", 1))
  b = batch_size
  batch = {
      "image": np.zeros((b, h, w, 3), np.float32),
      "image_hw": np.tile(np.array([[h, w]], np.int32), (b, 1)),
      "orig_hw": np.tile(np.array([[h, w]], np.int32), (b, 1)),
      "scale": np.ones((b,), np.float32),
      "image_id": np.zeros((b,), np.int32),
      "example_valid": np.ones((b,), bool),
      "boxes": np.zeros((b, m, 4), np.float32),
      "labels": np.zeros((b, m), np.int32),
      "box_valid": np.zeros((b, m), bool),
      "is_crowd": np.zeros((b, m), bool),
      "difficult": np.zeros((b, m), bool),
      "segmentation": np.full((b, h, w), 255, np.int32),
      "num_dropped_boxes": np.zeros((b,), np.int32),
  }
  if config.data.get("keep_masks", False):
    batch["masks"] = np.zeros((b, m, h // s, w // s), bool)
  p = int(config.data.get("max_proposals", 0) or 0)
  if p:
    batch["proposals"] = np.zeros((b, p, 4), np.float32)
    batch["proposals_valid"] = np.zeros((b, p), bool)
  return batch


def _init_state(config, family, tx) -> TrainState:
  if config.get("init_from") and not os.path.exists(config.init_from):
    raise FileNotFoundError(
        f"config.init_from {config.init_from!r} does not exist: download the torchvision weights "
        "file once (the config's docstring says which and where), or point "
        "--config.init_from at your copy; --config.init_from='' starts from scratch.")
  dummy = example_batch(config)
  variables = jax.jit(lambda k: family.init_variables(k, dummy))(
      jax.random.PRNGKey(int(config.train.seed)))
  if config.get("init_from") and config.get("init_from_model"):
    # A torchvision whole-model file (e.g. fasterrcnn_resnet50_fpn_coco-*.pth), converted and
    # checked key by key; sub-trees named in init_from_skip (e.g. the class-specific predictor
    # when fine-tuning on other classes) keep their fresh initialisation.
    from jaxvision.weights import load_model_into  # noqa: PLC0415

    variables = load_model_into(variables, config.init_from, config.init_from_model,
                                skip=tuple(config.get("init_from_skip", ()) or ()))
  elif config.get("init_from"):
    # A torchvision backbone file (e.g. resnet50-*.pth), converted and loaded into the model's
    # backbone sub-tree before the optimizer state is made (jaxvision.weights).
    from jaxvision.weights import load_backbone_into  # noqa: PLC0415

    backbone = config.model.get("backbone", "vgg16")  # a name, or a section with a "name"
    backbone = backbone.get("name") if hasattr(backbone, "get") else backbone
    if not isinstance(backbone, str):
      raise ValueError("config.init_from needs config.model.backbone to be a backbone name or a "
                       f"section with a 'name' (resnet18/34/50/101, vgg16), got {backbone!r}.")
    variables = load_backbone_into(variables, config.init_from, backbone,
                                   at=config.get("init_from_at", "backbone"),
                                   prefix=config.get("init_from_prefix", ""))
  params = variables["params"]
  ema = jax.tree.map(jnp.copy, params) if float(config.optim.get("ema_decay", 0.0)) > 0 else {}
  return TrainState(step=jnp.asarray(0, jnp.int32), params=params,
                    batch_stats=variables.get("batch_stats", {}), opt_state=tx.init(params),
                    ema_params=ema)


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


def run_evaluation(config, state_on_devices, evaluation, eval_ds, info=None) -> dict[str, Any]:
  """One pass of ``evaluation`` (``jaxvision.train.evaluators``) over ``eval_ds``."""
  del config, info
  return evaluation(state_on_devices, eval_ds)


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
  if family.host_train is not None:
    ckpt.close()
    return family.host_train(config, workdir)
  total = int(config.train.steps)
  state = _init_state(config, family, tx)
  restored = ckpt.restore_latest(_host(state))
  start = 0
  if restored is not None:
    state, start = _from_host(state, restored[0]), int(restored[1])
    log.info("resumed from step %d in %s", start, workdir)
  train_runner = parallel.DataParallel(make_train_step(family, tx, seed=int(config.train.seed),
                                                       ema_decay=float(config.optim.get(
                                                           "ema_decay", 0.0))),
                                       parallelism=config.parallelism)
  evaluation = evaluators.make_evaluation(config, family, info)
  # Host batches come from grain (worker processes when config.data.worker_count > 0); the next
  # batches are transferred to the devices while the current step runs.
  train_batches = data_pipeline.prefetch_to_device(
      iter(data_builder.make_loader(config.data, train=True, start_step=start)),
      size=int(config.data.get("device_prefetch", 2)), put_fn=train_runner.put_batch,
      with_host=True)
  eval_ds = data_builder.make_loader(config.data, train=False)  # re-iterable: one pass per eval
  num_skipped_images = 0
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
      batch, device_batch = next(train_batches)
      state, metrics = train_runner(state, device_batch)
      num_skipped_images += int(np.sum(batch.get("num_skipped_images", 0)))
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
        host_metrics["num_skipped_images"] = num_skipped_images  # unreadable images so far
        host_metrics["learning_rate"] = float(optim_lib.learning_rate_schedule(config.optim,
                                                                               total)(step - 1))
        writer.write(step, "train", host_metrics)
      if step % eval_every == 0 or step == total:
        last_eval = evaluation(state, eval_ds)
        writer.write(step, "eval", last_eval)
        summary = " ".join(f"{k} {last_eval[k]:.4f}" for k in evaluation.summary_keys
                           if k in last_eval)
        progress.write(f"step {step}: eval {summary}")
        ckpt.save_best(step, _host(train_runner.get_state(state)), last_eval)
      if step % ckpt_every == 0 or step == total or stop["sigterm"]:
        ckpt.save(step, _host(train_runner.get_state(state)))
      if stop["sigterm"]:
        log.warning("SIGTERM: saved a checkpoint at step %d and stopping.", step)
        break
  finally:
    train_batches.close()  # stops grain worker processes
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
  evaluation = evaluators.make_evaluation(config, family, info)
  metrics = evaluation(evaluation.runner.put_state(state),
                       data_builder.make_loader(config.data, train=False))
  metrics["step"] = step
  return metrics


def load_variables(config: ml_collections.ConfigDict, workdir: str, *, which: str = "latest") -> dict:
  """The inference variables (EMA parameters when kept, and ``batch_stats``) of a run's checkpoint."""
  info, family, tx, ckpt = _setup(config, workdir)
  del info
  template = _init_state(config, family, tx)
  restored = ckpt.restore_best(_host(template)) if which == "best" else ckpt.restore_latest(
      _host(template))
  ckpt.close()
  if restored is None:
    raise FileNotFoundError(f"no {which} checkpoint in {workdir}: train first with "
                            f"`python train.py --config <config> --workdir {workdir}`.")
  state = _from_host(template, restored[0])
  return {"params": state.eval_params(),
          **({"batch_stats": state.batch_stats} if state.batch_stats else {})}


def _progress(total: int, start: int):
  from tqdm.auto import tqdm  # noqa: PLC0415

  # Redirected to a file (a batch job, CI), redraw at most every 30 s instead of ~10 times a second:
  # the bar stays readable in the log without flooding it.
  interactive = sys.stderr.isatty() or "ipykernel" in sys.modules
  return tqdm(total=total, initial=start, desc="train", unit="step", dynamic_ncols=True,
              mininterval=0.1 if interactive else 30.0, disable=jax.process_index() != 0)
