"""FCOS: Tian, Shen, Chen and He, "FCOS: Fully Convolutional One-Stage Object Detection", ICCV 2019
(https://arxiv.org/abs/1904.01355).

An anchor-free one-stage detector: every location of every pyramid level is a training sample.

Network (paper Sec. 3.1 - 3.3, Fig. 2): a ResNet backbone, an FPN on ``P3..P7`` (``P6``, ``P7`` by
stride-2 convolutions on ``P5``), and a head shared by all levels: a classification tower and a
regression tower of four 3x3 convolutions with 256 channels (GroupNorm + ReLU, as the released
code), then ``K`` sigmoid class logits, the 4 distances ``(l, t, r, b)`` from the location to the
box sides, and one *centerness* logit. The distances are ``exp(s_l x)`` with a learnable scalar
``s_l`` per level (paper Sec. 3.2, ``reg_activation="exp"``: pixels), or ``relu(s_l x)`` in units
of the level's stride (``"relu"``: the paper's improved version / torchvision, targets divided by
the stride). The class bias is initialised to ``-log((1 - pi) / pi)``, ``pi = 0.01``, as RetinaNet.

Targets (Sec. 3.1 - 3.2), ``assign_targets``: location ``(x, y)`` of level ``l`` (stride ``s``,
centre ``(floor(s/2) + j s, floor(s/2) + i s)``, i.e. the cell centre) is *positive* for a gt box if

* it lies inside the box (all of ``l*, t*, r*, b* > 0``); with ``center_sampling_radius`` ``r``
  (the improved version, torchvision: 1.5) it must also lie within ``r * s`` of the box centre
  (Chebyshev distance);
* ``m_{l-1} <= max(l*, t*, r*, b*) <= m_l`` with ``m = (0, 64, 128, 256, 512, inf)`` on ``P3..P7``
  (``size_of_interest`` gives the inner boundaries; the first level starts at 0 and the last ends at
  infinity);

and when several boxes qualify it takes the one of **minimal area** (ties: lowest gt index). The
regression target is that box's ``(l*, t*, r*, b*)`` (``jaxvision.ops.box_coder.encode_ltrb``), the
centerness target (Eq. 3)

  centerness* = sqrt( min(l*, r*) / max(l*, r*) * min(t*, b*) / max(t*, b*) ).

Loss (Eq. 2): focal loss (alpha 0.25, gamma 2) over all locations and classes, plus the box loss
(IoU loss in the paper, ``box_loss="iou"``; GIoU in the improved version and torchvision,
``"giou"``) on the positives, plus the binary cross-entropy of the centerness on the positives; each
divided by the number of positives (``psum``-ed over devices, at least 1). With
``box_loss_weighting="centerness"`` the box loss of each positive is weighted by its centerness
target and divided by the sum of those targets (the released code's improved version);
``"none"`` (default) is the paper's Eq. 2 and torchvision.

Inference (Sec. 3.3): a (location, class) pair is a candidate if its classification probability
exceeds ``score_threshold`` (0.05); its score is ``sqrt(p_cls * p_centerness)`` (the centerness
down-weights boxes far from object centres before NMS); the top 1000 candidates per level are
decoded, clipped to the image, and class-aware NMS at IoU 0.6 keeps the top ``D = 100``.

Settings and their sources: the defaults here follow the improved FCOS as in torchvision's
``fcos_resnet50_fpn`` (centre sampling 1.5, GIoU, centerness on the regression branch,
``relu`` distances in strides); the ICCV paper's original is ``center_sampling_radius=0``,
``box_loss="iou"``, ``centerness_on_reg=False``, ``reg_activation="exp"``.

Everything is static-shape: ``[P, M]`` location x gt-slot matrices with ``box_valid`` masks, so the
number of gt boxes never changes a shape; images without boxes give an all-negative, finite loss.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxvision.losses import giou_loss, iou_loss, sigmoid_focal_loss
from jaxvision.models.detection.retinanet import (HEAD_NORMS, HeadTower, apply_module,
                                                  build_backbone_and_neck, classification_loss,
                                                  dense_detections, flatten_levels, gt_from_batch,
                                                  head_kernel_init, image_hw_of, level_names,
                                                  level_stride, prior_bias, psum_if, with_defaults,
                                                  as_dtype)
from jaxvision.models.family import Family
from jaxvision.models.layers.conv import Conv
from jaxvision.ops import box_coder
from jaxvision.ops import boxes as box_ops

__all__ = [
    "FCOSHead", "FCOS", "REG_ACTIVATIONS", "BOX_LOSSES", "fcos_points", "scale_ranges",
    "centerness_target", "assign_targets", "fcos_loss", "postprocess", "make_fcos",
]

REG_ACTIVATIONS = ("exp", "relu")
POINT_STYLES = ("paper", "torchvision")
THRESHOLD_ON = ("cls", "score")
BOX_LOSSES = ("giou", "iou")
BOX_WEIGHTINGS = ("none", "centerness")
PAPER_SIZE_OF_INTEREST = (64.0, 128.0, 256.0, 512.0)
"""Inner boundaries ``m_3..m_6`` of the paper's per-level ranges on ``P3..P7``."""
# exp(11) ~ 6e4 px: far beyond any image, keeps exp finite under a bad step (never reached in use).
_MAX_LOG_DISTANCE = 11.0



