"""Pure-NumPy generator of the built-in ``shapes`` dataset (no TFDS, no JAX).

``generate_example(seed, spec)`` draws one image with instance masks, boxes, labels and a semantic
map. ``jaxvision.data.shapes`` wraps it in a TFDS builder; this module stays importable on its own
(cheap, no TFDS import) so tests, notebooks and benchmarks can generate examples directly.

Spec v1.0.0 (frozen: any change to what ``generate_example(seed, SPEC_V1)`` returns needs a new
dataset version in ``jaxvision.data.shapes``):

* Image 128 x 128 RGB (``image_size`` is ``(height, width)``).
* K = 5 classes, labels 1..5: ``circle, square, triangle, star, cross`` (``SHAPES_CLASSES``). The
  class is drawn uniformly and independently of everything else; only the outline tells it.
* 1..6 instances attempted per image (uniform); each instance has a size (diameter of its
  circumscribed circle) uniform in [16, 56] px, a uniform rotation, and a centre uniform in the
  image shrunk by 0.3 x radius at each side (so shapes may be cut by the border).
* Placement by rejection (at most 10 tries per instance, then the instance is skipped): a
  candidate is rejected if less than half of its own area lies inside the image, or if it would
  leave any earlier instance with less than half of its (in-image) area, or with fewer than
  20 px, visible. So every kept instance is at least half visible and occlusions are real but
  never hide an object's identity. The first instance always survives (its last try is placed
  fully inside), so N >= 1.
* Appearance independent of class: texture uniform over ``solid, stripes, checker, noise``
  (stripe/checker period, angle and second colour random); main colour uniform in RGB, re-drawn
  (up to 10 times, most contrasting kept) until it differs from the canvas under the shape by at
  least 60 (RGB L2 distance). Shapes are antialiased: coverage is measured with 3 x 3 samples per
  pixel and the shape is alpha-blended with that coverage.
* Background: linear gradient between two uniform random colours in a random direction, 2..8
  thin anti-aliased random lines (width 0.8..2 px) and 3..12 small ellipses (radii 1.5..4.5 px),
  all unlabelled and drawn below the shapes; then Gaussian sensor noise (std uniform in
  [2, 10]) over the whole image.

Annotations (all derived from the same hard masks, so they are mutually consistent):

* A pixel belongs to a shape when at least 5 of its 9 samples fall inside the outline. The
  visible mask of an instance is its pixels minus those of every later (higher) instance;
  instances are listed bottom to top (painting order).
* ``masks`` uint8 ``[N, H, W]`` in {0, 1}: visible pixels, pairwise disjoint, never empty.
* ``boxes`` float32 ``[N, 4]`` xyxy in continuous pixel coordinates: the tight box of the visible
  mask, ``x1 = min col, y1 = min row, x2 = max col + 1, y2 = max row + 1``.
* ``labels`` int64 ``[N]`` in 1..K; ``is_crowd`` bool ``[N]``, all False.
* ``segmentation`` uint8 ``[H, W]``: 0 background, else the label of the top-most instance
  covering the pixel (equal to ``sum_i labels[i] * masks[i]``). The ignore label 255 is not used.

Determinism: the output is a function of ``(seed, spec)`` only. ``example_seed(split, index)``
derives the seed with SHA-256 (never Python's salted ``hash()``). Geometry is quantized to
1/256 px before rasterization and rasterization uses only IEEE-exact arithmetic (+, -, *, /,
comparisons), so masks do not depend on the platform's ``sin``/``cos``; colours go through the
same arithmetic. What could change examples is NumPy changing its ``Generator`` streams (PCG64
``random``/``integers``/``normal``), which NumPy keeps stable in practice; the prepared TFDS
dataset is the frozen artefact in any case.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any

import numpy as np

SHAPES_CLASSES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross")
TEXTURES: tuple[str, ...] = ("solid", "stripes", "checker", "noise")


@dataclasses.dataclass(frozen=True)
class ShapesSpec:
  """Parameters of the procedural generator (see the module docstring for their meaning).

  ``SPEC_V1`` is the frozen spec of dataset version 1.0.0. Other specs are fine for experiments
  with ``generate_example`` but are never written under the ``jaxvision_shapes`` name.
  """

  image_size: tuple[int, int] = (128, 128)  # (height, width)
  classes: tuple[str, ...] = SHAPES_CLASSES
  num_instances: tuple[int, int] = (1, 6)  # inclusive range of attempted instances
  size: tuple[float, float] = (16.0, 56.0)  # circumscribed diameter, px
  border_margin: float = 0.3  # centre stays >= margin * radius inside the image
  min_visible_fraction: float = 0.5
  min_visible_area: int = 20  # px
  placement_tries: int = 10
  min_contrast: float = 60.0  # RGB L2 distance between a shape and the canvas under it
  colour_tries: int = 10
  supersample: int = 3  # samples per pixel side; odd, so coverage never ties at 1/2
  star_inner_ratio: float = 0.45
  cross_arm_ratio: float = 0.33  # half arm width / half extent
  num_lines: tuple[int, int] = (2, 8)
  line_width: tuple[float, float] = (0.8, 2.0)
  num_blobs: tuple[int, int] = (3, 12)
  blob_radius: tuple[float, float] = (1.5, 4.5)
  noise_std: tuple[float, float] = (2.0, 10.0)
  texture_noise_std: tuple[float, float] = (15.0, 40.0)
  texture_period: tuple[float, float] = (4.0, 10.0)  # stripes: full period; checker: 2 cells

  @property
  def num_classes(self) -> int:
    return len(self.classes)

  def __post_init__(self):
    unknown = set(self.classes) - set(SHAPES_CLASSES)
    if unknown:
      raise ValueError(f"ShapesSpec.classes: unknown shapes {sorted(unknown)}; "
                       f"expected a subset of {SHAPES_CLASSES}.")
    if self.supersample % 2 != 1:
      raise ValueError(f"ShapesSpec.supersample must be odd, got {self.supersample}.")
    if not 0 < self.size[0] <= self.size[1] <= min(self.image_size):
      raise ValueError(f"ShapesSpec.size must be (lo, hi) with 0 < lo <= hi <= min(image_size), "
                       f"got {self.size} for image_size {self.image_size}.")
    lo, hi = self.num_instances
    if not 1 <= lo <= hi:
      raise ValueError(f"ShapesSpec.num_instances must be (lo, hi) with 1 <= lo <= hi, "
                       f"got {self.num_instances}.")


SPEC_V1 = ShapesSpec()


def example_seed(split: str, index: int) -> int:
  """The generator seed of example ``index`` of ``split``: stable across machines and runs."""
  if index < 0:
    raise ValueError(f"index must be >= 0, got {index}.")
  digest = hashlib.sha256(f"jaxvision_shapes/{split}/{index}".encode()).digest()
  return int.from_bytes(digest[:8], "little")


# ------------------------------------------------------------------------------------------------
# Geometry (exact arithmetic on quantized coordinates)
# ------------------------------------------------------------------------------------------------


def _q(x) -> np.ndarray:
  """Quantizes coordinates to 1/256 px so that rasterization is platform independent."""
  return np.round(np.asarray(x, np.float64) * 256.0) / 256.0


def _unit_outline(name: str, spec: ShapesSpec) -> np.ndarray | None:
  """Polygon vertices [V, 2] (x, y) with circumradius 1, or None for the circle."""
  if name == "circle":
    return None
  if name == "square":
    angles = np.deg2rad(45.0 + 90.0 * np.arange(4))
    return np.stack([np.cos(angles), np.sin(angles)], -1)
  if name == "triangle":
    angles = np.deg2rad(-90.0 + 120.0 * np.arange(3))
    return np.stack([np.cos(angles), np.sin(angles)], -1)
  if name == "star":
    angles = np.deg2rad(-90.0 + 36.0 * np.arange(10))
    radii = np.where(np.arange(10) % 2 == 0, 1.0, spec.star_inner_ratio)
    return np.stack([radii * np.cos(angles), radii * np.sin(angles)], -1)
  if name == "cross":
    a = spec.cross_arm_ratio
    quarter = np.array([[a, -1.0], [a, -a], [1.0, -a]])  # one arm's right side and the next arm
    rot = np.array([[0.0, -1.0], [1.0, 0.0]])  # +90 degrees (x, y) -> (-y, x)
    pts = [quarter]
    for _ in range(3):
      pts.append(pts[-1] @ rot.T)
    return np.concatenate(pts) / np.hypot(1.0, a)
  raise ValueError(f"unknown shape {name!r}")


def _sample_coords(start: int, n: int, s: int) -> np.ndarray:
  """Sample positions of ``n`` pixels from ``start`` with ``s`` samples per pixel: [n * s]."""
  return start + (np.arange(n * s, dtype=np.float64) + 0.5) / s


def _inside_polygon(xs: np.ndarray, ys: np.ndarray, verts: np.ndarray) -> np.ndarray:
  """Even-odd point-in-polygon test on the grid ``ys[:, None] x xs[None, :]`` -> bool [Y, X].

  For each edge the crossing abscissa depends on the row only, so it is computed per row and
  compared with the columns in one broadcast: one comparison and one xor per edge on the grid.
  """
  inside = np.zeros((ys.size, xs.size), bool)
  col = ys[:, None]
  for (x0, y0), (x1, y1) in zip(verts, np.roll(verts, -1, axis=0)):
    if y1 == y0:
      continue  # a horizontal edge is never crossed by a horizontal ray
    crosses = (y0 > col) != (y1 > col)
    x_cross = x0 + (col - y0) * ((x1 - x0) / (y1 - y0))
    x_cross = np.where(crosses, x_cross, -np.inf)
    inside ^= xs[None, :] < x_cross
  return inside


@dataclasses.dataclass
class _Shape:
  """One rasterized candidate: hard mask and coverage on an (unclipped) integer window."""

  label: int
  r0: int
  c0: int
  mask: np.ndarray  # bool [h, w]
  coverage: np.ndarray  # float32 [h, w] in [0, 1]

  def clipped(self, height: int, width: int):
    """Returns (row slice, col slice) into the image and the same slices into the window."""
    h, w = self.mask.shape
    ra, rb = max(self.r0, 0), min(self.r0 + h, height)
    ca, cb = max(self.c0, 0), min(self.c0 + w, width)
    img = (slice(ra, rb), slice(ca, cb))
    win = (slice(ra - self.r0, rb - self.r0), slice(ca - self.c0, cb - self.c0))
    return img, win


def _rasterize(label: int, cx: float, cy: float, radius: float, angle: float,
               spec: ShapesSpec) -> _Shape:
  s = spec.supersample
  r0, r1 = int(np.floor(cy - radius)) - 1, int(np.ceil(cy + radius)) + 1
  c0, c1 = int(np.floor(cx - radius)) - 1, int(np.ceil(cx + radius)) + 1
  h, w = r1 - r0, c1 - c0
  xs, ys = _sample_coords(c0, w, s), _sample_coords(r0, h, s)
  outline = _unit_outline(spec.classes[label - 1], spec)
  if outline is None:
    dx2 = (xs - cx)**2
    dy2 = (ys - cy)**2
    inside = dy2[:, None] + dx2[None, :] <= radius * radius
  else:
    cos, sin = np.cos(angle), np.sin(angle)
    rot = np.array([[cos, -sin], [sin, cos]])
    verts = _q(outline @ rot.T * radius + np.array([cx, cy]))
    inside = _inside_polygon(xs, ys, verts)
  counts = inside.reshape(h, s, w, s).sum(axis=(1, 3))
  return _Shape(label=label, r0=r0, c0=c0, mask=2 * counts > s * s,
                coverage=(counts / (s * s)).astype(np.float32))


# ------------------------------------------------------------------------------------------------
# Appearance
# ------------------------------------------------------------------------------------------------


def _texture(rng: np.random.Generator, colour: np.ndarray, kind: str, img_slices,
             spec: ShapesSpec) -> np.ndarray:
  """Texture colours float32 [h, w, 3] over the image region ``img_slices`` (image coordinates,
  so stripes and checkers are continuous across the shape)."""
  rows, cols = img_slices
  h, w = rows.stop - rows.start, cols.stop - cols.start
  second = np.clip(colour + rng.uniform(-110.0, 110.0, 3), 0.0, 255.0)
  if kind == "solid":
    return np.broadcast_to(colour.astype(np.float32), (h, w, 3))
  if kind == "noise":
    std = rng.uniform(*spec.texture_noise_std)
    noise = rng.normal(0.0, std, (h, w, 3))
    return (colour + noise).astype(np.float32)
  period = rng.uniform(*spec.texture_period)
  theta = rng.uniform(0.0, np.pi)
  cos, sin = _q(np.cos(theta)), _q(np.sin(theta))
  y = np.arange(rows.start, rows.stop, dtype=np.float64)[:, None] + 0.5
  x = np.arange(cols.start, cols.stop, dtype=np.float64)[None, :] + 0.5
  u = np.floor((x * cos + y * sin) / (period / 2))
  if kind == "stripes":
    odd = u % 2 == 1
  elif kind == "checker":
    v = np.floor((y * cos - x * sin) / (period / 2))
    odd = (u + v) % 2 == 1
  else:
    raise ValueError(f"unknown texture {kind!r}")
  return np.where(odd[..., None], second, colour).astype(np.float32)


def _pick_colour(rng: np.random.Generator, under: np.ndarray, spec: ShapesSpec) -> np.ndarray:
  """A uniform RGB colour at least ``min_contrast`` away from ``under`` (best of the tries)."""
  best, best_dist = None, -1.0
  for _ in range(spec.colour_tries):
    colour = rng.uniform(0.0, 255.0, 3)
    dist = float(np.sqrt(np.sum((colour - under)**2)))
    if dist > best_dist:
      best, best_dist = colour, dist
    if dist >= spec.min_contrast:
      break
  return best


def _background(rng: np.random.Generator, spec: ShapesSpec) -> np.ndarray:
  """Gradient + unlabelled clutter (lines, small ellipses) -> float32 [H, W, 3]."""
  height, width = spec.image_size
  y = np.arange(height, dtype=np.float64)[:, None] + 0.5
  x = np.arange(width, dtype=np.float64)[None, :] + 0.5
  ca, cb = rng.uniform(0.0, 255.0, 3), rng.uniform(0.0, 255.0, 3)
  theta = rng.uniform(0.0, 2 * np.pi)
  cos, sin = _q(np.cos(theta)), _q(np.sin(theta))
  extent = abs(cos) * width + abs(sin) * height
  t = np.clip(((x - width / 2) * cos + (y - height / 2) * sin) / extent + 0.5, 0.0, 1.0)
  canvas = (ca * (1.0 - t[..., None]) + cb * t[..., None]).astype(np.float32)

  def blend(alpha, rows, cols, colour):
    # Only where alpha > 0: elsewhere the blend is the identity (bit for bit), so this is the
    # dense blend, just faster for thin lines.
    region = canvas[rows, cols]  # a view
    where = np.nonzero(alpha > 0.0)
    a = alpha[where].astype(np.float32)[:, None]
    region[where] = region[where] * (1.0 - a) + colour.astype(np.float32) * a

  for _ in range(rng.integers(spec.num_lines[0], spec.num_lines[1] + 1)):
    p0 = _q(rng.uniform(-8.0, [width + 8.0, height + 8.0]))
    p1 = _q(rng.uniform(-8.0, [width + 8.0, height + 8.0]))
    half = _q(rng.uniform(*spec.line_width) / 2)
    colour = rng.uniform(0.0, 255.0, 3)
    d = p1 - p0
    length2 = float(d @ d)
    if length2 == 0.0:
      continue
    # Distance from the pixel centres around the segment to it.
    lo, hi = np.minimum(p0, p1) - half - 1.0, np.maximum(p0, p1) + half + 1.0
    rows = slice(max(int(np.floor(lo[1])), 0), max(min(int(np.ceil(hi[1])), height), 0))
    cols = slice(max(int(np.floor(lo[0])), 0), max(min(int(np.ceil(hi[0])), width), 0))
    yy, xx = y[rows] - p0[1], x[:, cols] - p0[0]
    proj = np.clip((xx * d[0] + yy * d[1]) / length2, 0.0, 1.0)
    dist = np.sqrt((xx - proj * d[0])**2 + (yy - proj * d[1])**2)
    blend(np.clip(half + 0.5 - dist, 0.0, 1.0), rows, cols, colour)

  for _ in range(rng.integers(spec.num_blobs[0], spec.num_blobs[1] + 1)):
    cx, cy = _q(rng.uniform(0.0, [width, height]))
    rx, ry = _q(rng.uniform(*spec.blob_radius, 2))
    theta = rng.uniform(0.0, np.pi)
    colour = rng.uniform(0.0, 255.0, 3)
    cos, sin = _q(np.cos(theta)), _q(np.sin(theta))
    r = int(np.ceil(max(rx, ry))) + 2
    rows = slice(max(int(cy) - r, 0), min(int(cy) + r + 1, height))
    cols = slice(max(int(cx) - r, 0), min(int(cx) + r + 1, width))
    yy, xx = y[rows] - cy, x[:, cols] - cx
    u, v = (xx * cos + yy * sin) / rx, (yy * cos - xx * sin) / ry
    rho = np.sqrt(u * u + v * v)
    blend(np.clip((1.0 - rho) * min(rx, ry) + 0.5, 0.0, 1.0), rows, cols, colour)
  return canvas


# ------------------------------------------------------------------------------------------------
# Examples
# ------------------------------------------------------------------------------------------------


def generate_example(seed: int, spec: ShapesSpec = SPEC_V1) -> dict[str, Any]:
  """Generates one example; the same ``(seed, spec)`` always gives the same arrays.

  Args:
    seed: a non-negative integer (see ``example_seed`` for the dataset's per-split seeds).
    spec: generator parameters; ``SPEC_V1`` is dataset version 1.0.0.

  Returns:
    ``{"image": uint8 [H, W, 3], "segmentation": uint8 [H, W], "masks": uint8 [N, H, W],
    "boxes": float32 [N, 4], "labels": int64 [N], "is_crowd": bool [N]}`` with N >= 1, instances
    bottom to top. See the module docstring for the exact semantics.
  """
  if not isinstance(seed, (int, np.integer)) or seed < 0:
    raise ValueError(f"seed must be a non-negative int, got {seed!r}.")
  rng = np.random.default_rng(int(seed))
  height, width = spec.image_size
  canvas = _background(rng, spec)

  owner = np.full((height, width), -1, np.int32)  # index of the top-most kept instance
  visible = []  # visible pixel count per kept instance
  in_image = []  # in-image area per kept instance
  labels = []
  num_target = int(rng.integers(spec.num_instances[0], spec.num_instances[1] + 1))
  for _ in range(num_target):
    label = int(rng.integers(1, spec.num_classes + 1))
    radius = float(_q(rng.uniform(*spec.size) / 2))
    angle = float(rng.uniform(0.0, 2 * np.pi))
    placed = None
    for attempt in range(spec.placement_tries):
      margin = spec.border_margin * radius
      if not labels and attempt == spec.placement_tries - 1:
        margin = radius  # first instance, last try: fully inside, always accepted
      cx, cy = _q(rng.uniform(margin, [width - margin, height - margin]))
      shape = _rasterize(label, float(cx), float(cy), radius, angle, spec)
      img, win = shape.clipped(height, width)
      mask = shape.mask[win]
      area = int(mask.sum())
      if area < max(spec.min_visible_fraction * shape.mask.sum(), spec.min_visible_area):
        continue
      if labels:
        covered = owner[img][mask]
        lost = np.bincount(covered[covered >= 0], minlength=len(labels))
        remaining = np.asarray(visible) - lost
        needed = np.maximum(spec.min_visible_fraction * np.asarray(in_image),
                            spec.min_visible_area)
        if np.any(remaining < needed):
          continue
        visible = list(remaining)
      placed = (shape, img, win, mask, area)
      break
    if placed is None:
      continue
    shape, img, win, mask, area = placed
    under = canvas[img][mask].mean(axis=0)
    colour = _pick_colour(rng, under, spec)
    kind = TEXTURES[int(rng.integers(len(TEXTURES)))]
    texture = _texture(rng, colour, kind, img, spec)
    alpha = shape.coverage[win][..., None]
    canvas[img] = canvas[img] * (1.0 - alpha) + texture * alpha
    owner[img][mask] = len(labels)
    visible.append(area)
    in_image.append(area)
    labels.append(label)

  std = rng.uniform(*spec.noise_std)
  canvas = canvas + rng.normal(0.0, std, canvas.shape).astype(np.float32)
  image = np.clip(np.rint(canvas), 0, 255).astype(np.uint8)

  masks = owner[None] == np.arange(len(labels))[:, None, None]
  keep = masks.sum(axis=(1, 2)) >= spec.min_visible_area  # guaranteed by placement; kept as a guard
  masks, labels = masks[keep], np.asarray(labels, np.int64)[keep]
  rows_any, cols_any = masks.any(axis=2), masks.any(axis=1)
  boxes = np.stack([
      cols_any.argmax(axis=1), rows_any.argmax(axis=1),
      width - cols_any[:, ::-1].argmax(axis=1), height - rows_any[:, ::-1].argmax(axis=1)
  ], axis=-1).astype(np.float32).reshape(-1, 4)
  segmentation = np.zeros((height, width), np.uint8)
  for mask, label in zip(masks, labels):
    segmentation[mask] = label
  return {
      "image": image,
      "segmentation": segmentation,
      "masks": masks.astype(np.uint8),
      "boxes": boxes,
      "labels": labels,
      "is_crowd": np.zeros(len(labels), bool),
  }
