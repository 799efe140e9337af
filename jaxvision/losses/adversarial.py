r"""Adversarial training of a segmentation network (Luc et al. 2016).

Luc, Couprie, Chintala and Verbeek, "Semantic Segmentation using Adversarial Networks", NIPS Workshop
on Adversarial Training 2016, train a segmentor :math:`s` together with a discriminator :math:`a(x, y)`
that tells ground-truth label maps :math:`y` from predicted ones :math:`s(x)` (both given with the
image :math:`x`). Their hybrid objective (Eq. 1, as taught in the lecture slides) is

.. math::
  \ell(\theta_s, \theta_a) = \sum_{n=1}^N \ell_{mce}(s(x_n), y_n)
    - \lambda \big[\ell_{bce}(a(x_n, y_n), 1) + \ell_{bce}(a(x_n, s(x_n)), 0)\big]

minimised over the segmentor :math:`\theta_s` and maximised over the discriminator :math:`\theta_a`,
with :math:`\ell_{mce}` the multi-class cross-entropy and
:math:`\ell_{bce}(z, t) = -[t \log z + (1 - t) \log(1 - z)]`. Hence:

* the discriminator minimises :math:`\ell_{bce}(a(x, y), 1) + \ell_{bce}(a(x, s(x)), 0)`
  (``discriminator_loss``: real -> 1, fake -> 0);
* the segmentor minimises :math:`\ell_{mce} - \lambda\, \ell_{bce}(a(x, s(x)), 0)` (the first bracket
  term does not depend on :math:`\theta_s`). That literal minimax term, :math:`\log(1 - a)`,
  saturates when the discriminator wins (its gradient vanishes as :math:`a \to 0`), so Luc et al.
  (Sec. 2.2), following Goodfellow et al. 2014, train the segmentor with
  :math:`+\lambda\, \ell_{bce}(a(x, s(x)), 1)` instead, which has the same fixed point and strong
  gradients early on. ``generator_adversarial_loss`` offers both (``mode='saturating'`` is the
  slide's literal term, ``'nonsaturating'`` the paper's practice and the default).

The discriminator here is any network producing logits (one per image, or a map of patch logits);
these functions take its logits, never probabilities, so everything is computed with
``log_sigmoid`` and stays finite for any finite logit.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxvision.losses._common import check_ignore_label, check_number, check_same_shape
from jaxvision.losses.classification import cross_entropy_normalizer, softmax_cross_entropy
from jaxvision.ops._checks import check_array

__all__ = ["discriminator_loss", "generator_adversarial_loss", "hybrid_segmentation_loss"]

_MODES = ("nonsaturating", "saturating")


def discriminator_loss(real_logits, fake_logits):
  r"""Discriminator's binary cross-entropy: ground truth -> 1, prediction -> 0; unreduced.

  .. math::
    \mathcal{L}_a = \ell_{bce}(a(x, y), 1) + \ell_{bce}(a(x, s(x)), 0)
      = \operatorname{softplus}(-z_{real}) + \operatorname{softplus}(z_{fake})

  with :math:`z` the discriminator's logits (:math:`-\log\sigma(z) = \operatorname{softplus}(-z)`,
  :math:`-\log(1 - \sigma(z)) = \operatorname{softplus}(z)`). Stop the gradient into the segmentor
  when building ``fake_logits`` for this step (``a(x, jax.lax.stop_gradient(s(x)))``).

  Args:
    real_logits: float ``[...]`` discriminator logits on (image, ground-truth label map) pairs.
    fake_logits: float ``[...]`` logits on (image, predicted label map) pairs, same shape (pairs from
      the same images, as in Luc et al.).

  Returns:
    ``[...]`` loss per discriminator output; average it for the discriminator step.

  References:
    Luc et al., `Semantic Segmentation using Adversarial Networks
    <https://arxiv.org/abs/1611.08408>`_, 2016
  """
  real_logits = check_array(real_logits, "real_logits", kind="float")
  fake_logits = check_array(fake_logits, "fake_logits", kind="float")
  check_same_shape(real_logits, fake_logits, "real_logits", "fake_logits")
  return jax.nn.softplus(-real_logits) + jax.nn.softplus(fake_logits)


def generator_adversarial_loss(fake_logits, *, mode: str = "nonsaturating"):
  r"""The segmentor's adversarial term, unreduced (multiply by :math:`\lambda` and add to the CE).

  * ``'nonsaturating'`` (Luc et al. Sec. 2.2, the default):
    :math:`\ell_{bce}(a(x, s(x)), 1) = \operatorname{softplus}(-z)`, i.e. :math:`-\log a`;
  * ``'saturating'`` (the minimax objective's literal segmentor term):
    :math:`-\ell_{bce}(a(x, s(x)), 0) = -\operatorname{softplus}(z)`, i.e. :math:`\log(1 - a)`;
    negative and unbounded below, its gradient :math:`-\sigma(z)` vanishes when the discriminator
    confidently rejects the prediction.

  Both decrease as the discriminator is fooled (:math:`z \to +\infty`).

  Args:
    fake_logits: float ``[...]`` discriminator logits on (image, predicted label map), *with*
      gradients flowing back into the segmentor.
    mode: ``'nonsaturating'`` or ``'saturating'``.

  Returns:
    ``[...]`` adversarial loss per discriminator output.

  References:
    Luc et al., `Semantic Segmentation using Adversarial Networks
    <https://arxiv.org/abs/1611.08408>`_, 2016

    Goodfellow et al., `Generative Adversarial Nets <https://arxiv.org/abs/1406.2661>`_, 2014
  """
  fake_logits = check_array(fake_logits, "fake_logits", kind="float")
  if mode not in _MODES:
    raise ValueError(f"mode must be one of {_MODES}, got {mode!r}.")
  if mode == "nonsaturating":
    return jax.nn.softplus(-fake_logits)
  return -jax.nn.softplus(fake_logits)


def hybrid_segmentation_loss(seg_logits, labels, disc_fake_logits, *, adv_weight: float,
                             ignore_label: int | None = 255, mode: str = "nonsaturating",
                             class_weights=None, ce_normalizer=None):
  r"""Luc et al.'s hybrid segmentor loss: multi-class cross-entropy + :math:`\lambda` x adversarial term.

  .. math::
    \mathcal{L}_s = \underbrace{\frac{\sum_i \ell_{mce,i}}{N_{ce}}}_{\texttt{ce}}
      + \lambda \underbrace{\operatorname{mean}\big(\mathcal{L}_{adv}(a(x, s(x)))\big)}_{\texttt{adv}}

  with the per-pixel cross-entropy of ``softmax_cross_entropy`` (ignore label 255) and the
  adversarial term of ``generator_adversarial_loss``. By default :math:`N_{ce}` is the number of
  labelled pixels (``cross_entropy_normalizer``), so ``ce`` equals
  ``F.cross_entropy(ignore_index=255, reduction='mean')``; the paper sums over pixels instead, which
  only rescales :math:`\lambda`. ``adv`` is the mean over the discriminator's outputs.

  Args:
    seg_logits: float ``[B, H, W, C]`` segmentor logits.
    labels: int ``[B, H, W]`` label map, ``ignore_label`` for unlabelled pixels.
    disc_fake_logits: float ``[B, ...]`` discriminator logits on ``(x, softmax(seg_logits))`` with
      gradients into the segmentor (the discriminator's own parameters are not updated in this step).
    adv_weight: :math:`\lambda \ge 0`.
    ignore_label: as in ``softmax_cross_entropy``.
    mode: ``'nonsaturating'`` (paper) or ``'saturating'`` (the minimax term), see
      ``generator_adversarial_loss``.
    class_weights: optional ``[C]`` cross-entropy class weights.
    ce_normalizer: optional scalar replacing :math:`N_{ce}`, e.g. the ``psum`` of the per-device
      normalizers under data parallelism.

  Returns:
    ``(total, {'ce': ce, 'adv': adv})``, float32 scalars (``total = ce + adv_weight * adv``). A batch
    whose pixels are all ignored has ``ce = 0``.

  References:
    Luc et al., `Semantic Segmentation using Adversarial Networks
    <https://arxiv.org/abs/1611.08408>`_, 2016
  """
  seg_logits = check_array(seg_logits, "seg_logits", ndim=4, kind="float")
  labels = check_array(labels, "labels", shape=seg_logits.shape[:3], kind="int")
  disc_fake_logits = check_array(disc_fake_logits, "disc_fake_logits", kind="float")
  if disc_fake_logits.ndim == 0 or disc_fake_logits.shape[0] != seg_logits.shape[0]:
    raise ValueError(f"disc_fake_logits must be [B, ...] with B = {seg_logits.shape[0]} (the batch "
                     f"of seg_logits), got shape {tuple(disc_fake_logits.shape)}.")
  lam = check_number(adv_weight, "adv_weight", low=0.0)
  ignore_label = check_ignore_label(ignore_label)
  ce_sum = jnp.sum(softmax_cross_entropy(seg_logits, labels, ignore_label=ignore_label,
                                         class_weights=class_weights))
  if ce_normalizer is None:
    n = cross_entropy_normalizer(labels, num_classes=seg_logits.shape[-1], ignore_label=ignore_label,
                                 class_weights=class_weights)
  elif isinstance(ce_normalizer, (int, float)) and not isinstance(ce_normalizer, bool):
    n = jnp.float32(ce_normalizer)
  else:
    n = check_array(ce_normalizer, "ce_normalizer", ndim=0, kind="numeric").astype(jnp.float32)
  ce = jnp.where(n > 0, ce_sum / jnp.where(n > 0, n, 1.0), 0.0)
  adv = jnp.mean(generator_adversarial_loss(disc_fake_logits, mode=mode))
  ce = ce.astype(jnp.float32)
  adv = adv.astype(jnp.float32)
  total = ce + lam * adv
  return total, {"ce": ce, "adv": adv}
