"""YOLO v1 and YOLOv2 (single-shot grid detectors).

* Redmon, Divvala, Girshick and Farhadi, "You Only Look Once: Unified, Real-Time Object Detection",
  CVPR 2016 (https://arxiv.org/abs/1506.02640).
* Redmon and Farhadi, "YOLO9000: Better, Faster, Stronger", CVPR 2017
  (https://arxiv.org/abs/1612.08242).

**YOLO v1.** A conv net (the paper's 24 conv layers, Fig. 3: ``YOLOV1_LAYERS``; or, for small
experiments, ``dense_common.TinyBackbone``) followed by two fully connected layers (4096 units,
dropout 0.5, then ``S * S * (5B + C)``), reshaped to the ``S x S x (5B + C)`` grid: per cell ``B``
boxes ``(x, y, sqrt w, sqrt h, confidence)`` and ``C`` class probabilities. Leaky ReLU (0.1)
everywhere, a linear last layer (paper Sec. 2.2). ``head="conv"`` (not the paper) replaces the two
FC layers by a 3x3 conv and a 1x1 conv on the feature map, making ``S`` the feature map size.
Loss: ``jaxvision.losses.yolo.yolo_v1_loss`` (sum-squared error, ``lambda_coord = 5``,
``lambda_noobj = 0.5``, square roots of ``w``, ``h``, responsible = highest-IoU predictor, one
object per cell -- the largest -- see that module). Normalized by the number of images.
Inference: class-specific confidence ``Pr(class | object) * confidence`` per box (Sec. 2, Eq. 2);
the linear outputs are clipped to ``[0, 1]`` before the product.

**YOLOv2.** BatchNorm after every conv (no dropout), Darknet-19 (paper Table 6: ``DARKNET19_LAYERS``)
or ``TinyBackbone``, then the detection head of Sec. 2: three 3x3 convs (the last after the
concatenation), a **passthrough layer** that takes the finer feature map (26x26 at 416 px; stride 16),
reduces it with a 1x1 conv (64 channels, as ``yolo-voc.cfg``) and stacks adjacent 2x2 pixels into
channels (``space_to_depth``, "reorg") before concatenating it with the coarse map, and a 1x1 conv to
``A * (5 + C)`` outputs. **Anchor priors** ``(p_w, p_h)`` in grid units from k-means on the
training boxes with distance ``1 - IoU`` (``jaxvision.ops.anchors.kmeans_anchors``; the config
stores them and states the command that computed them). **Direct location prediction**:
``b_x = sigmoid(t_x) + c_x``, ``b_w = p_w exp(t_w)`` (``box_coder.decode_yolo_v2``); objectness
``sigmoid(t_o)``, classes softmax; score ``sigmoid(t_o) * softmax``. Loss:
``jaxvision.losses.yolo.yolo_v2_loss`` (Darknet's region layer).

**Multi-scale training** (YOLOv2 Sec. 2: "every 10 batches our network randomly chooses a new image
dimension size"). The model is fully convolutional and the loss reads the grid size from the
output, so both run at any multiple of the stride. The training loop feeds one ``image_size``, so
the size change happens inside the step: ``multiscale_sizes = ((96, 96), (128, 128), (160, 160))``
makes every training step resize the batch on the device (``dense_common.resize_batch``: images,
boxes, ``image_hw``) to a size drawn anew every ``multiscale_every`` (10) steps from the step
number alone, identically on every device. The sizes are the branches of one ``lax.switch``, so the
step is compiled once (one branch per size; compile time grows with the number of sizes) and runs
only the chosen branch. Evaluation runs at the pipeline's ``image_size``. Caveat measured on
XLA:CPU: convolutions inside the switch ran about 8x slower than the same step without it, so the
CPU shapes config leaves multi-scale off (``configs/yolo_v2_shapes.py:multiscale`` turns it on).
A loop whose data pipeline emitted batches of a per-step size would get "one compile per size"
from ``jax.jit``'s shape cache without any control flow.

Both families predict ``{"boxes", "scores", "labels", "valid"}`` with a fixed number of detections
through ``dense_common.postprocess`` (score threshold, top-k, class-aware NMS).
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxvision.losses import yolo as yolo_loss
from jaxvision.models.detection import dense_common
from jaxvision.models.family import Family
from jaxvision.models.layers import Conv, ConvNormAct
from jaxvision.ops import box_coder

__all__ = [
    "YOLOV1_LAYERS", "DARKNET19_LAYERS", "VOC_PRIORS", "ConvStack", "YOLOv1", "YOLOv2",
    "space_to_depth", "make_yolo_v1", "make_yolo_v2",
]

# Layer lists: ("C", kernel, filters, stride) conv, ("M",) 2x2 stride-2 max pool, ("T", name) tap.
YOLOV1_LAYERS = (
    ("C", 7, 64, 2), ("M",),
    ("C", 3, 192, 1), ("M",),
    ("C", 1, 128, 1), ("C", 3, 256, 1), ("C", 1, 256, 1), ("C", 3, 512, 1), ("M",),
    *(("C", 1, 256, 1), ("C", 3, 512, 1)) * 4, ("C", 1, 512, 1), ("C", 3, 1024, 1), ("M",),
    *(("C", 1, 512, 1), ("C", 3, 1024, 1)) * 2, ("C", 3, 1024, 1), ("C", 3, 1024, 2),
    ("C", 3, 1024, 1), ("C", 3, 1024, 1), ("T", "features"),
)
"""The 24 conv layers of YOLO v1 (paper Fig. 3): 448 x 448 -> 7 x 7 x 1024."""

DARKNET19_LAYERS = (
    ("C", 3, 32, 1), ("M",),
    ("C", 3, 64, 1), ("M",),
    ("C", 3, 128, 1), ("C", 1, 64, 1), ("C", 3, 128, 1), ("M",),
    ("C", 3, 256, 1), ("C", 1, 128, 1), ("C", 3, 256, 1), ("M",),
    ("C", 3, 512, 1), ("C", 1, 256, 1), ("C", 3, 512, 1), ("C", 1, 256, 1), ("C", 3, 512, 1),
    ("T", "fine"), ("M",),
    ("C", 3, 1024, 1), ("C", 1, 512, 1), ("C", 3, 1024, 1), ("C", 1, 512, 1), ("C", 3, 1024, 1),
    ("T", "features"),
)
"""Darknet-19's 18 conv layers (YOLOv2 Table 6, without the classifier): 416 -> 13 x 13 x 1024, with
the passthrough source ``fine`` (26 x 26 x 512)."""

VOC_PRIORS = ((1.3221, 1.73145), (3.19275, 4.00944), (5.05587, 8.09892), (9.47112, 4.84053),
              (11.2364, 10.0071))
"""YOLOv2's five VOC priors in grid units at 13 x 13 (``yolo-voc.cfg``)."""


