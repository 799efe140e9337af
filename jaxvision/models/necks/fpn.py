"""Feature Pyramid Network: Lin, Dollar, Girshick, He, Hariharan and Belongie, "Feature Pyramid
Networks for Object Detection", CVPR 2017 (https://arxiv.org/abs/1612.03144), with RetinaNet's
(Lin et al. 2017, https://arxiv.org/abs/1708.02002) and FCOS's extra levels.

``FPN(...)(feats) -> {"P<min_level>", ..., "P<max_level>"}``, every level with ``features``
channels, ``P_l`` at stride ``2**l``. As the paper (Sec. 3) and torchvision's
``FeaturePyramidNetwork``:

* a lateral 1x1 convolution on every input ``C_l`` (``in_levels``) to ``features`` channels;
* top-down: starting from the coarsest lateral, each level adds the coarser merged map upsampled by
  nearest neighbour to its own size (``resize_nearest``, PyTorch's ``interpolate(size=...)``, so
  sizes that are not exact halves, e.g. an odd ``C4``, work);
* a 3x3 output convolution (padding 1) on every merged map; no activation.

Extra levels above the coarsest input (``extra``):

* ``"p6p7_from_c5"``: RetinaNet paper (Sec. 4): ``P6`` = 3x3 stride-2 convolution on ``C5``,
  ``P7`` = 3x3 stride-2 convolution on ``relu(P6)``, and so on to ``max_level``.
* ``"p6p7_from_p5"``: the same on ``P5`` (FCOS; torchvision's ``LastLevelP6P7`` when its input has
  ``features`` channels, as in ``retinanet_resnet50_fpn`` and ``fcos_resnet50_fpn``).
* ``"maxpool"``: ``P6`` = ``max_pool(P5, kernel 1, stride 2)`` (= ``P5[:, ::2, ::2]``), Faster/Mask
  R-CNN's level for the largest anchors (torchvision's ``LastLevelMaxPool``).
* ``None``: no extra levels (``max_level`` must be the coarsest input's level).

Presets: ``fpn_retinanet()`` = ``FPN(256, 3, 7, ("C3", "C4", "C5"), "p6p7_from_c5")``;
``fpn_two_stage()`` = ``FPN(256, 2, 6, ("C2", "C3", "C4", "C5"), "maxpool")``.

Initialisation as torchvision (``kaiming_uniform_(a=1)``, bias 0). ``norm`` (None in the paper)
adds a normalization after the lateral and output convolutions (and then drops their bias), as
torchvision's ``norm_layer``: ``"batch"``, ``"frozen"`` or ``"group"`` (GroupNorm with
``gcd(32, features)`` groups).

Parameter names (converting torchvision: ``fpn.inner_blocks.{i}.0`` -> ``lateral_C{l}/conv``,
``fpn.layer_blocks.{i}.0`` -> ``output_P{l}/conv`` with ``l = min_level + i``,
``fpn.extra_blocks.p6/p7`` -> ``p6/p7``; kernels transposed ``[O, I, kh, kw] -> [kh, kw, I, O]``).
"""

from __future__ import annotations

import functools
import math
import re
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax.numpy as jnp

from jaxvision.models.layers.conv import Conv, ConvNormAct
from jaxvision.models.layers.norm import make_norm
from jaxvision.ops.unpool import resize_nearest

__all__ = ["FPN", "FPN_EXTRAS", "fpn_retinanet", "fpn_two_stage"]

FPN_EXTRAS = ("p6p7_from_c5", "p6p7_from_p5", "maxpool", None)
FPN_NORMS = (None, "batch", "frozen", "group")

# torchvision: nn.init.kaiming_uniform_(w, a=1) -> gain^2 = 2 / (1 + a^2) = 1, bias 0.
fpn_init = nn.initializers.variance_scaling(1.0, "fan_in", "uniform")


def _level(name: str) -> int:
  m = re.fullmatch(r"[A-Za-z_]*?(\d+)", name)
  if m is None:
    raise ValueError(f"FPN in_levels names must end with their level number (e.g. 'C3'), got {name!r}.")
  return int(m.group(1))


