"""Shared pieces of the dense (single-shot) detectors: YOLO v1/v2, SSD, and later RetinaNet and FCOS.

Three things live here, each usable on its own:

* ``postprocess`` -- the standard inference tail of every dense detector, inside ``jit`` and
  vectorized over the batch with ``jax.vmap``::

      per image:  boxes [N, 4] (or class-specific [N, K, 4]), scores [N, K]
        1. clip the boxes to the real image (``image_hw``), drop boxes of zero width or height
        2. score threshold: a (box, class) pair is a candidate if ``score > score_threshold``
        3. top-k: the ``pre_nms_top_k`` best candidates over all (box, class) pairs (``lax.top_k``)
        4. class-aware greedy NMS (``jaxvision.ops.nms.batched_nms``) keeping at most D boxes
      -> {"boxes" [B, D, 4], "scores" [B, D], "labels" [B, D] int32 in 1..K, "valid" [B, D] bool}

  Every shape is static: the number of detections is always ``D = max_detections``, padded slots
  have ``valid`` False, label 0, score 0 and an all-zero box (DESIGN.md's padding rules).

* ``TinyBackbone`` -- a small stride-2 conv net (conv-BN-act blocks) returning a feature map per
  stride (``{"s2": ..., "s4": ..., "s8": ..., ...}``): CPU-sized detectors on the 128 x 128 shapes
  dataset train in minutes with it. Full-size configs use ``jaxvision.models.backbones``.

* ``dense_family`` -- the ``Family`` glue for a module whose outputs go through a family-specific
  loss (``loss(outputs, batch) -> (weighted sums, normalizer, stats)``) and ``decode`` (outputs ->
  boxes and per-class scores). It runs the module in training mode, ``psum``s the normalizer over
  the data axis (number of positives for SSD, number of images for YOLO), divides every weighted
  sum by it, and, for multi-scale training (YOLOv2), resizes the batch on the device to one of a
  fixed set of sizes chosen from the step (``multiscale_sizes``; see ``resize_batch``).

Conventions (DESIGN.md): boxes are xyxy in network-input pixels; labels 1..K with 0 = padding /
background; ``scores[..., k - 1]`` is the score of label ``k``.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxvision.models.family import Family
from jaxvision.models.layers import Conv, ConvNormAct
from jaxvision.ops import boxes as box_ops
from jaxvision.ops import nms as nms_ops
from jaxvision.ops._checks import check_array, check_positive_int

__all__ = [
    "postprocess", "postprocess_single", "TinyBackbone", "dense_family", "resize_batch",
    "multiscale_index", "as_dict", "check_keys", "leaky_relu", "example_valid", "num_boxes_stat",
    "as_int_pair",
]


def leaky_relu(x):
  """YOLO's leaky ReLU, slope 0.1 (Redmon et al. 2016, Eq. 2)."""
  return jnp.where(x > 0, x, 0.1 * x)


_ACTIVATIONS = {"relu": nn.relu, "leaky_relu": leaky_relu}


# ------------------------------------------------------------------------------------------------
# Post-processing
# ------------------------------------------------------------------------------------------------


def _check_postprocess_args(score_threshold, iou_threshold, pre_nms_top_k, max_detections):
  if isinstance(score_threshold, bool) or not isinstance(score_threshold, (int, float)):
    raise TypeError(f"score_threshold must be a Python float, got {score_threshold!r}.")
  if isinstance(iou_threshold, bool) or not isinstance(iou_threshold, (int, float)):
    raise TypeError(f"iou_threshold must be a Python float, got {iou_threshold!r}.")
  if not 0.0 <= iou_threshold <= 1.0:
    raise ValueError(f"iou_threshold must be in [0, 1], got {iou_threshold!r}.")
  pre_nms_top_k = check_positive_int(pre_nms_top_k, "pre_nms_top_k")
  max_detections = check_positive_int(max_detections, "max_detections")
  return float(score_threshold), float(iou_threshold), pre_nms_top_k, max_detections


