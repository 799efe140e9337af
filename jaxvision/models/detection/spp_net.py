"""SPP-net for detection: He, Zhang, Ren and Sun, "Spatial Pyramid Pooling in Deep Convolutional
Networks for Visual Recognition", ECCV 2014 / TPAMI 2015 (https://arxiv.org/abs/1406.4729), Sec. 4.

R-CNN runs its CNN once per warped proposal (~2000 times an image). SPP-net runs the convolutional
layers *once* over the whole image and pools each proposal's window on the last conv map into a
fixed-length vector with a spatial pyramid (``jaxvision.ops.roi.spatial_pyramid_pool``): for every
level ``n`` in ``bins`` the window is split into ``n x n`` bins, each max-pooled, and the levels are
concatenated (``C * sum(n^2)`` values, whatever the window's size or aspect ratio). Fully connected
layers follow (Sec. 4.1: "spatial pyramid pooling ... then fc6, fc7").

Here the head after the pyramid is Fast R-CNN's (the brief of this library: a softmax over ``K + 1``
classes and class-specific box regression with the multi-task loss, hierarchical sampling of RoIs
from ``batch["proposals"]``), so SPP-net and Fast R-CNN differ in exactly one place, the pooling:

* SPP-net: a pyramid of levels (default ``(4, 2, 1)``; the paper's detection pyramid on ZF-5
  conv5 is ``(6, 3, 2, 1)``, the ``"vgg16"`` preset), one vector of ``21 C`` values;
* Fast R-CNN: one ``7 x 7`` level (RoI pooling "is a special case of SPP with one level").

Differences from the paper, stated: the paper fine-tunes only the FC layers (its Sec. 4.1; Fast R-CNN
Sec. 2.3 explains that back-propagating through SPP over RoIs from many images is inefficient) and
then trains linear SVMs on fc7 as R-CNN does; here the conv layers train too
(``train_backbone=True``, needed on shapes since the backbone starts from scratch) and the softmax
scores detections. ``train_backbone=False`` stops the gradient at the conv map (the paper's setting
with a pretrained backbone).

Reuse: the module exposes the two stage methods the Fast R-CNN functions call (``features`` and
``roi_heads``, plus ``roi_config``), so training and inference are ``fast_rcnn.fast_rcnn_losses`` and
``fast_rcnn.fast_rcnn_detect`` unchanged: proposal cleaning, RoI sampling, the loss
(``roi_heads.box_head_loss``) and per-class NMS (``roi_heads.postprocess_detections``) are shared.
``roi_config.pooler`` / ``output_size`` are unused (the pyramid replaces the pooler).
"""

from __future__ import annotations

from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxvision.models.detection import fast_rcnn
from jaxvision.models.detection import faster_rcnn as frcnn
from jaxvision.models.detection import roi_heads as heads
from jaxvision.models.family import Family
from jaxvision.ops import roi as roi_ops

__all__ = ["PRESETS", "SPPNet", "build_spp_net", "make_spp_net", "spp_pool_rois"]

PRESETS: dict[str, dict[str, Any]] = {
    # The paper's detection pyramid (6x6, 3x3, 2x2, 1x1) on a VGG16 conv5_3 map (the paper: ZF-5
    # conv5), fc6/fc7 of 4096, 64 RoIs per image (Fast R-CNN's sampling).
    "vgg16": {
        "backbone": {"name": "vgg16"},
        "neck": None,
        "roi_heads": {"feature": "conv5_3", "pooler": "pool", "batch_size_per_image": 64,
                      "positive_fraction": 0.25, "bg_iou_low": 0.1, "smooth_l1_beta": 1.0},
        "box_head": {"kind": "mlp", "representation_size": 4096},
        "bins": (6, 3, 2, 1),
    },
    # Small experiments: ResNet C4, pyramid (4x4, 2x2, 1x1).
    "resnet": {
        "backbone": {"name": "resnet18", "norm": "batch"},
        "neck": None,
        "roi_heads": {"feature": "C4", "pooler": "pool", "batch_size_per_image": 64,
                      "positive_fraction": 0.25, "bg_iou_low": 0.1, "smooth_l1_beta": 1.0},
        "box_head": {"kind": "mlp", "representation_size": 1024},
        "bins": (4, 2, 1),
    },
}
_OWN_KEYS = ("bins", "spp_pool", "train_backbone", "proposals")


