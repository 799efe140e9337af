"""Faster R-CNN: Ren, He, Girshick and Sun, "Faster R-CNN: Towards Real-Time Object Detection with
Region Proposal Networks", NeurIPS 2015 (https://arxiv.org/abs/1506.01497); the ResNet-C4 form of He
et al., "Deep Residual Learning for Image Recognition", CVPR 2016, and the FPN form of Lin et al.,
"Feature Pyramid Networks for Object Detection", CVPR 2017.

A backbone (optionally with an FPN neck) computes features once; the RPN (``rpn.py``) proposes
boxes from them; the Fast R-CNN RoI heads (``roi_heads.py``) classify and refine the proposals. The
whole training step is one jitted function ("approximate joint training", paper Sec. 3.2: the RPN
and the detector are trained together and the proposals are treated as constants)::

  features = backbone(+ FPN)(image)
  rpn logits, deltas        = RPN head(features)      -> rpn_cls, rpn_box losses (256 anchors)
  proposals                 = decode, top-k, clip, NMS 0.7    (static size, stop_gradient)
  RoIs                      = sample(proposals + gt)          (512 per image, 25% fg)
  class logits, box deltas  = box head(RoIAlign/RoIPool(features, RoIs))
                                                              -> head_cls, head_box losses

Two designs (``make_faster_rcnn``'s ``preset``):

* ``"c4"`` (paper + He et al. 2016): the RPN runs on ``C4`` (stride 16) with ``k = 9`` anchors
  (128/256/512 x 1:2/1:1/2:1), RoIs are pooled 14x14 from ``C4`` and the box head is ResNet's
  ``res5`` stage + global average pooling (``roi_heads.Res5Head``).
* ``"fpn"`` (Lin et al. 2017): ``P2..P6`` from an FPN neck, one anchor size per level (32..512) x 3
  ratios, per-level top-k and NMS, RoIs pooled 7x7 from ``P2..P5`` by size, two 1024-d FC layers.
  ``"torchvision_fpn"`` reproduces torchvision's ``fasterrcnn_resnet50_fpn`` architecture
  (``k`` sigmoid objectness logits, corner-offset rounded anchors, a ``4 (K + 1)`` box layer), so
  its weights can be converted.

Stage methods (``module.apply(variables, ..., method=...)``), the extension points of Mask R-CNN:

* ``FasterRCNN.features(images, train)``: the feature dict (backbone and neck).
* ``FasterRCNN.rpn(features)``: ``(logits [B, A], deltas [B, A, 4])`` over all levels' anchors.
* ``FasterRCNN.roi_heads(features, rois, rois_valid, image_size=..., train=...)``:
  ``(class_logits [B, S, K + 1], box_deltas [B, S, K, 4])``, computed on the leading rows that
  hold the valid RoIs at inference (``box_outputs`` computes all ``S``).

and functions of the bound module, usable as ``method=``: ``rpn_losses_and_proposals``,
``box_losses``, ``faster_rcnn_losses`` (the whole training loss) and ``faster_rcnn_detect``
(inference). A mask branch adds a ``mask_head`` submodule and a loss built from the
``RoiSample`` that ``box_losses`` returns.

Static shapes everywhere: the number of gt boxes (``box_valid``), of proposals and of detections
never changes an array shape, so the step compiles once (``tests/models/detection/
test_faster_rcnn.py`` counts the traces while the number of boxes varies). At inference the box
head and the post-processing still skip most empty slots: they run on the smallest of a few row
buckets (``S``, ``S / 2``, ``S / 4``, ``S / 8``) that holds every valid proposal, one compiled
branch each, chosen at run time (``roi_heads.switch_on_rows``).

Defaults not in the paper, from torchvision (paper values in the docstrings of ``RPNConfig`` and
``RoIHeadsConfig``): RoIAlign instead of RoIPool, 512 RoIs per image with background ``[0, 0.5)``,
2000/1000 proposals, smooth-L1 beta 1/9 in the RPN. All four losses have weight 1.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxvision.models.detection import roi_heads as heads
from jaxvision.models.detection import rpn as rpn_lib
from jaxvision.models.family import Family
from jaxvision.ops import anchors as anchor_ops

__all__ = [
    "FasterRCNN", "PRESETS", "build_faster_rcnn", "make_faster_rcnn", "rpn_losses_and_proposals",
    "box_losses", "faster_rcnn_losses", "faster_rcnn_detect", "detect_from_proposals",
    "gt_from_batch", "batch_image_size", "batch_image_hw", "check_batch", "resolve_config",
    "init_key", "detection_family", "rpn_anchors_for", "inference_proposals",
]


class FasterRCNN(nn.Module):
  """Backbone (+ neck), RPN head, RoI box head and predictor; see the module docstring.

  Attributes:
    backbone: ``backbone(images, train=...) -> {name: [B, h, w, C]}``.
    box_head: ``box_head(pooled [N, oh, ow, C], train=...) -> [N, D]``.
    box_predictor: a ``roi_heads.FastRCNNPredictor``.
    rpn_head: an ``rpn.RPNHead`` (its ``num_anchors`` must equal ``rpn_config.num_anchors``), or
      None for a detector on external proposals (Fast R-CNN, ``fast_rcnn.py``).
    rpn_config: ``rpn.RPNConfig``.
    roi_config: ``roi_heads.RoIHeadsConfig``.
    neck: optional ``neck(features, train=...) -> {name: map}`` (FPN), merged into the features.
  """
  backbone: nn.Module
  box_head: nn.Module
  box_predictor: nn.Module
  rpn_head: nn.Module | None = None
  rpn_config: rpn_lib.RPNConfig = rpn_lib.RPNConfig()
  roi_config: heads.RoIHeadsConfig = heads.RoIHeadsConfig()
  neck: nn.Module | None = None

  def features(self, images, train: bool = False) -> dict[str, jax.Array]:
    """The backbone's (and the neck's) feature maps."""
    if images.ndim != 4:
      raise ValueError(f"images must be NHWC [B, H, W, C], got shape {tuple(images.shape)}.")
    feats = dict(self.backbone(images, train=train))
    if self.neck is not None:
      feats.update(self.neck(feats, train=train))
    missing = ([n for n in self.rpn_config.levels if n not in feats]
               if self.rpn_head is not None else [])
    if missing:
      raise ValueError(f"RPN levels {missing} are not among the features {sorted(feats)}; set "
                       "model.rpn.levels to feature names the backbone/neck produces.")
    return feats

  def rpn(self, features: Mapping[str, jax.Array]):
    """RPN outputs over every level: ``(objectness logits [B, A], deltas [B, A, 4])``."""
    if self.rpn_head is None:
      raise ValueError("this detector has no RPN (rpn_head=None): it takes external proposals.")
    scores, deltas = self.rpn_head([features[n] for n in self.rpn_config.levels])
    logits = [rpn_lib.objectness_logits(s, self.rpn_config.objectness) for s in scores]
    return jnp.concatenate(logits, axis=1), jnp.concatenate(deltas, axis=1)

  def roi_heads(self, features: Mapping[str, jax.Array], rois, rois_valid, *, image_size,
                train: bool = False, axis_name: str | None = None):
    """Box head on ``[B, S, 4]`` RoIs: ``(class_logits [B, S, K + 1], box_deltas [B, S, K, 4])``.

    At inference computed on the leading rows that hold every valid RoI (``roi_config.row_buckets``,
    ``roi_heads.switch_on_rows``); rows past them are zeros. In training on all ``S`` rows (see
    ``switch_on_rows`` for why). ``axis_name``: the caller's data-parallel axis, if any."""
    return heads.bucketed_head(self, "box_outputs", features, rois, rois_valid, all_rows=train,
                               axis_name=axis_name, image_size=image_size, train=train)

  def box_outputs(self, features: Mapping[str, jax.Array], rois, rois_valid, *, image_size,
                  train: bool = False):
    """``roi_heads`` on all ``S`` rows (no buckets): pooling, box head, predictor."""
    b, s = rois.shape[:2]
    pooled = heads.pool_rois(features, rois, rois_valid, config=self.roi_config,
                             image_size=image_size)  # (B S, oh, ow, C)
    x = self.box_head(pooled, train=train)  # (B S, D)
    logits, deltas = self.box_predictor(x)
    return logits.reshape(b, s, -1), deltas.reshape(b, s, deltas.shape[-2], 4)

  def __call__(self, images, train: bool = False):
    """Runs every stage once (initialisation): features, RPN (if any), and the box head on one
    RoI per image (the whole image). Returns the raw outputs."""
    feats = self.features(images, train=train)
    out = {}
    if self.rpn_head is not None:
      out["rpn_logits"], out["rpn_deltas"] = self.rpn(feats)
    b, h, w = images.shape[:3]
    rois = jnp.broadcast_to(jnp.asarray([0.0, 0.0, w, h], jnp.float32), (b, 1, 4))
    out["class_logits"], out["box_deltas"] = self.roi_heads(
        feats, rois, jnp.ones((b, 1), bool), image_size=(h, w), train=train)
    return out


