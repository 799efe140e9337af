"""Linen building blocks shared by the model families (NHWC, injected conv/norm/act constructors)."""

from __future__ import annotations

from jaxvision.models.layers.aspp import ASPP
from jaxvision.models.layers.conv import AtrousConv, Conv, ConvNormAct, ConvTranspose, ModuleDef
from jaxvision.models.layers.norm import FrozenBatchNorm, frozen_from_batch_norm, make_norm

__all__ = ["ASPP", "AtrousConv", "Conv", "ConvNormAct", "ConvTranspose", "ModuleDef", "FrozenBatchNorm", "frozen_from_batch_norm",
           "make_norm"]
