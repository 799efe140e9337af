r"""Adversarial training of a segmentation network: Luc, Couprie, Chintala and Verbeek, "Semantic
Segmentation using Adversarial Networks", NIPS Workshop on Adversarial Training 2016
(https://arxiv.org/abs/1611.08408).

A segmentor :math:`s(x)` (here a same-padded U-Net, ``jaxvision.models.segmentation.unet.UNet``) and
a discriminator :math:`a(x, y)` that sees the image together with a label map and says whether the
label map is the ground truth (one-hot) or the segmentor's prediction (softmax). The hybrid
objective (paper Eq. 1; the lecture slides' formula)

.. math::
  \ell(\theta_s, \theta_a) = \sum_n \ell_{mce}(s(x_n), y_n)
    - \lambda \big[\ell_{bce}(a(x_n, y_n), 1) + \ell_{bce}(a(x_n, s(x_n)), 0)\big]

is minimised over the segmentor and maximised over the discriminator, by **alternating** updates:

* discriminator step: minimise :math:`\ell_{bce}(a(x, y), 1) + \ell_{bce}(a(x, s(x)), 0)`
  (``jaxvision.losses.discriminator_loss``), the segmentor fixed;
* segmentor step: minimise :math:`\ell_{mce}(s(x), y) + \lambda\, \ell_{adv}` with the paper's
  non-saturating :math:`\ell_{adv} = \ell_{bce}(a(x, s(x)), 1)` (``mode="nonsaturating"``, Sec. 2.2)
  or the objective's literal :math:`-\ell_{bce}(a(x, s(x)), 0)` (``mode="saturating"``), the
  discriminator fixed (``jaxvision.losses.generator_adversarial_loss``).

Alternation in one jitted step. The train step (``jaxvision.train.loop.make_train_step``) differentiates
``train_loss`` with respect to the whole parameter tree ``{"segmentor": ..., "discriminator": ...}``
and applies one optax transformation to it. By the parity of ``step`` (even: discriminator, odd:
segmentor, with ``discriminator_first``), ``train_loss`` returns the active player's loss and stops
the gradient into the other player's parameters (so its gradient is exactly 0); the optimizer from
``make_adversarial_optimizer`` keeps one optax state per player and, by the same parity (its own
step counter, which advances with the train state's ``step``), updates only the active player's
parameters and state: the other's parameters, optimizer state and BatchNorm statistics are left
bit-for-bit unchanged (``optax.multi_transform`` alone would not do that: Adam moves parameters
with zero gradients through its momentum, and its counters advance). Each player thus gets one
update every two steps; its learning-rate schedule counts its own updates (``total_steps / 2``).

Discriminator input encodings (paper Sec. 3): ``"basic"``: the label map (``C`` channels) and the
image go through separate convolution branches whose features are concatenated; ``"product"``: the
image masked by each class's probability, ``3C`` channels ``x * y_c``. Ground truth is one-hot
(``gt_encoding="onehot"``) or Luc et al.'s ``"scaling"``: the true class gets
:math:`\max(\tau, s(x)_l)` and the others share the rest in proportion to :math:`s(x)`, so that the
discriminator cannot tell ground truth from predictions by its being exactly one-hot alone.
Unlabelled pixels (255) are zeroed in both label maps. The discriminator is a small CNN (stride-2
convolutions, leaky ReLU, global average pooling, one logit per image).

Logged terms (each a global value summed over devices): ``mce`` (pixel cross-entropy), ``adv_generator``
(the segmentor's adversarial term, mean over images), ``discriminator_loss``,
``discriminator_accuracy`` (fraction of real and fake pairs classified right, at logit 0),
``discriminator_step`` (1 on discriminator steps). The total ``loss`` is the active player's loss:
``mce + lambda * adv_generator`` on segmentor steps, ``discriminator_loss`` on discriminator steps.
"""

from __future__ import annotations

from typing import Any, Mapping, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from jaxvision.losses import (cross_entropy_normalizer, discriminator_loss,
                              generator_adversarial_loss, softmax_cross_entropy)
from jaxvision.models.family import Family
from jaxvision.models.layers.conv import Conv
from jaxvision.models.segmentation._common import as_dict
from jaxvision.models.segmentation.unet import IGNORE_LABEL, UNet