def postprocess_single(boxes, scores, image_hw=None, *, score_threshold: float = 0.01,
                       iou_threshold: float = 0.45, pre_nms_top_k: int = 1000,
                       max_detections: int = 100, min_size: float = 0.0,
                       top_k_per_class: bool = False, drop_empty: bool = True):
  """Detections of one image: clip, score threshold, top-k, class-aware NMS, D fixed slots.

  Args:
    boxes: ``[N, 4]`` xyxy boxes shared by all classes (SSD, YOLO), or class-specific ``[N, K, 4]``.
    scores: ``[N, K]`` scores of the K foreground classes (probabilities, or any monotone score);
      column ``k - 1`` is label ``k``. NaN scores are never selected.
    image_hw: optional ``(h, w)`` of the real image inside the network input (the batch's
      ``image_hw``): boxes are clipped to it. ``None``: no clipping.
    score_threshold: a (box, class) pair takes part only if ``score > score_threshold``.
    iou_threshold: NMS suppresses a box whose IoU with a kept box of the same class is
      strictly greater than this.
    pre_nms_top_k: candidates kept before NMS, over all (box, class) pairs (at most ``N K``).
    max_detections: ``D``, the number of output slots.
    min_size: boxes (after clipping) with a width or height ``<= min_size`` are dropped (zero-size
      boxes are always dropped: a box clipped away entirely is not a detection).
    top_k_per_class: ``pre_nms_top_k`` candidates *per class* (torchvision's SSD: 400 per class)
      instead of over all (box, class) pairs.
    drop_empty: False keeps boxes clipped to zero size and ignores ``min_size`` (torchvision's
      SSD, for identical detections with converted weights).

  Returns:
    ``{"boxes" [D, 4], "scores" [D], "labels" int32 [D] (1..K, 0 where invalid), "valid" bool [D]}``
    in descending score order; invalid slots are all zeros.
  """
  boxes = check_array(boxes, "boxes", ndim=(2, 3), last_dim=4, kind="numeric")
  scores = check_array(scores, "scores", ndim=2, kind="float")
  n, k = scores.shape
  if boxes.shape[0] != n or (boxes.ndim == 3 and boxes.shape[1] != k):
    raise ValueError(f"boxes must be [N, 4] or [N, K, 4] for scores [N, K] = {tuple(scores.shape)}, "
                     f"got boxes shape {tuple(boxes.shape)}.")
  score_threshold, iou_threshold, pre_nms_top_k, max_detections = _check_postprocess_args(
      score_threshold, iou_threshold, pre_nms_top_k, max_detections)
  boxes = boxes.astype(jnp.float32)
  scores = scores.astype(jnp.float32)
  if image_hw is not None:
    boxes = box_ops.clip_boxes(boxes, image_hw)
  box_ok = box_ops.is_valid_box(boxes, float(min_size))  # [N] or [N, K]
  if not drop_empty:
    box_ok = jnp.ones_like(box_ok)
  if boxes.ndim == 2:
    box_ok = box_ok[:, None]
  candidate = box_ok & (scores > score_threshold) & ~jnp.isnan(scores)  # [N, K]
  if top_k_per_class:  # each class's best boxes, class by class (torchvision's SSD)
    per_class = jnp.where(candidate, scores, -jnp.inf).T  # [K, N]
    t = min(pre_nms_top_k, n)
    top_scores, box_idx = jax.lax.top_k(per_class, t)  # [K, t]
    cls = jnp.broadcast_to(jnp.arange(k, dtype=box_idx.dtype)[:, None], (k, t)).reshape(-1)
    top_scores, box_idx = top_scores.reshape(-1), box_idx.reshape(-1)
  else:
    flat = jnp.where(candidate, scores, -jnp.inf).reshape(-1)  # [N K], pair (i, c) at i K + c
    top = min(pre_nms_top_k, n * k)
    top_scores, top_idx = jax.lax.top_k(flat, top)  # [top]; ties: lower index first
    box_idx, cls = top_idx // k, top_idx % k
  top_boxes = boxes[box_idx] if boxes.ndim == 2 else boxes[box_idx, cls]  # [top, 4]
  top_ok = jnp.isfinite(top_scores)  # -inf marks a non-candidate that filled the top-k
  keep, valid = nms_ops.batched_nms(top_boxes, jnp.where(top_ok, top_scores, jnp.nan), cls,
                                    iou_threshold=iou_threshold, max_output_size=max_detections)
  safe = jnp.where(valid, keep, 0)  # -1 would wrap: mask before gathering
  out_boxes = jnp.where(valid[:, None], top_boxes[safe], 0.0)
  out_scores = jnp.where(valid, top_scores[safe], 0.0)
  out_labels = jnp.where(valid, cls[safe] + 1, 0).astype(jnp.int32)
  return {"boxes": out_boxes, "scores": out_scores, "labels": out_labels, "valid": valid}


