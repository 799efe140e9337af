"""Classification losses for dense heads: focal loss (RetinaNet) and cross-entropy with ignore labels.

* Sigmoid and softmax **focal loss** from Lin, Goyal, Girshick, He and Dollar, "Focal Loss for Dense
  Object Detection", ICCV 2017 (RetinaNet), with torchvision's conventions.
* **Softmax cross-entropy** over integer labels with an ignore label, per-class weights and label
  smoothing, plus the normalizer that turns a sum of it into PyTorch's ``F.cross_entropy(...,
  reduction='mean')`` (Long et al., FCN, CVPR 2015, and every segmentation model since train with it).

Like ``optax.losses``, every loss here is unreduced: it returns one value per element (per anchor,
per pixel) and the caller normalizes, e.g. by the number of positive anchors ``psum``-ed across
devices, or by ``cross_entropy_normalizer``. Hyper-parameters are keyword-only static Python values.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from jaxvision.losses._common import (check_ignore_label, check_int_labels, check_min_rank,
                                      check_number, check_same_shape, valid_labels)
from jaxvision.ops._checks import check_array

__all__ = [
    "sigmoid_focal_loss",
    "softmax_focal_loss",
    "softmax_cross_entropy",
    "cross_entropy_normalizer",
]


def _check_class_weights(class_weights, num_classes: int):
  if class_weights is None:
    return None
  return check_array(class_weights, "class_weights", shape=(num_classes,), kind="numeric")


# ------------------------------------------------------------------------------------------------
# Focal loss
# ------------------------------------------------------------------------------------------------


def sigmoid_focal_loss(logits, targets, *, alpha: float | None = 0.25, gamma: float = 2.0):
  r"""Sigmoid focal loss (RetinaNet), unreduced; equal to ``torchvision.ops.sigmoid_focal_loss``.

  With :math:`p = \sigma(x)` and :math:`p_t = p\,t + (1 - p)(1 - t)`:

  .. math::
    \mathrm{FL}(x, t) = -\alpha_t\, (1 - p_t)^\gamma \log p_t, \qquad
    \alpha_t = \alpha\, t + (1 - \alpha)(1 - t),

  where :math:`-\log p_t` is the binary cross-entropy with logits. Each element is an independent
  binary problem: for a K-class sigmoid head the targets are one-hot over ``label - 1`` (jaxvision's
  sigmoid-head convention; background anchors are all-zero rows).

  This delegates to ``optax.sigmoid_focal_loss``, which is the same function: its log-space
  modulating factor :math:`\exp(\gamma \log(1 - p_t))` with
  :math:`\log(1 - p_t) = \mathrm{logsumexp}(\log p, \log(1 - p); \text{weights } 1 - t, t)` equals
  torchvision's :math:`(1 - p_t)^\gamma` for binary and soft targets alike. It is the *more* accurate
  of the two for confident predictions: torchvision's ``1 - p_t`` in float32 cancels catastrophically
  (e.g. ``x = 10, t = 1`` loses 3 digits), the log-space form does not; both agree to float32
  precision with torchvision evaluated in float64. Finite values and gradients for any finite logits.

  Args:
    logits: float array ``[...]``, one logit per (anchor, class).
    targets: array of the same shape with values in ``[0, 1]`` (binary or soft; bool/int accepted).
    alpha: weight of the positive class in ``[0, 1]``; ``None`` or a negative value (torchvision's
      ``-1``) disables the :math:`\alpha_t` weighting. The paper's default is 0.25.
    gamma: focusing parameter :math:`\gamma \ge 0`; 0 gives (alpha-weighted) binary cross-entropy.

  Returns:
    Loss per element, same shape and dtype as ``logits``. RetinaNet sums it over all anchors and
    classes and divides by the number of positive anchors.

  References:
    Lin et al., `Focal Loss for Dense Object Detection <https://arxiv.org/abs/1708.02002>`_, 2017
  """
  logits = check_array(logits, "logits", kind="float")
  targets = check_array(targets, "targets")
  if not (jnp.issubdtype(targets.dtype, jnp.number) or targets.dtype == jnp.bool_):
    raise TypeError(f"targets must be numeric or bool, got dtype {targets.dtype}.")
  check_same_shape(logits, targets, "logits", "targets")
  if alpha is not None:
    alpha = check_number(alpha, "alpha", high=1.0)
    if alpha < 0:  # torchvision's "-1 for ignore"
      alpha = None
  gamma = check_number(gamma, "gamma", low=0.0)
  return optax.sigmoid_focal_loss(logits, targets.astype(logits.dtype), alpha=alpha, gamma=gamma)


def _modulating_factor(log_pt, gamma: float):
  r""":math:`(1 - p_t)^\gamma` from :math:`\log p_t`, accurate and with finite gradients.

  ``-expm1(log_pt)`` keeps full precision as :math:`p_t \to 1` (``1 - exp(log_pt)`` would round to
  0 first). The power is taken as ``exp(gamma * log(u))`` only where ``u > 0``: at ``u == 0`` (logit
  gaps beyond ~88 in float32) the derivative of ``u**gamma`` is infinite for ``gamma < 1``; the
  double ``where`` keeps that branch out of the gradient.
  """
  u = -jnp.expm1(log_pt)
  if gamma == 0.0:
    return jnp.ones_like(u)
  pos = u > 0
  safe_u = jnp.where(pos, u, 1.0)
  return jnp.where(pos, jnp.exp(gamma * jnp.log(safe_u)), 0.0)


def softmax_focal_loss(logits, labels, *, alpha=None, gamma: float = 2.0,
                       ignore_label: int | None = None):
  r"""Softmax (multi-class) focal loss over integer labels, unreduced.

  With :math:`p_t = \mathrm{softmax}(x)_y` the probability of the true class:

  .. math::
    \mathrm{FL}(x, y) = -\alpha_y\, (1 - p_t)^\gamma \log p_t

  (Lin et al., Sec. 3 and Appendix: the focal term applies to the softmax form as well). With
  ``gamma = 0`` and no ``alpha`` it is the plain softmax cross-entropy.

  Args:
    logits: float ``[..., K]`` (for a softmax detection head, ``K = num_classes + 1`` with 0 =
      background).
    labels: int ``[...]`` in ``[0, K)``.
    alpha: ``None`` (no weighting), a Python float (every class weighted by it), or a ``[K]`` array of
      per-class weights :math:`\alpha_y`.
    gamma: focusing parameter :math:`\gamma \ge 0`.
    ignore_label: label whose elements get loss 0 (e.g. 255 for label maps); ``None`` for none.
      Labels outside ``[0, K)`` also get 0 (a jitted loss cannot raise on values; validate labels at
      the data boundary).

  Returns:
    Loss per element ``[...]`` (``logits.shape[:-1]``), 0 at ignored elements.

  References:
    Lin et al., `Focal Loss for Dense Object Detection <https://arxiv.org/abs/1708.02002>`_, 2017
  """
  logits = check_min_rank(logits, "logits", 1, kind="float", what="([..., num_classes])")
  labels = check_int_labels(logits, labels)
  gamma = check_number(gamma, "gamma", low=0.0)
  ignore_label = check_ignore_label(ignore_label)
  k = logits.shape[-1]
  valid = valid_labels(labels, k, ignore_label)
  safe_labels = jnp.where(valid, labels, 0)  # never gather out of range (jnp would fill NaN)
  log_p = jax.nn.log_softmax(logits, axis=-1)
  log_pt = jnp.take_along_axis(log_p, safe_labels[..., None], axis=-1)[..., 0]
  loss = -_modulating_factor(log_pt, gamma) * log_pt
  if alpha is not None:
    if isinstance(alpha, (int, float)) and not isinstance(alpha, bool):
      loss = check_number(alpha, "alpha", low=0.0) * loss
    else:
      alpha = check_array(alpha, "alpha", shape=(k,), kind="numeric")
      loss = alpha.astype(loss.dtype)[safe_labels] * loss
  return jnp.where(valid, loss, 0.0)


# ------------------------------------------------------------------------------------------------
# Cross-entropy with ignore label, class weights and label smoothing
# ------------------------------------------------------------------------------------------------


def softmax_cross_entropy(logits, labels, *, ignore_label: int | None = 255, class_weights=None,
                          label_smoothing: float = 0.0):
  r"""Softmax cross-entropy over integer labels with PyTorch's ignore / weight / smoothing semantics.

  With :math:`\ell_c = -\log \mathrm{softmax}(x)_c`, class weights :math:`w` (default all ones),
  :math:`C` classes and smoothing :math:`\varepsilon`, each element's loss is

  .. math::
    L = (1 - \varepsilon)\, w_y\, \ell_y + \frac{\varepsilon}{C} \sum_{c} w_c\, \ell_c

  and 0 where the label is ignored. This is ``torch.nn.functional.cross_entropy(...,
  reduction='none', ignore_index=ignore_label, weight=w, label_smoothing=eps)`` element for element,
  and ``sum(L) / cross_entropy_normalizer(labels, ...)`` is its ``reduction='mean'`` (PyTorch divides
  the weighted sum by the summed weight :math:`\sum w_y` of the non-ignored elements, also for the
  smoothing term).

  Args:
    logits: float ``[..., C]`` (e.g. ``[B, H, W, C]`` segmentation logits; NHWC, classes last).
    labels: int ``[...]`` (``logits.shape[:-1]``) in ``[0, C)``.
    ignore_label: label with loss 0 that does not count in the normalizer (255 in jaxvision's label
      maps), or ``None``. Labels outside ``[0, C)`` are treated as ignored too (PyTorch raises; a
      jitted loss cannot, so validate labels at the data boundary).
    class_weights: optional float ``[C]`` weights :math:`w_c` (e.g. inverse class frequency).
    label_smoothing: :math:`\varepsilon \in [0, 1]`.

  Returns:
    Loss per element ``[...]``, dtype of ``logits``, 0 at ignored elements.

  References:
    Long, Shelhamer and Darrell, `Fully Convolutional Networks for Semantic Segmentation
    <https://arxiv.org/abs/1411.4038>`_, 2015

    Szegedy et al., `Rethinking the Inception Architecture for Computer Vision
    <https://arxiv.org/abs/1512.00567>`_, 2016 (label smoothing)
  """
  logits = check_min_rank(logits, "logits", 1, kind="float", what="([..., num_classes])")
  labels = check_int_labels(logits, labels)
  ignore_label = check_ignore_label(ignore_label)
  eps = check_number(label_smoothing, "label_smoothing", low=0.0, high=1.0)
  c = logits.shape[-1]
  w = _check_class_weights(class_weights, c)
  valid = valid_labels(labels, c, ignore_label)
  safe_labels = jnp.where(valid, labels, 0)
  neg_log_p = -jax.nn.log_softmax(logits, axis=-1)  # [..., C]
  nll = jnp.take_along_axis(neg_log_p, safe_labels[..., None], axis=-1)[..., 0]
  if w is not None:
    w = w.astype(logits.dtype)
    nll = w[safe_labels] * nll
  loss = nll
  if eps > 0.0:
    smooth = jnp.sum(neg_log_p * w, axis=-1) if w is not None else jnp.sum(neg_log_p, axis=-1)
    loss = (1.0 - eps) * nll + (eps / c) * smooth
  return jnp.where(valid, loss, 0.0)


def cross_entropy_normalizer(labels, *, num_classes: int, ignore_label: int | None = 255,
                             class_weights=None):
  r"""The denominator of PyTorch's ``F.cross_entropy(reduction='mean')``: :math:`\sum_i w_{y_i}`.

  Sums the class weight of every non-ignored label (the count of non-ignored labels without
  weights), so ``jnp.sum(softmax_cross_entropy(...)) / cross_entropy_normalizer(...)`` equals
  PyTorch's mean. Under data parallelism ``psum`` both the sum and the normalizer. When every label is
  ignored it is 0 (PyTorch returns NaN there): guard the division, e.g. ``jnp.maximum(n, 1e-12)``
  or ``jnp.where(n > 0, s / n, 0)``.

  Args:
    labels: int ``[...]``.
    num_classes: ``C``; labels outside ``[0, C)`` count as ignored, as in ``softmax_cross_entropy``.
    ignore_label: as in ``softmax_cross_entropy``.
    class_weights: optional ``[C]`` weights.

  Returns:
    float32 scalar.
  """
  labels = check_array(labels, "labels", kind="int")
  if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes <= 0:
    raise ValueError(f"num_classes must be a positive Python int, got {num_classes!r}.")
  ignore_label = check_ignore_label(ignore_label)
  w = _check_class_weights(class_weights, num_classes)
  valid = valid_labels(labels, num_classes, ignore_label)
  if w is None:
    return jnp.sum(valid, dtype=jnp.float32)
  per = jnp.asarray(w, jnp.float32)[jnp.where(valid, labels, 0)]
  return jnp.sum(jnp.where(valid, per, 0.0))
