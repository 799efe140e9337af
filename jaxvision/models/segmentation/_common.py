"""Glue shared by the semantic segmentation families: config parsing, argument checks and the
pixel-wise softmax cross-entropy loss.

Every family reads ``config.model`` through ``as_dict`` + ``check_keys`` (or ``parse_model_config``,
which also splits module from loss keys), so an unknown key fails at start with the known ones
listed. Labels equal to ``IGNORE_LABEL`` (255, the VOC "void" border) never contribute to a loss.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from jaxvision.losses import cross_entropy_normalizer, softmax_cross_entropy
from jaxvision.models.family import Family, segmentation_family

__all__ = ["IGNORE_LABEL", "he_init", "as_dict", "check_keys", "parse_model_config",
           "check_class_weights", "check_positive_ints", "check_image", "cross_entropy_pieces",
           "pixel_softmax_family"]

IGNORE_LABEL = 255

# He et al. 2015 initialisation ("Delving deep into rectifiers"), the initialisation SegNet
# (Sec. 3.1), U-Net and the hourglass networks use.
he_init = nn.initializers.variance_scaling(2.0, "fan_in", "normal")


def as_dict(config: Any) -> dict[str, Any]:
  """A model config section (``ml_collections.ConfigDict``, dict or None) as a plain dict."""
  if config is None:
    return {}
  if hasattr(config, "to_dict"):  # ml_collections.ConfigDict
    return dict(config.to_dict())
  if isinstance(config, Mapping):
    return dict(config)
  raise TypeError(f"model_config must be an ml_collections.ConfigDict or a dict, got "
                  f"{type(config).__name__}.")


def check_keys(cfg: Mapping[str, Any], known: Sequence[str], family: str) -> None:
  """Raises ValueError naming the unknown keys of ``cfg`` and listing the known ones."""
  unknown = sorted(set(cfg) - set(known) - {"name"})
  if unknown:
    raise ValueError(f"unknown {family} model config keys {unknown}; known keys: "
                     f"{sorted(set(known) | {'name'})}.")


def parse_model_config(model_config: Any, *, family: str, module_keys: Sequence[str],
                       loss_keys: Sequence[str] = (), presets: Mapping[str, Any] | None = None):
  """Splits ``config.model`` into ``(module_kwargs, loss_config, preset)``, rejecting unknown keys.

  ``name`` is ignored (it selected the family). ``preset`` (if ``presets``) names a module
  constructor to start from. ``dtype`` given as a string (``"bfloat16"``) becomes a dtype; lists
  become tuples (ConfigDict round trips give lists).

  Raises:
    ValueError: an unknown key (the message lists the known ones) or an unknown preset.
  """
  cfg = as_dict(model_config)
  check_keys(cfg, tuple(module_keys) + tuple(loss_keys) + (("preset",) if presets else ()), family)
  preset = cfg.get("preset")
  if presets is not None and preset is not None and preset not in presets:
    raise ValueError(f"model.preset must be one of {sorted(presets)} or None, got {preset!r}.")
  kwargs = {k: cfg[k] for k in module_keys if k in cfg}
  for k, v in kwargs.items():
    if isinstance(v, list):
      kwargs[k] = tuple(v)
  if isinstance(kwargs.get("dtype"), str):
    kwargs["dtype"] = jnp.dtype(kwargs["dtype"])
  return kwargs, {k: cfg[k] for k in loss_keys if k in cfg}, preset


def check_class_weights(class_weights, num_classes: int):
  """``None`` or a float32 ``[C]`` array of non-negative weights (else ValueError)."""
  if class_weights is None:
    return None
  w = np.asarray(class_weights, np.float32)
  if w.shape != (num_classes,) or np.any(w < 0):
    raise ValueError(f"model.class_weights must be {num_classes} non-negative floats (one per "
                     f"class), got {class_weights!r}.")
  return w


def check_positive_ints(values, name: str, length: int | None = None) -> tuple[int, ...]:
  """``values`` (an int or a sequence) as a tuple of ints >= 1 (of ``length``), else ValueError."""
  values = tuple(values) if isinstance(values, (tuple, list)) else (values,)
  if (not values or any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1
                        for v in values) or (length is not None and len(values) != length)):
    what = f"{length} ints >= 1" if length is not None else "a non-empty sequence of ints >= 1"
    raise ValueError(f"{name} must be {what}, got {values!r}.")
  return tuple(int(v) for v in values)


def check_image(x, what: str):
  """Raises ValueError unless ``x`` is a float ``[B, H, W, C]`` array."""
  if not hasattr(x, "ndim") or x.ndim != 4 or not jnp.issubdtype(x.dtype, jnp.floating):
    raise ValueError(f"{what}: x must be a float [B, H, W, C] (NHWC) array, got "
                     f"{getattr(x, 'shape', type(x))} {getattr(x, 'dtype', '')}.")


def cross_entropy_pieces(num_classes: int, class_weights=None, *, logits_key: str = "logits",
                         aux_key: str | None = None, aux_weight: float = 0.4):
  """``(loss, loss_normalizer)`` of the pixel-wise softmax cross-entropy on ``outputs[logits_key]``.

  ``loss(outputs, batch, *, normalizer=None) -> (total, terms)``: ``terms["cross_entropy"]`` is the
  summed per-pixel loss / normalizer, the normalizer the number of labelled pixels (or their summed
  class weight: PyTorch's ``F.cross_entropy(..., ignore_index=255, weight=w)`` mean). Labels 255 are
  ignored. With ``aux_key``, ``outputs[aux_key]`` (logits of the same shape, or a list of them)
  each add ``aux_weight`` times their own cross-entropy (``terms["aux_cross_entropy_<i>"]``).
  ``loss.per_pixel(logits, labels)`` is the unnormalised ``[B, H, W]`` map.
  """
  class_weights = check_class_weights(class_weights, num_classes)

  def loss_normalizer(outputs, batch):
    del outputs
    return cross_entropy_normalizer(batch["segmentation"], num_classes=num_classes,
                                    ignore_label=IGNORE_LABEL, class_weights=class_weights)

  def per_pixel(logits, labels):
    return softmax_cross_entropy(logits, labels, ignore_label=IGNORE_LABEL,
                                 class_weights=class_weights)  # (B, H, W)

  def normalized(logits, labels, denom):
    if logits.shape[1:3] != labels.shape[1:3]:
      raise ValueError(f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)} differ in "
                       "size; the module must return logits at the input's size.")
    return jnp.sum(per_pixel(logits, labels)) / denom

  def loss(outputs, batch, *, normalizer=None):
    labels = batch["segmentation"]
    if normalizer is None:
      normalizer = loss_normalizer(outputs, batch)
    denom = jnp.maximum(normalizer, 1e-6)
    total = normalized(outputs[logits_key], labels, denom)
    terms = {"cross_entropy": total}
    aux = outputs.get(aux_key) if aux_key is not None else None
    if aux is not None:
      for i, a in enumerate(aux if isinstance(aux, (list, tuple)) else [aux]):
        t = normalized(a, labels, denom)
        terms[f"aux_cross_entropy_{i}"] = t
        total = total + aux_weight * t
    return total, terms

  loss.per_pixel = per_pixel
  return loss, loss_normalizer


def pixel_softmax_family(module: nn.Module, num_classes: int, *, class_weights=None,
                         aux_weight: float = 0.4, postprocess: Callable | None = None,
                         make_optimizer: Callable | None = None) -> Family:
  """A segmentation ``Family`` whose loss is the per-pixel softmax cross-entropy.

  ``module`` returns ``{"logits": [B, H, W, C]}`` at the labels' size and optionally ``"aux"``
  (logits of the same shape, or a list of them), each added with weight ``aux_weight``. The loss is
  PyTorch's ``F.cross_entropy(..., ignore_index=255, weight=class_weights)`` mean over all
  devices' labelled pixels (the normalizer is ``psum``-ed by the ``Family``).

  Args:
    module: the linen module.
    num_classes: ``C``.
    class_weights: optional ``C`` non-negative floats.
    aux_weight: weight of each auxiliary logits term.
    postprocess: ``outputs -> [B, H, W] int32`` (default argmax of ``logits``); e.g. a dense CRF.
    make_optimizer: optional ``(optim_config, total_steps) -> optax`` override (see ``Family``).
  """
  loss, loss_normalizer = cross_entropy_pieces(num_classes, class_weights, aux_key="aux",
                                               aux_weight=aux_weight)
  return segmentation_family(module, num_classes=num_classes, loss=loss,
                             loss_normalizer=loss_normalizer, postprocess=postprocess,
                             make_optimizer=make_optimizer)
