"""Datasets from ``config.data``: the source, the transforms and the grain pipeline.

Keys of ``config.data`` (shared block: ``configs/common/data.py``):
  name: ``"shapes"`` (built in, prepared offline on first use). Real datasets join as they land.
  data_dir: TFDS data directory (None: ``$JAXVISION_DATA_DIR``, ``$TFDS_DATA_DIR`` or
    ``~/tensorflow_datasets``).
  train_split, eval_split: split names.
  image_size: (H, W) of the network input; images are resized keeping their aspect ratio to fit,
    then padded (bottom/right) to exactly this size.
  batch_size, eval_batch_size: global batch sizes (divided among processes, then devices).
  max_boxes, mask_stride, keep_masks: instance padding (``transforms.pad_instances``); masks are
    dropped unless ``keep_masks`` (semantic segmentation does not need them).
  augment: ``flip`` (bool), ``photometric`` (bool), ``elastic`` (bool, U-Net's deformation),
    ``scale_jitter`` (None or (min, max)).
  mean, std: normalization (``transforms.normalize_image``).
  seed: shuffling and augmentation seed.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import numpy as np

from jaxvision.data import pipeline
from jaxvision.data import transforms as T

DATASETS = ("shapes",)


def _check_name(data: Any) -> str:
  if data.name not in DATASETS:
    raise ValueError(f"config.data.name {data.name!r} is unknown; available: {DATASETS}.")
  return data.name


def dataset_info(data: Any) -> pipeline.DatasetInfo:
  """The ``DatasetInfo`` of ``config.data.name`` (without preparing or reading any data)."""
  _check_name(data)
  from jaxvision.data.shapes_gen import SHAPES_CLASSES  # noqa: PLC0415

  return pipeline.DatasetInfo(name="jaxvision_shapes", class_names=tuple(SHAPES_CLASSES))


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
  if train and aug.get("photometric", False):
    steps.append(T.photometric_distort)
  if train and aug.get("scale_jitter"):
    steps.append(functools.partial(T.scale_jitter, target_hw=size,
                                   scale_range=tuple(aug.scale_jitter)))
  else:
    steps.append(functools.partial(T.resize_keep_aspect, max_size=None, target_hw=size))
    steps.append(functools.partial(T.pad_to_size, target_hw=size))
  steps.append(functools.partial(T.normalize_image, mean=tuple(data.mean), std=tuple(data.std)))
  steps.append(functools.partial(T.pad_instances, max_boxes=int(data.max_boxes),
                                 mask_stride=int(data.get("mask_stride", 1))))
  return T.compose(*steps)


def make_split(data: Any, *, train: bool, start_step: int = 0):
  """This host's dataset of batches for the train or eval split (see ``pipeline.make_dataset``)."""
  _check_name(data)
  split = data.train_split if train else data.eval_split
  source, _ = pipeline.shapes_source(split, data.get("data_dir"))
  global_batch = int(data.batch_size if train else data.get("eval_batch_size", data.batch_size))
  if global_batch % jax.process_count():
    raise ValueError(f"the global batch size {global_batch} must be divisible by the number of "
                     f"processes {jax.process_count()}.")
  return pipeline.make_dataset(
      source, batch_size=global_batch // jax.process_count(), decode=pipeline.decode_shapes,
      transform=make_transform(data, train=train), train=train, seed=int(data.seed),
      shard_index=jax.process_index(), shard_count=jax.process_count(), start_step=start_step)


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
