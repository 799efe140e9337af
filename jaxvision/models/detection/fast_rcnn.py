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

Selective search stand-in for the shapes dataset (``add_shapes_proposals``, a host-side data
transform): the dense windows plus, for training only, jittered copies of the gt boxes (centre
shifts and log-scale changes, IoU mostly 0.3..0.9 with their box) and uniformly random boxes. It is
deterministic given the example's generator. Evaluation proposals never use the ground truth.

Presets (``make_fast_rcnn``): ``"vgg16"`` (the paper: VGG16 ``conv5_3`` at stride 16, RoIPool 7x7,
fc6/fc7 of 4096, 64 RoIs per image, background ``[0.1, 0.5)``); ``"resnet"`` (a ResNet ``C4``
with the same head, for small experiments).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxvision.models.detection import faster_rcnn as frcnn
from jaxvision.models.detection import roi_heads as heads
from jaxvision.models.family import Family

__all__ = [
    "PRESETS", "PROPOSAL_SOURCES", "SHAPES_WINDOW_SIZES", "make_fast_rcnn", "build_fast_rcnn",
    "fast_rcnn_losses", "fast_rcnn_detect", "clean_proposals", "sliding_windows",
    "shapes_proposals", "add_shapes_proposals",
]

PROPOSAL_SOURCES = ("batch", "sliding_windows")
# Window sizes (px) for the 128 x 128 shapes images: square windows, stride 0.4 x size, 770
# windows; on the validation split 99.5% of the gt boxes have a window with IoU >= 0.5 (43% >= 0.7).
SHAPES_WINDOW_SIZES = (14, 20, 28, 40, 56)

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


def sliding_windows(image_size: Sequence[int], sizes: Sequence[float] = SHAPES_WINDOW_SIZES,
                    ratios: Sequence[float] = (1.0,), stride_fraction: float = 0.4) -> np.ndarray:
  """Dense multi-scale sliding windows over an ``(H, W)`` image (NumPy float32 ``[P, 4]`` xyxy).

  For each size ``s`` and ratio ``r = h / w`` the window is ``s / sqrt(r)`` wide and ``s sqrt(r)``
  high, placed on an evenly spaced grid from the top-left to the bottom-right corner with a step of
  at most ``stride_fraction * min(w, h)`` (and at least 2 px). Windows larger than the image are
  skipped. Deterministic; order: size, ratio, row, column.
  """
  h_img, w_img = (float(v) for v in image_size)
  if not 0 < stride_fraction <= 1:
    raise ValueError(f"stride_fraction must be in (0, 1], got {stride_fraction!r}.")
  out = []
  for s in sizes:
    for r in ratios:
      bw, bh = float(s) / np.sqrt(r), float(s) * np.sqrt(r)
      if bw > w_img or bh > h_img:
        continue
      step = max(2.0, stride_fraction * min(bw, bh))
      nx = int(np.floor((w_img - bw) / step)) + 1
      ny = int(np.floor((h_img - bh) / step)) + 1
      xs, ys = np.linspace(0.0, w_img - bw, nx), np.linspace(0.0, h_img - bh, ny)
      x, y = np.meshgrid(xs, ys)  # (ny, nx)
      out.append(np.stack([x.ravel(), y.ravel(), x.ravel() + bw, y.ravel() + bh], axis=1))
  if not out:
    return np.zeros((0, 4), np.float32)
  return np.concatenate(out).astype(np.float32)


def _jitter(boxes: np.ndarray, rng: np.random.Generator, n: int, shift: float,
            log_scale: float) -> np.ndarray:
  """``n`` jittered copies of each box: centre moved by N(0, shift * size), sides scaled by
  exp(N(0, log_scale)); ``[N n, 4]``."""
  if len(boxes) == 0 or n == 0:
    return np.zeros((0, 4), np.float32)
  w = boxes[:, 2] - boxes[:, 0]
  h = boxes[:, 3] - boxes[:, 1]
  cx = boxes[:, 0] + 0.5 * w
  cy = boxes[:, 1] + 0.5 * h
  shape = (len(boxes), n)
  ncx = cx[:, None] + rng.normal(0.0, shift, shape) * w[:, None]
  ncy = cy[:, None] + rng.normal(0.0, shift, shape) * h[:, None]
  nw = w[:, None] * np.exp(rng.normal(0.0, log_scale, shape))
  nh = h[:, None] * np.exp(rng.normal(0.0, log_scale, shape))
  out = np.stack([ncx - nw / 2, ncy - nh / 2, ncx + nw / 2, ncy + nh / 2], axis=-1)
  return out.reshape(-1, 4).astype(np.float32)


