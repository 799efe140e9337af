"""RetinaNet: Lin, Goyal, Girshick, He and Dollár, "Focal Loss for Dense Object Detection",
ICCV 2017 (https://arxiv.org/abs/1708.02002).

A one-stage detector: a ResNet backbone, a feature pyramid (FPN, Lin et al. CVPR 2017) on
``P3..P7`` with 256 channels, and two small fully convolutional subnets applied to every pyramid
level with *shared* weights (paper Sec. 4, Fig. 3):

* **class subnet**: four 3x3 convolutions with 256 channels, each followed by ReLU, then a 3x3
  convolution to ``K A`` outputs and a sigmoid: one binary classifier per (anchor, class);
* **box subnet**: the same tower (separate weights), then ``4 A`` outputs: the R-CNN deltas
  ``(dx, dy, dw, dh)`` of every anchor (``jaxvision.ops.box_coder.encode_boxes``, weights 1).

Anchors (Sec. 4 "Anchors"): on level ``P_l`` (stride ``2^l``) areas ``(4 * 2^l)^2`` (32^2 on P3 up
to 512^2 on P7), at three octave scales ``2^0, 2^(1/3), 2^(2/3)`` and three aspect ratios
``1:2, 1:1, 2:1``: ``A = 9`` anchors per location, centred on the feature cells. ``anchor_scale``
(paper: 4) and the levels are configuration, because small images (the 128 px shapes dataset) need
smaller anchors and fewer levels.

Training targets (Sec. 4 "Anchors"): each anchor is matched to the ground-truth box of highest IoU;
IoU >= 0.5 is foreground, IoU < 0.4 background, in between ignored. As torchvision (and
detectron2's default), every gt also claims the anchors with its highest IoU even below 0.5
(``allow_low_quality_matches``; ``jaxvision.ops.matching.RETINANET_MATCHER``).

Loss (Sec. 3 and 4 "Training"): the sigmoid focal loss

  FL(p_t) = -alpha_t (1 - p_t)^gamma log(p_t),  alpha = 0.25, gamma = 2,

summed over all non-ignored anchors and all ``K`` classes (background anchors have all-zero
targets) and divided by the number of foreground anchors (``psum``-ed over devices, at least 1);
plus a smooth-L1 loss on the encoded deltas of the foreground anchors, divided by the same number.
``cls_loss`` selects the classification loss for the paper's Table 1 comparison:

* ``"focal"``: the focal loss above (``focal_alpha``, ``focal_gamma``);
* ``"bce"``: plain binary cross-entropy (``gamma = 0``, no alpha weighting) over all non-ignored
  anchors, still with the prior-probability bias init (Sec. 3.3: it improves training stability
  for cross-entropy too);
* ``"bce_ohem"``: binary cross-entropy on the positives plus, per image, the ``ohem_neg_pos_ratio``
  (3) x #positives negatives with the highest loss (OHEM with a 1:3 ratio, Table 1d; the
  paper's OHEM also applies NMS to the anchors before picking them by loss, not done here).

Initialization (Sec. 4 "Initialization"): every new conv layer of the subnets has Gaussian weights
(sigma = 0.01) and bias 0, except the last layer of the class subnet, whose bias is
``b = -log((1 - pi) / pi)`` with ``pi = 0.01`` (``prior_bias``): at the start every anchor predicts
foreground with probability ~0.01, so the many background anchors do not swamp the loss.

Inference (Sec. 4 "Inference"): on each level, the (anchor, class) scores above 0.05 are kept, at
most the top 1000 per level; their boxes are decoded, clipped to the image, and class-aware NMS at
IoU 0.5 merges the levels; the top ``D = 100`` detections are returned, padded to a fixed size with
``valid``. Everything has static shapes and runs per image under ``jax.vmap``.

Differences from the paper (all noted where they occur): anchors are computed from the feature
maps' actual sizes (``ceil``-ed by the strided convolutions) at strides ``2^l``; the smooth-L1
``beta`` defaults to 0.11 (the paper's Detectron code; the paper only says "smooth L1"); crowd boxes
are dropped from the ground truth (torchvision does the same for COCO); no GroupNorm in the heads
unless ``head_norm="group"`` (torchvision's v2 model).

Structure (STYLE.md: compose, don't subclass): ``RetinaNetHead`` (the two subnets),
``RetinaNet`` (backbone -> neck -> head), and the pure functions ``retinanet_anchors_for``,
``assign_targets``, ``retinanet_loss``, ``postprocess``; ``make_retinanet`` bundles them as a
``Family`` (``MODELS["retinanet"]``). FCOS (``fcos.py``) reuses the head tower, the classification
loss, ``dense_detections`` (per-level top-k + class-aware NMS; ``dense_common.postprocess`` does a
single top-k over all levels, which is not RetinaNet's rule) and the family glue helpers.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxvision.losses import sigmoid_focal_loss, smooth_l1_loss
from jaxvision.models.detection import dense_common
from jaxvision.models.family import Family
from jaxvision.models.layers import Conv, ConvNormAct
from jaxvision.ops import anchors as anchor_ops
from jaxvision.ops import box_coder
from jaxvision.ops import boxes as box_ops
from jaxvision.ops import matching
from jaxvision.ops import nms as nms_ops

__all__ = [
    "CLS_LOSSES", "BOX_LOSSES", "prior_bias", "HeadTower", "RetinaNetHead", "RetinaNet",
    "level_names", "level_stride", "flatten_levels", "retinanet_anchors_for", "assign_targets",
    "hard_negative_mask", "classification_loss", "retinanet_loss", "dense_detections",
    "postprocess", "make_retinanet",
]

CLS_LOSSES = ("focal", "bce", "bce_ohem")
ANCHOR_STYLES = ("paper", "torchvision")
BOX_LOSSES = ("smooth_l1", "l1")
HEAD_NORMS = (None, "group")

# Paper Sec. 4 "Initialization": Gaussian weight fill with sigma = 0.01, bias 0.
head_kernel_init = nn.initializers.normal(stddev=0.01)


def prior_bias(prior_prob: float) -> float:
  """The class subnet's final bias ``b = -log((1 - pi) / pi)``, so ``sigmoid(b) = pi``.

  ``prior_bias(0.01) = -4.595...``: every anchor starts as foreground with probability 0.01.
  """
  if not (isinstance(prior_prob, (int, float)) and 0.0 < prior_prob < 1.0):
    raise ValueError(f"prior_prob must be a float in (0, 1), got {prior_prob!r}.")
  return -math.log((1.0 - prior_prob) / prior_prob)


# ------------------------------------------------------------------------------------------------
# Levels
# ------------------------------------------------------------------------------------------------


def level_names(features: Mapping[str, Any]) -> list[str]:
  """Pyramid level names (``"P3"``, ...) of a feature dict, finest first."""
  names = [n for n in features if isinstance(n, str) and n[:1] == "P" and n[1:].isdigit()]
  if not names:
    raise ValueError(f"expected pyramid levels named 'P3', 'P4', ..., got keys {sorted(features)}.")
  return sorted(names, key=lambda n: int(n[1:]))


def level_stride(name: str) -> int:
  """Stride ``2^l`` of pyramid level ``"P<l>"``."""
  return 2 ** int(name[1:])


def flatten_levels(per_level: Mapping[str, Mapping[str, jax.Array]], key: str,
                   last: int) -> jax.Array:
  """``[B, H_l, W_l, A * last]`` per level -> ``[B, sum_l H_l W_l A, last]`` (level by level).

  Row ``(i * W + j) * A + a`` of a level is anchor ``a`` of cell ``(i, j)``: the order of
  ``jaxvision.ops.anchors.grid_anchors``.
  """
  out = []
  for name in level_names(per_level):
    x = per_level[name][key]
    b = x.shape[0]
    out.append(x.reshape(b, -1, last))  # (B, H W A, last)
  return jnp.concatenate(out, axis=1)


# ------------------------------------------------------------------------------------------------
# Heads
# ------------------------------------------------------------------------------------------------


def _group_norm(features: int, dtype, epsilon: float = 1e-6):
  # GroupNorm with 32 groups (Wu & He 2018) when the width allows it, else the largest divisor.
  groups = math.gcd(32, features)
  return functools.partial(nn.GroupNorm, num_groups=groups, epsilon=epsilon, dtype=dtype)


class HeadTower(nn.Module):
  """``num_convs`` x (3x3 conv ``features`` -> [GroupNorm] -> ReLU), Gaussian(0.01) init, bias 0.

  ``norm_epsilon``: GroupNorm's epsilon (Flax's 1e-6; PyTorch's, for converted weights, 1e-5)."""
  features: int = 256
  num_convs: int = 4
  norm: str | None = None
  dtype: Any = jnp.float32
  norm_epsilon: float = 1e-6

  @nn.compact
  def __call__(self, x):
    if self.norm not in HEAD_NORMS:
      raise ValueError(f"head norm must be one of {HEAD_NORMS}, got {self.norm!r}.")
    conv = functools.partial(Conv, kernel_init=head_kernel_init,
                             bias_init=nn.initializers.zeros, dtype=self.dtype)
    norm = (_group_norm(self.features, self.dtype, self.norm_epsilon) if self.norm == "group"
            else None)
    for i in range(self.num_convs):
      x = ConvNormAct(self.features, (3, 3), conv=conv, norm=norm, act=nn.relu,
                      use_bias=True, name=f"conv{i}")(x)  # (B, H, W, features)
    return x