def postprocess(boxes, scores, image_hw=None, *, score_threshold: float = 0.01,
                iou_threshold: float = 0.45, pre_nms_top_k: int = 1000, max_detections: int = 100,
                min_size: float = 0.0, top_k_per_class: bool = False, drop_empty: bool = True):
  """``postprocess_single`` vmapped over a batch: the detection output of every dense detector.

  Args:
    boxes: ``[B, N, 4]`` (or class-specific ``[B, N, K, 4]``) xyxy boxes in network-input pixels.
    scores: ``[B, N, K]`` foreground class scores (column ``k - 1`` = label ``k``).
    image_hw: optional ``[B, 2]`` (h, w) of each real image (the batch's ``image_hw``) to clip to.
    score_threshold, iou_threshold, pre_nms_top_k, max_detections, min_size, top_k_per_class,
      drop_empty: see ``postprocess_single``.

  Returns:
    ``{"boxes" [B, D, 4], "scores" [B, D], "labels" int32 [B, D], "valid" bool [B, D]}`` with
    ``D = max_detections`` (the Family contract's detection output).

  Example (a RetinaNet-style head with sigmoid scores and class-agnostic boxes)::

      boxes = jax.vmap(decode_boxes, in_axes=(0, None))(deltas, anchors)   # [B, N, 4]
      dets = postprocess(boxes, jax.nn.sigmoid(logits), batch["image_hw"],
                         score_threshold=0.05, pre_nms_top_k=1000, iou_threshold=0.5,
                         max_detections=100)
  """
  boxes = check_array(boxes, "boxes", ndim=(3, 4), last_dim=4, kind="numeric")
  scores = check_array(scores, "scores", ndim=3, kind="float")
  if boxes.shape[0] != scores.shape[0]:
    raise ValueError(f"boxes and scores must have the same batch size, got boxes "
                     f"{tuple(boxes.shape)} and scores {tuple(scores.shape)}.")
  fn = functools.partial(postprocess_single, score_threshold=score_threshold,
                         iou_threshold=iou_threshold, pre_nms_top_k=pre_nms_top_k,
                         max_detections=max_detections, min_size=min_size,
                         top_k_per_class=top_k_per_class, drop_empty=drop_empty)
  if image_hw is None:
    return jax.vmap(lambda b, s: fn(b, s, None))(boxes, scores)
  image_hw = check_array(image_hw, "image_hw", shape=(boxes.shape[0], 2), kind="numeric")
  return jax.vmap(fn)(boxes, scores, image_hw)


# ------------------------------------------------------------------------------------------------
# A CPU-sized backbone
# ------------------------------------------------------------------------------------------------