def shapes_proposals(boxes: np.ndarray, image_hw: Sequence[int], rng: np.random.Generator, *,
                     max_proposals: int, train: bool, jitter_per_box: int = 16,
                     jitter_shift: float = 0.15, jitter_log_scale: float = 0.2,
                     num_random: int = 32, window_sizes: Sequence[float] = SHAPES_WINDOW_SIZES,
                     window_ratios: Sequence[float] = (1.0,), window_stride: float = 0.4):
  """A deterministic stand-in for selective search on the shapes dataset (host-side NumPy).

  Training: ``jitter_per_box`` jittered copies of every gt box, ``num_random`` uniformly random
  boxes, then the sliding windows in random order. Evaluation (``train=False``): the sliding windows
  only (never the ground truth). Everything is clipped to the image, degenerate boxes dropped, and
  the list truncated or padded (zeros, invalid) to ``max_proposals``.

  Args:
    boxes: ``[N, 4]`` gt boxes in the current image's pixels (used only when ``train``).
    image_hw: ``(h, w)`` of the real image.
    rng: the example's generator.
    max_proposals: ``P``.
    train: see above.

  Returns:
    ``(proposals float32 [P, 4], proposals_valid bool [P])``.
  """
  h, w = (float(v) for v in image_hw)
  windows = sliding_windows((h, w), window_sizes, window_ratios, window_stride)
  parts = []
  if train:
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    parts.append(_jitter(boxes, rng, jitter_per_box, jitter_shift, jitter_log_scale))
    if num_random:
      c = rng.uniform(0, 1, (num_random, 2)) * [w, h]
      s = np.exp(rng.uniform(np.log(8.0), np.log(max(min(h, w), 9.0)), (num_random, 2)))
      parts.append(np.concatenate([c - s / 2, c + s / 2], axis=1).astype(np.float32))
    windows = windows[rng.permutation(len(windows))]
  parts.append(windows)
  props = np.concatenate(parts).astype(np.float32)
  props[:, 0::2] = np.clip(props[:, 0::2], 0.0, w)
  props[:, 1::2] = np.clip(props[:, 1::2], 0.0, h)
  props = props[(props[:, 2] - props[:, 0] >= 1.0) & (props[:, 3] - props[:, 1] >= 1.0)]
  props = props[:max_proposals]
  out = np.zeros((max_proposals, 4), np.float32)
  out[:len(props)] = props
  valid = np.zeros((max_proposals,), bool)
  valid[:len(props)] = True
  return out, valid


def add_shapes_proposals(example: Mapping[str, Any], rng: np.random.Generator, *,
                         max_proposals: int, train: bool, **kwargs) -> dict:
  """Data transform: ``example["proposals"], example["proposals_valid"] = shapes_proposals(...)``.

  Put it in ``transforms.compose`` after the geometric transforms (resize/pad/flip, so the boxes are
  in network-input pixels) and before or after ``normalize_image``; ``pipeline.BATCH_KEYS``
  already keeps ``proposals`` and ``proposals_valid``. ``image_hw`` (the real image inside the
  padding) bounds the proposals when present. Extra keyword arguments go to ``shapes_proposals``.
  """
  if "image" not in example:
    raise ValueError(f"add_shapes_proposals: example has no 'image' (keys: {sorted(example)}).")
  image_hw = example.get("image_hw", np.asarray(example["image"]).shape[:2])
  boxes = np.asarray(example.get("boxes", np.zeros((0, 4), np.float32)), np.float32)
  if "box_valid" in example:  # already padded by pad_instances
    boxes = boxes[np.asarray(example["box_valid"], bool)]
  props, valid = shapes_proposals(boxes, image_hw, rng, max_proposals=int(max_proposals),
                                  train=bool(train), **kwargs)
  out = dict(example)
  out["proposals"] = props
  out["proposals_valid"] = valid
  return out


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

