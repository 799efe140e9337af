"""Datasets from ``config.data``: the source, the transforms and the grain pipeline.

Keys of ``config.data`` (shared block: ``configs/common/base.py``; keys marked * are read with a
default when the config lacks them):
  name: ``"shapes"`` (built in, prepared offline on first use); TFDS datasets
    ``"oxford_iiit_pet"``, ``"voc/2007"``, ``"voc/2012"``, ``"scene_parse150"``, ``"cityscapes"``,
    ``"lvis"``, ``"coco/2017"`` (prepared with ``tfds build``; see ``jaxvision.data.tfds_sources``
    for how each maps into the batch contract); ``"coco_json"`` (a COCO-format instances JSON +
    image folder, ``jaxvision.data.coco_json``).
  data_dir: TFDS data directory (None: ``$JAXVISION_DATA_DIR``, ``$TFDS_DATA_DIR`` or
    ``~/tensorflow_datasets``).
  train_split, eval_split: split names (TFDS slicing such as ``"train[:90%]"`` works; not used by
    ``coco_json``).
  image_size: (H, W) of the network input; images are resized keeping their aspect ratio to fit,
    then padded (bottom/right) to exactly this size.
  batch_size, eval_batch_size: global batch sizes (divided among processes, then devices).
  max_boxes, mask_stride, keep_masks: instance padding (``transforms.pad_instances``); masks are
    not decoded (TFDS, COCO JSON) or are dropped (shapes) unless ``keep_masks``.
  augment: ``flip`` (bool), ``vertical_flip`` (bool), ``photometric`` (bool), ``elastic`` (bool,
    U-Net's deformation), ``expand*`` (SSD's "zoom out": 0 off, else the largest canvas ratio,
    SSD 4.0), ``min_iou_crop*`` (bool, SSD's "zoom in" patch sampling), ``scale_jitter`` (None or
    (min, max)). Applied in that order: elastic, flips, photometric, expand, crop, then the resize.
  mean, std: normalization (``transforms.normalize_image``).
  seed: shuffling and augmentation seed.
  worker_count*: grain worker processes building batches (default 0: in the main process);
    batches are the same whatever the count.
  prefetch*: batches buffered ahead on the host (per worker; without workers, in ``num_threads*``
    background threads, default 1); default 2.
  device_prefetch*: batches kept transferred to the devices ahead of the step
    (``pipeline.prefetch_to_device``; used by the training loop); default 2.
  pet_labels*: ``oxford_iiit_pet`` classes, ``"pet"`` (default), ``"species"`` or ``"breed"``.
  scene_parse_other*: ``scene_parse150``'s unlabelled/stuff pixels: ``"background"`` (class 0,
    default) or ``"ignore"`` (255).
  proposals*: host-side region proposals added to every example (``batch["proposals"]``,
    ``batch["proposals_valid"]``) for detectors on external proposals (Fast R-CNN with
    ``model.proposals="batch"``, SPP-net, R-CNN): None (default), ``"shapes"``
    (``jaxvision.data.proposals``'s selective-search stand-in: jittered gt boxes and random boxes
    for training, dense windows for evaluation) or ``"selective_search"``
    (``jaxvision.data.selective_search``: scikit-image graph segmentation + hierarchical grouping,
    the same for training and evaluation, never looking at the ground truth; computed per example
    on the host, about 0.13 s of CPU per 128 x 128 shapes image, ~280 boxes an image).
  max_proposals*: proposals per image ``P`` (truncated, best-ranked first, or padded with invalid
    ones; default 1000).
  extra_train*: more TFDS training data appended to ``name``'s ``train_split``, as
    ``"name:split"`` entries separated by commas, e.g. ``"voc/2012:train+validation"`` for the
    papers' VOC "07+12" (with ``name="voc/2007"``, ``train_split="train+validation"``). Every
    dataset must have ``name``'s class names; the evaluation split is ``name``'s only.
  annotations*, images*: ``coco_json`` instances JSON and image folder for every split;
    ``train_annotations*``/``train_images*`` and ``eval_annotations*``/``eval_images*`` override
    them per split.
"""

from __future__ import annotations

import functools
import os
from typing import Any

import numpy as np

from jaxvision.data import pipeline
from jaxvision.data import proposals as P
from jaxvision.data import selective_search as SS
from jaxvision.data import transforms as T