class RetinaNetHead(nn.Module):
  """The class and box subnets, shared over the pyramid levels (paper Fig. 3 (c), (d)).

  ``__call__(features)`` takes ``{"P3": [B, H3, W3, C], ...}`` and returns, per level,
  ``{"cls_logits": [B, H, W, A K], "bbox_deltas": [B, H, W, A 4]}``.
  """
  num_classes: int
  num_anchors: int = 9
  features: int = 256
  num_convs: int = 4
  prior_prob: float = 0.01
  norm: str | None = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, features: Mapping[str, jax.Array]) -> dict[str, dict[str, jax.Array]]:
    k, a = self.num_classes, self.num_anchors
    tower = functools.partial(HeadTower, self.features, self.num_convs, self.norm, self.dtype)
    cls_tower, box_tower = tower(name="cls_subnet"), tower(name="box_subnet")
    cls_out = Conv(a * k, (3, 3), kernel_init=head_kernel_init,
                   bias_init=nn.initializers.constant(prior_bias(self.prior_prob)),
                   dtype=self.dtype, name="cls_logits")
    box_out = Conv(a * 4, (3, 3), kernel_init=head_kernel_init,
                   bias_init=nn.initializers.zeros, dtype=self.dtype, name="bbox_deltas")
    out = {}
    for name in level_names(features):  # the same modules (weights) on every level
      x = features[name]
      out[name] = {"cls_logits": cls_out(cls_tower(x)).astype(jnp.float32),  # (B, H, W, A K)
                   "bbox_deltas": box_out(box_tower(x)).astype(jnp.float32)}  # (B, H, W, A 4)
    return out


