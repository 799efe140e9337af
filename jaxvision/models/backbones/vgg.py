"""VGG-16 backbone: Simonyan and Zisserman, "Very Deep Convolutional Networks for Large-Scale Image
Recognition", ICLR 2015 (https://arxiv.org/abs/1409.1556), configuration D, with the fully
connected layers as convolutions (FCN, Long et al. 2015) and the SSD variant (Liu et al. 2016).

``VGG16(...)(x, train) -> {"conv4_3", "conv5_3", "pool3", "pool4", "pool5", "fc6", "fc7"}``
(``fc6``/``fc7`` only with ``fc_as_conv``). Layers: five blocks of 3x3 convolutions (padding 1)
+ ReLU with 2-2-3-3-3 convolutions of 64, 128, 256, 512, 512 channels, each block followed by a
2x2 max pool of stride 2 (``pool1..pool5``, strides 2..32); then ``fc6`` (a 7x7 convolution of
``fc_features`` = 4096 channels, the paper's first fully connected layer applied convolutionally,
FCN Sec. 3.1) + ReLU + drop-out and ``fc7`` (1x1, 4096) + ReLU + drop-out. Drop-out (rate 0.5, as
the paper) is applied only with ``train=True`` and then needs a ``"dropout"`` rng.

Padding of ``fc6`` (a documented choice). The classifier's 7x7 layer was trained on 7x7 ``pool5``
maps (224 px inputs) without padding. ``fc6_padding="same"`` (default) pads it by
``dilation * (k - 1) / 2`` per side, so ``fc6`` has ``pool5``'s size and any input of at least
32 px works; the output of a converted classifier differs from the unpadded one only near the
border. ``fc6_padding="valid"`` is the paper's (``fc6`` is 6 pixels smaller than ``pool5``); FCN
then pads ``conv1_1`` by 100 px instead of 1 (``conv1_1_padding=100``, Caffe's ``pad: 100``) so
that small images still reach ``fc6`` and crops the upsampled scores back into alignment (see
``jaxvision.models.segmentation.fcn``).

SSD (Liu et al. 2016, Sec. 3 "Base network"; torchvision's ``ssd300_vgg16``): ``pool5`` becomes a
3x3 max pool of stride 1 with padding 1 (``pool5_stride=1``); ``fc6`` a 3x3 convolution of 1024
channels with dilation 6 and padding 6 (``fc6_kernel=3, fc6_dilation=6, fc_features=1024``);
``fc7`` 1x1 of 1024; ``pool3`` in ceil mode (``ceil_mode=True``: a 300 px input gives the 38x38
``conv4_3`` map); no drop-out (``dropout_rate=0.0``).

``ceil_mode``: False (floor, PyTorch's default), True (``pool3`` only, SSD's torchvision layout),
``"all"`` (every pool, Caffe's rounding, which FCN's reference alignment assumes) or a sequence of
pool names. Ceil mode pads the bottom/right with -inf so ``n -> ceil(n / 2)``.

``width_multiplier`` or ``width`` (base width, 64 in the paper; ``width`` wins if given) scales
every convolution's channels: ``round(c * width / 64)``; ``fc_features`` is not scaled.
``norm="batch"`` adds BatchNorm after every 3x3 convolution (torchvision's ``vgg16_bn``).

Parameter names (for converting torchvision's ``vgg16`` / ``vgg16_bn``; kernels are transposed
``[O, I, kh, kw] -> [kh, kw, I, O]``)::

  features.{i}  (i-th Conv2d of features)  conv{b}_{k}/{kernel,bias}  (b = block 1..5, k = 1..3)
  features.{i+1} (BatchNorm2d, vgg16_bn)    bn{b}_{k}/{scale,bias} + batch_stats {mean,var}
  classifier.0 [4096, 25088]               fc6/kernel [7, 7, 512, 4096]  (reshape to
                                             [4096, 512, 7, 7] first, then transpose)
  classifier.3 [4096, 4096]                fc7/kernel [1, 1, 4096, 4096]
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jaxvision.models.layers.conv import Conv
from jaxvision.models.layers.norm import make_norm

__all__ = ["VGG16", "VGG16_BLOCKS", "POOL_NAMES", "vgg_pool_size"]

# channels of each block's convolutions (configuration D)
VGG16_BLOCKS = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))
POOL_NAMES = ("pool1", "pool2", "pool3", "pool4", "pool5")
FC6_PADDINGS = ("same", "valid")

# torchvision: kaiming_normal_(mode="fan_out", nonlinearity="relu"), bias 0
conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def _ceil_pools(ceil_mode) -> frozenset[str]:
  if ceil_mode is False or ceil_mode is None:
    return frozenset()
  if ceil_mode is True:
    return frozenset({"pool3"})
  if ceil_mode == "all":
    return frozenset(POOL_NAMES)
  if isinstance(ceil_mode, str):
    ceil_mode = (ceil_mode,)
  pools = frozenset(ceil_mode)
  bad = sorted(pools - set(POOL_NAMES))
  if bad:
    raise ValueError(f"ceil_mode must be a bool, 'all' or pool names from {POOL_NAMES}, got "
                     f"{ceil_mode!r} (unknown {bad}).")
  return pools


def vgg_pool_size(n: int, ceil: bool, window: int = 2, stride: int = 2, pad: int = 0) -> int:
  """Output size of a max pool on ``n`` pixels (PyTorch's formula, both rounding modes)."""
  span = n + 2 * pad - window
  if ceil:
    out = -(-span // stride) + 1
    if (out - 1) * stride >= n + pad:  # PyTorch: the last window must start inside the input
      out -= 1
    return out
  return span // stride + 1


class VGG16(nn.Module):
  """VGG-16 feature extractor; see the module docstring for every option.

  Attributes:
    width_multiplier: scales the convolution channels (1.0 = paper).
    fc_as_conv: add ``fc6``/``fc7`` as convolutions (False: stop at ``pool5``).
    fc_features: channels of ``fc6`` and ``fc7`` (4096; SSD 1024).
    pool5_stride: 2 (2x2/2 pool, paper) or 1 (3x3/1 pool with padding 1, SSD).
    fc6_kernel: 7 (paper) or 3 (SSD).
    fc6_dilation: dilation of ``fc6`` (SSD: 6).
    ceil_mode: pools rounding up (False, True = ``pool3``, ``"all"``, or pool names).
    norm: None (paper) or ``"batch"`` (``vgg16_bn``).
    width: base width (64 = paper); overrides ``width_multiplier`` when given.
    fc6_padding: ``"same"`` (default) or ``"valid"`` (paper; with FCN's ``conv1_1_padding=100``).
    conv1_1_padding: zero padding of ``conv1_1`` per side (1; FCN's paper setting: 100).
    dropout_rate: drop-out after ``fc6`` and ``fc7`` in training (0.5; SSD 0).
    axis_name, dtype, bn_momentum, bn_epsilon: as ``ResNet``.
  """
  width_multiplier: float = 1.0
  fc_as_conv: bool = True
  fc_features: int = 4096
  pool5_stride: int = 2
  fc6_dilation: int = 1
  ceil_mode: Any = False
  norm: str | None = None
  width: int | None = None
  fc6_kernel: int = 7
  fc6_padding: str = "same"
  conv1_1_padding: int = 1
  dropout_rate: float = 0.5
  axis_name: str | None = None
  dtype: Any = jnp.float32
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5

  @property
  def base_width(self) -> float:
    return float(self.width) if self.width is not None else 64.0 * float(self.width_multiplier)

  def channels(self, c: int) -> int:
    return max(1, int(round(c * self.base_width / 64.0)))

  @property
  def out_channels(self) -> dict[str, int]:
    ch = {"conv4_3": self.channels(512), "conv5_3": self.channels(512),
          "pool3": self.channels(256), "pool4": self.channels(512), "pool5": self.channels(512)}
    if self.fc_as_conv:
      ch.update(fc6=self.fc_features, fc7=self.fc_features)
    return ch

  @property
  def strides(self) -> dict[str, int]:
    s = {"conv4_3": 8, "pool3": 8, "pool4": 16, "conv5_3": 16, "pool5": 16 * self.pool5_stride}
    if self.fc_as_conv:
      s.update(fc6=s["pool5"], fc7=s["pool5"])
    return s

  def _check(self):
    if self.base_width <= 0:
      raise ValueError(f"VGG16 width/width_multiplier must be positive, got width={self.width!r}, "
                       f"width_multiplier={self.width_multiplier!r}.")
    if self.pool5_stride not in (1, 2):
      raise ValueError(f"pool5_stride must be 1 (SSD) or 2 (paper), got {self.pool5_stride!r}.")
    if self.fc6_kernel < 1 or self.fc6_kernel % 2 == 0:
      raise ValueError(f"fc6_kernel must be an odd positive int, got {self.fc6_kernel!r}.")
    if self.fc6_dilation < 1:
      raise ValueError(f"fc6_dilation must be >= 1, got {self.fc6_dilation!r}.")
    if self.fc6_padding not in FC6_PADDINGS:
      raise ValueError(f"fc6_padding must be one of {FC6_PADDINGS}, got {self.fc6_padding!r}.")
    if self.conv1_1_padding < 0:
      raise ValueError(f"conv1_1_padding must be >= 0, got {self.conv1_1_padding!r}.")
    if self.norm not in (None, "batch"):
      raise ValueError(f"VGG16 norm must be None or 'batch', got {self.norm!r}.")

  @nn.compact
  def __call__(self, x, train: bool = False):
    if x.ndim != 4:
      raise ValueError(f"VGG16 expects NHWC images [B, H, W, C], got shape {tuple(x.shape)}.")
    self._check()
    ceil_pools = _ceil_pools(self.ceil_mode)
    norm = make_norm(self.norm, train=train, axis_name=self.axis_name, momentum=self.bn_momentum,
                     epsilon=self.bn_epsilon, dtype=self.dtype)
    conv = functools.partial(Conv, kernel_init=conv_init, dtype=self.dtype)
    feats = {}
    for b, block in enumerate(VGG16_BLOCKS, start=1):
      for k, c in enumerate(block, start=1):
        pad = self.conv1_1_padding if (b, k) == (1, 1) else 1
        x = conv(self.channels(c), (3, 3), padding=((pad, pad), (pad, pad)), name=f"conv{b}_{k}")(x)
        if norm is not None:
          x = norm(name=f"bn{b}_{k}")(x)
        x = nn.relu(x)
      if b >= 4:
        feats[f"conv{b}_3"] = x  # conv4_3 (B, H/8, W/8, 512w), conv5_3 (B, H/16, W/16, 512w)
      name = f"pool{b}"
      if b == 5 and self.pool5_stride == 1:
        x = nn.max_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)))  # (B, H/16, W/16, C)
      else:
        x = _max_pool_2x2(x, ceil=name in ceil_pools)  # (B, H/2^b, W/2^b, C)
      if b >= 3:
        feats[name] = x
    if not self.fc_as_conv:
      return feats
    k, d = self.fc6_kernel, self.fc6_dilation
    pad = d * (k - 1) // 2 if self.fc6_padding == "same" else 0
    x = conv(self.fc_features, (k, k), kernel_dilation=(d, d), padding=((pad, pad), (pad, pad)),
             name="fc6")(x)  # (B, h5, w5, F) same; (B, h5 - d(k-1), ...) valid
    x = nn.relu(x)
    feats["fc6"] = x
    x = nn.Dropout(self.dropout_rate, deterministic=not train or self.dropout_rate == 0)(x)
    x = nn.relu(conv(self.fc_features, (1, 1), name="fc7")(x))
    x = nn.Dropout(self.dropout_rate, deterministic=not train or self.dropout_rate == 0)(x)
    feats["fc7"] = x  # (B, h6, w6, F)
    return feats


def _max_pool_2x2(x, *, ceil: bool):
  """2x2 max pool, stride 2; ``ceil`` pads bottom/right with -inf so ``n -> ceil(n / 2)``."""
  _, h, w, _ = x.shape
  pads = []
  for n in (h, w):
    out = vgg_pool_size(n, ceil)
    pads.append((0, max(0, (out - 1) * 2 + 2 - n)))
  return nn.max_pool(x, (2, 2), strides=(2, 2), padding=tuple(pads))
