"""Mask R-CNN: He, Gkioxari, Dollar and Girshick, "Mask R-CNN", ICCV 2017
(https://arxiv.org/abs/1703.06870).

Faster R-CNN (``faster_rcnn.py``, any of its presets: ResNet-C4 or FPN) plus a mask branch in
parallel with the box head. One jitted training step::

  features, RPN losses, proposals, RoI sample, box head losses   (faster_rcnn.py, unchanged)
  positive RoIs    = the batch's foreground RoIs gathered into B x P shared slots, padded
  mask features    = RoIAlign(features, positive RoIs)  14 x 14   (aligned, sampling 2; FPN: by level)
  mask logits      = 4 x (conv3x3 + ReLU) -> deconv 2x2 stride 2 + ReLU -> conv1x1 -> [P, 28, 28, K]
  mask targets     = RoIAlign(gt mask of the RoI's matched gt, RoI) 28 x 28, >= 0.5
                     (``jaxvision.ops.masks.mask_targets``; masks stored at ``mask_stride``)
  L = rpn_cls + rpn_box + head_cls + head_box + mask

* **Mask loss** (paper Sec. 3, "L_mask"): per-pixel sigmoid binary cross-entropy on the ``m x m``
  mask of the RoI's **ground-truth class only** (``binary_mask_loss``); the other ``K - 1``
  masks get no gradient, so classes do not compete. Averaged over the pixels of the valid positive
  RoIs; the number of positives is ``psum``-ed over ``axis_name``. The paper's ablation
  ``mask_head.loss = "softmax"`` (Table 2b, "multinomial") predicts ``K + 1`` channels (channel 0
  = background) and applies a per-pixel softmax cross-entropy over them, the target of a pixel
  being the RoI's class inside the gt mask and background outside: classes compete.
* **RoIAlign vs RoIPool** (Table 2c): ``mask_head.pooler = "pool"`` pools the mask features with
  RoIPool's quantized bins (max); with FPN the RoIs are assigned to levels by the FPN rule and each
  level is pooled with its RoIs (others masked out), a small cost since only ``P`` positive RoIs
  per image enter the mask branch. The box head keeps ``roi_heads.pooler``.
* **Static shapes**: the mask branch runs ``B x P`` rows (``B`` images on this device, ``P =
  mask_head.rois_per_image``; default the sampler's largest foreground count,
  ``int(batch_size_per_image * positive_fraction)``, so no positive is ever dropped) whatever the
  number of gt boxes, padded rows invalid. The rows are **shared by the batch's images**
  (``select_mask_rois``): the foreground RoIs of all images are gathered into them, so with a
  smaller ``P`` an image with many positives uses the slots that a sparse image leaves free. Only
  when the batch has more than ``B x P`` positives is a uniformly random subset of ``B x P`` kept
  (every positive equally likely; the loss is the mean over the kept ones, an unbiased estimate of
  the mean over all) and the rest counted (``num_mask_rois_dropped``). The mask head's convolutions
  on these rows dominate the training step (torchvision runs only the actual positives, e.g. ~22
  per image where ``P = 128``): ``rois_per_image`` is the knob. The number of gt boxes ``M``, of
  proposals and of detections never changes a shape (the tests count traces). At inference the
  mask head runs on the smallest row bucket (``D``, ``D / 2``, ...; ``roi_heads.switch_on_rows``)
  that holds the batch's valid detections.
* **Inference** (Sec. 3 "Inference"): the ``D`` detections of Faster R-CNN (class-aware NMS), the
  mask branch on the detected boxes, the predicted class's mask (sigmoid, or softmax probability
  of the class), pasted into the network-input frame at the box by bilinear resampling and
  binarized at 0.5 (``jaxvision.ops.masks.paste_masks``): ``masks`` ``[B, D, H, W]`` bool, False
  for padded detections.
* **Bad input**: crowd gt regions and degenerate boxes are never matched (``gt_from_batch``), so
  they get no mask loss; an image without instances contributes no positive RoI; empty masks give
  all-zero targets; every term stays finite (tests).

Parameters: ``backbone``, ``neck``, ``rpn_head``, ``box_head``, ``box_predictor`` (as Faster
R-CNN) and ``mask_head`` (``mask_fcn1..4``, ``conv5_mask``, ``mask_fcn_logits``: torchvision's
``MaskRCNNHeads`` / ``MaskRCNNPredictor`` names). With the ``c4`` preset the mask branch pools 14
x 14 from ``C4`` and runs the same 4-conv head (the paper's C4 design instead shares the ``res5``
head; not reproduced).

Memory of masks: the batch holds ``[B, M, H / s, W / s]`` bool masks (``config.data.mask_stride``
``s``, e.g. 4 for COCO: 1/16 of full resolution); the targets are RoIAligned from them; predictions
are ``[B, D, H, W]`` bool in the input frame (what ``jaxvision.train.evaluators`` expects).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxvision.losses import binary_mask_loss
from jaxvision.models.detection import faster_rcnn as frcnn
from jaxvision.models.detection import roi_heads as heads
from jaxvision.models.family import Family
from jaxvision.models.layers.conv import Conv, ConvTranspose
from jaxvision.ops import masks as mask_ops
from jaxvision.ops import roi as roi_ops

__all__ = [
    "MASK_POOLERS", "MASK_LOSSES", "MaskHeadConfig", "MaskRCNNHead", "MaskRCNN", "pool_mask_rois",
    "mask_loss", "select_mask_rois", "mask_branch_loss", "mask_rcnn_losses", "mask_probabilities",
    "mask_rcnn_detect", "build_mask_rcnn", "make_mask_rcnn", "MASK_PASTES", "paste_masks_torchvision",
]

MASK_POOLERS = ("align", "pool")
MASK_LOSSES = ("sigmoid", "softmax")
MASK_PASTES = ("bilinear", "torchvision")


@dataclasses.dataclass(frozen=True)
class MaskHeadConfig:
  """``config.model.mask_head`` (hashable: a module attribute).

  Attributes:
    pooler: ``"align"`` (RoIAlign, the paper) or ``"pool"`` (RoIPool, the Table 2c ablation).
    loss: ``"sigmoid"`` (per-class binary masks, the paper) or ``"softmax"`` (a per-pixel softmax
      over ``K + 1`` channels: the Table 2b ablation).
    output_size: pooled RoI features (14); the predicted masks are ``2 x`` that (28).
    sampling_ratio: RoIAlign samples per bin side (2), also for the targets.
    aligned: RoIAlign's half-pixel shift (True, Detectron2; torchvision's Mask R-CNN uses False).
    num_convs, conv_features: the head's 3x3 convolutions (4 of 256).
    rois_per_image: ``P``: the mask branch runs ``B x P`` rows shared by the ``B`` images of a
      device's batch (None: the sampler's maximum number of foreground RoIs per image, so no
      positive is ever dropped; smaller is faster, and positives beyond ``B x P`` are subsampled
      and counted in ``num_mask_rois_dropped``).
    threshold: binarization of pasted masks (0.5).
    loss_weight: the mask term's weight (1).
    background_slot: the sigmoid head also predicts a (never trained) background channel 0, so
      class ``k`` is channel ``k`` (torchvision's ``MaskRCNNPredictor`` layout, for converted
      weights); None follows ``roi_heads.box_background_slot``. The softmax head always has it.
    paste: how inference pastes the ``m x m`` probabilities into the image: ``"bilinear"``
      (``jaxvision.ops.masks.paste_masks``: continuous box coordinates) or ``"torchvision"``
      (``paste_masks_torchvision``: torchvision's ``paste_masks_in_image``, the mask padded by one
      pixel and pasted at integer (truncated) box corners, ``+ 1`` pixel wide), for converted
      weights.

  ``make_mask_rcnn`` with ``preset="torchvision_fpn"`` sets ``aligned=False`` and
  ``paste="torchvision"`` unless ``model.mask_head`` gives them (torchvision's architecture).
  """
  pooler: str = "align"
  loss: str = "sigmoid"
  output_size: int = 14
  sampling_ratio: int = 2
  aligned: bool = True
  num_convs: int = 4
  conv_features: int = 256
  rois_per_image: int | None = None
  threshold: float = 0.5
  loss_weight: float = 1.0
  background_slot: bool | None = None
  paste: str = "bilinear"

  def __post_init__(self):
    if self.pooler not in MASK_POOLERS:
      raise ValueError(f"model.mask_head.pooler must be one of {MASK_POOLERS}, got "
                       f"{self.pooler!r}.")
    if self.loss not in MASK_LOSSES:
      raise ValueError(f"model.mask_head.loss must be one of {MASK_LOSSES}, got {self.loss!r}.")
    for name in ("output_size", "sampling_ratio", "conv_features"):
      v = getattr(self, name)
      if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v <= 0:
        raise ValueError(f"model.mask_head.{name} must be a positive int, got {v!r}.")
    v = self.num_convs
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
      raise ValueError(f"model.mask_head.num_convs must be an int >= 0, got {v!r}.")
    v = self.rois_per_image
    if v is not None and (isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v <= 0):
      raise ValueError(f"model.mask_head.rois_per_image must be None or a positive int, got "
                       f"{v!r}.")
    if not 0.0 < float(self.threshold) < 1.0:
      raise ValueError(f"model.mask_head.threshold must be in (0, 1), got {self.threshold!r}.")
    if self.paste not in MASK_PASTES:
      raise ValueError(f"model.mask_head.paste must be one of {MASK_PASTES}, got {self.paste!r}.")
    if not float(self.loss_weight) >= 0.0:
      raise ValueError(f"model.mask_head.loss_weight must be >= 0, got {self.loss_weight!r}.")

  @property
  def mask_size(self) -> int:
    return 2 * int(self.output_size)

  @property
  def channel_offset(self) -> int:
    """Channel of class 1 (0, or 1 with a background channel)."""
    return 1 if (self.loss == "softmax" or self.background_slot) else 0


class MaskRCNNHead(nn.Module):
  """The FPN mask head (paper Fig. 4 right): ``[N, 14, 14, C] -> [N, 28, 28, num_outputs]`` logits.

  ``num_convs`` x (3x3 conv + ReLU) -> 2x2 stride-2 transposed conv + ReLU -> 1x1 conv. He
  (fan-out) initialisation as torchvision's ``MaskRCNNHeads``/``MaskRCNNPredictor``.
  """
  num_outputs: int
  num_convs: int = 4
  conv_features: int = 256
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
    for i in range(self.num_convs):
      x = nn.relu(Conv(self.conv_features, (3, 3), padding="SAME", kernel_init=init,
                       dtype=self.dtype, name=f"mask_fcn{i + 1}")(x))  # (N, 14, 14, F)
    x = nn.relu(ConvTranspose(self.conv_features, (2, 2), strides=(2, 2), padding="VALID",
                                 kernel_init=init, dtype=self.dtype, name="conv5_mask")(x))
    x = Conv(self.num_outputs, (1, 1), kernel_init=init, dtype=self.dtype,
             name="mask_fcn_logits")(x)  # (N, 28, 28, K)
    return x.astype(jnp.float32)


def pool_mask_rois(features: Mapping[str, jax.Array], rois, rois_valid, *,
                   roi_config: heads.RoIHeadsConfig, mask_config: MaskHeadConfig, image_size,
                   image_index=None):
  """Mask-branch RoI features: ``[B, S, 4]`` RoIs -> ``[B S, 14, 14, C]``.

  RoIAlign (``aligned``, ``sampling_ratio`` from ``mask_config``) on the box head's feature map or
  FPN levels, or RoIPool (``pooler="pool"``; with FPN levels each level pools the RoIs the FPN rule
  assigns to it, the others masked out, and the results are summed). ``image_index`` (``[B, S]``)
  names each row's image when rows come from several images (default: row ``b`` is image ``b``).
  """
  size = mask_config.output_size
  if mask_config.pooler == "align":
    cfg = dataclasses.replace(roi_config, pooler="align", sampling_ratio=mask_config.sampling_ratio,
                              aligned=mask_config.aligned)
    return heads.pool_rois(features, rois, rois_valid, config=cfg, image_size=image_size,
                           output_size=size, image_index=image_index)
  if not roi_config.fpn_levels:
    cfg = dataclasses.replace(roi_config, pooler="pool")
    return heads.pool_rois(features, rois, rois_valid, config=cfg, image_size=image_size,
                           output_size=size, image_index=image_index)
  levels = roi_config.fpn_levels
  b, s = rois.shape[:2]
  level = roi_ops.assign_fpn_levels(jnp.asarray(rois, jnp.float32).reshape(b * s, 4),
                                    k_min=levels[0], k_max=levels[-1]).reshape(b, s)
  out = None
  for lvl in levels:  # a handful of static levels
    cfg = dataclasses.replace(roi_config, pooler="pool", fpn_levels=(), feature=f"P{lvl}")
    pooled = heads.pool_rois(features, rois, rois_valid & (level == lvl), config=cfg,
                             image_size=image_size, output_size=size, image_index=image_index)
    out = pooled if out is None else out + pooled
  return out


class MaskRCNN(frcnn.FasterRCNN):
  """Faster R-CNN (every field and stage method of ``FasterRCNN``) plus the mask branch.

  Attributes:
    mask_head: a ``MaskRCNNHead`` (``K`` outputs for the sigmoid loss, ``K + 1`` for softmax).
    mask_config: the ``MaskHeadConfig``.
  """
  mask_head: nn.Module | None = None
  mask_config: MaskHeadConfig = MaskHeadConfig()

  def mask_logits(self, features: Mapping[str, jax.Array], rois, rois_valid, *, image_size,
                  train: bool = False, axis_name: str | None = None):
    """Mask head on ``[B, S, 4]`` RoIs: ``[B, S, 28, 28, K (+1)]`` logits; at inference computed on
    the leading rows that hold every valid RoI (``roi_config.row_buckets``; zeros past them), in
    training (``train=True``) on all ``S``."""
    return heads.bucketed_head(self, "mask_outputs", features, rois, rois_valid, all_rows=train,
                               axis_name=axis_name, image_size=image_size)

  def mask_outputs(self, features: Mapping[str, jax.Array], rois, rois_valid, *, image_size,
                   image_index=None):
    """``mask_logits`` on all ``S`` rows (no buckets); ``image_index`` ``[B, S]`` as in
    ``pool_mask_rois``."""
    b, s = rois.shape[:2]
    pooled = pool_mask_rois(features, rois, rois_valid, roi_config=self.roi_config,
                            mask_config=self.mask_config, image_size=image_size,
                            image_index=image_index)  # (B S, 14, 14, C)
    logits = self.mask_head(pooled)  # (B S, 28, 28, K)
    return logits.reshape((b, s) + logits.shape[1:])

  def __call__(self, images, train: bool = False):
    """Every stage once (initialisation): features, RPN, box and mask heads on the whole image."""
    feats = self.features(images, train=train)
    out = {}
    if self.rpn_head is not None:
      out["rpn_logits"], out["rpn_deltas"] = self.rpn(feats)
    b, h, w = images.shape[:3]
    rois = jnp.broadcast_to(jnp.asarray([0.0, 0.0, w, h], jnp.float32), (b, 1, 4))
    valid = jnp.ones((b, 1), bool)
    out["class_logits"], out["box_deltas"] = self.roi_heads(feats, rois, valid, image_size=(h, w),
                                                            train=train)
    out["mask_logits"] = self.mask_logits(feats, rois, valid, image_size=(h, w))
    return out


# ------------------------------------------------------------------------------------------------
# Loss
# ------------------------------------------------------------------------------------------------


def mask_loss(mask_logits, targets, labels, valid, *, kind: str = "sigmoid", normalizer=None,
              channel_offset: int = 0):
  """The mask term of a set of RoIs.

  Args:
    mask_logits: ``[..., P, m, m, C]``: ``C = K`` (``kind="sigmoid"``) or ``K + 1``
      (``"softmax"``, channel 0 = background).
    targets: ``[..., P, m, m]`` binary targets (``mask_ops.mask_targets``).
    labels: ``[..., P]`` int gt class 1..K of each RoI.
    valid: ``[..., P]`` bool, the valid positive RoIs.
    kind: ``"sigmoid"``: binary cross-entropy on the gt class's channel only (the other channels
      get zero gradient); ``"softmax"``: per-pixel softmax cross-entropy over all channels with
      target class ``labels`` inside the mask and 0 outside.
    normalizer: the number of valid positive RoIs (default this batch's; ``psum`` it under data
      parallelism). The sum is divided by ``max(normalizer, 1) * m * m``.
    channel_offset: sigmoid only: class ``k`` is channel ``k - 1 + channel_offset`` (1 with a
      background channel, ``MaskHeadConfig.background_slot``).

  Returns:
    The scalar loss.
  """
  if kind not in MASK_LOSSES:
    raise ValueError(f"mask loss kind must be one of {MASK_LOSSES}, got {kind!r}.")
  mask_logits = jnp.asarray(mask_logits, jnp.float32)
  c = mask_logits.shape[-1]
  m2 = mask_logits.shape[-2] * mask_logits.shape[-3]
  labels = jnp.asarray(labels, jnp.int32)
  valid = jnp.asarray(valid, bool)
  if kind == "sigmoid":
    index = jnp.clip(labels - 1 + channel_offset, 0, c - 1)[..., None, None, None]  # (..., P, 1,1,1)
    picked = jnp.take_along_axis(mask_logits, index, axis=-1)[..., 0]  # (..., P, m, m)
    per_pixel = binary_mask_loss(picked, targets, valid)
  else:
    cls = jnp.where(jnp.asarray(targets) >= 0.5, jnp.clip(labels, 0, c - 1)[..., None, None], 0)
    logp = jax.nn.log_softmax(jnp.where(valid[..., None, None, None], mask_logits, 0.0), axis=-1)
    nll = -jnp.take_along_axis(logp, cls[..., None], axis=-1)[..., 0]  # (..., P, m, m)
    per_pixel = jnp.where(valid[..., None, None], nll, 0.0)
  if normalizer is None:
    normalizer = jnp.sum(valid, dtype=jnp.float32)
  normalizer = jnp.maximum(jnp.asarray(normalizer, jnp.float32), 1.0) * m2
  return jnp.sum(per_pixel) / normalizer


def _mask_stride(batch) -> int:
  frcnn.check_batch(batch)
  if "masks" not in batch:
    raise ValueError("Mask R-CNN trains on instance masks: the batch lacks 'masks' [B, M, H/s, W/s] "
                     "(set config.data.keep_masks = True); got keys " f"{sorted(batch)}.")
  masks, image = batch["masks"], batch["image"]
  b, m = batch["boxes"].shape[:2]
  if masks.ndim != 4 or tuple(masks.shape[:2]) != (b, m):
    raise ValueError(f"batch['masks'] must be [B, M, H/s, W/s] with B, M = {(b, m)}, got shape "
                     f"{tuple(masks.shape)}.")
  h, w = image.shape[1:3]
  s = h // masks.shape[2] if masks.shape[2] else 0
  if s < 1 or masks.shape[2] * s != h or masks.shape[3] * s != w:
    raise ValueError(f"batch['masks'] spatial size {tuple(masks.shape[2:])} must be the image size "
                     f"{(h, w)} divided by an integer mask_stride.")
  return int(s)


def num_mask_rois(module: MaskRCNN) -> int:
  """``P``: positive RoIs per image entering the mask branch."""
  cfg = module.mask_config
  if cfg.rois_per_image is not None:
    return int(cfg.rois_per_image)
  roi = module.roi_config
  return max(int(roi.batch_size_per_image * roi.positive_fraction), 1)


def select_mask_rois(key, sample, slots: int):
  """The foreground rows of a batched ``RoiSample`` (``[B, S]``) gathered into ``slots`` rows
  shared by the batch's images.

  Every valid foreground row is kept when there are at most ``slots`` of them; otherwise a
  uniformly random subset of ``slots`` (each foreground row equally likely, whatever its image).

  Returns:
    ``(rows, image_index, valid, num_dropped)``: ``rows`` ``[N]`` indices into the flattened ``B
    S`` rows (``N = min(slots, B S)``), ``image_index`` ``[N]`` the image of each, ``valid`` ``[N]``
    bool (False on padding rows), ``num_dropped`` the foreground rows left out (float32 scalar).
  """
  b, s = sample.labels.shape
  pos = (sample.valid & (sample.labels > 0)).reshape(b * s)
  n = min(int(slots), b * s)
  # Foreground rows in (1, 2), the rest 0: top_k takes every foreground row while they fit and a
  # uniform random subset of them when they do not.
  priority = jnp.where(pos, 1.0 + jax.random.uniform(key, (b * s,), minval=0.0, maxval=0.5), 0.0)
  _, rows = jax.lax.top_k(priority, n)
  valid = pos[rows]
  num_dropped = jnp.sum(pos, dtype=jnp.float32) - jnp.sum(valid, dtype=jnp.float32)
  return rows, (rows // s).astype(jnp.int32), valid, num_dropped


def mask_branch_loss(module: MaskRCNN, features, sample, batch, key, *,
                     axis_name: str | None = None):
  """Mask loss of a batched ``RoiSample`` (``[B, S]``): ``(loss, num_positive_rois,
  num_dropped)``.

  The batch's valid foreground rows go to the mask head through ``B x P`` shared slots
  (``select_mask_rois`` with ``key``: all of them when they fit, a uniform random subset
  otherwise); the loss is the mean over the positives kept (``psum``-ed over ``axis_name``).
  """
  stride = _mask_stride(batch)
  cfg = module.mask_config
  b, s = sample.labels.shape
  rows, image_index, pos, n_dropped = select_mask_rois(key, sample, b * num_mask_rois(module))
  rois = sample.rois.reshape(b * s, 4)[rows]  # (N, 4)
  labels = sample.labels.reshape(b * s)[rows]
  gt_index = jnp.where(pos, sample.matched_gt.reshape(b * s)[rows], -1)
  targets = mask_ops.mask_targets(batch["masks"], rois, image_index, gt_index,
                                  output_size=cfg.mask_size, mask_stride=stride,
                                  sampling_ratio=cfg.sampling_ratio)  # (N, m, m)
  logits = module.mask_outputs(features, rois[None], pos[None],
                               image_size=frcnn.batch_image_size(batch),
                               image_index=image_index[None])[0]  # (N, m, m, K)
  n_pos = jnp.sum(pos, dtype=jnp.float32)
  normalizer = n_pos if axis_name is None else jax.lax.psum(n_pos, axis_name)
  loss = mask_loss(logits, targets, labels, pos, kind=cfg.loss, normalizer=normalizer,
                   channel_offset=cfg.channel_offset)
  return cfg.loss_weight * loss, n_pos, n_dropped


def mask_rcnn_losses(module: MaskRCNN, batch, key, *, axis_name: str | None = None):
  """The training loss of a batch: ``(total, terms)``; terms ``rpn_cls``, ``rpn_box``,
  ``head_cls``, ``head_box``, ``mask`` (each this device's share) and diagnostics."""
  _mask_stride(batch)  # fail early on a batch without masks
  rpn_key, roi_key = jax.random.split(key)
  mask_key = jax.random.fold_in(key, 3)  # leaves the RPN and RoI sampling streams as they were
  feats = module.features(batch["image"], train=True)
  rpn_cls, rpn_box, proposals = frcnn.rpn_losses_and_proposals(module, feats, batch, rpn_key,
                                                               train=True, axis_name=axis_name)
  head_cls, head_box, sample = frcnn.box_losses(module, feats, proposals.boxes, proposals.valid,
                                                batch, roi_key, axis_name=axis_name)
  loss_mask, n_pos, n_dropped = mask_branch_loss(module, feats, sample, batch, mask_key,
                                                 axis_name=axis_name)
  terms = {"rpn_cls": rpn_cls, "rpn_box": rpn_box, "head_cls": head_cls, "head_box": head_box,
           "mask": loss_mask}
  n_dev = jnp.float32(1.0) if axis_name is None else jax.lax.psum(jnp.float32(1.0), axis_name)
  b = sample.valid.shape[0]
  terms["num_fg_rois"] = jnp.sum(sample.valid & (sample.labels > 0), dtype=jnp.float32) / (n_dev * b)
  terms["num_mask_rois"] = n_pos / (n_dev * b)
  terms["num_mask_rois_dropped"] = n_dropped / (n_dev * b)
  terms["num_proposals"] = jnp.sum(proposals.valid, dtype=jnp.float32) / (n_dev * b)
  total = rpn_cls + rpn_box + head_cls + head_box + loss_mask
  return total, terms


# ------------------------------------------------------------------------------------------------
# Inference
# ------------------------------------------------------------------------------------------------


def mask_probabilities(mask_logits, labels, *, kind: str = "sigmoid", channel_offset: int = 0):
  """``[..., D, m, m, C]`` logits -> ``[..., D, m, m]`` probability of each detection's class
  (labels 1..K; sigmoid of channel ``label - 1 + channel_offset``, or its softmax probability over
  the ``K + 1``)."""
  c = mask_logits.shape[-1]
  if kind == "sigmoid":
    index = jnp.clip(labels - 1 + channel_offset, 0, c - 1)
    probs = jax.nn.sigmoid(mask_logits)
  else:
    index = jnp.clip(labels, 0, c - 1)
    probs = jax.nn.softmax(mask_logits, axis=-1)
  return jnp.take_along_axis(probs, index[..., None, None, None], axis=-1)[..., 0]


def _torchvision_paste_weights(start, end, out_size: int, m: int):
  """``[D, out_size, m + 2]`` weights of torchvision's paste along one axis: the ``m + 2`` padded
  mask resized (bilinear, ``align_corners=False``) to ``end - start + 1`` pixels placed at the
  integer ``start``; zero elsewhere."""
  length = (end - start + 1.0)[:, None, None]  # (D, 1, 1), >= 1
  pos = jnp.arange(out_size, dtype=jnp.float32)[None, :, None] - start[:, None, None]  # (D, X, 1)
  inside = (pos >= 0) & (pos < length)
  src = jnp.maximum((pos + 0.5) * ((m + 2) / length) - 0.5, 0.0)  # PyTorch's source index
  lo = jnp.floor(src)
  frac = src - lo
  hi = jnp.minimum(lo + 1.0, m + 1.0)
  taps = jnp.arange(m + 2, dtype=jnp.float32)[None, None, :]  # (1, 1, m + 2)
  w = jnp.where(taps == lo, 1.0 - frac, 0.0) + jnp.where(taps == hi, frac, 0.0)
  return jnp.where(inside, w, 0.0)


def paste_masks_torchvision(masks, boxes, image_size, *, threshold: float | None = 0.5):
  """torchvision's ``paste_masks_in_image(masks, boxes, image_size, padding=1)`` with static
  shapes: ``[D, m, m]`` probabilities -> ``[D, H, W]`` (``> threshold`` as bool, the binarization
  of torchvision's COCO evaluation ``masks > 0.5``; None: the floats).

  Each mask is zero-padded to ``m + 2`` and its box scaled about its centre by ``(m + 2) / m``;
  the box corners are truncated to integers ``x0, y0, x1, y1``, the padded mask is resized to
  ``(y1 - y0 + 1, x1 - x0 + 1)`` pixels (bilinear, ``align_corners=False``) and placed with its
  top-left pixel at ``(y0, x0)``, cropped to the image. (``jaxvision.ops.masks.paste_masks``
  resamples at continuous box coordinates instead; the two differ by about a pixel at mask
  edges.)
  """
  masks = jnp.asarray(masks, jnp.float32)
  d, mh, mw = masks.shape
  h, w = int(image_size[0]), int(image_size[1])
  boxes = jnp.asarray(boxes, jnp.float32)
  padded = jnp.pad(masks, ((0, 0), (1, 1), (1, 1)))
  half_w = (boxes[:, 2] - boxes[:, 0]) * 0.5 * ((mw + 2) / mw)
  half_h = (boxes[:, 3] - boxes[:, 1]) * 0.5 * ((mh + 2) / mh)
  cx, cy = (boxes[:, 2] + boxes[:, 0]) * 0.5, (boxes[:, 3] + boxes[:, 1]) * 0.5
  x0, x1 = jnp.trunc(cx - half_w), jnp.trunc(cx + half_w)  # .to(int64) truncates toward 0
  y0, y1 = jnp.trunc(cy - half_h), jnp.trunc(cy + half_h)
  x1 = jnp.maximum(x1, x0)  # torchvision: at least one pixel
  y1 = jnp.maximum(y1, y0)
  wy = _torchvision_paste_weights(y0, y1, h, mh)  # (D, H, mh + 2)
  wx = _torchvision_paste_weights(x0, x1, w, mw)  # (D, W, mw + 2)
  rows = jnp.einsum("dym,dmn->dyn", wy, padded)
  pasted = jnp.einsum("dyn,dxn->dyx", rows, wx)  # (D, H, W)
  pasted = jnp.where(jnp.isfinite(pasted), pasted, 0.0)
  return pasted if threshold is None else pasted > threshold


def mask_rcnn_detect(module: MaskRCNN, batch) -> dict[str, jax.Array]:
  """Inference: Faster R-CNN's ``D`` detections, then the mask branch on the detected boxes and the
  predicted class's mask pasted into the network-input frame: ``{"boxes", "scores", "labels",
  "valid", "masks" [B, D, H, W] bool}``."""
  cfg = module.mask_config
  image_size = frcnn.batch_image_size(batch)
  feats = module.features(batch["image"], train=False)
  proposals = frcnn.inference_proposals(module, feats, batch)
  dets = frcnn.detect_from_proposals(module, feats, proposals.boxes, proposals.valid, batch)
  logits = module.mask_logits(feats, dets.boxes, dets.valid, image_size=image_size)
  probs = mask_probabilities(logits, dets.labels, kind=cfg.loss,
                             channel_offset=cfg.channel_offset)  # (B, D, 28, 28)
  paste_fn = paste_masks_torchvision if cfg.paste == "torchvision" else mask_ops.paste_masks
  paste = jax.vmap(lambda pr, bx: paste_fn(pr, bx, image_size, threshold=cfg.threshold))
  masks = paste(probs, dets.boxes) & dets.valid[..., None, None]  # (B, D, H, W)
  return {**dets.as_dict(), "masks": masks}


# ------------------------------------------------------------------------------------------------
# Building from a config
# ------------------------------------------------------------------------------------------------


def build_mask_rcnn(model_config: Any, num_classes: int) -> MaskRCNN:
  """The ``MaskRCNN`` module for ``model_config`` (see ``make_mask_rcnn``)."""
  cfg = frcnn.as_config_dict(model_config)
  section = cfg.pop("mask_head", None)
  mask_cfg = frcnn.dataclass_from_section(MaskHeadConfig, frcnn.as_config_dict(section),
                                          "mask_head")
  dtype = jnp.dtype(cfg.get("dtype") or "float32")
  given = set(frcnn.as_config_dict(section))
  if cfg.get("preset") == "torchvision_fpn":  # torchvision's MaskRCNN: RoIAlign aligned=False
    mask_cfg = dataclasses.replace(  # and its paste_masks_in_image, unless given
        mask_cfg, **{k: v for k, v in (("aligned", False), ("paste", "torchvision"))
                     if k not in given})
  if mask_cfg.background_slot is None:
    roi = frcnn.resolve_config(cfg)["roi_heads"]
    mask_cfg = dataclasses.replace(mask_cfg,
                                   background_slot=bool(roi.get("box_background_slot", False)))
  outputs = num_classes + mask_cfg.channel_offset
  head = MaskRCNNHead(num_outputs=outputs, num_convs=mask_cfg.num_convs,
                      conv_features=mask_cfg.conv_features, dtype=dtype)
  return frcnn.build_faster_rcnn(cfg, num_classes, module_cls=MaskRCNN, mask_head=head,
                                 mask_config=mask_cfg)


def make_mask_rcnn(model_config: Any, num_classes: int) -> Family:
  """Builds the Mask R-CNN family from ``config.model`` (``MODELS["mask_rcnn"]``).

  Args:
    model_config: every key of ``faster_rcnn.make_faster_rcnn`` (``preset`` ``"c4"`` default,
      ``"fpn"``, ``"torchvision_fpn"``; ``backbone``, ``neck``, ``rpn``, ``roi_heads``,
      ``box_head``, ``axis_name``, ``dtype``) plus ``mask_head``: the fields of
      ``MaskHeadConfig`` (``pooler``, ``loss``, ``output_size``, ``num_convs``,
      ``conv_features``, ``rois_per_image``, ...).
    num_classes: K foreground classes (labels 1..K).

  Returns:
    An ``"instance_segmentation"`` ``Family``: ``train_loss`` needs the batch's ``masks``
    (``config.data.keep_masks = True``); ``predict`` adds ``masks [B, D, H, W]`` bool.

  Raises:
    ValueError: unknown keys or bad values, naming them (e.g. ``model.mask_head.pooler``).
  """
  module = build_mask_rcnn(model_config, num_classes)
  return frcnn.detection_family(module, num_classes, mask_rcnn_losses, mask_rcnn_detect,
                                task="instance_segmentation")
