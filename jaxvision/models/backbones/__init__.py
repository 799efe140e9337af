"""Backbones: linen modules mapping NHWC images to a dict of named feature maps (DESIGN.md).

``ResNet`` returns ``{"C2", "C3", "C4", "C5"}`` (strides 4, 8, 16, 32; dilated variants keep 16 or
8); ``VGG16`` returns ``{"conv4_3", "conv5_3", "pool3", "pool4", "pool5", "fc6", "fc7"}``. Both take
``(x, train)``. ``make_backbone(name, **kwargs)`` builds one by name::

  backbone = make_backbone("resnet50", norm="frozen")        # ResNet(depth=50, norm="frozen")
  feats = backbone.apply(variables, images, train=False)     # feats["C5"]: [B, H/32, W/32, 2048]
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn

from jaxvision.models.backbones.resnet import (RESNET_STAGES, BasicBlock, Bottleneck, ResNet,
                                               resnet_dilations, resnet_trainable_mask)
from jaxvision.models.backbones.vgg import VGG16

__all__ = ["make_backbone", "BACKBONES", "ResNet", "VGG16", "BasicBlock", "Bottleneck",
           "RESNET_STAGES", "resnet_dilations", "resnet_trainable_mask"]

BACKBONES = ("resnet18", "resnet34", "resnet50", "resnet101", "vgg16")


def make_backbone(name: str, **kwargs: Any) -> nn.Module:
  """The backbone called ``name`` (one of ``BACKBONES``) with the module's fields ``kwargs``.

  ``"resnet<depth>"`` -> ``ResNet(depth=<depth>, **kwargs)``; ``"vgg16"`` -> ``VGG16(**kwargs)``.

  Raises:
    ValueError: an unknown name (listing the known ones) or, for ResNet, a ``depth`` that
      contradicts the name.
    TypeError: a keyword the module does not have.
  """
  if name not in BACKBONES:
    raise ValueError(f"unknown backbone {name!r}; known backbones: {list(BACKBONES)}.")
  if name == "vgg16":
    return VGG16(**kwargs)
  depth = int(name[len("resnet"):])
  if kwargs.get("depth", depth) != depth:
    raise ValueError(f"backbone {name!r} has depth {depth}, but depth={kwargs['depth']!r} was given.")
  kwargs.pop("depth", None)
  return ResNet(depth=depth, **kwargs)