def space_to_depth(x, block: int = 2):
  """YOLOv2's passthrough "reorg": ``[B, H, W, C] -> [B, H/b, W/b, b*b*C]``, stacking each ``b x b``
  block of adjacent pixels into channels (order: row in block, column in block, channel)."""
  b, h, w, c = x.shape
  if h % block or w % block:
    raise ValueError(f"space_to_depth needs H and W divisible by block={block}, got shape "
                     f"{tuple(x.shape)}.")
  x = x.reshape(b, h // block, block, w // block, block, c)  # (B, H/b, b, W/b, b, C)
  x = x.transpose(0, 1, 3, 2, 4, 5)  # (B, H/b, W/b, b, b, C)
  return x.reshape(b, h // block, w // block, block * block * c)


def _norm_and_act(train: bool, norm: str | None, axis_name, act: str, dtype):
  norm_fn = None
  if norm == "batch":
    norm_fn = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=0.9,
                                epsilon=1e-5, axis_name=axis_name, dtype=dtype)
  elif norm is not None:
    raise ValueError(f"norm must be 'batch' or None, got {norm!r}.")
  return norm_fn, dense_common._ACTIVATIONS[act]  # noqa: SLF001


class ConvStack(nn.Module):
  """A sequential conv net from a layer list (``YOLOV1_LAYERS``, ``DARKNET19_LAYERS``).

  Entries: ``("C", k, filters, stride)`` a ``k x k`` ``ConvNormAct``, ``("M",)`` 2x2 stride-2 max
  pool, ``("T", name)`` records the current map under ``name``. Returns the dict of taps.
  """
  layers: Sequence[tuple]
  norm: str | None = "batch"
  act: str = "leaky_relu"
  axis_name: str | None = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool):
    norm, act = _norm_and_act(train, self.norm, self.axis_name, self.act, self.dtype)
    conv = functools.partial(Conv, dtype=self.dtype)
    taps, n = {}, 0
    for layer in self.layers:
      if layer[0] == "C":
        _, k, filters, stride = layer
        n += 1
        x = ConvNormAct(filters, (k, k), strides=stride, conv=conv, norm=norm, act=act,
                        name=f"conv{n}")(x)
      elif layer[0] == "M":
        x = nn.max_pool(x, (2, 2), strides=(2, 2), padding="SAME")
      elif layer[0] == "T":
        taps[layer[1]] = x
      else:
        raise ValueError(f"unknown layer entry {layer!r}; expected ('C', k, filters, stride), "
                         "('M',) or ('T', name).")
    return taps


