"""DeepLab (v3): Chen, Papandreou, Schroff and Adam, "Rethinking Atrous Convolution for Semantic Image
Segmentation", 2017 (https://arxiv.org/abs/1706.05587), on the atrous ResNet of DeepLabv2 (Chen et
al., "DeepLab: Semantic Image Segmentation with Deep Convolutional Nets, Atrous Convolution, and
Fully Connected CRFs", TPAMI 2018, https://arxiv.org/abs/1606.00915).

Architecture (v3 paper Sec. 3-4):

* backbone: a ResNet whose last stride(s) are replaced by atrous (dilated) convolutions, so ``C5``
  has output stride 16 (stage 5 dilated by 2) or 8 (stages 4 and 5 dilated by 2 and 4);
  optional multi-grid unit rates in stage 5 (``multi_grid=(1, 2, 4)``, paper Sec. 3.2);
* ``ASPP`` on ``C5`` (``jaxvision.models.layers.ASPP``): a 1x1 branch, three 3x3 atrous branches
  with rates (6, 12, 18) at output stride 16 or (12, 24, 36) at 8, the image-pooling branch, all
  256 channels with BatchNorm, concatenated and projected by a 1x1 convolution (256, BatchNorm);
* a 1x1 convolution to ``C`` logits, bilinearly upsampled to the input size
  (``resize_bilinear(..., align_corners=False)``, torchvision's choice; the TF reference uses
  ``align_corners=True``).

``head="torchvision"`` reproduces torchvision's ``DeepLabHead`` instead: drop-out 0.5 after the
ASPP projection and an extra 3x3 convolution (256, BatchNorm, ReLU) before the classifier. ``aux``
adds torchvision's auxiliary ``FCNHead`` on ``C4`` (3x3 convolution to ``C4/4`` channels, BatchNorm,
ReLU, drop-out 0.1, 1x1 to ``C``), returned as ``"aux"`` and weighted by ``aux_weight`` (0.5 in
torchvision's reference training) in the loss.

``head="fcn"`` is torchvision's ``fcn_resnet50`` / ``fcn_resnet101``: the same dilated ResNet with
torchvision's ``FCNHead`` on ``C5`` in place of ASPP (3x3 convolution to ``C5/4`` channels,
BatchNorm, ReLU, drop-out 0.1, 1x1 to ``C``). It is an FCN head on an atrous backbone (the design
DeepLab started from), not the paper FCN-8s of ``fcn.py`` (VGG-16 with skip fusion); it is here so
torchvision's FCN weights convert (``jaxvision.weights.convert_fcn_resnet``).

The fully connected CRF post-processing of DeepLab v1/v2 (Kraehenbuehl and Koltun's mean field,
``jaxvision.ops.crf.dense_crf``) is an inference option of the family, not of this module:
``model.crf.num_iters > 0`` in ``make_deeplab`` replaces the argmax of the logits by the argmax of
the CRF's marginals, computed on the de-normalized input image (``model.crf.mean/std``, ImageNet's
by default) with the kernel settings of ``model.crf``; training is unchanged.

Output: ``{"logits": [B, H, W, C]}`` (plus ``"aux"``) at the input size; any input size works (the
ResNet rounds each stride-2 layer up and the logits are resized to the input).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxvision.models.backbones import ResNet, make_backbone
from jaxvision.models.family import Family
from jaxvision.models.layers.aspp import ASPP
from jaxvision.models.layers.conv import Conv, ConvNormAct
from jaxvision.models.layers.norm import make_norm
from jaxvision.models.segmentation._common import as_dict, check_keys, pixel_softmax_family
from jaxvision.ops import crf as crf_ops
from jaxvision.ops.unpool import resize_bilinear

__all__ = ["DeepLab", "make_deeplab", "deeplab_family", "default_rates", "HEADS"]

HEADS = ("v3", "torchvision", "fcn")
conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def default_rates(output_stride: int) -> tuple[int, int, int]:
  """The v3 paper's ASPP rates: (6, 12, 18) at output stride 16, doubled at 8."""
  if output_stride == 16:
    return (6, 12, 18)
  if output_stride == 8:
    return (12, 24, 36)
  raise ValueError(f"DeepLab output_stride must be 8 or 16, got {output_stride!r}.")