# ------------------------------------------------------------------------------------------------
# Training and inference as functions of the bound module (``apply(..., method=...)``)
# ------------------------------------------------------------------------------------------------


def check_batch(batch: Mapping[str, Any]) -> None:
  """Checks the batch-contract keys a detector trains on (at trace time).

  Raises:
    ValueError: a missing key or inconsistent shapes, naming them.
  """
  missing = [k for k in ("image", "boxes", "labels", "box_valid") if k not in batch]
  if missing:
    raise ValueError(f"the detection batch lacks {missing} (batch contract: image [B,H,W,3], "
                     f"boxes [B,M,4], labels [B,M], box_valid [B,M]); got keys {sorted(batch)}.")
  b = batch["image"].shape[0]
  if batch["image"].ndim != 4:
    raise ValueError(f"batch['image'] must be [B, H, W, C], got shape "
                     f"{tuple(batch['image'].shape)}.")
  boxes = batch["boxes"]
  if boxes.ndim != 3 or boxes.shape[0] != b or boxes.shape[-1] != 4:
    raise ValueError(f"batch['boxes'] must be [B, M, 4] with B = {b}, got shape "
                     f"{tuple(boxes.shape)}.")
  for key in ("labels", "box_valid"):
    if tuple(batch[key].shape) != tuple(boxes.shape[:2]):
      raise ValueError(f"batch[{key!r}] must be [B, M] = {tuple(boxes.shape[:2])} like "
                       f"batch['boxes'], got shape {tuple(batch[key].shape)}.")