class FPN(nn.Module):
  """Feature pyramid; see the module docstring.

  Attributes:
    features: channels of every output level (256 in the paper).
    min_level, max_level: the output levels ``P<min_level>..P<max_level>``.
    in_levels: names of the input maps, finest first, consecutive levels (``("C3", "C4", "C5")``);
      the finest must be ``min_level``.
    extra: how levels above the coarsest input are made (``FPN_EXTRAS``).
    norm: None, ``"batch"``, ``"frozen"`` or ``"group"``.
    axis_name, dtype: cross-replica BatchNorm axis and compute dtype.

  ``__call__(feats, train=False)``: ``feats`` maps each name of ``in_levels`` to ``[B, H_l, W_l, C_l]``
  (other keys are ignored); returns ``{"P<l>": [B, H_l, W_l, features]}``.
  """
  features: int = 256
  min_level: int = 3
  max_level: int = 7
  in_levels: Sequence[str] = ("C3", "C4", "C5")
  extra: str | None = "p6p7_from_c5"
  norm: str | None = None
  axis_name: str | None = None
  dtype: Any = jnp.float32

  def _check(self, feats: Mapping[str, Any]) -> list[int]:
    if self.extra not in FPN_EXTRAS:
      raise ValueError(f"FPN extra must be one of {FPN_EXTRAS}, got {self.extra!r}.")
    if self.norm not in FPN_NORMS:
      raise ValueError(f"FPN norm must be one of {FPN_NORMS}, got {self.norm!r}.")
    if not self.in_levels:
      raise ValueError("FPN in_levels must name at least one feature map.")
    levels = [_level(n) for n in self.in_levels]
    if levels != list(range(levels[0], levels[0] + len(levels))):
      raise ValueError(f"FPN in_levels must be consecutive levels, finest first, got {tuple(self.in_levels)}.")
    if self.min_level != levels[0]:
      raise ValueError(f"FPN min_level ({self.min_level}) must be the finest input's level "
                       f"({self.in_levels[0]!r} -> {levels[0]}).")
    if self.max_level < levels[-1]:
      raise ValueError(f"FPN max_level ({self.max_level}) must be >= the coarsest input's level "
                       f"({levels[-1]}).")
    if self.extra is None and self.max_level != levels[-1]:
      raise ValueError(f"FPN with extra=None outputs up to P{levels[-1]}; got max_level={self.max_level}.")
    missing = [n for n in self.in_levels if n not in feats]
    if missing:
      raise ValueError(f"FPN input is missing {missing}; it has keys {sorted(feats)}.")
    for n in self.in_levels:
      if feats[n].ndim != 4:
        raise ValueError(f"FPN input {n!r} must be [B, H, W, C], got shape {tuple(feats[n].shape)}.")
    return levels

  @nn.compact
  def __call__(self, feats: Mapping[str, Any], train: bool = False):
    levels = self._check(feats)
    if self.norm == "group":
      norm = functools.partial(nn.GroupNorm, num_groups=math.gcd(32, self.features),
                               dtype=self.dtype)
    else:
      norm = make_norm(self.norm, train=train, axis_name=self.axis_name, dtype=self.dtype)
    conv = functools.partial(Conv, kernel_init=fpn_init, dtype=self.dtype)
    unit = functools.partial(ConvNormAct, self.features, conv=conv, norm=norm, act=None)

    laterals = [unit((1, 1), padding="VALID", name=f"lateral_{n}")(feats[n]) for n in self.in_levels]
    merged = [laterals[-1]]  # coarsest first while going down
    for lat in reversed(laterals[:-1]):
      top = resize_nearest(merged[-1], lat.shape[1:3])  # (B, H_l, W_l, F)
      merged.append(lat + top.astype(lat.dtype))
    merged.reverse()  # finest first
    out = {}
    for level, m in zip(levels, merged):
      out[f"P{level}"] = unit((3, 3), padding=((1, 1), (1, 1)), name=f"output_P{level}")(m)

    last = levels[-1]
    for level in range(last + 1, self.max_level + 1):
      prev = out[f"P{level - 1}"]
      if self.extra == "maxpool":
        out[f"P{level}"] = prev[:, ::2, ::2, :]  # max_pool(kernel 1, stride 2)
        continue
      if level == last + 1:
        x = feats[self.in_levels[-1]] if self.extra == "p6p7_from_c5" else prev
      else:
        x = nn.relu(prev)
      out[f"P{level}"] = conv(self.features, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)),
                              name=f"p{level}")(x)  # (B, ceil(H/2), ceil(W/2), F)
    return out


def fpn_retinanet(features: int = 256, **kwargs) -> FPN:
  """RetinaNet's ``P3..P7`` pyramid (paper: ``P6`` from ``C5``; pass ``extra="p6p7_from_p5"`` for FCOS)."""
  kwargs.setdefault("extra", "p6p7_from_c5")
  return FPN(features=features, min_level=3, max_level=7, in_levels=("C3", "C4", "C5"), **kwargs)


def fpn_two_stage(features: int = 256, **kwargs) -> FPN:
  """Faster/Mask R-CNN's ``P2..P6`` pyramid (``P6`` by max pooling ``P5``)."""
  return FPN(features=features, min_level=2, max_level=6, in_levels=("C2", "C3", "C4", "C5"),
             extra="maxpool", **kwargs)