class FCOS(nn.Module):
  """``head(neck(backbone(images)))`` (as ``retinanet.RetinaNet``); returns the head's per-level
  outputs. The backbone takes ``(images, train=...)``, the neck ``(features, train=...)``."""
  backbone: nn.Module
  neck: nn.Module
  head: nn.Module

  @nn.compact
  def __call__(self, images, train: bool = False):
    return self.head(self.neck(self.backbone(images, train=train), train=train))


class FCOSHead(nn.Module):
  """FCOS head, shared over levels; ``__call__({"P3": ..., ...})`` returns per level
  ``{"cls_logits": [B, H, W, K], "ltrb": [B, H, W, 4], "centerness": [B, H, W, 1]}``.

  ``ltrb`` are the (positive) distances in target units: pixels for ``reg_activation="exp"``,
  strides for ``"relu"``. A learnable scalar ``scale_P<l>`` (init 1) per level multiplies the raw
  regression output before the activation.
  """
  num_classes: int
  features: int = 256
  num_convs: int = 4
  prior_prob: float = 0.01
  norm: str | None = "group"
  centerness_on_reg: bool = True
  reg_activation: str = "relu"
  dtype: Any = jnp.float32
  norm_epsilon: float = 1e-6

  @nn.compact
  def __call__(self, features: Mapping[str, jax.Array]) -> dict[str, dict[str, jax.Array]]:
    if self.reg_activation not in REG_ACTIVATIONS:
      raise ValueError(f"reg_activation must be one of {REG_ACTIVATIONS}, got "
                       f"{self.reg_activation!r}.")
    tower = functools.partial(HeadTower, self.features, self.num_convs, self.norm, self.dtype,
                              self.norm_epsilon)
    cls_tower, reg_tower = tower(name="cls_tower"), tower(name="reg_tower")
    conv = functools.partial(Conv, kernel_size=(3, 3), kernel_init=head_kernel_init,
                             dtype=self.dtype)
    prior = nn.initializers.constant(prior_bias(self.prior_prob))
    cls_out = conv(self.num_classes, bias_init=prior, name="cls_logits")
    reg_out = conv(4, bias_init=nn.initializers.zeros, name="bbox_reg")
    ctr_out = conv(1, bias_init=nn.initializers.zeros, name="centerness")
    out = {}
    for name in level_names(features):
      x = features[name]
      c, r = cls_tower(x), reg_tower(x)  # (B, H, W, F) each
      scale = self.param(f"scale_{name}", nn.initializers.ones, (), jnp.float32)
      raw = scale * reg_out(r).astype(jnp.float32)  # (B, H, W, 4)
      if self.reg_activation == "exp":
        ltrb = jnp.exp(jnp.minimum(raw, _MAX_LOG_DISTANCE))
      else:
        ltrb = nn.relu(raw)
      out[name] = {"cls_logits": cls_out(c).astype(jnp.float32),  # (B, H, W, K)
                   "ltrb": ltrb,  # (B, H, W, 4)
                   "centerness": ctr_out(r if self.centerness_on_reg else c).astype(jnp.float32)}
    return out


# ------------------------------------------------------------------------------------------------
# Locations and targets
# ------------------------------------------------------------------------------------------------