def spp_pool_rois(features: Mapping[str, jax.Array], rois, rois_valid, *,
                  config: heads.RoIHeadsConfig, image_size, bins, pool: str = "max"):
  """Spatial pyramid pooling of ``[B, S, 4]`` RoIs on ``features[config.feature]``:
  ``[B S, C sum(n^2)]`` (padded RoIs give zeros). The map's stride is ``feature_scale``'s rule."""
  if config.feature not in features:
    raise ValueError(f"model.roi_heads.feature {config.feature!r} is not among the features "
                     f"{sorted(features)}.")
  fmap = features[config.feature]
  boxes, index = heads.flatten_rois(jnp.asarray(rois, jnp.float32), rois_valid)
  scale = heads.feature_scale(image_size, fmap.shape[1:3])
  return roi_ops.spatial_pyramid_pool(fmap, boxes, index, bins=tuple(bins), spatial_scale=scale,
                                      pool=pool)


class SPPNet(nn.Module):
  """Backbone, spatial pyramid pooling, FC box head and Fast R-CNN predictor.

  Duck-types the parts of ``faster_rcnn.FasterRCNN`` that Fast R-CNN's functions use
  (``features``, ``roi_heads``, ``roi_config``), so ``fast_rcnn.fast_rcnn_losses`` /
  ``fast_rcnn_detect`` train and run it.
  """
  backbone: nn.Module
  box_head: nn.Module
  box_predictor: nn.Module
  roi_config: heads.RoIHeadsConfig = heads.RoIHeadsConfig()
  bins: tuple[int, ...] = (4, 2, 1)
  spp_pool: str = "max"
  train_backbone: bool = True

  def features(self, images, train: bool = False) -> dict[str, jax.Array]:
    if images.ndim != 4:
      raise ValueError(f"images must be NHWC [B, H, W, C], got shape {tuple(images.shape)}.")
    feats = dict(self.backbone(images, train=train))
    if not self.train_backbone:
      feats = jax.tree.map(jax.lax.stop_gradient, feats)
    return feats

  def roi_heads(self, features, rois, rois_valid, *, image_size, train: bool = False,
                axis_name: str | None = None):
    """``(class_logits [B, S, K + 1], box_deltas [B, S, K, 4])`` of ``[B, S, 4]`` RoIs; at inference
    on the leading rows that hold every valid RoI (as ``FasterRCNN.roi_heads``)."""
    return heads.bucketed_head(self, "box_outputs", features, rois, rois_valid, all_rows=train,
                               axis_name=axis_name, image_size=image_size, train=train)

  def box_outputs(self, features, rois, rois_valid, *, image_size, train: bool = False):
    """``roi_heads`` on all ``S`` rows: pyramid pooling, box head, predictor."""
    b, s = rois.shape[:2]
    pooled = spp_pool_rois(features, rois, rois_valid, config=self.roi_config,
                           image_size=image_size, bins=self.bins, pool=self.spp_pool)
    x = self.box_head(pooled, train=train)  # (B S, D)
    logits, deltas = self.box_predictor(x)
    return logits.reshape(b, s, -1), deltas.reshape(b, s, deltas.shape[-2], 4)

  def __call__(self, images, train: bool = False):
    """Every stage once on one whole-image RoI per image (initialisation)."""
    feats = self.features(images, train=train)
    b, h, w = images.shape[:3]
    rois = jnp.broadcast_to(jnp.asarray([0.0, 0.0, w, h], jnp.float32), (b, 1, 4))
    logits, deltas = self.roi_heads(feats, rois, jnp.ones((b, 1), bool), image_size=(h, w),
                                    train=train)
    return {"class_logits": logits, "box_deltas": deltas}


