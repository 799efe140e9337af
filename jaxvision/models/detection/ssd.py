"""SSD: Liu, Anguelov, Erhan, Szegedy, Reed, Fu and Berg, "SSD: Single Shot MultiBox Detector",
ECCV 2016 (https://arxiv.org/abs/1512.02325).

**Architecture** (paper Fig. 2, Sec. 2.1). A base network, truncated before its classifier, plus
extra feature layers that shrink progressively; on each of ``m`` *source* maps a 3x3 convolution
predicts, at every location and for each of the ``A_k`` default boxes there, ``K + 1`` class scores
(0 = background) and 4 offsets.

* ``SSD300`` (``backbone="vgg16"``): VGG-16 (``jaxvision.models.backbones.VGG16`` with SSD's
  changes: ``pool5`` 3x3/1, ``fc6`` a 3x3 conv with dilation 6 and 1024 channels, ``fc7`` 1x1 1024,
  ``pool3`` in ceil mode), sources ``conv4_3`` (L2-normalized with a learned per-channel scale
  initialised to 20, ParseNet, paper Sec. 3.1), ``fc7``, and the extras ``conv8_2`` (10x10x512),
  ``conv9_2`` (5x5x256), ``conv10_2`` (3x3x256) and ``conv11_2`` (1x1x256) -- each a 1x1 conv
  halving the channels then a 3x3 conv (stride 2 for the first two, unpadded for the last two).
  A 300 x 300 input gives maps 38, 19, 10, 5, 3, 1 with 4, 6, 6, 6, 4, 4 boxes per location:
  **8732 default boxes**.
* ``backbone="tiny"``: ``dense_common.TinyBackbone`` (CPU-sized, for the shapes dataset); the sources
  are some of its maps (``feature_sources``, e.g. ``("s8", "s16")``) plus extras (``extra_widths``:
  each a 1x1 conv to half the width then a 3x3 stride-2 conv).

**Default boxes** (Sec. 2.2, ``jaxvision.ops.anchors.ssd_default_boxes``): scales ``s_k`` linear
from ``s_min`` to ``s_max`` over the sources (or explicit ``scales``), aspect ratios ``{1, r, 1/r}`` per
``aspect_ratios`` entry plus an extra box of scale ``sqrt(s_k s_{k+1})``. ``SSD300`` uses the
scales of the paper's VOC model (0.1 on ``conv4_3``, then 0.2..0.88; Caffe's ``min_sizes``
30, 60, 111, 162, 213, 264 and ``max_sizes`` up to 315 px) and Caffe's ``steps`` for the centres.

**Training** (Sec. 2.2): matching and the MultiBox loss with 3:1 hard negative mining,
``jaxvision.losses.multibox`` (``ssd_match`` at IoU 0.5, smooth-L1 on offsets encoded with variances
0.1/0.2, softmax confidence loss, sum divided by the number of positives ``N``, ``psum``-ed over
devices; ``neg_pos_ratio=None`` turns mining off). **Inference**: offsets decoded on the default
boxes, softmax scores of the K foreground classes, ``dense_common.postprocess`` (score > 0.01, top
``pre_nms_top_k``, class-aware NMS at IoU 0.45, at most ``max_detections`` = 200 per image, the
paper's settings).
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxvision.losses import multibox
from jaxvision.models.detection import dense_common
from jaxvision.models.family import Family
from jaxvision.models.layers import Conv, ConvNormAct
from jaxvision.ops import anchors as anchor_ops
from jaxvision.ops import box_coder

__all__ = [
    "SSD", "L2Norm", "SSD300_EXTRAS", "SSD300_SCALES", "SSD300_STEPS", "default_boxes_for",
    "make_ssd",
]

SSD300_EXTRAS = ((256, 512, 2, 1), (128, 256, 2, 1), (128, 256, 1, 0), (128, 256, 1, 0))
"""SSD300's extra layers ``conv8..conv11``: (1x1 channels, 3x3 channels, 3x3 stride, 3x3 padding)."""
SSD300_SCALES = (0.1, 0.2, 0.37, 0.54, 0.71, 0.88, 1.05)
"""The paper's VOC SSD300 scales (Caffe ``min_sizes`` / 300 and the last ``max_size`` 315 / 300)."""
SSD300_STEPS = (8, 16, 32, 64, 100, 300)
"""Caffe's (and torchvision's) SSD300 steps: the default box centres are ``(j + 0.5) step``."""


