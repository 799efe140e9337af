"""Model families. ``MODELS[name](config.model, num_classes) -> Family`` (DESIGN.md, "Models and families").

A plain dict from the name used in configs (``config.model.name``) to the family constructor; each
constructor takes the model's config section (``ml_collections.ConfigDict`` or dict) and the number
of classes, and returns a family bundling the linen module, its loss and its post-processing.
"""

from __future__ import annotations

from jaxvision.models.segmentation import unet

MODELS = {
    "unet": unet.make_unet,
}

__all__ = ["MODELS"]