#: TFDS datasets (``jaxvision.data.tfds_sources.DATASETS``; listed here so that reading the list
#: does not import TFDS).
TFDS_DATASETS = ("oxford_iiit_pet", "voc/2007", "voc/2012", "scene_parse150", "cityscapes", "lvis",
                 "coco/2017")
DATASETS = ("shapes",) + TFDS_DATASETS + ("coco_json",)
PROPOSALS = (None, "shapes", "selective_search")


def _check_name(data: Any) -> str:
  if data.name not in DATASETS:
    raise ValueError(f"config.data.name {data.name!r} is unknown; available: {DATASETS}.")
  return data.name


def _coco_paths(data: Any, *, train: bool) -> tuple[str, str]:
  prefix = "train" if train else "eval"
  paths = []
  for kind in ("annotations", "images"):
    value = data.get(f"{prefix}_{kind}") or data.get(kind)
    if not value:
      raise ValueError(f"config.data.name 'coco_json' needs config.data.{prefix}_{kind} (or "
                       f"config.data.{kind} for every split): the COCO-format "
                       f"{'instances JSON' if kind == 'annotations' else 'image folder'}.")
    paths.append(os.path.expanduser(str(value)))
  return paths[0], paths[1]


def _file_key(path: str) -> tuple:
  try:
    st = os.stat(path)
    return (path, st.st_mtime_ns, st.st_size)
  except OSError:
    return (path, None, None)


@functools.lru_cache(maxsize=4)
def _coco_categories(key: tuple) -> tuple[tuple[int, ...], tuple[str, ...]]:
  from jaxvision.data import coco_json  # noqa: PLC0415

  return coco_json.load_categories(key[0])


def _coco_json_categories(data: Any) -> tuple[tuple[int, ...], tuple[str, ...]]:
  """``(category ids, names)`` of a ``coco_json`` config: COCO 2017's 80 when
  ``config.data.categories == "coco"`` (no file read), else the training JSON's."""
  if data.get("categories") == "coco":
    from jaxvision.data import tfds_sources  # noqa: PLC0415

    return tuple(tfds_sources.COCO_CATEGORY_IDS), tuple(tfds_sources.COCO_CLASSES)
  return _coco_categories(_file_key(_coco_paths(data, train=True)[0]))


@functools.lru_cache(maxsize=4)
def _coco_source(key: tuple, images: str, category_ids: tuple, class_names: tuple):
  from jaxvision.data import coco_json  # noqa: PLC0415

  return coco_json.CocoJsonSource(key[0], images, category_ids=category_ids,
                                  class_names=class_names)


def _tfds_options(data: Any) -> dict:
  return {"pet_labels": data.get("pet_labels", "pet"),
          "scene_parse_other": data.get("scene_parse_other", "background")}


def dataset_info(data: Any) -> pipeline.DatasetInfo:
  """The ``DatasetInfo`` of ``config.data.name`` (reads no examples; ``coco_json`` reads the
  training JSON's categories)."""
  name = _check_name(data)
  if name == "shapes":
    from jaxvision.data.shapes_gen import SHAPES_CLASSES  # noqa: PLC0415

    return pipeline.DatasetInfo(name="jaxvision_shapes", class_names=tuple(SHAPES_CLASSES))
  if name == "coco_json":
    ids, names = _coco_json_categories(data)
    return pipeline.DatasetInfo(name="coco_json", class_names=names, category_ids=ids)
  from jaxvision.data import tfds_sources  # noqa: PLC0415

  return tfds_sources.dataset_info(name, pet_labels=data.get("pet_labels", "pet"),
                                   data_dir=data.get("data_dir"))