class TinyBackbone(nn.Module):
  """A small conv net for CPU-sized detectors: one stride-2 stage per entry of ``widths``.

  Stage ``i`` (``i = 1, 2, ...``) is a 3x3 stride-2 ``ConvNormAct`` followed by ``depth - 1`` 3x3
  stride-1 ones, all with ``widths[i - 1]`` channels; its output is ``"s{2**i}"`` (stride ``2**i``).
  With ``widths = (16, 32, 64, 128)`` a 128 x 128 image gives ``s2`` 64x64x16 ... ``s16`` 8x8x128
  (about 0.25 M parameters).

  Attributes:
    widths: channels per stage.
    depth: convolutions per stage (>= 1).
    norm: ``"batch"`` (BatchNorm after every conv, cross-replica with ``axis_name``) or ``None``.
    act: ``"relu"`` or ``"leaky_relu"`` (slope 0.1, YOLO's).
    axis_name: data axis for cross-replica BatchNorm (``None``: per-device statistics).
    dtype: compute dtype.

  Call: ``TinyBackbone(...)(x [B, H, W, C], train=bool) -> {"s2": [B, H/2, W/2, w_1], ...}``
  (odd sizes round up: "SAME" padding).
  """
  widths: Sequence[int] = (16, 32, 64, 128)
  depth: int = 2
  norm: str | None = "batch"
  act: str = "relu"
  axis_name: str | None = None
  bn_momentum: float = 0.9
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool):
    if self.norm not in (None, "batch"):
      raise ValueError(f"TinyBackbone.norm must be 'batch' or None, got {self.norm!r}.")
    if self.act not in _ACTIVATIONS:
      raise ValueError(f"TinyBackbone.act must be one of {sorted(_ACTIVATIONS)}, got {self.act!r}.")
    if self.depth < 1:
      raise ValueError(f"TinyBackbone.depth must be >= 1, got {self.depth!r}.")
    conv = functools.partial(Conv, dtype=self.dtype)
    norm = None
    if self.norm == "batch":
      norm = functools.partial(nn.BatchNorm, use_running_average=not train,
                               momentum=self.bn_momentum, epsilon=1e-5, axis_name=self.axis_name,
                               dtype=self.dtype)
    act = _ACTIVATIONS[self.act]
    feats = {}
    for i, width in enumerate(self.widths):
      x = ConvNormAct(width, (3, 3), strides=2, conv=conv, norm=norm, act=act,
                      name=f"stage{i + 1}_down")(x)  # (B, H / 2^(i+1), W / 2^(i+1), width)
      for j in range(1, self.depth):
        x = ConvNormAct(width, (3, 3), conv=conv, norm=norm, act=act,
                        name=f"stage{i + 1}_conv{j}")(x)
      feats[f"s{2 ** (i + 1)}"] = x
    return feats


# ------------------------------------------------------------------------------------------------
# Multi-scale training: resize a batch on the device
# ------------------------------------------------------------------------------------------------


def resize_batch(batch: Mapping[str, Any], size: Sequence[int]) -> dict[str, Any]:
  """The batch as if the data pipeline had produced ``size = (H', W')`` network inputs.

  The (already normalized) images are resized bilinearly (``jax.image.resize``, antialiased when
  shrinking) from ``(H, W)`` to ``(H', W')``; ``boxes``, ``image_hw`` and the original-image
  ``scale`` (network pixels per original pixel, DESIGN.md's batch contract) follow, so the loss sees
  a consistent batch. ``size`` is static (one compiled branch per size); other keys are kept.
  """
  image = batch["image"]
  b, h, w, c = image.shape
  nh, nw = (int(s) for s in size)
  if (nh, nw) == (h, w):
    return dict(batch)
  sy, sx = nh / h, nw / w
  out = dict(batch)
  out["image"] = jax.image.resize(image, (b, nh, nw, c), method="bilinear").astype(image.dtype)
  if "boxes" in batch:
    out["boxes"] = batch["boxes"] * jnp.asarray([sx, sy, sx, sy], batch["boxes"].dtype)
  if "image_hw" in batch:
    hw = batch["image_hw"].astype(jnp.float32) * jnp.asarray([sy, sx], jnp.float32)
    out["image_hw"] = jnp.round(hw).astype(batch["image_hw"].dtype)
  if "scale" in batch and sy == sx:
    out["scale"] = batch["scale"] * sy
  return out