def _backbone(kind: str, layers, widths, depth, norm, act, axis_name, dtype, taps):
  """``(module, {role: feature name})`` for ``kind`` in ``"paper"`` (a layer list) or ``"tiny"``."""
  if kind == "tiny":
    n = len(widths)
    names = {"features": f"s{2 ** n}", "fine": f"s{2 ** (n - 1)}"}
    return dense_common.TinyBackbone(widths=tuple(widths), depth=depth, norm=norm, act=act,
                                     axis_name=axis_name, dtype=dtype, name="backbone"), names
  if kind == "paper":
    return ConvStack(layers=tuple(layers), norm=norm, act=act, axis_name=axis_name, dtype=dtype,
                     name="backbone"), {t: t for t in taps}
  raise ValueError(f"backbone must be 'paper' or 'tiny', got {kind!r}.")


class YOLOv1(nn.Module):
  """YOLO v1 (see the module docstring). ``__call__(images [B, H, W, 3], train) -> {"pred": [B, S,
  S, 5B + C]}``.

  Attributes:
    num_classes: ``C``.
    num_boxes: ``B`` (paper: 2).
    grid_size: ``S`` (paper: 7); ``None`` with ``head="conv"``: the feature map size.
    backbone: ``"paper"`` (``YOLOV1_LAYERS``) or ``"tiny"`` (``TinyBackbone(widths, depth)``).
    widths, depth: the tiny backbone's stages.
    head: ``"fc"`` (paper: FC ``hidden`` -> dropout -> FC ``S S (5B + C)``) or ``"conv"``.
    hidden: units of the first FC layer (paper: 4096).
    dropout_rate: after the first FC layer (paper: 0.5).
    norm: ``None`` (paper: YOLO v1 has no BatchNorm) or ``"batch"``.
  """
  num_classes: int
  num_boxes: int = 2
  grid_size: int | None = 7
  backbone: str = "paper"
  widths: Sequence[int] = (16, 32, 64, 128)
  depth: int = 2
  head: str = "fc"
  hidden: int = 4096
  dropout_rate: float = 0.5
  norm: str | None = None
  axis_name: str | None = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images, *, train: bool):
    net, names = _backbone(self.backbone, YOLOV1_LAYERS, self.widths, self.depth, self.norm,
                           "leaky_relu", self.axis_name, self.dtype, ("features",))
    x = net(images, train=train)[names["features"]]  # (B, h, w, F)
    b = x.shape[0]
    out_ch = 5 * self.num_boxes + self.num_classes
    if self.head == "fc":
      if self.grid_size is None:
        raise ValueError("YOLOv1 with head='fc' needs grid_size (the paper's S).")
      s = int(self.grid_size)
      x = x.reshape(b, -1)  # (B, h w F)
      x = dense_common.leaky_relu(nn.Dense(self.hidden, dtype=self.dtype, name="fc1")(x))
      x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
      x = nn.Dense(s * s * out_ch, dtype=self.dtype, name="fc2")(x)  # (B, S S (5B + C))
      pred = x.reshape(b, s, s, out_ch)
    elif self.head == "conv":
      norm, act = _norm_and_act(train, self.norm, self.axis_name, "leaky_relu", self.dtype)
      x = ConvNormAct(self.hidden, (3, 3), conv=functools.partial(Conv, dtype=self.dtype),
                      norm=norm, act=act, name="head_conv")(x)
      pred = Conv(out_ch, (1, 1), dtype=self.dtype, name="head_out")(x)  # (B, h, w, 5B + C)
      if self.grid_size is not None and pred.shape[1:3] != (self.grid_size, self.grid_size):
        raise ValueError(f"YOLOv1 head='conv' makes S the feature map size {pred.shape[1:3]}, but "
                         f"grid_size={self.grid_size}; set grid_size=None or change the input.")
    else:
      raise ValueError(f"YOLOv1.head must be 'fc' or 'conv', got {self.head!r}.")
    return {"pred": pred.astype(jnp.float32)}


