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

Additions to the contract: ``example_valid [B] bool`` (True for real examples). Evaluation batches
stay full-size (static shapes) when a split's length is not a multiple of the batch size; training
batches are always full. ``num_skipped_images [B] int32`` (only from sources that can skip, e.g. the
COCO-JSON source): how many unreadable records were skipped to produce each example.

Unreadable records. A ``decode`` function raises :class:`UnreadableExample` for a record whose
image cannot be read (corrupt or missing file). The record is skipped with a warning, never a crash:
in training the next record of the shuffled stream takes its place (deterministically, so batches
stay the same whatever the worker count); in evaluation its slot becomes a padding example
(``example_valid`` False, so metrics ignore it). Either way the example carries
``num_skipped_images`` >= 1: summing that key over batches counts skipped images in every process,
workers included (``skipped_in_this_process()`` only sees the calling process).

Iteration (:class:`Loader`, :func:`iterate`): ``worker_count`` grain worker processes each build whole
batches (worker ``i`` makes batches ``i, i + n, ...``; the main process takes them round-robin, so
the order is the same as with no workers), ``prefetch`` batches are buffered ahead (per worker, or
in one background thread without workers), and :func:`prefetch_to_device` keeps the next batches
already transferred to the accelerators while the current step runs.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import logging
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import grain
import numpy as np

log = logging.getLogger(__name__)

IGNORE_LABEL = 255

# key -> dtype. Shapes: image [B,H,W,3]; image_hw/orig_hw [B,2]; scale/image_id/example_valid [B];
# boxes [B,M,4]; labels/box_valid/is_crowd/difficult [B,M]; masks [B,M,H/s,W/s]; segmentation [B,H,W];
# proposals [B,P,4]; proposals_valid [B,P]; num_dropped_boxes/num_skipped_images [B];
# weight_map [B,H,W] (U-Net's border weights, jaxvision.models.segmentation.unet.add_unet_weight_map).
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
    "num_skipped_images": np.int32,
    "weight_map": np.float32,
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

  ``example_valid`` is True unless the example says otherwise (placeholders of unreadable records).

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
  out["example_valid"] = np.bool_(example.get("example_valid", True))
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


class DatasetNotFoundError(FileNotFoundError):
  """A dataset is not where jaxvision looks for it; the message says how to get it."""


class UnreadableExample(Exception):
  """Raised by a ``decode`` function for a record it cannot read (corrupt or missing image file).

  The pipeline catches it, logs a warning and skips the record (see the module docstring).

  Attributes:
    reason: what went wrong, with the file name (for the warning).
    placeholder: an example dict with the keys the source's examples normally have (an image of
      the record's size or 1 x 1, no instances, ``segmentation`` all 255 where the source has label
      maps); evaluation keeps it, marked ``example_valid`` False, so batches keep their shapes.
  """

  def __init__(self, reason: str, placeholder: Mapping[str, Any] | None = None):
    super().__init__(reason)
    self.reason = reason
    self.placeholder = placeholder


_SKIPPED: collections.Counter = collections.Counter()
#: Consecutive unreadable records after which training stops: the data, not one file, is broken.
MAX_CONSECUTIVE_SKIPS = 64


def skipped_in_this_process() -> int:
  """Unreadable records skipped so far by this process (without workers: the whole pipeline)."""
  return sum(_SKIPPED.values())


def _note_skip(error: UnreadableExample) -> None:
  _SKIPPED[error.reason] += 1
  # A warning the first time a file is skipped in this process, INFO when it comes up again.
  level = logging.WARNING if _SKIPPED[error.reason] == 1 else logging.INFO
  log.log(level, "skipping an unreadable example: %s (%d skipped so far in this process).",
          error.reason, skipped_in_this_process())


