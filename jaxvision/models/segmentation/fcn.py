"""FCN: Long, Shelhamer and Darrell, "Fully Convolutional Networks for Semantic Segmentation",
CVPR 2015 (https://arxiv.org/abs/1411.4038); the journal version (PAMI 2017) for the "at-once"
FCN-8s.

Architecture (paper Sec. 3-4, Fig. 3). A VGG-16 whose fully connected layers are convolutions
(``fc6`` 7x7, ``fc7`` 1x1, ``jaxvision.models.backbones.VGG16``); a 1x1 convolution ``score_fr``
to ``C`` class scores on ``fc7`` (stride 32); then

* FCN-32s: one transposed convolution ``upscore`` (kernel 64, stride 32) back to the input;
* FCN-16s: ``upscore2`` (kernel 4, stride 2) of the stride-32 scores, plus ``score_pool4``
  (1x1 convolution on ``pool4``), summed; then ``upscore16`` (kernel 32, stride 16);
* FCN-8s: as 16s, then ``upscore_pool4`` (kernel 4, stride 2) of that sum plus ``score_pool3``
  (1x1 on ``pool3``); then ``upscore8`` (kernel 16, stride 8).

Every transposed convolution upsamples by ``f`` with a ``2f`` kernel initialised to bilinear
interpolation (``jaxvision.ops.unpool.bilinear_kernel``: channel ``c`` feeds only channel ``c``) and
is learned (paper Sec. 3.3: "initialized to bilinear upsampling, but then learned"); no bias. The
score layers start at zero (the reference implementation's initialisation, so training starts from
the coarse prediction), as the paper does for the skip layers ("zero-initialized").
``at_once=True``: the PAMI version's single-stage FCN-8s scales ``pool4`` by 0.01 and ``pool3`` by
1e-4 before scoring them (the original trained 32s -> 16s -> 8s in stages instead).

Alignment ("crop" layers). Every feature map has a linear map to input pixel coordinates, pixel
``i`` of a map is centred at input ``a * i + b`` (``a`` its stride); ``coordinate_maps`` derives them
layer by layer (a convolution with kernel ``k``, dilation ``d``, stride ``s``, padding ``p``: ``i -> s i
+ d (k - 1) / 2 - p``; a transposed one inverts it). Before a sum the two maps are cropped so equal
indices sit at the same input position, and the final scores are cropped to the input (Caffe's
``Crop`` with offsets from ``coord_map``). Two geometries (``alignment``):

* ``"paper"``: Caffe's FCN: ``conv1_1`` padded by 100, ``fc6`` unpadded, every pool rounding up.
  The derived offsets are the reference ones: ``score_pool4`` cropped at 5, ``score_pool3`` at 9,
  the output at 19 (32s), 27 (16s) or 31 (8s). Any input of >= 1 px works; the padding makes the
  network see mostly zeros for small images and costs (H + 198)^2 / H^2 more compute.
* ``"same"`` (default): every convolution padded to keep its size (``fc6`` too), pools rounding up,
  so a map at stride ``s`` has ``ceil(H / s)`` pixels; the upsampled maps are cropped by one pixel
  (half the factor for the last one) to align centres. Any input of >= 1 px works, and the
  output is exactly the input's size.

Either way the output is ``{"logits": [B, H, W, C]}`` at the input's size.

Backbone width: ``width`` (64 in the paper) and ``fc_features`` (4096) shrink the network for CPU
experiments; ``norm="batch"`` (vgg16_bn; not in the paper) lets a small network train from scratch.

The per-pixel softmax cross-entropy ``Family`` glue (``pixel_softmax_family``), shared with DeepLab
and the context module, is in ``_common.py``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxvision.models.backbones.vgg import VGG16
from jaxvision.models.family import Family
from jaxvision.models.layers.conv import Conv, ConvTranspose
from jaxvision.models.segmentation._common import (as_dict, check_keys,
                                                   pixel_softmax_family)
from jaxvision.ops.unpool import bilinear_kernel

__all__ = ["FCN", "make_fcn", "coordinate_maps", "vgg_coordinate_maps", "CoordMap",
           "fcn_crop_offsets", "pixel_softmax_family", "as_dict", "VARIANTS", "ALIGNMENTS"]

VARIANTS = ("32s", "16s", "8s")
ALIGNMENTS = ("same", "paper")
AT_ONCE_SCALES = {"pool4": 0.01, "pool3": 1e-4}


# ------------------------------------------------------------------------------------------------
# Coordinate maps
# ------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class CoordMap:
  """Pixel ``i`` of a feature map is centred at input coordinate ``a * i + b``."""
  a: float = 1.0
  b: float = 0.0

  def conv(self, kernel: int, stride: int = 1, padding: int = 0, dilation: int = 1) -> "CoordMap":
    """After a convolution / pooling window: output ``i`` is centred on input ``s i + d(k-1)/2 - p``."""
    return CoordMap(self.a * stride, self.b + self.a * (dilation * (kernel - 1) / 2 - padding))

  def deconv(self, kernel: int, stride: int, crop: int = 0) -> "CoordMap":
    """After a transposed convolution (``'VALID'``, then ``crop`` pixels removed at the start)."""
    a = self.a / stride
    return CoordMap(a, self.b - a * ((kernel - 1) / 2 - crop))


def vgg_coordinate_maps(vgg: VGG16) -> dict[str, CoordMap]:
  """``CoordMap`` of every feature ``VGG16`` returns (padding, ceil mode and SSD options included).

  Rounding up (ceil mode) appends pixels at the end and does not move centres, so it does not
  enter the maps.
  """
  m = CoordMap()
  maps = {}
  for b, n in enumerate((2, 2, 3, 3, 3), start=1):
    for k in range(1, n + 1):
      m = m.conv(3, padding=vgg.conv1_1_padding if (b, k) == (1, 1) else 1)
    if b >= 4:
      maps[f"conv{b}_3"] = m
    if b == 5 and vgg.pool5_stride == 1:
      m = m.conv(3, 1, 1)
    else:
      m = m.conv(2, 2)
    maps[f"pool{b}"] = m
  k, d = vgg.fc6_kernel, vgg.fc6_dilation
  pad = d * (k - 1) // 2 if vgg.fc6_padding == "same" else 0
  maps["fc6"] = maps["fc7"] = m.conv(k, 1, pad, d)
  return maps


coordinate_maps = vgg_coordinate_maps


def _skips(variant: str) -> tuple[str, ...]:
  return {"32s": (), "16s": ("pool4",), "8s": ("pool4", "pool3")}[variant]


def _offset(up: CoordMap, skip: CoordMap) -> int:
  """``d`` with ``up[j + d]`` and ``skip[j]`` at the same input position (an integer, or error)."""
  if not math.isclose(up.a, skip.a):
    raise ValueError(f"FCN: cannot align maps of strides {up.a} and {skip.a}.")
  delta = (skip.b - up.b) / up.a
  if not math.isclose(delta, round(delta), abs_tol=1e-9):
    raise ValueError(f"FCN: maps are offset by a fraction of a pixel ({delta}); the backbone's "
                     "geometry cannot be aligned by cropping.")
  return int(round(delta))


def fcn_crop_offsets(vgg: VGG16, variant: str) -> dict[str, int]:
  """Crop offsets of an FCN: ``{"score_pool4": .., "score_pool3": .., "upscore2": .., "output": ..}``.

  A positive ``score_<pool>`` offset crops that skip's scores (Caffe's ``score_pool4c``); a positive
  ``upscore*`` offset crops the upsampled map instead; ``"output"`` crops the final upsampled scores
  to the input. With the paper's geometry (``conv1_1_padding=100``, unpadded ``fc6``) these are 5,
  9 and 19/27/31, Caffe's values.
  """
  if variant not in VARIANTS:
    raise ValueError(f"FCN variant must be one of {VARIANTS}, got {variant!r}.")
  maps = vgg_coordinate_maps(vgg)
  frame, out = maps["fc7"], {}
  for skip, up_name in zip(_skips(variant), ("upscore2", "upscore_pool4")):
    up = frame.deconv(4, 2)
    d = _offset(up, maps[skip])
    out[f"score_{skip}"] = max(-d, 0)
    out[up_name] = max(d, 0)
    frame = maps[skip] if d >= 0 else up
  factor = int(round(frame.a))
  final = frame.deconv(2 * factor, factor)
  c = -final.b
  if not math.isclose(c, round(c)) or round(c) < 0:
    raise ValueError(f"FCN: the output is offset by {c} px from the input; cannot crop.")
  out["output"] = int(round(c))
  return out


# ------------------------------------------------------------------------------------------------
# The network
# ------------------------------------------------------------------------------------------------


def _bilinear_init(factor: int):
  def init(key, shape, dtype=jnp.float32):
    del key
    k, _, c_in, c_out = shape
    if c_in != c_out:
      raise ValueError(f"bilinear init needs as many input as output channels, got {shape}.")
    return bilinear_kernel(k, c_in, dtype)
  return init


class FCN(nn.Module):
  """FCN-32s/16s/8s on a ``VGG16`` backbone; see the module docstring.

  Attributes:
    num_classes: ``C`` (label-map classes, background included).
    backbone: a ``VGG16`` (its ``fc_as_conv`` must be True); its geometry decides the alignment
      (``make_fcn`` configures it from ``alignment``).
    variant: ``"32s"``, ``"16s"`` or ``"8s"``.
    at_once: scale ``pool4`` by 0.01 and ``pool3`` by 1e-4 before scoring (PAMI's at-once FCN-8s).
    learn_upsampling: learn the transposed convolutions (True, paper) or keep them bilinear.
    dtype: compute dtype of the head.

  ``__call__(x [B, H, W, 3], train)`` -> ``{"logits": [B, H, W, C]}``.
  """
  num_classes: int
  backbone: nn.Module
  variant: str = "8s"
  at_once: bool = False
  learn_upsampling: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    if x.ndim != 4:
      raise ValueError(f"FCN expects NHWC images [B, H, W, C], got shape {tuple(x.shape)}.")
    if not isinstance(self.backbone, VGG16) or not self.backbone.fc_as_conv:
      raise ValueError("FCN backbone must be a VGG16 with fc_as_conv=True.")
    offsets = fcn_crop_offsets(self.backbone, self.variant)  # also checks the variant
    _, height, width, _ = x.shape
    feats = self.backbone(x, train=train)
    c = self.num_classes
    score = Conv(c, (1, 1), kernel_init=nn.initializers.zeros, dtype=self.dtype,
                 name="score_fr")(feats["fc7"])  # (B, h32, w32, C)
    upsample = _Upsample if self.learn_upsampling else _FixedUpsample
    for skip, up_name in zip(_skips(self.variant), ("upscore2", "upscore_pool4")):
      up = upsample(c, 2, dtype=self.dtype, name=up_name)(score)  # (B, 2 h + 2, 2 w + 2, C)
      s = feats[skip]
      if self.at_once:
        s = s * AT_ONCE_SCALES[skip]
      s = Conv(c, (1, 1), kernel_init=nn.initializers.zeros, dtype=self.dtype,
               name=f"score_{skip}")(s)  # (B, h_skip, w_skip, C)
      up = up[:, offsets[up_name]:, offsets[up_name]:]
      s = s[:, offsets[f"score_{skip}"]:, offsets[f"score_{skip}"]:]
      h, w = min(up.shape[1], s.shape[1]), min(up.shape[2], s.shape[2])
      score = up[:, :h, :w] + s[:, :h, :w]  # fuse by summing, at the skip's stride
    factor = {"32s": 32, "16s": 16, "8s": 8}[self.variant]
    up = upsample(c, factor, dtype=self.dtype, name=f"upscore{factor if factor != 32 else ''}")(score)
    o = offsets["output"]
    if up.shape[1] < o + height or up.shape[2] < o + width:
      raise ValueError(f"FCN: the upsampled scores {up.shape[1:3]} do not cover the input "
                       f"{(height, width)} after the crop offset {o}; use pools that round up "
                       "(VGG16 ceil_mode='all').")
    return {"logits": up[:, o:o + height, o:o + width].astype(jnp.float32)}  # (B, H, W, C)


class _Upsample(nn.Module):
  """Learned transposed convolution (kernel ``2 f``, stride ``f``, ``'VALID'``), bilinear init.

  Scatter semantics (``transpose_kernel=True``): input pixel ``i`` adds ``x[i] * kernel[u]`` to
  output ``f i + u``, as Caffe's ``Deconvolution`` and PyTorch's ``ConvTranspose2d``; the kernel is
  ``[k, k, C_out, C_in]`` (PyTorch's ``[C_in, C_out, k, k]`` transposed ``(2, 3, 1, 0)``).
  """
  features: int
  factor: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    k = 2 * self.factor
    return ConvTranspose(self.features, (k, k), strides=(self.factor, self.factor),
                         padding="VALID", use_bias=False, kernel_init=_bilinear_init(self.factor),
                         transpose_kernel=True, dtype=self.dtype,
                         name="deconv")(x)  # (B, (h-1) f + 2f, ..., C)


class _FixedUpsample(nn.Module):
  """The same transposed convolution with the bilinear kernel held fixed (no parameters)."""
  features: int
  factor: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    k = 2 * self.factor
    kernel = bilinear_kernel(k, self.features, self.dtype)
    return jax.lax.conv_transpose(x.astype(self.dtype), kernel, (self.factor, self.factor), "VALID",
                                  dimension_numbers=("NHWC", "HWIO", "NHWC"), transpose_kernel=True)


# ------------------------------------------------------------------------------------------------
# Config
# ------------------------------------------------------------------------------------------------

_KEYS = ("variant", "backbone", "alignment", "width", "fc_features", "norm", "dropout_rate",
         "at_once", "learn_upsampling", "class_weights", "axis_name", "dtype")


def make_fcn(model_config: Any, num_classes: int) -> Family:
  """Builds the FCN family from ``config.model`` (``MODELS["fcn"]``).

  Keys (all optional): ``variant`` ("32s" | "16s" | "8s", default "8s"), ``backbone`` ("vgg16",
  the only one: FCN's alignment relies on VGG's pooling geometry), ``alignment`` ("same" |
  "paper"), ``width`` (VGG base width, 64), ``fc_features`` (4096), ``norm`` (None | "batch"),
  ``dropout_rate`` (0.5, on fc6/fc7), ``at_once`` (False), ``learn_upsampling`` (True),
  ``class_weights`` (C floats), ``axis_name`` (cross-replica BatchNorm), ``dtype``.

  Raises:
    ValueError: unknown keys or values.
  """
  cfg = as_dict(model_config)
  check_keys(cfg, _KEYS, "FCN")
  if cfg.get("backbone", "vgg16") != "vgg16":
    raise ValueError(f"FCN model.backbone must be 'vgg16', got {cfg['backbone']!r}.")
  variant = cfg.get("variant", "8s")
  if variant not in VARIANTS:
    raise ValueError(f"FCN model.variant must be one of {VARIANTS}, got {variant!r}.")
  alignment = cfg.get("alignment", "same")
  if alignment not in ALIGNMENTS:
    raise ValueError(f"FCN model.alignment must be one of {ALIGNMENTS}, got {alignment!r}.")
  dtype = jnp.dtype(cfg.get("dtype", "float32"))
  backbone = VGG16(width=int(cfg.get("width", 64)), fc_features=int(cfg.get("fc_features", 4096)),
                   norm=cfg.get("norm"), dropout_rate=float(cfg.get("dropout_rate", 0.5)),
                   ceil_mode="all", fc6_padding="same" if alignment == "same" else "valid",
                   conv1_1_padding=1 if alignment == "same" else 100,
                   axis_name=cfg.get("axis_name"), dtype=dtype)
  module = FCN(num_classes=num_classes, backbone=backbone, variant=variant,
               at_once=bool(cfg.get("at_once", False)),
               learn_upsampling=bool(cfg.get("learn_upsampling", True)), dtype=dtype)
  return pixel_softmax_family(module, num_classes, class_weights=cfg.get("class_weights"))