def gt_from_batch(batch: Mapping[str, Any]):
  """``(boxes [B, M, 4], labels [B, M], valid [B, M])`` of the batch's usable gt boxes.

  Invalid: padding, degenerate boxes (a side ``<= 0``), non-finite boxes, crowd regions, labels
  outside ``1..`` and boxes of padding examples (``example_valid`` False).
  """
  check_batch(batch)
  boxes = jnp.asarray(batch["boxes"], jnp.float32)
  labels = jnp.asarray(batch["labels"], jnp.int32)
  valid = rpn_lib.valid_gt(boxes, jnp.asarray(batch["box_valid"], bool),
                           batch.get("is_crowd")) & (labels > 0)
  if "example_valid" in batch:
    valid &= jnp.asarray(batch["example_valid"], bool)[:, None]
  return jnp.where(valid[..., None], boxes, 0.0), jnp.where(valid, labels, 0), valid


def batch_image_size(batch) -> tuple[int, int]:
  return int(batch["image"].shape[1]), int(batch["image"].shape[2])


def batch_image_hw(batch):
  if "image_hw" in batch:
    return jnp.asarray(batch["image_hw"], jnp.int32)
  h, w = batch_image_size(batch)
  return jnp.broadcast_to(jnp.asarray([h, w], jnp.int32), (batch["image"].shape[0], 2))