class RetinaNet(nn.Module):
  """``head(neck(backbone(images)))``; returns the head's per-level outputs.

  ``backbone(images, train=...)`` returns a feature dict (ResNet: ``C2..C5``),
  ``neck(features, train=...)`` (FPN) the pyramid ``{"P3": ..., ...}``, ``head`` the per-level
  predictions. Any modules with these signatures work (tests use tiny ones).
  """
  backbone: nn.Module
  neck: nn.Module
  head: nn.Module

  @nn.compact
  def __call__(self, images, train: bool = False):
    feats = self.backbone(images, train=train)
    pyramid = self.neck(feats, train=train)
    return self.head(pyramid)


# ------------------------------------------------------------------------------------------------
# Anchors and targets
# ------------------------------------------------------------------------------------------------


def anchor_sizes(strides: Sequence[int], anchor_scale: float = 4.0,
                 num_scales: int = 3) -> tuple[tuple[float, ...], ...]:
  """Per level ``anchor_scale * stride * 2^(i / num_scales)``, ``i < num_scales`` (paper: 4, 3)."""
  return tuple(tuple(anchor_scale * s * 2.0 ** (i / num_scales) for i in range(num_scales))
               for s in strides)


def retinanet_anchors_for(level_shapes: Mapping[str, tuple[int, int]], *, anchor_scale: float = 4.0,
                          num_scales: int = 3,
                          aspect_ratios: Sequence[float] = anchor_ops.FASTER_RCNN_RATIOS,
                          style: str = "paper", image_size: Sequence[int] | None = None):
  """Anchors of every level, concatenated finest first, in the heads' output order.

  Args:
    level_shapes: ``{"P3": (H3, W3), ...}`` feature map sizes (static Python ints).
    anchor_scale, num_scales, aspect_ratios: anchor sizes ``anchor_scale * 2^l * 2^(i/num_scales)``
      on ``P_l``, ratios ``h / w``. The defaults are the paper's (equal to
      ``jaxvision.ops.anchors.retinanet_anchors``): centres at cell centres, size-major order.
    style: ``"paper"`` (the above) or ``"torchvision"``: ``retinanet_resnet50_fpn``'s
      ``AnchorGenerator``, for converted weights: sizes ``int(anchor_scale * 2^l * 2^(i /
      num_scales))`` (32, 40, 50 on P3), ratio-major order, rounded zero-centred corners placed at
      the cell's top-left corner, strides ``image_size // (H_l, W_l)`` (integer division).
    image_size: static ``(H, W)`` of the network input, for the torchvision strides (None: the
      finest level's size times its stride).

  Returns:
    ``(anchors float32 [N, 4], counts)`` with the per-level anchor counts ``H_l W_l A``.
  """
  names = level_names(level_shapes)
  strides = [level_stride(n) for n in names]
  sizes = anchor_sizes(strides, anchor_scale, num_scales)
  if style == "torchvision":
    shapes = [tuple(int(v) for v in level_shapes[n]) for n in names]
    if image_size is None:
      image_size = (shapes[0][0] * strides[0], shapes[0][1] * strides[0])
    sizes = tuple(tuple(float(int(s)) for s in level) for level in sizes)
    return anchor_ops.multilevel_anchors(
        shapes, anchor_ops.torchvision_strides(tuple(int(v) for v in image_size), shapes), sizes,
        tuple(aspect_ratios), offset=0.0, round_base=True, order="ratio_major")
  if style != "paper":
    raise ValueError(f"anchor style must be one of {ANCHOR_STYLES}, got {style!r}.")
  return anchor_ops.multilevel_anchors([tuple(level_shapes[n]) for n in names], strides, sizes,
                                       tuple(aspect_ratios), offset=0.5, order="size_major")