def build_spp_net(model_config: Any, num_classes: int) -> SPPNet:
  """The ``SPPNet`` module from ``config.model`` (see ``make_spp_net``)."""
  cfg = frcnn.as_config_dict(model_config)
  own = {k: cfg.pop(k) for k in _OWN_KEYS if k in cfg}
  if "rpn" in cfg:
    raise ValueError("SPP-net has no model.rpn (external proposals from the batch).")
  if cfg.get("neck"):
    raise ValueError("SPP-net has no model.neck (it pools one conv map).")
  cfg.pop("neck", None)
  if own.get("proposals", "batch") != "batch":
    raise ValueError(f"SPP-net takes its proposals from the batch (model.proposals='batch'), got "
                     f"{own['proposals']!r}; set config.data.proposals (e.g. 'shapes').")
  presets = {k: {kk: vv for kk, vv in v.items() if kk != "bins"} for k, v in PRESETS.items()}
  try:
    resolved = frcnn.resolve_config(cfg, presets, default_preset="resnet")
  except ValueError as e:
    raise ValueError(f"{e} (SPP-net also takes {list(_OWN_KEYS)}.)") from None
  if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
    raise ValueError(f"num_classes must be a positive int (K foreground classes), got "
                     f"{num_classes!r}.")
  bins = tuple(int(n) for n in own.get("bins", PRESETS[resolved["preset"]]["bins"]))
  if not bins or any(n < 1 for n in bins):
    raise ValueError(f"model.bins must be a non-empty list of positive ints, got {bins!r}.")
  spp_pool = own.get("spp_pool", "max")
  if spp_pool not in ("max", "avg"):
    raise ValueError(f"model.spp_pool must be 'max' or 'avg', got {spp_pool!r}.")
  axis_name, dtype = resolved["axis_name"], resolved["dtype"]
  roi_cfg = frcnn.dataclass_from_section(heads.RoIHeadsConfig, resolved["roi_heads"], "roi_heads")
  if roi_cfg.fpn_levels:
    raise ValueError("SPP-net pools one conv map: model.roi_heads.fpn_levels must be empty.")
  backbone = frcnn.build_backbone(resolved["backbone"], axis_name=axis_name, dtype=dtype)
  if resolved["box_head"].get("kind", "mlp") != "mlp":
    raise ValueError("SPP-net's head is fully connected: model.box_head.kind must be 'mlp'.")
  box_head = frcnn.build_box_head(resolved["box_head"], backbone, axis_name=axis_name, dtype=dtype)
  return SPPNet(backbone=backbone, box_head=box_head,
                box_predictor=heads.FastRCNNPredictor(
                    num_classes, background_slot=roi_cfg.box_background_slot, dtype=dtype),
                roi_config=roi_cfg, bins=bins, spp_pool=spp_pool,
                train_backbone=bool(own.get("train_backbone", True)))


def make_spp_net(model_config: Any, num_classes: int) -> Family:
  """Builds the SPP-net family from ``config.model`` (``MODELS["spp_net"]``).

  Args:
    model_config: ``ConfigDict`` or dict: ``preset`` (``"resnet"`` default, ``"vgg16"``), the
      sections ``backbone``, ``roi_heads`` (``feature``: the conv map to pool; sampling and
      inference fields of ``roi_heads.RoIHeadsConfig``), ``box_head`` (``kind="mlp"``,
      ``representation_size``), and ``bins`` (pyramid levels), ``spp_pool`` (``"max"``),
      ``train_backbone`` (True), ``axis_name``, ``dtype``. Proposals come from
      ``batch["proposals"]`` (``config.data.proposals``).
    num_classes: K foreground classes.

  Returns:
    A detection ``Family``.
  """
  module = build_spp_net(model_config, num_classes)

  def losses(m, batch, key, *, axis_name=None):
    return fast_rcnn.fast_rcnn_losses(m, batch, key, axis_name=axis_name, source="batch")

  def detect(m, batch):
    return fast_rcnn.fast_rcnn_detect(m, batch, source="batch")

  return frcnn.detection_family(module, num_classes, losses, detect)
