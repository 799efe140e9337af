"""The built-in ``shapes`` dataset as a TFDS dataset (``jaxvision_shapes``), prepared locally.

Importing this module registers the TFDS builder ``jaxvision_shapes`` (class ``Shapes``), so
``tfds.data_source("jaxvision_shapes", data_dir=...)`` reads it like any real dataset. The
examples come from the pure-NumPy generator in ``jaxvision.data.shapes_gen``, whose docstring
freezes the v1.0.0 spec (128 x 128 RGB; 5 classes ``circle, square, triangle, star, cross`` with
labels 1..5; 1..6 instances of 16..56 px; class-independent colours and textures; gradient and
clutter background; occlusions keep every instance at least half visible).

Splits (example ``i`` of split ``s`` is ``generate_example(example_seed(s, i))``; splits are
disjoint draws, ``tiny`` is not a subset of ``train``)::

  train 2000 | validation 200 | test 200 | tiny 16 (for tests)

Features (all ``tfds.features.Tensor`` with ``encoding='zlib'``, so preparing needs no TensorFlow;
files are ``array_record`` so reading needs none either). Shuffling is disabled, so record ``i``
of a split is example ``i`` and ``image_id == i``::

  image        uint8   [128, 128, 3]
  segmentation uint8   [128, 128]       0 = background, 1..5 = class of the top-most instance
  masks        uint8   [N, 128, 128]    visible pixels (0/1), disjoint, bottom to top
  boxes        float32 [N, 4]           xyxy continuous pixel coords, tight around each mask
  labels       int64   [N]              1..5 (index into ``SHAPES_CLASSES`` plus one)
  is_crowd     bool    [N]              all False
  image_id     int64   []               index within the split

``info.metadata["class_names"]`` lists the foreground classes (``SHAPES_CLASSES``).

Use ``prepare_shapes()`` rather than ``download_and_prepare`` directly: it is a fast no-op when
the requested splits exist, prepares only the requested splits otherwise, holds a file lock
so that concurrent processes prepare once, and sets the offline ``DownloadConfig``.

TFDS notes (tensorflow-datasets 4.9.10 without TensorFlow; checked by running it):

* Tensor features with ``encoding='zlib'`` encode with ``zlib`` + NumPy and decode with
  ``decode_example_np``; one unknown dimension (``[None, H, W]``) is fine, the first dimension is
  recovered from the byte count. Two unknown dimensions would also store the shape.
* ``file_format='array_record'`` must be chosen before preparation (the constructor default here);
  TFRecord files cannot be read by ``tfds.data_source``.
* ``DownloadConfig(try_download_gcs=False, compute_stats=SKIP)``: nothing is looked up or
  fetched (GCS access is disabled in this TFDS release anyway, and SKIP is its default; both are
  set so that other releases behave the same). ``Shapes.download_and_prepare`` uses this config
  by default, so ``tfds.data_source("jaxvision_shapes")`` alone also prepares offline.
* ``DatasetBuilder.code_path`` needs the ``importlib_resources`` package, which TFDS requires
  only on Python < 3.9; without it ``download_and_prepare`` of any builder defined in an
  installed package raises ModuleNotFoundError. ``Shapes`` sets ``code_path`` itself.
* TFDS cannot add a split to a prepared dataset, so asking for a missing split regenerates all
  present and requested splits (``REUSE_CACHE_IF_EXISTS`` deletes the old version directory).
  The full dataset takes about 25 s of one CPU core (generation is ~60% of it).
* ``DatasetInfo`` is built directly, not with ``dataset_info_from_configs``, which would read a
  ``README.md``/``CITATIONS.bib`` next to this module as the dataset's description.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from typing import Iterable, Iterator, Sequence

from etils import epath
import numpy as np
import tensorflow_datasets as tfds

from jaxvision.data.shapes_gen import SHAPES_CLASSES, SPEC_V1, example_seed, generate_example

__all__ = [
    "SHAPES_CLASSES", "SHAPES_NAME", "SHAPES_SPLITS", "Shapes", "default_data_dir",
    "prepare_shapes"
]

SHAPES_NAME = "jaxvision_shapes"
SHAPES_SPLITS: dict[str, int] = {"train": 2000, "validation": 200, "test": 200, "tiny": 16}
DATA_DIR_ENV = "JAXVISION_DATA_DIR"


def default_data_dir() -> str:
  """``$JAXVISION_DATA_DIR``, else TFDS's (``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``)."""
  env = os.environ.get(DATA_DIR_ENV)
  if env:
    return os.path.expanduser(env)
  return os.path.expanduser(tfds.core.constants.DATA_DIR)


def _check_splits(splits: Iterable[str] | None) -> tuple[str, ...]:
  if splits is None:
    return tuple(SHAPES_SPLITS)
  if isinstance(splits, str):
    splits = (splits,)
  splits = tuple(splits)
  unknown = [s for s in splits if s not in SHAPES_SPLITS]
  if unknown or not splits:
    raise ValueError(f"splits: unknown or empty {list(splits)!r}; "
                     f"expected a non-empty subset of {list(SHAPES_SPLITS)}.")
  return tuple(s for s in SHAPES_SPLITS if s in splits)  # canonical order, no duplicates


