"""A COCO-format instances JSON + image folder as a data source (COCO instance masks, custom data).

``CocoJsonSource(annotations, images)`` is a random-access source (``len`` + ``__getitem__``) for
the grain pipeline and ``CocoJsonDecoder`` turns its records into examples of the batch contract:

* ``image``: the file ``<images>/<file_name>`` read with Pillow and converted to RGB (grey, palette,
  CMYK and RGBA files too; EXIF orientation is not applied, as in COCO's own tools);
* ``boxes``: ``bbox`` ``[x, y, w, h]`` -> xyxy pixels (continuous coordinates, clipped to the
  image); an annotation without ``bbox`` gets the box of its mask;
* ``labels`` 1..K: category ids sorted ascending map to 1..K (``DatasetInfo.category_ids[k - 1]``
  is the id of label ``k``, for writing COCO results); ``is_crowd`` from ``iscrowd``;
* ``masks`` (only with ``with_masks``; pycocotools, the ``coco`` extra, imported when first
  needed): polygons (one or several parts), uncompressed RLE (``counts`` a list, COCO's crowd
  format) and compressed RLE (``counts`` a string) -> ``[N, H, W]`` bool. Memory stays bounded:
  the full-size masks of one image live only inside the worker, ``transforms.pad_instances`` keeps
  the ``config.data.max_boxes`` largest (counting the rest in ``num_dropped_boxes``) at
  ``config.data.mask_stride``;
* ``image_id``: the COCO image id (must fit in int32).

Images without annotations are kept (zero boxes). Records are in ascending image id order.

Unreadable images (a corrupt or truncated file, a missing file, or a file whose size differs from
the JSON's ``height``/``width``, which would misplace the masks) are skipped with a warning and
counted, never a crash: the decoder raises ``pipeline.UnreadableExample`` and the pipeline replaces
the record (training) or keeps an invalid placeholder (evaluation). The count is exposed as the
batch key ``num_skipped_images`` (per example; sum it over batches: this works with worker
processes, and the training loop logs it like ``num_dropped_boxes``) and, for the calling process
only, ``pipeline.skipped_in_this_process()``.

Config (``jaxvision.data.builder``): ``config.data.name = "coco_json"``, ``config.data.annotations``
and ``config.data.images`` for every split, or per split ``config.data.train_annotations`` /
``train_images`` and ``eval_annotations`` / ``eval_images`` (these win). The evaluation split uses
the training file's categories, so labels agree.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import warnings
from typing import Any, ClassVar, Mapping, Sequence

import numpy as np

from jaxvision.data import pipeline

log = logging.getLogger(__name__)

__all__ = ["CocoJsonDecoder", "CocoJsonSource", "load_categories", "segmentation_to_mask"]

_INT32_MAX = np.iinfo(np.int32).max
_HOW_TO_GET = (
    "For COCO 2017 download annotations_trainval2017.zip, train2017.zip and val2017.zip from "
    "https://cocodataset.org/#download, unzip them and set config.data.train_annotations="
    "'<dir>/annotations/instances_train2017.json', config.data.train_images='<dir>/train2017' "
    "(eval_annotations / eval_images likewise with val2017); for your own data, a COCO-format "
    "instances JSON and its image folder.")


def _mask_utils():
  try:
    from pycocotools import mask as mask_utils  # noqa: PLC0415
  except ImportError as e:
    raise ImportError("COCO masks need pycocotools: pip install 'jaxvision[coco]' (or "
                      "pip install pycocotools), or set config.data.keep_masks = False.") from e
  return mask_utils


def segmentation_to_mask(segmentation: Any, h: int, w: int) -> np.ndarray:
  """A COCO ``segmentation`` (polygons, uncompressed or compressed RLE) -> ``[h, w]`` bool mask.

  Polygons with fewer than 3 points are ignored (an all-empty polygon list gives an empty mask).

  Raises:
    ValueError: not a COCO segmentation, or an RLE whose size is not ``[h, w]``.
  """
  mask_utils = _mask_utils()
  if isinstance(segmentation, list):
    polygons = [[float(v) for v in p] for p in segmentation if len(p) >= 6 and len(p) % 2 == 0]
    if not polygons:
      return np.zeros((h, w), bool)
    rle = mask_utils.merge(mask_utils.frPyObjects(polygons, h, w))
  elif isinstance(segmentation, Mapping) and "counts" in segmentation:
    size = [int(s) for s in segmentation.get("size", (h, w))]
    if size != [h, w]:
      raise ValueError(f"segmentation: RLE size {size} differs from the image's {[h, w]}.")
    if isinstance(segmentation["counts"], list):  # uncompressed RLE
      rle = mask_utils.frPyObjects(dict(segmentation), h, w)
    else:  # compressed RLE
      counts = segmentation["counts"]
      rle = {"size": size, "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
  else:
    raise ValueError("segmentation: expected a list of polygons or an RLE dict with 'counts', got "
                     f"{type(segmentation).__name__}.")
  with warnings.catch_warnings():  # pycocotools 2.0.x on NumPy 2 warns about __array__'s copy
    warnings.simplefilter("ignore", DeprecationWarning)
    return mask_utils.decode(rle).astype(bool)


def _load_json(path: str) -> dict:
  if not os.path.isfile(path):
    raise pipeline.DatasetNotFoundError(f"COCO-format annotations file {path!r} not found. "
                                        + _HOW_TO_GET)
  with open(path) as f:
    try:
      data = json.load(f)
    except json.JSONDecodeError as e:
      raise ValueError(f"{path} is not valid JSON: {e}") from None
  if not isinstance(data, dict) or "images" not in data or "categories" not in data:
    found = sorted(data) if isinstance(data, dict) else type(data).__name__
    raise ValueError(f"{path} is not a COCO instances file: it needs 'images' and 'categories' "
                     f"(and 'annotations'); found {found}.")
  return data


def load_categories(annotations: str) -> tuple[tuple[int, ...], tuple[str, ...]]:
  """``(category ids ascending, their names)`` of a COCO instances JSON."""
  cats = sorted(_load_json(annotations)["categories"], key=lambda c: int(c["id"]))
  return tuple(int(c["id"]) for c in cats), tuple(str(c["name"]) for c in cats)


class CocoJsonSource:
  """The images of a COCO-format instances JSON as a random-access source.

  Args:
    annotations: path of the instances JSON.
    images: folder holding the images (``file_name`` is relative to it).
    category_ids: the category ids that map to labels 1..K, in order (default: this file's ids,
      ascending); pass the training file's ids for the evaluation file so labels agree.
    class_names: names of ``category_ids`` (default: this file's names, or the id as text for an
      id this file lacks); pass the training file's with its ids.

  Attributes:
    info: the ``DatasetInfo`` (class names, ``category_ids``).
    num_annotations_ignored: annotations dropped at load time (unknown image id).

  Each record is a small dict (``id``, ``file_name``, ``height``, ``width``, ``anns``); records are
  stored JSON-encoded (one ``bytes`` per image), so the source pickles quickly to grain workers
  even for COCO-sized files.
  """

  def __init__(self, annotations: str, images: str, *, category_ids: Sequence[int] | None = None,
               class_names: Sequence[str] | None = None, name: str = "coco_json"):
    data = _load_json(annotations)
    if not os.path.isdir(images):
      raise pipeline.DatasetNotFoundError(f"image folder {images!r} (for {annotations}) not "
                                          "found. " + _HOW_TO_GET)
    self.annotations, self.images = annotations, images
    cats = sorted(data["categories"], key=lambda c: int(c["id"]))
    own_ids = [int(c["id"]) for c in cats]
    names = {int(c["id"]): str(c["name"]) for c in cats}
    if category_ids is None:
      category_ids = own_ids
    category_ids = tuple(int(c) for c in category_ids)
    extra = sorted(set(own_ids) - set(category_ids))
    if extra:
      raise ValueError(f"{annotations} has categories {extra} that are not among the training "
                       f"categories {list(category_ids)}.")
    self.category_ids = category_ids
    self.label_of = {cid: k + 1 for k, cid in enumerate(category_ids)}
    if class_names is None:
      class_names = tuple(names.get(c, str(c)) for c in category_ids)
    if len(class_names) != len(category_ids):
      raise ValueError(f"class_names has {len(class_names)} names for {len(category_ids)} "
                       "category_ids.")
    self.info = pipeline.DatasetInfo(name=name, class_names=tuple(str(n) for n in class_names),
                                     category_ids=category_ids)

    by_image: dict[int, list] = {}
    for img in data["images"]:
      by_image[int(img["id"])] = []
    self.num_annotations_ignored = 0
    for ann in data.get("annotations", []):
      image_id = int(ann["image_id"])
      if image_id not in by_image or int(ann["category_id"]) not in self.label_of:
        self.num_annotations_ignored += 1
        continue
      keep = {"category_id": int(ann["category_id"]), "iscrowd": int(ann.get("iscrowd", 0))}
      for key in ("bbox", "segmentation"):
        if key in ann:
          keep[key] = ann[key]
      by_image[image_id].append(keep)
    if self.num_annotations_ignored:
      log.warning("%s: %d annotations refer to unknown images or categories and are ignored.",
                  annotations, self.num_annotations_ignored)
    self._records: list[bytes] = []
    for img in sorted(data["images"], key=lambda i: int(i["id"])):
      image_id = int(img["id"])
      if not 0 <= image_id <= _INT32_MAX:
        raise ValueError(f"{annotations}: image id {image_id} does not fit the batch contract's "
                         "int32 image_id.")
      record = {"id": image_id, "file_name": str(img["file_name"]),
                "height": int(img.get("height", 0)), "width": int(img.get("width", 0)),
                "anns": by_image[image_id]}
      self._records.append(json.dumps(record, separators=(",", ":")).encode())

  def __len__(self) -> int:
    return len(self._records)

  def __getitem__(self, index: int) -> dict:
    return json.loads(self._records[index])

  def decoder(self, *, with_masks: bool = False) -> "CocoJsonDecoder":
    """The decoder of this source's records (checks pycocotools now when masks are wanted)."""
    if with_masks:
      _mask_utils()
    return CocoJsonDecoder(self.images, with_masks=with_masks,
                           label_of=tuple(sorted(self.label_of.items())))


