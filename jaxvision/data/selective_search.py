"""Selective search region proposals (Uijlings, van de Sande, Gevers and Smeulders, "Selective Search
for Object Recognition", IJCV 2013), on scikit-image's graph-based segmentation, host-side NumPy.

R-CNN's proposals (Girshick et al. 2014 use selective search's "fast mode", ~2000 boxes an image).
The algorithm (paper Sec. 3):

1. **Initial regions** from Felzenszwalb and Huttenlocher's graph-based segmentation
   (``skimage.segmentation.felzenszwalb``, the maintained implementation; parameter ``k`` =
   ``scale``).
2. **Hierarchical grouping** (Alg. 1): the similarity of every pair of *adjacent* regions is
   computed; the most similar pair is merged into one region (its box the union, its size the sum,
   its colour histogram the size-weighted mean), the similarities involving the two are removed,
   and the new region's similarities to its neighbours added; repeated until one region covers the
   image. Every region ever formed is a proposal.
3. **Similarity** (Sec. 3.2), each in ``[0, 1]``, summed over the measures in ``similarities``:

   * colour ``s_colour(ri, rj) = sum_k min(c_i^k, c_j^k)``: histogram intersection of the
     L1-normalized colour histograms (``bins`` per channel, 25 in the paper);
   * size ``s_size = 1 - (size(ri) + size(rj)) / size(im)``: small regions merge early, so the
     hierarchy grows evenly over the image;
   * fill ``s_fill = 1 - (size(BB_ij) - size(ri) - size(rj)) / size(im)``: regions that fit
     each other (a small union box) merge early;
   * (the paper's texture measure, SIFT-like gradient histograms, is left out.)

4. **Diversification** (Sec. 3.3): several strategies (colour space, ``k``, similarity set)
   each run the grouping; their boxes are pooled. **Ranking** (Sec. 3.4): in each strategy the
   region formed last (the whole image) has position 1, the one before it 2, ...; each position is
   multiplied by a random number in ``[0, 1]`` and the boxes are sorted by that value, so large,
   late regions come early but every strategy contributes; duplicates are dropped.

``add_selective_search_proposals`` is the data transform (``config.data.proposals =
"selective_search"``) that puts the result in the batch contract (``proposals [P, 4]`` xyxy in
network-input pixels, ``proposals_valid [P]``), like ``jaxvision.data.proposals.add_shapes_proposals``.
The example's image may be normalized: it is min-max rescaled to ``[0, 1]`` per channel set first
(segmentation and histograms only need relative colours).
"""

from __future__ import annotations

import heapq
from typing import Any, Mapping, Sequence

import numpy as np

__all__ = ["SIMILARITIES", "COLOR_SPACES", "DEFAULT_STRATEGIES", "check_available",
           "initial_regions", "hierarchical_grouping", "selective_search",
           "add_selective_search_proposals"]

SIMILARITIES = ("colour", "size", "fill")
COLOR_SPACES = ("rgb", "hsv", "lab")
#: (colour space, felzenszwalb scale k, similarity measures): a small "fast mode"-like set for
#: 128 px images (the paper's fast mode: HSV and Lab, k = 50 and 100, C+T+S+F and T+S+F).
DEFAULT_STRATEGIES = (("hsv", 50.0, ("colour", "size", "fill")),
                      ("lab", 100.0, ("colour", "size", "fill")),
                      ("rgb", 100.0, ("size", "fill")))


def _skimage():
  try:
    import skimage.color  # noqa: PLC0415
    import skimage.segmentation  # noqa: PLC0415
  except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError("selective search needs scikit-image (`pip install scikit-image`).") from e
  return skimage


def check_available() -> None:
  """Raises ``ImportError`` (saying what to install) when scikit-image is missing."""
  _skimage()


def _as_unit_image(image) -> np.ndarray:
  img = np.asarray(image, np.float32)
  if img.ndim != 3 or img.shape[-1] != 3:
    raise ValueError(f"image must be [H, W, 3], got shape {img.shape}.")
  lo, hi = float(img.min()), float(img.max())
  return (img - lo) / (hi - lo) if hi > lo else np.zeros_like(img)


def _colour(img01: np.ndarray, space: str) -> np.ndarray:
  """The image in ``space``, each channel scaled to ``[0, 1]``."""
  if space not in COLOR_SPACES:
    raise ValueError(f"colour space must be one of {COLOR_SPACES}, got {space!r}.")
  sk = _skimage()
  if space == "rgb":
    return img01
  if space == "hsv":
    return sk.color.rgb2hsv(img01).astype(np.float32)
  lab = sk.color.rgb2lab(img01)  # L in [0, 100], a/b about [-128, 127]
  return np.stack([lab[..., 0] / 100.0, (lab[..., 1] + 128) / 255.0, (lab[..., 2] + 128) / 255.0],
                  -1).clip(0, 1).astype(np.float32)