class YOLOv2(nn.Module):
  """YOLOv2 (see the module docstring). ``__call__(images, train) -> {"pred": [B, S, S, A, 5 + C]}``
  with ``S = H / stride`` (32 for Darknet-19, ``2**len(widths)`` for the tiny backbone).

  Attributes:
    num_classes: ``C``.
    num_priors: ``A`` (5).
    backbone: ``"paper"`` (Darknet-19) or ``"tiny"``.
    widths, depth: the tiny backbone's stages (the passthrough source is the second-to-last).
    head_width: channels of the head's 3x3 convs (paper: 1024).
    passthrough_width: channels of the 1x1 conv before the reorg (``yolo-voc.cfg``: 64); ``0`` for
      no passthrough layer (ablation).
    norm: ``"batch"`` (paper) or ``None``.
  """
  num_classes: int
  num_priors: int = 5
  backbone: str = "paper"
  widths: Sequence[int] = (16, 32, 64, 128)
  depth: int = 2
  head_width: int = 1024
  passthrough_width: int = 64
  norm: str | None = "batch"
  axis_name: str | None = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images, *, train: bool):
    net, names = _backbone(self.backbone, DARKNET19_LAYERS, self.widths, self.depth, self.norm,
                           "leaky_relu", self.axis_name, self.dtype, ("features", "fine"))
    feats = net(images, train=train)
    norm, act = _norm_and_act(train, self.norm, self.axis_name, "leaky_relu", self.dtype)
    unit = functools.partial(ConvNormAct, conv=functools.partial(Conv, dtype=self.dtype),
                             norm=norm, act=act)
    x = feats[names["features"]]  # (B, S, S, F)
    x = unit(self.head_width, (3, 3), name="head_conv1")(x)
    x = unit(self.head_width, (3, 3), name="head_conv2")(x)
    if self.passthrough_width:
      fine = unit(self.passthrough_width, (1, 1), name="passthrough")(feats[names["fine"]])
      x = jnp.concatenate([space_to_depth(fine, 2), x], axis=-1)  # (B, S, S, 4 P + head_width)
    x = unit(self.head_width, (3, 3), name="head_conv3")(x)
    out = Conv(self.num_priors * (5 + self.num_classes), (1, 1), dtype=self.dtype,
               name="head_out")(x)  # (B, S, S, A (5 + C))
    b, s_h, s_w, _ = out.shape
    return {"pred": out.reshape(b, s_h, s_w, self.num_priors, 5 + self.num_classes)
                       .astype(jnp.float32)}


# ------------------------------------------------------------------------------------------------
# Family glue
# ------------------------------------------------------------------------------------------------

_POSTPROCESS_KEYS = ("score_threshold", "iou_threshold", "pre_nms_top_k", "max_detections")
_POSTPROCESS_DEFAULTS = {"score_threshold": 0.01, "iou_threshold": 0.45, "pre_nms_top_k": 1000,
                         "max_detections": 100}


def _postprocess_kwargs(cfg):
  out = dict(_POSTPROCESS_DEFAULTS)
  out.update({k: cfg[k] for k in _POSTPROCESS_KEYS if k in cfg})
  out["score_threshold"] = float(out["score_threshold"])
  out["iou_threshold"] = float(out["iou_threshold"])
  out["pre_nms_top_k"] = int(out["pre_nms_top_k"])
  out["max_detections"] = int(out["max_detections"])
  return out


def _dtype(cfg):
  d = cfg.get("dtype", "float32")
  return jnp.dtype(d) if isinstance(d, str) else d


def _batch_terms(per_image, ev, names):
  """Sums per-image ``[B, ...]`` terms, weighting each image by ``ev`` (0 for padding examples)."""
  out = {}
  for n in names:
    v = per_image[n]
    out[n] = jnp.sum(v.reshape(v.shape[0], -1).sum(axis=1) * ev)
  return out


