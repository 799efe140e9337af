"""SegNet: Badrinarayanan, Kendall and Cipolla, "SegNet: A Deep Convolutional Encoder-Decoder
Architecture for Image Segmentation", TPAMI 2017 (https://arxiv.org/abs/1511.00561).

Architecture (paper Sec. 3, Fig. 2-3). The encoder is the 13 convolutional layers of VGG16 in five
stages (2, 2, 3, 3, 3 convolutions of 64, 128, 256, 512, 512 channels), each a 3x3 convolution +
BatchNorm + ReLU, every stage followed by a 2x2 stride-2 max pooling whose argmax positions (the
"pooling indices", 2 bits per window in the paper) are *stored*. VGG's fully connected layers are
dropped. The decoder mirrors the encoder: per stage it upsamples with **max unpooling** at the
stored indices (each value goes back where its maximum was, zeros elsewhere: a sparse map), then
densifies it with a trainable bank of 3x3 convolutions + BatchNorm (+ ReLU); the last convolution
of a decoder stage reduces the channels to the next stage's width (Caffe model: conv4_1_D 512 ->
256, ...). A final 1x1 convolution is the pixel-wise soft-max classifier. Unlike U-Net nothing but
the indices crosses from encoder to decoder, so the decoder is cheap in memory.

``SegNetBasic`` is the paper's smaller analysis network (Sec. 4.1): 4 encoders and 4 decoders of one
7x7 convolution of 64 channels each, BatchNorm after every convolution, no biases, and *no ReLU in
the decoder*.

Odd sizes: pooling is in ceil mode as in the authors' Caffe model (``max_pool_2x2_with_argmax``), so
any input size works and the logits have the input's size.

Options (not in the paper): ``upsampling`` replaces the index unpooling by another 2x upsampling of
``jaxvision.models.layers.upsample`` (``"nearest"``, ``"bed_of_nails"``, ``"bilinear"``,
``"transposed"``, ``"resize_conv"``, ``"pixel_shuffle"``), the comparison the paper makes with
its "decoder variants" (Sec. 4.1); ``norm=None`` drops BatchNorm; ``class_weights`` in the family
(the paper trains with median-frequency balancing, Sec. 3.1).
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from jaxvision.models.family import Family, segmentation_family
from jaxvision.models.layers.norm import make_norm
from jaxvision.models.segmentation._common import (check_image, check_positive_ints,
                                                   cross_entropy_pieces, he_init,
                                                   parse_model_config)
from jaxvision.models.layers.conv import Conv, ConvNormAct, ConvTranspose
from jaxvision.models.layers.upsample import (UPSAMPLE_METHODS, Upsample2x, max_pool_2x2,
                                              max_pool_2x2_with_argmax)

__all__ = ["SegNet", "SegNetPaper", "SegNetBasic", "SegNetTiny", "make_segnet"]

# ------------------------------------------------------------------------------------------------
# The network
# ------------------------------------------------------------------------------------------------


class SegNet(nn.Module):
  """SegNet (Badrinarayanan et al. 2017); see the module docstring.

  Attributes:
    num_classes: output channels ``K`` (label-map classes, background included).
    stage_depths: convolutions per encoder stage (= per decoder stage); VGG16: ``(2, 2, 3, 3, 3)``.
    widths: channels of each stage; VGG16: ``(64, 128, 256, 512, 512)``.
    kernel_size: of every encoder/decoder convolution (3; SegNet-Basic: 7).
    upsampling: ``"max_unpool"`` (the paper: pooling indices) or another method of
      ``jaxvision.models.layers.upsample.UPSAMPLE_METHODS``.
    decoder_relu: ReLU after the decoder's convolutions (the authors' SegNet model: yes;
      SegNet-Basic: no).
    norm: ``"batch"`` (the paper) or ``None``.
    axis_name, bn_momentum, bn_epsilon: cross-replica axis and BatchNorm parameters.
    dtype: compute dtype; parameters and logits are float32.

  ``__call__(x [B, H, W, C_in], *, train) -> {"logits": [B, H, W, num_classes]}`` for any ``H, W``.
  """
  num_classes: int
  stage_depths: Sequence[int] = (2, 2, 3, 3, 3)
  widths: Sequence[int] = (64, 128, 256, 512, 512)
  kernel_size: int = 3
  upsampling: str = "max_unpool"
  decoder_relu: bool = True
  norm: str | None = "batch"
  axis_name: str | None = None
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool):
    check_image(x, "SegNet")
    check_positive_ints(self.num_classes, "num_classes", 1)
    depths = check_positive_ints(self.stage_depths, "stage_depths")
    widths = check_positive_ints(self.widths, "widths", len(depths))
    k = check_positive_ints(self.kernel_size, "kernel_size", 1)[0]
    if self.upsampling not in UPSAMPLE_METHODS:
      raise ValueError(f"upsampling must be one of {UPSAMPLE_METHODS}, got {self.upsampling!r}.")
    conv = functools.partial(Conv, dtype=self.dtype, kernel_init=he_init)
    conv_t = functools.partial(ConvTranspose, dtype=self.dtype, kernel_init=he_init)
    norm = make_norm(self.norm, train=train, axis_name=self.axis_name, momentum=self.bn_momentum,
                     epsilon=self.bn_epsilon, dtype=self.dtype)
    unit = functools.partial(ConvNormAct, kernel_size=(k, k), padding="SAME", conv=conv, norm=norm)
    use_indices = self.upsampling == "max_unpool"

    # Encoder: VGG stages, each followed by a 2x2 max pool whose indices are kept.
    sizes, switches = [], []
    for s, (depth, width) in enumerate(zip(depths, widths)):
      for j in range(depth):
        x = unit(width, act=nn.relu, name=f"enc{s + 1}_{j + 1}")(x)  # (B, H_s, W_s, F_s)
      sizes.append(x.shape[1:3])
      if use_indices:
        x, idx = max_pool_2x2_with_argmax(x)  # (B, ceil(H_s/2), ceil(W_s/2), F_s), same for idx
        switches.append(idx)
      else:
        x = max_pool_2x2(x)
        switches.append(None)

    # Decoder: unpool at the stored indices, then convolutions; the last one of a stage narrows to
    # the next (shallower) stage's width.
    act = nn.relu if self.decoder_relu else None
    for s in reversed(range(len(depths))):
      x = Upsample2x(self.upsampling, features=widths[s], conv=conv, conv_transpose=conv_t,
                     name=f"up{s + 1}")(x, sizes[s], switches[s])  # (B, H_s, W_s, F_s)
      for j in reversed(range(depths[s])):
        out = widths[s - 1] if (j == 0 and s > 0) else widths[s]
        x = unit(out, act=act, name=f"dec{s + 1}_{j + 1}")(x)  # (B, H_s, W_s, F)

    logits = conv(self.num_classes, (1, 1), name="classifier")(x)  # (B, H, W, K)
    return {"logits": logits.astype(jnp.float32)}


SegNetPaper = functools.partial(SegNet, stage_depths=(2, 2, 3, 3, 3),
                                widths=(64, 128, 256, 512, 512), kernel_size=3)
SegNetBasic = functools.partial(SegNet, stage_depths=(1, 1, 1, 1), widths=(64, 64, 64, 64),
                                kernel_size=7, decoder_relu=False)
# Test-only: the VGG16 layout (13 + 13 convolutions) at a few thousand parameters.
SegNetTiny = functools.partial(SegNet, stage_depths=(2, 2, 3, 3, 3), widths=(4, 4, 8, 8, 8))


# ------------------------------------------------------------------------------------------------
# Family glue
# ------------------------------------------------------------------------------------------------


_PRESETS = {"paper": SegNetPaper, "basic": SegNetBasic, "tiny": SegNetTiny}
_MODULE_KEYS = ("stage_depths", "widths", "kernel_size", "upsampling", "decoder_relu", "norm",
                "axis_name", "bn_momentum", "bn_epsilon", "dtype")
_LOSS_KEYS = ("class_weights",)


def make_segnet(model_config: Any, num_classes: int) -> Family:
  """Builds the SegNet family from ``config.model`` (``MODELS["segnet"]``).

  Keys (all optional): ``preset`` (``"paper"``, ``"basic"`` or ``"tiny"``; default ``SegNet``'s
  field defaults, which are the paper's), the ``SegNet`` fields ``stage_depths``, ``widths``,
  ``kernel_size``, ``upsampling``, ``decoder_relu``, ``norm``, ``axis_name``, ``bn_momentum``,
  ``bn_epsilon``, ``dtype``, and ``class_weights`` (``C`` floats, e.g. the paper's median-frequency
  balancing). ``name`` is ignored.

  Raises:
    ValueError: an unknown key (listing the known ones), preset or bad ``class_weights``.
  """
  kwargs, loss_cfg, preset = parse_model_config(model_config, family="SegNet",
                                                module_keys=_MODULE_KEYS, loss_keys=_LOSS_KEYS,
                                                presets=_PRESETS)
  module = (_PRESETS[preset] if preset else SegNet)(num_classes=num_classes, **kwargs)
  loss, loss_normalizer = cross_entropy_pieces(num_classes, loss_cfg.get("class_weights"))
  return segmentation_family(module, num_classes=num_classes, loss=loss,
                             loss_normalizer=loss_normalizer)