def assign_targets(anchors, gt_boxes, gt_labels, gt_valid, *,
                   matcher: matching.Matcher = matching.RETINANET_MATCHER,
                   box_weights: Sequence[float] = box_coder.RPN_WEIGHTS):
  """RetinaNet training targets of one image (``jax.vmap`` for a batch).

  Args:
    anchors: ``[N, 4]`` xyxy anchors.
    gt_boxes: ``[M, 4]`` xyxy ground truth (padding rows may hold anything).
    gt_labels: ``[M]`` int labels in ``1..K`` (0 = padding).
    gt_valid: ``[M]`` bool.
    matcher: IoU thresholds (default: >= 0.5 positive, < 0.4 negative, low-quality matches on).
    box_weights: ``encode_boxes`` weights (RetinaNet: 1, 1, 1, 1).

  Returns:
    dict with ``labels`` int32 ``[N]`` (class ``1..K`` of a positive anchor, 0 background,
    -1 ignored), ``positive`` bool ``[N]``, ``box_targets`` float32 ``[N, 4]`` encoded deltas of
    the matched gt (meaningful where ``positive``; finite everywhere), ``matched_gt`` int32 ``[N]``.
  """
  gt_valid = gt_valid & (gt_labels > 0)
  matched_gt, match_labels = matcher.match_boxes(anchors, gt_boxes, gt_valid)  # (N,), (N,)
  positive = match_labels == matching.POSITIVE
  labels = jnp.where(positive, gt_labels[matched_gt].astype(jnp.int32),
                     jnp.where(match_labels == matching.NEGATIVE, 0, -1)).astype(jnp.int32)
  box_targets = box_coder.encode_boxes(gt_boxes[matched_gt], anchors, box_weights)  # (N, 4)
  box_targets = jnp.where(positive[:, None], box_targets, 0.0)
  return {"labels": labels, "positive": positive, "box_targets": box_targets,
          "matched_gt": matched_gt}


# ------------------------------------------------------------------------------------------------
# Losses
# ------------------------------------------------------------------------------------------------


def hard_negative_mask(neg_loss, negative, num_keep):
  """OHEM: per row, the ``num_keep`` negatives with the highest loss (static shapes).

  Args:
    neg_loss: ``[B, N]`` loss per anchor.
    negative: ``[B, N]`` bool, the anchors that may be selected.
    num_keep: ``[B]`` int, how many to keep per row.

  Returns:
    bool ``[B, N]``, True for the selected negatives (ties: lower index first). No gradient flows
    through the selection.
  """
  score = jnp.where(negative, jax.lax.stop_gradient(neg_loss), -jnp.inf)
  order = jnp.argsort(-score, axis=-1, stable=True)  # (B, N) anchors by descending loss
  rank = jnp.argsort(order, axis=-1, stable=True)  # (B, N) position of each anchor in that order
  return negative & (rank < num_keep[:, None])


def classification_loss(cls_logits, labels, *, cls_loss: str = "focal", alpha: float | None = 0.25,
                        gamma: float = 2.0, neg_pos_ratio: float = 3.0):
  """Summed classification loss of a batch of dense predictions (not yet normalized).

  Args:
    cls_logits: ``[B, N, K]`` logits.
    labels: ``[B, N]`` int, ``1..K`` foreground, 0 background, -1 ignored.
    cls_loss: ``"focal"``, ``"bce"`` or ``"bce_ohem"`` (see the module docstring).
    alpha, gamma: the focal loss's parameters (``"focal"`` only).
    neg_pos_ratio: negatives kept per positive (``"bce_ohem"`` only).

  Returns:
    ``(total, per_anchor)``: the scalar sum over the selected (anchor, class) pairs and the
    ``[B, N]`` per-anchor loss (0 for anchors that do not count).
  """
  if cls_loss not in CLS_LOSSES:
    raise ValueError(f"cls_loss must be one of {CLS_LOSSES}, got {cls_loss!r}.")
  k = cls_logits.shape[-1]
  targets = jax.nn.one_hot(labels - 1, k, dtype=cls_logits.dtype)  # (B, N, K); rows of 0/-1: zeros
  if cls_loss == "focal":
    per = sigmoid_focal_loss(cls_logits, targets, alpha=alpha, gamma=gamma)
  else:
    per = sigmoid_focal_loss(cls_logits, targets, alpha=None, gamma=0.0)  # binary cross-entropy
  per_anchor = jnp.sum(per, axis=-1)  # (B, N)
  counted = labels >= 0
  if cls_loss == "bce_ohem":
    positive = labels > 0
    num_keep = jnp.floor(neg_pos_ratio * jnp.sum(positive, axis=-1)).astype(jnp.int32)  # (B,)
    counted = positive | hard_negative_mask(per_anchor, labels == 0, num_keep)
  per_anchor = jnp.where(counted, per_anchor, 0.0)
  return jnp.sum(per_anchor), per_anchor


