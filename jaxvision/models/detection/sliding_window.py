"""Sliding-window CNN detector, and its convolutionalized form (Sermanet et al., "OverFeat:
Integrated Recognition, Localization and Detection using Convolutional Networks", ICLR 2014,
https://arxiv.org/abs/1312.6229, Sec. 3.5 "ConvNets and sliding window efficiency").

The brute-force baseline of the region-based line: a small classification CNN over ``K + 1``
classes (background first) looks at one fixed-size window (``window x window`` pixels of a
rescaled image) and says which class it holds. Applied at every window position and at several
image scales it is a detector.

* **Training on crops.** Every window of every scale (a static table, ``WindowGrid``) is labelled by
  IoU with the ground truth (in original image pixels): the matched gt's class when IoU ``>=
  fg_iou_threshold`` (0.5), background below ``bg_iou_high`` (0.5). ``windows_per_image`` windows
  are sampled per image, up to ``positive_fraction`` positive (``jaxvision.ops.sampling``); each is
  cut out (``lax.dynamic_slice``) of the rescaled image it lives in and classified by the CNN.
  Loss: cross-entropy over the sampled windows, plus (``box_regression``, OverFeat's localization
  head, class-agnostic) smooth-L1 on the Fast R-CNN deltas ``(dx, dy, dw, dh)`` (weights 10, 10,
  5, 5) of the matched gt against a positive window. Both divided by the number of sampled windows.
* **Convolutionalization.** The network is ``stages`` x (3x3 VALID conv + ReLU + 2x2/2 max pool),
  then the fully connected layers. The first FC layer sees an ``fc_size x fc_size x C`` map; its
  ``[fc_size^2 C, hidden]`` kernel reshaped to ``[fc_size, fc_size, C, hidden]`` is a VALID
  convolution, and the later FC layers are 1x1 convolutions. Run on a whole image the *same
  parameters* give the classifier's output for every window in one pass (shared convolutions):
  ``score_map[i, j] == classify(image[s i : s i + window, s j : s j + window])`` for the total
  stride ``s = 2^stages``, exactly (``tests/models/detection/test_sliding_window.py`` checks it to
  1e-5). Exactness needs VALID convolutions (no padding: a padded crop would see zeros where the
  whole image has neighbours) and windows on the stride grid (so every 2x2 pooling tiles the crop as
  it tiles the image).
* **Windows to boxes.** ``receptive_field(stages, fc_size)`` is the window size: from ``r = 1,
  s = 1`` each stage adds ``2 s`` (3x3 conv) and ``s`` (2x2 pool, then ``s <- 2 s``), and the FC
  layer ``(fc_size - 1) s``: 30 px for 3 stages and
  ``fc_size = 2``, stride 8. Score map cell ``(i, j)`` of the image rescaled by ``(sy, sx)`` (size
  ``round(H sy) x round(W sx)``, ``jax.image.resize`` with half-pixel centres) is the window
  ``[s j, s i, s j + r, s i + r] / (sx, sy, sx, sy)`` in original pixels, exactly the pixels the
  network read. Only windows entirely inside the rescaled image exist.
* **Inference** (``predict``): score maps at every scale, softmax, each (window, class) a candidate
  scored by the class probability (box: the window, or its regressed box), the
  ``pre_nms_top_n`` best, ``score > score_threshold``, class-wise NMS at ``nms_threshold``, ``D =
  detections_per_image`` kept. Static shapes throughout; one jitted training step.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxvision.losses import smooth_l1_loss
from jaxvision.models.detection import faster_rcnn as frcnn
from jaxvision.models.family import Family
from jaxvision.models.layers.conv import Conv
from jaxvision.ops import box_coder
from jaxvision.ops import boxes as box_ops
from jaxvision.ops import nms as nms_ops
from jaxvision.ops import sampling

__all__ = [
    "SlidingWindowConfig", "WindowClassifier", "WindowGrid", "receptive_field", "scaled_size",
    "window_grid", "crop_windows", "sliding_window_losses", "sliding_window_detect",
    "detections_from_scores", "make_sliding_window",
]


@dataclasses.dataclass(frozen=True)
class SlidingWindowConfig:
  """Hyper-parameters of the sliding-window detector (hashable).

  Attributes:
    features: conv channels per stage (each stage: 3x3 VALID conv + ReLU + 2x2/2 max pool).
    fc_size: spatial size of the map the first FC layer reads (its kernel as a conv).
    hidden: width of the hidden FC layer.
    scales: image scales (the window covers ``window / scale`` original pixels).
    box_regression: also predict class-agnostic box deltas (OverFeat's regressor).
    windows_per_image, positive_fraction: training sample per image (64, 25% positive).
    fg_iou_threshold, bg_iou_high: window labels: fg ``>= fg``, background ``< bg_iou_high``.
    box_weights: delta normalization (10, 10, 5, 5).
    pre_nms_top_n, score_threshold, nms_threshold, detections_per_image: inference.
  """
  features: tuple[int, ...] = (16, 32, 64)
  fc_size: int = 2
  hidden: int = 128
  scales: tuple[float, ...] = (2.0, 1.41, 1.0, 0.71, 0.5)
  box_regression: bool = True
  windows_per_image: int = 64
  positive_fraction: float = 0.25
  fg_iou_threshold: float = 0.5
  bg_iou_high: float = 0.5
  box_weights: tuple[float, float, float, float] = box_coder.FAST_RCNN_WEIGHTS
  pre_nms_top_n: int = 1000
  score_threshold: float = 0.05
  nms_threshold: float = 0.3
  detections_per_image: int = 50

  def __post_init__(self):
    object.__setattr__(self, "features", tuple(int(f) for f in self.features))
    object.__setattr__(self, "scales", tuple(float(s) for s in self.scales))
    object.__setattr__(self, "box_weights", tuple(float(w) for w in self.box_weights))
    if not self.features or any(f <= 0 for f in self.features):
      raise ValueError(f"SlidingWindowConfig.features must be positive ints, got {self.features}.")
    if not self.scales or any(not s > 0 for s in self.scales):
      raise ValueError(f"SlidingWindowConfig.scales must be positive floats, got {self.scales}.")
    for name in ("fc_size", "hidden", "windows_per_image", "pre_nms_top_n",
                 "detections_per_image"):
      v = getattr(self, name)
      if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v <= 0:
        raise ValueError(f"SlidingWindowConfig.{name} must be a positive int, got {v!r}.")
    if not 0.0 < self.positive_fraction <= 1.0:
      raise ValueError(f"SlidingWindowConfig.positive_fraction must be in (0, 1], got "
                       f"{self.positive_fraction!r}.")

  @property
  def stride(self) -> int:
    return 2 ** len(self.features)

  @property
  def window(self) -> int:
    return receptive_field(len(self.features), self.fc_size)


def receptive_field(stages: int, fc_size: int) -> int:
  """Receptive field (= window size, px) of one score-map cell: ``stages`` x (3x3 conv, 2x2/2
  pool) then an ``fc_size x fc_size`` FC layer. ``r <- r + 2 s`` (conv), ``r <- r + s, s <- 2 s``
  (pool), then ``r + (fc_size - 1) s``; e.g. 3 stages, fc 2: 30."""
  r, s = 1, 1
  for _ in range(stages):
    r += 2 * s  # 3x3 conv
    r += s  # 2x2 pool ...
    s *= 2  # ... with stride 2
  return r + (fc_size - 1) * s


def scaled_size(image_size: Sequence[int], scale: float) -> tuple[int, int]:
  """``(round(H scale), round(W scale))``: the rescaled image the network runs on."""
  return tuple(max(int(round(float(v) * scale)), 1) for v in image_size)


# ------------------------------------------------------------------------------------------------
# The network: a window classifier whose FC layers can run as convolutions
# ------------------------------------------------------------------------------------------------


class WindowClassifier(nn.Module):
  """A small CNN classifying one ``window x window`` crop; ``score_map`` runs it convolutionally.

  ``__call__(crops [N, r, r, 3]) -> [N, O]`` with ``O = K + 1`` logits (+ 4 box deltas).
  ``score_map(images [B, H, W, 3]) -> [B, h, w, O]`` with ``h = floor((H - r) / s) + 1``: the same
  output for every window on the stride grid (see the module docstring).
  """
  num_outputs: int
  features: tuple[int, ...] = (16, 32, 64)
  fc_size: int = 2
  hidden: int = 128
  dtype: Any = jnp.float32

  def setup(self):
    self.convs = [Conv(f, (3, 3), padding="VALID", dtype=self.dtype, name=f"conv{i}")
                  for i, f in enumerate(self.features)]
    c, k = self.features[-1], self.fc_size
    self.fc1_kernel = self.param("fc1_kernel", nn.initializers.lecun_normal(),
                                 (k * k * c, self.hidden))
    self.fc1_bias = self.param("fc1_bias", nn.initializers.zeros, (self.hidden,))
    self.fc2_kernel = self.param("fc2_kernel", nn.initializers.normal(0.01),
                                 (self.hidden, self.num_outputs))
    self.fc2_bias = self.param("fc2_bias", nn.initializers.zeros, (self.num_outputs,))

  def trunk(self, x):
    for conv in self.convs:
      x = nn.relu(conv(x))
      x = nn.max_pool(x, (2, 2), strides=(2, 2), padding="VALID")
    return x

  def __call__(self, crops):
    x = self.trunk(crops.astype(self.dtype))  # (N, fc, fc, C)
    if x.shape[1:3] != (self.fc_size, self.fc_size):
      r = receptive_field(len(self.features), self.fc_size)
      raise ValueError(f"WindowClassifier expects {r} x {r} crops (its window), got "
                       f"{tuple(crops.shape[1:3])}.")
    x = x.reshape(x.shape[0], -1)  # (N, fc fc C), row-major (row, column, channel)
    x = nn.relu(jnp.dot(x, self.fc1_kernel.astype(self.dtype), precision="highest")
                + self.fc1_bias)
    out = jnp.dot(x, self.fc2_kernel.astype(self.dtype), precision="highest") + self.fc2_bias
    return out.astype(jnp.float32)  # (N, O)

  def score_map(self, images):
    x = self.trunk(images.astype(self.dtype))  # (B, h', w', C)
    k, c = self.fc_size, self.features[-1]
    kernel = self.fc1_kernel.reshape(k, k, c, self.hidden).astype(self.dtype)  # HWIO
    x = jax.lax.conv_general_dilated(x, kernel, (1, 1), "VALID",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                     precision="highest")  # (B, h, w, hidden)
    x = nn.relu(x + self.fc1_bias)
    out = jnp.einsum("bhwd,do->bhwo", x, self.fc2_kernel.astype(self.dtype),
                     precision="highest") + self.fc2_bias  # 1x1 conv
    return out.astype(jnp.float32)  # (B, h, w, O)


# ------------------------------------------------------------------------------------------------
# Windows
# ------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class WindowGrid:
  """Every window of every scale of an ``(H, W)`` input (NumPy, static).

  Attributes:
    boxes: ``[N, 4]`` float32 xyxy windows in original-image pixels.
    scale_index: ``[N]`` int32 scale of each window.
    origin: ``[N, 2]`` int32 ``(y0, x0)`` top-left pixel in the rescaled image.
    map_shapes: per scale ``(h, w)`` of the score map (windows are row-major within a scale).
    sizes: per scale ``(H_s, W_s)`` of the rescaled image.
  """
  boxes: np.ndarray
  scale_index: np.ndarray
  origin: np.ndarray
  map_shapes: tuple[tuple[int, int], ...]
  sizes: tuple[tuple[int, int], ...]


def window_grid(image_size: Sequence[int], config: SlidingWindowConfig) -> WindowGrid:
  """The windows of ``config`` over an ``(H, W)`` input; see ``WindowGrid``.

  Raises:
    ValueError: no scale's rescaled image holds a single window.
  """
  h, w = (int(v) for v in image_size)
  r, s = config.window, config.stride
  boxes, scale_index, origin, shapes, sizes = [], [], [], [], []
  for k, scale in enumerate(config.scales):
    hs, ws = scaled_size((h, w), scale)
    sizes.append((hs, ws))
    mh, mw = max((hs - r) // s + 1, 0), max((ws - r) // s + 1, 0)
    shapes.append((mh, mw))
    if mh == 0 or mw == 0:
      continue
    ys, xs = np.meshgrid(np.arange(mh) * s, np.arange(mw) * s, indexing="ij")  # (mh, mw)
    ys, xs = ys.ravel(), xs.ravel()
    sy, sx = hs / h, ws / w  # the exact factors of the resize
    boxes.append(np.stack([xs / sx, ys / sy, (xs + r) / sx, (ys + r) / sy], axis=1))
    scale_index.append(np.full(ys.shape, k))
    origin.append(np.stack([ys, xs], axis=1))
  if not boxes:
    raise ValueError(f"no {r} x {r} window fits the {h} x {w} input at scales {config.scales}; "
                     "add larger scales (model.scales) or use smaller windows.")
  return WindowGrid(np.concatenate(boxes).astype(np.float32),
                    np.concatenate(scale_index).astype(np.int32),
                    np.concatenate(origin).astype(np.int32), tuple(shapes), tuple(sizes))


def _resize(images, size):
  b, _, _, c = images.shape
  return jax.image.resize(images.astype(jnp.float32), (b, size[0], size[1], c), "linear")


def crop_windows(images, grid: WindowGrid, window_index, window: int):
  """Crops windows ``window_index [B, S]`` (into ``grid``; -1 = padding, gives zeros) out of the
  rescaled images: ``[B, S, r, r, C]``. Every scale is resized once and zero-padded to a common
  size, so one gather serves all scales."""
  b, c = images.shape[0], images.shape[-1]
  hm = max(sz[0] for sz in grid.sizes)
  wm = max(sz[1] for sz in grid.sizes)
  pyramid = jnp.stack([jnp.pad(_resize(images, sz), ((0, 0), (0, hm - sz[0]), (0, wm - sz[1]),
                                                      (0, 0))) for sz in grid.sizes])  # (S, B, hm, wm, C)
  safe = jnp.maximum(window_index, 0)
  scale = jnp.asarray(grid.scale_index)[safe]  # (B, S)
  origin = jnp.asarray(grid.origin)[safe]  # (B, S, 2)

  def one(k, bi, yx):
    return jax.lax.dynamic_slice(pyramid[k, bi], (yx[0], yx[1], 0), (window, window, c))

  bidx = jnp.broadcast_to(jnp.arange(b)[:, None], window_index.shape)
  crops = jax.vmap(jax.vmap(one))(scale, bidx, origin)  # (B, S, r, r, C)
  return jnp.where((window_index >= 0)[..., None, None, None], crops, 0.0)


# ------------------------------------------------------------------------------------------------
# Training and inference
# ------------------------------------------------------------------------------------------------


def sliding_window_losses(module: WindowClassifier, batch, key, *, config: SlidingWindowConfig,
                          grid: WindowGrid, axis_name: str | None = None):
  """Loss on sampled window crops: ``(total, {"cls", "box", "num_fg_windows"})``."""
  gt_boxes, gt_labels, gt_valid = frcnn.gt_from_batch(batch)
  b = gt_boxes.shape[0]
  windows = jnp.asarray(grid.boxes)
  n = windows.shape[0]
  ex_valid = jnp.asarray(batch.get("example_valid", jnp.ones((b,), bool)), bool)

  def sample_one(k, gb, gl, gv, ev):
    cand = sampling.label_rois(windows, jnp.ones((n,), bool) & ev, gb, gl, gv,
                               fg_iou_threshold=config.fg_iou_threshold, bg_iou_low=0.0,
                               bg_iou_high=config.bg_iou_high, append_gt=False)
    idx, _, valid = sampling.sample_balanced(k, cand.match_labels,
                                             num_samples=config.windows_per_image,
                                             positive_fraction=config.positive_fraction,
                                             valid=cand.valid)
    safe = jnp.maximum(idx, 0)
    labels = jnp.where(valid, cand.class_labels[safe], 0)
    matched = gb[cand.matched_gt[safe]] if gb.shape[0] else jnp.zeros((idx.shape[0], 4))
    return jnp.where(valid, idx, -1), labels, matched, valid

  idx, labels, matched, valid = jax.vmap(sample_one)(jax.random.split(key, b), gt_boxes,
                                                     gt_labels, gt_valid, ex_valid)
  idx, labels, matched = jax.lax.stop_gradient((idx, labels, matched))
  crops = crop_windows(batch["image"], grid, idx, config.window)  # (B, S, r, r, C)
  s = idx.shape[1]
  out = module(crops.reshape((b * s,) + crops.shape[2:])).reshape(b, s, -1)
  k1 = out.shape[-1] - (4 if config.box_regression else 0)
  logp = jax.nn.log_softmax(out[..., :k1], axis=-1)
  nll = -jnp.take_along_axis(logp, labels[..., None], axis=-1)[..., 0]
  normalizer = jnp.sum(valid, dtype=jnp.float32)
  if axis_name is not None:
    normalizer = jax.lax.psum(normalizer, axis_name)
  normalizer = jnp.maximum(normalizer, 1.0)
  loss_cls = jnp.sum(jnp.where(valid, nll, 0.0)) / normalizer
  fg = valid & (labels > 0)
  if config.box_regression:
    win = jnp.asarray(grid.boxes)[jnp.maximum(idx, 0)]  # (B, S, 4)
    targets = box_coder.encode_boxes(jnp.where(fg[..., None], matched, win), win,
                                     config.box_weights)
    l1 = smooth_l1_loss(out[..., k1:], jax.lax.stop_gradient(targets), beta=1.0).sum(-1)
    loss_box = jnp.sum(jnp.where(fg, l1, 0.0)) / normalizer
  else:
    loss_box = jnp.float32(0.0)
  n_dev = 1.0 if axis_name is None else jax.lax.psum(1.0, axis_name)
  terms = {"cls": loss_cls, "box": loss_box,
           "num_fg_windows": jnp.sum(fg, dtype=jnp.float32) / (n_dev * b)}
  return loss_cls + loss_box, terms


def detections_from_scores(scores, boxes, valid, image_hw, *, pre_nms_top_n: int,
                           score_threshold: float, nms_threshold: float,
                           detections_per_image: int):
  """Class-wise NMS over per-candidate class scores, one image, static shapes.

  Args:
    scores: ``[N, K]`` score of every candidate for every foreground class (higher is better).
    boxes: ``[N, 4]`` (one box per candidate) or ``[N, K, 4]`` (class-specific boxes).
    valid: ``[N]`` bool.
    image_hw: ``[2]`` (h, w): boxes are clipped to it.
    pre_nms_top_n: the best (candidate, class) pairs kept before NMS.

  Returns:
    ``{"boxes" [D, 4], "scores" [D], "labels" [D] (1..K), "valid" [D]}``, descending score.
  """
  n, k = scores.shape
  if boxes.ndim == 2:
    boxes = jnp.broadcast_to(boxes[:, None, :], (n, k, 4))
  boxes = box_ops.clip_boxes(boxes.astype(jnp.float32), image_hw)
  w = boxes[..., 2] - boxes[..., 0]
  h = boxes[..., 3] - boxes[..., 1]
  ok = valid[:, None] & (w > 0) & (h > 0) & jnp.isfinite(scores)
  flat = jnp.where(ok, scores.astype(jnp.float32), -jnp.inf).reshape(n * k)
  top = min(int(pre_nms_top_n), n * k)
  top_scores, top_idx = jax.lax.top_k(flat, top)
  cand_boxes = boxes.reshape(n * k, 4)[top_idx]
  cand_labels = (top_idx % k + 1).astype(jnp.int32)
  cand_scores = jnp.where(jnp.isfinite(top_scores), top_scores, jnp.nan)  # NaN: never selected
  keep, kvalid = nms_ops.batched_nms(cand_boxes, cand_scores, cand_labels,
                                     iou_threshold=nms_threshold,
                                     max_output_size=detections_per_image,
                                     score_threshold=score_threshold)
  safe = jnp.where(kvalid, keep, 0)
  return {"boxes": jnp.where(kvalid[:, None], cand_boxes[safe], 0.0),
          "scores": jnp.where(kvalid, cand_scores[safe], 0.0),
          "labels": jnp.where(kvalid, cand_labels[safe], 0),
          "valid": kvalid}


def sliding_window_scores(module: WindowClassifier, images, *, config: SlidingWindowConfig,
                          grid: WindowGrid):
  """Network outputs ``[B, N, O]`` for every window of ``grid`` (one convolutional pass per
  scale), in the grid's order."""
  outs = []
  for size, shape in zip(grid.sizes, grid.map_shapes):
    if shape[0] == 0 or shape[1] == 0:
      continue
    out = module.score_map(_resize(images, size))  # (B, h, w, O)
    assert out.shape[1:3] == shape, (out.shape, shape)
    outs.append(out.reshape(out.shape[0], -1, out.shape[-1]))
  return jnp.concatenate(outs, axis=1)


def sliding_window_detect(module: WindowClassifier, batch, *, config: SlidingWindowConfig,
                          grid: WindowGrid):
  """Inference: score maps at every scale -> softmax -> top-k -> class-wise NMS -> ``D``."""
  out = sliding_window_scores(module, batch["image"], config=config, grid=grid)  # (B, N, O)
  k1 = out.shape[-1] - (4 if config.box_regression else 0)
  probs = jax.nn.softmax(out[..., :k1], axis=-1)[..., 1:]  # (B, N, K)
  windows = jnp.broadcast_to(jnp.asarray(grid.boxes), out.shape[:2] + (4,))
  boxes = (box_coder.decode_boxes(out[..., k1:], windows, config.box_weights)
           if config.box_regression else windows)
  post = functools.partial(detections_from_scores, pre_nms_top_n=config.pre_nms_top_n,
                           score_threshold=config.score_threshold,
                           nms_threshold=config.nms_threshold,
                           detections_per_image=config.detections_per_image)
  valid = jnp.ones(out.shape[:2], bool)
  return jax.vmap(post)(probs, boxes, valid, frcnn.batch_image_hw(batch))


# ------------------------------------------------------------------------------------------------
# Family
# ------------------------------------------------------------------------------------------------

_KEYS = tuple(f.name for f in dataclasses.fields(SlidingWindowConfig)) + ("name", "dtype",
                                                                         "axis_name")


def build_sliding_window(model_config: Any, num_classes: int):
  """``(WindowClassifier, SlidingWindowConfig)`` from ``config.model``."""
  cfg = frcnn.as_config_dict(model_config)
  unknown = sorted(set(cfg) - set(_KEYS))
  if unknown:
    raise ValueError(f"unknown model config keys {unknown} for sliding_window; known keys: "
                     f"{sorted(_KEYS)}.")
  if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
    raise ValueError(f"num_classes must be a positive int (K foreground classes), got "
                     f"{num_classes!r}.")
  dtype = jnp.dtype(cfg.pop("dtype", None) or "float32")
  cfg.pop("name", None)
  cfg.pop("axis_name", None)  # no cross-replica statistics (no BatchNorm)
  config = frcnn.dataclass_from_section(SlidingWindowConfig, cfg, "model")
  module = WindowClassifier(num_outputs=num_classes + 1 + (4 if config.box_regression else 0),
                            features=config.features, fc_size=config.fc_size,
                            hidden=config.hidden, dtype=dtype)
  return module, config


def make_sliding_window(model_config: Any, num_classes: int) -> Family:
  """Builds the sliding-window detector family (``MODELS["sliding_window"]``).

  Args:
    model_config: ``ConfigDict`` or dict with the fields of ``SlidingWindowConfig`` (all optional)
      and ``dtype``.
    num_classes: K foreground classes.

  Returns:
    A detection ``Family`` (``D = detections_per_image``). ``family.module`` is the
    ``WindowClassifier``; ``module.apply(v, crops)`` classifies crops,
    ``module.apply(v, images, method="score_map")`` gives the score maps.
  """
  module, config = build_sliding_window(model_config, num_classes)
  grids: dict[tuple[int, int], WindowGrid] = {}

  def grid_for(batch):
    size = frcnn.batch_image_size(batch)
    if size not in grids:
      grids[size] = window_grid(size, config)
    return grids[size]

  def train_loss(variables, batch, *, rng, step=None, axis_name=None):
    del step
    total, terms = module.apply(variables, batch, rng, method=sliding_window_losses,
                                config=config, grid=grid_for(batch), axis_name=axis_name)
    return total, terms, {}

  def predict(variables, batch):
    return module.apply(variables, batch, method=sliding_window_detect, config=config,
                        grid=grid_for(batch))

  def init(rng, batch):
    r = config.window
    return module.init(rng, jnp.zeros((1, r, r, batch["image"].shape[-1]), jnp.float32))

  return Family(module=module, task="detection", train_loss=train_loss, predict=predict,
                init=init, num_classes=num_classes)