class Shapes(tfds.core.GeneratorBasedBuilder):
  """TFDS builder of the procedural shapes dataset (see the module docstring).

  Args:
    splits: the splits ``download_and_prepare`` writes (default: all of ``SHAPES_SPLITS``). The
      examples of a split do not depend on which other splits are prepared. Reading ignores it:
      what was prepared is in the ``dataset_info.json`` on disk.
    **kwargs: passed to ``tfds.core.GeneratorBasedBuilder`` (``data_dir``, ``file_format``, ...);
      ``file_format`` defaults to ``array_record``.
  """

  name = SHAPES_NAME
  # TFDS 4.9.10 computes `code_path` (used to look for a `checksums.tsv`) with an isinstance check
  # against `importlib_resources`, a package it only requires on Python < 3.9: without it every
  # `download_and_prepare` of a builder defined in an installed package fails with
  # ModuleNotFoundError. This plain path is what that property returns when it works.
  code_path = epath.Path(__file__)
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {
      "1.0.0": "Spec v1: 128x128, 5 shape classes, 1-6 instances of 16-56 px, clutter, occlusion.",
  }

  def __init__(self, *, splits: Iterable[str] | None = None, **kwargs):
    self._splits_to_prepare = _check_splits(splits)
    kwargs.setdefault("file_format", "array_record")
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    h, w = SPEC_V1.image_size

    def tensor(shape, dtype):
      return tfds.features.Tensor(shape=shape, dtype=dtype, encoding="zlib")

    spec = {k: list(v) if isinstance(v, tuple) else v
            for k, v in dataclasses.asdict(SPEC_V1).items()}
    return tfds.core.DatasetInfo(
        builder=self,
        description=("Procedural shapes (jaxvision built-in): instance masks, boxes, labels and a "
                     "semantic map; classes: " + ", ".join(SHAPES_CLASSES) + "."),
        features=tfds.features.FeaturesDict({
            "image": tensor((h, w, 3), np.uint8),
            "segmentation": tensor((h, w), np.uint8),
            "masks": tensor((None, h, w), np.uint8),
            "boxes": tensor((None, 4), np.float32),
            "labels": tensor((None,), np.int64),
            "is_crowd": tensor((None,), np.bool_),
            "image_id": tfds.features.Scalar(dtype=np.int64),
        }),
        supervised_keys=("image", "segmentation"),
        disable_shuffling=True,
        metadata=tfds.core.MetadataDict(class_names=list(SHAPES_CLASSES), spec=spec),
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download
    return {s: self._generate_examples(s, SHAPES_SPLITS[s]) for s in self._splits_to_prepare}

  def _generate_examples(self, split: str, num_examples: int) -> Iterator[tuple[int, dict]]:
    for index in range(num_examples):
      example = generate_example(example_seed(split, index), SPEC_V1)
      example["image_id"] = np.int64(index)
      yield index, example

  def download_and_prepare(self, *, download_dir=None, download_config=None, **kwargs):
    """Like TFDS's, but offline by default (so ``tfds.data_source(name)`` prepares offline too)."""
    if download_config is None:
      download_config = _offline_config(tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS)
    return super().download_and_prepare(
        download_dir=download_dir, download_config=download_config, **kwargs)


def _offline_config(mode) -> tfds.download.DownloadConfig:
  return tfds.download.DownloadConfig(
      download_mode=mode,
      try_download_gcs=False,
      compute_stats=tfds.download.ComputeStatsMode.SKIP,
  )


def _prepared_splits(builder: tfds.core.DatasetBuilder) -> set[str]:
  """Splits on disk with their full number of examples (partial ones count as missing)."""
  if not builder.is_prepared():
    return set()
  return {
      name for name, info in builder.info.splits.items()
      if name in SHAPES_SPLITS and info.num_examples == SHAPES_SPLITS[name]
  }


@contextlib.contextmanager
def _file_lock(path: str):
  """An exclusive advisory lock on ``path`` (POSIX ``flock``; a no-op on Windows and for URIs
  such as ``gs://``, where TFDS's own write-to-temporary-then-rename is all there is)."""
  try:
    import fcntl  # pylint: disable=g-import-not-at-top
  except ImportError:  # Windows
    fcntl = None
  if fcntl is None or "://" in path:
    yield
    return
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "a") as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


def prepare_shapes(data_dir: str | os.PathLike | None = None,
                   splits: Sequence[str] | str | None = None) -> Shapes:
  """Prepares ``jaxvision_shapes`` under ``data_dir`` on first use and returns its builder.

  A fast no-op (reads ``dataset_info.json``) when every requested split is already prepared.
  Otherwise it generates the requested splits plus those already present (TFDS cannot add a
  split to a prepared version), with TFDS's progress bar; the whole dataset takes seconds to
  tens of seconds. A lock file in ``data_dir`` makes concurrent callers prepare it once.

  Args:
    data_dir: TFDS data directory; default ``default_data_dir()`` (``$JAXVISION_DATA_DIR``,
      ``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``).
    splits: split names from ``SHAPES_SPLITS``; default all of them.

  Returns:
    A ``Shapes`` builder reading the prepared data: ``builder.as_data_source(split)`` or
    ``tfds.data_source("jaxvision_shapes", split=..., data_dir=data_dir)``.
  """
  wanted = _check_splits(splits)
  data_dir = os.fspath(os.path.expanduser(data_dir)) if data_dir else default_data_dir()
  builder = Shapes(data_dir=data_dir)
  present = _prepared_splits(builder)
  if set(wanted) <= present:
    return builder
  with _file_lock(os.path.join(data_dir, f".{SHAPES_NAME}.lock")):
    builder = Shapes(data_dir=data_dir)  # another process may have prepared it meanwhile
    present = _prepared_splits(builder)
    if set(wanted) <= present:
      return builder
    exists = builder.is_prepared()
    builder = Shapes(data_dir=data_dir, splits=set(wanted) | present)
    mode = tfds.download.GenerateMode
    builder.download_and_prepare(download_config=_offline_config(
        mode.REUSE_CACHE_IF_EXISTS if exists else mode.REUSE_DATASET_IF_EXISTS))
  return Shapes(data_dir=data_dir)