def scale_ranges(num_levels: int, size_of_interest: Sequence[float] = PAPER_SIZE_OF_INTEREST):
  """``[(lo, hi)]`` per level: ``(0, m_1), (m_1, m_2), ..., (m_{L-1}, inf)``.

  ``size_of_interest`` holds the ``L - 1`` inner boundaries (the paper's 64, 128, 256, 512 for
  ``P3..P7``).
  """
  bounds = [float(b) for b in size_of_interest]
  if len(bounds) != num_levels - 1:
    raise ValueError(f"size_of_interest must give num_levels - 1 = {num_levels - 1} boundaries "
                     f"(one between each pair of levels), got {tuple(size_of_interest)}.")
  if any(b <= 0 for b in bounds) or any(b2 < b1 for b1, b2 in zip(bounds, bounds[1:])):
    raise ValueError(f"size_of_interest must be positive and non-decreasing, got {tuple(bounds)}.")
  edges = [0.0] + bounds + [math.inf]
  return list(zip(edges[:-1], edges[1:]))


def fcos_points(level_shapes: Mapping[str, tuple[int, int]],
                size_of_interest: Sequence[float] = PAPER_SIZE_OF_INTEREST, *,
                style: str = "paper", image_size: Sequence[int] | None = None):
  """Locations of every level, concatenated finest first, in the head's row-major order.

  ``style="torchvision"`` (``fcos_resnet50_fpn``'s one-anchor ``AnchorGenerator``, for converted
  weights): location ``(j, i)`` is ``(j sx, i sy)``, the top-left corner of the cell, with
  torchvision's integer strides ``(sy, sx) = image_size // (H_l, W_l)`` (None: the finest level's
  size times its stride); ``strides`` (the distance unit and the centre-sampling radius unit)
  stay ``2^l``, torchvision's anchor sizes.

  Returns:
    dict of float32 arrays: ``points`` ``[P, 2]`` ``(x, y)`` = ``((j + 0.5) s, (i + 0.5) s)``,
    ``strides`` ``[P]``, ``lo`` / ``hi`` ``[P]`` the level's regression range; and the Python tuple
    ``counts`` of per-level ``H_l W_l``. Computed with NumPy (compile-time constants).
  """
  if style not in POINT_STYLES:
    raise ValueError(f"points style must be one of {POINT_STYLES}, got {style!r}.")
  names = level_names(level_shapes)
  ranges = scale_ranges(len(names), size_of_interest)
  if style == "torchvision":
    from jaxvision.ops.anchors import torchvision_strides  # noqa: PLC0415
    shapes = [tuple(int(v) for v in level_shapes[n]) for n in names]
    if image_size is None:
      s0 = level_stride(names[0])
      image_size = (shapes[0][0] * s0, shapes[0][1] * s0)
    tv_strides = torchvision_strides(tuple(int(v) for v in image_size), shapes)
  pts, strides, lo, hi, counts = [], [], [], [], []
  for index, (name, (r_lo, r_hi)) in enumerate(zip(names, ranges)):
    h, w = (int(v) for v in level_shapes[name])
    s = level_stride(name)
    if style == "torchvision":
      xs = np.arange(w, dtype=np.float32) * np.float32(tv_strides[index][1])
      ys = np.arange(h, dtype=np.float32) * np.float32(tv_strides[index][0])
    else:
      xs = (np.arange(w, dtype=np.float32) + 0.5) * s
      ys = (np.arange(h, dtype=np.float32) + 0.5) * s
    gx, gy = np.meshgrid(xs, ys, indexing="xy")  # (H, W)
    pts.append(np.stack([gx, gy], -1).reshape(-1, 2))  # (H W, 2), row-major
    n = h * w
    strides.append(np.full((n,), s, np.float32))
    lo.append(np.full((n,), r_lo, np.float32))
    hi.append(np.full((n,), r_hi, np.float32))
    counts.append(n)
  cat = lambda xs: jnp.asarray(np.concatenate(xs))
  return {"points": cat(pts), "strides": cat(strides), "lo": cat(lo), "hi": cat(hi)}, tuple(counts)


