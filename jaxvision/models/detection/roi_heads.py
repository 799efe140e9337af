"""RoI heads of Fast R-CNN (Girshick, "Fast R-CNN", ICCV 2015, https://arxiv.org/abs/1504.08083) as
used by Faster R-CNN (Ren et al., NeurIPS 2015) with ResNet-C4 or FPN features.

The second stage of a two-stage detector, shared by ``fast_rcnn.py`` (external proposals) and
``faster_rcnn.py`` (RPN proposals), and the place Mask R-CNN's mask branch attaches to (it reuses
``pool_rois`` with its own output size and the ``RoiSample`` of ``sample_training_rois``):

1. **RoI sampling** (Fast R-CNN Sec. 2.3, ``sample_training_rois``): the gt boxes are appended to
   the proposals, every candidate is labelled by IoU with the gt
   (``jaxvision.ops.sampling.label_rois``): foreground ``>= 0.5`` (the matched gt's class),
   background in ``[bg_iou_low, 0.5)``, the rest ignored; then ``batch_size_per_image`` RoIs are
   drawn, up to 25% foreground (``jaxvision.ops.sampling.sample_rois``). Fast R-CNN: 64 RoIs per
   image, 2 images per mini-batch, background in ``[0.1, 0.5)``; Faster R-CNN as in
   torchvision/Detectron: 512 per image, background in ``[0, 0.5)``.
2. **RoI feature extraction** (``pool_rois``): RoIPool (Fast R-CNN Sec. 2.1: max over an ``H x W``
   grid of sub-windows, ``jaxvision.ops.roi.roi_pool``) or RoIAlign (Mask R-CNN's bilinear sampling,
   ``roi_align``), 7x7 (14x14 in front of a ResNet ``res5`` head, C4). With FPN each RoI is pooled
   from one level ``k = floor(4 + log2(sqrt(wh) / 224))`` clamped to P2..P5
   (``multilevel_roi_align``). Padded RoIs pool to zeros (image index -1).
3. **Box head** (one of): ``TwoMLPHead`` (two 1024-d fully connected layers, FPN Sec. 4.2),
   ``Res5Head`` (ResNet's conv5 stage on 14x14 RoI features then average pooling, the C4 design of
   He et al. 2016 / Detectron), or ``ConvBoxHead`` (a few 3x3 convolutions then one FC layer, a
   cheap head for small experiments).
4. **Predictor** (``FastRCNNPredictor``, Fast R-CNN Sec. 2): a softmax classifier over ``K + 1``
   classes (background first) and class-specific box regression, ``4`` deltas per foreground
   class, with the targets normalized by the weights ``(10, 10, 5, 5)`` (the means/stds of Fast
   R-CNN's Sec. 2.3 as fixed constants, ``box_coder.FAST_RCNN_WEIGHTS``).
5. **Loss** (Eq. 1, ``box_head_loss``): ``L = L_cls(p, u) + lambda [u >= 1] L_loc(t^u, v)``,
   ``lambda = 1``: cross-entropy over the sampled RoIs and smooth-L1 (Eq. 2-3) on the deltas *of
   the gt class u only*, for foreground RoIs; both sums divided by the number of sampled RoIs
   (``psum``-ed across devices), as torchvision's ``fastrcnn_loss``.
6. **Inference** (``postprocess_detections``): class probabilities, per-class decoded and clipped
   boxes, score threshold 0.05, minimum size, class-aware NMS at IoU 0.5 and the ``D = 100`` best
   detections, all with static shapes (``jaxvision.ops.nms.batched_nms``).

The RoI slots are static (``S`` proposals or sampled RoIs per image), but at inference the heads
need not compute on the empty ones: ``switch_on_rows`` runs a head on the smallest of a few row
buckets (``S``, ``S / 2``, ...) that holds every valid RoI of the batch, each bucket compiled once
and chosen at run time (``RoIHeadsConfig.row_buckets``).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxvision.losses import smooth_l1_loss
from jaxvision.models.layers.conv import Conv
from jaxvision.ops import box_coder
from jaxvision.ops import boxes as box_ops
from jaxvision.ops import nms as nms_ops
from jaxvision.ops import roi as roi_ops
from jaxvision.ops import sampling

__all__ = [
    "POOLERS", "RoIHeadsConfig", "TwoMLPHead", "ConvBoxHead", "Res5Head", "FastRCNNPredictor",
    "Detections", "feature_scale", "pool_rois", "sample_training_rois", "box_head_targets",
    "box_head_loss", "postprocess_detections", "flatten_rois", "row_buckets", "switch_on_rows",
    "pad_rows", "bucketed_head",
]

POOLERS = ("align", "pool")


# ------------------------------------------------------------------------------------------------
# Configuration
# ------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RoIHeadsConfig:
  """Hyper-parameters of the RoI heads (hashable: a module attribute / static argument).

  Attributes:
    batch_size_per_image: RoIs sampled per image (512 torchvision/Detectron, 64 Fast R-CNN).
    positive_fraction: foreground share of the sample (0.25).
    fg_iou_threshold: foreground IoU (0.5).
    bg_iou_low, bg_iou_high: background IoU band ``[low, high)`` (Fast R-CNN ``[0.1, 0.5)``,
      Faster R-CNN in torchvision ``[0, 0.5)``; ``bg_iou_high`` None = ``fg_iou_threshold``).
    append_gt: add the gt boxes to the candidate RoIs (torchvision, Detectron).
    pooler: ``"align"`` (RoIAlign) or ``"pool"`` (RoIPool, Fast R-CNN).
    feature: the single feature map to pool from when ``fpn_levels`` is empty (``"C4"``).
    fpn_levels: FPN levels to pool from (e.g. ``(2, 3, 4, 5)`` for P2..P5; RoIAlign only).
    output_size: pooled size (7; 14 for a ``res5`` head).
    sampling_ratio: RoIAlign samples per bin side (2, torchvision's detectors).
    aligned: RoIAlign's half-pixel shift (torchvision's detectors: False).
    box_weights: ``(wx, wy, ww, wh)`` of the regression targets (10, 10, 5, 5).
    smooth_l1_beta: smooth-L1 switch point (Fast R-CNN paper 1; torchvision 1/9).
    box_background_slot: the regression layer also predicts deltas for the background class
      (``4 (K + 1)`` outputs, torchvision's layout, ignored); False: ``4 K`` (the paper).
    score_threshold, nms_threshold, detections_per_image, min_size: inference (0.05, 0.5, 100,
      boxes with a side below ``min_size`` px dropped).
    row_buckets: at inference the box head, the post-processing (and a mask head) run on the
      smallest of ``S, ceil(S / 2), ..., ceil(S / 2**(row_buckets - 1))`` leading rows that holds
      every valid proposal (detection) of the batch (``switch_on_rows``): the same outputs, less
      work when NMS leaves most of the ``S`` slots empty. Each bucket is compiled once (1: always
      all ``S``). Training always uses all rows.
  """
  batch_size_per_image: int = 512
  positive_fraction: float = 0.25
  fg_iou_threshold: float = 0.5
  bg_iou_low: float = 0.0
  bg_iou_high: float | None = None
  append_gt: bool = True
  pooler: str = "align"
  feature: str = "C4"
  fpn_levels: tuple[int, ...] = ()
  output_size: int = 7
  sampling_ratio: int = 2
  aligned: bool = False
  box_weights: tuple[float, float, float, float] = box_coder.FAST_RCNN_WEIGHTS
  smooth_l1_beta: float = 1.0
  box_background_slot: bool = False
  score_threshold: float = 0.05
  nms_threshold: float = 0.5
  detections_per_image: int = 100
  min_size: float = 1e-2
  row_buckets: int = 4

  def __post_init__(self):
    object.__setattr__(self, "fpn_levels", tuple(int(v) for v in self.fpn_levels))
    object.__setattr__(self, "box_weights", tuple(float(w) for w in self.box_weights))
    if self.pooler not in POOLERS:
      raise ValueError(f"RoIHeadsConfig.pooler must be one of {POOLERS}, got {self.pooler!r}.")
    if self.fpn_levels and self.pooler != "align":
      raise ValueError("RoIHeadsConfig: multi-level (FPN) pooling is RoIAlign only; set "
                       "pooler='align' or fpn_levels=().")
    for name in ("batch_size_per_image", "output_size", "detections_per_image", "row_buckets"):
      v = getattr(self, name)
      if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v <= 0:
        raise ValueError(f"RoIHeadsConfig.{name} must be a positive int, got {v!r}.")
    if not 0.0 < self.positive_fraction <= 1.0:
      raise ValueError(f"RoIHeadsConfig.positive_fraction must be in (0, 1], got "
                       f"{self.positive_fraction!r}.")


# ------------------------------------------------------------------------------------------------
# Heads
# ------------------------------------------------------------------------------------------------


class TwoMLPHead(nn.Module):
  """Two fully connected layers with ReLU on flattened RoI features (torchvision's ``TwoMLPHead``).

  ``[N, h, w, C] -> [N, representation_size]``; submodules ``fc6``, ``fc7``.
  """
  representation_size: int = 1024
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    del train
    x = x.reshape(x.shape[0], -1)  # (N, h w C)
    x = nn.relu(nn.Dense(self.representation_size, dtype=self.dtype, name="fc6")(x))
    return nn.relu(nn.Dense(self.representation_size, dtype=self.dtype, name="fc7")(x))


class ConvBoxHead(nn.Module):
  """``num_convs`` 3x3 convolutions + ReLU, then one FC layer + ReLU (a light head for small runs).

  ``[N, h, w, C] -> [N, representation_size]``; submodules ``conv{i}``, ``fc``.
  """
  conv_features: int = 64
  num_convs: int = 2
  representation_size: int = 256
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    del train
    for i in range(self.num_convs):
      x = nn.relu(Conv(self.conv_features, (3, 3), padding="SAME", dtype=self.dtype,
                       name=f"conv{i}")(x))  # (N, h, w, F)
    x = x.reshape(x.shape[0], -1)
    return nn.relu(nn.Dense(self.representation_size, dtype=self.dtype, name="fc")(x))


class Res5Head(nn.Module):
  """ResNet's fifth stage (``conv5_x``, torchvision's ``layer4``) as the box head, then global
  average pooling: the C4 design (He et al. 2016 Sec. "Object detection"; Detectron's
  ``ResNet-C4``). ``[N, 14, 14, C4] -> [N, 8 width e]`` (``e`` = the block expansion).

  Parameter names match the backbone's stage 5 (``layer4_{b}/...``), so the stage of a pretrained
  ResNet can be loaded here. The first block has stride 2 (``dilation`` 1) as in the backbone.
  With ``norm="batch"`` in training the statistics include the zero features of padded RoIs;
  ``"frozen"`` (pretrained statistics, Detectron's choice) avoids that.

  Attributes:
    depth: ResNet depth (18, 34, 50, 101): picks the block type and the number of blocks.
    width: the backbone's ``width`` (stage 5 has ``8 width`` channels, times the expansion).
    norm: ``"batch"`` or ``"frozen"`` (see ``jaxvision.models.layers.norm.make_norm``).
  """
  depth: int = 50
  width: int = 64
  norm: str = "frozen"
  axis_name: str | None = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    from jaxvision.models.backbones.resnet import (  # noqa: PLC0415
        RESNET_STAGES, BasicBlock, Bottleneck)
    from jaxvision.models.layers.norm import make_norm  # noqa: PLC0415

    if self.depth not in RESNET_STAGES:
      raise ValueError(f"Res5Head depth must be one of {sorted(RESNET_STAGES)}, got "
                       f"{self.depth!r}.")
    kind, blocks = RESNET_STAGES[self.depth]
    block = BasicBlock if kind == "basic" else Bottleneck
    norm = make_norm(self.norm, train=train, axis_name=self.axis_name, dtype=self.dtype)
    for b in range(blocks[3]):
      x = block(self.width * 8, stride=2 if b == 0 else 1, norm=norm, dtype=self.dtype,
                name=f"layer4_{b}")(x)  # (N, h/2, w/2, 8 width e)
    return jnp.mean(x, axis=(1, 2))  # (N, 8 width e)


class FastRCNNPredictor(nn.Module):
  """Fast R-CNN's two sibling output layers (paper Sec. 2, Fig. 1).

  ``cls_score``: ``K + 1`` logits (index 0 = background); ``bbox_pred``: class-specific deltas,
  ``[N, K, 4]`` for the foreground classes (``background_slot``: torchvision's ``4 (K + 1)``
  outputs, whose background slot is dropped here). Initialised from N(0, 0.01^2) and N(0, 0.001^2)
  with zero biases (paper Sec. 2.3).
  """
  num_classes: int
  background_slot: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    k = self.num_classes
    logits = nn.Dense(k + 1, dtype=self.dtype, kernel_init=nn.initializers.normal(0.01),
                      name="cls_score")(x).astype(jnp.float32)  # (N, K + 1)
    n_box = k + 1 if self.background_slot else k
    deltas = nn.Dense(4 * n_box, dtype=self.dtype, kernel_init=nn.initializers.normal(0.001),
                      name="bbox_pred")(x).astype(jnp.float32)
    deltas = deltas.reshape(x.shape[0], n_box, 4)  # (N, K (+1), 4)
    if self.background_slot:
      deltas = deltas[:, 1:]  # (N, K, 4)
    return logits, deltas


# ------------------------------------------------------------------------------------------------
# RoI feature extraction
# ------------------------------------------------------------------------------------------------


def feature_scale(image_size: Sequence[int], feature_hw: Sequence[int]) -> float:
  """Spatial scale of a feature map: ``2 ** round(log2(feature_h / image_h))`` (torchvision's
  ``MultiScaleRoIAlign`` rule), e.g. 1/16 for ``C4`` of an 800 x 800 or a 600 x 1000 input."""
  ratio = float(feature_hw[0]) / float(image_size[0])
  return float(2.0 ** round(math.log2(ratio)))


def flatten_rois(rois, rois_valid, image_index=None):
  """``[B, S, 4]`` RoIs -> ``([B S, 4] boxes, [B S] image index)``, index -1 on invalid rows.

  ``image_index`` (``[B, S]`` int, default each row's position ``b`` in the batch) names the image
  a row's RoI lies in, for rows gathered from several images (Mask R-CNN's shared mask slots)."""
  b, s = rois.shape[:2]
  if image_index is None:
    image_index = jnp.broadcast_to(jnp.arange(b, dtype=jnp.int32)[:, None], (b, s))
  image_index = jnp.where(rois_valid, image_index, -1)
  return rois.reshape(b * s, 4), image_index.reshape(b * s)


def row_buckets(rows: int, count: int) -> tuple[int, ...]:
  """The row counts ``switch_on_rows`` chooses from: ``rows, ceil(rows / 2), ...`` (``count`` of
  them at most, distinct, >= 1), largest first."""
  sizes = [int(rows)]
  while len(sizes) < int(count) and sizes[-1] > 1:
    sizes.append(-(-sizes[-1] // 2))
  return tuple(sizes)


def switch_on_rows(module: nn.Module, fn, rows_valid, *operands, buckets: int,
                   axis_name: str | None = None):
  """``fn(module, n, *operands)`` for the smallest bucket ``n`` that holds every valid row.

  Two-stage detectors keep ``S`` RoI slots per image (1000 proposals, 512 sampled RoIs) so that
  shapes never change, but NMS or the sampler often fill only a few of them (a few hundred
  proposals survive NMS on a small image). ``fn`` computes on the first ``n`` slots of each image
  and must return the same shapes for every ``n`` (pad back to ``S``, or reduce). The bucket is the
  smallest of ``row_buckets(S, buckets)`` that is ``>=`` the last valid slot + 1 over the whole
  batch (``pmax`` over ``axis_name``, so that every device takes the same branch: a branch may hold
  collectives). ``flax.linen.switch`` runs only that branch; each branch is compiled once, so
  shapes stay static and nothing recompiles. Exact: the slots past the last valid one are padding
  whose outputs are never used.

  The detectors use it at inference only. Differentiating through it is correct, but XLA:CPU
  compiles the filter gradient of a convolution inside a conditional to a slow generic loop: the
  weight gradient of a 3x3 256 -> 256 convolution on 64 x 14 x 14 inputs took 36-50 s in a branch
  against 0.5 s outside (jax 0.10.2, 2-core CPU, 2026-11-22), which made Mask R-CNN's training
  step 4x slower instead of faster. (Forward convolutions and matrix products in a branch run at
  full speed.)

  Args:
    module: the bound module ``fn`` gets (its variables are shared by all branches).
    fn: ``fn(module, n, *operands)`` with static ``n``.
    rows_valid: ``[B, S]`` bool.
    *operands: passed to ``fn`` (pytrees of arrays).
    buckets: how many row counts to choose from (``row_buckets``); 1 always runs ``n = S``.
    axis_name: the data-parallel axis of the caller (None outside ``shard_map``/``pmap``).
  """
  s = rows_valid.shape[1]
  sizes = row_buckets(s, buckets)
  if len(sizes) == 1 or module.is_initializing():
    return fn(module, s, *operands)
  last = jnp.max(jnp.where(rows_valid, jnp.arange(1, s + 1, dtype=jnp.int32), 0))
  if axis_name is not None:
    last = jax.lax.pmax(last, axis_name)
  index = sum((last <= n).astype(jnp.int32) for n in sizes[1:])  # sizes are descending
  branches = [lambda mdl, *ops, n=n: fn(mdl, n, *ops) for n in sizes]
  return nn.switch(index, branches, module, *operands)


def bucketed_head(module: nn.Module, method: str, features, rois, rois_valid, *, all_rows: bool,
                  axis_name: str | None = None, **kwargs):
  """``getattr(module, method)(features, rois, rois_valid, **kwargs)`` (``[B, S, ...]`` outputs) on
  the smallest row bucket holding every valid RoI (``switch_on_rows``), the rows past it zeros; on
  all ``S`` rows when ``all_rows`` (training). The box head (``box_outputs``) and mask head
  (``mask_outputs``) of the two-stage detectors."""
  s = rois.shape[1]

  def head(mdl, n, feats, r, rv):
    out = getattr(mdl, method)(feats, r[:, :n], rv[:, :n], **kwargs)
    return jax.tree.map(lambda o: pad_rows(o, s), out)

  return switch_on_rows(module, head, rois_valid, features, rois, rois_valid,
                        buckets=1 if all_rows else module.roi_config.row_buckets,
                        axis_name=axis_name)


def pad_rows(x, rows: int, axis: int = 1):
  """Zero-pads axis ``axis`` of ``x`` to ``rows`` (the inverse of taking the first rows)."""
  pad = [(0, 0)] * x.ndim
  pad[axis] = (0, rows - x.shape[axis])
  return jnp.pad(x, pad)


def pool_rois(features: Mapping[str, jax.Array], rois, rois_valid, *, config: RoIHeadsConfig,
              image_size: Sequence[int], output_size: int | None = None, image_index=None):
  """Pools each RoI's features: ``[B, S, 4]`` RoIs -> ``[B S, oh, ow, C]``.

  Args:
    features: the feature dict (``config.feature`` or ``P<l>`` for ``config.fpn_levels``).
    rois: ``[B, S, 4]`` xyxy RoIs in input pixels.
    rois_valid: ``[B, S]`` bool; invalid rows pool to zeros and pass no gradient.
    config: the ``RoIHeadsConfig`` (pooler, levels, sampling).
    image_size: static ``(H, W)`` of the network input (the single-level spatial scale).
    output_size: overrides ``config.output_size`` (e.g. 14 for a mask branch).
    image_index: ``[B, S]`` int image of each row (default: the row's batch position ``b``).

  Returns:
    ``[B S, oh, ow, C]``.
  """
  size = int(output_size or config.output_size)
  boxes, index = flatten_rois(jnp.asarray(rois, jnp.float32), rois_valid, image_index)
  if config.fpn_levels:
    return roi_ops.multilevel_roi_align(features, boxes, index, levels=config.fpn_levels,
                                        output_size=size, sampling_ratio=config.sampling_ratio,
                                        aligned=config.aligned)
  if config.feature not in features:
    raise ValueError(f"RoIHeadsConfig.feature {config.feature!r} is not among the features "
                     f"{sorted(features)}.")
  fmap = features[config.feature]
  scale = feature_scale(image_size, fmap.shape[1:3])
  if config.pooler == "pool":
    return roi_ops.roi_pool(fmap, boxes, index, output_size=size, spatial_scale=scale)
  return roi_ops.roi_align(fmap, boxes, index, output_size=size, spatial_scale=scale,
                           sampling_ratio=config.sampling_ratio, aligned=config.aligned)


# ------------------------------------------------------------------------------------------------
# Training: sampling, targets, loss
# ------------------------------------------------------------------------------------------------


def sample_training_rois(key, proposals, proposals_valid, gt_boxes, gt_labels, gt_valid, *,
                         config: RoIHeadsConfig) -> sampling.RoiSample:
  """Fast R-CNN's RoI mini-batch for a batch of images (``sample_rois`` vmapped over images).

  Args:
    key: one PRNG key (split per image).
    proposals: ``[B, P, 4]``; proposals_valid ``[B, P]``.
    gt_boxes, gt_labels, gt_valid: ``[B, G, 4]``, ``[B, G]`` (1..K), ``[B, G]``.
    config: the ``RoIHeadsConfig``.

  Returns:
    A batched ``jaxvision.ops.sampling.RoiSample`` with ``[B, S]`` leaves (``S =
    batch_size_per_image``): foreground rows first, then background, then padding; gradient
    stopped (sampling is not differentiated).
  """
  b = proposals.shape[0]
  keys = jax.random.split(key, b)

  def one(k, p, pv, gb, gl, gv):
    return sampling.sample_rois(
        k, p, pv, gb, gl, gv, num_samples=config.batch_size_per_image,
        positive_fraction=config.positive_fraction, fg_iou_threshold=config.fg_iou_threshold,
        bg_iou_low=config.bg_iou_low, bg_iou_high=config.bg_iou_high, append_gt=config.append_gt)

  sample = jax.vmap(one)(keys, jax.lax.stop_gradient(proposals), proposals_valid,
                         gt_boxes.astype(jnp.float32), gt_labels.astype(jnp.int32), gt_valid)
  return jax.tree.map(jax.lax.stop_gradient, sample)


def box_head_targets(sample: sampling.RoiSample, config: RoIHeadsConfig):
  """Regression targets ``[..., S, 4]``: the matched gt encoded against its RoI (weights
  10, 10, 5, 5); 0 where the RoI is not foreground."""
  fg = sample.valid & (sample.labels > 0)
  targets = box_coder.encode_boxes(sample.matched_boxes, sample.rois, config.box_weights)
  return jnp.where(fg[..., None], targets, 0.0)


def box_head_loss(class_logits, box_deltas, sample: sampling.RoiSample, *, config: RoIHeadsConfig,
                  normalizer=None):
  """Fast R-CNN's multi-task loss (Eq. 1) of sampled RoIs: ``(classification, box regression)``.

  Args:
    class_logits: ``[..., S, K + 1]``.
    box_deltas: ``[..., S, K, 4]`` class-specific deltas.
    sample: the ``RoiSample`` (``[..., S]`` leaves) the heads were run on.
    config: the ``RoIHeadsConfig`` (weights, smooth-L1 beta).
    normalizer: the number of sampled RoIs (default: this batch's; ``psum`` it under data
      parallelism).

  Returns:
    ``(loss_cls, loss_box)``: summed cross-entropy over valid sampled RoIs and summed smooth-L1 over
    the four deltas of the *gt class* of each foreground RoI, each divided by ``normalizer``. The
    deltas predicted for every other class get no gradient.
  """
  labels = sample.labels  # (..., S) 0 background, 1..K
  valid = sample.valid
  k = box_deltas.shape[-2]
  logp = jax.nn.log_softmax(class_logits.astype(jnp.float32), axis=-1)  # (..., S, K + 1)
  nll = -jnp.take_along_axis(logp, jnp.clip(labels, 0, k)[..., None], axis=-1)[..., 0]
  cls_sum = jnp.sum(jnp.where(valid, nll, 0.0))
  fg = valid & (labels > 0)
  cls_index = jnp.clip(labels - 1, 0, k - 1)  # (..., S) the gt class's slot
  pred = jnp.take_along_axis(box_deltas.astype(jnp.float32), cls_index[..., None, None],
                             axis=-2)[..., 0, :]  # (..., S, 4)
  targets = box_head_targets(sample, config)
  l1 = smooth_l1_loss(pred, targets, beta=config.smooth_l1_beta).sum(-1)  # (..., S)
  box_sum = jnp.sum(jnp.where(fg, l1, 0.0))
  if normalizer is None:
    normalizer = jnp.sum(valid, dtype=jnp.float32)
  normalizer = jnp.maximum(jnp.asarray(normalizer, jnp.float32), 1.0)
  return cls_sum / normalizer, box_sum / normalizer


# ------------------------------------------------------------------------------------------------
# Inference
# ------------------------------------------------------------------------------------------------


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Detections:
  """``D`` detections of one image (or a batch): boxes ``[D, 4]``, scores ``[D]``, labels ``[D]``
  (1..K, 0 on padding), valid ``[D]``, and ``roi_index [D]`` (the RoI each came from, -1 on
  padding; Mask R-CNN pools its masks from the detections' boxes, but diagnostics use it)."""
  boxes: jax.Array
  scores: jax.Array
  labels: jax.Array
  valid: jax.Array
  roi_index: jax.Array

  def as_dict(self) -> dict[str, jax.Array]:
    return {"boxes": self.boxes, "scores": self.scores, "labels": self.labels, "valid": self.valid}


def postprocess_detections(class_logits, box_deltas, rois, rois_valid, image_hw, *,
                           config: RoIHeadsConfig) -> Detections:
  """Detections of one image from the heads' outputs (``jax.vmap`` over images).

  Each RoI gives one candidate per foreground class: the class-specific deltas decoded against the
  RoI and clipped to the image, scored by the softmax probability of that class. Candidates need
  ``score > score_threshold`` and both sides ``>= min_size``; class-aware NMS at
  ``nms_threshold`` then keeps at most ``detections_per_image`` over all classes (torchvision's
  ``postprocess_detections``).

  Args:
    class_logits: ``[R, K + 1]``; box_deltas ``[R, K, 4]``; rois ``[R, 4]``; rois_valid ``[R]``.
    image_hw: ``[2]`` (h, w) of the real image.
    config: the ``RoIHeadsConfig``.

  Returns:
    ``Detections`` with ``D = detections_per_image`` rows in descending score order.
  """
  r, k = box_deltas.shape[0], box_deltas.shape[1]
  probs = jax.nn.softmax(class_logits.astype(jnp.float32), axis=-1)[:, 1:]  # (R, K)
  boxes = box_coder.decode_boxes(box_deltas.astype(jnp.float32),
                                 rois[:, None, :].astype(jnp.float32),
                                 config.box_weights)  # (R, K, 4)
  boxes = box_ops.clip_boxes(boxes, image_hw)
  w = boxes[..., 2] - boxes[..., 0]
  h = boxes[..., 3] - boxes[..., 1]
  ok = rois_valid[:, None] & (w >= config.min_size) & (h >= config.min_size)
  scores = jnp.where(ok, probs, jnp.nan).reshape(r * k)  # NaN: never selected
  labels = jnp.broadcast_to(jnp.arange(1, k + 1, dtype=jnp.int32)[None, :], (r, k)).reshape(r * k)
  flat_boxes = boxes.reshape(r * k, 4)
  keep, valid = nms_ops.batched_nms(flat_boxes, scores, labels, iou_threshold=config.nms_threshold,
                                    max_output_size=config.detections_per_image,
                                    score_threshold=config.score_threshold)
  safe = jnp.where(valid, keep, 0)
  return Detections(
      boxes=jnp.where(valid[:, None], flat_boxes[safe], 0.0),
      scores=jnp.where(valid, scores[safe], 0.0),
      labels=jnp.where(valid, labels[safe], 0),
      valid=valid,
      roi_index=jnp.where(valid, safe // k, -1).astype(jnp.int32))
