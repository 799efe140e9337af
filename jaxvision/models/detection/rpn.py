"""Region Proposal Network: Ren, He, Girshick and Sun, "Faster R-CNN: Towards Real-Time Object
Detection with Region Proposal Networks", NeurIPS 2015 (https://arxiv.org/abs/1506.01497), and its
feature-pyramid form from Lin et al., "Feature Pyramid Networks for Object Detection", CVPR 2017.

The RPN slides a small network over a feature map (paper Sec. 3.1, Fig. 3): a 3x3 convolution + ReLU
(the "intermediate layer"), then two sibling 1x1 convolutions, a *box-regression* layer with ``4k``
outputs and a *box-classification* layer with ``2k`` objectness scores ("object" / "not object",
a two-class softmax), for the ``k`` anchors of each location. ``RPNHead`` is that network; the same
weights run on every level of a pyramid (FPN Sec. 4.1).

Anchors (Sec. 3.1.1): ``k = 9`` anchors per location (sizes 128, 256, 512 x ratios 1:2, 1:1, 2:1,
``jaxvision.ops.anchors.faster_rcnn_anchors``) on a single stride-16 map (C4 / conv5); with FPN
``k = 3`` anchors per location (3 ratios) and one size per level (32 on P2 ... 512 on P6).
``RPNConfig.anchor_sizes`` gives one tuple of sizes per level, so both are the same code.

Training labels (Sec. 3.1.2, ``rpn_targets``): an anchor is positive if its IoU with some gt box is
``>= 0.7``, or if it is the anchor with the highest IoU for some gt box (ties included;
``jaxvision.ops.matching.match(..., allow_low_quality_matches=True)``); negative if its IoU is
``< 0.3`` with every gt; the rest do not contribute. Each image contributes 256 anchors, up to
half positive, the negatives filling the rest (``jaxvision.ops.sampling.sample_balanced_mask``).
The paper also ignores anchors that cross the image boundary during training
(``ignore_cross_boundary``; off by default as in torchvision and Detectron, whose results do not
use it).

Loss (Eq. 1): ``1/N_cls sum L_cls + lambda 1/N_reg sum p* L_reg``, the classification term a
two-class log loss and the regression term smooth-L1 on the ``(tx, ty, tw, th)`` deltas of Eq. 2
(``jaxvision.ops.box_coder.encode_boxes``, weights 1) for positive anchors. The paper's
``N_reg ~ 2400`` anchor locations with ``lambda = 10`` weigh the two terms about equally and it
notes the normalization "is not required and could be simplified"; here (as in torchvision) both
sums are divided by the number of sampled anchors (``N_cls``, ``psum``-ed across devices).
Smooth-L1's ``beta`` defaults to torchvision's 1/9 (Detectron's RPN setting); the paper's is 1.

Objectness parameterizations. ``objectness="softmax"`` (the paper): ``2k`` outputs, a softmax over
(not object, object) per anchor. ``objectness="sigmoid"`` (torchvision's ``RPNHead``): ``k`` logits
and a sigmoid. A two-class softmax is a sigmoid of the logit difference, ``softmax(l0, l1)[1] =
sigmoid(l1 - l0)``, and its cross-entropy is the binary cross-entropy of that difference, so both
are reduced to one *objectness logit* per anchor (``objectness_logits``) and share the loss and the
proposal code; only the parameter count differs (the softmax's is redundant by one per anchor).
The ``2k`` channels are laid out anchor-major, ``[..., a, (not object, object)]``.

Proposals (``generate_proposals``; Sec. 3.3 and torchvision's ``RegionProposalNetwork``): decode
every anchor's deltas, take the ``pre_nms_top_n`` highest-scoring anchors (per level with FPN),
clip the boxes to the image, drop boxes smaller than ``min_size``, run NMS at IoU 0.7 (per level
with FPN: ``batched_nms`` with the level as class, so levels never suppress each other) and keep the
``post_nms_top_n`` best overall. Everything has static sizes: the outputs are ``post_nms_top_n``
boxes with a ``valid`` mask, in descending score order. Proposals are ``stop_gradient``-ed: the
RoI heads do not back-propagate into box coordinates (the "approximate joint training" of Sec. 3.2).
The paper's VGG settings were 12000 / 2000 boxes before / after NMS for training and 6000 / 300 for
testing; the defaults here are torchvision's (2000 / 2000 train, 1000 / 1000 test, per level /
per image).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxvision.losses import smooth_l1_loss
from jaxvision.models.layers.conv import Conv
from jaxvision.ops import anchors as anchor_ops
from jaxvision.ops import box_coder
from jaxvision.ops import boxes as box_ops
from jaxvision.ops import matching
from jaxvision.ops import nms as nms_ops
from jaxvision.ops import sampling

__all__ = [
    "OBJECTNESS", "RPNConfig", "RPNHead", "RPNTargets", "Proposals", "feature_strides",
    "rpn_anchors", "objectness_logits", "rpn_targets", "rpn_loss", "generate_proposals", "valid_gt",
]

OBJECTNESS = ("softmax", "sigmoid")


# ------------------------------------------------------------------------------------------------
# Configuration
# ------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RPNConfig:
  """Hyper-parameters of the RPN (hashable: usable as a static argument / module attribute).

  Attributes:
    levels: names of the feature maps the RPN runs on, finest first (``("C4",)`` for the paper's
      single map; ``("P2", ..., "P6")`` with FPN).
    anchor_sizes: one tuple of anchor sizes (pixels) per level.
    aspect_ratios: anchor ratios ``h / w``, shared by every level.
    anchor_offset: anchor centre inside its cell, in cells (0.5: the cell centre, the paper's and
      Detectron's; 0.0 with ``round_anchors``: torchvision's ``AnchorGenerator``).
    round_anchors: round the zero-centred anchor corners (torchvision).
    objectness: ``"softmax"`` (paper, ``2k`` scores) or ``"sigmoid"`` (torchvision, ``k`` logits).
    conv_features: channels of the 3x3 intermediate layer (None: the input's channels, torchvision;
      the paper's VGG-16 RPN uses 512).
    fg_iou_threshold, bg_iou_threshold: anchor labels, positive ``>= 0.7``, negative ``< 0.3``.
    allow_low_quality_matches: the best anchor of each gt is positive too (paper's second rule).
    batch_size_per_image, positive_fraction: anchors sampled per image (256) and the positive share.
    ignore_cross_boundary: training ignores anchors that are not inside the image (paper Sec. 3.3).
    pre_nms_top_n_train, pre_nms_top_n_test: best anchors kept before NMS (per level).
    post_nms_top_n_train, post_nms_top_n_test: proposals kept after NMS (per image; static output).
    nms_threshold: IoU of the proposal NMS (0.7).
    min_size: proposals with a side shorter than this (pixels) are dropped (torchvision 1e-3).
    score_threshold: proposals need ``sigmoid(objectness logit) >= score_threshold``
      (torchvision 0).
    smooth_l1_beta: smooth-L1 switch point of the box loss (torchvision 1/9; the paper 1).
    box_weights: ``BoxCoder`` weights of the anchor deltas (the paper's raw deltas: 1, 1, 1, 1).
  """
  levels: tuple[str, ...] = ("C4",)
  anchor_sizes: tuple[tuple[float, ...], ...] = (anchor_ops.FASTER_RCNN_SIZES,)
  aspect_ratios: tuple[float, ...] = anchor_ops.FASTER_RCNN_RATIOS
  anchor_offset: float = 0.5
  round_anchors: bool = False
  objectness: str = "softmax"
  conv_features: int | None = None
  fg_iou_threshold: float = 0.7
  bg_iou_threshold: float = 0.3
  allow_low_quality_matches: bool = True
  batch_size_per_image: int = 256
  positive_fraction: float = 0.5
  ignore_cross_boundary: bool = False
  pre_nms_top_n_train: int = 2000
  pre_nms_top_n_test: int = 1000
  post_nms_top_n_train: int = 2000
  post_nms_top_n_test: int = 1000
  nms_threshold: float = 0.7
  min_size: float = 1e-3
  score_threshold: float = 0.0
  smooth_l1_beta: float = 1.0 / 9.0
  box_weights: tuple[float, float, float, float] = box_coder.RPN_WEIGHTS

  def __post_init__(self):
    levels = tuple(str(v) for v in self.levels)
    sizes = tuple(tuple(float(s) for s in level) for level in self.anchor_sizes)
    object.__setattr__(self, "levels", levels)
    object.__setattr__(self, "anchor_sizes", sizes)
    object.__setattr__(self, "aspect_ratios", tuple(float(r) for r in self.aspect_ratios))
    object.__setattr__(self, "box_weights", tuple(float(w) for w in self.box_weights))
    if not levels:
      raise ValueError("RPNConfig.levels must name at least one feature map, got ().")
    if len(sizes) != len(levels):
      raise ValueError(f"RPNConfig.anchor_sizes must give one tuple of sizes per level: "
                       f"{len(levels)} levels {levels}, got {len(sizes)} ({self.anchor_sizes}).")
    if len({len(s) for s in sizes}) != 1:
      raise ValueError("RPNConfig.anchor_sizes must give the same number of sizes on every level "
                       f"(one shared head), got {self.anchor_sizes}.")
    if self.objectness not in OBJECTNESS:
      raise ValueError(f"RPNConfig.objectness must be one of {OBJECTNESS}, got "
                       f"{self.objectness!r}.")
    if not 0.0 <= self.bg_iou_threshold <= self.fg_iou_threshold <= 1.0:
      raise ValueError("RPNConfig needs 0 <= bg_iou_threshold <= fg_iou_threshold <= 1, got "
                       f"{self.bg_iou_threshold}, {self.fg_iou_threshold}.")
    for name in ("batch_size_per_image", "pre_nms_top_n_train", "pre_nms_top_n_test",
                 "post_nms_top_n_train", "post_nms_top_n_test"):
      v = getattr(self, name)
      if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v <= 0:
        raise ValueError(f"RPNConfig.{name} must be a positive int, got {v!r}.")

  @property
  def num_anchors(self) -> int:
    """``k``, anchors per location (the same on every level)."""
    return len(self.anchor_sizes[0]) * len(self.aspect_ratios)


# ------------------------------------------------------------------------------------------------
# Anchors
# ------------------------------------------------------------------------------------------------


def feature_strides(image_hw: Sequence[int], level_shapes: Sequence[Sequence[int]], *,
                    torchvision: bool = False):
  """Per-level ``(stride_y, stride_x)`` of feature maps on an ``image_hw`` input, Python ints.

  Default: the power of two nearest to ``image / map`` (convolution strides are powers of two; a
  600 x 1000 input has a 38 x 63 ``C4``, stride 16). ``torchvision=True``: torchvision's integer
  division ``image // map`` (15 in that example), for exact parity with its ``AnchorGenerator``.
  """
  image_hw = tuple(int(s) for s in image_hw)
  shapes = [tuple(int(s) for s in shape) for shape in level_shapes]
  if torchvision:
    return anchor_ops.torchvision_strides(image_hw, shapes)
  return [tuple(int(2 ** round(math.log2(i / f))) for i, f in zip(image_hw, shape))
          for shape in shapes]


def rpn_anchors(config: RPNConfig, image_hw: Sequence[int], level_shapes: Sequence[Sequence[int]]):
  """The anchors of every level, concatenated level by level (static: computed on the host).

  With the default config (one level, sizes 128/256/512, ratios 0.5/1/2, offset 0.5) this equals
  ``jaxvision.ops.anchors.faster_rcnn_anchors(feature_hw, stride=16)``. Strides come from
  ``feature_strides`` (torchvision's rule when ``config.round_anchors``, the torchvision preset).

  Args:
    config: the ``RPNConfig``.
    image_hw: static ``(H, W)`` of the (padded) network input.
    level_shapes: ``(H_l, W_l)`` of each map in ``config.levels``.

  Returns:
    ``(anchors, counts)``: float32 ``[A, 4]`` xyxy and the static per-level counts ``H_l W_l k``.
  """
  if len(level_shapes) != len(config.levels):
    raise ValueError(f"level_shapes has {len(level_shapes)} entries but RPNConfig.levels has "
                     f"{len(config.levels)} ({config.levels}).")
  strides = feature_strides(image_hw, level_shapes, torchvision=bool(config.round_anchors))
  return anchor_ops.multilevel_anchors([tuple(s) for s in level_shapes], strides,
                                       config.anchor_sizes, config.aspect_ratios,
                                       offset=float(config.anchor_offset),
                                       round_base=bool(config.round_anchors))


# ------------------------------------------------------------------------------------------------
# The head
# ------------------------------------------------------------------------------------------------


class RPNHead(nn.Module):
  """The RPN's small network, shared by every level (paper Fig. 3).

  ``3x3 conv (conv_features) + ReLU -> {1x1 conv: objectness, 1x1 conv: 4k deltas}``; weights drawn
  from N(0, 0.01^2), biases 0 (paper Sec. 3.1.3, torchvision).

  Attributes:
    num_anchors: ``k``.
    objectness: ``"softmax"`` (``2k`` scores) or ``"sigmoid"`` (``k`` logits).
    conv_features: channels of the 3x3 layer (None: the input's).
    dtype: compute dtype.

  ``__call__(features)`` takes a list of ``[B, H_l, W_l, C]`` maps (finest first; all with the same
  ``C``) and returns ``(scores, deltas)``: lists with ``[B, H_l W_l k, 2]`` (softmax) or
  ``[B, H_l W_l k]`` (sigmoid) and ``[B, H_l W_l k, 4]`` per level, rows in the anchor order of
  ``rpn_anchors`` (location-major, then the ``k`` anchors of the location).
  """
  num_anchors: int
  objectness: str = "softmax"
  conv_features: int | None = None
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, features: Sequence[jax.Array]):
    if self.objectness not in OBJECTNESS:
      raise ValueError(f"RPNHead.objectness must be one of {OBJECTNESS}, got {self.objectness!r}.")
    if not features:
      raise ValueError("RPNHead needs at least one feature map.")
    channels = {int(f.shape[-1]) for f in features}
    if len(channels) != 1:
      raise ValueError(f"RPNHead shares one head over the levels, so every map needs the same "
                       f"channels; got shapes {[tuple(f.shape) for f in features]}.")
    width = self.conv_features or channels.pop()
    init = nn.initializers.normal(0.01)
    k = self.num_anchors
    make_conv = _conv_factory(self.dtype, init)
    conv = make_conv(width, (3, 3), name="conv")
    per_anchor = 2 if self.objectness == "softmax" else 1
    cls_layer = make_conv(k * per_anchor, (1, 1), name="cls_logits")
    box_layer = make_conv(k * 4, (1, 1), name="bbox_pred")
    scores, deltas = [], []
    for f in features:
      b, h, w, _ = f.shape
      t = nn.relu(conv(f))  # (B, H, W, width)
      s = cls_layer(t).astype(jnp.float32)  # (B, H, W, k * per_anchor)
      d = box_layer(t).astype(jnp.float32)  # (B, H, W, 4k)
      if per_anchor == 2:
        scores.append(s.reshape(b, h * w * k, 2))  # (B, HWk, 2): (not object, object)
      else:
        scores.append(s.reshape(b, h * w * k))  # (B, HWk)
      deltas.append(d.reshape(b, h * w * k, 4))  # (B, HWk, 4)
    return scores, deltas


def _conv_factory(dtype, init):
  """``nn.Conv`` with the head's dtype and N(0, 0.01^2) weights, zero bias."""
  def make(features, kernel, name):
    return Conv(features, kernel, padding="SAME", dtype=dtype, kernel_init=init,
                bias_init=nn.initializers.zeros, name=name)
  return make


def objectness_logits(scores, objectness: str) -> jax.Array:
  """One objectness logit per anchor: ``l1 - l0`` of a two-class softmax (scores ``[..., 2]``,
  ``objectness="softmax"``), or the sigmoid logit itself (``"sigmoid"``).

  ``sigmoid(objectness_logits(s, ...))`` is the probability of "object" in both parameterizations.
  """
  scores = jnp.asarray(scores, jnp.float32)
  if objectness == "softmax":
    if scores.shape[-1:] != (2,):
      raise ValueError(f"softmax objectness scores must end in a (not object, object) axis of 2, "
                       f"got shape {tuple(scores.shape)}.")
    return scores[..., 1] - scores[..., 0]
  if objectness == "sigmoid":
    return scores
  raise ValueError(f"objectness must be one of {OBJECTNESS}, got {objectness!r}.")


# ------------------------------------------------------------------------------------------------
# Training targets and loss
# ------------------------------------------------------------------------------------------------


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class RPNTargets:
  """Per-anchor training targets of one image (or a batch, with a leading axis).

  Attributes:
    positive: ``[A]`` bool, sampled positive anchors.
    negative: ``[A]`` bool, sampled negative anchors.
    box_targets: ``[A, 4]`` encoded deltas of each anchor's matched gt (meaningful where positive).
    match_labels: ``[A]`` int8 labels before sampling (POSITIVE / NEGATIVE / IGNORE), for tests
      and diagnostics.
  """
  positive: jax.Array
  negative: jax.Array
  box_targets: jax.Array
  match_labels: jax.Array


def rpn_targets(key, anchors, gt_boxes, gt_valid, image_hw, config: RPNConfig) -> RPNTargets:
  """Labels, samples and regression targets of the anchors of one image (``jax.vmap`` for a batch).

  Args:
    key: PRNG key of this image's anchor sampling.
    anchors: ``[A, 4]`` xyxy anchors.
    gt_boxes: ``[G, 4]`` xyxy gt boxes (padding rows may hold anything).
    gt_valid: ``[G]`` bool. Degenerate gt boxes (a side ``<= 0``) should already be invalid
      (``valid_gt``).
    image_hw: ``[2]`` (h, w) of the real image, for ``ignore_cross_boundary``.
    config: the ``RPNConfig``.

  Returns:
    An ``RPNTargets``. With no valid gt every anchor is negative (IoU 0) and only negatives are
    sampled.
  """
  iou = box_ops.box_iou(anchors, gt_boxes)  # (A, G)
  sample_valid = None
  if config.ignore_cross_boundary:
    h, w = image_hw[0].astype(jnp.float32), image_hw[1].astype(jnp.float32)
    inside = ((anchors[:, 0] >= 0) & (anchors[:, 1] >= 0) & (anchors[:, 2] <= w)
              & (anchors[:, 3] <= h))  # (A,)
    # Outside anchors take no part: not in the per-gt best-anchor rule, never sampled.
    iou = jnp.where(inside[:, None], iou, 0.0)
    sample_valid = inside
  matched_gt, labels = matching.match(
      iou, gt_valid, thresholds=(config.bg_iou_threshold, config.fg_iou_threshold),
      labels=(matching.NEGATIVE, matching.IGNORE, matching.POSITIVE),
      allow_low_quality_matches=config.allow_low_quality_matches)
  positive, negative = sampling.sample_balanced_mask(
      key, labels.astype(jnp.int32), num_samples=config.batch_size_per_image,
      positive_fraction=config.positive_fraction, valid=sample_valid)
  if gt_boxes.shape[0] > 0:
    matched = gt_boxes[matched_gt]  # (A, 4)
  else:
    matched = jnp.zeros_like(anchors)
  box_targets = box_coder.encode_boxes(matched, anchors, config.box_weights)  # (A, 4)
  box_targets = jnp.where(positive[:, None], box_targets, 0.0)
  return RPNTargets(positive, negative, box_targets, labels)


def rpn_loss(logits, deltas, targets: RPNTargets, *, config: RPNConfig, normalizer=None):
  """The RPN loss of a batch: ``(objectness loss, box loss)``, each a sum over sampled anchors
  divided by ``normalizer`` (default: the number of sampled anchors in this batch; pass the
  ``psum`` over devices under data parallelism).

  Args:
    logits: ``[B, A]`` objectness logits (``objectness_logits``).
    deltas: ``[B, A, 4]`` predicted deltas.
    targets: batched ``RPNTargets`` (``[B, A]`` leaves).
    config: the ``RPNConfig`` (smooth-L1 beta).
    normalizer: scalar.

  Returns:
    ``(loss_objectness, loss_box)`` float32 scalars.
  """
  sampled = targets.positive | targets.negative  # (B, A)
  y = targets.positive.astype(jnp.float32)
  # Binary cross-entropy of the logit = two-class softmax cross-entropy (see module docstring).
  bce = jax.nn.softplus(logits) - y * logits  # (B, A), stable for any logit sign
  cls_sum = jnp.sum(jnp.where(sampled, bce, 0.0))
  l1 = smooth_l1_loss(deltas, targets.box_targets, beta=config.smooth_l1_beta).sum(-1)  # (B, A)
  box_sum = jnp.sum(jnp.where(targets.positive, l1, 0.0))
  if normalizer is None:
    normalizer = jnp.sum(sampled, dtype=jnp.float32)
  normalizer = jnp.maximum(jnp.asarray(normalizer, jnp.float32), 1.0)
  return cls_sum / normalizer, box_sum / normalizer


# ------------------------------------------------------------------------------------------------
# Proposals
# ------------------------------------------------------------------------------------------------


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Proposals:
  """Fixed-size proposals (one image, or a batch with a leading axis).

  Attributes:
    boxes: ``[N, 4]`` xyxy, clipped to the image; 0 in padding rows.
    scores: ``[N]`` objectness logits; ``-inf`` in padding rows.
    valid: ``[N]`` bool; rows are in descending score order, valid rows first.
  """
  boxes: jax.Array
  scores: jax.Array
  valid: jax.Array


def generate_proposals(anchors, logits, deltas, image_hw, *, level_counts: Sequence[int],
                       config: RPNConfig, train: bool) -> Proposals:
  """Proposals of one image from the RPN outputs (``jax.vmap`` over images; see module docstring).

  Args:
    anchors: ``[A, 4]`` anchors of all levels (``rpn_anchors``).
    logits: ``[A]`` objectness logits.
    deltas: ``[A, 4]`` predicted deltas.
    image_hw: ``[2]`` (h, w) of the real image: proposals are clipped to it.
    level_counts: static per-level anchor counts (their sum is ``A``).
    config: the ``RPNConfig``.
    train: use the training (or test) pre/post NMS sizes.

  Returns:
    ``Proposals`` with ``N = post_nms_top_n_{train,test}`` rows (gradient stopped).
  """
  pre_n = config.pre_nms_top_n_train if train else config.pre_nms_top_n_test
  post_n = config.post_nms_top_n_train if train else config.post_nms_top_n_test
  logits = jax.lax.stop_gradient(logits.astype(jnp.float32))
  deltas = jax.lax.stop_gradient(deltas.astype(jnp.float32))
  # Per level: the pre_n best anchors (static k = min(pre_n, count)), like torchvision's
  # _get_top_n_idx. NaN logits sort last and are dropped below.
  sel_idx, sel_level = [], []
  start = 0
  for level, count in enumerate(level_counts):
    k = min(pre_n, int(count))
    level_logits = jnp.where(jnp.isnan(logits[start:start + count]), -jnp.inf,
                             logits[start:start + count])
    _, idx = jax.lax.top_k(level_logits, k)  # (k,)
    sel_idx.append(idx + start)
    sel_level.append(jnp.full((k,), level, jnp.int32))
    start += int(count)
  idx = jnp.concatenate(sel_idx)  # (S,)
  levels = jnp.concatenate(sel_level)
  scores = logits[idx]
  boxes = box_coder.decode_boxes(deltas[idx], anchors[idx], config.box_weights)  # (S, 4)
  boxes = box_ops.clip_boxes(boxes, image_hw)
  w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
  keep = (w >= config.min_size) & (h >= config.min_size) & jnp.isfinite(scores)
  if config.score_threshold > 0:
    keep &= jax.nn.sigmoid(scores) >= config.score_threshold
  nms_scores = jnp.where(keep, scores, jnp.nan)  # NaN scores are never selected by NMS
  if len(level_counts) == 1:
    kept, valid = nms_ops.nms(boxes, nms_scores, iou_threshold=config.nms_threshold,
                              max_output_size=post_n)
  else:  # per-level NMS: the level is the "class"
    kept, valid = nms_ops.batched_nms(boxes, nms_scores, levels,
                                      iou_threshold=config.nms_threshold, max_output_size=post_n)
  safe = jnp.where(valid, kept, 0)
  out_boxes = jnp.where(valid[:, None], boxes[safe], 0.0)  # (post_n, 4)
  out_scores = jnp.where(valid, scores[safe], -jnp.inf)
  return Proposals(jax.lax.stop_gradient(out_boxes), jax.lax.stop_gradient(out_scores), valid)


def valid_gt(boxes, box_valid, is_crowd=None):
  """The gt boxes that take part in matching: ``box_valid``, both sides ``> 0``, finite, not crowd.

  Degenerate boxes (zero or negative width/height) and crowd regions would otherwise produce
  meaningless targets; they are dropped here (Faster R-CNN has no crowd handling).
  """
  w = boxes[..., 2] - boxes[..., 0]
  h = boxes[..., 3] - boxes[..., 1]
  ok = box_valid & (w > 0) & (h > 0) & jnp.all(jnp.isfinite(boxes), axis=-1)
  if is_crowd is not None:
    ok &= ~is_crowd
  return ok
