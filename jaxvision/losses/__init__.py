"""Losses for segmentation and detection, optax style: unreduced, keyword-only hyper-parameters.

Every function returns one value per element (pixel, anchor, box pair, RoI pixel) or, where the
loss is not defined per element (Dice), per image and class; the caller masks and normalizes (by the
number of positives or labelled pixels, ``psum``-ed across devices). See each module's references:

* ``classification``: ``sigmoid_focal_loss``, ``softmax_focal_loss`` (Lin et al. 2017),
  ``softmax_cross_entropy`` + ``cross_entropy_normalizer`` (ignore label 255, class weights, label
  smoothing; PyTorch's ``F.cross_entropy`` semantics).
* ``regression``: ``smooth_l1_loss`` (Girshick 2015), ``iou_loss``, ``giou_loss`` (Rezatofighi et al.
  2019), ``diou_loss``, ``ciou_loss`` (Zheng et al. 2020).
* ``segmentation``: ``dice_loss`` (Milletari et al. 2016), ``binary_mask_loss`` (He et al. 2017).
* ``multibox``: ``multibox_loss``, ``ssd_targets``, ``hard_negative_mask`` (SSD, Liu et al. 2016).
* ``yolo``: ``yolo_v1_loss`` / ``yolo_v1_targets`` (Redmon et al. 2016), ``yolo_v2_loss`` /
  ``yolo_v2_targets`` (Redmon & Farhadi 2017).
* ``adversarial``: ``discriminator_loss``, ``generator_adversarial_loss``,
  ``hybrid_segmentation_loss`` (Luc et al. 2016).
"""

from __future__ import annotations

from jaxvision.losses.adversarial import (discriminator_loss, generator_adversarial_loss,
                                          hybrid_segmentation_loss)
from jaxvision.losses.classification import (cross_entropy_normalizer, sigmoid_focal_loss,
                                             softmax_cross_entropy, softmax_focal_loss)
from jaxvision.losses.multibox import hard_negative_mask, multibox_loss, ssd_targets
from jaxvision.losses.regression import ciou_loss, diou_loss, giou_loss, iou_loss, smooth_l1_loss
from jaxvision.losses.segmentation import binary_mask_loss, dice_loss
from jaxvision.losses.yolo import yolo_v1_loss, yolo_v1_targets, yolo_v2_loss, yolo_v2_targets

__all__ = [
    "binary_mask_loss",
    "ciou_loss",
    "cross_entropy_normalizer",
    "dice_loss",
    "diou_loss",
    "discriminator_loss",
    "generator_adversarial_loss",
    "giou_loss",
    "hard_negative_mask",
    "hybrid_segmentation_loss",
    "iou_loss",
    "multibox_loss",
    "sigmoid_focal_loss",
    "smooth_l1_loss",
    "softmax_cross_entropy",
    "softmax_focal_loss",
    "ssd_targets",
    "yolo_v1_loss",
    "yolo_v1_targets",
    "yolo_v2_loss",
    "yolo_v2_targets",
]