class L2Norm(nn.Module):
  """ParseNet's L2 normalization over channels with a learned per-channel scale (SSD's conv4_3)."""
  scale_init: float = 20.0
  eps: float = 1e-10

  @nn.compact
  def __call__(self, x):
    scale = self.param("scale", nn.initializers.constant(self.scale_init), (x.shape[-1],))
    norm = jnp.sqrt(jnp.sum(jnp.square(x), axis=-1, keepdims=True)) + self.eps
    return x / norm * scale


class SSD(nn.Module):
  """SSD (see the module docstring).

  ``__call__(images [B, H, W, 3], train) -> {"cls_logits": tuple of [B, H_k, W_k, A_k, K + 1],
  "box_deltas": tuple of [B, H_k, W_k, A_k, 4]}``, one entry per source map (finest first).

  Attributes:
    num_classes: ``K`` (foreground).
    boxes_per_location: ``A_k`` per source (``anchors.ssd_boxes_per_location(aspect_ratios)``).
    backbone: ``"vgg16"`` (SSD300) or ``"tiny"``.
    feature_sources: tiny backbone maps used as sources (e.g. ``("s8", "s16")``).
    extra_layers: ``(c1, c3, stride, padding)`` per extra layer (``SSD300_EXTRAS``); for the tiny
      backbone, built from ``extra_widths``.
    widths, depth: tiny backbone stages.
    norm: ``None`` (paper) or ``"batch"`` (tiny backbone and extras).
    l2norm_sources: sources L2-normalized before their head (SSD300: ``conv4_3``).
    vgg_width, vgg_fc_features: a narrower VGG (tests): base width and ``fc6``/``fc7`` channels
      (1024).
  """
  num_classes: int
  boxes_per_location: Sequence[int]
  backbone: str = "vgg16"
  feature_sources: Sequence[str] = ("conv4_3", "fc7")
  extra_layers: Sequence[tuple] = SSD300_EXTRAS
  widths: Sequence[int] = (16, 32, 64, 128)
  depth: int = 2
  norm: str | None = None
  l2norm_sources: Sequence[str] = ("conv4_3",)
  vgg_width: int | None = None
  axis_name: str | None = None
  dtype: Any = jnp.float32
  vgg_fc_features: int = 1024

  @nn.compact
  def __call__(self, images, *, train: bool):
    if self.backbone == "vgg16":
      from jaxvision.models.backbones import VGG16  # noqa: PLC0415 - full-size configs only

      base = VGG16(fc_features=self.vgg_fc_features, pool5_stride=1, fc6_kernel=3,
                   fc6_dilation=6, ceil_mode=True,
                   dropout_rate=0.0, norm=self.norm, width=self.vgg_width,
                   axis_name=self.axis_name, dtype=self.dtype, name="backbone")
    elif self.backbone == "tiny":
      base = dense_common.TinyBackbone(widths=tuple(self.widths), depth=self.depth, norm=self.norm,
                                       act="relu", axis_name=self.axis_name, dtype=self.dtype,
                                       name="backbone")
    else:
      raise ValueError(f"SSD backbone must be 'vgg16' or 'tiny', got {self.backbone!r}.")
    feats = base(images, train=train)
    missing = [s for s in self.feature_sources if s not in feats]
    if missing:
      raise ValueError(f"SSD feature_sources {missing} are not backbone outputs {sorted(feats)}.")
    sources = []
    for name in self.feature_sources:
      x = feats[name]
      if name in self.l2norm_sources:
        x = L2Norm(name=f"{name}_l2norm")(x)
      sources.append(x)

    norm = None
    if self.norm == "batch":
      norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=0.9,
                               epsilon=1e-5, axis_name=self.axis_name, dtype=self.dtype)
    conv = functools.partial(Conv, dtype=self.dtype)
    x = feats[self.feature_sources[-1]]
    for i, (c1, c3, stride, pad) in enumerate(self.extra_layers):
      x = ConvNormAct(c1, (1, 1), conv=conv, norm=norm, name=f"extra{i + 1}_1")(x)
      x = ConvNormAct(c3, (3, 3), strides=stride, padding=((pad, pad), (pad, pad)), conv=conv,
                      norm=norm, name=f"extra{i + 1}_2")(x)  # (B, ~H/2, ~W/2, c3)
      sources.append(x)
    if len(sources) != len(self.boxes_per_location):
      raise ValueError(f"SSD has {len(sources)} source maps but boxes_per_location has "
                       f"{len(self.boxes_per_location)} entries; give one aspect_ratios entry per "
                       "source.")
    k1 = self.num_classes + 1
    cls, box = [], []
    for i, (x, a) in enumerate(zip(sources, self.boxes_per_location)):
      b, h, w, _ = x.shape
      c = Conv(a * k1, (3, 3), dtype=self.dtype, name=f"cls_head{i + 1}")(x)
      d = Conv(a * 4, (3, 3), dtype=self.dtype, name=f"box_head{i + 1}")(x)
      cls.append(c.reshape(b, h, w, a, k1).astype(jnp.float32))  # (B, H_k, W_k, A_k, K + 1)
      box.append(d.reshape(b, h, w, a, 4).astype(jnp.float32))  # (B, H_k, W_k, A_k, 4)
    return {"cls_logits": tuple(cls), "box_deltas": tuple(box)}