def _psum(x, axis_name):
  return x if axis_name is None else jax.lax.psum(x, axis_name)


def _example_valid(batch):
  b = batch["image"].shape[0]
  return jnp.asarray(batch.get("example_valid", jnp.ones((b,), bool)), bool)


def rpn_anchors_for(module: FasterRCNN, features, batch, logits):
  """``rpn.rpn_anchors`` for this batch's image and feature sizes, checked against the head."""
  cfg = module.rpn_config
  anchors, counts = rpn_lib.rpn_anchors(cfg, batch_image_size(batch),
                                        [features[n].shape[1:3] for n in cfg.levels])
  if anchors.shape[0] != logits.shape[1]:
    raise ValueError(f"the RPN head predicts {logits.shape[1]} anchors but the config describes "
                     f"{anchors.shape[0]} ({cfg.num_anchors} per location on {cfg.levels}); "
                     "RPNHead.num_anchors must equal RPNConfig.num_anchors.")
  return anchors, counts


def rpn_losses_and_proposals(module: FasterRCNN, features, batch, key, *, train: bool = True,
                             axis_name: str | None = None):
  """RPN losses and proposals of a batch (call inside ``apply``, or as ``method=``).

  Returns:
    ``(loss_objectness, loss_box, proposals)``: the two losses (this device's sums over the
    ``psum``-ed number of sampled anchors) and batched ``rpn.Proposals`` (``[B, N]`` leaves).
  """
  cfg = module.rpn_config
  image_hw = batch_image_hw(batch)
  logits, deltas = module.rpn(features)  # (B, A), (B, A, 4)
  anchors, counts = rpn_anchors_for(module, features, batch, logits)
  gt_boxes, _, gt_valid = gt_from_batch(batch)
  b = logits.shape[0]
  targets = jax.vmap(functools.partial(rpn_lib.rpn_targets, config=cfg),
                     in_axes=(0, None, 0, 0, 0))(jax.random.split(key, b), anchors, gt_boxes,
                                                 gt_valid, image_hw)
  keep = _example_valid(batch)[:, None]
  targets = dataclasses.replace(targets, positive=targets.positive & keep,
                                negative=targets.negative & keep)
  normalizer = _psum(jnp.sum(targets.positive | targets.negative, dtype=jnp.float32), axis_name)
  loss_cls, loss_box = rpn_lib.rpn_loss(logits, deltas, targets, config=cfg, normalizer=normalizer)
  proposals = jax.vmap(functools.partial(rpn_lib.generate_proposals, level_counts=counts,
                                         config=cfg, train=train),
                       in_axes=(None, 0, 0, 0))(anchors, logits, deltas, image_hw)
  return loss_cls, loss_box, proposals


def box_losses(module, features, proposals, proposals_valid, batch, key, *,
               axis_name: str | None = None, train: bool = True):
  """Samples RoIs from ``proposals`` (``[B, P, 4]``, ``[B, P]``) against the gt and returns the box
  head's ``(loss_cls, loss_box, sample)``; ``sample`` (a batched ``RoiSample``) is what a mask
  branch needs for its targets."""
  cfg = module.roi_config
  gt_boxes, gt_labels, gt_valid = gt_from_batch(batch)
  sample = heads.sample_training_rois(key, proposals, proposals_valid, gt_boxes, gt_labels,
                                      gt_valid, config=cfg)
  sample = sample._replace(valid=sample.valid & _example_valid(batch)[:, None])
  class_logits, box_deltas = module.roi_heads(features, sample.rois, sample.valid,
                                              image_size=batch_image_size(batch), train=train,
                                              axis_name=axis_name)
  normalizer = _psum(jnp.sum(sample.valid, dtype=jnp.float32), axis_name)
  loss_cls, loss_box = heads.box_head_loss(class_logits, box_deltas, sample, config=cfg,
                                           normalizer=normalizer)
  return loss_cls, loss_box, sample