def initial_regions(image, *, scale: float = 100.0, sigma: float = 0.8,
                    min_size: int = 20) -> np.ndarray:
  """Felzenszwalb's graph-based segmentation (``skimage.segmentation.felzenszwalb``) of an
  ``[H, W, 3]`` image: ``[H, W]`` int labels ``0..R-1``."""
  sk = _skimage()
  seg = sk.segmentation.felzenszwalb(np.asarray(image, np.float64), scale=float(scale),
                                     sigma=float(sigma), min_size=int(min_size))
  _, seg = np.unique(seg, return_inverse=True)  # consecutive labels
  return seg.reshape(np.asarray(image).shape[:2]).astype(np.int32)


def _region_stats(seg: np.ndarray, colour_img: np.ndarray, bins: int):
  """Per region: size, box (x1, y1, x2, y2 exclusive ends), L1-normalized colour histogram."""
  r = int(seg.max()) + 1
  h, w = seg.shape
  flat = seg.ravel()
  sizes = np.bincount(flat, minlength=r).astype(np.float64)
  ys, xs = np.divmod(np.arange(h * w), w)
  boxes = np.zeros((r, 4), np.float64)
  boxes[:, 0] = np.full(r, w)
  boxes[:, 1] = np.full(r, h)
  np.minimum.at(boxes[:, 0], flat, xs)
  np.minimum.at(boxes[:, 1], flat, ys)
  np.maximum.at(boxes[:, 2], flat, xs + 1)
  np.maximum.at(boxes[:, 3], flat, ys + 1)
  q = np.clip((colour_img * bins).astype(np.int64), 0, bins - 1)  # (H, W, 3)
  hist = np.zeros((r, 3 * bins), np.float64)
  for c in range(3):
    np.add.at(hist, (flat, c * bins + q[..., c].ravel()), 1.0)
  hist /= np.maximum(hist.sum(1, keepdims=True), 1.0)
  return sizes, boxes, hist


def _adjacent_pairs(seg: np.ndarray) -> set[tuple[int, int]]:
  """Pairs ``(i < j)`` of regions that touch horizontally or vertically."""
  pairs = set()
  for a, b in ((seg[:, :-1], seg[:, 1:]), (seg[:-1, :], seg[1:, :])):
    diff = a != b
    lo = np.minimum(a[diff], b[diff])
    hi = np.maximum(a[diff], b[diff])
    pairs.update(zip(lo.tolist(), hi.tolist()))
  return pairs


def hierarchical_grouping(seg: np.ndarray, colour_img: np.ndarray, *,
                          similarities: Sequence[str] = SIMILARITIES, bins: int = 25):
  """Selective search's greedy grouping (Alg. 1) of the regions of ``seg``.

  Args:
    seg: ``[H, W]`` int labels ``0..R-1`` (initial regions).
    colour_img: ``[H, W, 3]`` in ``[0, 1]`` (for the colour histograms).
    similarities: measures summed (subset of ``SIMILARITIES``, non-empty).
    bins: colour histogram bins per channel.

  Returns:
    ``[2R - 1, 4]`` float32 xyxy boxes (pixel edges: a region covering pixel columns ``x0..x1``
    has ``x1 + 1`` as its right edge) in creation order: the ``R`` initial regions, then one per
    merge (the last is the whole connected image).
  """
  unknown = [s for s in similarities if s not in SIMILARITIES]
  if unknown or not similarities:
    raise ValueError(f"similarities must be a non-empty subset of {SIMILARITIES}, got "
                     f"{tuple(similarities)}.")
  seg = np.asarray(seg)
  if seg.ndim != 2 or seg.shape != colour_img.shape[:2]:
    raise ValueError(f"seg must be [H, W] like colour_img {colour_img.shape[:2]}, got "
                     f"{seg.shape}.")
  im_size = float(seg.size)
  sizes, boxes, hist = _region_stats(seg, colour_img, bins)
  sizes, boxes, hist = list(sizes), list(boxes), list(hist)
  neighbours: dict[int, set[int]] = {i: set() for i in range(len(sizes))}
  for i, j in _adjacent_pairs(seg):
    neighbours[i].add(j)
    neighbours[j].add(i)
  use = set(similarities)

  def sim(i, j):
    s = 0.0
    if "colour" in use:
      s += float(np.minimum(hist[i], hist[j]).sum()) / 3.0  # three channels: scaled to [0, 1]
    if "size" in use:
      s += 1.0 - (sizes[i] + sizes[j]) / im_size
    if "fill" in use:
      bb = (max(boxes[i][2], boxes[j][2]) - min(boxes[i][0], boxes[j][0])) * (
          max(boxes[i][3], boxes[j][3]) - min(boxes[i][1], boxes[j][1]))
      s += 1.0 - (bb - sizes[i] - sizes[j]) / im_size
    return s

  # Max-heap of (-similarity, i, j); entries of merged regions are skipped lazily.
  heap = [(-sim(i, j), i, j) for i in neighbours for j in neighbours[i] if i < j]
  heapq.heapify(heap)
  alive = set(neighbours)
  while heap:
    _, i, j = heapq.heappop(heap)
    if i not in alive or j not in alive:
      continue
    t = len(sizes)
    sizes.append(sizes[i] + sizes[j])
    boxes.append(np.array([min(boxes[i][0], boxes[j][0]), min(boxes[i][1], boxes[j][1]),
                           max(boxes[i][2], boxes[j][2]), max(boxes[i][3], boxes[j][3])]))
    hist.append((sizes[i] * hist[i] + sizes[j] * hist[j]) / sizes[t])
    nb = (neighbours.pop(i) | neighbours.pop(j)) - {i, j}
    alive -= {i, j}
    for n in nb:
      neighbours[n] -= {i, j}
      neighbours[n].add(t)
    neighbours[t] = nb
    alive.add(t)
    for n in nb:
      heapq.heappush(heap, (-sim(t, n), n, t))
  return np.asarray(boxes, np.float32).reshape(-1, 4)


