"""DeconvNet: Noh, Hong and Han, "Learning Deconvolution Network for Semantic Segmentation",
ICCV 2015 (https://arxiv.org/abs/1505.04366).

Architecture (paper Sec. 3.1, Fig. 2, Table 1). The convolution network is VGG16's 13 convolutions
(stages of 2, 2, 3, 3, 3 layers with 64, 128, 256, 512, 512 channels; 3x3 + BatchNorm + ReLU) with
a 2x2 stride-2 max pooling after every stage that records the location of each maximum in
**switch variables**, then VGG's fully connected layers as convolutions: ``fc6`` a 7x7 convolution
(4096 channels; on the paper's 224 x 224 input pool5 is 7 x 7, so fc6 is 1 x 1: a holistic code of
the whole proposal) and ``fc7`` a 1x1 convolution (4096). The deconvolution network mirrors it:
``deconv-fc6``, a 7x7 transposed convolution back to pool5's size and 512 channels, then per stage
(deepest first) **unpooling** with that stage's switch variables (values back at the argmax
positions, zeros elsewhere, "a sparse activation map") followed by as many **deconvolution
layers** (3x3 stride-1 transposed convolutions + BatchNorm + ReLU, densifying the sparse map; the
last one of a stage narrows to the next stage's width: deconv4_3 512 -> 256, ...). A final 1x1
convolution gives the class scores. BatchNorm follows every convolution and deconvolution
(paper Sec. 4.1, "to reduce the internal-covariate-shift"). ~252M parameters at 21 classes.

Sizes. ``fc6`` is unpadded, so the last pooled map must be at least ``fc_kernel`` pixels high and
wide: ``deconvnet_min_input_size`` gives the smallest input (193 for the paper's network with
ceil-mode pooling; the paper uses 224 x 224 proposals). ``deconv-fc6`` restores the pooled size
exactly, unpooling is ceil-mode like Caffe's (``max_pool_2x2_with_argmax``), so the logits have the
input's size for every usable input. The paper applies the network to object proposals and
aggregates them (and optionally a CRF/FCN ensemble); this module is the network, applied to the
whole image.

Options: ``upsampling`` swaps the switch unpooling for another 2x method of
``jaxvision.models.layers.upsample`` (e.g. ``"transposed"``: a learnable strided deconvolution as
in FCN, or ``"nearest"``); ``fc_kernel``/``fc_features`` shrink the holistic layers (e.g. a 4x4
fc6 on a 128 px image with 5 stages gives the same 1 x 1 code); ``dropout_rate`` after fc6/fc7
(VGG's; DeconvNet's released model has none: default 0); ``norm=None``.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from jaxvision.models.family import Family, segmentation_family
from jaxvision.models.layers.conv import Conv, ConvNormAct, ConvTranspose
from jaxvision.models.layers.upsample import (UPSAMPLE_METHODS, Upsample2x, max_pool_2x2,
                                              max_pool_2x2_with_argmax)
from jaxvision.models.layers.norm import make_norm
from jaxvision.models.segmentation._common import (check_image, check_positive_ints,
                                                   cross_entropy_pieces, he_init,
                                                   parse_model_config)

__all__ = ["DeconvNet", "DeconvNetPaper", "DeconvNetTiny", "make_deconvnet",
           "deconvnet_min_input_size"]


def _pooled(size: int, num_stages: int) -> int:
  for _ in range(num_stages):
    size = -(-size // 2)  # ceil-mode 2x2 pooling
  return size


def deconvnet_min_input_size(num_stages: int = 5, fc_kernel: int = 7) -> int:
  """Smallest input height/width whose last pooled map fits ``fc6`` (``fc_kernel`` pixels).

  With ceil-mode pooling a map of ``(k - 1) 2^S + 1`` pixels pools to ``k`` after ``S`` stages
  (193 for the paper's 5 stages and 7x7 fc6).
  """
  num_stages = check_positive_ints(num_stages, "num_stages", 1)[0]
  fc_kernel = check_positive_ints(fc_kernel, "fc_kernel", 1)[0]
  return (fc_kernel - 1) * 2**num_stages + 1


class DeconvNet(nn.Module):
  """DeconvNet (Noh et al. 2015); see the module docstring.

  Attributes:
    num_classes: output channels ``K`` (label-map classes, background included).
    stage_depths: convolutions per stage (= deconvolutions per decoder stage); VGG16 ``(2,2,3,3,3)``.
    widths: channels per stage; VGG16 ``(64, 128, 256, 512, 512)``.
    fc_features: channels of fc6 and fc7 (4096).
    fc_kernel: fc6's kernel (and deconv-fc6's): 7.
    upsampling: ``"max_unpool"`` (the paper's switch variables) or another of ``UPSAMPLE_METHODS``.
    dropout_rate: drop-out after fc6 and fc7 in training (needs a ``"dropout"`` rng when > 0).
    norm: ``"batch"`` (the paper) or ``None``.
    axis_name, bn_momentum, bn_epsilon, dtype: as the other families.

  ``__call__(x [B, H, W, C_in], *, train) -> {"logits": [B, H, W, num_classes]}``, ``H, W >=
  deconvnet_min_input_size(len(stage_depths), fc_kernel)``.
  """
  num_classes: int
  stage_depths: Sequence[int] = (2, 2, 3, 3, 3)
  widths: Sequence[int] = (64, 128, 256, 512, 512)
  fc_features: int = 4096
  fc_kernel: int = 7
  upsampling: str = "max_unpool"
  dropout_rate: float = 0.0
  norm: str | None = "batch"
  axis_name: str | None = None
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool):
    check_image(x, "DeconvNet")
    check_positive_ints(self.num_classes, "num_classes", 1)
    depths = check_positive_ints(self.stage_depths, "stage_depths")
    widths = check_positive_ints(self.widths, "widths", len(depths))
    fc_features = check_positive_ints(self.fc_features, "fc_features", 1)[0]
    k = check_positive_ints(self.fc_kernel, "fc_kernel", 1)[0]
    if self.upsampling not in UPSAMPLE_METHODS:
      raise ValueError(f"upsampling must be one of {UPSAMPLE_METHODS}, got {self.upsampling!r}.")
    if not 0.0 <= self.dropout_rate < 1.0:
      raise ValueError(f"dropout_rate must be in [0, 1), got {self.dropout_rate!r}.")
    min_size = deconvnet_min_input_size(len(depths), k)
    for axis, size in (("height", x.shape[1]), ("width", x.shape[2])):
      if size < min_size:
        raise ValueError(
            f"DeconvNet: x's {axis} {size} (x shape {tuple(x.shape)}) pools to "
            f"{_pooled(size, len(depths))} after {len(depths)} stages, smaller than fc_kernel={k}; "
            f"the input must be >= {min_size} (deconvnet_min_input_size), or lower fc_kernel.")

    conv = functools.partial(Conv, dtype=self.dtype, kernel_init=he_init)
    conv_t = functools.partial(ConvTranspose, dtype=self.dtype, kernel_init=he_init)
    norm = make_norm(self.norm, train=train, axis_name=self.axis_name, momentum=self.bn_momentum,
                     epsilon=self.bn_epsilon, dtype=self.dtype)
    unit = functools.partial(ConvNormAct, conv=conv, norm=norm, act=nn.relu)
    deconv_unit = functools.partial(ConvNormAct, conv=conv_t, norm=norm, act=nn.relu)
    use_switches = self.upsampling == "max_unpool"

    # Convolution network (VGG16), keeping the switch variables of every pooling.
    sizes, switches = [], []
    for s, (depth, width) in enumerate(zip(depths, widths)):
      for j in range(depth):
        x = unit(width, (3, 3), name=f"conv{s + 1}_{j + 1}")(x)  # (B, H_s, W_s, F_s)
      sizes.append(x.shape[1:3])
      if use_switches:
        x, idx = max_pool_2x2_with_argmax(x)  # (B, ceil(H_s/2), ceil(W_s/2), F_s)
        switches.append(idx)
      else:
        x = max_pool_2x2(x)
        switches.append(None)
    pooled_hw = x.shape[1:3]
    x = unit(fc_features, (k, k), padding="VALID", name="fc6")(x)  # (B, h - k + 1, w - k + 1, 4096)
    if self.dropout_rate > 0:
      x = nn.Dropout(self.dropout_rate, deterministic=not train, name="drop6")(x)
    x = unit(fc_features, (1, 1), name="fc7")(x)  # (B, h - k + 1, w - k + 1, 4096)
    if self.dropout_rate > 0:
      x = nn.Dropout(self.dropout_rate, deterministic=not train, name="drop7")(x)

    # Deconvolution network.
    x = deconv_unit(widths[-1], (k, k), padding="VALID", name="deconv_fc6")(x)  # (B, h, w, 512)
    assert x.shape[1:3] == pooled_hw, (x.shape, pooled_hw)  # VALID transposed conv: +k - 1
    for s in reversed(range(len(depths))):
      x = Upsample2x(self.upsampling, features=widths[s], conv=conv, conv_transpose=conv_t,
                     name=f"unpool{s + 1}")(x, sizes[s], switches[s])  # (B, H_s, W_s, F_s)
      for j in range(depths[s]):
        out = widths[s - 1] if (j == depths[s] - 1 and s > 0) else widths[s]
        x = deconv_unit(out, (3, 3), padding="SAME", name=f"deconv{s + 1}_{j + 1}")(x)

    logits = conv(self.num_classes, (1, 1), name="score")(x)  # (B, H, W, K)
    return {"logits": logits.astype(jnp.float32)}


DeconvNetPaper = functools.partial(DeconvNet, stage_depths=(2, 2, 3, 3, 3),
                                   widths=(64, 128, 256, 512, 512), fc_features=4096, fc_kernel=7)
# Test-only: the paper's layout at a few thousand parameters; needs inputs >= 33 px.
DeconvNetTiny = functools.partial(DeconvNet, stage_depths=(2, 2, 3, 3, 3), widths=(4, 4, 8, 8, 8),
                                  fc_features=16, fc_kernel=2)


# ------------------------------------------------------------------------------------------------
# Family glue
# ------------------------------------------------------------------------------------------------


_PRESETS = {"paper": DeconvNetPaper, "tiny": DeconvNetTiny}
_MODULE_KEYS = ("stage_depths", "widths", "fc_features", "fc_kernel", "upsampling", "dropout_rate",
                "norm", "axis_name", "bn_momentum", "bn_epsilon", "dtype")
_LOSS_KEYS = ("class_weights",)


def make_deconvnet(model_config: Any, num_classes: int) -> Family:
  """Builds the DeconvNet family from ``config.model`` (``MODELS["deconvnet"]``).

  Keys (all optional): ``preset`` (``"paper"`` or ``"tiny"``; default: ``DeconvNet``'s field
  defaults, the paper's), the ``DeconvNet`` fields ``stage_depths``, ``widths``, ``fc_features``,
  ``fc_kernel``, ``upsampling``, ``dropout_rate``, ``norm``, ``axis_name``, ``bn_momentum``,
  ``bn_epsilon``, ``dtype``, and ``class_weights`` (``C`` floats). ``name`` is ignored.

  Raises:
    ValueError: an unknown key (listing the known ones), preset or bad ``class_weights``.
  """
  kwargs, loss_cfg, preset = parse_model_config(model_config, family="DeconvNet",
                                                module_keys=_MODULE_KEYS, loss_keys=_LOSS_KEYS,
                                                presets=_PRESETS)
  module = (_PRESETS[preset] if preset else DeconvNet)(num_classes=num_classes, **kwargs)
  loss, loss_normalizer = cross_entropy_pieces(num_classes, loss_cfg.get("class_weights"))
  return segmentation_family(module, num_classes=num_classes, loss=loss,
                             loss_normalizer=loss_normalizer)
