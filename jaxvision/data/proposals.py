"""Region proposals computed on the host, in the data pipeline (NumPy only, so grain workers stay
free of JAX).

``sliding_windows`` gives dense multi-scale windows (the "dense boxes" Fast R-CNN's Sec. 5.5 compares
with selective search). ``shapes_proposals`` is a stand-in for selective search on the built-in
shapes dataset: for training, jittered copies of the gt boxes (centre shifts and log-scale changes,
IoU mostly 0.3..0.9 with their box) and uniformly random boxes before the windows; for evaluation,
the windows only (never the ground truth). ``add_shapes_proposals`` is the data transform that puts
them in the batch contract (``proposals [P, 4]`` xyxy in network-input pixels, ``proposals_valid
[P]``); ``jaxvision.data.builder`` adds it when ``config.data.proposals = "shapes"``.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

__all__ = ["SHAPES_WINDOW_SIZES", "sliding_windows", "shapes_proposals", "add_shapes_proposals"]

# Window sizes (px) for the 128 x 128 shapes images: square windows, stride 0.4 x size, 770
# windows; on the validation split 99.5% of the gt boxes have a window with IoU >= 0.5 (43% >= 0.7).
SHAPES_WINDOW_SIZES = (14, 20, 28, 40, 56)


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
