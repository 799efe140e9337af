"""Pictures people look at instead of numbers (NumPy + Pillow for overlays, matplotlib for figures).

Overlays return ``[H, W, 3]`` uint8 arrays (``save_image`` writes them):
  ``overlay_segmentation(image, label_map)``, ``draw_detections(image, boxes, scores, labels, ...)``
  (with optional instance ``masks``), ``draw_boxes(image, boxes, ...)`` (anchors, ground truth).
Figures return a matplotlib ``Figure``:
  ``plot_segmentation(image, label_map, class_names)`` (with a legend), ``plot_training_curves(workdir)``
  (from ``metrics.jsonl``), ``plot_pr_curves(voc_result, class_names)`` (``jaxvision.eval.voc``).

Class ``k`` always gets ``palette(n)[k]``: the same colour in every picture.
"""

from __future__ import annotations

import colorsys
import json
import os
from typing import Any, Sequence

import numpy as np

IGNORE_LABEL = 255


def palette(n: int) -> np.ndarray:
  """``[n, 3]`` uint8 distinct colours; index 0 (background) is black."""
  if n < 1:
    raise ValueError(f"palette: n must be >= 1, got {n}.")
  colours = [(0, 0, 0)]
  for i in range(1, n):
    h = (i * 0.61803398875) % 1.0  # golden-ratio hue steps stay distinct for any n
    r, g, b = colorsys.hsv_to_rgb(h, 0.75, 0.95)
    colours.append((int(r * 255), int(g * 255), int(b * 255)))
  return np.asarray(colours, np.uint8)


def _as_uint8_image(image: Any, name: str = "image") -> np.ndarray:
  image = np.asarray(image)
  if image.ndim == 2:
    image = np.repeat(image[..., None], 3, axis=-1)
  if image.ndim != 3 or image.shape[-1] not in (3, 4):
    raise ValueError(f"{name} must be [H, W, 3], got shape {image.shape}.")
  image = image[..., :3]
  if image.dtype != np.uint8:
    lo, hi = float(np.min(image)), float(np.max(image))
    if lo >= 0.0 and hi <= 1.0:
      image = image * 255.0
    elif lo < 0.0 or hi > 255.0:  # normalized: stretch for display
      image = (image - lo) / max(hi - lo, 1e-6) * 255.0
    image = np.clip(np.round(image), 0, 255).astype(np.uint8)
  return image


def colorize(label_map: Any, num_classes: int | None = None) -> np.ndarray:
  """``[H, W]`` class ids -> ``[H, W, 3]`` uint8 colours (ignore label 255: white)."""
  label_map = np.asarray(label_map)
  if label_map.ndim != 2:
    raise ValueError(f"label_map must be [H, W], got shape {label_map.shape}.")
  valid = label_map != IGNORE_LABEL
  n = int(num_classes or (label_map[valid].max() + 1 if valid.any() else 1))
  colours = palette(max(n, 1))
  out = colours[np.clip(label_map, 0, n - 1)]
  out[~valid] = 255
  return out


def overlay_segmentation(image: Any, label_map: Any, *, num_classes: int | None = None,
                         alpha: float = 0.5) -> np.ndarray:
  """The image with its label map blended on top (background left as is)."""
  image = _as_uint8_image(image)
  label_map = np.asarray(label_map)
  if label_map.shape != image.shape[:2]:
    raise ValueError(f"label_map shape {label_map.shape} must equal the image's {image.shape[:2]}.")
  colours = colorize(label_map, num_classes).astype(np.float32)
  fg = ((label_map != 0) & (label_map != IGNORE_LABEL))[..., None]
  out = np.where(fg, (1 - alpha) * image + alpha * colours, image)
  return np.clip(np.round(out), 0, 255).astype(np.uint8)


def draw_boxes(image: Any, boxes: Any, *, colours: Any = None, texts: Sequence[str] | None = None,
               width: int = 2) -> np.ndarray:
  """Draws xyxy pixel ``boxes`` ``[n, 4]`` (and optional captions) on a copy of the image."""
  from PIL import Image, ImageDraw  # noqa: PLC0415

  image = _as_uint8_image(image)
  boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
  if colours is None:
    colours = np.tile(np.array([[255, 64, 64]], np.uint8), (len(boxes), 1))
  colours = np.asarray(colours, np.uint8).reshape(-1, 3)
  canvas = Image.fromarray(image)
  draw = ImageDraw.Draw(canvas)
  for i, (x0, y0, x1, y1) in enumerate(boxes):
    c = tuple(int(v) for v in colours[i % len(colours)])
    draw.rectangle([x0, y0, max(x1, x0), max(y1, y0)], outline=c, width=width)
    if texts is not None and i < len(texts) and texts[i]:
      tx, ty = x0 + 1, max(y0 - 11, 0)
      tw = 6 * len(texts[i]) + 2
      draw.rectangle([tx - 1, ty, tx + tw, ty + 10], fill=c)
      draw.text((tx, ty - 1), texts[i], fill=(0, 0, 0))
  return np.asarray(canvas)


