"""Semantic segmentation families, one file per family (module, loss, postprocess)."""

from __future__ import annotations

from jaxvision.models.segmentation.unet import (UNet, UNetPaper, UNetSame, UNetTiny, make_unet,
                                                mirror_pad_for_valid_unet, unet_output_size,
                                                unet_weight_map, valid_input_size)

__all__ = [
    "UNet", "UNetPaper", "UNetSame", "UNetTiny", "make_unet", "mirror_pad_for_valid_unet",
    "unet_output_size", "unet_weight_map", "valid_input_size",
]
