"""R-CNN: Girshick, Donahue, Darrell and Malik, "Rich feature hierarchies for accurate object
detection and semantic segmentation", CVPR 2014 (https://arxiv.org/abs/1311.2524).

The first CNN region detector: region proposals (selective search, ``jaxvision.data.
selective_search``, as a host-side data transform: ``config.data.proposals =
"selective_search"``), each proposal *warped* to a fixed size and passed through a CNN on its own,
then one linear SVM per class on the CNN features and a class-specific bounding-box regressor.

* **Warping** (paper Sec. 2.1, Appendix A): the proposal is dilated so that, once warped, there are
  ``p`` pixels of image context around it (the paper: ``p = 16`` in a ``227 x 227`` warp, i.e.
  7% of the side on each side; here ``context_padding`` is that fraction, ``16 / 227``), and the
  dilated box is resampled anisotropically to ``warp_size x warp_size`` (32) with bilinear
  RoIAlign on the image itself (``jaxvision.ops.roi.roi_align``, ``aligned=True``, one sample
  per output pixel: a bilinear resize of the region), so warping is part of the jitted step;
  context outside the image is zero, i.e. the mean image after normalization (the paper also
  fills with the mean).
* **CNN**: ``stages`` x (3x3 conv + ReLU + 2x2 max pool) (``pool5``), then ``fc6``, ``fc7``
  (the paper: AlexNet, fine-tuned from ImageNet; here a small net from scratch).
* **Fine-tuning** (Sec. 2.3): a ``K + 1``-way softmax on ``fc7``, trained with SGD on mini-batches
  of ``32`` positive windows (IoU ``>= 0.5`` with a gt box, its class; gt boxes are added to the
  candidates) and ``96`` background windows (everything else, IoU ``< 0.5``): ``rois_per_batch =
  128`` with ``positive_fraction = 0.25``, spread evenly over the images of the batch.
* **Linear SVMs** (Sec. 2.3 "Object category classifiers", Appendix B): one per class on ``fc7``
  (``stop_gradient``: the SVMs do not change the features). Positives: the gt boxes of the class
  only; negatives: regions with IoU ``< 0.3`` with every gt of the class; regions in between are
  ignored. Hinge loss ``w_+ sum_pos max(0, 1 - s) + sum_neg max(0, 1 + s)`` over the number of
  labelled pairs, plus ``svm_l2 / 2 ||W||^2``, minimised by the same optax step (the paper solves
  it with liblinear on cached features with hard-negative mining; with the hinge, negatives already
  beyond the margin give no gradient, so each step fits exactly the "hard" negatives of its
  sample). Detection scores are the SVM margins, reported through a logistic ``sigmoid(s)``
  (monotone: the ranking, hence AP, is the margins').
* **Bounding-box regression** (Appendix C): class-specific linear regressors on ``pool5``
  (``stop_gradient``) of proposals with IoU ``>= 0.6`` to their gt box, targets ``t = ((g_x -
  p_x) / p_w, (g_y - p_y) / p_h, log(g_w / p_w), log(g_h / p_h))`` scaled by ``box_weights`` (10,
  10, 5, 5), squared loss + ``bbox_l2 / 2 ||W||^2`` (the paper's ridge regression, lambda 1000 on
  unnormalized features).
* **Inference**: every proposal warped and scored (the R-CNN cost: one CNN pass per proposal), SVM
  scores, class-specific regressed boxes, class-wise NMS (IoU 0.3 as in the paper), ``D`` kept.

Static shapes: the number of gt boxes and of proposals never change an array shape (padded slots
are masked), so the step compiles once per image size. Logged terms: ``finetune_cls``, ``svm``,
``bbox``.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxvision.models.detection import faster_rcnn as frcnn
from jaxvision.models.detection import roi_heads as heads
from jaxvision.models.detection.fast_rcnn import clean_proposals
from jaxvision.models.detection.sliding_window import detections_from_scores
from jaxvision.models.family import Family
from jaxvision.models.layers.conv import Conv
from jaxvision.ops import box_coder
from jaxvision.ops import boxes as box_ops
from jaxvision.ops import roi as roi_ops

__all__ = ["RCNNConfig", "RCNN", "context_boxes", "warp_regions", "rcnn_losses", "rcnn_detect",
           "make_rcnn"]


@dataclasses.dataclass(frozen=True)
class RCNNConfig:
  """Hyper-parameters of R-CNN (hashable).

  Attributes:
    warp_size: side of the warped region (32; the paper 227).
    context_padding: context on each side as a fraction of the warped side (16 / 227).
    features: conv channels per stage; fc: widths of fc6, fc7.
    rois_per_batch, positive_fraction: fine-tuning mini-batch (128, 25%: 32 + 96).
    fg_iou_threshold: fine-tuning positives (0.5).
    svm_neg_iou: SVM negatives below this IoU with every gt of the class (0.3).
    svm_pos_weight: weight of the positive hinge terms (liblinear's ``w1``; 2).
    svm_l2, bbox_l2: L2 weights of the SVMs and of the regressors.
    bbox_iou_threshold: regression training proposals (IoU >= 0.6).
    box_weights: delta scaling (10, 10, 5, 5).
    score_threshold: on ``sigmoid(svm margin)``; nms_threshold (0.3), detections_per_image.
  """
  warp_size: int = 32
  context_padding: float = 16.0 / 227.0
  features: tuple[int, ...] = (16, 32, 64)
  fc: tuple[int, ...] = (256, 256)
  rois_per_batch: int = 128
  positive_fraction: float = 0.25
  fg_iou_threshold: float = 0.5
  svm_neg_iou: float = 0.3
  svm_pos_weight: float = 2.0
  svm_l2: float = 1e-4
  bbox_iou_threshold: float = 0.6
  bbox_l2: float = 1e-4
  box_weights: tuple[float, float, float, float] = box_coder.FAST_RCNN_WEIGHTS
  score_threshold: float = 0.05
  nms_threshold: float = 0.3
  detections_per_image: int = 50

  def __post_init__(self):
    for name in ("features", "fc"):
      v = tuple(int(f) for f in getattr(self, name))
      if not v or any(f <= 0 for f in v):
        raise ValueError(f"RCNNConfig.{name} must be positive ints, got {getattr(self, name)!r}.")
      object.__setattr__(self, name, v)
    object.__setattr__(self, "box_weights", tuple(float(w) for w in self.box_weights))
    for name in ("warp_size", "rois_per_batch", "detections_per_image"):
      v = getattr(self, name)
      if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v <= 0:
        raise ValueError(f"RCNNConfig.{name} must be a positive int, got {v!r}.")
    if self.warp_size % (2 ** len(self.features)):
      raise ValueError(f"RCNNConfig.warp_size {self.warp_size} must be divisible by "
                       f"2^len(features) = {2 ** len(self.features)}.")
    if not 0.0 <= self.context_padding < 0.5:
      raise ValueError(f"RCNNConfig.context_padding must be in [0, 0.5), got "
                       f"{self.context_padding!r}.")
    if not 0.0 < self.positive_fraction <= 1.0:
      raise ValueError(f"RCNNConfig.positive_fraction must be in (0, 1], got "
                       f"{self.positive_fraction!r}.")


class RCNN(nn.Module):
  """The per-region CNN and its three heads.

  ``__call__(crops [N, S, S, 3]) -> {"pool5" [N, D5], "fc7" [N, F], "cls_logits" [N, K + 1],
  "svm_scores" [N, K], "bbox_deltas" [N, K, 4]}`` (the SVM and regression heads read the features
  through ``stop_gradient``).
  """
  num_classes: int
  features: tuple[int, ...] = (16, 32, 64)
  fc: tuple[int, ...] = (256, 256)
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, crops):
    k = self.num_classes
    x = crops.astype(self.dtype)
    for i, f in enumerate(self.features):
      x = nn.relu(Conv(f, (3, 3), padding="SAME", dtype=self.dtype, name=f"conv{i + 1}")(x))
      x = nn.max_pool(x, (2, 2), strides=(2, 2))
    pool5 = x.reshape(x.shape[0], -1)  # (N, s s C) the paper's pool5
    x = pool5
    for i, f in enumerate(self.fc):
      x = nn.relu(nn.Dense(f, dtype=self.dtype, name=f"fc{i + 6}")(x))
    fc7 = x
    cls_logits = nn.Dense(k + 1, dtype=self.dtype, kernel_init=nn.initializers.normal(0.01),
                          name="cls_score")(fc7)
    svm = nn.Dense(k, dtype=jnp.float32, kernel_init=nn.initializers.zeros, name="svm")(
        jax.lax.stop_gradient(fc7).astype(jnp.float32))
    deltas = nn.Dense(4 * k, dtype=jnp.float32, kernel_init=nn.initializers.zeros,
                      name="bbox_reg")(jax.lax.stop_gradient(pool5).astype(jnp.float32))
    return {"pool5": pool5, "fc7": fc7, "cls_logits": cls_logits.astype(jnp.float32),
            "svm_scores": svm, "bbox_deltas": deltas.reshape(-1, k, 4)}


def context_boxes(boxes, context_padding: float):
  """Dilates ``[..., 4]`` boxes about their centres so that, warped to a side ``S``, the original
  box spans ``S (1 - 2 context_padding)`` in the middle: sides times ``1 / (1 - 2 p)``."""
  factor = 1.0 / (1.0 - 2.0 * context_padding)
  c = 0.5 * (boxes[..., :2] + boxes[..., 2:])
  half = 0.5 * (boxes[..., 2:] - boxes[..., :2]) * factor
  return jnp.concatenate([c - half, c + half], axis=-1)


def warp_regions(images, rois, rois_valid, *, warp_size: int, context_padding: float):
  """R-CNN's warp of ``[B, R, 4]`` regions (with context) to ``[B R, S, S, C]`` (bilinear,
  anisotropic, zeros outside the image and for invalid regions): one bilinear sample at the centre
  of every output pixel (RoIAlign with ``sampling_ratio=1``, i.e. a bilinear image resize of the
  region; more samples per pixel cost 4x the gathers, the step's main cost on a CPU)."""
  boxes, index = heads.flatten_rois(context_boxes(jnp.asarray(rois, jnp.float32),
                                                  context_padding), rois_valid)
  return roi_ops.roi_align(jnp.asarray(images, jnp.float32), boxes, index, output_size=warp_size,
                           spatial_scale=1.0, sampling_ratio=1, aligned=True)


def _weight_l2(params, name):
  return 0.5 * jnp.sum(jnp.square(params[name]["kernel"]))


def rcnn_losses(module: RCNN, batch, key, *, config: RCNNConfig, axis_name: str | None = None):
  """The three R-CNN objectives on one batch: ``(total, {"finetune_cls", "svm", "bbox", ...})``."""
  if "proposals" not in batch or "proposals_valid" not in batch:
    raise ValueError("R-CNN needs batch['proposals'] [B, P, 4] and batch['proposals_valid'] "
                     f"[B, P] (config.data.proposals); the batch has keys {sorted(batch)}.")
  gt_boxes, gt_labels, gt_valid = frcnn.gt_from_batch(batch)
  props, pvalid = clean_proposals(batch["proposals"], batch["proposals_valid"],
                                  frcnn.batch_image_hw(batch))
  b = gt_boxes.shape[0]
  per_image = max(config.rois_per_batch // b, 1)
  sample_cfg = heads.RoIHeadsConfig(batch_size_per_image=per_image,
                                    positive_fraction=config.positive_fraction,
                                    fg_iou_threshold=config.fg_iou_threshold, bg_iou_low=0.0,
                                    append_gt=True)
  sample = heads.sample_training_rois(key, props, pvalid, gt_boxes, gt_labels, gt_valid,
                                      config=sample_cfg)
  ex_valid = jnp.asarray(batch.get("example_valid", jnp.ones((b,), bool)), bool)
  svalid = sample.valid & ex_valid[:, None]
  # SVM training regions: the sampled regions plus every gt box (the SVM positives).
  rois = jnp.concatenate([sample.rois, gt_boxes], axis=1)  # (B, S + G, 4)
  rvalid = jnp.concatenate([svalid, gt_valid & ex_valid[:, None]], axis=1)
  crops = warp_regions(batch["image"], rois, rvalid, warp_size=config.warp_size,
                       context_padding=config.context_padding)
  out = module(crops)
  n = rois.shape[1]
  k = module.num_classes
  s = sample.rois.shape[1]

  def psum(x):
    return x if axis_name is None else jax.lax.psum(x, axis_name)

  # 1. Fine-tuning: softmax over K + 1 on the sampled regions.
  logits = out["cls_logits"].reshape(b, n, k + 1)[:, :s]
  logp = jax.nn.log_softmax(logits, axis=-1)
  nll = -jnp.take_along_axis(logp, sample.labels[..., None], axis=-1)[..., 0]
  norm_cls = jnp.maximum(psum(jnp.sum(svalid, dtype=jnp.float32)), 1.0)
  loss_cls = jnp.sum(jnp.where(svalid, nll, 0.0)) / norm_cls

  # 2. SVMs: +1 for the gt boxes of class c, -1 for regions with IoU < svm_neg_iou with every gt of
  # class c (IoU 0 when the image has none), ignored otherwise.
  scores = out["svm_scores"].reshape(b, n, k)
  iou = jax.vmap(box_ops.box_iou)(rois, gt_boxes)  # (B, N, G)
  classes = jnp.arange(1, k + 1)
  of_class = (gt_labels[..., None] == classes) & gt_valid[..., None]  # (B, G, K)
  iou_class = jnp.max(jnp.where(of_class[:, None], iou[..., None], 0.0), axis=2)  # (B, N, K)
  is_gt = jnp.concatenate([jnp.zeros((b, s), bool), jnp.ones((b, n - s), bool)], axis=1)
  gt_class = jnp.concatenate([jnp.zeros((b, s), jnp.int32), gt_labels], axis=1)
  pos = (is_gt & rvalid)[..., None] & (gt_class[..., None] == classes)
  neg = (~is_gt & rvalid)[..., None] & (iou_class < config.svm_neg_iou)
  hinge_pos = jnp.maximum(0.0, 1.0 - scores)
  hinge_neg = jnp.maximum(0.0, 1.0 + scores)
  svm_sum = jnp.sum(jnp.where(pos, config.svm_pos_weight * hinge_pos, 0.0)) + jnp.sum(
      jnp.where(neg, hinge_neg, 0.0))
  norm_svm = jnp.maximum(psum(jnp.sum(pos | neg, dtype=jnp.float32)), 1.0)
  n_dev = 1.0 if axis_name is None else jax.lax.psum(1.0, axis_name)
  params = module.variables["params"]
  loss_svm = svm_sum / norm_svm + config.svm_l2 * _weight_l2(params, "svm") / n_dev

  # 3. Class-specific box regression on pool5, proposals with IoU >= bbox_iou_threshold.
  deltas = out["bbox_deltas"].reshape(b, n, k, 4)[:, :s]
  match_iou = jax.vmap(jax.vmap(lambda r, g: box_ops.box_iou(r[None], g[None])[0, 0]))(
      sample.rois, sample.matched_boxes)
  reg = svalid & (sample.labels > 0) & (match_iou >= config.bbox_iou_threshold)
  pred = jnp.take_along_axis(deltas, jnp.clip(sample.labels - 1, 0, k - 1)[..., None, None],
                             axis=2)[:, :, 0]  # (B, S, 4)
  unit = jnp.asarray([0.0, 0.0, 1.0, 1.0], jnp.float32)  # a safe box for rows not regressed
  targets = box_coder.encode_boxes(jnp.where(reg[..., None], sample.matched_boxes, unit),
                                   jnp.where(reg[..., None], sample.rois, unit),
                                   config.box_weights)
  sq = jnp.sum(jnp.square(pred - jax.lax.stop_gradient(targets)), axis=-1)
  norm_reg = jnp.maximum(psum(jnp.sum(reg, dtype=jnp.float32)), 1.0)
  loss_bbox = jnp.sum(jnp.where(reg, sq, 0.0)) / norm_reg + (
      config.bbox_l2 * _weight_l2(params, "bbox_reg") / n_dev)

  terms = {"finetune_cls": loss_cls, "svm": loss_svm, "bbox": loss_bbox,
           "num_fg_rois": jnp.sum(svalid & (sample.labels > 0), dtype=jnp.float32) / (n_dev * b)}
  return loss_cls + loss_svm + loss_bbox, terms


def rcnn_detect(module: RCNN, batch, *, config: RCNNConfig):
  """Inference: every proposal warped and classified by the SVMs, boxes regressed, class-wise
  NMS; ``{"boxes" [B, D, 4], "scores" (sigmoid of the SVM margin), "labels", "valid"}``."""
  if "proposals" not in batch or "proposals_valid" not in batch:
    raise ValueError("R-CNN needs batch['proposals'] and batch['proposals_valid'] "
                     f"(config.data.proposals); the batch has keys {sorted(batch)}.")
  image_hw = frcnn.batch_image_hw(batch)
  props, pvalid = clean_proposals(batch["proposals"], batch["proposals_valid"], image_hw)
  b, p = props.shape[:2]
  crops = warp_regions(batch["image"], props, pvalid, warp_size=config.warp_size,
                       context_padding=config.context_padding)
  out = module(crops)
  k = module.num_classes
  scores = jax.nn.sigmoid(out["svm_scores"]).reshape(b, p, k)
  boxes = box_coder.decode_boxes(out["bbox_deltas"].reshape(b, p, k, 4), props[:, :, None, :],
                                 config.box_weights)
  post = functools.partial(detections_from_scores, pre_nms_top_n=min(p * k, 4000),
                           score_threshold=config.score_threshold,
                           nms_threshold=config.nms_threshold,
                           detections_per_image=config.detections_per_image)
  return jax.vmap(post)(scores, boxes, pvalid, image_hw)


_KEYS = tuple(f.name for f in dataclasses.fields(RCNNConfig)) + ("name", "dtype", "axis_name",
                                                                 "proposals")


def build_rcnn(model_config: Any, num_classes: int) -> tuple[RCNN, RCNNConfig]:
  """``(RCNN module, RCNNConfig)`` from ``config.model``."""
  cfg = frcnn.as_config_dict(model_config)
  unknown = sorted(set(cfg) - set(_KEYS))
  if unknown:
    raise ValueError(f"unknown model config keys {unknown} for rcnn; known keys: {sorted(_KEYS)}.")
  if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
    raise ValueError(f"num_classes must be a positive int (K foreground classes), got "
                     f"{num_classes!r}.")
  if cfg.pop("proposals", "batch") != "batch":
    raise ValueError("R-CNN takes its proposals from the batch (model.proposals='batch'); set "
                     "config.data.proposals ('selective_search' or 'shapes').")
  dtype = jnp.dtype(cfg.pop("dtype", None) or "float32")
  cfg.pop("name", None)
  cfg.pop("axis_name", None)  # no BatchNorm
  config = frcnn.dataclass_from_section(RCNNConfig, cfg, "model")
  module = RCNN(num_classes=num_classes, features=config.features, fc=config.fc, dtype=dtype)
  return module, config


def make_rcnn(model_config: Any, num_classes: int) -> Family:
  """Builds the R-CNN family (``MODELS["rcnn"]``).

  Args:
    model_config: ``ConfigDict`` or dict with the fields of ``RCNNConfig`` (all optional) and
      ``dtype``. Proposals come from the batch (``config.data.proposals``).
    num_classes: K foreground classes.

  Returns:
    A detection ``Family``: one jitted step trains the fine-tuned CNN, the SVMs and the
    regressors together (the last two on ``stop_gradient`` features).
  """
  module, config = build_rcnn(model_config, num_classes)

  def train_loss(variables, batch, *, rng, step=None, axis_name=None):
    del step
    total, terms = module.apply(variables, batch, rng, method=rcnn_losses, config=config,
                                axis_name=axis_name)
    return total, terms, {}

  def predict(variables, batch):
    return module.apply(variables, batch, method=rcnn_detect, config=config)

  def init(rng, batch):
    s = config.warp_size
    return module.init(rng, jnp.zeros((1, s, s, batch["image"].shape[-1]), jnp.float32))

  return Family(module=module, task="detection", train_loss=train_loss, predict=predict,
                init=init, num_classes=num_classes)