def _read_image(path: str, what: str, placeholder: dict) -> np.ndarray:
  from PIL import Image  # noqa: PLC0415

  try:
    with Image.open(path) as pil:
      return np.asarray(pil.convert("RGB"), np.uint8)
  except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
    raise pipeline.UnreadableExample(f"{what}: {type(e).__name__}: {e}", placeholder) from e


@dataclasses.dataclass(frozen=True)
class CocoJsonDecoder:
  """``CocoJsonSource`` record -> example (see the module docstring); picklable for workers.

  Attributes:
    images: the image folder.
    with_masks: decode instance masks (pycocotools).
    label_of: ``((category id, label), ...)``.
  """
  images: str
  with_masks: bool = False
  label_of: tuple[tuple[int, int], ...] = ()
  may_skip: ClassVar[bool] = True

  def __call__(self, record: Mapping[str, Any]) -> dict:
    image_id = int(record["id"])
    path = os.path.join(self.images, record["file_name"])
    what = f"{path} (image id {image_id})"
    placeholder = {"image": np.zeros((1, 1, 3), np.uint8), "boxes": np.zeros((0, 4), np.float32),
                   "labels": np.zeros((0,), np.int32), "is_crowd": np.zeros((0,), bool),
                   "image_id": np.int32(image_id)}
    if self.with_masks:
      placeholder["masks"] = np.zeros((0, 1, 1), bool)
    image = _read_image(path, what, placeholder)
    h, w = image.shape[:2]
    if record.get("height") and record.get("width") and (h, w) != (record["height"], record["width"]):
      raise pipeline.UnreadableExample(
          f"{what}: the file is {h} x {w} but the JSON says {record['height']} x {record['width']}",
          placeholder)
    label_of = dict(self.label_of)
    anns = record["anns"]
    n = len(anns)
    boxes = np.zeros((n, 4), np.float32)
    labels = np.zeros((n,), np.int32)
    crowd = np.zeros((n,), bool)
    masks = np.zeros((n, h, w), bool) if self.with_masks else None
    has_box = np.ones((n,), bool)
    for i, ann in enumerate(anns):
      labels[i] = label_of[ann["category_id"]]
      crowd[i] = bool(ann["iscrowd"])
      if "bbox" in ann and len(ann["bbox"]) == 4:
        x, y, bw, bh = (float(v) for v in ann["bbox"])
        boxes[i] = (x, y, x + bw, y + bh)
      else:
        has_box[i] = False
      if (masks is not None or not has_box[i]) and "segmentation" in ann:
        try:
          mask = segmentation_to_mask(ann["segmentation"], h, w)
        except ValueError as e:
          raise pipeline.UnreadableExample(f"{what}: annotation {i}: {e}", placeholder) from e
        if masks is not None:
          masks[i] = mask
        if not has_box[i] and mask.any():
          ys, xs = np.nonzero(mask)
          boxes[i] = (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
          has_box[i] = True
    boxes[:, 0::2] = np.clip(boxes[:, 0::2], 0, w)
    boxes[:, 1::2] = np.clip(boxes[:, 1::2], 0, h)
    ex = {"image": image, "boxes": boxes[has_box], "labels": labels[has_box],
          "is_crowd": crowd[has_box], "image_id": np.int32(image_id)}
    if masks is not None:
      ex["masks"] = masks[has_box]
    return ex