@dataclasses.dataclass
class _Apply:
  """``(position, record) -> finalized example``, picklable so grain workers can run it.

  ``stream`` (training) is the shuffled, repeated dataset of records: an unreadable record at
  ``position`` is replaced by the one at ``position + 1`` (then ``+ 2``, ...). Without ``stream``
  (evaluation) the decoder's placeholder takes the slot, marked invalid.
  """
  decode: Callable[[Any], dict]
  transform: Callable[[dict, np.random.Generator], dict] | None
  seed: int
  stream: Any = None

  def __call__(self, position: int, record: Any) -> dict[str, np.ndarray]:
    skipped = 0
    while True:
      try:
        example = self.decode(record)
        break
      except UnreadableExample as e:
        _note_skip(e)
        skipped += 1
        if self.stream is None:
          if e.placeholder is None:
            raise RuntimeError(f"{e.reason}, and the decoder gave no placeholder example to keep "
                               "the evaluation batch's shape.") from e
          example = dict(e.placeholder, example_valid=False)
          break
        if skipped >= MAX_CONSECUTIVE_SKIPS:
          raise RuntimeError(f"{skipped} consecutive records could not be read (last: {e.reason}); "
                             "check the image folder and annotation file.") from e
        record = self.stream[position + skipped]
    if skipped or getattr(self.decode, "may_skip", False):
      example = dict(example, num_skipped_images=np.int32(skipped))
    if self.transform is not None:
      rng = np.random.default_rng([self.seed, position])
      example = self.transform(example, rng)
    return finalize(example)


