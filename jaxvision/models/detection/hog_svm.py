"""HOG + linear SVM sliding-window detector (Dalal and Triggs, "Histograms of Oriented Gradients for
Human Detection", CVPR 2005): the pre-CNN yardstick of the region-based line.

Not a ``Family`` (no jitted training step): a multi-stage host-side detector, as DESIGN.md allows.

* **Features** (paper Sec. 6): ``skimage.feature.hog`` (the maintained implementation: centred
  ``[-1, 0, 1]`` gradients, for colour images the channel with the largest gradient magnitude,
  ``orientations`` unsigned bins over 0-180 degrees, ``cell x cell`` pixel cells, blocks of
  ``block x block`` cells with a stride of one cell, L2-Hys block normalization) is computed
  **once per image scale** as the grid of normalized blocks ``[by, bx, block, block, orient]``. The
  descriptor of a ``window x window`` window whose top-left cell is ``(y, x)`` is the sub-grid
  ``blocks[y : y + nb, x : x + nb]`` flattened row-major, ``nb = window / cell - block + 1``:
  exactly ``hog(crop, feature_vector=True)`` of the window's crop wherever the gradient at the
  crop's border pixels is the same in the crop and in the whole image (skimage sets the gradient of
  an image's outermost pixels to 0) -- ``tests/models/detection/test_hog_svm.py`` checks both.
* **Scales**: the image is rescaled by each of ``scales`` (``skimage.transform.resize``,
  anti-aliased when shrinking); a window at cell ``(y, x)`` of the image rescaled to ``(H_s, W_s)``
  is the box ``[x c, y c, x c + w, y c + w] / (W_s / W, H_s / H, ...)`` in original pixels.
* **Linear SVMs**: one per class (one-vs-rest; Dalal and Triggs train one, person vs not), hinge
  loss ``mean_pos max(0, 1 - s) + mean_neg max(0, 1 + s)`` (positives and negatives averaged
  separately: balanced classes) ``+ l2 / 2 ||w||^2``, minimised full-batch with optax (Adam) in
  JAX. Positives of class ``k``: windows with IoU ``>= pos_iou`` with a gt box of class ``k`` and
  the gt boxes themselves (cropped and warped to the window, as the paper's annotated windows);
  negatives: windows with IoU ``< neg_iou`` with every gt of class ``k``, ``negatives_per_image``
  drawn per image. **Hard negatives** (paper Sec. 3): after training, every window of the training
  images is scored, the negatives with margin ``> -1`` (the highest-scoring, up to
  ``hard_negatives_per_image`` an image) are added, and the SVMs are retrained
  (``hard_negative_rounds`` times).
* **Detection**: every window of every scale scored by every SVM, the ``pre_nms_top_n`` best
  (window, class) pairs, class-wise NMS (``jaxvision.ops.nms.batched_nms``) at IoU
  ``nms_threshold``, ``detections_per_image`` kept; scores are SVM margins.

Run on the shapes dataset (VOC mAP@0.5 on the validation split; prints one JSON line)::

  python -m jaxvision.models.detection.hog_svm --train_images 300 --val_images 200

Measured 2026-11-21 with that command on the shared 2-core CPU: validation mAP@0.5 0.109 on 200
images (trained on the first 300 training images: 16,787 windows + 4,800 hard negatives; 85 s
to train, 0.15 s an image to detect at 5 scales, 118 s wall in all). ``--steps 2000
--learning_rate 0.03`` gave 0.102 (the hinge objective plateaus: linear HOG templates separate
the five shapes only partly).

``train_hog_svm`` / ``detect`` / ``evaluate`` are the library entry points.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["HogSvmConfig", "HogSvm", "hog_blocks", "window_features", "image_windows", "fit_svm",
           "train_hog_svm", "detect", "evaluate"]


@dataclasses.dataclass(frozen=True)
class HogSvmConfig:
  """Hyper-parameters (the paper's: 9 orientations, 8 px cells, 2 x 2 blocks, L2-Hys; its 64 x 128
  person window becomes a square ``window`` for the shapes).

  Attributes:
    window: window side in pixels of the rescaled image (a multiple of ``cell``).
    cell, block, orientations: HOG cell size (px), block size (cells), orientation bins.
    scales: image scales (a window covers ``window / scale`` original pixels).
    pos_iou, neg_iou: window labels (positive ``>= pos_iou``, negative ``< neg_iou``).
    negatives_per_image: random negative windows per training image (per class pool).
    hard_negative_rounds, hard_negatives_per_image: mining.
    l2, learning_rate, steps: the SVM objective's L2 weight and its optimizer.
    pre_nms_top_n, nms_threshold, detections_per_image: inference.
  """
  window: int = 32
  cell: int = 8
  block: int = 2
  orientations: int = 9
  scales: tuple[float, ...] = (2.0, 1.41, 1.0, 0.71, 0.5)
  pos_iou: float = 0.5
  neg_iou: float = 0.3
  negatives_per_image: int = 32
  hard_negative_rounds: int = 1
  hard_negatives_per_image: int = 16
  l2: float = 1e-4
  learning_rate: float = 0.01
  steps: int = 500
  pre_nms_top_n: int = 2000
  nms_threshold: float = 0.3
  detections_per_image: int = 50

  def __post_init__(self):
    object.__setattr__(self, "scales", tuple(float(s) for s in self.scales))
    for name in ("window", "cell", "block", "orientations", "steps", "pre_nms_top_n",
                 "detections_per_image"):
      v = getattr(self, name)
      if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v <= 0:
        raise ValueError(f"HogSvmConfig.{name} must be a positive int, got {v!r}.")
    if self.window % self.cell or self.window // self.cell < self.block:
      raise ValueError(f"HogSvmConfig.window ({self.window}) must be a multiple of cell "
                       f"({self.cell}) spanning at least block ({self.block}) cells.")
    if not self.scales or any(not s > 0 for s in self.scales):
      raise ValueError(f"HogSvmConfig.scales must be positive, got {self.scales!r}.")

  @property
  def window_blocks(self) -> int:
    return self.window // self.cell - self.block + 1

  @property
  def feature_dim(self) -> int:
    return self.window_blocks ** 2 * self.block ** 2 * self.orientations


@dataclasses.dataclass(frozen=True)
class HogSvm:
  """A trained detector: ``weights [D, K]``, ``bias [K]`` (NumPy) and its config."""
  weights: np.ndarray
  bias: np.ndarray
  config: HogSvmConfig

  @property
  def num_classes(self) -> int:
    return int(self.weights.shape[1])


def _skimage():
  try:
    import skimage.feature  # noqa: PLC0415
    import skimage.transform  # noqa: PLC0415
  except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError("the HOG detector needs scikit-image (`pip install scikit-image`).") from e
  return skimage


def hog_blocks(image, config: HogSvmConfig) -> np.ndarray:
  """``skimage.feature.hog`` of an ``[H, W]`` or ``[H, W, 3]`` image as the block grid
  ``[by, bx, block, block, orientations]`` (``by = H // cell - block + 1``)."""
  img = np.asarray(image, np.float64)
  if img.ndim not in (2, 3) or (img.ndim == 3 and img.shape[-1] != 3):
    raise ValueError(f"image must be [H, W] or [H, W, 3], got shape {img.shape}.")
  sk = _skimage()
  return sk.feature.hog(img, orientations=config.orientations,
                        pixels_per_cell=(config.cell, config.cell),
                        cells_per_block=(config.block, config.block), block_norm="L2-Hys",
                        feature_vector=False,
                        channel_axis=-1 if img.ndim == 3 else None).astype(np.float32)


def window_features(blocks: np.ndarray, window_blocks: int) -> np.ndarray:
  """Descriptors of every window of ``window_blocks x window_blocks`` blocks on a block grid:
  ``[ny, nx, D]`` with ``out[y, x] = blocks[y : y + nb, x : x + nb].ravel()`` (``ny = by - nb +
  1``; empty when the grid is smaller than a window)."""
  nb = int(window_blocks)
  by, bx = blocks.shape[:2]
  if by < nb or bx < nb:
    return np.zeros((max(by - nb + 1, 0), max(bx - nb + 1, 0), nb * nb * int(np.prod(
        blocks.shape[2:]))), np.float32)
  view = np.lib.stride_tricks.sliding_window_view(blocks, (nb, nb), axis=(0, 1))
  # view: (ny, nx, block, block, orient, nb, nb) -> (ny, nx, nb, nb, block, block, orient)
  view = np.moveaxis(view, (-2, -1), (2, 3))
  return np.ascontiguousarray(view).reshape(view.shape[0], view.shape[1], -1)


def _rescale(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  if image.shape[:2] == tuple(size):
    return image
  sk = _skimage()
  shrink = size[0] < image.shape[0] or size[1] < image.shape[1]
  return sk.transform.resize(image, size + image.shape[2:], order=1, anti_aliasing=shrink,
                             preserve_range=True)


def image_windows(image, config: HogSvmConfig) -> tuple[np.ndarray, np.ndarray]:
  """Every window of every scale of one image: ``(features float32 [N, D], boxes float32 [N, 4]``
  xyxy in the image's pixels). Order: scale, row, column."""
  img = np.asarray(image, np.float64)
  h, w = img.shape[:2]
  feats, boxes = [], []
  c, r = config.cell, config.window
  for s in config.scales:
    hs, ws = max(int(round(h * s)), 1), max(int(round(w * s)), 1)
    if hs < r or ws < r:
      continue
    f = window_features(hog_blocks(_rescale(img, (hs, ws)), config), config.window_blocks)
    ny, nx = f.shape[:2]
    if ny == 0 or nx == 0:
      continue
    ys, xs = np.meshgrid(np.arange(ny) * c, np.arange(nx) * c, indexing="ij")
    ys, xs = ys.ravel().astype(np.float32), xs.ravel().astype(np.float32)
    sy, sx = hs / h, ws / w
    boxes.append(np.stack([xs / sx, ys / sy, (xs + r) / sx, (ys + r) / sy], axis=1))
    feats.append(f.reshape(-1, f.shape[-1]))
  if not feats:
    raise ValueError(f"no {r} x {r} window fits the {h} x {w} image at scales {config.scales}.")
  return np.concatenate(feats), np.concatenate(boxes).astype(np.float32)


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  lt = np.maximum(a[:, None, :2], b[None, :, :2])
  rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
  inter = np.prod(np.clip(rb - lt, 0, None), axis=-1)
  area = lambda x: np.prod(np.clip(x[:, 2:] - x[:, :2], 0, None), axis=-1)  # noqa: E731
  return inter / np.maximum(area(a)[:, None] + area(b)[None] - inter, 1e-9)


@functools.partial(jax.jit, static_argnames=("steps",))
def _fit(x, y, w0, b0, *, l2, learning_rate, steps: int):
  import optax  # noqa: PLC0415

  pos, neg = y > 0, y < 0  # (N, K); 0 = not used for that class
  npos = jnp.maximum(jnp.sum(pos, 0), 1.0)
  nneg = jnp.maximum(jnp.sum(neg, 0), 1.0)

  def loss(p):
    s = x @ p[0] + p[1]
    hinge = jnp.maximum(0.0, 1.0 - jnp.where(pos, s, -s))
    per_class = (jnp.sum(jnp.where(pos, hinge, 0.0), 0) / npos
                 + jnp.sum(jnp.where(neg, hinge, 0.0), 0) / nneg)
    return jnp.sum(per_class) + 0.5 * l2 * jnp.sum(jnp.square(p[0]))

  tx = optax.adam(learning_rate)

  def body(carry, _):
    p, st = carry
    value, g = jax.value_and_grad(loss)(p)
    u, st = tx.update(g, st, p)
    return (optax.apply_updates(p, u), st), value

  p = (w0, b0)
  (p, _), values = jax.lax.scan(body, (p, tx.init(p)), None, length=steps)
  return p[0], p[1], values


def fit_svm(features, targets, config: HogSvmConfig, init=None):
  """Linear one-vs-rest SVMs on ``features [N, D]`` with ``targets [N, K]`` in ``{+1, -1, 0}``
  (positive, negative, unused for that class): ``(weights [D, K], bias [K], objective per step)``.
  Hinge loss averaged over positives and over negatives of each class separately, plus
  ``l2 / 2 ||W||^2`` (see the module docstring)."""
  x = jnp.asarray(features, jnp.float32)
  y = jnp.asarray(targets, jnp.float32)
  if x.ndim != 2 or y.ndim != 2 or y.shape[0] != x.shape[0]:
    raise ValueError(f"features must be [N, D] and targets [N, K], got {x.shape} and {y.shape}.")
  k = y.shape[1]
  w0, b0 = init if init is not None else (jnp.zeros((x.shape[1], k)), jnp.zeros((k,)))
  w, b, values = _fit(x, y, jnp.asarray(w0, jnp.float32), jnp.asarray(b0, jnp.float32),
                      l2=config.l2, learning_rate=config.learning_rate, steps=config.steps)
  return np.asarray(w), np.asarray(b), np.asarray(values)


def _gt_crop_features(image: np.ndarray, boxes: np.ndarray, config: HogSvmConfig) -> np.ndarray:
  """Descriptors of the gt boxes themselves: each crop warped to ``window x window``."""
  out = []
  h, w = image.shape[:2]
  for x1, y1, x2, y2 in boxes:
    xa, ya = int(np.clip(np.floor(x1), 0, w - 1)), int(np.clip(np.floor(y1), 0, h - 1))
    xb, yb = int(np.clip(np.ceil(x2), xa + 1, w)), int(np.clip(np.ceil(y2), ya + 1, h))
    crop = _rescale(image[ya:yb, xa:xb], (config.window, config.window))
    out.append(hog_blocks(crop, config).ravel())
  return np.asarray(out, np.float32).reshape(len(out), config.feature_dim)


def _labels_for(boxes, gt_boxes, gt_labels, k: int, config: HogSvmConfig) -> np.ndarray:
  """``[N, K]`` window targets: +1 (IoU >= pos_iou with a gt of the class), -1 (IoU < neg_iou with
  every gt of the class), 0 (in between)."""
  t = np.full((len(boxes), k), -1, np.int8)
  if len(gt_boxes):
    iou = _iou(boxes, gt_boxes)  # (N, G)
    for c in range(1, k + 1):
      sel = gt_labels == c
      if not sel.any():
        continue
      best = iou[:, sel].max(axis=1)
      t[:, c - 1] = np.where(best >= config.pos_iou, 1, np.where(best < config.neg_iou, -1, 0))
  return t


def train_hog_svm(images: Sequence[np.ndarray], gt_boxes: Sequence[np.ndarray],
                  gt_labels: Sequence[np.ndarray], num_classes: int,
                  config: HogSvmConfig = HogSvmConfig(), *, seed: int = 0,
                  log=None) -> HogSvm:
  """Trains the per-class linear SVMs (with hard-negative mining) on host images.

  Args:
    images: ``[H, W, 3]`` images (any value range; HOG is contrast-normalized).
    gt_boxes, gt_labels: per image ``[G, 4]`` xyxy pixels and ``[G]`` labels ``1..K``.
    num_classes: K.
    config: ``HogSvmConfig``.
    seed: negative sampling.
    log: optional ``callable(str)`` for progress lines.
  """
  if not (len(images) == len(gt_boxes) == len(gt_labels)) or not len(images):
    raise ValueError(f"images, gt_boxes and gt_labels must be non-empty and of equal length, got "
                     f"{len(images)}, {len(gt_boxes)}, {len(gt_labels)}.")
  k = int(num_classes)
  rng = np.random.default_rng(seed)
  xs, ys, cache = [], [], []
  for img, gb, gl in zip(images, gt_boxes, gt_labels):
    img = np.asarray(img, np.float64)
    gb = np.asarray(gb, np.float32).reshape(-1, 4)
    gl = np.asarray(gl, np.int64).reshape(-1)
    feats, boxes = image_windows(img, config)
    t = _labels_for(boxes, gb, gl, k, config)
    cache.append((feats.astype(np.float16), t))  # for mining; half the memory
    pos = np.flatnonzero((t > 0).any(axis=1))
    neg = np.flatnonzero((t < 0).all(axis=1))
    neg = rng.choice(neg, min(len(neg), config.negatives_per_image), replace=False)
    idx = np.concatenate([pos, neg])
    xs.append(feats[idx])
    ys.append(t[idx])
    if len(gb):  # the annotated windows themselves
      xs.append(_gt_crop_features(img, gb, config))
      tg = np.full((len(gb), k), -1, np.int8)
      same = _iou(gb, gb) >= config.pos_iou
      for c in range(1, k + 1):
        tg[:, c - 1] = np.where(gl == c, 1, np.where((same & (gl == c)[None]).any(1), 0, -1))
      ys.append(tg)
  x, y = np.concatenate(xs), np.concatenate(ys)
  w, b, values = fit_svm(x, y, config)
  if log:
    log(f"svm: {len(x)} examples, {int((y > 0).sum())} positive pairs, objective "
        f"{values[0]:.3f} -> {values[-1]:.3f}")
  for r in range(config.hard_negative_rounds):
    hard_x, hard_y = [], []
    for feats, t in cache:
      s = feats.astype(np.float32) @ w + b  # (N, K)
      cand = np.where(t < 0, s, -np.inf).max(axis=1)  # the best-scoring class it is negative for
      order = np.argsort(-cand)[:config.hard_negatives_per_image]
      order = order[cand[order] > -1.0]
      hard_x.append(feats[order].astype(np.float32))
      hard_y.append(np.where(t[order] > 0, 0, t[order]))  # negatives only (never a positive)
    x = np.concatenate([x] + hard_x)
    y = np.concatenate([y] + hard_y)
    w, b, values = fit_svm(x, y, config, init=(w, b))
    if log:
      log(f"hard negatives round {r + 1}: +{sum(len(h) for h in hard_x)} windows, objective "
          f"{values[0]:.3f} -> {values[-1]:.3f}")
  return HogSvm(weights=w, bias=b, config=config)


@functools.partial(jax.jit, static_argnames=("pre_nms_top_n", "detections_per_image"))
def _postprocess(scores, boxes, *, nms_threshold, pre_nms_top_n: int, detections_per_image: int):
  from jaxvision.ops import nms as nms_ops  # noqa: PLC0415

  n, k = scores.shape
  flat = scores.reshape(-1)
  top = min(pre_nms_top_n, n * k)
  s, idx = jax.lax.top_k(flat, top)
  win, cls = idx // k, idx % k
  keep, valid = nms_ops.batched_nms(boxes[win], s, cls, iou_threshold=nms_threshold,
                                    max_output_size=detections_per_image)
  safe = jnp.maximum(keep, 0)
  return {"boxes": jnp.where(valid[:, None], boxes[win][safe], 0.0),
          "scores": jnp.where(valid, s[safe], 0.0),
          "labels": jnp.where(valid, cls[safe] + 1, 0).astype(jnp.int32), "valid": valid}


def detect(model: HogSvm, image) -> dict[str, np.ndarray]:
  """Detections of one image: ``{"boxes" [D, 4], "scores" (SVM margins), "labels" 1..K,
  "valid"}`` with ``D = detections_per_image``."""
  cfg = model.config
  feats, boxes = image_windows(image, cfg)
  scores = feats @ model.weights + model.bias
  out = _postprocess(jnp.asarray(scores), jnp.asarray(boxes), nms_threshold=cfg.nms_threshold,
                     pre_nms_top_n=cfg.pre_nms_top_n,
                     detections_per_image=cfg.detections_per_image)
  return jax.device_get(out)


def evaluate(model: HogSvm, images, gt_boxes, gt_labels) -> dict[str, Any]:
  """VOC mAP@0.5 (``jaxvision.eval.voc``) of ``model`` on host images and their ground truth."""
  from jaxvision.eval.voc import VocEvaluator  # noqa: PLC0415

  ev = VocEvaluator(model.num_classes)
  for img, gb, gl in zip(images, gt_boxes, gt_labels):
    p = detect(model, img)
    gb = np.asarray(gb, np.float32).reshape(1, -1, 4)
    gl = np.asarray(gl, np.int32).reshape(1, -1)
    ev.update(p["boxes"][None], p["scores"][None], p["labels"][None], gb, gl,
              valid=p["valid"][None], gt_valid=gl > 0)
  return ev.result()


def _shapes(split: str, n: int, data_dir: str | None):
  from jaxvision.data import pipeline  # noqa: PLC0415

  source, info = pipeline.shapes_source(split, data_dir)
  exs = [pipeline.decode_shapes(source[i]) for i in range(min(n, len(source)))]
  return ([e["image"] for e in exs], [e["boxes"] for e in exs], [e["labels"] for e in exs],
          info.num_classes)


def main(argv: Sequence[str] | None = None) -> dict:
  """``python -m jaxvision.models.detection.hog_svm``: train on shapes, VOC mAP on validation."""
  import argparse  # noqa: PLC0415
  import json  # noqa: PLC0415
  import time  # noqa: PLC0415

  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--train_images", type=int, default=300)
  parser.add_argument("--val_images", type=int, default=200)
  parser.add_argument("--data_dir", default=None)
  parser.add_argument("--steps", type=int, default=HogSvmConfig.steps)
  parser.add_argument("--learning_rate", type=float, default=HogSvmConfig.learning_rate)
  parser.add_argument("--hard_negative_rounds", type=int, default=HogSvmConfig.hard_negative_rounds)
  args = parser.parse_args(argv)
  config = HogSvmConfig(steps=args.steps, learning_rate=args.learning_rate,
                        hard_negative_rounds=args.hard_negative_rounds)
  start = time.time()
  imgs, boxes, labels, k = _shapes("train", args.train_images, args.data_dir)
  model = train_hog_svm(imgs, boxes, labels, k, config, log=print)
  train_s = time.time() - start
  vimgs, vboxes, vlabels, _ = _shapes("validation", args.val_images, args.data_dir)
  t = time.time()
  res = evaluate(model, vimgs, vboxes, vlabels)
  out = {"model": "hog_svm", "train_images": len(imgs), "val_images": len(vimgs),
         "mAP": float(res["mAP"]), "train_s": round(train_s, 1),
         "test_s_per_image": round((time.time() - t) / max(len(vimgs), 1), 4)}
  print(json.dumps(out))
  return out


if __name__ == "__main__":
  main()
