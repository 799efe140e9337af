"""Fast R-CNN: Girshick, "Fast R-CNN", ICCV 2015 (https://arxiv.org/abs/1504.08083).

A detector on *external* region proposals (selective search in the paper): the whole image goes
through a convolutional network once; each proposal (RoI) is max-pooled from the last conv map
into a fixed ``7 x 7`` grid (RoI pooling, Sec. 2.1); fully connected layers map it to a feature
vector that feeds two sibling outputs, a softmax over ``K + 1`` classes and class-specific box
deltas (Sec. 2, Fig. 1). Training (Sec. 2.3):

* hierarchical sampling: ``N = 2`` images per mini-batch, ``R / N = 64`` RoIs per image, 25% of
  them foreground (IoU ``>= 0.5`` with a gt box, labelled with its class), the rest background with
  IoU in ``[0.1, 0.5)`` (below 0.1 ignored, "a heuristic for hard example mining");
* the multi-task loss ``L = L_cls + lambda [u >= 1] L_loc`` (Eq. 1), ``lambda = 1``, smooth-L1 with
  ``beta = 1`` (Eq. 3) on the deltas of the gt class ``u`` only, targets normalized (weights
  10, 10, 5, 5);
* inference: per-class decoding and NMS (``roi_heads.postprocess_detections``).

The module is ``faster_rcnn.FasterRCNN`` without an RPN (``rpn_head=None``): the same ``features``
and ``roi_heads`` stage methods and the same RoI machinery (``roi_heads.py``), so Fast R-CNN, Faster
R-CNN and Mask R-CNN share one implementation of the second stage. One jitted training step.

Proposals. The batch contract carries them: ``batch["proposals"] [B, P, 4]`` (xyxy, network-input
pixels) and ``batch["proposals_valid"] [B, P]``; they are clipped to the image and degenerate or
non-finite ones are dropped (``clean_proposals``), so proposals partly or entirely outside the image
are harmless (an image left without any still trains on its appended gt boxes). With
``model.proposals = "sliding_windows"`` the model instead uses a fixed set of dense multi-scale
sliding windows (``sliding_windows``; the paper's Sec. 5.5 compares selective search with such
"dense" boxes), computed once on the host, so it trains on datasets without proposals.

Selective search stand-in for the shapes dataset (``jaxvision.data.proposals``, a host-side data
transform that ``config.data.proposals = "shapes"`` adds to the pipeline): the dense windows plus,
for training only, jittered copies of the gt boxes and uniformly random boxes. It is deterministic
given the example's generator. Evaluation proposals never use the ground truth.

Presets (``make_fast_rcnn``): ``"vgg16"`` (the paper: VGG16 ``conv5_3`` at stride 16, RoIPool 7x7,
fc6/fc7 of 4096, 64 RoIs per image, background ``[0.1, 0.5)``); ``"resnet"`` (a ResNet ``C4``
with the same head, for small experiments).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxvision.data.proposals import (SHAPES_WINDOW_SIZES, add_shapes_proposals,
                                      shapes_proposals, sliding_windows)
from jaxvision.models.detection import faster_rcnn as frcnn
from jaxvision.models.detection import roi_heads as heads
from jaxvision.models.family import Family

__all__ = [
    "PRESETS", "PROPOSAL_SOURCES", "SHAPES_WINDOW_SIZES", "make_fast_rcnn", "build_fast_rcnn",
    "fast_rcnn_losses", "fast_rcnn_detect", "clean_proposals", "sliding_windows",
    "shapes_proposals", "add_shapes_proposals",
]

PROPOSAL_SOURCES = ("batch", "sliding_windows")

PRESETS: dict[str, dict[str, Any]] = {
    "vgg16": {
        "backbone": {"name": "vgg16"},
        "neck": None,
        "roi_heads": {"feature": "conv5_3", "pooler": "pool", "output_size": 7,
                      "batch_size_per_image": 64, "positive_fraction": 0.25, "bg_iou_low": 0.1,
                      "smooth_l1_beta": 1.0},
        "box_head": {"kind": "mlp", "representation_size": 4096},
    },
    "resnet": {
        "backbone": {"name": "resnet18", "norm": "batch"},
        "neck": None,
        "roi_heads": {"feature": "C4", "pooler": "pool", "output_size": 7,
                      "batch_size_per_image": 64, "positive_fraction": 0.25, "bg_iou_low": 0.1,
                      "smooth_l1_beta": 1.0},
        "box_head": {"kind": "mlp", "representation_size": 1024},
    },
}
_OWN_KEYS = ("proposals", "window_sizes", "window_ratios", "window_stride")


# ------------------------------------------------------------------------------------------------
# Proposals
# ------------------------------------------------------------------------------------------------


def clean_proposals(proposals, proposals_valid, image_hw):
  """Clips ``[B, P, 4]`` proposals to each image and invalidates degenerate / non-finite ones."""
  proposals = jnp.asarray(proposals, jnp.float32)
  finite = jnp.all(jnp.isfinite(proposals), axis=-1)
  boxes = jax.vmap(lambda p, hw: jnp.clip(p, 0.0, jnp.tile(hw[::-1].astype(jnp.float32), 2)))(
      jnp.where(finite[..., None], proposals, 0.0), jnp.asarray(image_hw))
  w = boxes[..., 2] - boxes[..., 0]
  h = boxes[..., 3] - boxes[..., 1]
  valid = jnp.asarray(proposals_valid, bool) & finite & (w > 0) & (h > 0)
  return jnp.where(valid[..., None], boxes, 0.0), valid


def _proposals(source: str, windows: np.ndarray | None, batch):
  """``(proposals [B, P, 4], valid [B, P])`` from the batch or the fixed windows, cleaned."""
  image_hw = frcnn.batch_image_hw(batch)
  b = batch["image"].shape[0]
  if source == "sliding_windows":
    props = jnp.broadcast_to(jnp.asarray(windows), (b,) + windows.shape)
    valid = jnp.ones(props.shape[:2], bool)
  else:
    if "proposals" not in batch or "proposals_valid" not in batch:
      raise ValueError("Fast R-CNN with model.proposals='batch' needs batch['proposals'] "
                       f"[B, P, 4] and batch['proposals_valid'] [B, P]; the batch has keys "
                       f"{sorted(batch)}. Add a proposal transform to the data pipeline (e.g. "
                       "fast_rcnn.add_shapes_proposals with config.data.max_proposals) or set "
                       "model.proposals='sliding_windows'.")
    props, valid = batch["proposals"], batch["proposals_valid"]
    if props.ndim != 3 or props.shape[-1] != 4 or valid.shape != props.shape[:2]:
      raise ValueError(f"batch['proposals'] must be [B, P, 4] with proposals_valid [B, P], got "
                       f"{tuple(props.shape)} and {tuple(valid.shape)}.")
  return clean_proposals(props, valid, image_hw)


# ------------------------------------------------------------------------------------------------
# Losses and inference as functions of the bound module
# ------------------------------------------------------------------------------------------------


def fast_rcnn_losses(module, batch, key, *, axis_name: str | None = None, source: str = "batch",
                     windows: np.ndarray | None = None):
  """The multi-task loss of a batch: ``(total, {"head_cls", "head_box", ...})``."""
  props, valid = _proposals(source, windows, batch)
  feats = module.features(batch["image"], train=True)
  head_cls, head_box, sample = frcnn.box_losses(module, feats, props, valid, batch, key,
                                                axis_name=axis_name)
  n_dev = 1.0 if axis_name is None else jax.lax.psum(1.0, axis_name)
  terms = {"head_cls": head_cls, "head_box": head_box,
           "num_fg_rois": jnp.sum(sample.valid & (sample.labels > 0), dtype=jnp.float32) / (
               n_dev * sample.valid.shape[0])}
  return head_cls + head_box, terms


def fast_rcnn_detect(module, batch, *, source: str = "batch", windows: np.ndarray | None = None):
  """Inference on the batch's (or the fixed) proposals: ``D`` detections per image."""
  props, valid = _proposals(source, windows, batch)
  feats = module.features(batch["image"], train=False)
  return frcnn.detect_from_proposals(module, feats, props, valid, batch)