def centerness_target(ltrb):
  """Eq. 3: ``sqrt(min(l, r) / max(l, r) * min(t, b) / max(t, b))`` of ``[..., 4]`` distances.

  0 where a distance is not positive (outside the box, or padding).
  """
  l, t, r, b = (ltrb[..., i] for i in range(4))
  ok = jnp.min(ltrb, axis=-1) > 0
  lr = jnp.minimum(l, r) / jnp.where(ok, jnp.maximum(l, r), 1.0)
  tb = jnp.minimum(t, b) / jnp.where(ok, jnp.maximum(t, b), 1.0)
  return jnp.where(ok, jnp.sqrt(jnp.where(ok, lr * tb, 1.0)), 0.0)


def assign_targets(points, strides, lo, hi, gt_boxes, gt_labels, gt_valid, *,
                   center_sampling_radius: float = 1.5):
  """FCOS targets of one image (``jax.vmap`` for a batch); see the module docstring.

  Args:
    points: ``[P, 2]`` locations ``(x, y)``; strides, lo, hi: ``[P]`` per-location level stride and
      regression range (``fcos_points``).
    gt_boxes: ``[M, 4]`` xyxy; gt_labels: ``[M]`` in ``1..K``; gt_valid: ``[M]`` bool.
    center_sampling_radius: ``r`` in strides; ``0`` or ``None`` disables centre sampling (paper).

  Returns:
    dict: ``labels`` int32 ``[P]`` (class of a positive, 0 = background), ``positive`` bool ``[P]``,
    ``ltrb`` ``[P, 4]`` pixel distances to the assigned box's sides (0 for negatives),
    ``centerness`` ``[P]`` (0 for negatives), ``matched_gt`` int32 ``[P]`` (0 for negatives),
    ``boxes`` ``[P, 4]`` the assigned gt box (0 for negatives).
  """
  gt_valid = gt_valid & (gt_labels > 0)
  ltrb = box_coder.encode_ltrb(gt_boxes[None, :, :], points[:, None, :])  # (P, M, 4) pixels
  inside = jnp.min(ltrb, axis=-1) > 0  # (P, M)
  if center_sampling_radius:
    centres = 0.5 * (gt_boxes[:, :2] + gt_boxes[:, 2:])  # (M, 2)
    dist = jnp.max(jnp.abs(points[:, None, :] - centres[None, :, :]), axis=-1)  # (P, M) Chebyshev
    inside = inside & (dist < center_sampling_radius * strides[:, None])
  reach = jnp.max(ltrb, axis=-1)  # (P, M)
  in_range = (reach >= lo[:, None]) & (reach <= hi[:, None])
  candidate = inside & in_range & gt_valid[None, :]  # (P, M)
  area = box_ops.box_area(gt_boxes)  # (M,)
  area = jnp.where(candidate, area[None, :], jnp.inf)
  matched = jnp.argmin(area, axis=1).astype(jnp.int32)  # (P,) smallest area; ties: lowest index
  positive = jnp.any(candidate, axis=1)
  matched = jnp.where(positive, matched, 0)
  target = jnp.take_along_axis(ltrb, matched[:, None, None], axis=1)[:, 0]  # (P, 4)
  target = jnp.where(positive[:, None], target, 0.0)
  labels = jnp.where(positive, gt_labels[matched], 0).astype(jnp.int32)
  boxes = jnp.where(positive[:, None], gt_boxes[matched], 0.0)
  return {"labels": labels, "positive": positive, "ltrb": target,
          "centerness": centerness_target(target), "matched_gt": matched, "boxes": boxes}


# ------------------------------------------------------------------------------------------------
# Loss
# ------------------------------------------------------------------------------------------------


