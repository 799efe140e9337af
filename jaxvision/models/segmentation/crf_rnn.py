r"""CRF-as-RNN: Zheng, Jayasumana, Romera-Paredes, Vineet, Su, Du, Huang and Torr, "Conditional Random
Fields as Recurrent Neural Networks", ICCV 2015 (https://arxiv.org/abs/1502.03240).

A fully connected CRF (Krähenbühl and Koltun 2011, ``jaxvision.ops.crf``) whose mean-field
iterations run as a differentiable layer behind a CNN, trained end to end. One iteration (paper
Sec. 4, Fig. 1) is: message passing (filter ``Q`` with the appearance/bilateral and the smoothness
Gaussian kernels), weighting the filter outputs (learned weights ``w^(1)``, ``w^(2)``, one per label
here as in the paper), compatibility transform (a learned ``[C, C]`` matrix ``mu``, initialised to
Potts ``1 - I``), adding the unary (``log softmax`` of the CNN logits), normalising (softmax). ``T``
iterations unrolled form an RNN whose hidden state is ``Q``; gradients flow through every iteration
to the CNN and to ``w`` and ``mu`` (the kernel widths stay fixed, as in the paper).

Differences from the paper. The CNN is a small same-padded U-Net (``jaxvision.models.segmentation.
unet.UNet``; the paper uses FCN-8s pretrained on VOC), trained jointly from scratch; the paper
trains with ``T = 5`` and tests with ``T = 10``, here ``num_iters`` and ``eval_num_iters`` (default:
the same). The appearance kernel is filtered on the permutohedral lattice as in the paper (the
smoothness kernel exactly, separably); both kernels normalised, as in the paper's released code.

The image. The module's input ``x`` is the normalised network input (``(rgb / 255 - mean) / std``,
DESIGN.md's batch contract); the appearance kernel needs RGB in 0..255, so the module undoes the
normalisation with ``image_mean``/``image_std``, which **must equal** ``config.data.mean``/``std``
(the shapes configs set both from the same constants).

Outputs: ``{"logits": [B, H, W, C], "unary_logits": [B, H, W, C]}``: ``logits`` are the CRF's
(``softmax(logits) = Q``, the last iteration's marginals), ``unary_logits`` the CNN's. The loss is the
pixel-wise cross-entropy of ``Q`` (``unary_loss_weight`` optionally adds the CNN's own).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxvision.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from jaxvision.losses import cross_entropy_normalizer, softmax_cross_entropy
from jaxvision.models.family import Family, segmentation_family
from jaxvision.models.segmentation._common import as_dict
from jaxvision.models.segmentation.unet import IGNORE_LABEL, UNet
from jaxvision.ops import crf as crf_ops

__all__ = ["MeanFieldCRF", "CRFRNN", "make_crf_rnn"]


class MeanFieldCRF(nn.Module):
  """The CRF-as-RNN layer: ``T`` mean-field iterations with learned weights and compatibility.

  Attributes:
    num_classes: ``C``.
    num_iters: iterations ``T`` in training (paper: 5).
    eval_num_iters: iterations at inference (paper: 10; ``None``: ``num_iters``).
    sigma_alpha, sigma_beta, sigma_gamma: kernel widths (pixels; colour in 0..255 units).
    w_appearance, w_smoothness: initial kernel weights.
    per_class_weights: one weight per label (the paper) or one scalar per kernel.
    learn_compatibility: learn ``mu`` (init Potts) or keep Potts fixed.
    method: ``"permutohedral"`` or ``"brute_force"`` (``jaxvision.ops.crf``).

  ``__call__(logits [B, H, W, C], image [B, H, W, 3] RGB 0..255, *, train) -> [B, H, W, C]`` logits
  whose softmax is the CRF's ``Q``. Parameters: ``w_appearance``, ``w_smoothness`` (``[C]`` or
  ``[]``) and ``compatibility`` ``[C, C]``.
  """
  num_classes: int
  num_iters: int = 5
  eval_num_iters: int | None = None
  sigma_alpha: float = 20.0
  sigma_beta: float = 13.0
  sigma_gamma: float = 3.0
  w_appearance: float = 5.0
  w_smoothness: float = 3.0
  per_class_weights: bool = True
  learn_compatibility: bool = True
  method: str = "permutohedral"

  @nn.compact
  def __call__(self, logits, image, *, train: bool):
    c = self.num_classes
    if logits.ndim != 4 or logits.shape[-1] != c:
      raise ValueError(f"logits must be [B, H, W, {c}], got shape {logits.shape}.")
    if image.shape != logits.shape[:3] + (3,):
      raise ValueError(f"image must be [B, H, W, 3] = {logits.shape[:3] + (3,)} (logits' size), "
                       f"got shape {image.shape}.")
    shape = (c,) if self.per_class_weights else ()
    w_app = self.param("w_appearance", nn.initializers.constant(self.w_appearance), shape)
    w_smooth = self.param("w_smoothness", nn.initializers.constant(self.w_smoothness), shape)
    if self.learn_compatibility:
      compat = self.param("compatibility", lambda _, s: crf_ops.potts_compatibility(s[0]), (c, c))
    else:
      compat = crf_ops.potts_compatibility(c)
    iters = self.num_iters if train or self.eval_num_iters is None else self.eval_num_iters

    def one(lg, im):  # (H, W, C), (H, W, 3)
      return crf_ops.mean_field_logits(
          lg, im, num_iters=iters, sigma_alpha=self.sigma_alpha, sigma_beta=self.sigma_beta,
          sigma_gamma=self.sigma_gamma, w_appearance=w_app, w_smoothness=w_smooth,
          compatibility=compat, method=self.method)

    return jax.vmap(one)(logits.astype(jnp.float32), jax.lax.stop_gradient(image))


class CRFRNN(nn.Module):
  """A CNN (any module returning ``{"logits"}``) followed by ``MeanFieldCRF``; see the module docstring.

  Attributes:
    cnn: the unary network, ``cnn(x, train=...) -> {"logits": [B, H, W, C]}`` (same size as ``x``).
    crf: the ``MeanFieldCRF`` layer.
    image_mean, image_std: the input normalisation (``config.data.mean``/``std``), undone for the
      appearance kernel.
  """
  cnn: nn.Module
  crf: MeanFieldCRF
  image_mean: tuple = IMAGENET_MEAN
  image_std: tuple = IMAGENET_STD

  @nn.compact
  def __call__(self, x, *, train: bool):
    unary = self.cnn(x, train=train)["logits"]  # (B, H, W, C)
    if unary.shape[1:3] != x.shape[1:3]:
      raise ValueError(f"the CNN's logits {unary.shape} must have the input's size {x.shape[1:3]} "
                       "(use a same-padded network).")
    rgb = crf_ops.to_rgb255(x.astype(jnp.float32), self.image_mean, self.image_std)  # (B, H, W, 3)
    return {"logits": self.crf(unary, rgb, train=train), "unary_logits": unary}


# ------------------------------------------------------------------------------------------------
# Family glue
# ------------------------------------------------------------------------------------------------

_CNN_KEYS = ("depth", "base_features", "norm", "upsampling", "dropout_rate", "axis_name",
             "bn_momentum", "bn_epsilon")
_CRF_KEYS = ("num_iters", "eval_num_iters", "sigma_alpha", "sigma_beta", "sigma_gamma",
             "w_appearance", "w_smoothness", "per_class_weights", "learn_compatibility", "method")
_OTHER_KEYS = ("image_mean", "image_std", "unary_loss_weight", "class_weights", "name")


def make_crf_rnn(model_config: Any, num_classes: int) -> Family:
  """The CRF-as-RNN family (``MODELS["crf_rnn"]``).

  Keys of ``model_config`` (all optional): the U-Net's ``depth`` (4), ``base_features`` (8),
  ``norm`` (``"batch"``), ``upsampling``, ``dropout_rate``, ``axis_name``, ``bn_momentum``,
  ``bn_epsilon`` (a same-padded U-Net is the CNN); the CRF's ``num_iters`` (5), ``eval_num_iters``,
  ``sigma_alpha`` (20 px), ``sigma_beta`` (13), ``sigma_gamma`` (3 px), ``w_appearance`` (5),
  ``w_smoothness`` (3) (initial weights), ``per_class_weights`` (True), ``learn_compatibility``
  (True), ``method``; ``image_mean``/``image_std`` (must equal ``config.data.mean``/``std``);
  ``unary_loss_weight`` (0: the loss is the CRF output's cross-entropy only); ``class_weights``
  (``C`` cross-entropy weights).
  """
  cfg = as_dict(model_config)
  unknown = sorted(set(cfg) - set(_CNN_KEYS) - set(_CRF_KEYS) - set(_OTHER_KEYS))
  if unknown:
    raise ValueError(f"unknown crf_rnn model config keys {unknown}; known keys: "
                     f"{sorted(_CNN_KEYS + _CRF_KEYS + _OTHER_KEYS)}.")
  cnn_kwargs = {"depth": 4, "base_features": 8, "norm": "batch"}
  cnn_kwargs.update({k: cfg[k] for k in _CNN_KEYS if k in cfg})
  cnn = UNet(num_classes=num_classes, padding="SAME", **cnn_kwargs)
  crf_kwargs = {k: cfg[k] for k in _CRF_KEYS if k in cfg}
  for k in ("sigma_alpha", "sigma_beta", "sigma_gamma", "w_appearance", "w_smoothness"):
    if k in crf_kwargs:
      crf_kwargs[k] = float(crf_kwargs[k])
  layer = MeanFieldCRF(num_classes=num_classes, **crf_kwargs)
  if layer.method not in crf_ops.METHODS:
    raise ValueError(f"model.method must be one of {crf_ops.METHODS}, got {layer.method!r}.")
  mean = tuple(float(v) for v in cfg.get("image_mean", IMAGENET_MEAN))
  std = tuple(float(v) for v in cfg.get("image_std", IMAGENET_STD))
  module = CRFRNN(cnn=cnn, crf=layer, image_mean=mean, image_std=std)
  unary_weight = float(cfg.get("unary_loss_weight", 0.0))
  if unary_weight < 0:
    raise ValueError(f"model.unary_loss_weight must be >= 0, got {unary_weight!r}.")
  class_weights = cfg.get("class_weights")
  if class_weights is not None:
    class_weights = np.asarray(class_weights, np.float32)
    if class_weights.shape != (num_classes,) or np.any(class_weights < 0):
      raise ValueError(f"model.class_weights must be {num_classes} non-negative floats, got "
                       f"{cfg['class_weights']!r}.")

  def loss_normalizer(outputs, batch):
    return cross_entropy_normalizer(batch["segmentation"], num_classes=num_classes,
                                    ignore_label=IGNORE_LABEL, class_weights=class_weights)

  def loss(outputs, batch, *, normalizer=None):
    if normalizer is None:
      normalizer = loss_normalizer(outputs, batch)
    labels = batch["segmentation"]  # (B, H, W)
    norm = jnp.maximum(normalizer, 1.0)

    def ce(logits):
      return jnp.sum(softmax_cross_entropy(logits, labels, ignore_label=IGNORE_LABEL,
                                           class_weights=class_weights)) / norm

    crf_ce = ce(outputs["logits"])
    unary_ce = ce(outputs["unary_logits"])
    total = crf_ce + unary_weight * unary_ce
    return total, {"crf_cross_entropy": crf_ce, "unary_cross_entropy": unary_ce}

  return segmentation_family(module, num_classes=num_classes, loss=loss,
                             loss_normalizer=loss_normalizer)