# ------------------------------------------------------------------------------------------------
# Building from a config
# ------------------------------------------------------------------------------------------------


def build_fast_rcnn(model_config: Any, num_classes: int):
  """``(module, options)``: the RPN-less ``FasterRCNN`` module and the proposal options."""
  cfg = frcnn.as_config_dict(model_config)
  own = {k: cfg.pop(k) for k in _OWN_KEYS if k in cfg}
  if "rpn" in cfg:
    raise ValueError("Fast R-CNN has no RPN: remove model.rpn (use the faster_rcnn family for RPN "
                     "proposals).")
  source = own.get("proposals", "batch")
  if source not in PROPOSAL_SOURCES:
    raise ValueError(f"model.proposals must be one of {PROPOSAL_SOURCES}, got {source!r}.")
  try:
    resolved = frcnn.resolve_config(cfg, PRESETS, default_preset="vgg16")
  except ValueError as e:
    raise ValueError(f"{e} (Fast R-CNN also takes {list(_OWN_KEYS)}.)") from None
  if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
    raise ValueError(f"num_classes must be a positive int (K foreground classes), got "
                     f"{num_classes!r}.")
  axis_name, dtype = resolved["axis_name"], resolved["dtype"]
  roi_cfg = frcnn.dataclass_from_section(heads.RoIHeadsConfig, resolved["roi_heads"], "roi_heads")
  backbone = frcnn.build_backbone(resolved["backbone"], axis_name=axis_name, dtype=dtype)
  neck = frcnn.build_neck(resolved.get("neck"), axis_name=axis_name, dtype=dtype)
  box_head = frcnn.build_box_head(resolved["box_head"], backbone, axis_name=axis_name, dtype=dtype)
  module = frcnn.FasterRCNN(
      backbone=backbone, box_head=box_head,
      box_predictor=heads.FastRCNNPredictor(
          num_classes, background_slot=roi_cfg.box_background_slot, dtype=dtype),
      rpn_head=None, roi_config=roi_cfg, neck=neck)
  options = {"source": source,
             "window_sizes": tuple(own.get("window_sizes", SHAPES_WINDOW_SIZES)),
             "window_ratios": tuple(own.get("window_ratios", (1.0,))),
             "window_stride": float(own.get("window_stride", 0.4))}
  return module, options