def fcos_loss(outputs, targets, points, units, *, normalizer, centerness_normalizer=None,
              alpha: float | None = 0.25, gamma: float = 2.0, box_loss: str = "giou",
              box_loss_weighting: str = "none", cls_loss: str = "focal"):
  """``(total, terms)`` of a batch (Eq. 2).

  Args:
    outputs: flattened ``{"cls_logits" [B, P, K], "ltrb" [B, P, 4], "centerness" [B, P, 1]}``.
    targets: batched ``assign_targets`` output.
    points: ``[P, 2]``; units: ``[P]`` pixels per output unit (1 for ``exp``, the stride for
      ``relu``).
    normalizer: the number of positives (global, ``psum``-ed).
    centerness_normalizer: the global sum of positive centerness targets (needed for
      ``box_loss_weighting="centerness"``).
    alpha, gamma: focal loss parameters; box_loss: ``"giou"`` or ``"iou"``; cls_loss: as in
      ``retinanet.classification_loss``.
  """
  if box_loss not in BOX_LOSSES:
    raise ValueError(f"box_loss must be one of {BOX_LOSSES}, got {box_loss!r}.")
  if box_loss_weighting not in BOX_WEIGHTINGS:
    raise ValueError(f"box_loss_weighting must be one of {BOX_WEIGHTINGS}, got "
                     f"{box_loss_weighting!r}.")
  norm = jnp.maximum(jnp.asarray(normalizer, jnp.float32), 1.0)
  positive = targets["positive"]  # (B, P)
  cls_sum, _ = classification_loss(outputs["cls_logits"], targets["labels"], cls_loss=cls_loss,
                                   alpha=alpha, gamma=gamma)
  pred_boxes = box_coder.decode_ltrb(outputs["ltrb"] * units[None, :, None], points[None])
  # Negatives compare a fixed unit box with itself: finite, zero loss, no gradient to the output.
  unit_box = jnp.asarray([0.0, 0.0, 1.0, 1.0], jnp.float32)
  pred_boxes = jnp.where(positive[..., None], pred_boxes, unit_box)
  gt_boxes = jnp.where(positive[..., None], targets["boxes"], unit_box)
  per_box = (giou_loss if box_loss == "giou" else iou_loss)(pred_boxes, gt_boxes)  # (B, P)
  ctr_t = targets["centerness"]
  if box_loss_weighting == "centerness":
    if centerness_normalizer is None:
      centerness_normalizer = jnp.sum(jnp.where(positive, ctr_t, 0.0))
    box_norm = jnp.maximum(jnp.asarray(centerness_normalizer, jnp.float32), 1e-6)
    box_term = jnp.sum(jnp.where(positive, ctr_t * per_box, 0.0)) / box_norm
  else:
    box_term = jnp.sum(jnp.where(positive, per_box, 0.0)) / norm
  ctr_bce = sigmoid_focal_loss(outputs["centerness"][..., 0], ctr_t, alpha=None, gamma=0.0)
  ctr_term = jnp.sum(jnp.where(positive, ctr_bce, 0.0)) / norm
  cls_term = cls_sum / norm
  return cls_term + box_term + ctr_term, {"cls_loss": cls_term, "box_loss": box_term,
                                          "centerness_loss": ctr_term}


def postprocess(outputs, points, units, level_counts, image_hw, *, score_threshold: float = 0.05,
                topk_per_level: int = 1000, nms_threshold: float = 0.6, max_detections: int = 100,
                threshold_on: str = "cls", drop_empty: bool = True):
  """FCOS detections of a batch: candidates ``p_cls > score_threshold``, scores
  ``sqrt(p_cls * p_ctr)``, per-level top-k, decode, clip, class-aware NMS, ``D`` slots.

  ``threshold_on="score"``: candidates need ``sqrt(p_cls * p_ctr) > score_threshold`` instead
  (torchvision's ``FCOS``, whose threshold is 0.2); ``drop_empty``: see
  ``retinanet.dense_detections``."""
  if threshold_on not in THRESHOLD_ON:
    raise ValueError(f"threshold_on must be one of {THRESHOLD_ON}, got {threshold_on!r}.")

  def one(logits, ltrb, ctr, hw):
    p_cls = jax.nn.sigmoid(logits)  # (P, K)
    scores = jnp.sqrt(p_cls * jax.nn.sigmoid(ctr))  # (P, K) with ctr (P, 1)
    decode = lambda loc: box_coder.decode_ltrb(ltrb[loc] * units[loc, None], points[loc])
    candidate = (scores if threshold_on == "score" else p_cls) > score_threshold
    return dense_detections(scores, candidate, decode, level_counts, hw,
                            topk_per_level=topk_per_level, nms_threshold=nms_threshold,
                            max_detections=max_detections, drop_empty=drop_empty)

  return jax.vmap(one)(outputs["cls_logits"], outputs["ltrb"], outputs["centerness"], image_hw)


