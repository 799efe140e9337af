"""The batch contract and the grain input pipeline (TFDS ``data_source`` -> grain -> batches).

Every data source ends in batches with the keys, shapes and dtypes of DESIGN.md's batch contract
(``BATCH_KEYS`` below), so models, losses and evaluators never special-case a dataset.

Pipeline, per host::

  data_source (random access, e.g. tfds.data_source or the shapes builder)
    -> this host's shard (records shard_index, shard_index + shard_count, ...)
    -> shuffle with ``seed`` (a new order every epoch) and repeat (training) / one pass (eval)
    -> decode + transform: ``transform(example, rng)`` with ``rng = default_rng([seed, position])``
    -> ``finalize``: keep the contract's keys, cast dtypes
    -> batch (eval: the last partial batch is padded, ``example_valid`` marks real examples)
    -> optional worker processes and prefetch

Determinism and resume: the pipeline is built on grain's random-access ``MapDataset``, so batch
``i`` is a pure function of (source, seed, shard, ``i``). The random generator of each example is
seeded from its position in the shuffled stream, never from the worker, so the same batches come out
whatever the number of worker processes, and ``start_step=k`` resumes exactly at batch ``k`` after a
restart (no iterator state needs saving).

Addition to the contract: ``example_valid [B] bool`` (True for real examples). Evaluation batches
stay full-size (static shapes) when a split's length is not a multiple of the batch size; training
batches are always full and all-True.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Sequence

import grain
import numpy as np

IGNORE_LABEL = 255

# key -> dtype. Shapes: image [B,H,W,3]; image_hw/orig_hw [B,2]; scale/image_id/example_valid [B];
# boxes [B,M,4]; labels/box_valid/is_crowd/difficult [B,M]; masks [B,M,H/s,W/s]; segmentation [B,H,W];
# proposals [B,P,4]; proposals_valid [B,P]; num_dropped_boxes [B].
BATCH_KEYS: dict[str, Any] = {
    "image": np.float32,
    "image_hw": np.int32,
    "orig_hw": np.int32,
    "scale": np.float32,
    "image_id": np.int32,
    "example_valid": np.bool_,
    "boxes": np.float32,
    "labels": np.int32,
    "box_valid": np.bool_,
    "is_crowd": np.bool_,
    "difficult": np.bool_,
    "masks": np.bool_,
    "segmentation": np.int32,
    "proposals": np.float32,
    "proposals_valid": np.bool_,
    "num_dropped_boxes": np.int32,
}


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """What models and evaluators need to know about a dataset.

  Attributes:
    name: dataset name (e.g. ``"jaxvision_shapes"``, ``"voc/2007"``).
    class_names: names of the K foreground classes; object label ``k`` (1..K) is ``class_names[k-1]``.
    has_background: whether semantic label maps use 0 for background (then map labels are 0..K).
    ignore_label: label-map value that losses and metrics ignore.
    category_ids: dataset category id of each foreground class (COCO), for mapping back.
  """
  name: str
  class_names: tuple[str, ...]
  has_background: bool = True
  ignore_label: int = IGNORE_LABEL
  category_ids: tuple[int, ...] | None = None

  @property
  def num_classes(self) -> int:
    """K, the number of foreground (object) classes."""
    return len(self.class_names)

  @property
  def num_seg_classes(self) -> int:
    """C, the number of classes in semantic label maps (K, plus 1 with a background class)."""
    return self.num_classes + int(self.has_background)

  @property
  def seg_class_names(self) -> tuple[str, ...]:
    return (("background",) if self.has_background else ()) + tuple(self.class_names)


def finalize(example: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """Keeps the batch contract's keys of one example and casts them to the contract's dtypes.

  Raises:
    ValueError: ``example`` has no ``image``.
  """
  if "image" not in example:
    raise ValueError(f"finalize: example has no 'image' (keys: {sorted(example)}).")
  out = {}
  for key, dtype in BATCH_KEYS.items():
    if key in example:
      out[key] = np.asarray(example[key]).astype(dtype, copy=False)
  h, w = out["image"].shape[:2]
  out.setdefault("image_hw", np.array([h, w], np.int32))
  out.setdefault("orig_hw", np.array([h, w], np.int32))
  out.setdefault("scale", np.float32(1.0))
  out.setdefault("image_id", np.int32(-1))
  out["example_valid"] = np.bool_(True)
  return out


def _pad_batch(examples: Sequence[dict[str, np.ndarray]], batch_size: int) -> dict[str, np.ndarray]:
  """Stacks examples into a batch, padding with zero examples (``example_valid`` False)."""
  first = examples[0]
  batch = {}
  for key in first:
    arrays = [ex[key] for ex in examples]
    pad = [np.zeros_like(first[key])] * (batch_size - len(examples))
    if key == "segmentation":
      pad = [np.full_like(first[key], IGNORE_LABEL)] * len(pad)
    batch[key] = np.stack(arrays + pad)
  return batch


@dataclasses.dataclass
class _Apply:
  """``(position, record) -> finalized example``, picklable so grain workers can run it."""
  decode: Callable[[Any], dict]
  transform: Callable[[dict, np.random.Generator], dict] | None
  seed: int

  def __call__(self, position: int, record: Any) -> dict[str, np.ndarray]:
    example = self.decode(record)
    if self.transform is not None:
      rng = np.random.default_rng([self.seed, position])
      example = self.transform(example, rng)
    return finalize(example)


def make_dataset(
    source: Sequence[Any],
    *,
    batch_size: int,
    decode: Callable[[Any], dict] = dict,
    transform: Callable[[dict, np.random.Generator], dict] | None = None,
    train: bool,
    seed: int = 0,
    shard_index: int = 0,
    shard_count: int = 1,
    start_step: int = 0,
) -> grain.MapDataset:
  """Builds the per-host pipeline as a random-access dataset of batches.

  Args:
    source: a random-access source (``len`` + ``__getitem__``), e.g. ``tfds.data_source(...)``.
    batch_size: per-host batch size (global batch / number of processes).
    decode: ``record -> example dict`` (raw TFDS record to the transforms' example format).
    transform: ``(example, rng) -> example``, e.g. ``transforms.compose(...)``; must end with padded
      arrays of fixed shapes (``pad_to_size``/``pad_instances``) so examples stack.
    train: training (shuffle every epoch, repeat forever, full batches) or evaluation (one pass in
      order, last batch padded and marked by ``example_valid``).
    seed: shuffling and augmentation seed.
    shard_index, shard_count: this host's shard (``jax.process_index()``, ``jax.process_count()``).
    start_step: first batch to produce (resume after a restart).

  Returns:
    A ``grain.MapDataset`` whose item ``i`` is batch ``start_step + i`` (infinite when ``train``).
    Iterate it directly, or call ``.to_iter_dataset()`` and ``.mp_prefetch(...)`` for workers.
  """
  if batch_size <= 0:
    raise ValueError(f"batch_size must be > 0, got {batch_size}.")
  if not 0 <= shard_index < shard_count:
    raise ValueError(f"shard_index must be in [0, shard_count={shard_count}), got {shard_index}.")
  n = len(source)
  if n == 0:
    raise ValueError("source is empty: the split has no examples.")
  ds = grain.MapDataset.source(source)[shard_index::shard_count]
  apply = _Apply(decode, transform, seed)
  if train:
    if len(ds) < batch_size:
      raise ValueError(f"the shard has {len(ds)} examples, fewer than batch_size={batch_size}.")
    ds = ds.shuffle(seed=seed).repeat()  # a new permutation every epoch
    ds = ds.map_with_index(apply)
    ds = ds.batch(batch_size, drop_remainder=True)
    return ds[start_step:]
  ds = ds.map_with_index(apply)
  num_batches = -(-len(ds) // batch_size)

  def batch_at(i: int) -> dict[str, np.ndarray]:
    examples = [ds[j] for j in range(i * batch_size, min((i + 1) * batch_size, len(ds)))]
    return _pad_batch(examples, batch_size)

  return grain.MapDataset.range(num_batches).map(batch_at)[start_step:]


# ------------------------------------------------------------------------------------------------
# The built-in shapes dataset as a source
# ------------------------------------------------------------------------------------------------


def decode_shapes(record: Mapping[str, Any]) -> dict:
  """A ``jaxvision_shapes`` record -> example dict for the transforms (contract dtypes)."""
  return {
      "image": np.asarray(record["image"], np.uint8),
      "segmentation": np.asarray(record["segmentation"], np.int32),
      "masks": np.asarray(record["masks"]).astype(bool),
      "boxes": np.asarray(record["boxes"], np.float32).reshape(-1, 4),
      "labels": np.asarray(record["labels"], np.int32),
      "is_crowd": np.asarray(record["is_crowd"], bool),
      "image_id": np.int32(record["image_id"]),
  }


def shapes_source(split: str, data_dir: str | None = None) -> tuple[Sequence[Any], DatasetInfo]:
  """The ``jaxvision_shapes`` split as a random-access source (prepared on first use) and its info."""
  from jaxvision.data import shapes  # noqa: PLC0415 - keeps `import jaxvision.data` free of TFDS

  source = shapes.prepare_shapes(data_dir, splits=[split]).as_data_source(split)
  info = DatasetInfo(name=shapes.SHAPES_NAME, class_names=tuple(shapes.SHAPES_CLASSES))
  return source, info