def make_fast_rcnn(model_config: Any, num_classes: int) -> Family:
  """Builds the Fast R-CNN family from ``config.model`` (``MODELS["fast_rcnn"]``).

  Args:
    model_config: ``ml_collections.ConfigDict`` or dict: ``preset`` (``"vgg16"`` default, the
      paper; ``"resnet"``), the sections ``backbone``, ``neck``, ``roi_heads``, ``box_head`` as in
      ``faster_rcnn.make_faster_rcnn`` (no ``rpn``), ``axis_name``, ``dtype``, and
      ``proposals``: ``"batch"`` (default: ``batch["proposals"]``) or ``"sliding_windows"`` (fixed
      dense windows of ``window_sizes`` / ``window_ratios`` / ``window_stride``, see
      ``sliding_windows``).
    num_classes: K foreground classes.

  Returns:
    A detection ``Family``.
  """
  module, opts = build_fast_rcnn(model_config, num_classes)
  cache: dict[tuple[int, int], np.ndarray] = {}

  def windows_for(batch):
    if opts["source"] != "sliding_windows":
      return None
    size = frcnn.batch_image_size(batch)
    if size not in cache:
      cache[size] = sliding_windows(size, opts["window_sizes"], opts["window_ratios"],
                                    opts["window_stride"])
      if len(cache[size]) == 0:
        raise ValueError(f"no sliding window of sizes {opts['window_sizes']} fits a {size} image.")
    return cache[size]

  def losses(m, batch, key, *, axis_name=None):
    return fast_rcnn_losses(m, batch, key, axis_name=axis_name, source=opts["source"],
                            windows=windows_for(batch))

  def detect(m, batch):
    return fast_rcnn_detect(m, batch, source=opts["source"], windows=windows_for(batch))

  return frcnn.detection_family(module, num_classes, losses, detect)