def open_split(data: Any, *, train: bool):
  """``(source, decode, info)`` of the train or eval split of ``config.data`` (no pipeline yet).

  Raises:
    pipeline.DatasetNotFoundError: the data is missing; the message says how to get it.
  """
  name = _check_name(data)
  split = data.train_split if train else data.eval_split
  if name == "shapes":
    source, info = pipeline.shapes_source(split, data.get("data_dir"))
    return source, pipeline.decode_shapes, info
  with_masks = bool(data.get("keep_masks", False))
  if name == "coco_json":
    annotations, images = _coco_paths(data, train=train)
    ids, names = _coco_json_categories(data)
    source = _coco_source(_file_key(annotations), images, ids, names)
    return source, source.decoder(with_masks=with_masks), source.info
  from jaxvision.data import tfds_sources  # noqa: PLC0415

  extra = _extra_train(data) if train else []
  options = _tfds_options(data)
  info = tfds_sources.dataset_info(name, pet_labels=options["pet_labels"],
                                   data_dir=data.get("data_dir"))
  for extra_name, _ in extra:  # checked before any data is opened
    more = tfds_sources.dataset_info(extra_name, pet_labels=options["pet_labels"],
                                     data_dir=data.get("data_dir"))
    if tuple(more.class_names) != tuple(info.class_names):
      raise ValueError(f"config.data.extra_train: {extra_name!r} has other classes than "
                       f"{name!r} ({len(more.class_names)} vs {len(info.class_names)}: "
                       f"{list(more.class_names)[:3]}... vs {list(info.class_names)[:3]}...).")
  source, decode, info = tfds_sources.open_source(name, split, data.get("data_dir"),
                                                  with_masks=with_masks, **options)
  if not extra:
    return source, decode, info
  sources, decoders = [source], [decode]
  for extra_name, extra_split in extra:
    more, more_decode, _ = tfds_sources.open_source(extra_name, extra_split, data.get("data_dir"),
                                                    with_masks=with_masks, **options)
    sources.append(more)
    decoders.append(more_decode)
  return ConcatSource(sources), ConcatDecoder(decoders), info


def _extra_train(data: Any) -> list[tuple[str, str]]:
  """``config.data.extra_train`` as ``[(name, split), ...]`` (ValueError if malformed)."""
  value = data.get("extra_train") or ""
  out = []
  for entry in (e.strip() for e in str(value).split(",")):
    if not entry:
      continue
    name, sep, split = entry.partition(":")
    if not sep or not name.strip() or not split.strip():
      raise ValueError(f"config.data.extra_train entries must be 'name:split' (e.g. "
                       f"'voc/2012:train+validation'), got {entry!r} in {value!r}.")
    if name.strip() not in DATASETS or name.strip() in ("shapes", "coco_json"):
      raise ValueError(f"config.data.extra_train: {name.strip()!r} is not a TFDS dataset of "
                       f"{[d for d in DATASETS if d not in ('shapes', 'coco_json')]}.")
    out.append((name.strip(), split.strip()))
  return out


class ConcatSource:
  """Random access to several sources one after the other; records get ``"_part"`` (which
  source) and a global ``"_index"`` (so image ids stay unique)."""

  def __init__(self, sources):
    self.sources = list(sources)
    self.offsets = np.cumsum([0] + [len(s) for s in self.sources])

  def __len__(self) -> int:
    return int(self.offsets[-1])

  def __getitem__(self, i: int) -> dict:
    i = int(i)
    if not 0 <= i < len(self):
      raise IndexError(f"index {i} out of range for {len(self)} records")
    part = int(np.searchsorted(self.offsets, i, side="right") - 1)
    record = self.sources[part][i - int(self.offsets[part])]
    return {**record, "_index": i, "_part": part}


class ConcatDecoder:
  """Decodes a ``ConcatSource`` record with its own source's decoder (picklable)."""

  def __init__(self, decoders):
    self.decoders = list(decoders)

  def __call__(self, record):
    record = dict(record)
    return self.decoders[record.pop("_part")](record)


def _drop_masks(example: dict) -> dict:
  example = dict(example)
  example.pop("masks", None)
  return example