__all__ = ["Discriminator", "AdversarialSegmenter", "AlternatingState", "alternating",
           "make_adversarial_optimizer", "encode_ground_truth", "make_adversarial"]

ENCODINGS = ("basic", "product")
GT_ENCODINGS = ("onehot", "scaling")
PLAYERS = ("segmentor", "discriminator")


class Discriminator(nn.Module):
  """``a(x, y)``: one logit per image that ``y`` is the ground truth (paper Sec. 3, smaller).

  Attributes:
    encoding: ``"basic"`` (two branches, features concatenated) or ``"product"`` (``x * y_c``).
    features: channels of the first convolutions (doubled at every stride-2 stage).
    num_stages: stride-2 stages after the input branch(es).
  """
  encoding: str = "basic"
  features: int = 16
  num_stages: int = 3

  @nn.compact
  def __call__(self, image, label_map):  # (B, H, W, 3), (B, H, W, C) probabilities
    if self.encoding not in ENCODINGS:
      raise ValueError(f"encoding must be one of {ENCODINGS}, got {self.encoding!r}.")
    if label_map.shape[:3] != image.shape[:3]:
      raise ValueError(f"label_map must be [B, H, W, C] with (B, H, W) = {image.shape[:3]}, got "
                       f"shape {label_map.shape}.")
    act = lambda x: nn.leaky_relu(x, 0.2)  # noqa: E731
    f = self.features
    if self.encoding == "basic":
      xi = act(Conv(f, (5, 5), name="image_conv")(image))  # (B, H, W, F)
      xl = act(Conv(f, (5, 5), name="label_conv")(label_map))  # (B, H, W, F)
      x = jnp.concatenate([xi, xl], -1)  # (B, H, W, 2F)
    else:
      b, h, w, c = label_map.shape
      prod = (image[..., None, :] * label_map[..., :, None]).reshape(b, h, w, c * 3)  # (B,H,W,3C)
      x = act(Conv(2 * f, (5, 5), name="product_conv")(prod))  # (B, H, W, 2F)
    for i in range(self.num_stages):
      x = act(Conv(f * 2**(i + 1), (3, 3), strides=(2, 2), name=f"stage{i}")(x))
    x = jnp.mean(x, axis=(1, 2))  # (B, F 2^S) global average pooling
    return nn.Dense(1, name="logit")(x)[:, 0].astype(jnp.float32)  # (B,)


class AdversarialSegmenter(nn.Module):
  """The pair: ``__call__`` is the segmentor alone (``{"logits"}``), ``discriminate`` the discriminator.

  ``init_both`` (used by the family's ``init``) creates both players' parameters:
  ``{"segmentor": ..., "discriminator": ...}``.
  """
  segmentor: nn.Module
  discriminator: nn.Module

  def __call__(self, x, *, train: bool):
    return self.segmentor(x, train=train)

  def discriminate(self, x, label_map):
    return self.discriminator(x, label_map)

  def init_both(self, x, *, train: bool = False):
    out = self.segmentor(x, train=train)
    self.discriminator(x, jax.nn.softmax(out["logits"], axis=-1))
    return out


def encode_ground_truth(labels, probs, *, num_classes: int, encoding: str = "onehot",
                        tau: float = 0.9):
  """The discriminator's ground-truth input ``[B, H, W, C]`` (0 on unlabelled pixels).

  ``"onehot"``: ``onehot(labels)``. ``"scaling"`` (Luc et al. Sec. 3): for the true class ``l``,
  ``y_l = max(tau, s_l)``; for the others ``y_c = s_c (1 - y_l) / (1 - s_l)`` (``s = probs``, without
  gradient), a distribution that puts at least ``tau`` on the truth.
  """
  if encoding not in GT_ENCODINGS:
    raise ValueError(f"gt_encoding must be one of {GT_ENCODINGS}, got {encoding!r}.")
  labelled = (labels != IGNORE_LABEL)[..., None]
  onehot = jax.nn.one_hot(jnp.where(labelled[..., 0], labels, 0), num_classes)  # (B, H, W, C)
  if encoding == "onehot":
    return onehot * labelled
  s = jax.lax.stop_gradient(probs)
  s_true = jnp.sum(s * onehot, -1, keepdims=True)  # (B, H, W, 1)
  y_true = jnp.maximum(tau, s_true)
  rest = s * (1.0 - y_true) / jnp.maximum(1.0 - s_true, 1e-6)
  return jnp.where(onehot > 0, y_true, rest) * labelled


