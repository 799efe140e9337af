"""The ``Family`` contract: what the training system needs from a model family.

``MODELS[name](config.model, num_classes) -> Family``. A family bundles the linen module with the
functions that turn a batch (DESIGN.md's batch contract) into a training loss and into predictions,
so one loop (``jaxvision.train.loop``) trains and evaluates every family, and research code can call
the same functions inside its own ``jit``/``grad``:

``train_loss(variables, batch, *, rng, step, axis_name=None) -> (loss, terms, mutated)``
    Runs on one device's slice of the batch, in training mode. ``variables`` is
    ``{"params": ..., "batch_stats": ...}`` (``batch_stats`` only if the module has it). ``rng`` is a
    key for dropout and sampling, ``step`` the int32 step counter (alternating schedules use it).
    ``loss`` is this device's *share* of the global loss: its local sum divided by the global
    normalizer, which the function reduces itself with ``lax.psum(..., axis_name)`` when
    ``axis_name`` is not None (number of labelled pixels, number of positive anchors, ...). The
    trainer sums ``loss``, ``terms`` and the gradients over devices, so the result is the global
    loss whatever the number of devices. ``terms`` maps names to scalars (each loss term, logged);
    ``mutated`` is the dict of updated collections (``{"batch_stats": ...}`` or ``{}``).

``predict(variables, batch) -> predictions`` (inference mode, inside jit, static shapes)
    * task ``"segmentation"``: ``{"segmentation": [B, h, w] int32}`` class ids; ``h, w`` may be
      smaller than the image (valid convolutions): labels are center-cropped to match.
    * task ``"detection"``: ``{"boxes" [B,D,4] xyxy in network-input pixels, "scores" [B,D],
      "labels" [B,D] int32 in 1..K, "valid" [B,D] bool}``.
    * task ``"instance_segmentation"``: the detection keys plus ``"masks" [B,D,H,W]`` (bool or
      float probabilities, pasted into the network input's frame).

``init(rng, batch) -> variables``
    Default: ``module.init(rng, batch["image"], train=False)``. Families whose ``__call__`` does not
    take just the image (two-stage detectors) supply their own.

Optional:
  ``make_optimizer(optim_config, total_steps) -> optax.GradientTransformation``: replaces
  ``jaxvision.train.optim.make_optimizer`` (e.g. a segmentor and a discriminator with two optax states
  through ``optax.multi_transform``).
  ``host_train(config, workdir) -> metrics``: families that are not one jitted step (HOG + SVM,
  R-CNN with selective search and cached features) train with their own host-side function.
  ``loss``, ``loss_normalizer``, ``postprocess``: the family's pieces on module outputs, for direct use.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

TASKS = ("segmentation", "detection", "instance_segmentation")


@dataclasses.dataclass(frozen=True)
class Family:
  """A model family: the module and the functions the trainer calls (see the module docstring)."""
  module: nn.Module
  task: str
  train_loss: Callable[..., tuple[jax.Array, dict[str, jax.Array], dict[str, Any]]]
  predict: Callable[[Mapping[str, Any], Mapping[str, Any]], dict[str, jax.Array]]
  init: Callable[[jax.Array, Mapping[str, Any]], dict[str, Any]] | None = None
  make_optimizer: Callable[..., Any] | None = None
  host_train: Callable[..., dict[str, Any]] | None = None
  loss: Callable[..., Any] | None = None
  loss_normalizer: Callable[..., Any] | None = None
  postprocess: Callable[..., Any] | None = None
  num_classes: int = 0

  def __post_init__(self):
    if self.task not in TASKS:
      raise ValueError(f"Family.task must be one of {TASKS}, got {self.task!r}.")

  def init_variables(self, rng: jax.Array, batch: Mapping[str, Any]) -> dict[str, Any]:
    """The module's initial variables for ``batch`` (any leading batch size)."""
    if self.init is not None:
      return self.init(rng, batch)
    return self.module.init(rng, batch["image"], train=False)


def split_variables(variables: Mapping[str, Any]) -> tuple[Any, Any]:
  """``(params, rest)``: the trainable ``params`` and the other collections (e.g. ``batch_stats``)."""
  rest = {k: v for k, v in variables.items() if k != "params"}
  return variables["params"], rest


def segmentation_family(module: nn.Module, *, num_classes: int, loss: Callable,
                        loss_normalizer: Callable, postprocess: Callable | None = None,
                        make_optimizer: Callable | None = None) -> Family:
  """A segmentation ``Family`` from the module-output pieces.

  Args:
    module: ``module.apply(variables, image, train=...)`` returns ``{"logits": [B,h,w,C], ...}``.
    num_classes: ``C``.
    loss: ``loss(outputs, batch, *, normalizer) -> (total, terms)`` with ``total`` = the summed
      per-pixel loss / ``normalizer``.
    loss_normalizer: ``loss_normalizer(outputs, batch) -> scalar``, the local normalizer (e.g. the
      number of labelled pixels); ``train_loss`` ``psum``s it over ``axis_name``.
    postprocess: ``postprocess(outputs) -> [B,h,w] int32`` (default: argmax of ``logits``).
    make_optimizer: optional optimizer override (see ``Family``).
  """
  if postprocess is None:
    def postprocess(outputs):
      return jnp.argmax(outputs["logits"], axis=-1).astype(jnp.int32)

  def train_loss(variables, batch, *, rng, step=None, axis_name=None):
    del step
    outputs, mutated = module.apply(variables, batch["image"], train=True,
                                    mutable=["batch_stats"], rngs={"dropout": rng})
    normalizer = loss_normalizer(outputs, batch)
    if axis_name is not None:
      normalizer = jax.lax.psum(normalizer, axis_name)
    total, terms = loss(outputs, batch, normalizer=normalizer)
    return total, terms, dict(mutated)

  def predict(variables, batch):
    outputs = module.apply(variables, batch["image"], train=False)
    return {"segmentation": postprocess(outputs)}

  return Family(module=module, task="segmentation", train_loss=train_loss, predict=predict,
                make_optimizer=make_optimizer, loss=loss, loss_normalizer=loss_normalizer,
                postprocess=postprocess, num_classes=num_classes)