def make_transform(data: Any, *, train: bool):
  """The ``(example, rng) -> example`` transform for ``config.data`` (train: with augmentation)."""
  size = tuple(int(s) for s in data.image_size)
  aug = data.augment
  steps = []
  if not data.get("keep_masks", False):
    steps.append(_drop_masks)
  if train and aug.get("elastic", False):
    steps.append(T.elastic_deform)
  if train and aug.get("flip", False):
    steps.append(T.random_horizontal_flip)
  if train and aug.get("vertical_flip", False):
    steps.append(T.random_vertical_flip)
  if train and aug.get("photometric", False):
    steps.append(T.photometric_distort)
  expand = float(aug.get("expand", 0.0) or 0.0)
  if train and expand:
    if expand <= 1.0:
      raise ValueError(f"config.data.augment.expand must be 0 (off) or a canvas ratio > 1 (SSD: "
                       f"4.0), got {expand!r}.")
    steps.append(functools.partial(T.random_expand, max_ratio=expand))
  if train and aug.get("min_iou_crop", False):
    steps.append(T.ssd_random_crop)
  if train and aug.get("scale_jitter"):
    steps.append(functools.partial(T.scale_jitter, target_hw=size,
                                   scale_range=tuple(aug.scale_jitter)))
  else:
    steps.append(functools.partial(T.resize_keep_aspect, max_size=None, target_hw=size))
    steps.append(functools.partial(T.pad_to_size, target_hw=size))
  steps.append(functools.partial(T.normalize_image, mean=tuple(data.mean), std=tuple(data.std)))
  steps.append(functools.partial(T.pad_instances, max_boxes=int(data.max_boxes),
                                 mask_stride=int(data.get("mask_stride", 1))))
  proposals = data.get("proposals", None)
  if proposals not in PROPOSALS:
    raise ValueError(f"config.data.proposals must be one of {PROPOSALS}, got {proposals!r}.")
  if proposals is not None:
    max_proposals = int(data.get("max_proposals", 1000))
    if max_proposals < 1:
      raise ValueError(f"config.data.max_proposals must be >= 1, got {max_proposals}.")
    if proposals == "shapes":
      steps.append(functools.partial(P.add_shapes_proposals, max_proposals=max_proposals,
                                     train=train))
    else:  # "selective_search": needs scikit-image; say so now rather than in the first batch
      SS.check_available()
      steps.append(functools.partial(SS.add_selective_search_proposals,
                                     max_proposals=max_proposals, train=train))
  return T.compose(*steps)


def make_split(data: Any, *, train: bool, start_step: int = 0):
  """This host's dataset of batches for the train or eval split (see ``pipeline.make_dataset``)."""
  import jax  # noqa: PLC0415 - keeps grain workers, which unpickle this module's objects, JAX-free

  source, decode, _ = open_split(data, train=train)
  global_batch = int(data.batch_size if train else data.get("eval_batch_size", data.batch_size))
  if global_batch % jax.process_count():
    raise ValueError(f"the global batch size {global_batch} must be divisible by the number of "
                     f"processes {jax.process_count()}.")
  return pipeline.make_dataset(
      source, batch_size=global_batch // jax.process_count(), decode=decode,
      transform=make_transform(data, train=train), train=train, seed=int(data.seed),
      shard_index=jax.process_index(), shard_count=jax.process_count(), start_step=start_step)


def loader_options(data: Any) -> dict:
  """``config.data``'s iteration options for ``pipeline.Loader`` / ``pipeline.iterate``."""
  return {"worker_count": int(data.get("worker_count", 0)), "prefetch": int(data.get("prefetch", 2)),
          "num_threads": int(data.get("num_threads", 1))}


def make_loader(data: Any, *, train: bool, start_step: int = 0) -> pipeline.Loader:
  """``make_split`` wrapped with ``config.data``'s worker and prefetch options.

  ``for batch in loader`` iterates (training: forever, from ``start_step``; evaluation: one pass
  per ``iter``); ``loader[i]`` is batch ``start_step + i`` computed in the calling process.
  """
  return pipeline.Loader(make_split(data, train=train, start_step=start_step), **loader_options(data))


def mean_std(data: Any) -> tuple[np.ndarray, np.ndarray]:
  return np.asarray(data.mean, np.float32), np.asarray(data.std, np.float32)


def median_frequency_weights(source, num_classes: int, *, decode=pipeline.decode_shapes,
                             ignore_label: int = pipeline.IGNORE_LABEL) -> np.ndarray:
  """Median-frequency class weights (Eigen & Fergus 2015) of a split's semantic label maps.

  ``freq_c`` = pixels of class ``c`` / pixels of the images in which ``c`` appears, and
  ``w_c = median(freq) / freq_c`` (rare classes weigh more). Classes that never appear get 0.
  Returns ``[num_classes]`` float64, for ``config.model.class_weights``.
  """
  pixels = np.zeros(num_classes)
  image_pixels = np.zeros(num_classes)
  for i in range(len(source)):
    seg = np.asarray(decode(source[i])["segmentation"]).ravel()
    seg = seg[(seg != ignore_label) & (seg < num_classes)]
    counts = np.bincount(seg, minlength=num_classes)
    pixels += counts
    image_pixels += (counts > 0) * seg.size
  present = pixels > 0
  freq = np.where(present, pixels / np.maximum(image_pixels, 1), 0.0)
  return np.where(present, np.median(freq[present]) / np.where(present, freq, 1.0), 0.0)
