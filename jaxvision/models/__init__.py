"""Model families. ``MODELS[name](config.model, num_classes) -> Family`` (DESIGN.md, "Models and families").

A dict from the name used in configs (``config.model.name``) to the family constructor; each
constructor takes the model's config section (``ml_collections.ConfigDict`` or dict) and the number
of classes (segmentation: label-map classes, background included; detection: foreground classes K),
and returns a ``jaxvision.models.family.Family``. A family's module is imported the first time its
constructor is called, so importing ``jaxvision.models`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Callable

from jaxvision.models.family import Family, segmentation_family

# name -> "module:function" (relative to jaxvision.models)
_CONSTRUCTORS = {
    # semantic segmentation
    "unet": "segmentation.unet:make_unet",
    "fcn": "segmentation.fcn:make_fcn",  # model.variant: "32s" | "16s" | "8s"
    "deeplab": "segmentation.deeplab:make_deeplab",
    "context": "segmentation.dilated:make_context_net",
    "segnet": "segmentation.segnet:make_segnet",
    "deconvnet": "segmentation.deconvnet:make_deconvnet",
    "hourglass": "segmentation.hourglass:make_hourglass",
    "crf_rnn": "segmentation.crf_rnn:make_crf_rnn",
    "adversarial": "segmentation.adversarial:make_adversarial",
    "patchwise": "segmentation.patchwise:make_patchwise",
    # detection
    "yolo_v1": "detection.yolo:make_yolo_v1",
    "yolo_v2": "detection.yolo:make_yolo_v2",
    "ssd": "detection.ssd:make_ssd",
    "retinanet": "detection.retinanet:make_retinanet",
    "fcos": "detection.fcos:make_fcos",
    "fast_rcnn": "detection.fast_rcnn:make_fast_rcnn",
    "faster_rcnn": "detection.faster_rcnn:make_faster_rcnn",
    "sliding_window": "detection.sliding_window:make_sliding_window",
    "rcnn": "detection.rcnn:make_rcnn",
    "spp_net": "detection.spp_net:make_spp_net",
    # instance segmentation
    "mask_rcnn": "detection.mask_rcnn:make_mask_rcnn",
}


def _lazy(target: str) -> Callable[..., Family]:
  module_name, fn_name = target.split(":")

  def construct(model_config, num_classes: int) -> Family:
    module = importlib.import_module(f"jaxvision.models.{module_name}")
    return getattr(module, fn_name)(model_config, num_classes)

  construct.__name__ = fn_name
  construct.__qualname__ = fn_name
  construct.__doc__ = f"Builds the family with ``jaxvision.models.{module_name}.{fn_name}``."
  return construct


MODELS: dict[str, Callable[..., Family]] = {name: _lazy(t) for name, t in _CONSTRUCTORS.items()}

__all__ = ["MODELS", "Family", "segmentation_family"]