class DeepLab(nn.Module):
  """DeepLabv3: atrous ResNet + ASPP + 1x1 classifier + bilinear upsampling (module docstring).

  Attributes:
    num_classes: ``C``.
    backbone: a ``ResNet`` (usually with ``output_stride`` 8 or 16).
    aspp_features: channels of the ASPP branches and projection (256).
    rates: ASPP rates (None: ``default_rates(backbone.output_stride)``).
    image_pooling: ASPP's global pooling branch.
    head: ``"v3"`` (paper), ``"torchvision"`` (``DeepLabHead``) or ``"fcn"`` (torchvision's
      ``FCNHead`` on ``C5``, no ASPP: ``fcn_resnet50``).
    dropout_rate: drop-out after the ASPP projection (None: 0 for ``"v3"``, 0.5 for ``"torchvision"``).
    aux: add torchvision's auxiliary FCN head on ``C4`` (output ``"aux"``).
    norm: norm of the head (``"batch"``, ``"frozen"`` or None); the backbone has its own.
    axis_name, dtype: cross-replica BatchNorm axis, compute dtype.
  """
  num_classes: int
  backbone: nn.Module
  aspp_features: int = 256
  rates: Sequence[int] | None = None
  image_pooling: bool = True
  head: str = "v3"
  dropout_rate: float | None = None
  aux: bool = False
  norm: str | None = "batch"
  axis_name: str | None = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    if x.ndim != 4:
      raise ValueError(f"DeepLab expects NHWC images [B, H, W, C], got shape {tuple(x.shape)}.")
    if self.head not in HEADS:
      raise ValueError(f"DeepLab head must be one of {HEADS}, got {self.head!r}.")
    _, height, width, _ = x.shape
    feats = self.backbone(x, train=train)
    rates = tuple(self.rates) if self.rates is not None else default_rates(
        getattr(self.backbone, "output_stride", 16))
    dropout = self.dropout_rate if self.dropout_rate is not None else (
        {"torchvision": 0.5, "fcn": 0.1}.get(self.head, 0.0))
    norm = make_norm(self.norm, train=train, axis_name=self.axis_name, dtype=self.dtype)
    conv = functools.partial(Conv, kernel_init=conv_init, dtype=self.dtype)
    if self.head == "fcn":
      c5 = feats["C5"]
      y = ConvNormAct(max(c5.shape[-1] // 4, 1), (3, 3), padding=((1, 1), (1, 1)), conv=conv,
                      norm=norm, name="fcn_conv")(c5)  # (B, h, w, C5 / 4)
      y = nn.Dropout(dropout, deterministic=not train)(y)
    else:
      y = ASPP(self.aspp_features, rates=rates, image_pooling=self.image_pooling, norm=self.norm,
               dropout_rate=dropout, axis_name=self.axis_name, dtype=self.dtype,
               name="aspp")(feats["C5"], train=train)  # (B, h, w, 256)
    if self.head == "torchvision":
      y = ConvNormAct(self.aspp_features, (3, 3), padding=((1, 1), (1, 1)), conv=conv, norm=norm,
                      name="head_conv")(y)
    logits = Conv(self.num_classes, (1, 1), dtype=self.dtype, name="classifier")(y)  # (B, h, w, C)
    out = {"logits": resize_bilinear(logits.astype(jnp.float32), (height, width),
                                     align_corners=False)}  # (B, H, W, C)
    if self.aux:
      c4 = feats["C4"]
      a = ConvNormAct(max(c4.shape[-1] // 4, 1), (3, 3), padding=((1, 1), (1, 1)), conv=conv,
                      norm=norm, name="aux_conv")(c4)
      a = nn.Dropout(0.1, deterministic=not train)(a)
      a = Conv(self.num_classes, (1, 1), dtype=self.dtype, name="aux_classifier")(a)
      out["aux"] = resize_bilinear(a.astype(jnp.float32), (height, width), align_corners=False)
    return out


def deeplab_family(module: DeepLab, num_classes: int, *, class_weights=None,
                   aux_weight: float = 0.5, postprocess: Callable | None = None) -> Family:
  """The DeepLab ``Family``: per-pixel softmax cross-entropy (+ ``aux_weight`` x the auxiliary
  head's); ``postprocess`` replaces the argmax (the hook for a dense CRF)."""
  return pixel_softmax_family(module, num_classes, class_weights=class_weights,
                              aux_weight=aux_weight, postprocess=postprocess)


_KEYS = ("backbone", "width", "output_stride", "multi_grid", "norm", "backbone_norm",
         "aspp_features", "rates", "image_pooling", "head", "dropout_rate", "aux", "aux_weight",
         "class_weights", "axis_name", "dtype", "crf")
_CRF_KEYS = ("num_iters", "sigma_alpha", "sigma_beta", "sigma_gamma", "w_appearance",
             "w_smoothness", "mean", "std")


def make_deeplab(model_config: Any, num_classes: int) -> Family:
  """Builds the DeepLab family from ``config.model`` (``MODELS["deeplab"]``).

  Keys (all optional): ``backbone`` ("resnet50"; "resnet18/34/101"), ``width`` (64),
  ``output_stride`` (16 or 8; default 16), ``multi_grid`` (e.g. ``(1, 2, 4)``), ``norm`` (head norm,
  "batch"), ``backbone_norm`` ("batch" or "frozen"; default ``norm``), ``aspp_features`` (256),
  ``rates`` (default by output stride), ``image_pooling`` (True), ``head`` ("v3" | "torchvision" |
  "fcn"),
  ``dropout_rate``, ``aux`` (False), ``aux_weight`` (0.5), ``class_weights``, ``axis_name``, ``dtype``,
  ``crf`` (dense CRF post-processing at inference, off unless ``crf.num_iters > 0``: the
  ``dense_crf`` keywords ``num_iters``, ``sigma_alpha``, ``sigma_beta``, ``sigma_gamma``,
  ``w_appearance``, ``w_smoothness``, and the input normalization ``mean``, ``std`` to undo).
  """
  cfg = as_dict(model_config)
  check_keys(cfg, _KEYS, "DeepLab")
  name = cfg.get("backbone", "resnet50")
  if not str(name).startswith("resnet"):
    raise ValueError(f"DeepLab model.backbone must be a ResNet ('resnet18' .. 'resnet101'), got {name!r}.")
  output_stride = int(cfg.get("output_stride", 16))
  default_rates(output_stride)  # validates
  dtype = jnp.dtype(cfg.get("dtype", "float32"))
  norm = cfg.get("norm", "batch")
  multi_grid = cfg.get("multi_grid")
  backbone = make_backbone(name, width=int(cfg.get("width", 64)), output_stride=output_stride,
                           norm=cfg.get("backbone_norm") or norm or "batch",
                           multi_grid=tuple(multi_grid) if multi_grid is not None else None,
                           axis_name=cfg.get("axis_name"), dtype=dtype)
  assert isinstance(backbone, ResNet)
  rates = cfg.get("rates")
  module = DeepLab(num_classes=num_classes, backbone=backbone,
                   aspp_features=int(cfg.get("aspp_features", 256)),
                   rates=tuple(int(r) for r in rates) if rates is not None else None,
                   image_pooling=bool(cfg.get("image_pooling", True)), head=cfg.get("head", "v3"),
                   dropout_rate=cfg.get("dropout_rate"), aux=bool(cfg.get("aux", False)),
                   norm=norm, axis_name=cfg.get("axis_name"), dtype=dtype)
  if module.head not in HEADS:
    raise ValueError(f"DeepLab model.head must be one of {HEADS}, got {module.head!r}.")
  family = deeplab_family(module, num_classes, class_weights=cfg.get("class_weights"),
                          aux_weight=float(cfg.get("aux_weight", 0.5)))
  crf_cfg = dict(cfg.get("crf") or {})
  unknown = sorted(set(crf_cfg) - set(_CRF_KEYS))
  if unknown:
    raise ValueError(f"unknown DeepLab model.crf keys {unknown}; known keys: {list(_CRF_KEYS)}.")
  if int(crf_cfg.get("num_iters", 0)) > 0:
    family = with_dense_crf(family, **crf_cfg)
  return family


def with_dense_crf(family: Family, *, mean: Sequence[float] | None = None,
                   std: Sequence[float] | None = None, **crf_kwargs) -> Family:
  """``family`` whose ``predict`` labels each pixel by the argmax of the fully connected CRF's
  marginals (``jaxvision.ops.crf.dense_crf(logits, image, **crf_kwargs)`` per image) instead of the
  logits' argmax. ``batch["image"]`` is de-normalized with ``mean``/``std`` (default ImageNet's, the
  data pipeline's) to the 0..255 colours the appearance kernel expects. Training is unchanged."""
  from jaxvision.data.transforms import IMAGENET_MEAN, IMAGENET_STD  # noqa: PLC0415

  mean = tuple(IMAGENET_MEAN if mean is None else mean)
  std = tuple(IMAGENET_STD if std is None else std)
  crf_kwargs = {k: (int(v) if k == "num_iters" else float(v)) for k, v in crf_kwargs.items()}
  module = family.module

  def predict(variables, batch):
    logits = module.apply(variables, batch["image"], train=False)["logits"]  # (B, H, W, C)
    image = crf_ops.to_rgb255(batch["image"], mean, std)  # (B, H, W, 3)
    q = jax.vmap(functools.partial(crf_ops.dense_crf, **crf_kwargs))(logits, image)
    return {"segmentation": jnp.argmax(q, axis=-1).astype(jnp.int32)}

  return dataclasses.replace(family, predict=predict)
