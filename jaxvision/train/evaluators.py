"""Task evaluation for the training loop: a per-device step plus a host-side accumulator.

* ``segmentation``: the device computes a confusion matrix of ``family.predict`` against the label
  map and ``psum``s it; the host adds the matrices and reports PA, mean PA, mIoU, FWIoU, Dice and the
  per-class IoU (``jaxvision.eval.segmentation``).
* ``detection`` / ``instance_segmentation``: the device runs ``family.predict`` (fixed-size padded
  detections); the host maps boxes (and masks) back to original-image coordinates with the batch's
  ``scale`` and evaluates them against the batch's ground truth, also mapped back: VOC AP at IoU 0.5
  (``config.eval.metric = "voc"``, the default, reported as ``mAP`` and ``ap/<class>``) or COCO AP
  through pycocotools (``"coco"``, reported as ``bbox/AP``, ``bbox/AP50``, ... and ``segm/...``
  for instance segmentation; needs the ``coco`` extra).

Padding examples (``example_valid`` False, the last eval batch) are skipped everywhere.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxvision.eval import segmentation as seg_metrics
from jaxvision.train import parallel

METRICS = ("voc", "coco")


def _variables(state):
  """The state's inference variables (the EMA of the parameters when one is kept)."""
  params = state.eval_params() if hasattr(state, "eval_params") else state.params
  return {"params": params, **({"batch_stats": state.batch_stats} if state.batch_stats else {})}


def _center_crop_to(labels, hw):
  h, w = labels.shape[1:3]
  top, left = (h - hw[0]) // 2, (w - hw[1]) // 2
  return labels[:, top:top + hw[0], left:left + hw[1]]


class SegmentationEvaluation:
  """Confusion matrix on the devices; metrics on the host."""

  summary_keys = ("mean_iou", "pixel_accuracy")

  def __init__(self, family, info, *, parallelism: str):
    self.info = info
    num_classes, ignore = info.num_seg_classes, info.ignore_label

    def step(state, batch):
      preds = family.predict(_variables(state), batch)["segmentation"]  # (b, h, w)
      labels = _center_crop_to(batch["segmentation"], preds.shape[1:3])
      labels = jnp.where(batch["example_valid"][:, None, None], labels, ignore)
      cm = seg_metrics.confusion_matrix(labels, preds, num_classes, ignore_label=ignore)
      return state, jax.lax.psum(cm, parallel.AXIS)

    self.runner = parallel.DataParallel(step, parallelism=parallelism, donate_state=False)

  def __call__(self, state_on_devices, dataset) -> dict[str, Any]:
    n = self.info.num_seg_classes
    cm = np.zeros((n, n), np.int64)
    for batch in dataset:
      _, batch_cm = self.runner(state_on_devices, self.runner.put_batch(batch))
      cm += np.asarray(jax.device_get(batch_cm)).reshape(-1, n, n)[0]
    metrics = seg_metrics.segmentation_metrics(cm)
    out = {k: float(metrics[k]) for k in ("pixel_accuracy", "mean_accuracy", "mean_iou", "fw_iou",
                                          "dice")}
    for name, iou in zip(self.info.seg_class_names, np.asarray(metrics["per_class_iou"])):
      out[f"iou/{name}"] = float(iou)
    return out


class DetectionEvaluation:
  """Padded detections from the devices; VOC or COCO AP on the host, in original coordinates."""

  def __init__(self, family, info, *, parallelism: str, metric: str = "voc",
               use_07_metric: bool = False, masks: bool = False):
    if metric not in METRICS:
      raise ValueError(f"config.eval.metric must be one of {METRICS}, got {metric!r}.")
    self.info, self.metric, self.masks = info, metric, masks
    self.use_07_metric = use_07_metric
    self.summary_keys = ("mAP",) if metric == "voc" else (("bbox/AP", "segm/AP") if masks
                                                           else ("bbox/AP", "bbox/AP50"))

    def step(state, batch):
      return state, family.predict(_variables(state), batch)

    self.runner = parallel.DataParallel(step, parallelism=parallelism, donate_state=False,
                                        batch_outputs=True)

  def _evaluator(self):
    if self.metric == "voc":
      from jaxvision.eval.voc import VocEvaluator  # noqa: PLC0415

      return VocEvaluator(self.info.num_classes, use_07_metric=self.use_07_metric,
                          class_names=self.info.class_names)
    from jaxvision.eval.coco import CocoEvaluator  # noqa: PLC0415

    return CocoEvaluator(categories=list(self.info.class_names),
                         iou_types=("bbox", "segm") if self.masks else ("bbox",))

  def __call__(self, state_on_devices, dataset) -> dict[str, Any]:
    from jaxvision.eval.coco import boxes_to_original, ground_truth_from_batch  # noqa: PLC0415

    evaluator = self._evaluator()
    for batch in dataset:
      _, preds = self.runner(state_on_devices, self.runner.put_batch(batch))
      preds = self.runner.local_outputs(preds)
      keep = np.asarray(batch["example_valid"], bool)
      if not keep.any():
        continue
      host = {k: np.asarray(v)[keep] for k, v in batch.items()}
      preds = {k: np.asarray(v)[keep] for k, v in preds.items()}
      boxes = boxes_to_original(preds["boxes"], host["scale"], host["orig_hw"])
      valid = preds["valid"] & (preds["labels"] > 0)
      if self.metric == "voc":
        gt_boxes = boxes_to_original(host["boxes"], host["scale"], host["orig_hw"])
        evaluator.update(boxes, preds["scores"], preds["labels"], gt_boxes, host["labels"],
                         valid=valid, gt_valid=host["box_valid"],
                         gt_difficult=host.get("difficult"))
      else:
        gt = ground_truth_from_batch({k: v for k, v in host.items()
                                      if self.masks or k != "masks"})
        masks = None
        if self.masks:
          masks = [_paste_to_original(m, s, hw) for m, s, hw in
                   zip(preds["masks"], host["scale"], host["orig_hw"])]
        evaluator.update(host["image_id"], boxes, preds["scores"], preds["labels"], valid=valid,
                         masks=masks, ground_truth=gt)
    result = evaluator.result()
    if self.metric == "voc":
      out = {"mAP": float(result["mAP"])}
      out.update({f"ap/{k}": float(v) for k, v in result["ap_per_class"].items()})
      return out
    return {k: float(v) for k, v in result.items()}


def _paste_to_original(masks: np.ndarray, scale: float, orig_hw) -> np.ndarray:
  """``[D, H, W]`` masks in the network input's frame -> ``[D, h, w]`` at the original size."""
  h, w = int(orig_hw[0]), int(orig_hw[1])
  stride = 1.0
  ys = np.clip(np.floor((np.arange(h) + 0.5) * scale / stride).astype(np.int64), 0,
               masks.shape[1] - 1)
  xs = np.clip(np.floor((np.arange(w) + 0.5) * scale / stride).astype(np.int64), 0,
               masks.shape[2] - 1)
  return masks[:, ys][:, :, xs]


def make_evaluation(config, family, info):
  """The evaluation for ``family.task`` configured by ``config.eval``."""
  if family.task == "segmentation":
    return SegmentationEvaluation(family, info, parallelism=config.parallelism)
  return DetectionEvaluation(family, info, parallelism=config.parallelism,
                             metric=config.eval.get("metric", "voc"),
                             use_07_metric=bool(config.eval.get("use_07_metric", False)),
                             masks=family.task == "instance_segmentation")
