"""Normalization layers: ``FrozenBatchNorm`` and the ``make_norm`` helper the backbones share.

``FrozenBatchNorm`` is BatchNorm with fixed statistics and affine parameters, the normalization
torchvision's detection models use in their ImageNet-pretrained backbones
(``torchvision.ops.FrozenBatchNorm2d``): with the small per-device batches of detection the batch
statistics are too noisy to train, so the pretrained ones are kept.

Where its four arrays live (a choice): in the ``"batch_stats"`` collection, not in ``"params"``.
``"batch_stats"`` is the collection the training loop already carries beside the parameters
(``jaxvision.train.loop`` keeps ``params`` and ``batch_stats``; the optimizer, weight decay and
gradients see only ``params``), so the frozen values are never differentiated, never decayed and
never updated (the module only reads them), yet they are checkpointed and restored with the model.
Converting torchvision weights (``bn.weight``, ``bn.bias``, ``bn.running_mean``, ``bn.running_var``)
is a rename: ``{"scale": weight, "bias": bias, "mean": running_mean, "var": running_var}`` under
``variables["batch_stats"][...][<bn name>]``. The same four arrays of a trained ``nn.BatchNorm``
(``params``: scale/bias, ``batch_stats``: mean/var) convert with ``frozen_from_batch_norm``.

Output, as torchvision's ``FrozenBatchNorm2d`` (``eps = 1e-5``):

.. math::  y = (x - \\mathrm{mean}) \\cdot \\frac{\\mathrm{scale}}{\\sqrt{\\mathrm{var} + \\epsilon}}
           + \\mathrm{bias}
"""

from __future__ import annotations

import functools
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

__all__ = ["FrozenBatchNorm", "NORMS", "make_norm", "frozen_from_batch_norm"]

NORMS = ("batch", "frozen")


class FrozenBatchNorm(nn.Module):
  """BatchNorm with fixed statistics (``batch_stats``: ``scale``, ``bias``, ``mean``, ``var``).

  Normalizes the last axis. Initial values are the identity (scale 1, bias 0, mean 0, var 1); load
  pretrained values into ``variables["batch_stats"]``. ``train`` has no effect: it behaves the same
  in training and evaluation and never mutates its variables.

  Attributes:
    epsilon: added to ``var`` (torchvision: 1e-5).
    dtype: compute dtype of the output (None: ``x``'s dtype).
  """
  epsilon: float = 1e-5
  dtype: Any = None

  @nn.compact
  def __call__(self, x):
    features = x.shape[-1]
    stats = {
        name: self.variable("batch_stats", name, init, (features,), jnp.float32).value
        for name, init in (("scale", jnp.ones), ("bias", jnp.zeros), ("mean", jnp.zeros),
                           ("var", jnp.ones))
    }
    # Folded into one multiply-add, as torchvision does.
    mult = stats["scale"] * jax.lax.rsqrt(stats["var"] + self.epsilon)  # (C,)
    add = stats["bias"] - stats["mean"] * mult  # (C,)
    dtype = self.dtype or x.dtype
    return (x * mult.astype(dtype) + add.astype(dtype)).astype(dtype)


def make_norm(norm: str | None, *, train: bool, axis_name: str | None = None,
              momentum: float = 0.9, epsilon: float = 1e-5, dtype: Any = jnp.float32):
  """A normalization constructor (called as ``norm(name=...)``), or None for ``norm=None``.

  ``"batch"``: ``nn.BatchNorm`` using batch statistics when ``train`` (running averages with
  ``momentum``, PyTorch's 0.1 = Flax's 0.9; cross-replica over ``axis_name``), running averages
  otherwise. ``"frozen"``: ``FrozenBatchNorm``.
  """
  if norm is None:
    return None
  if norm == "batch":
    return functools.partial(nn.BatchNorm, use_running_average=not train, momentum=momentum,
                             epsilon=epsilon, axis_name=axis_name if train else None, dtype=dtype)
  if norm == "frozen":
    return functools.partial(FrozenBatchNorm, epsilon=epsilon, dtype=dtype)
  raise ValueError(f"norm must be one of {NORMS} or None, got {norm!r}.")


def frozen_from_batch_norm(params: Mapping[str, Any], batch_stats: Mapping[str, Any]) -> dict:
  """The ``FrozenBatchNorm`` variables of one trained ``nn.BatchNorm``.

  Args:
    params: the BatchNorm's ``params`` (``scale``, ``bias``).
    batch_stats: its ``batch_stats`` (``mean``, ``var``).

  Returns:
    ``{"scale", "bias", "mean", "var"}``, to put under the frozen module's ``batch_stats``.
  """
  missing = [k for k in ("scale", "bias") if k not in params] + [
      k for k in ("mean", "var") if k not in batch_stats]
  if missing:
    raise ValueError(f"frozen_from_batch_norm: missing {missing}; params has {sorted(params)}, "
                     f"batch_stats has {sorted(batch_stats)}.")
  return {"scale": params["scale"], "bias": params["bias"], "mean": batch_stats["mean"],
          "var": batch_stats["var"]}