def default_boxes_for(level_shapes, image_hw, aspect_ratios, *, s_min=0.2, s_max=0.9, scales=None,
                      steps=None, clip=None) -> np.ndarray:
  """The default boxes (xyxy pixels, ``[sum_k H_k W_k A_k, 4]``) for the head's level shapes.

  Host-side NumPy (the shapes are static), cached per argument set.
  """
  key = (tuple(tuple(int(v) for v in s) for s in level_shapes),
         tuple(float(v) for v in image_hw), tuple(tuple(r) for r in aspect_ratios), float(s_min),
         float(s_max), None if scales is None else tuple(scales),
         None if steps is None else tuple(steps), clip)
  return _default_boxes_cached(key)


@functools.lru_cache(maxsize=64)
def _default_boxes_cached(key):
  shapes, image_hw, ratios, s_min, s_max, scales, steps, clip = key
  with jax.ensure_compile_time_eval():  # a constant even when first called inside a jit trace
    boxes = anchor_ops.ssd_default_boxes(list(shapes), image_hw, [list(r) for r in ratios],
                                         s_min=s_min, s_max=s_max, scales=scales, steps=steps,
                                         clip=clip)
    return np.asarray(boxes)


_MODULE_KEYS = ("backbone", "feature_sources", "extra_layers", "extra_widths", "widths", "depth",
                "norm", "l2norm_sources", "vgg_width", "vgg_fc_features", "axis_name")
_BOX_KEYS = ("aspect_ratios", "s_min", "s_max", "scales", "steps", "clip_default_boxes")
_LOSS_KEYS = ("iou_threshold", "neg_pos_ratio", "alpha", "hard_negative_mining")
_POST_KEYS = ("score_threshold", "nms_iou_threshold", "pre_nms_top_k", "max_detections",
              "top_k_per_class", "drop_empty_boxes")