def faster_rcnn_losses(module: FasterRCNN, batch, key, *, axis_name: str | None = None):
  """The training loss of a batch: ``(total, terms)`` with the four logged terms
  ``rpn_cls``, ``rpn_box``, ``head_cls``, ``head_box`` (each this device's share)."""
  rpn_key, roi_key = jax.random.split(key)
  feats = module.features(batch["image"], train=True)
  rpn_cls, rpn_box, proposals = rpn_losses_and_proposals(module, feats, batch, rpn_key,
                                                         train=True, axis_name=axis_name)
  head_cls, head_box, sample = box_losses(module, feats, proposals.boxes, proposals.valid, batch,
                                          roi_key, axis_name=axis_name)
  terms = {"rpn_cls": rpn_cls, "rpn_box": rpn_box, "head_cls": head_cls, "head_box": head_box}
  # Diagnostics (this device's share of the global mean, so the trainer's psum gives the mean).
  n_dev = _psum(jnp.float32(1.0), axis_name)
  terms["num_fg_rois"] = jnp.sum(sample.valid & (sample.labels > 0), dtype=jnp.float32) / (
      n_dev * sample.valid.shape[0])
  terms["num_proposals"] = jnp.sum(proposals.valid, dtype=jnp.float32) / (
      n_dev * proposals.valid.shape[0])
  return rpn_cls + rpn_box + head_cls + head_box, terms


def detect_from_proposals(module, features, proposals, proposals_valid, batch) -> heads.Detections:
  """Box head + per-class decoding + class-aware NMS on given proposals (batched ``Detections``).

  Both run on the leading proposals that hold every valid one (``roi_config.row_buckets``): the
  ``S x K`` candidates NMS ranks shrink with them."""
  post = functools.partial(heads.postprocess_detections, config=module.roi_config)
  image_size, image_hw = batch_image_size(batch), batch_image_hw(batch)

  def detect(mdl, n, feats, p, pv):
    p, pv = p[:, :n], pv[:, :n]
    class_logits, box_deltas = mdl.box_outputs(feats, p, pv, image_size=image_size, train=False)
    return jax.vmap(post)(class_logits, box_deltas, p, pv, image_hw)

  return heads.switch_on_rows(module, detect, proposals_valid, features, proposals,
                              proposals_valid, buckets=module.roi_config.row_buckets)


def inference_proposals(module: FasterRCNN, features, batch):
  """The RPN's inference proposals (test sizes) of a batch: batched ``rpn.Proposals``."""
  cfg = module.rpn_config
  logits, deltas = module.rpn(features)
  anchors, counts = rpn_anchors_for(module, features, batch, logits)
  return jax.vmap(functools.partial(rpn_lib.generate_proposals, level_counts=counts,
                                    config=cfg, train=False),
                  in_axes=(None, 0, 0, 0))(anchors, logits, deltas, batch_image_hw(batch))


def faster_rcnn_detect(module: FasterRCNN, batch) -> heads.Detections:
  """Inference: features -> RPN proposals (test sizes) -> box head -> ``D`` detections per image."""
  feats = module.features(batch["image"], train=False)
  proposals = inference_proposals(module, feats, batch)
  return detect_from_proposals(module, feats, proposals.boxes, proposals.valid, batch)


# ------------------------------------------------------------------------------------------------
# Building from a config
# ------------------------------------------------------------------------------------------------

_FPN_RPN_LEVELS = ("P2", "P3", "P4", "P5", "P6")

