"""Real datasets through TFDS ``data_source`` (array_record; no TensorFlow needed to read), mapped
to the batch contract of DESIGN.md.

``open_source(name, split, data_dir)`` returns a random-access source, its decoder and its
``DatasetInfo``; ``jaxvision.data.builder`` feeds them to the grain pipeline. Records are read with
``tfds.data_source(..., download=False)``; every Image feature (also the per-object masks of LVIS)
is passed through undecoded and decoded here with Pillow, so a corrupt image is skipped with a
warning (``pipeline.UnreadableExample``) instead of crashing a worker, and grey/CMYK/RGBA JPEGs
become RGB. Nothing here imports JAX (it runs in grain worker processes).

Mapping of each dataset (``config.data.name``) into the contract. TFDS stores boxes as normalized
``[ymin, xmin, ymax, xmax]``; they become xyxy pixels of the decoded image (``tfds_boxes_to_xyxy``).
TFDS class labels are 0-based; object labels become 1..K. ``image_id`` is the record's index in
its split unless the dataset has a numeric id (COCO, LVIS: ``image/id``).

============== ============================================================================
name           what the batch gets
============== ============================================================================
oxford_iiit_pet  ``segmentation`` from the trimap: 2 (background) -> 0, 1 (pet) -> the pet class,
               3 (border / "not classified") -> 255 ignore. The pet class is 1 = "pet" with
               ``config.data.pet_labels = "pet"`` (default), 1..2 = cat/dog with ``"species"``,
               1..37 with ``"breed"``. One box: the head box of the XML annotation (trainval
               only; the test split has none), VOC-style 1-based inclusive pixel coordinates
               converted to continuous ones (``x1 - 1, y1 - 1, x2, y2``), labelled with the pet
               class. No instance masks (the trimap covers the whole animal, the box the head).
voc/2007,      Detection only (TFDS's ``voc`` has no segmentation masks, also for 2012; VOC
voc/2012       semantic segmentation is not in TFDS): boxes (1-based inclusive -> continuous, as
               above), labels 1..20, ``difficult``. VOC 2012's test split has no annotations.
scene_parse150 Careful: TFDS's ``scene_parse150`` stores the *instance* annotations of the Places
               Challenge 2017 (``annotations_instance.tar``): R channel = one of 100 object
               categories (``SCENE_PARSE_CLASSES``, 1..100), G channel = instance id; all other
               pixels (stuff such as wall/sky/floor, and unlabelled) are 0. It is not the
               150-class semantic benchmark. ``segmentation`` = R, with 0 = "other" kept as the
               background class 0 (default, ``config.data.scene_parse_other = "background"``)
               or set to 255 (``"ignore"``; class 0 then never occurs). Instances (G > 0 with a
               category): tight boxes from the instance map, labels 1..100, masks (if kept).
cityscapes     TFDS ``cityscapes/semantic_segmentation`` (fine labels; manual download):
               ``segmentation`` = the 19 train ids (``CITYSCAPES_CLASSES``) from the label ids
               of cityscapesScripts' table, everything else 255; no background class
               (``has_background=False``, C = 19).
lvis           LVIS v1 (COCO 2017 images): boxes, labels 1..1203 (= LVIS category ids), masks
               (if kept) from the per-object mask images; ``neg_category_ids`` and
               ``not_exhaustive_category_ids`` are not used. ``is_crowd`` False.
coco/2017      TFDS's COCO 2017 detection: boxes, labels 1..80 (``category_ids`` keeps COCO's ids),
               ``is_crowd``. TFDS's COCO has no masks: use the ``coco_json`` source for instance
               masks. Preparing it needs the ``tf`` extra; a prepared copy is read without TF.
============== ============================================================================

Missing data: :class:`DatasetNotFoundError` (a ``FileNotFoundError``) says which command prepares
the dataset (``tfds build ... --file_format=array_record``, which needs ``pip install
'jaxvision[tf]'``; Cityscapes: the two zip files to put in the manual directory first).
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import re
from typing import Any, Callable, ClassVar, Mapping, Sequence

import numpy as np
import tensorflow_datasets as tfds

from jaxvision.data import pipeline
from jaxvision.data.transforms import IGNORE_LABEL

__all__ = [
    "CITYSCAPES_CLASSES", "COCO_CATEGORY_IDS", "COCO_CLASSES", "DATASETS", "DatasetNotFoundError",
    "SCENE_PARSE_CLASSES", "VOC_CLASSES", "decode_image", "dataset_info", "open_source",
    "tfds_boxes_to_xyxy",
]

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
    "tvmonitor")

#: The 100 object categories of the Places Challenge 2017 instance annotations (R channel 1..100).
SCENE_PARSE_CLASSES = (
    "bed", "windowpane", "cabinet", "person", "door", "table", "curtain", "chair", "car",
    "painting", "sofa", "shelf", "mirror", "armchair", "seat", "fence", "desk", "wardrobe", "lamp",
    "bathtub", "railing", "cushion", "box", "column", "signboard", "chest of drawers", "counter",
    "sink", "fireplace", "refrigerator", "stairs", "case", "pool table", "pillow", "screen door",
    "bookcase", "coffee table", "toilet", "flower", "book", "bench", "countertop", "stove", "palm",
    "kitchen island", "computer", "swivel chair", "boat", "arcade machine", "bus", "towel",
    "light", "truck", "chandelier", "awning", "streetlight", "booth", "television receiver",
    "airplane", "apparel", "pole", "bannister", "ottoman", "bottle", "van", "ship", "fountain",
    "washer", "plaything", "stool", "barrel", "basket", "bag", "minibike", "oven", "ball", "food",
    "step", "trade name", "microwave", "pot", "animal", "bicycle", "dishwasher", "screen",
    "sculpture", "hood", "sconce", "vase", "traffic light", "tray", "ashcan", "fan", "plate",
    "monitor", "bulletin board", "radiator", "glass", "clock", "flag")

#: Cityscapes' 19 evaluated classes in train-id order.
CITYSCAPES_CLASSES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
    "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle",
    "bicycle")
# label id -> train id (cityscapesScripts labels.py); every other id (void classes, caravan,
# trailer, guard rail, ...) is 255.
_CITYSCAPES_TRAIN_IDS = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10,
                         24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}
_CITYSCAPES_LUT = np.full(256, IGNORE_LABEL, np.int32)
for _label_id, _train_id in _CITYSCAPES_TRAIN_IDS.items():
  _CITYSCAPES_LUT[_label_id] = _train_id

COCO_CLASSES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange",
    "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant",
    "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
    "teddy bear", "hair drier", "toothbrush")
COCO_CATEGORY_IDS = (
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 27, 28,
    31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55,
    56, 57, 58, 59, 60, 61, 62, 63, 64, 65, 67, 70, 72, 73, 74, 75, 76, 77, 78, 79, 80, 81, 82, 84,
    85, 86, 87, 88, 89, 90)

PET_LABELS = ("pet", "species", "breed")
SCENE_PARSE_OTHER = ("background", "ignore")


DatasetNotFoundError = pipeline.DatasetNotFoundError


# ------------------------------------------------------------------------------------------------
# Decoding helpers (Pillow, NumPy)
# ------------------------------------------------------------------------------------------------


def _as_bytes(value: Any) -> bytes | None:
  """Encoded image bytes in any of the forms TFDS returns them, or None for decoded arrays."""
  if isinstance(value, (bytes, bytearray, memoryview)):
    return bytes(value)
  if isinstance(value, np.ndarray) and value.dtype.kind in "OS" and value.ndim == 0:
    return _as_bytes(value.item())
  if isinstance(value, np.bytes_):
    return bytes(value)
  return None


def _open_pil(raw: bytes, what: str, placeholder: Mapping[str, Any] | None):
  from PIL import Image  # noqa: PLC0415

  try:
    image = Image.open(io.BytesIO(raw))
    image.load()
    return image
  except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
    raise pipeline.UnreadableExample(f"{what}: {type(e).__name__}: {e}", placeholder) from e


def decode_image(value: Any, *, what: str = "image",
                 placeholder: Mapping[str, Any] | None = None) -> np.ndarray:
  """An encoded (or already decoded) image -> ``[H, W, 3]`` uint8 RGB.

  Grey, palette, CMYK and RGBA images are converted to RGB (alpha dropped).

  Raises:
    pipeline.UnreadableExample: the bytes are not a readable image (``what`` names it in the
      warning; ``placeholder`` is the example evaluation keeps in its place).
  """
  raw = _as_bytes(value)
  if raw is None:
    image = np.asarray(value)
    if image.ndim == 2:
      image = image[..., None]
    if image.ndim != 3 or image.shape[-1] not in (1, 3, 4):
      raise ValueError(f"{what}: expected an [H, W, 1|3|4] image, got shape {image.shape}.")
    image = image[..., :3]
    if image.shape[-1] == 1:
      image = np.repeat(image, 3, axis=-1)
    return np.ascontiguousarray(image.astype(np.uint8, copy=False))
  with _open_pil(raw, what, placeholder) as pil:
    return np.asarray(pil.convert("RGB"), np.uint8)


def decode_array(value: Any, *, what: str, placeholder: Mapping[str, Any] | None = None,
                 mode: str | None = None) -> np.ndarray:
  """An encoded (or decoded) annotation image -> its pixel values: ``[H, W]`` or ``[H, W, C]``.

  Without ``mode`` the stored values are returned (palette indices for 'P' images, no colour
  conversion: label maps); ``mode="RGB"`` converts first (colour-coded annotations).
  """
  raw = _as_bytes(value)
  if raw is None:
    return np.asarray(value)
  with _open_pil(raw, what, placeholder) as pil:
    return np.asarray(pil if mode is None or pil.mode == mode else pil.convert(mode))


def _label_map(value: Any, *, what: str, placeholder) -> np.ndarray:
  """``[H, W]`` integer label map from a 1-channel annotation image (``[H, W, 1]`` squeezed)."""
  arr = decode_array(value, what=what, placeholder=placeholder)
  if arr.ndim == 3:
    arr = arr[..., 0]
  if arr.ndim != 2:
    raise pipeline.UnreadableExample(f"{what}: label map has shape {arr.shape}", placeholder)
  return arr.astype(np.int32)


def tfds_boxes_to_xyxy(bbox: Any, image_hw: Sequence[int], *, one_based: bool = False) -> np.ndarray:
  """TFDS ``BBox`` values (normalized ``[ymin, xmin, ymax, xmax]``) -> xyxy pixels ``[N, 4]`` float32.

  Host-side NumPy twin of ``jaxvision.ops.boxes.yxyx_to_xyxy`` + ``denormalize_boxes`` (worker
  processes do not import JAX), computed in float64 and clipped to the image.

  Args:
    bbox: ``[N, 4]`` (or a list of ``[4]`` arrays, as TFDS's NumPy decoding returns sequences).
    image_hw: ``(h, w)`` of the decoded image.
    one_based: the source coordinates were 1-based inclusive pixel indices (PASCAL VOC and the
      Oxford pet XML files, which TFDS divides by the image size unchanged): the box of pixels
      ``x1..x2`` is ``[x1 - 1, x2]`` in continuous coordinates, so ``x1`` and ``y1`` move by -1.
  """
  b = np.asarray(bbox, np.float64).reshape(-1, 4)
  h, w = float(image_hw[0]), float(image_hw[1])
  out = np.stack([b[:, 1] * w, b[:, 0] * h, b[:, 3] * w, b[:, 2] * h], axis=-1)
  if one_based:
    out[:, :2] -= 1.0
  out[:, 0::2] = np.clip(out[:, 0::2], 0.0, w)
  out[:, 1::2] = np.clip(out[:, 1::2], 0.0, h)
  return out.astype(np.float32)


def _ints(values: Any) -> np.ndarray:
  return np.asarray(values, np.int64).reshape(-1)


def _bools(values: Any, n: int) -> np.ndarray:
  out = np.asarray(values, bool).reshape(-1)
  return out if out.size == n else np.zeros((n,), bool)


def _text(value: Any) -> str:
  if isinstance(value, (bytes, np.bytes_)):
    return bytes(value).decode("utf-8", "replace")
  return str(value)


def _placeholder(image_id: int, *, segmentation: bool, masks: bool) -> dict:
  """The example kept (marked invalid) in evaluation when a record cannot be read."""
  ex = {"image": np.zeros((1, 1, 3), np.uint8), "boxes": np.zeros((0, 4), np.float32),
        "labels": np.zeros((0,), np.int32), "is_crowd": np.zeros((0,), bool),
        "difficult": np.zeros((0,), bool), "image_id": np.int32(image_id)}
  if segmentation:
    ex["segmentation"] = np.full((1, 1), IGNORE_LABEL, np.int32)
  if masks:
    ex["masks"] = np.zeros((0, 1, 1), bool)
  return ex


def _check_same_size(image: np.ndarray, other: np.ndarray, what: str, placeholder) -> None:
  if other.shape[:2] != image.shape[:2]:
    raise pipeline.UnreadableExample(
        f"{what}: annotation size {other.shape[:2]} differs from the image's {image.shape[:2]}",
        placeholder)


def _instance_boxes(instance_map: np.ndarray, category_map: np.ndarray):
  """Instances of an instance-id map (0 = none): ``(ids [N], boxes [N, 4] xyxy, labels [N])``.

  Boxes are tight around each id's pixels; the label is the category of the instance's first
  pixel (raster order). O(P log P) in the labelled pixels P, without an ``[N, H, W]`` array.
  """
  ys, xs = np.nonzero(instance_map)
  if ys.size == 0:
    return np.zeros((0,), np.int64), np.zeros((0, 4), np.float32), np.zeros((0,), np.int32)
  ids = instance_map[ys, xs].astype(np.int64)
  order = np.argsort(ids, kind="stable")
  ids, ys, xs = ids[order], ys[order], xs[order]
  uniq, starts = np.unique(ids, return_index=True)
  boxes = np.stack([np.minimum.reduceat(xs, starts), np.minimum.reduceat(ys, starts),
                    np.maximum.reduceat(xs, starts) + 1, np.maximum.reduceat(ys, starts) + 1],
                   axis=-1).astype(np.float32)
  labels = category_map[ys[starts], xs[starts]].astype(np.int32)
  return uniq, boxes, labels


# ------------------------------------------------------------------------------------------------
# Decoders: TFDS record (images undecoded) -> example dict for the transforms
# ------------------------------------------------------------------------------------------------


def _record_id(record: Mapping[str, Any]) -> int:
  return int(record.get("_index", -1))


@dataclasses.dataclass(frozen=True)
class PetDecoder:
  """``oxford_iiit_pet`` (see the module docstring). ``labels``: ``"pet"``, ``"species"``, ``"breed"``."""
  labels: str = "pet"
  may_skip: ClassVar[bool] = True

  def __call__(self, record: Mapping[str, Any]) -> dict:
    index = _record_id(record)
    what = f"oxford_iiit_pet record {index} ({_text(record.get('file_name', '?'))})"
    ph = _placeholder(index, segmentation=True, masks=False)
    image = decode_image(record["image"], what=what, placeholder=ph)
    trimap = _label_map(record["segmentation_mask"], what=what, placeholder=ph)
    _check_same_size(image, trimap, what, ph)
    if self.labels == "pet":
      cls = 1
    elif self.labels == "species":
      cls = int(record["species"]) + 1
    else:
      cls = int(record["label"]) + 1
    seg = np.full(trimap.shape, IGNORE_LABEL, np.int32)
    seg[trimap == 2] = 0
    seg[trimap == 1] = cls
    head = np.asarray(record["head_bbox"], np.float64).reshape(-1, 4)
    has_box = (head[:, 2] > head[:, 0]) & (head[:, 3] > head[:, 1])  # test split: all zeros
    boxes = tfds_boxes_to_xyxy(head[has_box], image.shape[:2], one_based=True)
    return {"image": image, "segmentation": seg, "boxes": boxes,
            "labels": np.full((len(boxes),), cls, np.int32), "image_id": np.int32(index)}


@dataclasses.dataclass(frozen=True)
class VocDecoder:
  """``voc/2007``, ``voc/2012``: boxes, labels 1..20, difficult."""
  name: str = "voc"
  may_skip: ClassVar[bool] = True

  def __call__(self, record: Mapping[str, Any]) -> dict:
    index = _record_id(record)
    what = f"{self.name} record {index} ({_text(record.get('image/filename', '?'))})"
    image = decode_image(record["image"], what=what,
                         placeholder=_placeholder(index, segmentation=False, masks=False))
    objects = record["objects"]
    labels = _ints(objects["label"]) + 1
    n = labels.size
    return {"image": image,
            "boxes": tfds_boxes_to_xyxy(objects["bbox"], image.shape[:2], one_based=True),
            "labels": labels.astype(np.int32), "difficult": _bools(objects["is_difficult"], n),
            "is_crowd": np.zeros((n,), bool), "image_id": np.int32(index)}


@dataclasses.dataclass(frozen=True)
class SceneParseDecoder:
  """``scene_parse150`` (instance annotations; see the module docstring).

  ``other``: ``"background"`` (pixels outside the 100 categories are class 0) or ``"ignore"`` (255).
  ``with_masks``: also return ``[N, H, W]`` instance masks.
  """
  other: str = "background"
  with_masks: bool = False
  may_skip: ClassVar[bool] = True

  def __call__(self, record: Mapping[str, Any]) -> dict:
    index = _record_id(record)
    what = f"scene_parse150 record {index}"
    ph = _placeholder(index, segmentation=True, masks=self.with_masks)
    image = decode_image(record["image"], what=what, placeholder=ph)
    ann = decode_array(record["annotation"], what=what, placeholder=ph, mode="RGB")
    if ann.ndim != 3 or ann.shape[-1] < 2:
      raise pipeline.UnreadableExample(f"{what}: annotation must be RGB, got shape {ann.shape}", ph)
    _check_same_size(image, ann, what, ph)
    category = ann[..., 0].astype(np.int32)
    instance = ann[..., 1].astype(np.int32) * (category > 0)  # instances need a category
    seg = category.copy()
    if self.other == "ignore":
      seg[category == 0] = IGNORE_LABEL
    ids, boxes, labels = _instance_boxes(instance, category)
    ex = {"image": image, "segmentation": seg, "boxes": boxes, "labels": labels,
          "is_crowd": np.zeros((len(ids),), bool), "image_id": np.int32(index)}
    if self.with_masks:
      ex["masks"] = instance[None] == ids[:, None, None]  # (N, H, W)
    return ex


@dataclasses.dataclass(frozen=True)
class CityscapesDecoder:
  """``cityscapes/semantic_segmentation``: label ids -> the 19 train ids, others 255."""
  may_skip: ClassVar[bool] = True

  def __call__(self, record: Mapping[str, Any]) -> dict:
    index = _record_id(record)
    what = f"cityscapes record {index} ({_text(record.get('image_id', '?'))})"
    ph = _placeholder(index, segmentation=True, masks=False)
    image = decode_image(record["image_left"], what=what, placeholder=ph)
    label_ids = _label_map(record["segmentation_label"], what=what, placeholder=ph)
    _check_same_size(image, label_ids, what, ph)
    seg = _CITYSCAPES_LUT[np.clip(label_ids, 0, 255)]
    return {"image": image, "segmentation": seg, "image_id": np.int32(index)}


@dataclasses.dataclass(frozen=True)
class CocoLikeDecoder:
  """``coco/2017`` and ``lvis``: boxes, labels (0-based + 1), ``is_crowd``; LVIS masks if asked."""
  name: str = "coco/2017"
  with_masks: bool = False
  may_skip: ClassVar[bool] = True

  def __call__(self, record: Mapping[str, Any]) -> dict:
    image_id = int(record.get("image/id", _record_id(record)))
    what = f"{self.name} image {image_id} ({_text(record.get('image/filename', '?'))})"
    with_masks = self.with_masks and "segmentation" in record["objects"]
    ph = _placeholder(image_id, segmentation=False, masks=with_masks)
    image = decode_image(record["image"], what=what, placeholder=ph)
    objects = record["objects"]
    labels = _ints(objects["label"]) + 1
    n = labels.size
    ex = {"image": image, "boxes": tfds_boxes_to_xyxy(objects["bbox"], image.shape[:2]),
          "labels": labels.astype(np.int32),
          "is_crowd": _bools(objects.get("is_crowd", np.zeros((n,), bool)), n),
          "image_id": np.int32(image_id)}
    if with_masks:
      h, w = image.shape[:2]
      masks = np.zeros((n, h, w), bool)
      for i, m in enumerate(objects["segmentation"]):
        m = decode_array(m, what=f"{what} mask {i}", placeholder=ph)
        m = m[..., 0] if m.ndim == 3 else m
        _check_same_size(image, m, what, ph)
        masks[i] = m > 0
      ex["masks"] = masks
    return ex


# ------------------------------------------------------------------------------------------------
# Registry, info, opening a split
# ------------------------------------------------------------------------------------------------

# Download sizes: the sums of the files in TFDS 4.9.10's checksum lists.
_BUILD = ("  pip install 'jaxvision[tf]'   # preparing TFDS datasets needs TensorFlow\n"
          "  tfds build {tfds_name} --data_dir={data_dir} --file_format=array_record\n")


@dataclasses.dataclass(frozen=True)
class _Spec:
  tfds_name: str
  image_features: Any  # nested dict of Image feature keys (True) to decode with Pillow here
  how_to_get: str


DATASETS: dict[str, _Spec] = {
    "oxford_iiit_pet": _Spec(
        "oxford_iiit_pet", {"image": True, "segmentation_mask": True},
        "Download and prepare it (about 0.8 GB) with\n" + _BUILD),
    "voc/2007": _Spec(
        "voc/2007", {"image": True},
        "Download and prepare it (about 0.9 GB) with\n" + _BUILD),
    "voc/2012": _Spec(
        "voc/2012", {"image": True},
        "Download and prepare it (about 3.9 GB) with\n" + _BUILD),
    "scene_parse150": _Spec(
        "scene_parse150", {"image": True, "annotation": True},
        "Download and prepare it (about 1 GB) with\n" + _BUILD),
    "cityscapes": _Spec(
        "cityscapes/semantic_segmentation", {"image_left": True, "segmentation_label": True},
        "Cityscapes needs a manual download: register at https://www.cityscapes-dataset.com, "
        "download leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip into "
        "{manual_dir}, then\n"
        "  pip install 'jaxvision[tf]'   # preparing TFDS datasets needs TensorFlow\n"
        "  tfds build {tfds_name} --data_dir={data_dir} --manual_dir={manual_dir} "
        "--file_format=array_record\n"),
    "lvis": _Spec(
        "lvis", {"image": True, "objects": {"segmentation": True}},
        "Download and prepare it (LVIS v1 annotations + the COCO 2017 images, about 27 GB; TFDS "
        "prepares it with Apache Beam) with\n"
        "  pip install 'jaxvision[tf]' apache-beam\n"
        "  tfds build {tfds_name} --data_dir={data_dir} --file_format=array_record\n"),
    "coco/2017": _Spec(
        "coco/2017", {"image": True},
        "Download and prepare it (about 27 GB; TFDS's COCO code needs TensorFlow) with\n" + _BUILD +
        "TFDS's coco/2017 has boxes only; for instance masks use config.data.name = 'coco_json' "
        "with the instances_*.json files and image folders from https://cocodataset.org."),
}


def _default_data_dir() -> str:
  from jaxvision.data.shapes import default_data_dir  # noqa: PLC0415

  return default_data_dir()


def _pet_breeds(data_dir: str | None) -> tuple[str, ...]:
  builder = tfds.builder("oxford_iiit_pet", data_dir=data_dir or _default_data_dir())
  return tuple(builder.info.features["label"].names)


def _lvis_classes() -> tuple[str, ...]:
  path = tfds.core.tfds_path("datasets/lvis/classes.txt")
  return tuple(line.strip() for line in path.read_text().splitlines() if line.strip())


def dataset_info(name: str, *, pet_labels: str = "pet", data_dir: str | None = None
                 ) -> pipeline.DatasetInfo:
  """The ``DatasetInfo`` of a TFDS dataset in ``DATASETS`` (reads no data)."""
  _check_name(name)
  if name == "oxford_iiit_pet":
    if pet_labels not in PET_LABELS:
      raise ValueError(f"config.data.pet_labels must be one of {PET_LABELS}, got {pet_labels!r}.")
    names = {"pet": ("pet",), "species": ("cat", "dog")}.get(pet_labels) or _pet_breeds(data_dir)
    return pipeline.DatasetInfo(name=name, class_names=names)
  if name.startswith("voc/"):
    return pipeline.DatasetInfo(name=name, class_names=VOC_CLASSES)
  if name == "scene_parse150":
    return pipeline.DatasetInfo(name=name, class_names=SCENE_PARSE_CLASSES)
  if name == "cityscapes":
    return pipeline.DatasetInfo(name=name, class_names=CITYSCAPES_CLASSES, has_background=False)
  if name == "lvis":
    names = _lvis_classes()
    return pipeline.DatasetInfo(name=name, class_names=names,
                                category_ids=tuple(range(1, len(names) + 1)))
  return pipeline.DatasetInfo(name=name, class_names=COCO_CLASSES, category_ids=COCO_CATEGORY_IDS)


def make_decoder(name: str, *, pet_labels: str = "pet", scene_parse_other: str = "background",
                 with_masks: bool = False) -> Callable[[Mapping[str, Any]], dict]:
  """The record -> example decoder of a dataset in ``DATASETS`` (picklable, for grain workers)."""
  _check_name(name)
  if name == "oxford_iiit_pet":
    if pet_labels not in PET_LABELS:
      raise ValueError(f"config.data.pet_labels must be one of {PET_LABELS}, got {pet_labels!r}.")
    return PetDecoder(pet_labels)
  if name.startswith("voc/"):
    return VocDecoder(name)
  if name == "scene_parse150":
    if scene_parse_other not in SCENE_PARSE_OTHER:
      raise ValueError(f"config.data.scene_parse_other must be one of {SCENE_PARSE_OTHER}, got "
                       f"{scene_parse_other!r}.")
    return SceneParseDecoder(scene_parse_other, with_masks)
  if name == "cityscapes":
    return CityscapesDecoder()
  return CocoLikeDecoder(name, with_masks)


def _check_name(name: str) -> None:
  if name not in DATASETS:
    raise ValueError(f"unknown TFDS dataset {name!r}; available: {sorted(DATASETS)}.")


class EncodedBytes(tfds.decode.Decoder):
  """A TFDS decoder that passes an Image feature's encoded bytes through, also inside a
  ``Sequence`` (TFDS's ``SkipDecoding`` lacks the NumPy batch path); Pillow decodes them here."""

  def decode_example(self, serialized_example):
    return serialized_example

  def decode_example_np(self, serialized_example):
    return serialized_example

  def decode_batch_example_np(self, serialized_example):
    return serialized_example


def _decoders(tree: Mapping[str, Any]) -> dict:
  """``{"image": True, "objects": {"segmentation": True}}`` -> the same tree of ``EncodedBytes``."""
  return {k: _decoders(v) if isinstance(v, Mapping) else EncodedBytes() for k, v in tree.items()}


def _version_key(path) -> tuple:
  return tuple(int(p) if p.isdigit() else -1 for p in os.path.basename(path).split("."))


def find_prepared(tfds_name: str, data_dir: str) -> str | None:
  """The newest ``<data_dir>/<tfds_name>/<version>`` holding a ``dataset_info.json``, else None."""
  root = os.path.join(os.path.expanduser(data_dir), *tfds_name.split("/"))
  if not os.path.isdir(root):
    return None
  versions = [os.path.join(root, d) for d in os.listdir(root)
              if os.path.isfile(os.path.join(root, d, "dataset_info.json"))]
  return max(versions, key=_version_key) if versions else None


def _prepared_info(version_dir: str) -> dict:
  with open(os.path.join(version_dir, "dataset_info.json")) as f:
    return json.load(f)


def _split_names(split: str) -> list[str]:
  """``"train[:10%]+validation"`` -> ``["train", "validation"]``."""
  return [re.sub(r"\[.*\]$", "", part.strip()) for part in str(split).split("+")]


def how_to_get(name: str, data_dir: str) -> str:
  """The instructions that prepare dataset ``name`` under ``data_dir``."""
  spec = DATASETS[name]
  manual_dir = os.path.join(data_dir, "downloads", "manual")
  return spec.how_to_get.format(tfds_name=spec.tfds_name, data_dir=data_dir, manual_dir=manual_dir)


def _not_found(name: str, data_dir: str, detail: str = "") -> DatasetNotFoundError:
  spec = DATASETS[name]
  where = os.path.join(data_dir, *spec.tfds_name.split("/"))
  return DatasetNotFoundError(
      f"dataset {name!r} (TFDS {spec.tfds_name!r}) is not prepared in {where}{detail}.\n"
      f"{how_to_get(name, data_dir)}"
      f"Then set config.data.data_dir={data_dir!r} (or $JAXVISION_DATA_DIR).")


@dataclasses.dataclass
class IndexedSource:
  """A random-access source whose records (dicts) also carry ``"_index"`` (their position)."""
  source: Sequence[Any]

  def __len__(self) -> int:
    return len(self.source)

  def __getitem__(self, i: int) -> dict:
    record = self.source[i]
    return {**record, "_index": int(i)}


def open_source(name: str, split: str, data_dir: str | None = None, *, pet_labels: str = "pet",
                scene_parse_other: str = "background", with_masks: bool = False
                ) -> tuple[IndexedSource, Callable[[Mapping[str, Any]], dict], pipeline.DatasetInfo]:
  """Opens split ``split`` of TFDS dataset ``name`` (a key of ``DATASETS``) for the pipeline.

  Reads with ``tfds.data_source(..., download=False)``; a copy prepared under ``data_dir`` whose
  TFDS code cannot be loaded here (``coco/2017`` without TensorFlow, or an older version than the
  installed TFDS builds) is read with ``tfds.builder_from_directory``.

  Returns:
    ``(source, decode, info)``: records (dicts with ``"_index"``), the picklable decoder and the
    ``DatasetInfo``.

  Raises:
    DatasetNotFoundError: the dataset is not prepared (array_record) under ``data_dir``; the
      message gives the command that prepares it.
    ValueError: unknown name/options, or ``split`` is not one of the prepared splits.
  """
  _check_name(name)
  spec = DATASETS[name]
  data_dir = os.path.expanduser(data_dir) if data_dir else _default_data_dir()
  decode = make_decoder(name, pet_labels=pet_labels, scene_parse_other=scene_parse_other,
                        with_masks=with_masks)
  info = dataset_info(name, pet_labels=pet_labels, data_dir=data_dir)
  version_dir = find_prepared(spec.tfds_name, data_dir)
  if version_dir is not None:
    prepared = _prepared_info(version_dir)
    formats = {prepared.get("fileFormat", "tfrecord"), *prepared.get("alternativeFileFormats", [])}
    if "array_record" not in formats:
      raise DatasetNotFoundError(
          f"dataset {name!r} is prepared in {version_dir} as {sorted(formats)}, but jaxvision reads "
          "array_record files (random access, no TensorFlow). Convert it with\n"
          "  pip install 'jaxvision[tf]'\n"
          f"  tfds convert_format --dataset_version_dir={version_dir} --out_file_format=array_record\n"
          f"or prepare it again:\n{how_to_get(name, data_dir)}")
    splits = [s["name"] for s in prepared.get("splits", [])]
    unknown = [s for s in _split_names(split) if s not in splits]
    if unknown:
      raise ValueError(f"split {split!r} of dataset {name!r} is not prepared in {version_dir}; "
                       f"available splits: {splits}. Set config.data.train_split / eval_split.")
  decoders = _decoders(spec.image_features)
  try:
    source = tfds.data_source(spec.tfds_name, split=split, data_dir=data_dir, download=False,
                              decoders=decoders)
  except Exception as first:  # noqa: BLE001 - TFDS raises many kinds; each is diagnosed below
    if version_dir is None:
      raise _not_found(name, data_dir) from None
    try:
      builder = tfds.builder_from_directory(version_dir)
      source = builder.as_data_source(split=split, decoders=decoders)
    except Exception as second:  # noqa: BLE001
      raise RuntimeError(
          f"dataset {name!r} is prepared in {version_dir} but could not be read: "
          f"{type(first).__name__}: {first}; reading the directory directly: "
          f"{type(second).__name__}: {second}") from second
  return IndexedSource(source), decode, info