@dataclasses.dataclass
class _EvalBatch:
  """Batch ``i`` of an evaluation pass (the last one padded); picklable for grain workers."""
  examples: Any
  batch_size: int

  def __call__(self, i: int) -> dict[str, np.ndarray]:
    stop = min((i + 1) * self.batch_size, len(self.examples))
    return _pad_batch([self.examples[j] for j in range(i * self.batch_size, stop)], self.batch_size)


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
    decode: ``record -> example dict`` (raw TFDS record to the transforms' example format); may
      raise :class:`UnreadableExample` to skip a record (a ``may_skip = True`` attribute on it makes
      every example carry ``num_skipped_images``).
    transform: ``(example, rng) -> example``, e.g. ``transforms.compose(...)``; must end with padded
      arrays of fixed shapes (``pad_to_size``/``pad_instances``) so examples stack.
    train: training (shuffle every epoch, repeat forever, full batches) or evaluation (one pass in
      order, last batch padded and marked by ``example_valid``).
    seed: shuffling and augmentation seed.
    shard_index, shard_count: this host's shard (``jax.process_index()``, ``jax.process_count()``).
    start_step: first batch to produce (resume after a restart).

  Returns:
    A ``grain.MapDataset`` whose item ``i`` is batch ``start_step + i`` (infinite when ``train``).
    Index it, or iterate it with :func:`iterate` / :class:`Loader` (worker processes, prefetch).
  """
  if batch_size <= 0:
    raise ValueError(f"batch_size must be > 0, got {batch_size}.")
  if not 0 <= shard_index < shard_count:
    raise ValueError(f"shard_index must be in [0, shard_count={shard_count}), got {shard_index}.")
  n = len(source)
  if n == 0:
    raise ValueError("source is empty: the split has no examples.")
  ds = grain.MapDataset.source(source)[shard_index::shard_count]
  if train:
    if len(ds) < batch_size:
      raise ValueError(f"the shard has {len(ds)} examples, fewer than batch_size={batch_size}.")
    stream = ds.shuffle(seed=seed).repeat()  # a new permutation every epoch
    ds = stream.map_with_index(_Apply(decode, transform, seed, stream=stream))
    ds = ds.batch(batch_size, drop_remainder=True)
    return ds[start_step:]
  ds = ds.map_with_index(_Apply(decode, transform, seed))
  num_batches = -(-len(ds) // batch_size)
  return grain.MapDataset.range(num_batches).map(_EvalBatch(ds, batch_size))[start_step:]


# ------------------------------------------------------------------------------------------------
# Iteration: worker processes, host prefetch, device prefetch
# ------------------------------------------------------------------------------------------------


def ensure_absl_flags_parsed() -> None:
  """grain's worker processes read absl flags: mark them parsed when no ``app.run`` did (tests,
  notebooks, library use). A no-op under ``train.py`` (``app.run`` parses them)."""
  from absl import flags  # noqa: PLC0415

  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


def _by_index(ds: Any) -> Iterator[Any]:
  """``ds[0], ds[1], ...`` until ``len(ds)`` (or ``IndexError`` for objects without ``len``)."""
  try:
    n = len(ds)
  except TypeError:
    n = None
  for i in itertools.count():
    if n is not None and i >= n:
      return
    try:
      item = ds[i]
    except IndexError:
      if n is None:
        return
      raise
    yield item


def iterate(ds: Any, *, worker_count: int = 0, prefetch: int = 2, num_threads: int = 1
            ) -> Iterator[dict[str, np.ndarray]]:
  """Iterates a dataset of batches (``make_dataset``'s) in order, with workers and prefetch.

  Args:
    ds: a ``grain.MapDataset`` of batches; any object with ``__getitem__`` also works without
      workers or prefetch.
    worker_count: grain worker processes (``mp_prefetch``); each builds whole batches and the
      result is the same batches in the same order as with 0 (spawned processes: the main module
      needs the ``if __name__ == "__main__":`` guard, and starting them takes a few seconds).
    prefetch: batches buffered ahead: per worker with workers (``per_worker_buffer_size``), else
      in ``num_threads`` background threads (grain ``ReadOptions``). 0 with no workers: in the
      calling thread, on demand.
    num_threads: threads that build batches ahead when ``worker_count == 0`` and ``prefetch > 0``.

  Returns:
    An iterator of batches; call its ``close()`` (if it has one) to stop workers early.
  """
  for name, value in (("worker_count", worker_count), ("prefetch", prefetch),
                      ("num_threads", num_threads)):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
      raise ValueError(f"{name} must be an int >= 0, got {value!r}.")
  if not isinstance(ds, grain.MapDataset):
    if worker_count:
      raise TypeError(f"worker_count > 0 needs a grain.MapDataset, got {type(ds).__name__}.")
    return _by_index(ds)
  if worker_count == 0 and (prefetch == 0 or num_threads == 0):
    return _by_index(ds)
  if worker_count == 0:
    return iter(ds.to_iter_dataset(grain.ReadOptions(num_threads=num_threads,
                                                     prefetch_buffer_size=prefetch)))
  ensure_absl_flags_parsed()
  # Inside a worker, batches are built one at a time (no extra threads); the worker's output
  # queue holds `prefetch` of them.
  it_ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=0, prefetch_buffer_size=0))
  it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=int(worker_count),
                                                         per_worker_buffer_size=max(1, prefetch)))
  return iter(it_ds)


@dataclasses.dataclass
class Loader:
  """A dataset of batches plus how to iterate it: re-iterable (one pass per ``iter``), indexable.

  ``for batch in loader`` runs :func:`iterate` with the options (a fresh pass, e.g. one evaluation,
  each time); ``loader[i]`` is batch ``i`` computed in the calling process; ``len(loader)`` is the
  number of batches (huge for training, whose dataset repeats forever).
  """
  dataset: Any
  worker_count: int = 0
  prefetch: int = 2
  num_threads: int = 1

  def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
    return iterate(self.dataset, worker_count=self.worker_count, prefetch=self.prefetch,
                   num_threads=self.num_threads)

  def __getitem__(self, i):
    return self.dataset[i]

  def __len__(self) -> int:
    return len(self.dataset)


def prefetch_to_device(iterator: Iterable[Any], size: int, put_fn: Callable[[Any], Any], *,
                       with_host: bool = False) -> Iterator[Any]:
  """Yields ``put_fn(batch)`` for each batch, with ``size`` batches already put ahead.

  JAX transfers are asynchronous, so with ``size >= 2`` the next batch travels to the devices
  while the current step runs (the idea of ``flax.jax_utils.prefetch_to_device``, for any
  ``put_fn``: ``DataParallel.put_batch`` shards over the data mesh or reshapes for pmap).
  ``size`` 0 or 1: each batch is put when it is asked for.

  Args:
    iterator: host batches, e.g. ``iter(loader)``.
    size: number of batches put ahead (memory: ``size`` batches on the devices).
    put_fn: ``host batch -> device batch``.
    with_host: yield ``(host_batch, device_batch)`` pairs (to log host-side values such as
      ``num_dropped_boxes`` without reading them back from the devices).

  Closing the generator (``.close()``, or leaving a ``with contextlib.closing(...)`` block) closes
  ``iterator`` when it has a ``close`` method, which stops grain worker processes.
  """
  if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 0:
    raise ValueError(f"prefetch_to_device: size must be an int >= 0, got {size!r}.")
  it = iter(iterator)
  queue: collections.deque = collections.deque()

  def enqueue(n: int) -> None:
    for batch in itertools.islice(it, n):
      queue.append((batch, put_fn(batch)) if with_host else put_fn(batch))

  try:
    enqueue(max(1, int(size)))
    while queue:
      yield queue.popleft()
      enqueue(1)
  finally:
    close = getattr(it, "close", None)
    if close is not None:
      close()


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