PRESETS: dict[str, dict[str, Any]] = {
    # Paper-style ResNet-C4: RPN on C4 (k = 9), 14x14 RoIAlign on C4, res5 head.
    "c4": {
        "backbone": {"name": "resnet50", "norm": "frozen"},
        "neck": None,
        "rpn": {},
        "roi_heads": {"feature": "C4", "output_size": 14},
        "box_head": {"kind": "res5"},
    },
    # FPN (Lin et al. 2017): P2..P6 RPN with one anchor size per level, P2..P5 RoIAlign 7x7, 2 FC.
    "fpn": {
        "backbone": {"name": "resnet50", "norm": "frozen"},
        "neck": {"features": 256},
        "rpn": {"levels": _FPN_RPN_LEVELS, "anchor_sizes": anchor_ops.FPN_SIZES},
        "roi_heads": {"fpn_levels": (2, 3, 4, 5), "output_size": 7},
        "box_head": {"kind": "mlp", "representation_size": 1024},
    },
    # torchvision's fasterrcnn_resnet50_fpn architecture.
    "torchvision_fpn": {
        "backbone": {"name": "resnet50", "norm": "frozen"},
        "neck": {"features": 256},
        "rpn": {"levels": _FPN_RPN_LEVELS, "anchor_sizes": anchor_ops.FPN_SIZES,
                "objectness": "sigmoid", "anchor_offset": 0.0, "round_anchors": True},
        "roi_heads": {"fpn_levels": (2, 3, 4, 5), "output_size": 7, "box_background_slot": True,
                      "smooth_l1_beta": 1.0 / 9.0},
        "box_head": {"kind": "mlp", "representation_size": 1024},
    },
}
_SECTIONS = ("backbone", "neck", "rpn", "roi_heads", "box_head")
_TOP_KEYS = ("name", "preset", "axis_name", "dtype") + _SECTIONS
_BOX_HEADS = ("mlp", "conv", "res5")


def as_config_dict(config: Any) -> dict[str, Any]:
  if config is None:
    return {}
  if hasattr(config, "to_dict"):
    return dict(config.to_dict())
  if isinstance(config, Mapping):
    return dict(config)
  raise TypeError(f"model_config must be an ml_collections.ConfigDict or a dict, got "
                  f"{type(config).__name__}.")


def resolve_config(model_config: Any, presets: Mapping[str, Mapping[str, Any]] = PRESETS,
                   default_preset: str = "c4") -> dict[str, Any]:
  """The preset's sections updated key by key with ``model_config``'s (unknown keys rejected)."""
  cfg = as_config_dict(model_config)
  unknown = sorted(set(cfg) - set(_TOP_KEYS))
  if unknown:
    raise ValueError(f"unknown model config keys {unknown}; known keys: {sorted(_TOP_KEYS)}.")
  preset = cfg.get("preset") or default_preset
  if preset not in presets:
    raise ValueError(f"model.preset must be one of {sorted(presets)}, got {preset!r}.")
  out = {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in presets[preset].items()}
  for section in _SECTIONS:
    if section in cfg:
      given = cfg[section]
      if given is None or (section == "neck" and given is False):
        out[section] = None
      else:
        base = out.get(section) or {}
        out[section] = {**base, **as_config_dict(given)}
  out["axis_name"] = cfg.get("axis_name")
  dtype = cfg.get("dtype") or "float32"
  out["dtype"] = jnp.dtype(dtype)
  out["preset"] = preset
  return out


def dataclass_from_section(cls, values: Mapping[str, Any], section: str):
  names = {f.name for f in dataclasses.fields(cls)}
  unknown = sorted(set(values) - names)
  if unknown:
    raise ValueError(f"unknown model.{section} keys {unknown}; known keys: {sorted(names)}.")
  kwargs = {}
  for k, v in values.items():
    if isinstance(v, list):
      v = tuple(tuple(x) if isinstance(x, list) else x for x in v)
    kwargs[k] = v
  return cls(**kwargs)


