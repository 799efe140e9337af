"""Evaluation: segmentation metrics, PASCAL VOC AP and COCO (pycocotools) evaluation.

* ``segmentation``: ``confusion_matrix`` (jit/shard_map-safe, summable), ``segmentation_metrics``
  (pixel accuracy, mean accuracy, mean IoU, frequency weighted IoU, Dice), ``SegmentationEvaluator``.
* ``voc``: ``evaluate_voc`` (AP per class, mAP, PR curves; VOC2007 11-point or VOC2010+ area),
  ``voc_ap``, ``VocEvaluator``.
* ``coco``: ``evaluate_coco`` and ``CocoEvaluator`` (bbox and segm through ``COCOeval``) with the
  conversions from jaxvision arrays. pycocotools is imported only when used
  (``pip install jaxvision[coco]``).
"""

from __future__ import annotations

from jaxvision.eval.coco import (
    COCO_STAT_NAMES,
    CocoEvaluator,
    boxes_to_original,
    build_coco_ground_truth,
    detections_to_coco,
    evaluate_coco,
    ground_truth_from_batch,
    load_coco,
    masks_to_rle,
)
from jaxvision.eval.segmentation import SegmentationEvaluator, confusion_matrix, segmentation_metrics
from jaxvision.eval.voc import VocEvaluator, evaluate_voc, voc_ap

__all__ = [
    "COCO_STAT_NAMES",
    "CocoEvaluator",
    "SegmentationEvaluator",
    "VocEvaluator",
    "boxes_to_original",
    "build_coco_ground_truth",
    "confusion_matrix",
    "detections_to_coco",
    "evaluate_coco",
    "evaluate_voc",
    "ground_truth_from_batch",
    "load_coco",
    "masks_to_rle",
    "segmentation_metrics",
    "voc_ap",
]