# ------------------------------------------------------------------------------------------------
# Alternating optimizer
# ------------------------------------------------------------------------------------------------


class AlternatingState(NamedTuple):
  """``count``: steps seen (both players); one optax state per player."""
  count: jax.Array
  segmentor: Any
  discriminator: Any


def alternating(segmentor_tx: optax.GradientTransformation,
                discriminator_tx: optax.GradientTransformation, *,
                discriminator_first: bool = True) -> optax.GradientTransformation:
  """One player's transformation per step, by the parity of the step count.

  Params (and gradients) are ``{"segmentor": ..., "discriminator": ...}``. On the discriminator's
  steps (even counts if ``discriminator_first``) the discriminator's transformation runs and the
  segmentor gets zero updates with its state unchanged; on the others, the reverse. The parity
  matches ``train_loss``'s ``step % 2`` as long as the optimizer sees every train step (it does in
  ``make_train_step``; both counters are checkpointed).
  """
  phase = 0 if discriminator_first else 1

  def init_fn(params):
    _check_players(params, "params")
    return AlternatingState(count=jnp.zeros([], jnp.int32),
                            segmentor=segmentor_tx.init(params["segmentor"]),
                            discriminator=discriminator_tx.init(params["discriminator"]))

  def update_fn(updates, state, params=None):
    _check_players(updates, "updates")
    p = params if params is not None else {"segmentor": None, "discriminator": None}
    zeros = lambda tree: jax.tree.map(jnp.zeros_like, tree)  # noqa: E731

    def discriminator_update(_):
      upd, new = discriminator_tx.update(updates["discriminator"], state.discriminator,
                                         p["discriminator"])
      return {"segmentor": zeros(updates["segmentor"]), "discriminator": upd}, state.segmentor, new

    def segmentor_update(_):
      upd, new = segmentor_tx.update(updates["segmentor"], state.segmentor, p["segmentor"])
      return ({"segmentor": upd, "discriminator": zeros(updates["discriminator"])}, new,
              state.discriminator)

    d_turn = (state.count % 2) == phase
    new_updates, seg_state, disc_state = jax.lax.cond(d_turn, discriminator_update,
                                                      segmentor_update, None)
    return new_updates, AlternatingState(count=state.count + 1, segmentor=seg_state,
                                         discriminator=disc_state)

  return optax.GradientTransformation(init_fn, update_fn)


def _check_players(tree, name: str) -> None:
  if not isinstance(tree, Mapping) or set(tree) != set(PLAYERS):
    keys = sorted(tree) if isinstance(tree, Mapping) else type(tree).__name__
    raise ValueError(f"{name} must be a dict with exactly the keys {list(PLAYERS)} (the "
                     f"AdversarialSegmenter's parameters), got {keys}.")


