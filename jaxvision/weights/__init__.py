"""Pretrained weights: torchvision / PyTorch state dicts -> jaxvision variables (no PyTorch needed).

* ``jaxvision.weights.io``: ``load_state_dict(path)`` reads ``.pth`` (torch zip and legacy formats,
  through a restricted unpickler that never runs code from the file), safetensors and npz files
  into ``{name: np.ndarray}``.
* ``jaxvision.weights.torchvision``: ``convert_resnet`` / ``convert_vgg16`` (layouts and names,
  documented there), whole segmentation models ``convert_deeplabv3`` / ``convert_fcn_resnet``
  (torchvision's ``deeplabv3_resnet50/101`` and ``fcn_resnet50/101`` into ``DeepLab``), whole
  detection models ``convert_fasterrcnn_resnet50_fpn`` / ``convert_maskrcnn_resnet50_fpn`` /
  ``convert_retinanet_resnet50_fpn`` / ``convert_fcos_resnet50_fpn`` / ``convert_ssd300_vgg16``
  (with ``detection_model_config`` / ``retinanet_model_config`` / ``fcos_model_config`` /
  ``ssd_model_config`` for the matching jaxvision config; input normalization and resizing
  differences are documented in ``jaxvision.weights.torchvision``), ``load_into`` (every key and
  shape checked; ``WeightMismatchError`` lists all differences, never a partial load),
  ``load_backbone_weights(path, name)``, ``load_backbone_into(variables, path, name,
  at="backbone")`` and ``load_model_into(variables, path, "fasterrcnn_resnet50_fpn")`` (a
  whole model).

Example (a Colab user downloads torchvision's file once, e.g. ``resnet50-0676ba61.pth``)::

  from jaxvision.weights import load_backbone_weights
  variables = load_backbone_weights("resnet50-0676ba61.pth", "resnet50", norm="frozen")
  feats = make_backbone("resnet50", norm="frozen").apply(variables, images, train=False)
"""

from jaxvision.weights.io import (CheckpointFormatError, UnsafeCheckpointError, load_state_dict,
                                  read_safetensors, read_torch, write_safetensors)
from jaxvision.weights.torchvision import (WeightMismatchError, check_variables, conv_kernel,
                                           conv_transpose_kernel, convert_backbone,
                                           convert_deeplabv3, convert_fasterrcnn_resnet50_fpn,
                                           convert_fcn_resnet, convert_maskrcnn_resnet50_fpn,
                                           convert_fcos_resnet50_fpn, convert_resnet,
                                           convert_retinanet_resnet50_fpn,
                                           convert_ssd300_vgg16, fcos_model_config,
                                           ssd_model_config,
                                           detection_model_config, retinanet_model_config,
                                           upgrade_legacy_detection_keys,
                                           convert_vgg16, infer_resnet_depth, linear_kernel,
                                           MODEL_CONVERTERS, load_backbone_into,
                                           load_backbone_weights, load_into, load_model_into,
                                           resnet_torchvision_keys, vgg16_torchvision_keys)

__all__ = ["load_state_dict", "read_torch", "read_safetensors", "write_safetensors",
           "CheckpointFormatError", "UnsafeCheckpointError", "convert_resnet", "convert_vgg16",
           "convert_backbone", "convert_deeplabv3", "convert_fcn_resnet",
           "convert_fasterrcnn_resnet50_fpn", "convert_maskrcnn_resnet50_fpn",
           "detection_model_config", "upgrade_legacy_detection_keys",
           "convert_retinanet_resnet50_fpn", "retinanet_model_config", "load_into",
           "load_model_into", "MODEL_CONVERTERS", "convert_fcos_resnet50_fpn", "fcos_model_config",
           "convert_ssd300_vgg16", "ssd_model_config",
           "check_variables", "load_backbone_weights",
           "load_backbone_into", "infer_resnet_depth", "resnet_torchvision_keys",
           "vgg16_torchvision_keys", "conv_kernel", "linear_kernel", "conv_transpose_kernel",
           "WeightMismatchError"]
