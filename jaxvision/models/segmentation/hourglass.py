"""Stacked hourglass networks: Newell, Yang and Deng, "Stacked Hourglass Networks for Human Pose
Estimation", ECCV 2016 (https://arxiv.org/abs/1603.06937), as a segmentation family.

Architecture (paper Sec. 3, Fig. 3-4):

* **Residual module** (Fig. 4 left, the released code's pre-activation ordering): BN-ReLU-1x1 conv
  to ``F/2``, BN-ReLU-3x3 conv ``F/2``, BN-ReLU-1x1 conv to ``F``, added to the input (through a
  1x1 convolution when the channel count changes). Every block of the network is built from it.
* **Stem**: a 7x7 stride-2 convolution (64) + BN + ReLU, a residual module (128), a 2x2 max pool, two
  residual modules (128, ``F``): the hourglasses work at 1/4 of the input resolution (64 x 64 for
  the paper's 256 x 256 input). ``stem_downsample`` 2 (no pool) or 1 (stride-1 convolution) are
  options for small images; the stem's widths scale with ``F`` (paper: ``F = 256``).
* **Hourglass of depth d** (Fig. 3), recursively: an upper branch ``up1 = Res(x)`` at the current
  resolution (the skip); a lower branch ``low = Res(maxpool(x))``, then an hourglass of depth
  ``d - 1`` (or one more residual module at the bottom, ``d = 1``), then ``Res``; the output is
  ``up1 + upsample(low)`` with *nearest-neighbour* upsampling. Every map keeps ``F`` channels (the
  lecture's "constant feature dimension"; the skips are learned residual modules, not copies).
  The paper uses ``d = 4`` (64 -> 4 px).
* **Stacking with intermediate supervision** (Sec. 3.4, Fig. 4 right): after each hourglass, a
  residual module and a 1x1 conv + BN + ReLU give features ``ll``, a 1x1 conv gives that stack's
  predictions; for every stack but the last, ``x + conv1x1(ll) + conv1x1(predictions)`` is the next
  stack's input, so later stacks re-evaluate the earlier predictions in context. The same loss is
  applied to every stack's predictions; the final prediction is the last stack's.

Segmentation here: the predictions are ``num_classes`` logits (the paper's joint heatmaps, with
an MSE loss, become per-pixel class scores with cross-entropy), bilinearly upsampled from the stem
resolution to the input size. The module returns ``{"logits": last stack's, "aux": [every
stack's logits]}`` (``aux[-1] is logits``) and the family's loss is
``sum_i stack_loss_weights[i] * CE(aux[i])`` (default weights all 1, the paper's).

Odd sizes: pools are ceil-mode and every upsampled map is cropped to its skip's size, so any input
works. ``upsampling`` (default ``"nearest"``, the paper's) takes any method of
``jaxvision.models.layers.upsample`` (``"transposed"``, ``"bilinear"``, ``"pixel_shuffle"``, ...).
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jaxvision.models.family import Family, segmentation_family
from jaxvision.models.layers.conv import Conv, ConvTranspose, ModuleDef
from jaxvision.models.layers.upsample import (UPSAMPLE_METHODS, Upsample2x, max_pool_2x2,
                                              max_pool_2x2_with_argmax)
from jaxvision.models.layers.norm import make_norm
from jaxvision.models.segmentation._common import (check_class_weights, check_image,
                                                   check_positive_ints, cross_entropy_pieces,
                                                   he_init, parse_model_config)
from jaxvision.ops.unpool import resize_bilinear

__all__ = ["Residual", "Hourglass", "StackedHourglass", "StackedHourglassPaper",
           "StackedHourglassTiny", "make_hourglass", "intermediate_supervision_loss"]

STEM_DOWNSAMPLES = (1, 2, 4)


class Residual(nn.Module):
  """The pre-activation bottleneck residual module (paper Fig. 4 left): ``[B,H,W,C] -> [B,H,W,F]``."""
  features: int
  conv: ModuleDef
  norm: ModuleDef | None

  @nn.compact
  def __call__(self, x):
    def bn_relu(y, name):
      return nn.relu(self.norm(name=name)(y) if self.norm is not None else y)

    half = max(self.features // 2, 1)
    y = self.conv(half, (1, 1), name="conv1")(bn_relu(x, "bn1"))  # (B, H, W, F/2)
    y = self.conv(half, (3, 3), padding="SAME", name="conv2")(bn_relu(y, "bn2"))  # (B, H, W, F/2)
    y = self.conv(self.features, (1, 1), name="conv3")(bn_relu(y, "bn3"))  # (B, H, W, F)
    skip = x if x.shape[-1] == self.features else self.conv(self.features, (1, 1), name="skip")(x)
    return skip + y


class Hourglass(nn.Module):
  """One hourglass of depth ``depth`` (paper Fig. 3): ``[B, H, W, F] -> [B, H, W, F]``."""
  depth: int
  features: int
  num_modules: int
  upsampling: str
  conv: ModuleDef
  conv_transpose: ModuleDef
  norm: ModuleDef | None

  @nn.compact
  def __call__(self, x):
    res = functools.partial(Residual, self.features, conv=self.conv, norm=self.norm)

    def modules(y, prefix):
      for i in range(self.num_modules):
        y = res(name=f"{prefix}{i}")(y)
      return y

    up1 = modules(x, "up1_")  # (B, H, W, F): the skip branch at this resolution
    if self.upsampling == "max_unpool":
      low, idx = max_pool_2x2_with_argmax(x)  # (B, ceil(H/2), ceil(W/2), F)
    else:
      low, idx = max_pool_2x2(x), None
    low = modules(low, "low1_")
    if self.depth > 1:
      low = Hourglass(self.depth - 1, self.features, self.num_modules, self.upsampling,
                      self.conv, self.conv_transpose, self.norm, name="inner")(low)
    else:
      low = modules(low, "bottom_")
    low = modules(low, "low3_")
    up2 = Upsample2x(self.upsampling, features=self.features, conv=self.conv,
                     conv_transpose=self.conv_transpose, name="up")(low, x.shape[1:3], idx)
    return up1 + up2  # (B, H, W, F)


class StackedHourglass(nn.Module):
  """Stacked hourglass network (Newell et al. 2016) for segmentation; see the module docstring.

  Attributes:
    num_classes: output channels ``K``.
    num_stacks: number of hourglasses ``N`` (paper: 8; 2 in its ablations).
    depth: levels of each hourglass (paper: 4).
    features: channels ``F`` inside the hourglasses (paper: 256).
    num_modules: residual modules at each position of the hourglass (released code: 1).
    stem_downsample: 4 (paper: stride-2 conv + max pool), 2 or 1.
    upsampling: ``"nearest"`` (paper) or another of ``UPSAMPLE_METHODS``.
    norm: ``"batch"`` (paper) or ``None``.
    axis_name, bn_momentum, bn_epsilon, dtype: as the other families.

  ``__call__(x [B, H, W, C_in], *, train) -> {"logits": [B, H, W, K], "aux": [N x [B, H, W, K]]}``.
  """
  num_classes: int
  num_stacks: int = 8
  depth: int = 4
  features: int = 256
  num_modules: int = 1
  stem_downsample: int = 4
  upsampling: str = "nearest"
  norm: str | None = "batch"
  axis_name: str | None = None
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool):
    check_image(x, "StackedHourglass")
    check_positive_ints(self.num_classes, "num_classes", 1)
    n_stacks = check_positive_ints(self.num_stacks, "num_stacks", 1)[0]
    depth = check_positive_ints(self.depth, "depth", 1)[0]
    f = check_positive_ints(self.features, "features", 1)[0]
    n_mod = check_positive_ints(self.num_modules, "num_modules", 1)[0]
    if self.stem_downsample not in STEM_DOWNSAMPLES:
      raise ValueError(f"stem_downsample must be one of {STEM_DOWNSAMPLES}, got "
                       f"{self.stem_downsample!r}.")
    if self.upsampling not in UPSAMPLE_METHODS:
      raise ValueError(f"upsampling must be one of {UPSAMPLE_METHODS}, got {self.upsampling!r}.")
    conv = functools.partial(Conv, dtype=self.dtype, kernel_init=he_init)
    conv_t = functools.partial(ConvTranspose, dtype=self.dtype, kernel_init=he_init)
    norm = make_norm(self.norm, train=train, axis_name=self.axis_name, momentum=self.bn_momentum,
                     epsilon=self.bn_epsilon, dtype=self.dtype)
    res = functools.partial(Residual, conv=conv, norm=norm)
    in_hw = x.shape[1:3]

    # Stem (paper: 64 -> 128 -> 256 channels with F = 256).
    stride = 1 if self.stem_downsample == 1 else 2
    x = conv(max(f // 4, 1), (7, 7), strides=(stride, stride), padding="SAME",
             use_bias=norm is None, name="stem_conv")(x)  # (B, H/2, W/2, F/4)
    if norm is not None:
      x = norm(name="stem_bn")(x)
    x = nn.relu(x)
    x = res(max(f // 2, 1), name="stem_res1")(x)  # (B, H/2, W/2, F/2)
    if self.stem_downsample == 4:
      x = max_pool_2x2(x)  # (B, H/4, W/4, F/2)
    x = res(max(f // 2, 1), name="stem_res2")(x)
    x = res(f, name="stem_res3")(x)  # (B, h, w, F)

    aux = []
    for i in range(n_stacks):
      y = Hourglass(depth, f, n_mod, self.upsampling, conv, conv_t, norm, name=f"hg{i}")(x)
      for j in range(n_mod):
        y = res(f, name=f"stack{i}_res{j}")(y)
      y = conv(f, (1, 1), use_bias=norm is None, name=f"stack{i}_lin")(y)  # (B, h, w, F)
      if norm is not None:
        y = norm(name=f"stack{i}_lin_bn")(y)
      ll = nn.relu(y)
      pred = conv(self.num_classes, (1, 1), name=f"stack{i}_out")(ll)  # (B, h, w, K)
      aux.append(pred)
      if i < n_stacks - 1:  # re-inject features and predictions into the next stack's input
        x = (x + conv(f, (1, 1), name=f"stack{i}_ll_")(ll)
             + conv(f, (1, 1), name=f"stack{i}_out_")(pred))  # (B, h, w, F)

    aux = [resize_bilinear(p.astype(jnp.float32), in_hw, align_corners=False) for p in aux]
    return {"logits": aux[-1], "aux": aux}  # (B, H, W, K) each


StackedHourglassPaper = functools.partial(StackedHourglass, num_stacks=8, depth=4, features=256,
                                          num_modules=1, stem_downsample=4, upsampling="nearest")
# Test-only: 2 stacks of depth 2 with 8 channels.
StackedHourglassTiny = functools.partial(StackedHourglass, num_stacks=2, depth=2, features=8)


# ------------------------------------------------------------------------------------------------
# Intermediate supervision and the family glue
# ------------------------------------------------------------------------------------------------


def intermediate_supervision_loss(outputs, batch, *, weights, per_pixel, normalizer):
  """``(sum_i weights[i] * sum(CE(aux[i])) / normalizer, terms)``: the paper's loss on every stack.

  ``terms`` has ``"cross_entropy_stack{i}"`` (each stack's mean CE, unweighted), and
  ``"cross_entropy"`` (the total).
  """
  aux = outputs["aux"]
  if len(aux) != len(weights):
    raise ValueError(f"stack_loss_weights has {len(weights)} entries for {len(aux)} stacks.")
  labels = batch["segmentation"]
  den = jnp.maximum(normalizer, 1e-6)
  terms, total = {}, 0.0
  for i, (w, logits) in enumerate(zip(weights, aux)):
    ce = jnp.sum(per_pixel(logits, labels)) / den
    terms[f"cross_entropy_stack{i}"] = ce
    total = total + w * ce
  terms["cross_entropy"] = total
  return total, terms


_PRESETS = {"paper": StackedHourglassPaper, "tiny": StackedHourglassTiny}
_MODULE_KEYS = ("num_stacks", "depth", "features", "num_modules", "stem_downsample", "upsampling",
                "norm", "axis_name", "bn_momentum", "bn_epsilon", "dtype")
_LOSS_KEYS = ("class_weights", "stack_loss_weights")


def make_hourglass(model_config: Any, num_classes: int) -> Family:
  """Builds the stacked hourglass family from ``config.model`` (``MODELS["hourglass"]``).

  Keys (all optional): ``preset`` (``"paper"`` or ``"tiny"``), the ``StackedHourglass`` fields
  ``num_stacks``, ``depth``, ``features``, ``num_modules``, ``stem_downsample``, ``upsampling``,
  ``norm``, ``axis_name``, ``bn_momentum``, ``bn_epsilon``, ``dtype``; ``stack_loss_weights``
  (``num_stacks`` floats, default all 1: the per-stack cross-entropies are summed with these
  weights) and ``class_weights`` (``C`` floats). ``name`` is ignored.

  Raises:
    ValueError: an unknown key (listing the known ones), preset, or weights of the wrong length.
  """
  kwargs, loss_cfg, preset = parse_model_config(model_config, family="hourglass",
                                                module_keys=_MODULE_KEYS, loss_keys=_LOSS_KEYS,
                                                presets=_PRESETS)
  module = (_PRESETS[preset] if preset else StackedHourglass)(num_classes=num_classes, **kwargs)
  num_stacks = module.num_stacks
  weights = loss_cfg.get("stack_loss_weights")
  weights = (1.0,) * num_stacks if weights is None else tuple(float(w) for w in weights)
  if len(weights) != num_stacks or any(w < 0 for w in weights):
    raise ValueError(f"model.stack_loss_weights must be {num_stacks} non-negative floats (one per "
                     f"stack, num_stacks={num_stacks}), got {loss_cfg['stack_loss_weights']!r}.")
  class_weights = check_class_weights(loss_cfg.get("class_weights"), num_classes)
  ce_loss, loss_normalizer = cross_entropy_pieces(num_classes, class_weights)

  def loss(outputs, batch, *, normalizer=None):
    if normalizer is None:
      normalizer = loss_normalizer(outputs, batch)
    return intermediate_supervision_loss(outputs, batch, weights=weights,
                                         per_pixel=ce_loss.per_pixel, normalizer=normalizer)

  return segmentation_family(module, num_classes=num_classes, loss=loss,
                             loss_normalizer=loss_normalizer)