def draw_detections(image: Any, boxes: Any, scores: Any, labels: Any, *,
                    class_names: Sequence[str] | None = None, masks: Any = None,
                    score_threshold: float = 0.0, alpha: float = 0.45) -> np.ndarray:
  """Boxes with ``class score`` captions in the class's colour; instance masks blended first.

  ``labels`` are 1..K (0 = padding, skipped); ``masks`` ``[n, H, W]`` bool at the image's size.
  """
  image = _as_uint8_image(image)
  boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
  scores = np.asarray(scores, np.float64).reshape(-1)
  labels = np.asarray(labels).reshape(-1).astype(np.int64)
  if not len(boxes) == len(scores) == len(labels):
    raise ValueError(f"boxes, scores and labels must have the same length, got {len(boxes)}, "
                     f"{len(scores)}, {len(labels)}.")
  keep = (labels > 0) & (scores >= score_threshold)
  k = int(labels.max()) + 1 if len(labels) else 1
  n = max(k, len(class_names) + 1 if class_names else 0, 2)
  colours = palette(n)
  out = image.astype(np.float32)
  if masks is not None:
    masks = np.asarray(masks).astype(bool)
    if masks.shape[0] != len(boxes) or masks.shape[1:] != image.shape[:2]:
      raise ValueError(f"masks must be [{len(boxes)}, {image.shape[0]}, {image.shape[1]}], got "
                       f"{masks.shape}.")
    for i in np.flatnonzero(keep):
      m = masks[i][..., None]
      out = np.where(m, (1 - alpha) * out + alpha * colours[labels[i]], out)
  out = np.clip(np.round(out), 0, 255).astype(np.uint8)

  def caption(i):
    name = class_names[labels[i] - 1] if class_names and labels[i] - 1 < len(class_names) \
        else str(labels[i])
    return f"{name} {scores[i]:.2f}"

  idx = np.flatnonzero(keep)
  return draw_boxes(out, boxes[idx], colours=colours[labels[idx]] if len(idx) else None,
                    texts=[caption(i) for i in idx])


def save_image(image: Any, path: str) -> None:
  """Writes an ``[H, W, 3]`` image (PNG/JPEG by extension)."""
  from PIL import Image  # noqa: PLC0415

  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  Image.fromarray(_as_uint8_image(image)).save(path)


def plot_segmentation(image: Any, label_map: Any, class_names: Sequence[str], *,
                      ground_truth: Any = None, title: str | None = None):
  """Image | prediction (| ground truth) side by side with a colour legend of ``class_names``."""
  import matplotlib.pyplot as plt  # noqa: PLC0415
  from matplotlib.patches import Patch  # noqa: PLC0415

  n = len(class_names)
  panels = [("image", _as_uint8_image(image)), ("prediction", colorize(label_map, n))]
  if ground_truth is not None:
    panels.append(("ground truth", colorize(ground_truth, n)))
  fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels) + 1.5, 3.4))
  for ax, (name, im) in zip(np.atleast_1d(axes), panels):
    ax.imshow(im)
    ax.set_title(name)
    ax.axis("off")
  colours = palette(n) / 255.0
  fig.legend(handles=[Patch(color=colours[i], label=class_names[i]) for i in range(n)],
             loc="center right", fontsize=8)
  if title:
    fig.suptitle(title)
  fig.tight_layout(rect=(0, 0, 0.82, 1))
  return fig


def read_metrics(workdir: str) -> list[dict[str, Any]]:
  """The rows of ``workdir/metrics.jsonl`` (written by the training loop)."""
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} does not exist: is {workdir!r} a training run's workdir?")
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def plot_training_curves(workdir: str, *, train_keys: Sequence[str] = ("loss",),
                         eval_keys: Sequence[str] | None = None):
  """Training loss (and other train keys) and evaluation metrics against the step."""
  import matplotlib.pyplot as plt  # noqa: PLC0415

  rows = read_metrics(workdir)
  train = [r for r in rows if r.get("split") == "train"]
  evals = [r for r in rows if r.get("split") == "eval"]
  if eval_keys is None:
    eval_keys = [k for k in ("mean_iou", "pixel_accuracy", "mAP", "bbox/AP", "segm/AP")
                 if evals and k in evals[-1]]
  fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
  for k in train_keys:
    pts = [(r["step"], r[k]) for r in train if k in r]
    if pts:
      axes[0].plot(*zip(*pts), label=k)
  axes[0].set_xlabel("step")
  axes[0].set_title("training")
  axes[0].legend()
  for k in eval_keys:
    pts = [(r["step"], r[k]) for r in evals if k in r]
    if pts:
      axes[1].plot(*zip(*pts), marker="o", label=k)
  axes[1].set_xlabel("step")
  axes[1].set_title("evaluation")
  if eval_keys:
    axes[1].legend()
  fig.tight_layout()
  return fig


def plot_pr_curves(voc_result: dict[str, Any], class_names: Sequence[str] | None = None):
  """Precision-recall curve per class from ``jaxvision.eval.voc.evaluate_voc``'s result."""
  import matplotlib.pyplot as plt  # noqa: PLC0415

  fig, ax = plt.subplots(figsize=(5, 4))
  ap = np.asarray(voc_result["ap"])
  for k, (p, r) in enumerate(zip(voc_result["precision"], voc_result["recall"])):
    if np.isnan(ap[k]):
      continue
    name = class_names[k] if class_names else str(k + 1)
    ax.plot(np.asarray(r), np.asarray(p), label=f"{name} (AP {ap[k]:.2f})")
  ax.set_xlabel("recall")
  ax.set_ylabel("precision")
  ax.set_xlim(0, 1)
  ax.set_ylim(0, 1.02)
  ax.set_title(f"mAP {voc_result['mAP']:.3f}")
  ax.legend(fontsize=8)
  fig.tight_layout()
  return fig