def selective_search(image, rng: np.random.Generator | None = None, *,
                     strategies: Sequence[tuple[str, float, Sequence[str]]] = DEFAULT_STRATEGIES,
                     sigma: float = 0.8, min_size: int = 20, bins: int = 25,
                     min_box_size: float = 4.0) -> np.ndarray:
  """Selective search boxes of one ``[H, W, 3]`` image (any value range), ranked.

  Args:
    image: ``[H, W, 3]``.
    rng: generator of the ranking's random factors (None: a fixed seed, deterministic).
    strategies: ``(colour space, felzenszwalb scale, similarity measures)`` per run.
    sigma, min_size: felzenszwalb's smoothing and minimum component size.
    bins: colour histogram bins per channel.
    min_box_size: boxes with a side below this (px) are dropped.

  Returns:
    ``[N, 4]`` float32 xyxy boxes, unique, best-ranked first (see the module docstring).
  """
  img01 = _as_unit_image(image)
  rng = np.random.default_rng(0) if rng is None else rng
  all_boxes, keys = [], []
  for space, scale, sims in strategies:
    colour_img = _colour(img01, space)
    seg = initial_regions(colour_img, scale=scale, sigma=sigma, min_size=min_size)
    boxes = hierarchical_grouping(seg, colour_img, similarities=tuple(sims), bins=bins)
    position = np.arange(len(boxes), 0, -1, dtype=np.float64)  # the last merge: position 1
    all_boxes.append(boxes)
    keys.append(position * rng.uniform(0.0, 1.0, len(boxes)))
  boxes = np.concatenate(all_boxes)
  order = np.argsort(np.concatenate(keys), kind="stable")
  boxes = boxes[order]
  keep = ((boxes[:, 2] - boxes[:, 0]) >= min_box_size) & ((boxes[:, 3] - boxes[:, 1]) >= min_box_size)
  boxes = boxes[keep]
  _, first = np.unique(boxes, axis=0, return_index=True)
  return boxes[np.sort(first)].astype(np.float32)


def add_selective_search_proposals(example: Mapping[str, Any], rng: np.random.Generator, *,
                                   max_proposals: int, train: bool = False,
                                   **kwargs) -> dict:
  """Data transform: ``example["proposals"], example["proposals_valid"]`` from selective search
  on ``example["image"]`` (restricted to ``image_hw``, the real image inside any padding),
  truncated or zero-padded (invalid) to ``max_proposals``. ``train`` is accepted for symmetry with
  ``add_shapes_proposals``: selective search never looks at the ground truth (R-CNN adds the gt
  boxes to the training RoIs itself). Extra keyword arguments go to ``selective_search``."""
  del train
  if "image" not in example:
    raise ValueError(f"add_selective_search_proposals: example has no 'image' (keys: "
                     f"{sorted(example)}).")
  max_proposals = int(max_proposals)
  if max_proposals < 1:
    raise ValueError(f"max_proposals must be >= 1, got {max_proposals}.")
  image = np.asarray(example["image"])
  h, w = (int(v) for v in example.get("image_hw", image.shape[:2]))
  boxes = selective_search(image[:h, :w], rng, **kwargs)[:max_proposals]
  out_boxes = np.zeros((max_proposals, 4), np.float32)
  out_boxes[:len(boxes)] = boxes
  valid = np.zeros((max_proposals,), bool)
  valid[:len(boxes)] = True
  out = dict(example)
  out["proposals"] = out_boxes
  out["proposals_valid"] = valid
  return out
