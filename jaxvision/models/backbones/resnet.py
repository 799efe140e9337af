"""ResNet backbones: He, Zhang, Ren and Sun, "Deep Residual Learning for Image Recognition", CVPR 2016
(https://arxiv.org/abs/1512.03385), in torchvision's "v1.5" form, with DeepLab's dilated variants.

``ResNet(depth, ...)(x, train) -> {"C2", "C3", "C4", "C5"}``, the outputs of the four stages
(``conv2_x`` .. ``conv5_x`` in the paper, ``layer1`` .. ``layer4`` in torchvision) at strides
4, 8, 16 and 32 of the input. Architecture, as torchvision's ``resnet18/34/50/101``:

* stem: 7x7 convolution, stride 2, padding 3 (no bias) -> norm -> ReLU -> 3x3 max pool, stride 2,
  padding 1 (padded with -inf);
* ``depth`` 18/34: ``BasicBlock`` (two 3x3 convolutions), stages of 2-2-2-2 / 3-4-6-3 blocks;
  ``depth`` 50/101: ``Bottleneck`` (1x1 -> 3x3 -> 1x1 with 4x expansion), 3-4-6-3 / 3-4-23-3 blocks,
  the stride of a stage's first block on its 3x3 convolution (torchvision's v1.5; the paper's
  v1 strides the first 1x1);
* a projection shortcut (1x1 convolution with the block's stride, then norm) where the block changes
  the stride or the channels, identity otherwise; ReLU after the sum.

Every padding is explicit and symmetric (``dilation * (k - 1) // 2`` per side), as PyTorch's, not
``"SAME"`` (which pads only bottom/right for a stride-2 convolution on an even size): converted
torchvision weights give the same numbers. Convolutions are initialised as torchvision's
(``kaiming_normal_(mode="fan_out")``), norms to scale 1 / bias 0.

``width`` scales every channel count: stage ``i`` has ``width * 2**i`` channels (``* 4`` after a
bottleneck), the stem ``width``; ``width=64`` is the paper's network, ``width=8`` a tiny CPU one.

Dilation (``output_stride``). DeepLab (Chen et al. 2017) keeps resolution by removing the last
strides and dilating what follows, torchvision's ``replace_stride_with_dilation``:
``output_stride=16`` makes stage 5 stride 1 with dilation 2 (``C5`` at stride 16);
``output_stride=8`` makes stages 4 and 5 stride 1 with dilations 2 and 4 (``C4``, ``C5`` at
stride 8). As in torchvision, the first block of a dilated stage uses the previous stage's dilation
on its 3x3 convolution and the other blocks the new one. ``multi_grid`` (DeepLabv3 Sec. 3.2, e.g.
``(1, 2, 4)``) instead gives block ``j`` of stage 5 the dilation ``rate * multi_grid[j]``
(``rate`` = stage 5's dilation, 1 when not dilated), the first block included. torchvision has no
dilated ``BasicBlock``; here its two 3x3 convolutions both use the block's dilation.

Parameter names (for converting torchvision state dicts; ``<bn>`` is ``params`` ``scale``/``bias``
plus ``batch_stats`` ``mean``/``var`` for ``norm="batch"``, all four in ``batch_stats`` for
``norm="frozen"``)::

  torchvision                        jaxvision (path in params / batch_stats)
  conv1.weight [O,I,7,7]             conv1/kernel [7,7,I,O]   (transpose (2, 3, 1, 0))
  bn1.{weight,bias,running_*}        bn1/{scale,bias,mean,var}
  layer{s}.{b}.conv{k}.weight        layer{s}_{b}/conv{k}/kernel
  layer{s}.{b}.bn{k}.*               layer{s}_{b}/bn{k}/*
  layer{s}.{b}.downsample.0.weight   layer{s}_{b}/downsample_conv/kernel
  layer{s}.{b}.downsample.1.*        layer{s}_{b}/downsample_bn/*

(``s`` = 1..4, ``b`` = 0-based block index, ``k`` = 1..2 basic / 1..3 bottleneck; ``fc`` is not
part of the backbone.)
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxvision.models.layers.conv import Conv
from jaxvision.models.layers.norm import NORMS, make_norm

__all__ = ["ResNet", "BasicBlock", "Bottleneck", "RESNET_STAGES", "resnet_dilations",
           "resnet_trainable_mask", "ResNet18", "ResNet34", "ResNet50", "ResNet101"]

# depth -> (block kind, blocks per stage)
RESNET_STAGES = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
}
OUTPUT_STRIDES = (32, 16, 8)

# torchvision: nn.init.kaiming_normal_(w, mode="fan_out", nonlinearity="relu")
conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def _conv(features: int, kernel: int, *, stride: int = 1, dilation: int = 1, name: str,
          dtype: Any):
  pad = dilation * (kernel - 1) // 2
  return Conv(features, (kernel, kernel), strides=(stride, stride), padding=((pad, pad), (pad, pad)),
              kernel_dilation=(dilation, dilation), use_bias=False, kernel_init=conv_init,
              dtype=dtype, name=name)


class BasicBlock(nn.Module):
  """Two 3x3 convolutions with a residual connection; ``expansion`` 1.

  ``[B, H, W, C_in] -> [B, H / stride, W / stride, features]``. ``norm`` is a norm constructor
  (``make_norm``). Submodules: ``conv1``, ``bn1``, ``conv2``, ``bn2`` and, when the shortcut
  projects, ``downsample_conv``, ``downsample_bn``.
  """
  features: int
  stride: int = 1
  dilation: int = 1
  norm: Any = None
  zero_init_residual: bool = False
  dtype: Any = jnp.float32
  expansion = 1

  @nn.compact
  def __call__(self, x):
    conv = functools.partial(_conv, dtype=self.dtype)
    out = conv(self.features, 3, stride=self.stride, dilation=self.dilation, name="conv1")(x)
    out = nn.relu(self.norm(name="bn1")(out))  # (B, H/s, W/s, F)
    out = conv(self.features, 3, dilation=self.dilation, name="conv2")(out)
    out = self.norm(name="bn2", **_last_norm_init(self.norm, self.zero_init_residual))(out)
    return nn.relu(out + _shortcut(x, self.features, self.stride, self.norm, self.dtype))


class Bottleneck(nn.Module):
  """1x1 (reduce) -> 3x3 (stride, dilation) -> 1x1 (expand x4), residual; torchvision's v1.5.

  ``[B, H, W, C_in] -> [B, H / stride, W / stride, 4 features]``. Submodules ``conv1..3``,
  ``bn1..3`` and, when the shortcut projects, ``downsample_conv``, ``downsample_bn``.
  """
  features: int
  stride: int = 1
  dilation: int = 1
  norm: Any = None
  zero_init_residual: bool = False
  dtype: Any = jnp.float32
  expansion = 4

  @nn.compact
  def __call__(self, x):
    conv = functools.partial(_conv, dtype=self.dtype)
    out = nn.relu(self.norm(name="bn1")(conv(self.features, 1, name="conv1")(x)))  # (B, H, W, F)
    out = conv(self.features, 3, stride=self.stride, dilation=self.dilation, name="conv2")(out)
    out = nn.relu(self.norm(name="bn2")(out))  # (B, H/s, W/s, F)
    out = conv(self.features * 4, 1, name="conv3")(out)  # (B, H/s, W/s, 4F)
    out = self.norm(name="bn3", **_last_norm_init(self.norm, self.zero_init_residual))(out)
    return nn.relu(out + _shortcut(x, self.features * 4, self.stride, self.norm, self.dtype))


def _last_norm_init(norm, zero_init_residual: bool) -> dict:
  """torchvision's ``zero_init_residual``: the last BN's scale starts at 0 (trainable BN only)."""
  if zero_init_residual and getattr(norm, "func", None) is nn.BatchNorm:
    return {"scale_init": nn.initializers.zeros}
  return {}


def _shortcut(x, features: int, stride: int, norm, dtype):
  """Identity, or a 1x1 strided projection + norm where the shape changes (torchvision's rule)."""
  if stride == 1 and x.shape[-1] == features:
    return x
  y = _conv(features, 1, stride=stride, name="downsample_conv", dtype=dtype)(x)
  return norm(name="downsample_bn")(y)


def resnet_dilations(depth: int, output_stride: int = 32,
                     multi_grid: Sequence[int] | None = None) -> list[list[tuple[int, int]]]:
  """``(stride, dilation)`` of every block's 3x3 (strided) convolution, per stage.

  E.g. ``resnet_dilations(50, 8)[3] == [(1, 2), (1, 4), (1, 4)]``: stage 5 (``layer4``) at output
  stride 8 starts with the previous stage's dilation 2 (torchvision's rule).
  """
  if depth not in RESNET_STAGES:
    raise ValueError(f"depth must be one of {sorted(RESNET_STAGES)}, got {depth!r}.")
  if output_stride not in OUTPUT_STRIDES:
    raise ValueError(f"output_stride must be one of {OUTPUT_STRIDES}, got {output_stride!r}.")
  _, blocks = RESNET_STAGES[depth]
  if multi_grid is not None:
    multi_grid = tuple(int(m) for m in multi_grid)
    if len(multi_grid) != blocks[3] or any(m < 1 for m in multi_grid):
      raise ValueError(f"multi_grid must be {blocks[3]} positive ints (one per block of the last "
                       f"stage of ResNet-{depth}), got {multi_grid!r}.")
  # Stages 4 and 5 (indices 2, 3) lose their stride when dilated.
  dilate = {32: (False, False), 16: (False, True), 8: (True, True)}[output_stride]
  plan, dilation = [], 1
  for s, n in enumerate(blocks):
    stride = 1 if s == 0 else 2
    previous = dilation
    if s >= 2 and dilate[s - 2]:
      dilation *= stride
      stride = 1
    rates = [previous] + [dilation] * (n - 1)
    if s == 3 and multi_grid is not None:
      rates = [dilation * m for m in multi_grid]
    plan.append([(stride if b == 0 else 1, rates[b]) for b in range(n)])
  return plan


class ResNet(nn.Module):
  """ResNet backbone returning ``{"C2", "C3", "C4", "C5"}``; see the module docstring.

  Attributes:
    depth: 18, 34, 50 or 101.
    width: channels of the stem and of stage 2 (64 in the paper); all channels scale with it.
    output_stride: 32 (plain), 16 (``C5`` dilated) or 8 (``C4`` and ``C5`` dilated).
    norm: ``"batch"`` (``nn.BatchNorm``, cross-replica over ``axis_name`` in training) or
      ``"frozen"`` (``FrozenBatchNorm``: fixed statistics, torchvision's detection backbones).
    axis_name: mapped axis for cross-replica BatchNorm (None: per-device statistics).
    dtype: compute dtype (parameters stay float32).
    multi_grid: DeepLabv3 unit rates for the last stage (see the module docstring), or None.
    zero_init_residual: start each block's last BatchNorm scale at 0 (torchvision's option).
    bn_momentum, bn_epsilon: BatchNorm settings (Flax momentum convention; 0.9 = PyTorch's 0.1).

  ``__call__(x [B, H, W, 3], train: bool)``: ``C2 [B, H/4, W/4, c]``, ``C3`` at ``/8``, ``C4`` at
  ``/16``, ``C5`` at ``/32`` (sizes rounded up: each stride-2 layer maps ``n`` to ``ceil(n / 2)``),
  less downsampling when dilated; ``c = width * {1, 2, 4, 8}`` times the block expansion.
  """
  depth: int = 50
  width: int = 64
  output_stride: int = 32
  norm: str = "batch"
  axis_name: str | None = None
  dtype: Any = jnp.float32
  multi_grid: Sequence[int] | None = None
  zero_init_residual: bool = False
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5

  @property
  def block_cls(self):
    return BasicBlock if RESNET_STAGES[self.depth][0] == "basic" else Bottleneck

  @property
  def out_channels(self) -> dict[str, int]:
    """Channels of ``C2..C5``."""
    if self.depth not in RESNET_STAGES:
      raise ValueError(f"depth must be one of {sorted(RESNET_STAGES)}, got {self.depth!r}.")
    e = self.block_cls.expansion
    return {f"C{s + 2}": self.width * 2**s * e for s in range(4)}

  @property
  def strides(self) -> dict[str, int]:
    """Output stride of ``C2..C5``."""
    c4 = 8 if self.output_stride == 8 else 16
    return {"C2": 4, "C3": 8, "C4": c4, "C5": min(32, self.output_stride)}

  @nn.compact
  def __call__(self, x, train: bool = False):
    if x.ndim != 4:
      raise ValueError(f"ResNet expects NHWC images [B, H, W, C], got shape {tuple(x.shape)}.")
    if self.norm not in NORMS:
      raise ValueError(f"ResNet norm must be one of {NORMS}, got {self.norm!r}.")
    if isinstance(self.width, bool) or not isinstance(self.width, int) or self.width < 1:
      raise ValueError(f"ResNet width must be a positive int, got {self.width!r}.")
    plan = resnet_dilations(self.depth, self.output_stride, self.multi_grid)
    norm = make_norm(self.norm, train=train, axis_name=self.axis_name, momentum=self.bn_momentum,
                     epsilon=self.bn_epsilon, dtype=self.dtype)
    x = _conv(self.width, 7, stride=2, name="conv1", dtype=self.dtype)(x)  # (B, H/2, W/2, w)
    x = nn.relu(norm(name="bn1")(x))
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))  # (B, H/4, W/4, w)
    feats = {}
    for s, blocks in enumerate(plan):
      for b, (stride, dilation) in enumerate(blocks):
        x = self.block_cls(self.width * 2**s, stride=stride, dilation=dilation, norm=norm,
                           zero_init_residual=self.zero_init_residual, dtype=self.dtype,
                           name=f"layer{s + 1}_{b}")(x)
      feats[f"C{s + 2}"] = x  # (B, H/2^(s+2), W/2^(s+2), width 2^s e) undilated
    return feats


