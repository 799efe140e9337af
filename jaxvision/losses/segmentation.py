"""Segmentation losses: soft Dice (V-Net) and the per-pixel binary mask loss of Mask R-CNN.

* **Soft Dice** from Milletari, Navab and Ahmadi, "V-Net: Fully Convolutional Neural Networks for
  Volumetric Medical Image Segmentation", 3DV 2016 (Eq. 1), multi-class with an ignore label; a
  standard companion of cross-entropy for U-Net style models with strong class imbalance.
* **Binary mask loss** from He, Gkioxari, Dollar and Girshick, "Mask R-CNN", ICCV 2017 (Sec. 3):
  per-pixel sigmoid binary cross-entropy on the ``m x m`` mask of the ground-truth class only.

The multi-class softmax cross-entropy for label maps is ``jaxvision.losses.softmax_cross_entropy``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from jaxvision.losses._common import (check_ignore_label, check_int_labels, check_min_rank,
                                      check_number, check_same_shape, valid_labels)
from jaxvision.ops._checks import check_array

__all__ = ["dice_loss", "binary_mask_loss"]


def dice_loss(logits, labels, *, from_logits: bool = True, ignore_label: int | None = 255,
              smooth: float = 1.0, squared: bool = False):
  r"""Soft multi-class Dice loss per image and class.

  With class probabilities :math:`p_{ic}` (softmax of the logits over the last axis, or the input
  itself when ``from_logits=False``), one-hot labels :math:`y_{ic}` and the mask :math:`m_i` of
  non-ignored pixels, for every image and class:

  .. math::
    \mathcal{L}_c = 1 - \frac{2 \sum_i m_i p_{ic} y_{ic} + s}
                             {\sum_i m_i p_{ic}^{(2)} + \sum_i m_i y_{ic} + s}

  (:math:`p^{(2)} = p^2` if ``squared`` else :math:`p`, V-Net's Eq. 1 uses squares), summed over the
  spatial axes only. A class absent from both prediction and labels scores 0 with ``smooth > 0``;
  with ``smooth == 0`` such 0/0 entries are defined as loss 0 (with zero gradient), never NaN.

  Unreduced over images and classes: average the ``[B, C]`` result over classes (and images) as
  the paper at hand does, e.g. ``dice_loss(...)[:, 1:].mean()`` to leave out background.

  Args:
    logits: float ``[B, ..., C]`` (e.g. ``[B, H, W, C]``); logits, or probabilities if
      ``from_logits=False``.
    labels: int ``[B, ...]`` = ``logits.shape[:-1]``, values in ``[0, C)``; ``ignore_label`` (and any
      other out-of-range value) marks pixels excluded from both sums.
    from_logits: apply a softmax over the last axis first.
    ignore_label: label of pixels to leave out (255 in jaxvision label maps), or ``None``.
    smooth: :math:`s \ge 0`, added to numerator and denominator (Laplace smoothing).
    squared: use :math:`\sum p^2` in the denominator (V-Net) instead of :math:`\sum p`.

  Returns:
    ``[B, C]`` Dice loss per image and class, in ``[0, 1]``.

  References:
    Milletari et al., `V-Net <https://arxiv.org/abs/1606.04797>`_, 2016
  """
  logits = check_min_rank(logits, "logits", 3, kind="float", what="([B, ..., C], e.g. [B, H, W, C])")
  labels = check_int_labels(logits, labels)
  if not isinstance(from_logits, bool):
    raise TypeError(f"from_logits must be a bool, got {from_logits!r}.")
  if not isinstance(squared, bool):
    raise TypeError(f"squared must be a bool, got {squared!r}.")
  ignore_label = check_ignore_label(ignore_label)
  s = check_number(smooth, "smooth", low=0.0)
  c = logits.shape[-1]
  probs = jax.nn.softmax(logits, axis=-1) if from_logits else logits
  mask = valid_labels(labels, c, ignore_label)[..., None].astype(probs.dtype)  # [B, ..., 1]
  onehot = jax.nn.one_hot(labels, c, dtype=probs.dtype) * mask  # ignored rows are all zero
  p = probs * mask
  axes = tuple(range(1, logits.ndim - 1))  # spatial axes
  inter = jnp.sum(p * onehot, axis=axes)  # [B, C]
  p_sum = jnp.sum(p * p if squared else p, axis=axes)
  y_sum = jnp.sum(onehot, axis=axes)
  num = 2.0 * inter + s
  den = p_sum + y_sum + s
  ok = den > 0
  return jnp.where(ok, 1.0 - num / jnp.where(ok, den, 1.0), 0.0)


def binary_mask_loss(mask_logits, mask_targets, valid):
  r"""Mask R-CNN's per-pixel binary cross-entropy, unreduced and masked to valid RoIs.

  .. math::
    \mathcal{L}_{k,i,j} = v_k \big[-t \log \sigma(x) - (1 - t) \log(1 - \sigma(x))\big]_{k,i,j}

  computed stably from the logits (``optax.sigmoid_binary_cross_entropy``: ``log_sigmoid`` of
  :math:`\pm x`); equal to ``torch.nn.functional.binary_cross_entropy_with_logits(reduction='none')``
  where ``valid``. Only the mask of each RoI's ground-truth class enters (gather
  ``mask_logits[k, :, :, label_k]`` before calling; no competition between classes, the point of
  Mask R-CNN's decoupled masks). torchvision's mean equals
  ``loss.sum() / (valid.sum() * m * m)``.

  Args:
    mask_logits: float ``[..., K, m, m]`` logits of the ground-truth class per sampled RoI.
    mask_targets: ``[..., K, m, m]`` targets in ``[0, 1]`` (the ground-truth mask RoI-aligned to
      ``m x m``; float soft values or bool).
    valid: bool ``[..., K]``, False for padded RoIs and RoIs that are not positives.

  Returns:
    ``[..., K, m, m]`` loss per pixel, 0 (with zero gradient) for invalid RoIs.

  References:
    He et al., `Mask R-CNN <https://arxiv.org/abs/1703.06870>`_, 2017
  """
  mask_logits = check_min_rank(mask_logits, "mask_logits", 3, kind="float", what="([K, m, m])")
  mask_targets = check_array(mask_targets, "mask_targets")
  if not (jnp.issubdtype(mask_targets.dtype, jnp.number) or mask_targets.dtype == jnp.bool_):
    raise TypeError(f"mask_targets must be float or bool, got dtype {mask_targets.dtype}.")
  check_same_shape(mask_logits, mask_targets, "mask_logits", "mask_targets")
  valid = check_array(valid, "valid", shape=mask_logits.shape[:-2], kind="bool")
  v = valid[..., None, None]
  # Invalid RoIs may hold garbage (NaN targets from padding): replace before the loss, not after,
  # so nothing non-finite reaches the gradient.
  t = jnp.where(v, mask_targets.astype(mask_logits.dtype), 0.0)
  x = jnp.where(v, mask_logits, 0.0)
  return jnp.where(v, optax.sigmoid_binary_cross_entropy(x, t), 0.0)