def make_adversarial_optimizer(optim_config: Any, total_steps: int, *,
                               discriminator_first: bool = True) -> optax.GradientTransformation:
  """``alternating`` of two ``jaxvision.train.optim`` optimizers built from ``config.optim``.

  Each player is updated every other step, so each schedule spans ``total_steps // 2`` updates.
  ``config.optim.discriminator_learning_rate`` (optional) overrides the discriminator's peak rate.
  """
  from jaxvision.train import optim as optim_lib  # noqa: PLC0415  (train imports models)

  half = max(int(total_steps) // 2, 1)
  seg_cfg = _optim_copy(optim_config)
  disc_cfg = _optim_copy(optim_config)
  if optim_config.get("discriminator_learning_rate") is not None:
    disc_cfg["learning_rate"] = float(optim_config.get("discriminator_learning_rate"))
  for cfg in (seg_cfg, disc_cfg):  # warm-up counts each player's own updates too
    cfg["warmup_steps"] = int(cfg.get("warmup_steps", 0)) // 2
  return alternating(optim_lib.make_optimizer(seg_cfg, half),
                     optim_lib.make_optimizer(disc_cfg, half),
                     discriminator_first=discriminator_first)


def _optim_copy(optim_config: Any) -> ml_collections.ConfigDict:
  d = optim_config.to_dict() if hasattr(optim_config, "to_dict") else dict(optim_config)
  d.pop("discriminator_learning_rate", None)
  return ml_collections.ConfigDict(d)


# ------------------------------------------------------------------------------------------------
# Family
# ------------------------------------------------------------------------------------------------

_SEG_KEYS = ("depth", "base_features", "norm", "upsampling", "dropout_rate", "axis_name",
             "input_stride", "bn_momentum", "bn_epsilon")
_DISC_KEYS = ("encoding", "disc_features", "disc_stages")
_OTHER_KEYS = ("adv_weight", "adv_mode", "gt_encoding", "gt_tau", "discriminator_first",
               "class_weights", "name")


def _gate(tree, on):
  """Same values; the gradient passes only where ``on`` is 1 (``on`` is a traced 0./1.)."""
  return jax.tree.map(lambda p: on * p + (1.0 - on) * jax.lax.stop_gradient(p), tree)


def make_adversarial(model_config: Any, num_classes: int) -> Family:
  """The adversarial segmentation family (``MODELS["adversarial"]``).

  Keys of ``model_config`` (all optional): the segmentor U-Net's ``depth`` (4), ``base_features``
  (8), ``norm`` (``"batch"``), ``upsampling``, ``dropout_rate``, ``axis_name``, ``input_stride``,
  ``bn_momentum``, ``bn_epsilon``; the discriminator's ``encoding`` (``"basic"``/``"product"``),
  ``disc_features`` (16), ``disc_stages`` (3); ``adv_weight`` (lambda, 0.1), ``adv_mode``
  (``"nonsaturating"``), ``gt_encoding`` (``"onehot"``/``"scaling"``), ``gt_tau`` (0.9),
  ``discriminator_first`` (True), ``class_weights`` (cross-entropy weights, ``C`` floats).

  The family's ``make_optimizer`` is ``make_adversarial_optimizer``; ``init`` creates both players;
  ``predict`` runs the segmentor only.
  """
  cfg = as_dict(model_config)
  unknown = sorted(set(cfg) - set(_SEG_KEYS) - set(_DISC_KEYS) - set(_OTHER_KEYS))
  if unknown:
    raise ValueError(f"unknown adversarial model config keys {unknown}; known keys: "
                     f"{sorted(_SEG_KEYS + _DISC_KEYS + _OTHER_KEYS)}.")
  seg_kwargs = {"depth": 4, "base_features": 8, "norm": "batch"}
  seg_kwargs.update({k: cfg[k] for k in _SEG_KEYS if k in cfg})
  segmentor = UNet(num_classes=num_classes, padding="SAME", **seg_kwargs)
  encoding = cfg.get("encoding", "basic")
  if encoding not in ENCODINGS:
    raise ValueError(f"model.encoding must be one of {ENCODINGS}, got {encoding!r}.")
  disc = Discriminator(encoding=encoding, features=int(cfg.get("disc_features", 16)),
                       num_stages=int(cfg.get("disc_stages", 3)))
  module = AdversarialSegmenter(segmentor=segmentor, discriminator=disc)
  adv_weight = float(cfg.get("adv_weight", 0.1))
  if adv_weight < 0:
    raise ValueError(f"model.adv_weight (lambda) must be >= 0, got {adv_weight!r}.")
  adv_mode = cfg.get("adv_mode", "nonsaturating")
  gt_encoding = cfg.get("gt_encoding", "onehot")
  if gt_encoding not in GT_ENCODINGS:
    raise ValueError(f"model.gt_encoding must be one of {GT_ENCODINGS}, got {gt_encoding!r}.")
  gt_tau = float(cfg.get("gt_tau", 0.9))
  disc_first = bool(cfg.get("discriminator_first", True))
  class_weights = cfg.get("class_weights")
  if class_weights is not None:
    class_weights = np.asarray(class_weights, np.float32)
    if class_weights.shape != (num_classes,) or np.any(class_weights < 0):
      raise ValueError(f"model.class_weights must be {num_classes} non-negative floats, got "
                       f"{cfg['class_weights']!r}.")
  generator_adversarial_loss(jnp.zeros((1,)), mode=adv_mode)  # validates adv_mode now

  def loss_normalizer(outputs, batch):
    del outputs
    return cross_entropy_normalizer(batch["segmentation"], num_classes=num_classes,
                                    ignore_label=IGNORE_LABEL, class_weights=class_weights)

  def mce_loss(outputs, batch, *, normalizer=None):
    """The segmentation term alone (``Family.loss``): cross-entropy / labelled pixels."""
    if normalizer is None:
      normalizer = loss_normalizer(outputs, batch)
    ce = softmax_cross_entropy(outputs["logits"], batch["segmentation"],
                               ignore_label=IGNORE_LABEL, class_weights=class_weights)
    total = jnp.sum(ce) / jnp.maximum(normalizer, 1.0)
    return total, {"mce": total}

  def train_loss(variables, batch, *, rng, step, axis_name=None):
    if step is None:
      raise ValueError("the adversarial family's train_loss needs step (its parity picks the "
                       "player to update).")
    image, labels = batch["image"], batch["segmentation"]
    b = image.shape[0]
    params = variables["params"]
    _check_players(params, "variables['params']")
    d_turn = (jnp.asarray(step, jnp.int32) % 2) == (0 if disc_first else 1)
    d_on = d_turn.astype(jnp.float32)
    gated = {"segmentor": _gate(params["segmentor"], 1.0 - d_on),
             "discriminator": _gate(params["discriminator"], d_on)}
    gated_vars = {**variables, "params": gated}

    outputs, mutated = module.apply(gated_vars, image, train=True, mutable=["batch_stats"],
                                    rngs={"dropout": rng})
    logits = outputs["logits"]  # (B, H, W, C)
    labelled = (labels != IGNORE_LABEL)[..., None]
    probs = jax.nn.softmax(logits, axis=-1) * labelled  # (B, H, W, C), 0 where unlabelled
    real_map = encode_ground_truth(labels, probs, num_classes=num_classes, encoding=gt_encoding,
                                   tau=gt_tau)
    both = module.apply(gated_vars, jnp.concatenate([image, image]),
                        jnp.concatenate([real_map, probs]), method="discriminate")  # (2B,)
    real_logits, fake_logits = both[:b], both[b:]

    valid = batch.get("example_valid", jnp.ones((b,), bool)).astype(jnp.float32)  # (B,)
    n_img, n_pix = jnp.sum(valid), loss_normalizer(outputs, batch)
    n_dev = jnp.float32(1.0)
    if axis_name is not None:
      n_img, n_pix = jax.lax.psum(n_img, axis_name), jax.lax.psum(n_pix, axis_name)
      n_dev = jax.lax.psum(jnp.float32(1.0), axis_name)
    n_img = jnp.maximum(n_img, 1.0)
    mce, _ = mce_loss(outputs, batch, normalizer=n_pix)
    adv = jnp.sum(valid * generator_adversarial_loss(fake_logits, mode=adv_mode)) / n_img
    d_loss = jnp.sum(valid * discriminator_loss(real_logits, fake_logits)) / n_img
    correct = 0.5 * ((real_logits > 0).astype(jnp.float32) + (fake_logits < 0).astype(jnp.float32))
    d_acc = jnp.sum(valid * correct) / n_img
    seg_loss = mce + adv_weight * adv
    total = jnp.where(d_turn, d_loss, seg_loss)
    # The segmentor's BatchNorm statistics move only on its own steps.
    new_stats = mutated.get("batch_stats")
    if new_stats is not None:
      new_stats = jax.tree.map(lambda old, new: jnp.where(d_turn, old, new),
                               variables["batch_stats"], new_stats)
      mutated = {"batch_stats": new_stats}
    terms = {"mce": mce, "adv_generator": adv, "discriminator_loss": d_loss,
             "discriminator_accuracy": d_acc, "discriminator_step": d_on / n_dev}
    return total, terms, dict(mutated)

  def init(rng, batch):
    return module.init(rng, batch["image"], train=False, method="init_both")

  def postprocess(outputs):
    return jnp.argmax(outputs["logits"], axis=-1).astype(jnp.int32)

  def predict(variables, batch):
    return {"segmentation": postprocess(module.apply(variables, batch["image"], train=False))}

  def make_optimizer(optim_config, total_steps):
    return make_adversarial_optimizer(optim_config, total_steps, discriminator_first=disc_first)

  return Family(module=module, task="segmentation", train_loss=train_loss, predict=predict,
                init=init, make_optimizer=make_optimizer, loss=mce_loss,
                loss_normalizer=loss_normalizer, postprocess=postprocess,
                num_classes=num_classes)