def retinanet_loss(outputs, targets, *, normalizer, cls_loss: str = "focal",
                   alpha: float | None = 0.25, gamma: float = 2.0, neg_pos_ratio: float = 3.0,
                   box_loss: str = "smooth_l1", beta: float = 0.11, box_loss_weight: float = 1.0):
  """``(total, terms)`` of a batch: (classification sum + box sum) / ``max(normalizer, 1)``.

  Args:
    outputs: ``{"cls_logits": [B, N, K], "bbox_deltas": [B, N, 4]}`` (flattened over levels).
    targets: ``assign_targets`` output, batched: ``labels`` ``[B, N]``, ``positive``,
      ``box_targets``.
    normalizer: the number of positive anchors (global, already ``psum``-ed).
    cls_loss, alpha, gamma, neg_pos_ratio: see ``classification_loss``.
    box_loss: ``"smooth_l1"`` (``beta``) or ``"l1"`` (torchvision).
    box_loss_weight: weight of the box term.
  """
  if box_loss not in BOX_LOSSES:
    raise ValueError(f"box_loss must be one of {BOX_LOSSES}, got {box_loss!r}.")
  norm = jnp.maximum(jnp.asarray(normalizer, jnp.float32), 1.0)
  cls_sum, _ = classification_loss(outputs["cls_logits"], targets["labels"], cls_loss=cls_loss,
                                   alpha=alpha, gamma=gamma, neg_pos_ratio=neg_pos_ratio)
  reg = smooth_l1_loss(outputs["bbox_deltas"], targets["box_targets"],
                       beta=0.0 if box_loss == "l1" else beta)  # (B, N, 4)
  box_sum = jnp.sum(jnp.where(targets["positive"][..., None], reg, 0.0))
  cls_term = cls_sum / norm
  box_term = box_loss_weight * box_sum / norm
  return cls_term + box_term, {"cls_loss": cls_term, "box_loss": box_term}


# ------------------------------------------------------------------------------------------------
# Post-processing (shared with FCOS)
# ------------------------------------------------------------------------------------------------