def build_backbone(section: Mapping[str, Any], *, axis_name, dtype) -> nn.Module:
  """A backbone from ``model.backbone`` (``name`` + the module's fields)."""
  from jaxvision.models.backbones import make_backbone  # noqa: PLC0415

  kwargs = dict(section)
  name = kwargs.pop("name", "resnet50")
  if name.startswith("resnet"):
    kwargs.setdefault("axis_name", axis_name)
  kwargs.setdefault("dtype", dtype)
  return make_backbone(name, **kwargs)


def build_neck(section: Mapping[str, Any] | None, *, axis_name, dtype) -> nn.Module | None:
  """The two-stage FPN (``P2..P6``, ``P6`` by max pooling) from ``model.neck``, or None."""
  if section is None:
    return None
  from jaxvision.models.necks import fpn_two_stage  # noqa: PLC0415

  kwargs = dict(section)
  kwargs.pop("name", None)
  if kwargs.get("norm") == "batch":
    kwargs.setdefault("axis_name", axis_name)
  kwargs.setdefault("dtype", dtype)
  return fpn_two_stage(**kwargs)


def build_box_head(section: Mapping[str, Any], backbone: nn.Module, *, axis_name, dtype):
  kwargs = dict(section)
  kind = kwargs.pop("kind", "mlp")
  if kind not in _BOX_HEADS:
    raise ValueError(f"model.box_head.kind must be one of {_BOX_HEADS}, got {kind!r}.")
  if kind == "mlp":
    return heads.TwoMLPHead(dtype=dtype, **kwargs)
  if kind == "conv":
    return heads.ConvBoxHead(dtype=dtype, **kwargs)
  # res5: the backbone's own stage 5 design (depth, width, norm) unless given.
  kwargs.setdefault("depth", getattr(backbone, "depth", 50))
  kwargs.setdefault("width", getattr(backbone, "width", 64))
  kwargs.setdefault("norm", getattr(backbone, "norm", "frozen"))
  if kwargs["norm"] == "batch":
    kwargs.setdefault("axis_name", axis_name)
  return heads.Res5Head(dtype=dtype, **kwargs)


def build_faster_rcnn(model_config: Any, num_classes: int, *, module_cls: type = FasterRCNN,
                      **module_kwargs) -> FasterRCNN:
  """The ``FasterRCNN`` module for ``model_config`` (see ``make_faster_rcnn``).

  ``module_cls`` / ``module_kwargs``: a subclass and its extra fields (Mask R-CNN's ``mask_head``),
  built from the same resolved sections."""
  if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
    raise ValueError(f"num_classes must be a positive int (K foreground classes), got "
                     f"{num_classes!r}.")
  cfg = resolve_config(model_config)
  axis_name, dtype = cfg["axis_name"], cfg["dtype"]
  rpn_cfg = dataclass_from_section(rpn_lib.RPNConfig, cfg["rpn"], "rpn")
  roi_cfg = dataclass_from_section(heads.RoIHeadsConfig, cfg["roi_heads"], "roi_heads")
  backbone = build_backbone(cfg["backbone"], axis_name=axis_name, dtype=dtype)
  neck = build_neck(cfg["neck"], axis_name=axis_name, dtype=dtype)
  box_head = build_box_head(cfg["box_head"], backbone, axis_name=axis_name, dtype=dtype)
  return module_cls(
      backbone=backbone,
      rpn_head=rpn_lib.RPNHead(num_anchors=rpn_cfg.num_anchors, objectness=rpn_cfg.objectness,
                               conv_features=rpn_cfg.conv_features, dtype=dtype),
      box_head=box_head,
      box_predictor=heads.FastRCNNPredictor(
          num_classes, background_slot=roi_cfg.box_background_slot, dtype=dtype),
      rpn_config=rpn_cfg, roi_config=roi_cfg, neck=neck, **module_kwargs)