def resnet_trainable_mask(params: Any, trainable_layers: int = 3) -> Any:
  """A bool pytree over a ResNet's ``params``: True for the ``trainable_layers`` last stages.

  torchvision's detection backbones train only ``layer2..layer4`` (``trainable_layers=3``; 5 = all,
  including the stem ``conv1``/``bn1``; 0 = none). Use it with ``optax.masked`` or
  ``optax.multi_transform`` (frozen leaves get ``optax.set_to_zero()``). ``params`` is the ResNet's
  own params dict (``variables["params"]``, or the sub-dict of a model that contains one).
  """
  if not 0 <= int(trainable_layers) <= 5:
    raise ValueError(f"trainable_layers must be in 0..5, got {trainable_layers!r}.")
  trainable = ["layer4", "layer3", "layer2", "layer1", "conv1"][:int(trainable_layers)]
  if int(trainable_layers) == 5:
    trainable.append("bn1")

  def top_level(name: str) -> str:
    return name.split("_")[0]

  return {k: jax.tree.map(lambda _, t=top_level(k) in trainable: t, v) for k, v in params.items()}


ResNet18 = functools.partial(ResNet, depth=18)
ResNet34 = functools.partial(ResNet, depth=34)
ResNet50 = functools.partial(ResNet, depth=50)
ResNet101 = functools.partial(ResNet, depth=101)