def dense_detections(scores, candidate, decode_fn: Callable[[jax.Array], jax.Array],
                     level_counts: Sequence[int], image_hw, *, topk_per_level: int = 1000,
                     nms_threshold: float = 0.5, max_detections: int = 100,
                     drop_empty: bool = True):
  """Per-level top-k, decoding, clipping and class-aware NMS for one image (static shapes).

  Args:
    scores: ``[N, K]`` final detection scores of every (location/anchor, class).
    candidate: ``[N, K]`` bool, the pairs that pass the score threshold.
    decode_fn: ``location indices int32 [k] -> xyxy boxes [k, 4]``; called once on the selected
      locations of all levels (decoding only what survives the top-k).
    level_counts: static per-level numbers of rows of ``scores`` (finest first).
    image_hw: ``(h, w)`` of the real image inside the padded input; boxes are clipped to it.
    topk_per_level: at most this many candidates per level (paper: 1000).
    nms_threshold: class-aware NMS IoU threshold (RetinaNet 0.5, FCOS 0.6).
    max_detections: ``D``.
    drop_empty: drop boxes clipped to zero width or height (False: keep them, as torchvision's
      RetinaNet and FCOS do, for identical outputs with converted weights).

  Returns:
    ``{"boxes" [D, 4], "scores" [D], "labels" [D] int32 in 1..K, "valid" [D] bool}``, sorted by
    descending score; invalid slots are zeros.
  """
  n, k = scores.shape
  if sum(level_counts) != n:
    raise ValueError(f"level_counts {tuple(level_counts)} sum to {sum(level_counts)}, but scores "
                     f"has {n} rows.")
  sel_scores, sel_loc, sel_cls = [], [], []
  start = 0
  for count in level_counts:  # static Python loop over the few levels
    s = scores[start:start + count].reshape(-1)  # (count K,)
    c = candidate[start:start + count].reshape(-1)
    s = jnp.where(c, s, -jnp.inf)
    top, idx = jax.lax.top_k(s, min(topk_per_level, count * k))  # (t,)
    sel_scores.append(jnp.where(jnp.isfinite(top), top, jnp.nan))  # NaN: never selected by NMS
    sel_loc.append(start + idx // k)
    sel_cls.append(idx % k + 1)
    start += count
  cand_scores = jnp.concatenate(sel_scores)  # (T,)
  loc = jnp.concatenate(sel_loc).astype(jnp.int32)
  cls = jnp.concatenate(sel_cls).astype(jnp.int32)
  boxes = box_ops.clip_boxes(decode_fn(loc), image_hw)  # (T, 4)
  if drop_empty:  # a box clipped away entirely (zero width or height) is not a detection
    cand_scores = jnp.where(box_ops.is_valid_box(boxes), cand_scores, jnp.nan)
  keep, valid = nms_ops.batched_nms(boxes, cand_scores, cls, iou_threshold=nms_threshold,
                                    max_output_size=max_detections)  # (D,), (D,)
  safe = jnp.where(valid, keep, 0)
  return {"boxes": jnp.where(valid[:, None], boxes[safe], 0.0),
          "scores": jnp.where(valid, cand_scores[safe], 0.0),
          "labels": jnp.where(valid, cls[safe], 0),
          "valid": valid}


def postprocess(outputs, anchors, level_counts, image_hw, *, score_threshold: float = 0.05,
                topk_per_level: int = 1000, nms_threshold: float = 0.5, max_detections: int = 100,
                box_weights: Sequence[float] = box_coder.RPN_WEIGHTS, drop_empty: bool = True):
  """RetinaNet detections of a batch: sigmoid scores > threshold, then ``dense_detections``.

  Args:
    outputs: ``{"cls_logits": [B, N, K], "bbox_deltas": [B, N, 4]}``.
    anchors: ``[N, 4]``; level_counts: per-level anchor counts.
    image_hw: ``[B, 2]`` real image sizes (boxes are clipped to them).
    drop_empty: see ``dense_detections``.

  Returns:
    ``{"boxes" [B, D, 4], "scores" [B, D], "labels" [B, D], "valid" [B, D]}``.
  """
  def one(logits, deltas, hw):
    scores = jax.nn.sigmoid(logits)  # (N, K)
    decode = lambda loc: box_coder.decode_boxes(deltas[loc], anchors[loc], box_weights)
    return dense_detections(scores, scores > score_threshold, decode, level_counts, hw,
                            topk_per_level=topk_per_level, nms_threshold=nms_threshold,
                            max_detections=max_detections, drop_empty=drop_empty)

  return jax.vmap(one)(outputs["cls_logits"], outputs["bbox_deltas"], image_hw)


# ------------------------------------------------------------------------------------------------
# Family glue
# ------------------------------------------------------------------------------------------------


def gt_from_batch(batch):
  """``(boxes [B, M, 4], labels [B, M], valid [B, M])``; crowd boxes are dropped from the gt."""
  valid = batch["box_valid"]
  if "is_crowd" in batch:
    valid = valid & ~batch["is_crowd"]
  return batch["boxes"].astype(jnp.float32), batch["labels"].astype(jnp.int32), valid


def image_hw_of(batch):
  """``[B, 2]`` float real image sizes (``image_hw``), else the input's size."""
  if "image_hw" in batch:
    return batch["image_hw"].astype(jnp.float32)
  b, h, w = batch["image"].shape[:3]
  return jnp.tile(jnp.asarray([[h, w]], jnp.float32), (b, 1))


def apply_module(module, variables, images, *, train: bool):
  """``module.apply`` in train/eval mode; returns ``(outputs, mutated)`` (BatchNorm stats)."""
  if train and "batch_stats" in variables:
    outputs, mutated = module.apply(variables, images, train=True, mutable=["batch_stats"])
    return outputs, dict(mutated)
  return module.apply(variables, images, train=train), {}


def psum_if(x, axis_name):
  return x if axis_name is None else jax.lax.psum(x, axis_name)


def build_backbone_and_neck(cfg: Mapping[str, Any], *, min_level: int, max_level: int,
                            default_extra: str):
  """The backbone and FPN of a dense detector from its model config (RetinaNet, FCOS).

  Keys: ``backbone`` (a name for ``jaxvision.models.backbones.make_backbone``, e.g.
  ``"resnet50"``), ``backbone_args`` (that module's fields, e.g. ``{"width": 8, "norm":
  "batch"}``), ``fpn_features``, ``fpn_extra`` (``"p6p7_from_c5"``: RetinaNet's, ``"p6p7_from_p5"``:
  FCOS's), ``fpn_norm``. The FPN's inputs are ``C<min_level>..C5`` (fewer when ``max_level < 5``);
  levels above the coarsest input come from ``fpn_extra``.
  """
  from jaxvision.models.backbones import make_backbone  # noqa: PLC0415
  from jaxvision.models.necks import FPN  # noqa: PLC0415

  args = dict(cfg.get("backbone_args") or {})
  args.setdefault("dtype", as_dtype(cfg.get("dtype")))
  backbone = make_backbone(str(cfg["backbone"]), **args)
  top = min(max_level, 5)
  in_levels = tuple(f"C{l}" for l in range(min_level, top + 1))
  extra = cfg.get("fpn_extra") or default_extra
  neck = FPN(features=int(cfg["fpn_features"]), min_level=min_level, max_level=max_level,
             in_levels=in_levels, extra=extra if max_level > top else None,
             norm=cfg.get("fpn_norm"), dtype=as_dtype(cfg.get("dtype")))
  return backbone, neck


def as_dtype(value):
  return jnp.dtype(value) if isinstance(value, str) else (value or jnp.float32)


_RETINANET_DEFAULTS = dict(
    backbone="resnet50", backbone_args=None, fpn_features=256, fpn_extra="p6p7_from_c5",
    fpn_norm=None,
    min_level=3, max_level=7,
    head_features=256, head_convs=4, head_norm=None, prior_prob=0.01,
    anchor_scale=4.0, num_scales=3, aspect_ratios=(0.5, 1.0, 2.0),
    fg_iou_threshold=0.5, bg_iou_threshold=0.4, allow_low_quality_matches=True,
    cls_loss="focal", focal_alpha=0.25, focal_gamma=2.0, ohem_neg_pos_ratio=3.0,
    box_loss="smooth_l1", smooth_l1_beta=0.11, box_loss_weight=1.0,
    score_threshold=0.05, topk_per_level=1000, nms_threshold=0.5, max_detections=100,
    anchor_style="paper", drop_empty_boxes=True,
    dtype="float32",
)


def with_defaults(model_config: Any, defaults: Mapping[str, Any], family: str) -> dict[str, Any]:
  """``config.model`` as a dict over ``defaults``; unknown keys raise ``ValueError`` (naming the
  known ones)."""
  cfg = dense_common.as_dict(model_config)
  dense_common.check_keys(cfg, tuple(defaults), family)
  out = dict(defaults)
  out.update({k: v for k, v in cfg.items() if k != "name"})
  return out


def make_retinanet(model_config: Any, num_classes: int, *, backbone: nn.Module | None = None,
                   neck: nn.Module | None = None) -> Family:
  """Builds the RetinaNet family from ``config.model`` (``MODELS["retinanet"]``).

  Args:
    model_config: ``ml_collections.ConfigDict`` or dict; keys (all optional, defaults = the
      paper's R50-FPN model): ``backbone`` (``"resnet50"``; a ``make_backbone`` name),
      ``backbone_args`` (dict of the backbone's fields, e.g. ``{"width": 8, "norm": "batch"}``),
      ``fpn_features`` (256), ``fpn_extra`` (``"p6p7_from_c5"``), ``fpn_norm`` (None),
      ``min_level``/``max_level`` (3/7), ``head_features`` (256),
      ``head_convs`` (4), ``head_norm`` (None | ``"group"``), ``prior_prob`` (0.01),
      ``anchor_scale`` (4), ``num_scales`` (3), ``aspect_ratios`` ((0.5, 1, 2)),
      ``fg_iou_threshold`` (0.5), ``bg_iou_threshold`` (0.4), ``allow_low_quality_matches``
      (True), ``cls_loss`` (``"focal"`` | ``"bce"`` | ``"bce_ohem"``), ``focal_alpha`` (0.25),
      ``focal_gamma`` (2), ``ohem_neg_pos_ratio`` (3), ``box_loss`` (``"smooth_l1"`` | ``"l1"``),
      ``smooth_l1_beta`` (0.11), ``box_loss_weight`` (1), ``score_threshold`` (0.05),
      ``topk_per_level`` (1000), ``nms_threshold`` (0.5), ``max_detections`` (100),
      ``anchor_style`` (``"paper"`` | ``"torchvision"``, see ``retinanet_anchors_for``),
      ``drop_empty_boxes`` (True; False keeps boxes clipped to zero size, as torchvision),
      ``dtype``.
      torchvision's ``retinanet_resnet50_fpn`` (``jaxvision.weights.
      convert_retinanet_resnet50_fpn``) is ``backbone_args={"norm": "frozen"}``,
      ``fpn_extra="p6p7_from_p5"``, ``anchor_style="torchvision"``, ``drop_empty_boxes=False``,
      ``box_loss="l1"``, ``max_detections=300``.
    num_classes: ``K`` foreground classes (labels ``1..K``).
    backbone, neck: optional modules replacing the configured ones (tests, research code).

  Returns:
    A detection ``Family``.
  """
  c = with_defaults(model_config, _RETINANET_DEFAULTS, "RetinaNet")
  if c["cls_loss"] not in CLS_LOSSES:
    raise ValueError(f"model.cls_loss must be one of {CLS_LOSSES}, got {c['cls_loss']!r}.")
  if c["box_loss"] not in BOX_LOSSES:
    raise ValueError(f"model.box_loss must be one of {BOX_LOSSES}, got {c['box_loss']!r}.")
  if c["anchor_style"] not in ANCHOR_STYLES:
    raise ValueError(f"model.anchor_style must be one of {ANCHOR_STYLES}, got "
                     f"{c['anchor_style']!r}.")
  if c["head_norm"] not in HEAD_NORMS:
    raise ValueError(f"model.head_norm must be one of {HEAD_NORMS}, got {c['head_norm']!r}.")
  if not 0.0 <= c["bg_iou_threshold"] <= c["fg_iou_threshold"]:
    raise ValueError(f"need 0 <= bg_iou_threshold <= fg_iou_threshold, got "
                     f"{c['bg_iou_threshold']} and {c['fg_iou_threshold']}.")
  if num_classes < 1:
    raise ValueError(f"num_classes must be >= 1 (foreground classes), got {num_classes}.")
  dtype = as_dtype(c["dtype"])
  min_level, max_level = int(c["min_level"]), int(c["max_level"])
  if backbone is None or neck is None:
    b, n = build_backbone_and_neck(c, min_level=min_level, max_level=max_level,
                                   default_extra="p6p7_from_c5")
    backbone = backbone or b
    neck = neck or n
  ratios = tuple(float(r) for r in c["aspect_ratios"])
  num_anchors = int(c["num_scales"]) * len(ratios)
  head = RetinaNetHead(num_classes=num_classes, num_anchors=num_anchors,
                       features=int(c["head_features"]), num_convs=int(c["head_convs"]),
                       prior_prob=float(c["prior_prob"]), norm=c["head_norm"], dtype=dtype)
  module = RetinaNet(backbone=backbone, neck=neck, head=head)
  matcher = matching.Matcher(
      thresholds=(float(c["bg_iou_threshold"]), float(c["fg_iou_threshold"])),
      labels=(matching.NEGATIVE, matching.IGNORE, matching.POSITIVE),
      allow_low_quality_matches=bool(c["allow_low_quality_matches"]))
  alpha = c["focal_alpha"]
  alpha = None if alpha is None else float(alpha)

  def anchors_for(per_level, image_size=None):
    shapes = {name: tuple(v["cls_logits"].shape[1:3]) for name, v in per_level.items()}
    return retinanet_anchors_for(shapes, anchor_scale=float(c["anchor_scale"]),
                                 num_scales=int(c["num_scales"]), aspect_ratios=ratios,
                                 style=c["anchor_style"], image_size=image_size)

  def flat(per_level):
    return {"cls_logits": flatten_levels(per_level, "cls_logits", num_classes),
            "bbox_deltas": flatten_levels(per_level, "bbox_deltas", 4)}

  def targets_for(anchors, batch):
    boxes, labels, valid = gt_from_batch(batch)
    assign = lambda b, l, v: assign_targets(anchors, b, l, v, matcher=matcher)
    return jax.vmap(assign)(boxes, labels, valid)  # each [B, N, ...]

  def loss_normalizer(per_level, batch):
    anchors, _ = anchors_for(per_level, batch["image"].shape[1:3])
    return jnp.sum(targets_for(anchors, batch)["positive"]).astype(jnp.float32)

  def loss(per_level, batch, *, normalizer=None):
    anchors, _ = anchors_for(per_level, batch["image"].shape[1:3])
    targets = targets_for(anchors, batch)
    if normalizer is None:
      normalizer = jnp.sum(targets["positive"]).astype(jnp.float32)
    total, terms = retinanet_loss(flat(per_level), targets, normalizer=normalizer,
                                  cls_loss=c["cls_loss"], alpha=alpha,
                                  gamma=float(c["focal_gamma"]),
                                  neg_pos_ratio=float(c["ohem_neg_pos_ratio"]),
                                  box_loss=c["box_loss"], beta=float(c["smooth_l1_beta"]),
                                  box_loss_weight=float(c["box_loss_weight"]))
    return total, terms

  def train_loss(variables, batch, *, rng=None, step=None, axis_name=None):
    del rng, step
    per_level, mutated = apply_module(module, variables, batch["image"], train=True)
    anchors, _ = anchors_for(per_level, batch["image"].shape[1:3])
    targets = targets_for(anchors, batch)
    num_pos = jnp.sum(targets["positive"]).astype(jnp.float32)
    normalizer = psum_if(num_pos, axis_name)
    total, terms = retinanet_loss(flat(per_level), targets, normalizer=normalizer,
                                  cls_loss=c["cls_loss"], alpha=alpha,
                                  gamma=float(c["focal_gamma"]),
                                  neg_pos_ratio=float(c["ohem_neg_pos_ratio"]),
                                  box_loss=c["box_loss"], beta=float(c["smooth_l1_beta"]),
                                  box_loss_weight=float(c["box_loss_weight"]))
    terms = dict(terms, num_positives=num_pos)
    return total, terms, mutated

  def post(per_level, image_hw, image_size=None):
    anchors, counts = anchors_for(per_level, image_size)
    return postprocess(flat(per_level), anchors, counts, image_hw,
                       score_threshold=float(c["score_threshold"]),
                       topk_per_level=int(c["topk_per_level"]),
                       nms_threshold=float(c["nms_threshold"]),
                       max_detections=int(c["max_detections"]),
                       drop_empty=bool(c["drop_empty_boxes"]))

  def predict(variables, batch):
    per_level, _ = apply_module(module, variables, batch["image"], train=False)
    return post(per_level, image_hw_of(batch), batch["image"].shape[1:3])

  return Family(module=module, task="detection", train_loss=train_loss, predict=predict,
                loss=loss, loss_normalizer=loss_normalizer, postprocess=post,
                num_classes=num_classes)