def init_key(rng):
  """An ``rbg`` PRNG key derived from ``rng`` (a legacy ``uint32[2]`` or typed key) for ``init``.

  Initialising a ResNet with threefry keys compiles one threefry kernel per parameter: measured
  54 s against 16 s with ``rbg`` keys for a tiny ResNet-18 Faster R-CNN on the (loaded) 2-core
  CPU. The derived key is a deterministic function of ``rng``.
  """
  if jax.dtypes.issubdtype(getattr(rng, "dtype", None), jax.dtypes.prng_key):
    if jax.random.key_impl(rng) == "rbg":
      return rng
    data = jax.random.key_data(rng)
  else:
    data = jnp.asarray(rng, jnp.uint32)
  data = data.reshape(-1)[:2]
  return jax.random.wrap_key_data(jnp.concatenate([data, data ^ jnp.uint32(0x9E3779B9)]),
                                  impl="rbg")


def detection_family(module: nn.Module, num_classes: int, losses_fn, detect_fn, *,
                     task: str = "detection") -> Family:
  """The ``Family`` of a two-stage detector whose loss and inference are functions of the bound
  module (``losses_fn(module, batch, key, axis_name=...) -> (total, terms)``,
  ``detect_fn(module, batch) -> Detections`` or a dict of predictions, e.g. with ``"masks"`` for
  ``task="instance_segmentation"``)."""

  def train_loss(variables, batch, *, rng, step=None, axis_name=None):
    del step
    sample_key, dropout_key = jax.random.split(rng)  # sampling; drop-out (e.g. VGG16's fc6/fc7)
    (total, terms), mutated = module.apply(variables, batch, sample_key, axis_name=axis_name,
                                           method=losses_fn, mutable=["batch_stats"],
                                           rngs={"dropout": dropout_key})
    return total, terms, dict(mutated)

  def predict(variables, batch):
    out = module.apply(variables, batch, method=detect_fn)
    return out.as_dict() if hasattr(out, "as_dict") else dict(out)

  def init(rng, batch):
    return module.init(init_key(rng), jnp.asarray(batch["image"], jnp.float32), train=False)

  return Family(module=module, task=task, train_loss=train_loss, predict=predict, init=init,
                num_classes=num_classes)


def make_faster_rcnn(model_config: Any, num_classes: int) -> Family:
  """Builds the Faster R-CNN family from ``config.model`` (``MODELS["faster_rcnn"]``).

  Args:
    model_config: ``ml_collections.ConfigDict`` or dict with (all optional) ``preset``
      (``"c4"`` default, ``"fpn"``, ``"torchvision_fpn"``; see ``PRESETS``), and sections that
      update the preset's key by key:

      * ``backbone``: ``name`` (``jaxvision.models.backbones.BACKBONES``) + the module's fields
        (``width``, ``norm``, ``output_stride``, ...).
      * ``neck``: None (no FPN) or the fields of ``jaxvision.models.necks.fpn_two_stage``
        (``features``, ``norm``).
      * ``rpn``: fields of ``rpn.RPNConfig`` (``levels``, ``anchor_sizes``, ``objectness``,
        ``pre_nms_top_n_train``, ...).
      * ``roi_heads``: fields of ``roi_heads.RoIHeadsConfig`` (``batch_size_per_image``,
        ``pooler``, ``output_size``, ``bg_iou_low``, ``detections_per_image``, ...).
      * ``box_head``: ``kind`` (``"mlp"``, ``"conv"``, ``"res5"``) + that head's fields.

      plus ``axis_name`` (cross-replica BatchNorm) and ``dtype`` (compute dtype name).
    num_classes: K foreground classes (labels 1..K).

  Returns:
    A detection ``Family``; ``predict`` returns ``D = roi_heads.detections_per_image`` boxes.

  Raises:
    ValueError: unknown keys or preset (listing the known ones), inconsistent settings.
  """
  module = build_faster_rcnn(model_config, num_classes)
  return detection_family(module, num_classes, faster_rcnn_losses, faster_rcnn_detect)