# ------------------------------------------------------------------------------------------------
# Family glue
# ------------------------------------------------------------------------------------------------


_FCOS_DEFAULTS = dict(
    backbone="resnet50", backbone_args=None, fpn_features=256, fpn_extra="p6p7_from_p5",
    fpn_norm=None, min_level=3, max_level=7,
    head_features=256, head_convs=4, head_norm="group", prior_prob=0.01, centerness_on_reg=True,
    reg_activation="relu", size_of_interest=PAPER_SIZE_OF_INTEREST, center_sampling_radius=1.5,
    cls_loss="focal", focal_alpha=0.25, focal_gamma=2.0, box_loss="giou",
    box_loss_weighting="none",
    score_threshold=0.05, topk_per_level=1000, nms_threshold=0.6, max_detections=100,
    points_style="paper", threshold_on="cls", drop_empty_boxes=True, head_norm_epsilon=1e-6,
    dtype="float32",
)


def make_fcos(model_config: Any, num_classes: int, *, backbone: nn.Module | None = None,
              neck: nn.Module | None = None) -> Family:
  """Builds the FCOS family from ``config.model`` (``MODELS["fcos"]``).

  Args:
    model_config: ``ml_collections.ConfigDict`` or dict; keys (all optional; defaults: R50-FPN with
      the improved-FCOS/torchvision settings, see the module docstring): ``backbone``
      (``"resnet50"``), ``backbone_args``, ``fpn_features`` (256), ``fpn_extra``
      (``"p6p7_from_p5"``), ``fpn_norm``, ``min_level``/``max_level`` (3/7), ``head_features``
      (256), ``head_convs`` (4), ``head_norm`` (``"group"`` | None), ``prior_prob`` (0.01),
      ``centerness_on_reg`` (True), ``reg_activation`` (``"relu"`` | ``"exp"``),
      ``size_of_interest`` ((64, 128, 256, 512): ``max_level - min_level`` boundaries),
      ``center_sampling_radius`` (1.5; 0 = off), ``cls_loss`` (``"focal"`` | ``"bce"`` |
      ``"bce_ohem"``), ``focal_alpha`` (0.25), ``focal_gamma`` (2), ``box_loss`` (``"giou"`` |
      ``"iou"``), ``box_loss_weighting`` (``"none"`` | ``"centerness"``), ``score_threshold``
      (0.05), ``topk_per_level`` (1000), ``nms_threshold`` (0.6), ``max_detections`` (100),
      ``points_style`` (``"paper"`` | ``"torchvision"``, see ``fcos_points``), ``threshold_on``
      (``"cls"`` | ``"score"``, see ``postprocess``), ``drop_empty_boxes`` (True),
      ``head_norm_epsilon`` (1e-6, Flax's GroupNorm; PyTorch's 1e-5), ``dtype``.
      torchvision's ``fcos_resnet50_fpn`` (``jaxvision.weights.convert_fcos_resnet50_fpn``,
      ``fcos_model_config``) is ``backbone_args={"norm": "frozen"}``,
      ``points_style="torchvision"``, ``threshold_on="score"``, ``score_threshold=0.2``,
      ``drop_empty_boxes=False``, ``head_norm_epsilon=1e-5`` (its per-level scales are 1).
    num_classes: ``K`` foreground classes.
    backbone, neck: optional modules replacing the configured ones.
  """
  c = with_defaults(model_config, _FCOS_DEFAULTS, "FCOS")
  for key, allowed in (("reg_activation", REG_ACTIVATIONS), ("box_loss", BOX_LOSSES),
                       ("box_loss_weighting", BOX_WEIGHTINGS), ("head_norm", HEAD_NORMS),
                       ("points_style", POINT_STYLES), ("threshold_on", THRESHOLD_ON)):
    if c[key] not in allowed:
      raise ValueError(f"model.{key} must be one of {allowed}, got {c[key]!r}.")
  if num_classes < 1:
    raise ValueError(f"num_classes must be >= 1 (foreground classes), got {num_classes}.")
  min_level, max_level = int(c["min_level"]), int(c["max_level"])
  size_of_interest = tuple(float(v) for v in c["size_of_interest"])
  scale_ranges(max_level - min_level + 1, size_of_interest)  # validates early
  if backbone is None or neck is None:
    b, n = build_backbone_and_neck(c, min_level=min_level, max_level=max_level,
                                   default_extra="p6p7_from_p5")
    backbone = backbone or b
    neck = neck or n
  head = FCOSHead(num_classes=num_classes, features=int(c["head_features"]),
                  num_convs=int(c["head_convs"]), prior_prob=float(c["prior_prob"]),
                  norm=c["head_norm"], centerness_on_reg=bool(c["centerness_on_reg"]),
                  reg_activation=c["reg_activation"], dtype=as_dtype(c["dtype"]),
                  norm_epsilon=float(c["head_norm_epsilon"]))
  module = FCOS(backbone=backbone, neck=neck, head=head)
  alpha = None if c["focal_alpha"] is None else float(c["focal_alpha"])
  radius = float(c["center_sampling_radius"] or 0.0)

  def locations(per_level, image_size=None):
    shapes = {name: tuple(v["cls_logits"].shape[1:3]) for name, v in per_level.items()}
    loc, counts = fcos_points(shapes, size_of_interest, style=c["points_style"],
                              image_size=image_size)
    units = loc["strides"] if c["reg_activation"] == "relu" else jnp.ones_like(loc["strides"])
    return loc, units, counts

  def flat(per_level):
    return {"cls_logits": flatten_levels(per_level, "cls_logits", num_classes),
            "ltrb": flatten_levels(per_level, "ltrb", 4),
            "centerness": flatten_levels(per_level, "centerness", 1)}

  def targets_for(loc, batch):
    boxes, labels, valid = gt_from_batch(batch)
    assign = lambda b, l, v: assign_targets(loc["points"], loc["strides"], loc["lo"], loc["hi"],
                                            b, l, v, center_sampling_radius=radius)
    return jax.vmap(assign)(boxes, labels, valid)  # each [B, P, ...]

  def compute(per_level, batch, axis_name, normalizers=None):
    loc, units, _ = locations(per_level, batch["image"].shape[1:3])
    targets = targets_for(loc, batch)
    num_pos = jnp.sum(targets["positive"]).astype(jnp.float32)
    ctr_sum = jnp.sum(jnp.where(targets["positive"], targets["centerness"], 0.0))
    if normalizers is None:
      normalizers = (psum_if(num_pos, axis_name), psum_if(ctr_sum, axis_name))
    total, terms = fcos_loss(flat(per_level), targets, loc["points"], units,
                             normalizer=normalizers[0], centerness_normalizer=normalizers[1],
                             alpha=alpha, gamma=float(c["focal_gamma"]), box_loss=c["box_loss"],
                             box_loss_weighting=c["box_loss_weighting"], cls_loss=c["cls_loss"])
    return total, dict(terms, num_positives=num_pos)

  def loss(per_level, batch, *, normalizer=None):
    normalizers = None if normalizer is None else (normalizer, None)
    return compute(per_level, batch, None, normalizers)

  def loss_normalizer(per_level, batch):
    loc, _, _ = locations(per_level, batch["image"].shape[1:3])
    return jnp.sum(targets_for(loc, batch)["positive"]).astype(jnp.float32)

  def train_loss(variables, batch, *, rng=None, step=None, axis_name=None):
    del rng, step
    per_level, mutated = apply_module(module, variables, batch["image"], train=True)
    total, terms = compute(per_level, batch, axis_name)
    return total, terms, mutated

  def post(per_level, image_hw, image_size=None):
    loc, units, counts = locations(per_level, image_size)
    return postprocess(flat(per_level), loc["points"], units, counts, image_hw,
                       score_threshold=float(c["score_threshold"]),
                       topk_per_level=int(c["topk_per_level"]),
                       nms_threshold=float(c["nms_threshold"]),
                       max_detections=int(c["max_detections"]),
                       threshold_on=c["threshold_on"], drop_empty=bool(c["drop_empty_boxes"]))

  def predict(variables, batch):
    per_level, _ = apply_module(module, variables, batch["image"], train=False)
    return post(per_level, image_hw_of(batch), batch["image"].shape[1:3])

  return Family(module=module, task="detection", train_loss=train_loss, predict=predict,
                loss=loss, loss_normalizer=loss_normalizer, postprocess=post,
                num_classes=num_classes)
