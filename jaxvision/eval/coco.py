"""COCO box (``bbox``) and instance mask (``segm``) evaluation through pycocotools' ``COCOeval``.

The numbers are pycocotools' own: this module only converts jaxvision's arrays to COCO's formats and
runs ``COCOeval.evaluate/accumulate/summarize``. Conversions:

* boxes: jaxvision xyxy (continuous pixels, no ``+1``) -> COCO ``[x, y, w, h]`` with ``w = x2 - x1``;
  detections must already be in the original image's coordinates (``boxes_to_original`` maps a
  batch's network-input coordinates back with ``orig = net / scale``).
* labels: jaxvision's 1..K -> dataset category ids through ``category_ids`` (``category_ids[k - 1]``
  for label ``k``; by default the ground truth's sorted category ids, so label 1 is the smallest id).
* masks: binary ``[h, w]`` masks at the original resolution -> compressed RLE with
  ``pycocotools.mask.encode`` (Fortran-ordered uint8); float masks are thresholded with ``> 0.5``.

The 12 standard numbers (``COCO_STAT_NAMES``), AP averaged over IoU thresholds 0.50:0.05:0.95 and
101 recall points, AR over the same IoUs::

  AP, AP50, AP75, APs, APm, APl  (max 100 detections per image; s/m/l: area < 32^2, < 96^2, >= 96^2)
  AR1, AR10, AR100, ARs, ARm, ARl

A number that pycocotools cannot define (no ground truth in that area range) is -1, as in
pycocotools. Per-class AP (``per_class=True``) is ``precision[:, :, k, area=all, maxDets=100]``
averaged over its defined entries, i.e. the ``AP`` of COCOeval restricted to that category.

pycocotools is imported lazily: ``pip install jaxvision[coco]``. Its progress messages and summary
table are not printed unless ``verbose=True``.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import os
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from jaxvision.eval.voc import _check_host, _per_image
from jaxvision.ops._checks import check_array
from jaxvision.ops.boxes import xyxy_to_xywh

__all__ = [
    "COCO_STAT_NAMES", "load_coco", "build_coco_ground_truth", "ground_truth_from_batch",
    "boxes_to_original", "masks_to_rle", "detections_to_coco", "evaluate_coco", "CocoEvaluator",
]

COCO_STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl",
                   "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
_IOU_TYPES = ("bbox", "segm")


def _pycocotools():
  """Imports pycocotools on first use."""
  try:
    from pycocotools import mask as mask_utils  # pylint: disable=g-import-not-at-top
    from pycocotools.coco import COCO  # pylint: disable=g-import-not-at-top
    from pycocotools.cocoeval import COCOeval  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError("COCO evaluation needs pycocotools, which is not installed: "
                      "pip install jaxvision[coco]  (or: pip install pycocotools)") from e
  return COCO, COCOeval, mask_utils


@contextlib.contextmanager
def _quiet(verbose: bool):
  if verbose:
    yield
  else:
    with contextlib.redirect_stdout(io.StringIO()):
      yield


def _to_xywh(boxes: np.ndarray) -> np.ndarray:
  """``[N, 4]`` xyxy -> xywh with ``jaxvision.ops.boxes`` (the one place for box conversions).

  ``N`` is padded to a power of two so that varying box counts reuse a few compiled shapes.
  """
  n = len(boxes)
  if n == 0:
    return np.zeros((0, 4), np.float64)
  padded = np.zeros((1 << (n - 1).bit_length(), 4), np.float32)
  padded[:n] = boxes
  return np.asarray(xyxy_to_xywh(padded), np.float64)[:n]


def load_coco(annotations, *, verbose: bool = False):
  """Returns a ``pycocotools.coco.COCO`` from a JSON path, a COCO-format dict or a ``COCO``.

  A dict is deep-copied (COCOeval rewrites ground-truth segmentations in place).
  """
  COCO, _, _ = _pycocotools()
  if isinstance(annotations, COCO):
    return annotations
  if isinstance(annotations, (str, os.PathLike)):
    with _quiet(verbose):
      return COCO(os.fspath(annotations))
  if isinstance(annotations, Mapping):
    for key in ("images", "annotations", "categories"):
      if key not in annotations:
        raise ValueError(f"annotations must be a COCO-format dict with key {key!r}; it has keys "
                         f"{sorted(annotations)}.")
    coco = COCO()
    coco.dataset = copy.deepcopy(dict(annotations))
    with _quiet(verbose):
      coco.createIndex()
    return coco
  raise TypeError("annotations must be a path to a COCO JSON file, a COCO-format dict or a "
                  f"pycocotools COCO object, got {type(annotations).__name__}.")


def masks_to_rle(masks) -> list[dict[str, Any]]:
  """Encodes binary masks ``[N, h, w]`` as compressed COCO RLE dicts (``counts`` as str, JSON-ready)."""
  _, _, mask_utils = _pycocotools()
  masks = _check_host(masks, "masks", ndim=3)
  if masks.dtype != np.bool_:
    masks = masks > 0.5
  if masks.shape[0] == 0:
    return []
  rles = mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))
  for rle in rles:
    rle["counts"] = rle["counts"].decode("ascii")
  return rles


def _categories(categories) -> list[dict[str, Any]]:
  if isinstance(categories, (str, bytes)) or not isinstance(categories, Sequence) or not categories:
    raise TypeError("categories must be a non-empty list of class names (ids 1..K) or of COCO "
                    f"category dicts with 'id' and 'name', got {categories!r:.80}.")
  if all(isinstance(c, str) for c in categories):
    return [{"id": k + 1, "name": name} for k, name in enumerate(categories)]
  if all(isinstance(c, Mapping) and "id" in c and "name" in c for c in categories):
    return [dict(c) for c in categories]
  raise TypeError("categories must be all class names or all dicts with 'id' and 'name', got "
                  f"{categories!r:.80}.")


def build_coco_ground_truth(images: Iterable[Mapping[str, Any]], categories, *,
                            verbose: bool = False):
  """Builds a pycocotools ``COCO`` ground truth from per-image arrays.

  Args:
    images: one mapping per image with ``image_id`` (int), ``height``, ``width`` (original size),
      ``boxes`` ``[M, 4]`` xyxy in original coordinates, ``labels`` ``[M]`` in 1..K (0 = padding,
      skipped) and optionally ``valid`` ``[M]`` bool, ``is_crowd`` ``[M]`` bool, ``masks``
      ``[M, height, width]`` bool (original resolution; stored as RLE) and ``areas`` ``[M]``.
      ``ground_truth_from_batch`` returns this form.
    categories: K class names (category ids 1..K) or K COCO category dicts (``categories[k - 1]``
      is label ``k``'s category).
    verbose: print pycocotools' messages.

  Returns:
    A ``COCO`` object. Annotation ids are 1, 2, ... (COCOeval treats id 0 as "no match"). The area
    used for the small/medium/large ranges is ``areas`` if given, else the mask's pixel count if
    ``masks`` is given, else the box area ``w * h``.

  Raises:
    ValueError / TypeError: missing keys, inconsistent shapes, duplicate image ids or labels > K.
  """
  _, _, mask_utils = _pycocotools()
  cats = _categories(categories)
  num_classes = len(cats)
  out_images, out_anns, seen = [], [], set()
  for n, img in enumerate(images):
    where = f"images[{n}]"
    for key in ("image_id", "height", "width", "boxes", "labels"):
      if key not in img:
        raise ValueError(f"{where} must have key {key!r}; it has keys {sorted(img)}.")
    image_id, height, width = int(img["image_id"]), int(img["height"]), int(img["width"])
    if image_id in seen:
      raise ValueError(f"{where}: duplicate image_id {image_id}.")
    seen.add(image_id)
    out_images.append({"id": image_id, "height": height, "width": width})
    if np.size(img["boxes"]) == 0:
      boxes = np.zeros((0, 4))
    else:
      check_array(img["boxes"], f"{where}['boxes']", ndim=2, last_dim=4, kind="numeric")
      boxes = np.asarray(img["boxes"], np.float64)
    m = len(boxes)
    labels = _vector(img["labels"], f"{where}['labels']", m, "int")
    keep = labels != 0
    if img.get("valid") is not None:
      keep &= _vector(img["valid"], f"{where}['valid']", m, "bool")
    if ((labels[keep] < 0) | (labels[keep] > num_classes)).any():
      raise ValueError(f"{where}['labels'] must be in 0..{num_classes} (0 = padding), got "
                       f"{labels[keep].tolist()}.")
    crowd = (_vector(img["is_crowd"], f"{where}['is_crowd']", m, "bool")
             if img.get("is_crowd") is not None else np.zeros(m, bool))
    rles = None
    if img.get("masks") is not None:
      masks = _check_host(img["masks"], f"{where}['masks']", ndim=3)
      if masks.shape != (m, height, width):
        raise ValueError(f"{where}['masks'] must have shape [{m}, {height}, {width}] (boxes, height, "
                         f"width), got shape {masks.shape}.")
      rles = masks_to_rle(masks[keep])
    areas = (_vector(img["areas"], f"{where}['areas']", m, "numeric").astype(np.float64)
             if img.get("areas") is not None else None)
    xywh = _to_xywh(boxes[keep])
    for r, i in enumerate(np.flatnonzero(keep)):
      ann = {"id": len(out_anns) + 1, "image_id": image_id,
             "category_id": int(cats[labels[i] - 1]["id"]),
             "bbox": [float(v) for v in xywh[r]], "iscrowd": int(crowd[i])}
      if rles is not None:
        ann["segmentation"] = rles[r]
      if areas is not None:
        ann["area"] = float(areas[i])
      elif rles is not None:
        ann["area"] = float(mask_utils.area(rles[r]))
      else:
        ann["area"] = float(xywh[r, 2] * xywh[r, 3])
      out_anns.append(ann)
  return load_coco({"images": out_images, "annotations": out_anns, "categories": cats},
                   verbose=verbose)


def _vector(x, name: str, length: int, kind: str) -> np.ndarray:
  if np.size(x) == 0 and length == 0:
    return np.zeros(0, {"bool": bool, "int": np.int64}.get(kind, np.float64))
  check_array(x, name, shape=(length,), kind=kind)
  return np.asarray(x)


def boxes_to_original(boxes, scale, orig_hw) -> np.ndarray:
  """Maps xyxy boxes from network-input to original-image coordinates (host, NumPy).

  Args:
    boxes: ``[B, M, 4]`` xyxy in the (padded) network input.
    scale: ``[B]`` resize factors (network = original * scale, the batch contract's ``scale``).
    orig_hw: ``[B, 2]`` original ``(h, w)``.

  Returns:
    float64 ``[B, M, 4]``: ``boxes / scale`` clipped to ``[0, w] x [0, h]``.
  """
  check_array(boxes, "boxes", ndim=3, last_dim=4, kind="numeric")
  check_array(scale, "scale", shape=(len(boxes),), kind="numeric")
  check_array(orig_hw, "orig_hw", shape=(len(boxes), 2), kind="numeric")
  scale = np.asarray(scale, np.float64)
  if (scale <= 0).any():
    raise ValueError(f"scale must be > 0, got {scale.tolist()}.")
  out = np.asarray(boxes, np.float64) / scale[:, None, None]
  hw = np.asarray(orig_hw, np.float64)
  limit = np.stack([hw[:, 1], hw[:, 0], hw[:, 1], hw[:, 0]], axis=-1)[:, None, :]
  return np.clip(out, 0.0, limit)


def _masks_to_original(masks: np.ndarray, scale: float, orig_hw: tuple[int, int],
                       stride: float) -> np.ndarray:
  """Nearest-neighbour resampling of ``[M, Hm, Wm]`` network-stride masks to ``[M, h, w]``."""
  h, w = orig_hw
  ys = np.floor((np.arange(h) + 0.5) * scale / stride).astype(np.int64)
  xs = np.floor((np.arange(w) + 0.5) * scale / stride).astype(np.int64)
  ys = np.clip(ys, 0, masks.shape[1] - 1)
  xs = np.clip(xs, 0, masks.shape[2] - 1)
  return masks[:, ys][:, :, xs]


def ground_truth_from_batch(batch: Mapping[str, Any], *, to_original: bool = True,
                            mask_stride: int | None = None) -> list[dict[str, Any]]:
  """Turns a batch (jaxvision batch contract) into per-image ground truth for COCO evaluation.

  Args:
    batch: with ``image_id`` ``[B]``, ``orig_hw`` ``[B, 2]``, ``boxes`` ``[B, M, 4]``, ``labels``
      ``[B, M]``, ``box_valid`` ``[B, M]`` and optionally ``scale`` ``[B]``, ``is_crowd``
      ``[B, M]``, ``masks`` ``[B, M, H/s, W/s]``.
    to_original: boxes (and masks) are in network-input coordinates and are mapped back with
      ``scale`` (boxes: ``boxes_to_original``; masks: nearest-neighbour resampling of the stride-``s``
      masks at each original pixel's centre). If False they are already in original coordinates
      (masks then have at least the original size and are cropped to it).
    mask_stride: ``s``; default ``batch["image"].shape[1] // masks.shape[2]``.

  Returns:
    A list of per-image dicts for ``build_coco_ground_truth``. Resampled masks are an
    approximation of the dataset's annotations: for numbers to report, evaluate against the
    dataset's own annotation JSON (``load_coco``).
  """
  for key in ("image_id", "orig_hw", "boxes", "labels"):
    if key not in batch:
      raise ValueError(f"batch must have key {key!r}; it has keys {sorted(batch)}.")
  boxes = check_array(batch["boxes"], "batch['boxes']", ndim=3, last_dim=4, kind="numeric")
  b, m = boxes.shape[:2]
  image_ids = np.asarray(check_array(batch["image_id"], "batch['image_id']", shape=(b,), kind="int"))
  orig_hw = np.asarray(check_array(batch["orig_hw"], "batch['orig_hw']", shape=(b, 2),
                                   kind="numeric")).astype(np.int64)
  labels = np.asarray(check_array(batch["labels"], "batch['labels']", shape=(b, m), kind="int"))
  valid = (np.asarray(check_array(batch["box_valid"], "batch['box_valid']", shape=(b, m),
                                  kind="bool")) if "box_valid" in batch else labels != 0)
  crowd = (np.asarray(check_array(batch["is_crowd"], "batch['is_crowd']", shape=(b, m),
                                  kind="bool")) if "is_crowd" in batch else np.zeros((b, m), bool))
  if to_original:
    if "scale" not in batch:
      raise ValueError("batch must have key 'scale' to map boxes back (or pass to_original=False).")
    scale = np.asarray(check_array(batch["scale"], "batch['scale']", shape=(b,), kind="numeric"),
                       np.float64)
    boxes = boxes_to_original(boxes, scale, orig_hw)
  else:
    boxes = np.asarray(boxes, np.float64)
  masks = batch.get("masks")
  if masks is not None:
    masks = _check_host(masks, "batch['masks']", ndim=4)
    if masks.shape[:2] != (b, m):
      raise ValueError(f"batch['masks'] must have shape [{b}, {m}, H/s, W/s], got {masks.shape}.")
    if to_original and mask_stride is None:
      if "image" not in batch:
        raise ValueError("pass mask_stride (or include batch['image']) to map masks back.")
      mask_stride = np.shape(batch["image"])[1] // masks.shape[2]
  out = []
  for i in range(b):
    h, w = int(orig_hw[i, 0]), int(orig_hw[i, 1])
    item = {"image_id": int(image_ids[i]), "height": h, "width": w, "boxes": boxes[i],
            "labels": labels[i], "valid": valid[i], "is_crowd": crowd[i]}
    if masks is not None:
      mk = masks[i] > 0.5 if masks.dtype != np.bool_ else masks[i]
      if to_original:
        item["masks"] = _masks_to_original(mk, float(scale[i]), (h, w), float(mask_stride))
      else:
        if mk.shape[1] < h or mk.shape[2] < w:
          raise ValueError(f"batch['masks'] of image {i} has size {mk.shape[1:]}, smaller than its "
                           f"orig_hw {(h, w)}; masks must be at the original resolution when "
                           "to_original=False.")
        item["masks"] = mk[:, :h, :w]
    out.append(item)
  return out


def _category_map(category_ids) -> list[int]:
  if isinstance(category_ids, Mapping):
    k = max(category_ids) if category_ids else 0
    if sorted(category_ids) != list(range(1, k + 1)):
      raise ValueError(f"category_ids as a dict must map labels 1..K to category ids, got keys "
                       f"{sorted(category_ids)}.")
    return [int(category_ids[i]) for i in range(1, k + 1)]
  return [int(c) for c in category_ids]


def detections_to_coco(image_ids, boxes, scores, labels, *, valid=None, masks=None,
                       category_ids=None, image_hw=None) -> list[dict[str, Any]]:
  """Converts detections in original-image coordinates to COCO result dicts.

  Per-image arguments are padded arrays with a leading image axis or lists with one array per image.

  Args:
    image_ids: ``[N]`` dataset image ids.
    boxes: ``[N, D, 4]`` (or list of ``[D_i, 4]``) xyxy in original-image coordinates.
    scores: ``[N, D]`` (or list) confidences.
    labels: ``[N, D]`` (or list) class ids 1..K; 0 = padding, skipped.
    valid: optional bool ``[N, D]`` (or list).
    masks: optional ``[N, D, h, w]`` (or list of ``[D_i, h_i, w_i]``) binary or probability masks at
      the original resolution (thresholded ``> 0.5``); adds an RLE ``segmentation``.
    category_ids: ``category_ids[k - 1]`` is the dataset category id of label ``k`` (a sequence, or
      a dict ``{label: id}``); default: identity (label k -> category id k).
    image_hw: optional ``[N, 2]`` original ``(h, w)``; masks larger than that (padded) are cropped.

  Returns:
    A list of ``{"image_id", "category_id", "bbox" [x, y, w, h], "score"}`` dicts (plus
    ``"segmentation"`` with masks), JSON-serializable, detections of an image in input order.
  """
  image_ids = np.asarray(check_array(image_ids, "image_ids", ndim=1, kind="int"))
  n = len(image_ids)
  box_list = _per_image(boxes, "boxes", num_images=n, item_ndim=2, last_dim=4, kind="numeric")
  score_list = _per_image(scores, "scores", num_images=n, item_ndim=1, last_dim=None,
                          kind="numeric")
  label_list = _per_image(labels, "labels", num_images=n, item_ndim=1, last_dim=None, kind="int")
  valid_list = (None if valid is None else
                _per_image(valid, "valid", num_images=n, item_ndim=1, last_dim=None, kind="bool"))
  mask_list = (None if masks is None else
               _per_image(masks, "masks", num_images=n, item_ndim=3, last_dim=None, kind=None))
  if image_hw is not None:
    image_hw = np.asarray(check_array(image_hw, "image_hw", shape=(n, 2), kind="numeric"), np.int64)
  cat_map = None if category_ids is None else _category_map(category_ids)
  results = []
  for i in range(n):
    d = len(box_list[i])
    for name, arr in (("scores", score_list[i]), ("labels", label_list[i]),
                      ("valid", None if valid_list is None else valid_list[i]),
                      ("masks", None if mask_list is None else mask_list[i])):
      if arr is not None and len(arr) != d:
        raise ValueError(f"boxes and {name} must have the same number of detections per image, got "
                         f"{d} and {len(arr)} for image {i}.")
    lab = np.asarray(label_list[i], np.int64)
    keep = lab != 0
    if valid_list is not None:
      keep &= np.asarray(valid_list[i], bool)
    if (lab[keep] < 0).any() or (cat_map is not None and (lab[keep] > len(cat_map)).any()):
      raise ValueError(f"labels must be in 1..{len(cat_map) if cat_map else 'K'} (0 = padding), got "
                       f"{lab[keep].tolist()} for image {i}.")
    idx = np.flatnonzero(keep)
    xywh = _to_xywh(np.asarray(box_list[i], np.float64)[idx])
    rles = None
    if mask_list is not None:
      mk = np.asarray(mask_list[i])[idx]
      if image_hw is not None:
        h, w = int(image_hw[i, 0]), int(image_hw[i, 1])
        if mk.shape[1] < h or mk.shape[2] < w:
          raise ValueError(f"masks of image {i} have size {mk.shape[1:]}, smaller than the image "
                           f"{(h, w)}: pass full-image masks at the original resolution (paste "
                           "per-box masks first).")
        mk = mk[:, :h, :w]
      rles = masks_to_rle(mk)
    for r, j in enumerate(idx):
      res = {"image_id": int(image_ids[i]),
             "category_id": int(cat_map[lab[j] - 1]) if cat_map else int(lab[j]),
             "bbox": [float(v) for v in xywh[r]],
             "score": float(score_list[i][j])}
      if rles is not None:
        res["segmentation"] = rles[r]
      results.append(res)
  return results


def evaluate_coco(coco_gt, results, iou_type: str = "bbox", *, per_class: bool = False,
                  img_ids: Sequence[int] | None = None, verbose: bool = False) -> dict[str, float]:
  """Runs pycocotools' ``COCOeval`` and returns its 12 numbers by name.

  Args:
    coco_gt: ground truth: a ``COCO`` object, a COCO JSON path or dict (``load_coco``).
    results: COCO result dicts (``detections_to_coco``) or a path to a results JSON file. May be
      empty (every AP/AR with ground truth is then 0).
    iou_type: ``"bbox"`` or ``"segm"``. For ``segm`` the results' ``bbox`` is dropped so that the
      detection area is the mask area (as detectron2 does); for ``bbox`` any ``segmentation`` is
      dropped.
    per_class: also return ``"AP/<category name>"`` for each category.
    img_ids: evaluate only these images (default: every image of ``coco_gt``; images without
      detections count as missed).
    verbose: print pycocotools' progress and summary table.

  Returns:
    ``{name: float}`` for ``COCO_STAT_NAMES`` (-1 where undefined, as in pycocotools), plus the
    per-class APs if requested.

  Raises:
    ImportError: pycocotools is missing. ValueError: unknown ``iou_type``, results for images that
    are not in the ground truth, or ``segm`` results without ``segmentation``.
  """
  COCO, COCOeval, _ = _pycocotools()
  if iou_type not in _IOU_TYPES:
    raise ValueError(f"iou_type must be one of {_IOU_TYPES}, got {iou_type!r}.")
  gt = load_coco(coco_gt, verbose=verbose)
  if isinstance(results, (str, os.PathLike)):
    with open(results) as f:
      results = json.load(f)
  if not isinstance(results, (list, tuple)):
    raise TypeError(f"results must be a list of COCO result dicts or a JSON path, got "
                    f"{type(results).__name__}.")
  drop = "bbox" if iou_type == "segm" else "segmentation"
  dts = []
  for r in results:
    if iou_type == "segm" and "segmentation" not in r:
      raise ValueError("segm evaluation needs results with 'segmentation' (pass masks to "
                       "detections_to_coco).")
    if iou_type == "bbox" and "bbox" not in r:
      raise ValueError("bbox evaluation needs results with 'bbox'.")
    dts.append({k: v for k, v in r.items() if k != drop})  # copies: loadRes edits them
  unknown = sorted({r["image_id"] for r in dts} - set(gt.getImgIds()))
  if unknown:
    raise ValueError(f"results contain image ids that are not in the ground truth: {unknown[:10]}.")
  with _quiet(verbose):
    if dts:
      dt = gt.loadRes(dts)
    else:  # loadRes cannot take an empty list
      dt = COCO()
      dt.dataset = {"images": list(gt.dataset["images"]), "annotations": [],
                    "categories": copy.deepcopy(gt.dataset["categories"])}
      dt.createIndex()
    ev = COCOeval(gt, dt, iou_type)
    if img_ids is not None:
      ev.params.imgIds = sorted(int(i) for i in img_ids)
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
  stats = {name: float(v) for name, v in zip(COCO_STAT_NAMES, ev.stats)}
  if per_class:
    precision = ev.eval["precision"]  # [T, R, K, A, M]
    for k, cat_id in enumerate(ev.params.catIds):
      p = precision[:, :, k, 0, -1]
      p = p[p > -1]
      stats[f"AP/{gt.cats[cat_id]['name']}"] = float(p.mean()) if p.size else -1.0
  return stats


class CocoEvaluator:
  """Streaming COCO evaluation: ``update`` with detections per batch, ``result`` at the end.

  Ground truth is either given up front (``coco_gt``: a ``COCO``, JSON path or dict, e.g. the
  dataset's own annotation file) or collected from the batches (``coco_gt=None`` plus
  ``categories``; pass ``ground_truth=ground_truth_from_batch(batch)`` to ``update``).

  Example::

    evaluator = CocoEvaluator("instances_val2017.json", iou_types=("bbox", "segm"))
    for batch in data:
      out = predict(batch)          # boxes (and masks) in original-image coordinates
      evaluator.update(batch["image_id"], out["boxes"], out["scores"], out["labels"],
                       valid=out["valid"], masks=out["masks"])
    metrics = evaluator.result()     # {"bbox/AP": ..., "segm/AP": ...}
  """

  def __init__(self, coco_gt=None, *, iou_types: Sequence[str] = ("bbox",), categories=None,
               category_ids=None, per_class: bool = False, only_seen_images: bool = False,
               verbose: bool = False):
    """Args:
      coco_gt: ground truth (``COCO``, JSON path or dict), or None to collect it from ``update``.
      iou_types: any of ``"bbox"``, ``"segm"``.
      categories: with ``coco_gt=None``: K class names or category dicts (``build_coco_ground_truth``).
      category_ids: label -> category id map (``detections_to_coco``); default: the ground truth's
        sorted category ids.
      per_class: also report ``"<iou_type>/AP/<category name>"``.
      only_seen_images: evaluate only the images passed to ``update`` (default: all ground-truth
        images; those never updated count as missed).
      verbose: print pycocotools' output.
    """
    iou_types = tuple(iou_types)
    for t in iou_types:
      if t not in _IOU_TYPES:
        raise ValueError(f"iou_types must contain only {_IOU_TYPES}, got {iou_types}.")
    if coco_gt is None and categories is None:
      raise ValueError("pass coco_gt (COCO object, JSON path or dict) or categories (to build the "
                       "ground truth from batches).")
    self.iou_types = iou_types
    self.verbose = verbose
    self.per_class = per_class
    self.only_seen_images = only_seen_images
    self._gt = None if coco_gt is None else load_coco(coco_gt, verbose=verbose)
    self._categories = None if categories is None else _categories(categories)
    if category_ids is not None:
      self._cat_map = _category_map(category_ids)
    elif self._gt is not None:
      self._cat_map = sorted(self._gt.getCatIds())
    else:
      self._cat_map = [c["id"] for c in self._categories]
    self.reset()

  def reset(self) -> None:
    self._results: list[dict[str, Any]] = []
    self._gt_images: list[dict[str, Any]] = []
    self._seen: set[int] = set()

  @property
  def results(self) -> list[dict[str, Any]]:
    """The COCO result dicts collected so far (``json.dump`` them for a submission)."""
    return self._results

  def update(self, image_ids, boxes, scores, labels, *, valid=None, masks=None,
             ground_truth: Sequence[Mapping[str, Any]] | None = None) -> None:
    """Adds the detections of a batch (arguments as in ``detections_to_coco``).

    ``ground_truth``: per-image dicts (``ground_truth_from_batch``), required when the evaluator
    was built with ``coco_gt=None`` and ignored otherwise.
    """
    if "segm" in self.iou_types and masks is None:
      raise ValueError("iou_types includes 'segm': pass masks.")
    image_hw = None
    if self._gt is None:
      if ground_truth is None:
        raise ValueError("this evaluator collects ground truth from batches: pass ground_truth= "
                         "(e.g. ground_truth_from_batch(batch)).")
      self._gt_images.extend(ground_truth)
      sizes = {int(g["image_id"]): (int(g["height"]), int(g["width"])) for g in ground_truth}
    else:
      sizes = {i: (im["height"], im["width"]) for i, im in self._gt.imgs.items()}
    ids = np.asarray(check_array(image_ids, "image_ids", ndim=1, kind="int"))
    if masks is not None:
      missing = [int(i) for i in ids if int(i) not in sizes]
      if missing:
        raise ValueError(f"image_ids {missing[:10]} are not in the ground truth.")
      image_hw = np.array([sizes[int(i)] for i in ids], np.int64).reshape(-1, 2)
    self._results.extend(detections_to_coco(
        ids, boxes, scores, labels, valid=valid, masks=masks, category_ids=self._cat_map,
        image_hw=image_hw))
    self._seen.update(int(i) for i in ids)

  def result(self) -> dict[str, float]:
    """``{"<iou_type>/<stat>": value}`` for each iou type over everything seen so far."""
    gt = self._gt
    if gt is None:
      gt = build_coco_ground_truth(self._gt_images, self._categories, verbose=self.verbose)
    img_ids = sorted(self._seen) if self.only_seen_images else None
    out = {}
    for t in self.iou_types:
      stats = evaluate_coco(gt, self._results, t, per_class=self.per_class, img_ids=img_ids,
                            verbose=self.verbose)
      out.update({f"{t}/{k}": v for k, v in stats.items()})
    return out