_V1_MODULE_KEYS = ("num_boxes", "grid_size", "backbone", "widths", "depth", "head", "hidden",
                   "dropout_rate", "norm", "axis_name")
_V1_LOSS_KEYS = ("lambda_coord", "lambda_noobj", "rescore")


def make_yolo_v1(model_config: Any, num_classes: int) -> Family:
  """The YOLO v1 family (``MODELS["yolo_v1"]``).

  ``config.model`` keys (all optional): the ``YOLOv1`` fields ``num_boxes`` (2), ``grid_size`` (7),
  ``backbone`` ("paper" | "tiny"), ``widths``, ``depth``, ``head`` ("fc" | "conv"), ``hidden``
  (4096), ``dropout_rate`` (0.5), ``norm`` (None | "batch"), ``axis_name``, ``dtype``; loss
  ``lambda_coord`` (5), ``lambda_noobj`` (0.5), ``rescore`` (True); post-processing
  ``score_threshold`` (0.01), ``iou_threshold`` (0.45), ``pre_nms_top_k`` (1000),
  ``max_detections`` (100).
  """
  cfg = dense_common.as_dict(model_config)
  dense_common.check_keys(cfg, _V1_MODULE_KEYS + _V1_LOSS_KEYS + _POSTPROCESS_KEYS + ("dtype",),
                          "YOLO v1")
  kw = {k: (tuple(cfg[k]) if k == "widths" else cfg[k]) for k in _V1_MODULE_KEYS if k in cfg}
  module = YOLOv1(num_classes=num_classes, dtype=_dtype(cfg), **kw)
  nb = module.num_boxes
  loss_kw = {"lambda_coord": float(cfg.get("lambda_coord", 5.0)),
             "lambda_noobj": float(cfg.get("lambda_noobj", 0.5)),
             "rescore": bool(cfg.get("rescore", True))}
  names = ("coord_xy", "coord_wh", "obj", "noobj", "class")

  def loss(outputs, batch, step):
    del step
    pred = outputs["pred"]  # (B, S, S, 5B + C)
    hw = batch["image"].shape[1:3]  # the grid spans the network input
    fn = functools.partial(yolo_loss.yolo_v1_loss, image_hw=hw, num_boxes=nb,
                           num_classes=num_classes, **loss_kw)
    per = jax.vmap(fn)(pred, batch["boxes"], batch["labels"], batch["box_valid"])
    ev = dense_common.example_valid(batch)
    sums = _batch_terms(per, ev, names)
    stats = {"num_objects": jnp.sum(per["num_objects"] * ev),
             "num_dropped_gt": jnp.sum(per["num_dropped"] * ev)}
    return sums, jnp.sum(ev), stats

  def decode(outputs, image_hw):
    codes, conf, cls = yolo_loss.yolo_v1_split(outputs["pred"], num_boxes=nb,
                                               num_classes=num_classes)
    boxes = jax.vmap(lambda c: yolo_loss.yolo_v1_decode(c, image_hw))(codes)  # (B, S, S, B', 4)
    # Class-specific confidence: Pr(class | object) * confidence (paper Eq. 2), clipped to [0, 1].
    scores = (jnp.clip(conf, 0.0, 1.0)[..., None] *
              jnp.clip(cls, 0.0, 1.0)[..., None, :])  # (B, S, S, B', C)
    b = boxes.shape[0]
    return boxes.reshape(b, -1, 4), scores.reshape(b, -1, num_classes)

  return dense_common.dense_family(module, num_classes=num_classes, loss=loss, decode=decode,
                                   postprocess_kwargs=_postprocess_kwargs(cfg))


_V2_MODULE_KEYS = ("backbone", "widths", "depth", "head_width", "passthrough_width", "norm",
                   "axis_name")
_V2_LOSS_KEYS = ("coord_scale", "object_scale", "noobject_scale", "class_scale",
                 "ignore_threshold", "rescore", "prior_weight", "prior_steps")
_V2_OTHER_KEYS = ("priors", "multiscale_sizes", "multiscale_every", "multiscale_seed", "dtype")