def multiscale_index(step, num_sizes: int, *, every: int = 10, seed: int = 0):
  """Index of the training size for ``step``: a new uniform draw every ``every`` steps.

  YOLOv2 (Redmon & Farhadi 2017, Sec. 2 "Multi-Scale Training"): "every 10 batches our network
  randomly chooses a new image dimension size". The key is derived from ``(seed, step // every)``
  only -- never from the device -- so every device (and every host) picks the same size, which
  the collectives inside the chosen branch (cross-replica BatchNorm) require.
  """
  if step is None:
    return jnp.int32(0)
  key = jax.random.fold_in(jax.random.PRNGKey(seed), jnp.asarray(step, jnp.int32) // every)
  return jax.random.randint(key, (), 0, num_sizes)


# ------------------------------------------------------------------------------------------------
# Family glue
# ------------------------------------------------------------------------------------------------


def as_dict(config: Any) -> dict[str, Any]:
  """A model config section (``ml_collections.ConfigDict``, dict or None) as a plain dict."""
  if config is None:
    return {}
  if hasattr(config, "to_dict"):
    return dict(config.to_dict())
  if isinstance(config, Mapping):
    return dict(config)
  raise TypeError(f"model_config must be an ml_collections.ConfigDict or a dict, got "
                  f"{type(config).__name__}.")


def check_keys(cfg: Mapping[str, Any], known: Sequence[str], family: str) -> None:
  """Raises ``ValueError`` naming the unknown ``config.model`` keys and listing the known ones."""
  unknown = sorted(set(cfg) - set(known) - {"name"})
  if unknown:
    raise ValueError(f"unknown {family} model config keys {unknown}; known keys: "
                     f"{sorted(set(known) | {'name'})}.")


def dense_family(module: nn.Module, *, num_classes: int, loss: Callable, decode: Callable,
                 postprocess_kwargs: Mapping[str, Any], multiscale_sizes: Sequence = (),
                 multiscale_every: int = 10, multiscale_seed: int = 0) -> Family:
  """A detection ``Family`` for a single-shot detector.

  Args:
    module: ``module.apply(variables, image, train=...) -> outputs`` (any pytree).
    num_classes: K foreground classes.
    loss: ``loss(outputs, batch, step) -> (sums, normalizer, stats)``, all local to this device:
      ``sums`` maps term names to weighted loss sums (the total is their sum), ``normalizer`` is the
      scalar they are divided by once ``psum``-ed over the data axis (number of positives, number of
      images), ``stats`` maps names to additive counts that are logged (e.g. ``num_positives``).
    decode: ``decode(outputs, image_hw_static) -> (boxes [B, N, 4] or [B, N, K, 4], scores
      [B, N, K])`` with ``image_hw_static`` the network input's ``(H, W)`` as Python ints.
    postprocess_kwargs: ``postprocess``'s keyword arguments (thresholds, ``max_detections``...).
    multiscale_sizes: optional ``(H, W)`` training sizes. When given, every step resizes the batch
      (``resize_batch``) to the size ``multiscale_index(step)`` picks. The sizes are branches of one
      ``lax.switch``: the train step is compiled once, with one branch per size, and runs only the
      chosen one; the module and loss must work at every size (fully convolutional). On XLA:CPU
      the convolutions inside the switch measured ~8x slower than outside it; prefer it on
      accelerators.
    multiscale_every, multiscale_seed: see ``multiscale_index``.

  ``train_loss(...) = sum(sums) / max(psum(normalizer), 1)``, each term logged as
  ``term / max(psum(normalizer), 1)`` (so the terms add up to the loss) and the stats as local counts
  (the trainer sums them over devices). Padding examples (``example_valid`` False) must be handled
  by ``loss`` (they have no boxes). The family's ``loss(outputs, batch, *, normalizer=None,
  step=None) -> (total, terms)``, ``loss_normalizer(outputs, batch)`` and ``postprocess(outputs,
  input_hw, image_hw=None)`` expose the same pieces on module outputs.
  """
  sizes = tuple(tuple(int(v) for v in s) for s in multiscale_sizes)

  def run(variables, rng, step, batch):
    outputs, mutated = module.apply(variables, batch["image"], train=True, mutable=["batch_stats"],
                                    rngs={"dropout": rng})
    sums, normalizer, stats = loss(outputs, batch, step)
    return sums, jnp.asarray(normalizer, jnp.float32), stats, dict(mutated)

  def train_loss(variables, batch, *, rng, step=None, axis_name=None):
    if len(sizes) > 1:
      branches = [functools.partial(lambda s, b: run(variables, rng, step, resize_batch(b, s)), s)
                  for s in sizes]
      idx = multiscale_index(step, len(sizes), every=multiscale_every, seed=multiscale_seed)
      sums, normalizer, stats, mutated = jax.lax.switch(idx, branches, dict(batch))
    elif len(sizes) == 1:
      sums, normalizer, stats, mutated = run(variables, rng, step, resize_batch(batch, sizes[0]))
    else:
      sums, normalizer, stats, mutated = run(variables, rng, step, batch)
    if axis_name is not None:
      normalizer = jax.lax.psum(normalizer, axis_name)
    denom = jnp.maximum(normalizer, 1.0)
    terms = {k: v / denom for k, v in sums.items()}
    total = functools.reduce(jnp.add, terms.values())
    return total, {**terms, **stats}, mutated

  def predict(variables, batch):
    image = batch["image"]
    outputs = module.apply(variables, image, train=False)
    boxes, scores = decode(outputs, (int(image.shape[1]), int(image.shape[2])))
    return postprocess(boxes, scores, batch.get("image_hw"), **postprocess_kwargs)

  def init(rng, batch):
    return module.init({"params": rng, "dropout": rng}, batch["image"], train=False)

  def family_loss(outputs, batch, *, normalizer=None, step=None):
    """``(total, terms)`` on module outputs; ``normalizer`` defaults to this batch's own."""
    sums, local, stats = loss(outputs, batch, step)
    denom = jnp.maximum(local if normalizer is None else normalizer, 1.0)
    terms = {k: v / denom for k, v in sums.items()}
    return functools.reduce(jnp.add, terms.values()), {**terms, **stats}

  def loss_normalizer(outputs, batch):
    return jnp.asarray(loss(outputs, batch, None)[1], jnp.float32)

  def family_postprocess(outputs, input_hw, image_hw=None):
    """Detections from module outputs; ``input_hw`` is the network input's static ``(H, W)``,
    ``image_hw`` the optional ``[B, 2]`` real image sizes to clip to."""
    boxes, scores = decode(outputs, tuple(int(v) for v in input_hw))
    return postprocess(boxes, scores, image_hw, **postprocess_kwargs)

  return Family(module=module, task="detection", train_loss=train_loss, predict=predict, init=init,
                loss=family_loss, loss_normalizer=loss_normalizer, postprocess=family_postprocess,
                num_classes=num_classes)


def example_valid(batch: Mapping[str, Any]):
  """``[B]`` float32: 1 for real examples, 0 for padding (``example_valid`` missing: all real)."""
  b = batch["image"].shape[0]
  if "example_valid" in batch:
    return batch["example_valid"].astype(jnp.float32)
  return jnp.ones((b,), jnp.float32)


def num_boxes_stat(batch: Mapping[str, Any]):
  """The number of valid ground-truth boxes in the batch (a logged stat)."""
  return jnp.sum(batch["box_valid"].astype(jnp.float32))


def as_int_pair(x, name: str) -> tuple[int, int]:
  """``x`` (an int or a pair) as ``(h, w)`` Python ints."""
  if isinstance(x, (int, np.integer)) and not isinstance(x, bool):
    return int(x), int(x)
  if isinstance(x, (tuple, list)) and len(x) == 2:
    return check_positive_int(x[0], f"{name}[0]"), check_positive_int(x[1], f"{name}[1]")
  raise TypeError(f"{name} must be an int or a pair (h, w), got {x!r}.")
