"""Linen building blocks shared by the model families (NHWC, injected conv/norm/act constructors)."""

from __future__ import annotations

from jaxvision.models.layers.conv import ConvNormAct, ModuleDef

__all__ = ["ConvNormAct", "ModuleDef"]