def make_yolo_v2(model_config: Any, num_classes: int) -> Family:
  """The YOLOv2 family (``MODELS["yolo_v2"]``).

  ``config.model`` keys (all optional): ``priors`` (``A`` pairs ``(p_w, p_h)`` in grid units;
  default ``VOC_PRIORS``; compute them with ``jaxvision.ops.anchors.kmeans_anchors`` on the training
  boxes divided by the stride), the ``YOLOv2`` fields ``backbone``, ``widths``, ``depth``,
  ``head_width``, ``passthrough_width``, ``norm``, ``axis_name``, ``dtype``; loss
  ``coord_scale`` (1), ``object_scale`` (5), ``noobject_scale`` (1), ``class_scale`` (1),
  ``ignore_threshold`` (0.6), ``rescore`` (True), ``prior_weight`` (0.01) applied during the first
  ``prior_steps`` steps (0: never); multi-scale ``multiscale_sizes`` (``(H, W)`` pairs, empty: off),
  ``multiscale_every`` (10), ``multiscale_seed`` (0); post-processing as ``make_yolo_v1``.
  """
  cfg = dense_common.as_dict(model_config)
  dense_common.check_keys(cfg, _V2_MODULE_KEYS + _V2_LOSS_KEYS + _V2_OTHER_KEYS + _POSTPROCESS_KEYS,
                          "YOLOv2")
  priors = np.asarray(cfg.get("priors") or VOC_PRIORS, np.float32)
  if priors.ndim != 2 or priors.shape[1] != 2 or not np.all(priors > 0):
    raise ValueError(f"model.priors must be A pairs (p_w, p_h) of positive grid-unit sizes, got "
                     f"{cfg.get('priors')!r}.")
  kw = {k: (tuple(cfg[k]) if k == "widths" else cfg[k]) for k in _V2_MODULE_KEYS if k in cfg}
  module = YOLOv2(num_classes=num_classes, num_priors=len(priors), dtype=_dtype(cfg), **kw)
  loss_kw = {k: float(cfg[k]) for k in ("coord_scale", "object_scale", "noobject_scale",
                                        "class_scale", "ignore_threshold") if k in cfg}
  loss_kw["rescore"] = bool(cfg.get("rescore", True))
  prior_weight = float(cfg.get("prior_weight", 0.01))
  prior_steps = int(cfg.get("prior_steps", 0))
  names = ("coord", "obj", "noobj", "class", "prior")
  priors_j = jnp.asarray(priors)

  def loss(outputs, batch, step):
    pred = outputs["pred"]  # (B, S, S, A, 5 + C)
    hw = batch["image"].shape[1:3]
    if prior_steps > 0 and step is not None:
      pw = jnp.where(jnp.asarray(step) < prior_steps, prior_weight, 0.0)
    else:
      pw = 0.0
    fn = functools.partial(yolo_loss.yolo_v2_loss, priors=priors_j, image_hw=hw,
                           num_classes=num_classes, prior_weight=pw, **loss_kw)
    per = jax.vmap(fn)(pred, batch["boxes"], batch["labels"], batch["box_valid"])
    ev = dense_common.example_valid(batch)
    sums = _batch_terms(per, ev, names)
    stats = {"num_objects": jnp.sum(per["num_objects"] * ev),
             "num_dropped_gt": jnp.sum(per["num_dropped"] * ev)}
    return sums, jnp.sum(ev), stats

  def decode(outputs, image_hw):
    pred = outputs["pred"]
    boxes = jax.vmap(lambda p: box_coder.decode_yolo_v2(p[..., :4], priors_j, image_hw,
                                                        clip=box_coder.BBOX_XFORM_CLIP))(pred)
    scores = jax.nn.sigmoid(pred[..., 4:5]) * jax.nn.softmax(pred[..., 5:], axis=-1)
    b = pred.shape[0]
    return boxes.reshape(b, -1, 4), scores.reshape(b, -1, num_classes)

  sizes = tuple(tuple(int(v) for v in s) for s in (cfg.get("multiscale_sizes") or ()))
  return dense_common.dense_family(
      module, num_classes=num_classes, loss=loss, decode=decode,
      postprocess_kwargs=_postprocess_kwargs(cfg), multiscale_sizes=sizes,
      multiscale_every=int(cfg.get("multiscale_every", 10)),
      multiscale_seed=int(cfg.get("multiscale_seed", 0)))