_PRESETS = {
    "ssd300": {"backbone": "vgg16", "feature_sources": ("conv4_3", "fc7"),
               "extra_layers": SSD300_EXTRAS, "l2norm_sources": ("conv4_3",), "norm": None,
               "aspect_ratios": anchor_ops.SSD300_ASPECT_RATIOS, "scales": SSD300_SCALES,
               "steps": SSD300_STEPS},
    # torchvision's ssd300_vgg16 (converted weights: jaxvision.weights.convert_ssd300_vgg16): its
    # COCO scales with the normalized w, h clamped to [0, 1], 400 candidates per class, boxes
    # clipped to zero size kept.
    "torchvision_ssd300": {"backbone": "vgg16", "feature_sources": ("conv4_3", "fc7"),
                           "extra_layers": SSD300_EXTRAS, "l2norm_sources": ("conv4_3",),
                           "norm": None, "aspect_ratios": anchor_ops.SSD300_ASPECT_RATIOS,
                           "scales": anchor_ops.TORCHVISION_SSD300_SCALES, "steps": SSD300_STEPS,
                           "clip_default_boxes": "size", "pre_nms_top_k": 400,
                           "top_k_per_class": True, "drop_empty_boxes": False},
}


def make_ssd(model_config: Any, num_classes: int) -> Family:
  """The SSD family (``MODELS["ssd"]``).

  ``config.model`` keys (all optional): ``preset`` (``"ssd300"``, the default: everything of
  SSD300 below, overridable key by key; ``"torchvision_ssd300"``: torchvision's
  ``ssd300_vgg16``); module ``backbone`` ("vgg16" | "tiny"),
  ``feature_sources``, ``extra_layers`` or, for the tiny backbone, ``extra_widths`` (one extra
  source per entry: 1x1 to half, then 3x3 stride 2), ``widths``, ``depth``, ``norm``,
  ``l2norm_sources``, ``vgg_width`` (narrower VGG for tests), ``axis_name``, ``dtype``; default
  boxes ``aspect_ratios`` (one tuple per source), ``s_min`` (0.2), ``s_max`` (0.9), ``scales``,
  ``steps``, ``clip_default_boxes`` (None | "size" | "image"); loss ``iou_threshold`` (0.5),
  ``neg_pos_ratio`` (3), ``hard_negative_mining`` (True; False = every negative), ``alpha`` (1);
  post-processing ``score_threshold`` (0.01), ``nms_iou_threshold`` (0.45), ``pre_nms_top_k``
  (1000), ``max_detections`` (200), ``top_k_per_class`` (False: ``pre_nms_top_k`` over all
  (box, class) pairs), ``drop_empty_boxes`` (True).
  """
  cfg = dense_common.as_dict(model_config)
  dense_common.check_keys(cfg, _MODULE_KEYS + _BOX_KEYS + _LOSS_KEYS + _POST_KEYS +
                          ("preset", "dtype"), "SSD")
  preset = cfg.get("preset", "ssd300")
  if preset is not None and preset not in _PRESETS:
    raise ValueError(f"model.preset must be one of {sorted(_PRESETS)} or None, got {preset!r}.")
  full = dict(_PRESETS[preset]) if preset else {}
  full.update({k: v for k, v in cfg.items() if k != "preset"})
  if full.get("backbone") == "tiny" and "extra_widths" in full:
    full["extra_layers"] = tuple((max(w // 2, 1), int(w), 2, 1) for w in full["extra_widths"])
  if full.get("backbone") == "tiny" and "l2norm_sources" not in cfg:
    full["l2norm_sources"] = ()
  aspect_ratios = tuple(tuple(r) for r in full.get("aspect_ratios",
                                                   anchor_ops.SSD300_ASPECT_RATIOS))
  per_location = anchor_ops.ssd_boxes_per_location(aspect_ratios)
  kw = {}
  for k in ("backbone", "feature_sources", "widths", "l2norm_sources"):
    if k in full:
      kw[k] = tuple(full[k]) if k != "backbone" else full[k]
  if "extra_layers" in full:
    kw["extra_layers"] = tuple(tuple(int(v) for v in e) for e in full["extra_layers"])
  for k in ("depth", "norm", "vgg_width", "vgg_fc_features", "axis_name"):
    if k in full:
      kw[k] = full[k]
  dtype = full.get("dtype", "float32")
  module = SSD(num_classes=num_classes, boxes_per_location=per_location,
               dtype=jnp.dtype(dtype) if isinstance(dtype, str) else dtype, **kw)

  box_kw = {"s_min": float(full.get("s_min", 0.2)), "s_max": float(full.get("s_max", 0.9)),
            "scales": None if full.get("scales") is None else tuple(float(s) for s in full["scales"]),
            "steps": None if full.get("steps") is None else tuple(float(s) for s in full["steps"]),
            "clip": full.get("clip_default_boxes")}
  iou_threshold = float(full.get("iou_threshold", 0.5))
  mining = bool(full.get("hard_negative_mining", True))
  neg_pos_ratio = float(full.get("neg_pos_ratio", 3.0)) if mining else None
  alpha = float(full.get("alpha", 1.0))
  post_kw = {"score_threshold": float(full.get("score_threshold", 0.01)),
             "iou_threshold": float(full.get("nms_iou_threshold", 0.45)),
             "pre_nms_top_k": int(full.get("pre_nms_top_k", 1000)),
             "max_detections": int(full.get("max_detections", 200)),
             "top_k_per_class": bool(full.get("top_k_per_class", False)),
             "drop_empty": bool(full.get("drop_empty_boxes", True))}

  def flat(outputs):
    cls = jnp.concatenate([c.reshape(c.shape[0], -1, c.shape[-1]) for c in outputs["cls_logits"]],
                          axis=1)  # (B, sum H W A, K + 1)
    box = jnp.concatenate([d.reshape(d.shape[0], -1, 4) for d in outputs["box_deltas"]], axis=1)
    return cls, box

  def priors_for(outputs, image_hw):
    shapes = [c.shape[1:3] for c in outputs["cls_logits"]]
    return jnp.asarray(default_boxes_for(shapes, image_hw, aspect_ratios, **box_kw))

  def loss(outputs, batch, step):
    del step
    cls, box = flat(outputs)
    priors = priors_for(outputs, batch["image"].shape[1:3])  # (A, 4)
    labels, loc_t, pos = jax.vmap(
        functools.partial(multibox.ssd_targets, iou_threshold=iou_threshold),
        in_axes=(None, 0, 0, 0))(priors, batch["boxes"], batch["labels"], batch["box_valid"])
    ev = dense_common.example_valid(batch)
    pos = pos & (ev[:, None] > 0)
    per = jax.vmap(functools.partial(multibox.multibox_loss, neg_pos_ratio=neg_pos_ratio,
                                     alpha=alpha))(cls, box, labels, loc_t, pos)
    sums = {"conf": jnp.sum(per["conf"] * ev[:, None]), "loc": jnp.sum(per["loc"] * ev[:, None])}
    num_pos = jnp.sum(per["num_positives"] * ev)
    stats = {"num_positives": num_pos, "num_negatives": jnp.sum(per["num_negatives"] * ev)}
    return sums, num_pos, stats

  def decode(outputs, image_hw):
    cls, box = flat(outputs)
    priors = priors_for(outputs, image_hw)
    boxes = box_coder.decode_boxes(box, priors[None], box_coder.SSD_WEIGHTS)  # (B, A, 4)
    scores = jax.nn.softmax(cls, axis=-1)[..., 1:]  # (B, A, K)
    return boxes, scores

  family = dense_common.dense_family(module, num_classes=num_classes, loss=loss, decode=decode,
                                     postprocess_kwargs=post_kw)
  return family
