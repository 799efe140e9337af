"""Host-side NumPy augmentations and batch-contract padding for detection and segmentation examples.

These functions run in grain worker processes (plain NumPy, no JAX, never under ``jit``). They take
and return one *example*: a ``dict`` with

* ``image``: ``[H, W, 3]`` ``uint8`` or ``float32``. Until :func:`normalize_image`, pixel values are
  in ``[0, 255]`` whatever the dtype; geometric transforms keep the dtype (``uint8`` is rounded).
* ``boxes``: ``[N, 4]`` float32 xyxy in continuous pixel coordinates (pixel ``(i, j)`` covers
  ``[j, j + 1] x [i, i + 1]``; width is ``x2 - x1``, no ``+1``), and ``labels``: ``[N]`` int (1..K).
* optional ``masks`` ``[N, H, W]`` bool/uint8 (returned as bool), ``segmentation`` ``[H, W]`` int
  (returned as int32, 255 = ignore), ``is_crowd`` and ``difficult`` ``[N]`` bool.
* any other key (``image_id``, ...) is passed through untouched.

Inputs are never modified: every function returns a new dict.

Geometry. Every geometric transform moves ``image``, ``boxes``, ``masks`` and ``segmentation``
together: images are resampled bilinearly (a triangle filter widened on downscaling, i.e.
antialiased, like Pillow), masks and label maps with nearest neighbour using the *same* index maps,
so ``segmentation`` and ``masks`` always agree pixel for pixel. Boxes whose width or height becomes
``<= 0`` are dropped together with their label, mask and flags (the per-instance keys are
:data:`INSTANCE_KEYS`). Crops and the elastic deformation re-fit boxes to the moved masks when masks
exist (an instance whose mask had pixels and has none left is dropped); flips, expansion and padding
are exact; resizing scales boxes exactly, and their tight mask boxes then agree within 1 px.

Bookkeeping. Geometric transforms add (if absent) and maintain:

* ``orig_hw`` int32 ``[2]``: the ``(h, w)`` of the image as it entered the first transform.
* ``scale`` float32 scalar: product of the resize factors (the batch contract's ``scale``); after
  aspect-keeping resizes, ``boxes / scale`` are original coordinates. :func:`resize` to a fixed
  size stretches the two axes differently; it records the geometric mean and the exact factors are
  in ``affine`` (or ``image_hw / orig_hw``).
* ``affine`` float32 ``[4]`` = ``(sy, sx, ty, tx)``: the exact axis-aligned map from original to
  current coordinates, ``y = sy * y_orig + ty``, ``x = sx * x_orig + tx`` (flips make ``sx < 0``,
  crops and expansion change ``t``). :func:`boxes_to_original` inverts it. The elastic deformation
  is not affine and leaves it unchanged (it is a training-only augmentation). ``affine`` is not part
  of the batch contract: drop it when batching if the batcher takes only contract keys.
* ``image_hw`` int32 ``[2]``: the real (unpadded) size; it equals the image shape until
  :func:`pad_to_size` (or :func:`scale_jitter`, which pads) makes the image larger. Geometric
  transforms refuse padded examples (``ValueError``): pad last.

Randomness. Each random transform takes ``rng: np.random.Generator`` and draws only from it, so the
result is a deterministic function of the example and the generator state.

Typical pipelines (``compose`` passes ``rng`` to the functions that take it)::

  # Faster R-CNN training / any-size evaluation with size buckets
  compose(random_horizontal_flip, partial(resize_to_bucket, buckets=B, min_size=600, max_size=1000),
          normalize_image, partial(pad_instances, max_boxes=100))
  # SSD300 (Liu et al. 2016, Sec. 2.2 "Data augmentation")
  compose(photometric_distort, random_expand, ssd_random_crop, partial(resize, target_hw=(300, 300)),
          random_horizontal_flip, normalize_image, partial(pad_instances, max_boxes=100))
  # Mask R-CNN with large-scale jitter
  compose(random_horizontal_flip, partial(scale_jitter, target_hw=(1024, 1024), scale_range=(0.1, 2.0)),
          normalize_image, partial(pad_instances, max_boxes=100, mask_stride=4))
  # U-Net (Ronneberger et al. 2015, Sec. 3.1)
  compose(elastic_deform, random_horizontal_flip, normalize_image, partial(pad_to_size, target_hw=(512, 512)))

:func:`normalize_image` zeroes the padded area (outside ``image_hw``), so the batch contract's image
pad value 0 holds whether it runs before or after padding.
"""

from __future__ import annotations

import inspect
import math
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from jaxvision import _host_boxes

__all__ = [
    "IMAGENET_MEAN", "IMAGENET_STD", "IGNORE_LABEL", "INSTANCE_KEYS", "boxes_to_original",
    "choose_bucket", "compose", "downsample_masks", "elastic_deform", "masks_to_boxes",
    "normalize_image", "pad_instances", "pad_to_size", "photometric_distort", "random_expand",
    "random_horizontal_flip", "random_vertical_flip", "resize", "resize_keep_aspect", "resize_to_bucket", "scale_jitter",
    "ssd_random_crop",
]

Example = dict[str, Any]

#: torchvision's ImageNet normalization constants, for pixel values scaled to ``[0, 1]``.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: Label-map value that losses and metrics ignore; also the segmentation pad value.
IGNORE_LABEL = 255
#: Per-instance keys: indexed together whenever instances are dropped or padded.
INSTANCE_KEYS = ("boxes", "labels", "masks", "is_crowd", "difficult")
#: Skip resampling/padding that would not change anything (scale 1, no padding). The results are
#: identical either way (tests compare both); only for those tests to switch off.
_IDENTITY_FAST_PATH = True


# ------------------------------------------------------------------------------------------------
# Validation and bookkeeping
# ------------------------------------------------------------------------------------------------


def _describe(x: Any) -> str:
  if hasattr(x, "shape"):
    return f"shape {tuple(x.shape)} dtype {x.dtype}"
  return f"{type(x).__name__}"


def _prepare(example: Mapping[str, Any], fn: str) -> Example:
  """Validates ``example`` and returns a shallow copy with canonical dtypes.

  Raises:
    TypeError: ``example`` is not a mapping, or a value has the wrong dtype kind.
    ValueError: missing ``image`` or inconsistent shapes (named in the message).
  """
  if not isinstance(example, Mapping):
    raise TypeError(f"{fn}: example must be a dict, got {type(example).__name__}.")
  ex = dict(example)
  if "image" not in ex:
    raise ValueError(f"{fn}: example has no 'image' (keys: {sorted(ex)}).")
  image = np.asarray(ex["image"])
  if image.ndim != 3:
    raise ValueError(f"{fn}: image must be [H, W, C], got {_describe(image)}.")
  if image.dtype != np.uint8 and not np.issubdtype(image.dtype, np.floating):
    raise TypeError(f"{fn}: image must be uint8 or float, got {_describe(image)}.")
  if image.dtype != np.uint8 and image.dtype != np.float32:
    image = image.astype(np.float32)
  ex["image"] = image
  h, w = image.shape[:2]
  has_instances = any(k in ex for k in INSTANCE_KEYS)
  if has_instances:
    if "boxes" not in ex or "labels" not in ex:
      raise ValueError(f"{fn}: per-instance keys need both 'boxes' and 'labels' (keys: {sorted(ex)}).")
    boxes = np.asarray(ex["boxes"], np.float32)
    if boxes.size == 0:
      boxes = boxes.reshape(0, 4)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
      raise ValueError(f"{fn}: boxes must be [N, 4] xyxy, got {_describe(boxes)}.")
    n = boxes.shape[0]
    ex["boxes"] = boxes
    labels = np.asarray(ex["labels"])
    if labels.size == 0:
      labels = labels.reshape(0).astype(np.int32)
    if labels.shape != (n,):
      raise ValueError(f"{fn}: labels must be [{n}] to match boxes, got {_describe(labels)}.")
    if not np.issubdtype(labels.dtype, np.integer):
      raise TypeError(f"{fn}: labels must be integers, got {_describe(labels)}.")
    ex["labels"] = labels.astype(np.int32, copy=False)
    for key in ("is_crowd", "difficult"):
      if key in ex:
        flag = np.asarray(ex[key])
        flag = flag.reshape(-1) if flag.size == 0 else flag
        if flag.shape != (n,):
          raise ValueError(f"{fn}: {key} must be [{n}] to match boxes, got {_describe(flag)}.")
        ex[key] = flag.astype(bool, copy=False)
    if "masks" in ex:
      masks = np.asarray(ex["masks"])
      if masks.size == 0:
        masks = masks.reshape(n, h, w) if n == 0 else masks
      if masks.shape != (n, h, w):
        raise ValueError(f"{fn}: masks must be [N, H, W] = [{n}, {h}, {w}], got {_describe(masks)}.")
      ex["masks"] = masks.astype(bool, copy=False)
  if "segmentation" in ex:
    seg = np.asarray(ex["segmentation"])
    if seg.shape != (h, w):
      raise ValueError(f"{fn}: segmentation must be [H, W] = [{h}, {w}], got {_describe(seg)}.")
    if not np.issubdtype(seg.dtype, np.integer):
      raise TypeError(f"{fn}: segmentation must be integers, got {_describe(seg)}.")
    ex["segmentation"] = seg.astype(np.int32, copy=False)
  return ex


def _add_bookkeeping(ex: Example) -> None:
  h, w = ex["image"].shape[:2]
  ex.setdefault("orig_hw", np.array([h, w], np.int32))
  ex.setdefault("scale", np.float32(1.0))
  ex.setdefault("affine", np.array([1.0, 1.0, 0.0, 0.0], np.float32))
  ex.setdefault("image_hw", np.array([h, w], np.int32))
  ex["orig_hw"] = np.asarray(ex["orig_hw"], np.int32)
  ex["scale"] = np.float32(ex["scale"])
  ex["affine"] = np.asarray(ex["affine"], np.float32).copy()
  ex["image_hw"] = np.asarray(ex["image_hw"], np.int32)


def _geometric(example: Mapping[str, Any], fn: str) -> Example:
  """``_prepare`` plus bookkeeping; refuses already padded examples."""
  ex = _prepare(example, fn)
  _add_bookkeeping(ex)
  shape = ex["image"].shape[:2]
  if tuple(ex["image_hw"]) != shape:
    raise ValueError(
        f"{fn}: the example is already padded (image_hw {tuple(ex['image_hw'])} inside an image of "
        f"{shape}); apply geometric transforms before pad_to_size/scale_jitter.")
  return ex


def _check_rng(rng: Any, fn: str) -> np.random.Generator:
  if not isinstance(rng, np.random.Generator):
    raise TypeError(f"{fn}: rng must be a numpy.random.Generator (np.random.default_rng(seed)), got "
                    f"{type(rng).__name__}.")
  return rng


def _pair(x: Any, name: str, fn: str, *, kind=int) -> tuple:
  try:
    a, b = x
  except (TypeError, ValueError):
    raise ValueError(f"{fn}: {name} must be a pair, got {x!r}.") from None
  if kind is int:
    if int(a) != a or int(b) != b or a <= 0 or b <= 0:
      raise ValueError(f"{fn}: {name} must be two positive integers (h, w), got {x!r}.")
    return int(a), int(b)
  return float(a), float(b)


def _filter(ex: Example, keep: np.ndarray) -> None:
  for key in INSTANCE_KEYS:
    if key in ex:
      ex[key] = ex[key][keep]


def _drop_degenerate(ex: Example, min_size: float = 0.0) -> None:
  if "boxes" not in ex:
    return
  b = ex["boxes"]
  _filter(ex, ((b[:, 2] - b[:, 0]) > min_size) & ((b[:, 3] - b[:, 1]) > min_size))


def _clip(boxes: np.ndarray, h: int, w: int) -> np.ndarray:
  out = boxes.copy()
  out[:, 0::2] = np.clip(out[:, 0::2], 0.0, w)
  out[:, 1::2] = np.clip(out[:, 1::2], 0.0, h)
  return out


_area = _host_boxes.box_area
_box_iou = _host_boxes.box_iou


def masks_to_boxes(masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Tight xyxy boxes of binary masks (like ``torchvision.ops.masks_to_boxes``, but no ``+1`` offset).

  Args:
    masks: ``[N, H, W]`` bool (any dtype; nonzero is foreground).

  Returns:
    ``(boxes [N, 4] float32, nonempty [N] bool)``: a mask whose pixels span rows ``y1..y2 - 1`` and
    columns ``x1..x2 - 1`` gets ``[x1, y1, x2, y2]`` (the pixels' outer edges in continuous
    coordinates); empty masks get zeros and ``nonempty = False``.
  """
  masks = np.asarray(masks).astype(bool, copy=False)
  if masks.ndim != 3:
    raise ValueError(f"masks_to_boxes: masks must be [N, H, W], got {_describe(masks)}.")
  _, h, w = masks.shape
  rows = masks.any(axis=2)
  cols = masks.any(axis=1)
  nonempty = rows.any(axis=1)
  y1 = rows.argmax(axis=1)
  y2 = h - rows[:, ::-1].argmax(axis=1)
  x1 = cols.argmax(axis=1)
  x2 = w - cols[:, ::-1].argmax(axis=1)
  boxes = np.stack([x1, y1, x2, y2], axis=-1).astype(np.float32)
  boxes[~nonempty] = 0.0
  return boxes, nonempty


def _mask_pixels(ex: Example) -> np.ndarray | None:
  if "masks" not in ex:
    return None
  return ex["masks"].any(axis=(1, 2))


def _refit_to_masks(ex: Example, had_pixels: np.ndarray | None, *, replace: bool) -> None:
  """Re-fits boxes of instances whose masks had pixels before a crop/deformation.

  ``replace=False`` intersects the (moved, clipped) box with the mask's tight box; ``replace=True``
  uses the tight box. Instances whose mask lost all its pixels are dropped; instances whose mask was
  already empty (e.g. an object smaller than a pixel after downscaling) keep their moved box.
  """
  if had_pixels is None or not len(had_pixels):
    return
  mask_boxes, nonempty = masks_to_boxes(ex["masks"])
  boxes = ex["boxes"]
  if replace:
    fitted = mask_boxes
  else:
    fitted = np.concatenate([np.maximum(boxes[:, :2], mask_boxes[:, :2]),
                             np.minimum(boxes[:, 2:], mask_boxes[:, 2:])], axis=1)
  ex["boxes"] = np.where(had_pixels[:, None], fitted, boxes).astype(np.float32)
  _filter(ex, ~had_pixels | nonempty)


def boxes_to_original(boxes: np.ndarray, example: Mapping[str, Any], *, clip: bool = True) -> np.ndarray:
  """Maps xyxy boxes in the transformed image back to the original image (inverse of ``affine``).

  Args:
    boxes: ``[..., 4]`` xyxy in the coordinates of the transformed (network input) image, e.g.
      predictions.
    example: a transformed example carrying ``affine`` (and ``orig_hw`` when ``clip``); examples without
      ``affine`` (no geometric transform) map to themselves.
    clip: clip the result to the original image ``[0, w] x [0, h]``.

  Returns:
    ``[..., 4]`` float32 xyxy in original pixel coordinates. Exact for resizes, flips, crops, expansion
    and padding; the elastic deformation is not undone.
  """
  boxes = np.asarray(boxes, np.float32)
  if boxes.shape[-1:] != (4,):
    raise ValueError(f"boxes_to_original: boxes must be [..., 4], got {_describe(boxes)}.")
  sy, sx, ty, tx = np.asarray(example.get("affine", (1.0, 1.0, 0.0, 0.0)), np.float64)
  x1 = (boxes[..., 0] - tx) / sx
  x2 = (boxes[..., 2] - tx) / sx
  y1 = (boxes[..., 1] - ty) / sy
  y2 = (boxes[..., 3] - ty) / sy
  out = np.stack([np.minimum(x1, x2), np.minimum(y1, y2), np.maximum(x1, x2), np.maximum(y1, y2)], -1)
  if clip and "orig_hw" in example:
    h, w = np.asarray(example["orig_hw"])
    out[..., 0::2] = np.clip(out[..., 0::2], 0, w)
    out[..., 1::2] = np.clip(out[..., 1::2], 0, h)
  return out.astype(np.float32)


# ------------------------------------------------------------------------------------------------
# Resampling primitives
# ------------------------------------------------------------------------------------------------


def _linear_taps(n_in: int, n_out: int, factor: float, antialias: bool) -> tuple[np.ndarray, np.ndarray]:
  """Source indices and weights ``[n_out, K]`` for scaling an axis by ``factor`` (half-pixel centres).

  Output pixel ``i`` is centred on source position ``(i + 0.5) / factor - 0.5``. The triangle kernel
  has radius 1 (bilinear) or, when downscaling with ``antialias``, ``1 / factor``. Indices beyond the
  border are clamped (edge pixels repeat).
  """
  centre = (np.arange(n_out, dtype=np.float64) + 0.5) / factor - 0.5
  support = max(1.0, 1.0 / factor) if antialias else 1.0
  taps = int(math.ceil(2 * support - 1e-9))  # integers strictly inside centre +- support
  idx = np.floor(centre - support).astype(np.int64)[:, None] + 1 + np.arange(taps)
  wts = np.maximum(0.0, 1.0 - np.abs(idx - centre[:, None]) / support)
  wts /= wts.sum(axis=1, keepdims=True)
  return np.clip(idx, 0, n_in - 1), wts.astype(np.float32)


def _nearest_index(n_in: int, n_out: int, factor: float) -> np.ndarray:
  """Source index of each output pixel's centre: ``floor((i + 0.5) / factor)``, clamped."""
  src = np.floor((np.arange(n_out, dtype=np.float64) + 0.5) / factor).astype(np.int64)
  return np.clip(src, 0, n_in - 1)


def _resample_axis(x: np.ndarray, axis: int, idx: np.ndarray, wts: np.ndarray) -> np.ndarray:
  shape = [1] * x.ndim
  shape[axis] = idx.shape[0]
  out = np.take(x, idx[:, 0], axis=axis)
  out *= wts[:, 0].reshape(shape)
  for t in range(1, idx.shape[1]):
    term = np.take(x, idx[:, t], axis=axis)
    term *= wts[:, t].reshape(shape)
    out += term
  return out


def _cast_like(x: np.ndarray, dtype: np.dtype) -> np.ndarray:
  if dtype == np.uint8:
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)
  return x.astype(dtype)


def _apply_resize(ex: Example, out_h: int, out_w: int, fy: float, fx: float, scale_factor: float,
                  antialias: bool, window: tuple[int, int, int, int] | None = None) -> Example:
  """Scales the content by ``(fy, fx)`` into an ``out_h x out_w`` image; boxes exactly, then clipped.

  With ``window = (top, left, ch, cw)`` only that window of the scaled image is computed (a resize
  followed by a crop, without resampling pixels that the crop discards); boxes are then re-fitted to
  their masks as :func:`_crop` does.
  """
  h, w = ex["image"].shape[:2]
  if _IDENTITY_FAST_PATH and window is None and (out_h, out_w) == (h, w) and fy == fx == 1.0:
    # Scale 1 (e.g. 128 x 128 shapes into a 128 x 128 input): the resampling below would give
    # back every array exactly (bilinear weights [1, 0], nearest index i), so skip it.
    if "boxes" in ex:
      ex["boxes"] = _clip(ex["boxes"], h, w)
      _drop_degenerate(ex)
    ex["scale"] = np.float32(ex["scale"] * scale_factor)
    ex["image_hw"] = np.array([h, w], np.int32)
    return ex
  top, left, ch, cw = window if window is not None else (0, 0, out_h, out_w)
  iy = _nearest_index(h, top + ch, fy)[top:]
  ix = _nearest_index(w, left + cw, fx)[left:]
  had_pixels = None
  if window is not None and "masks" in ex:
    # Whether each mask has pixels in the full scaled image (before the crop): the nearest-neighbour
    # image of a mask is non-empty iff the mask has a pixel on a (selected row, selected column).
    full_y = np.unique(_nearest_index(h, out_h, fy))
    full_x = np.unique(_nearest_index(w, out_w, fx))
    had_pixels = ex["masks"][:, full_y][:, :, full_x].any(axis=(1, 2))
  ry, wy = _linear_taps(h, top + ch, fy, antialias)
  rx, wx = _linear_taps(w, left + cw, fx, antialias)
  image = ex["image"]
  x = _resample_axis(image.astype(np.float32, copy=False), 0, ry[top:], wy[top:])
  x = _resample_axis(x, 1, rx[left:], wx[left:])
  ex["image"] = _cast_like(x, image.dtype)
  if "masks" in ex:
    ex["masks"] = np.take(np.take(ex["masks"], iy, axis=1), ix, axis=2)
  if "segmentation" in ex:
    ex["segmentation"] = np.take(np.take(ex["segmentation"], iy, axis=0), ix, axis=1)
  if "boxes" in ex:
    boxes = ex["boxes"] * np.array([fx, fy, fx, fy], np.float32)
    boxes = boxes - np.array([left, top, left, top], np.float32)
    ex["boxes"] = _clip(boxes, ch, cw)
    _refit_to_masks(ex, had_pixels, replace=False)
    _drop_degenerate(ex)
  ex["affine"] = ex["affine"] * np.array([fy, fx, fy, fx], np.float32) - np.array(
      [0, 0, top, left], np.float32)
  ex["scale"] = np.float32(ex["scale"] * scale_factor)
  ex["image_hw"] = np.array([ch, cw], np.int32)
  return ex


def _round(x: float) -> int:
  return int(math.floor(x + 0.5))


# ------------------------------------------------------------------------------------------------
# Resizing, padding, size buckets
# ------------------------------------------------------------------------------------------------


def _keep_aspect_scale(h: int, w: int, min_size: float | None, max_size: float | None,
                       target_hw: tuple[int, int] | None) -> float:
  if min_size is None and max_size is None and target_hw is None:
    return 1.0
  s = math.inf
  if min_size is not None:
    s = min_size / min(h, w)
    if max_size is not None and max(h, w) * s > max_size:
      s = max_size / max(h, w)
  elif max_size is not None:
    s = max_size / max(h, w)
  if target_hw is not None:
    s = min(s, target_hw[0] / h, target_hw[1] / w)
  return s


def resize_keep_aspect(example: Mapping[str, Any], *, max_size: float | None = None,
                       min_size: float | None = None, target_hw: Sequence[int] | None = None,
                       antialias: bool = True) -> Example:
  """Resizes keeping the aspect ratio by one factor ``s`` (recorded: ``scale *= s``).

  Rules (at least one argument is required):

  * ``min_size`` only: the shorter side becomes ``min_size``.
  * ``max_size`` only: the longer side becomes ``max_size``.
  * both (Faster R-CNN's 600/1000): shorter side ``min_size`` unless the longer side would exceed
    ``max_size``, then longer side ``max_size``.
  * ``target_hw``: the result fits inside ``(H, W)``; alone, the largest such size (touching one side).

  The output size is ``round(h * s), round(w * s)``; content, boxes and masks are scaled by exactly
  ``s`` (the last row/column may be up to half a pixel short or extrapolated), so ``boxes / scale``
  maps boxes back exactly (up to clipping at the border).

  Args:
    example: see the module docstring.
    max_size, min_size: side lengths in pixels.
    target_hw: ``(H, W)`` box the result must fit in.
    antialias: widen the bilinear filter when downscaling (recommended).

  Returns:
    The resized example.
  """
  fn = "resize_keep_aspect"
  if max_size is None and min_size is None and target_hw is None:
    raise ValueError(f"{fn}: give max_size, min_size and/or target_hw.")
  for name, v in (("max_size", max_size), ("min_size", min_size)):
    if v is not None and not v > 0:
      raise ValueError(f"{fn}: {name} must be > 0, got {v!r}.")
  target = _pair(target_hw, "target_hw", fn) if target_hw is not None else None
  ex = _geometric(example, fn)
  h, w = ex["image"].shape[:2]
  s = _keep_aspect_scale(h, w, min_size, max_size, target)
  out_h, out_w = max(1, _round(h * s)), max(1, _round(w * s))
  if target is not None:
    out_h, out_w = min(out_h, target[0]), min(out_w, target[1])
  return _apply_resize(ex, out_h, out_w, s, s, s, antialias)


def resize(example: Mapping[str, Any], *, target_hw: Sequence[int], antialias: bool = True) -> Example:
  """Resizes to exactly ``target_hw = (H, W)``, stretching the axes independently (SSD's 300x300).

  Factors are ``H / h`` and ``W / w``; ``affine`` records them exactly and ``scale`` is multiplied by
  their geometric mean (exact only when they are equal; map predictions back with
  :func:`boxes_to_original` or ``image_hw / orig_hw`` per axis).
  """
  fn = "resize"
  th, tw = _pair(target_hw, "target_hw", fn)
  ex = _geometric(example, fn)
  h, w = ex["image"].shape[:2]
  fy, fx = th / h, tw / w
  return _apply_resize(ex, th, tw, fy, fx, math.sqrt(fy * fx), antialias)


def _pad_canvas(ex: Example, top: int, left: int, out_h: int, out_w: int, fill: Any,
                seg_fill: int) -> Example:
  """Places the content at ``(top, left)`` of an ``out_h x out_w`` canvas (no bookkeeping besides ``affine``)."""
  image = ex["image"]
  h, w, c = image.shape
  if _IDENTITY_FAST_PATH and (top, left, out_h, out_w) == (0, 0, h, w):
    return ex  # nothing to pad: the canvas would equal the content
  fill = np.broadcast_to(np.asarray(fill, np.float64), (c,))
  canvas = np.empty((out_h, out_w, c), image.dtype)
  canvas[...] = _cast_like(fill, image.dtype)
  canvas[top:top + h, left:left + w] = image
  ex["image"] = canvas
  if "masks" in ex:
    masks = np.zeros((ex["masks"].shape[0], out_h, out_w), bool)
    masks[:, top:top + h, left:left + w] = ex["masks"]
    ex["masks"] = masks
  if "segmentation" in ex:
    seg = np.full((out_h, out_w), seg_fill, np.int32)
    seg[top:top + h, left:left + w] = ex["segmentation"]
    ex["segmentation"] = seg
  if "boxes" in ex:
    ex["boxes"] = ex["boxes"] + np.array([left, top, left, top], np.float32)
  ex["affine"] = ex["affine"] + np.array([0, 0, top, left], np.float32)
  return ex


def pad_to_size(example: Mapping[str, Any], target_hw: Sequence[int]) -> Example:
  """Pads bottom/right to ``target_hw``: image 0, masks False, segmentation 255 (ignore).

  Boxes do not move. ``image_hw`` keeps the real ``(h, w)`` (set to the current size if absent), so
  the padded area can be masked; padding again keeps the first real size.

  Raises:
    ValueError: the image is larger than ``target_hw`` (resize first, e.g. :func:`resize_keep_aspect`
      with the same ``target_hw``).
  """
  fn = "pad_to_size"
  th, tw = _pair(target_hw, "target_hw", fn)
  ex = _prepare(example, fn)
  _add_bookkeeping(ex)
  h, w = ex["image"].shape[:2]
  if h > th or w > tw:
    raise ValueError(f"{fn}: image of size {(h, w)} does not fit in target_hw {(th, tw)}; resize first.")
  return _pad_canvas(ex, 0, 0, th, tw, 0, IGNORE_LABEL)


def choose_bucket(h: int, w: int, buckets: Sequence[Sequence[int]], *, min_size: float | None = None,
                  max_size: float | None = None) -> tuple[int, int]:
  """Picks the padded input size for an ``h x w`` image from a few fixed ``(H, W)`` buckets.

  The image is first sized as :func:`resize_keep_aspect` would with ``min_size``/``max_size`` (kept as
  is when both are None). Returns the smallest-area bucket that contains that size (ties: the first
  listed). If none contains it, returns the bucket that needs the least extra downscaling (the largest
  ``min(H / h', W / w')``; ties: smaller area, then first listed); :func:`resize_to_bucket` then
  shrinks the image into it. A handful of buckets bounds the number of compiled shapes.
  """
  fn = "choose_bucket"
  if not buckets:
    raise ValueError(f"{fn}: buckets must be a non-empty sequence of (H, W), got {buckets!r}.")
  bs = [_pair(b, "each bucket", fn) for b in buckets]
  if h <= 0 or w <= 0:
    raise ValueError(f"{fn}: h and w must be positive, got {(h, w)}.")
  s = _keep_aspect_scale(h, w, min_size, max_size, None)
  rh, rw = max(1, _round(h * s)), max(1, _round(w * s))
  fitting = [(bh * bw, i) for i, (bh, bw) in enumerate(bs) if bh >= rh and bw >= rw]
  if fitting:
    return bs[min(fitting)[1]]
  ranked = [(-min(bh / rh, bw / rw), bh * bw, i) for i, (bh, bw) in enumerate(bs)]
  return bs[min(ranked)[2]]


def resize_to_bucket(example: Mapping[str, Any], *, buckets: Sequence[Sequence[int]],
                     min_size: float | None = None, max_size: float | None = None,
                     antialias: bool = True) -> Example:
  """:func:`choose_bucket`, then resize keeping the aspect ratio to fit it, then :func:`pad_to_size`.

  The resize factor is the ``min_size``/``max_size`` rule's (1 when both are None), reduced only if
  needed to fit the bucket.
  """
  fn = "resize_to_bucket"
  ex = _geometric(example, fn)
  h, w = ex["image"].shape[:2]
  bh, bw = choose_bucket(h, w, buckets, min_size=min_size, max_size=max_size)
  s = min(_keep_aspect_scale(h, w, min_size, max_size, None), bh / h, bw / w)
  out_h, out_w = min(max(1, _round(h * s)), bh), min(max(1, _round(w * s)), bw)
  if (out_h, out_w) != (h, w) or s != 1.0:
    ex = _apply_resize(ex, out_h, out_w, s, s, s, antialias)
  return pad_to_size(ex, (bh, bw))


# ------------------------------------------------------------------------------------------------
# Flips, crops, expansion, scale jitter
# ------------------------------------------------------------------------------------------------


def _flip(ex: Example, axis: str = "horizontal") -> Example:
  """Mirrors the image, masks, segmentation and boxes left-right (``axis="horizontal"``: ``x -> W -
  x``) or top-bottom (``"vertical"``: ``y -> H - y``); ``affine`` records it."""
  h, w = ex["image"].shape[:2]
  vertical = axis == "vertical"
  ex["image"] = np.ascontiguousarray(ex["image"][::-1] if vertical else ex["image"][:, ::-1])
  if "masks" in ex:
    m = ex["masks"]
    ex["masks"] = np.ascontiguousarray(m[:, ::-1] if vertical else m[:, :, ::-1])
  if "segmentation" in ex:
    g = ex["segmentation"]
    ex["segmentation"] = np.ascontiguousarray(g[::-1] if vertical else g[:, ::-1])
  sy, sx, ty, tx = ex["affine"]
  if "boxes" in ex:
    b = ex["boxes"]
    if vertical:
      b = np.stack([b[:, 0], h - b[:, 3], b[:, 2], h - b[:, 1]], axis=-1)
    else:
      b = np.stack([w - b[:, 2], b[:, 1], w - b[:, 0], b[:, 3]], axis=-1)
    ex["boxes"] = b.astype(np.float32)
  if vertical:
    ex["affine"] = np.array([-sy, sx, h - ty, tx], np.float32)
  else:
    ex["affine"] = np.array([sy, -sx, ty, w - tx], np.float32)
  return ex


def random_horizontal_flip(example: Mapping[str, Any], rng: np.random.Generator, p: float = 0.5) -> Example:
  """Mirrors left-right with probability ``p`` (``x -> W - x``; x1 and x2 swap). Draws one uniform."""
  fn = "random_horizontal_flip"
  _check_rng(rng, fn)
  ex = _geometric(example, fn)
  if rng.random() < p:
    ex = _flip(ex)
  return ex


def random_vertical_flip(example: Mapping[str, Any], rng: np.random.Generator, p: float = 0.5) -> Example:
  """Mirrors top-bottom with probability ``p`` (``y -> H - y``; y1 and y2 swap). Draws one uniform.

  For data whose classes do not depend on which way is up (the ``shapes`` dataset, aerial or
  microscopy images), not for street scenes."""
  fn = "random_vertical_flip"
  _check_rng(rng, fn)
  ex = _geometric(example, fn)
  if rng.random() < p:
    ex = _flip(ex, "vertical")
  return ex


def _crop(ex: Example, top: int, left: int, ch: int, cw: int, keep: np.ndarray | None = None) -> Example:
  """Crops ``[top, top + ch) x [left, left + cw)``; boxes are shifted, clipped and re-fitted to masks."""
  if keep is not None:
    _filter(ex, keep)
  had_pixels = _mask_pixels(ex)
  ex["image"] = np.ascontiguousarray(ex["image"][top:top + ch, left:left + cw])
  if "masks" in ex:
    ex["masks"] = np.ascontiguousarray(ex["masks"][:, top:top + ch, left:left + cw])
  if "segmentation" in ex:
    ex["segmentation"] = np.ascontiguousarray(ex["segmentation"][top:top + ch, left:left + cw])
  if "boxes" in ex:
    boxes = ex["boxes"] - np.array([left, top, left, top], np.float32)
    ex["boxes"] = _clip(boxes, ch, cw)
    _refit_to_masks(ex, had_pixels, replace=False)
    _drop_degenerate(ex)
  ex["affine"] = ex["affine"] - np.array([0, 0, top, left], np.float32)
  ex["image_hw"] = np.array([ch, cw], np.int32)
  return ex


def scale_jitter(example: Mapping[str, Any], rng: np.random.Generator, *, target_hw: Sequence[int],
                 scale_range: Sequence[float] = (0.8, 1.25), antialias: bool = True) -> Example:
  """Random-scale resize, then a random crop and/or bottom-right pad to exactly ``target_hw``.

  The image is first fitted into ``target_hw`` keeping its aspect ratio, then scaled by
  ``r ~ U(scale_range)`` (large-scale jitter, Ghiasi et al. 2021, uses ``(0.1, 2.0)``); where it is
  larger than the target a window at a uniformly random offset is kept, where smaller it is padded
  (image 0, segmentation 255). ``scale`` records the full resize factor, ``image_hw`` the real size.
  Because it pads, use it after the other geometric transforms.
  """
  fn = "scale_jitter"
  _check_rng(rng, fn)
  th, tw = _pair(target_hw, "target_hw", fn)
  lo, hi = _pair(scale_range, "scale_range", fn, kind=float)
  if not 0 < lo <= hi:
    raise ValueError(f"{fn}: scale_range must satisfy 0 < low <= high, got {scale_range!r}.")
  ex = _geometric(example, fn)
  h, w = ex["image"].shape[:2]
  s = min(th / h, tw / w) * rng.uniform(lo, hi)
  out_h, out_w = max(1, _round(h * s)), max(1, _round(w * s))
  ch, cw = min(out_h, th), min(out_w, tw)
  top = int(rng.integers(0, out_h - ch + 1))
  left = int(rng.integers(0, out_w - cw + 1))
  ex = _apply_resize(ex, out_h, out_w, s, s, s, antialias, window=(top, left, ch, cw))
  return _pad_canvas(ex, 0, 0, th, tw, 0, IGNORE_LABEL)


def ssd_random_crop(example: Mapping[str, Any], rng: np.random.Generator, *,
                    min_ious: Sequence[float | None] = (None, 0.1, 0.3, 0.5, 0.7, 0.9),
                    aspect_range: Sequence[float] = (0.5, 2.0),
                    scale_range: Sequence[float] = (0.3, 1.0), max_trials: int = 50,
                    iou_constraint: str = "any") -> Example:
  """SSD's patch sampling (Liu et al. 2016, Sec. 2.2), the "zoom in" augmentation.

  One option is drawn uniformly from ``min_ious``: ``None`` keeps the whole image; a threshold ``t``
  runs up to ``max_trials`` trials, each sampling a patch with sides ``U(scale_range)`` times the
  image's (rejected unless its width/height lies in ``aspect_range``) at a uniform position. A patch is
  accepted when at least one box has its centre strictly inside it and the IoU of the patch with those
  boxes satisfies ``t``: ``iou_constraint="any"`` (Caffe SSD and torchvision: some such box has
  ``IoU >= t``) or ``"all"`` (every such box). Boxes whose centre is outside are dropped; the others
  are clipped to the patch (and re-fitted to their cropped masks). ``t = 0`` gives an unconstrained
  random patch. If no trial succeeds — always for an example without boxes — the example is returned
  unchanged (as Caffe SSD does), so this never loops forever.
  """
  fn = "ssd_random_crop"
  _check_rng(rng, fn)
  if not len(min_ious):
    raise ValueError(f"{fn}: min_ious must be non-empty, got {min_ious!r}.")
  if iou_constraint not in ("any", "all"):
    raise ValueError(f"{fn}: iou_constraint must be 'any' or 'all', got {iou_constraint!r}.")
  amin, amax = _pair(aspect_range, "aspect_range", fn, kind=float)
  smin, smax = _pair(scale_range, "scale_range", fn, kind=float)
  if not 0 < smin <= smax <= 1:
    raise ValueError(f"{fn}: scale_range must satisfy 0 < low <= high <= 1, got {scale_range!r}.")
  ex = _geometric(example, fn)
  threshold = min_ious[int(rng.integers(len(min_ious)))]
  boxes = ex.get("boxes", np.zeros((0, 4), np.float32))
  if threshold is None or not len(boxes):
    return ex
  h, w = ex["image"].shape[:2]
  cx = (boxes[:, 0] + boxes[:, 2]) / 2
  cy = (boxes[:, 1] + boxes[:, 3]) / 2
  for _ in range(max_trials):
    cw = max(1, _round(rng.uniform(smin, smax) * w))
    ch = max(1, _round(rng.uniform(smin, smax) * h))
    if not amin <= cw / ch <= amax:
      continue
    left = int(rng.integers(0, w - cw + 1))
    top = int(rng.integers(0, h - ch + 1))
    inside = (cx > left) & (cx < left + cw) & (cy > top) & (cy < top + ch)
    if not inside.any():
      continue
    patch = np.array([[left, top, left + cw, top + ch]], np.float32)
    ious = _box_iou(boxes[inside], patch)[:, 0]
    ok = ious.max() >= threshold if iou_constraint == "any" else ious.min() >= threshold
    if ok:
      return _crop(ex, top, left, ch, cw, keep=inside)
  return ex


def random_expand(example: Mapping[str, Any], rng: np.random.Generator, *, max_ratio: float = 4.0,
                  fill: Any = None, p: float = 0.5, seg_fill: int = IGNORE_LABEL) -> Example:
  """SSD's "zoom out": with probability ``p``, place the image on a larger canvas.

  The canvas is ``floor(ratio * h) x floor(ratio * w)`` with ``ratio ~ U(1, max_ratio)``; the image
  goes to a uniformly random position. Boxes and masks move with it (exact).

  Args:
    example: see the module docstring.
    rng: random generator.
    max_ratio: largest canvas-to-image side ratio (SSD: 4, i.e. up to 16x the area).
    fill: per-channel canvas colour in the image's units; default the ImageNet mean in [0, 255]
      (``(124, 116, 104)``), which normalizes to 0. Pass 0 for already normalized images.
    p: probability of expanding.
    seg_fill: segmentation value of the canvas (default 255, ignore: it is not real content).
  """
  fn = "random_expand"
  _check_rng(rng, fn)
  if not max_ratio >= 1:
    raise ValueError(f"{fn}: max_ratio must be >= 1, got {max_ratio!r}.")
  ex = _geometric(example, fn)
  if rng.random() >= p:
    return ex
  h, w = ex["image"].shape[:2]
  ratio = rng.uniform(1.0, max_ratio)
  out_h, out_w = max(h, int(h * ratio)), max(w, int(w * ratio))
  top = int(rng.integers(0, out_h - h + 1))
  left = int(rng.integers(0, out_w - w + 1))
  if fill is None:
    fill = np.asarray(IMAGENET_MEAN) * 255.0
  ex = _pad_canvas(ex, top, left, out_h, out_w, fill, seg_fill)
  ex["image_hw"] = np.array([out_h, out_w], np.int32)
  return ex


# ------------------------------------------------------------------------------------------------
# Elastic deformation (U-Net)
# ------------------------------------------------------------------------------------------------


def _cubic_kernel(t: np.ndarray, a: float = -0.5) -> np.ndarray:
  """Keys' cubic convolution kernel (``a = -0.5``: Catmull-Rom, the usual "bicubic")."""
  t = np.abs(t)
  return np.where(t <= 1, (a + 2) * t**3 - (a + 3) * t**2 + 1,
                  np.where(t < 2, a * t**3 - 5 * a * t**2 + 8 * a * t - 4 * a, 0.0))


def _grid_weights(q: np.ndarray, n: int, g: int) -> np.ndarray:
  """Bicubic weights ``[P, g]`` of ``g`` grid nodes for pixel-index positions ``q`` on an axis of ``n``.

  Node ``k`` sits at pixel index ``k * (n - 1) / (g - 1)`` (first and last pixel centres); nodes
  beyond the ends repeat the edge nodes.
  """
  q = np.asarray(q, np.float64)
  if g == 1:
    return np.ones(q.shape + (1,))
  u = q * ((g - 1) / max(n - 1, 1))
  base = np.floor(u).astype(np.int64)
  out = np.zeros(q.shape + (g,))
  for off in (-1, 0, 1, 2):
    node = base + off
    wt = _cubic_kernel(u - node)
    np.add.at(out, (*np.indices(q.shape), np.clip(node, 0, g - 1)), wt)
  return out


def _bilinear_sample(image: np.ndarray, sy: np.ndarray, sx: np.ndarray) -> np.ndarray:
  """Samples ``[h, w, C]`` at pixel-index positions ``sy, sx`` ``[h', w']`` (edge pixels repeat)."""
  h, w, c = image.shape
  sy = np.clip(sy.astype(np.float32), 0, h - 1)
  sx = np.clip(sx.astype(np.float32), 0, w - 1)
  y0 = sy.astype(np.int32)  # floor: non-negative after clipping
  x0 = sx.astype(np.int32)
  fy = (sy - y0)[..., None]
  fx = (sx - x0)[..., None]
  dy = np.where(y0 < h - 1, w, 0)
  dx = (x0 < w - 1).astype(np.int32)
  i00 = y0 * w + x0
  flat = image.reshape(h * w, c).astype(np.float32)
  gather = lambda i: np.take(flat, i, axis=0)  # noqa: E731 (much faster than fancy indexing)
  top = gather(i00)
  top += (gather(i00 + dx) - top) * fx
  bottom = gather(i00 + dy)
  bottom += (gather(i00 + dy + dx) - bottom) * fx
  top += (bottom - top) * fy
  return top


def elastic_deform(example: Mapping[str, Any], rng: np.random.Generator, *, sigma: float = 10.0,
                   grid: int | Sequence[int] = 3, box_points: int = 16) -> Example:
  """U-Net's elastic deformation (Ronneberger et al. 2015, Sec. 3.1).

  Random displacement vectors on a coarse ``grid`` (3 x 3 in the paper) are drawn from
  ``N(0, sigma^2)`` pixels (``sigma = 10`` in the paper); per-pixel displacements come from bicubic
  (Catmull-Rom) interpolation of the grid, whose nodes sit on the first/middle/last pixel centres.
  Output pixel ``p`` takes the input at ``p + d(p)``: bilinearly for the image (edge pixels repeat
  outside), nearest for masks (False outside) and segmentation (255 outside). The output keeps the
  input size.

  Boxes: with masks, an instance's box becomes the tight box of its deformed mask (dropped if the mask
  leaves the image). Without masks (or for a mask that was already empty), boxes are approximated:
  ``box_points`` points per side of the box are moved by the inverse of the deformation (solved by
  fixed-point iteration ``p <- q - d(p)``, exact for displacement fields with gradient below 1) and the
  box becomes their bounding box, clipped to the image. That box encloses the deformed box region,
  hence the deformed object: it matches box-shaped objects (within ~1 px, the masks' nearest-neighbour
  rounding) but is looser for others, by up to the variation of the displacement along a box side
  (measured: up to ~11 px for ellipses with the paper's settings on a 256 px image). Keep masks when
  tight boxes matter. ``affine`` is left unchanged (the deformation is not affine).

  Args:
    example: see the module docstring.
    rng: random generator (draws ``2 * gy * gx`` normals).
    sigma: standard deviation of the grid displacements, in pixels; 0 is the identity.
    grid: nodes per axis, ``int`` or ``(gy, gx)``; at least 1.
    box_points: points sampled per box side for the mask-free box approximation.
  """
  fn = "elastic_deform"
  _check_rng(rng, fn)
  gy, gx = (grid, grid) if isinstance(grid, (int, np.integer)) else _pair(grid, "grid", fn)
  if gy < 1 or gx < 1:
    raise ValueError(f"{fn}: grid must be >= 1 per axis, got {grid!r}.")
  if sigma < 0:
    raise ValueError(f"{fn}: sigma must be >= 0, got {sigma!r}.")
  ex = _geometric(example, fn)
  h, w = ex["image"].shape[:2]
  disp = rng.normal(0.0, 1.0, size=(2, gy, gx)) * sigma  # (dy, dx) at the nodes, pixels
  wy = _grid_weights(np.arange(h), h, gy)  # [h, gy]
  wx = _grid_weights(np.arange(w), w, gx)  # [w, gx]
  dy = wy @ disp[0] @ wx.T  # [h, w]
  dx = wy @ disp[1] @ wx.T
  sy = (np.arange(h)[:, None] + dy).astype(np.float32)
  sx = (np.arange(w)[None, :] + dx).astype(np.float32)
  ex["image"] = _cast_like(_bilinear_sample(ex["image"], sy, sx), ex["image"].dtype)
  ny = np.floor(sy + 0.5).astype(np.int32)
  nx = np.floor(sx + 0.5).astype(np.int32)
  inside = (ny >= 0) & (ny < h) & (nx >= 0) & (nx < w)
  flat_idx = np.clip(ny, 0, h - 1) * w + np.clip(nx, 0, w - 1)
  had_pixels = _mask_pixels(ex)
  if "masks" in ex:
    n = ex["masks"].shape[0]
    ex["masks"] = np.take(ex["masks"].reshape(n, h * w), flat_idx, axis=1) & inside
  if "segmentation" in ex:
    seg = np.take(ex["segmentation"].reshape(h * w), flat_idx)
    seg[~inside] = IGNORE_LABEL
    ex["segmentation"] = seg
  if "boxes" in ex and len(ex["boxes"]):
    ex["boxes"] = _deform_boxes(ex["boxes"], disp, h, w, box_points)
    _refit_to_masks(ex, had_pixels, replace=True)
    _drop_degenerate(ex)
  return ex


def _deform_boxes(boxes: np.ndarray, disp: np.ndarray, h: int, w: int, k: int) -> np.ndarray:
  """Approximate forward map of boxes under the backward displacement field ``disp`` (see above)."""
  _, gy, gx = disp.shape
  t = np.linspace(0.0, 1.0, max(k, 2))
  x1, y1, x2, y2 = (boxes[:, i:i + 1].astype(np.float64) for i in range(4))
  xs = np.concatenate([x1 + (x2 - x1) * t, x1 + (x2 - x1) * t, np.repeat(x1, t.size, 1),
                       np.repeat(x2, t.size, 1)], axis=1)  # [N, 4k]
  ys = np.concatenate([np.repeat(y1, t.size, 1), np.repeat(y2, t.size, 1), y1 + (y2 - y1) * t,
                       y1 + (y2 - y1) * t], axis=1)
  # Continuous coordinate c is pixel index c - 0.5; solve q_out + d(q_out) = q_in.
  qy_in, qx_in = ys - 0.5, xs - 0.5
  qy, qx = qy_in.copy(), qx_in.copy()
  for _ in range(20):
    wy = _grid_weights(qy, h, gy)  # [N, P, gy]
    wx = _grid_weights(qx, w, gx)  # [N, P, gx]
    dy = np.einsum("npi,ij,npj->np", wy, disp[0], wx)
    dx = np.einsum("npi,ij,npj->np", wy, disp[1], wx)
    qy, qx = qy_in - dy, qx_in - dx
  ys, xs = qy + 0.5, qx + 0.5
  out = np.stack([xs.min(1), ys.min(1), xs.max(1), ys.max(1)], axis=-1)
  return _clip(out.astype(np.float32), h, w)


# ------------------------------------------------------------------------------------------------
# Photometric transforms and normalization
# ------------------------------------------------------------------------------------------------


def _rgb_to_hsv(rgb: np.ndarray) -> np.ndarray:
  """``[..., 3]`` RGB (any non-negative scale) -> HSV with H in degrees ``[0, 360)``, S in [0, 1], V as input."""
  r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
  v = np.maximum(np.maximum(r, g), b)
  c = v - np.minimum(np.minimum(r, g), b)
  s = c / np.where(v > 0, v, 1)
  safe_c = np.where(c > 0, c, 1)
  hue = np.where(v == r, (g - b) / safe_c, np.where(v == g, 2 + (b - r) / safe_c, 4 + (r - g) / safe_c))
  hue *= 60
  hue %= 360
  return np.stack([hue, s, v], axis=-1)


def _hsv_to_rgb(hsv: np.ndarray) -> np.ndarray:
  """Inverse of :func:`_rgb_to_hsv`."""
  h6 = (hsv[..., 0] % 360) / 60
  vs = hsv[..., 2] * hsv[..., 1]
  out = np.empty(hsv.shape, hsv.dtype)
  for ch, n in enumerate((5, 3, 1)):
    k = (h6 + n) % 6
    out[..., ch] = hsv[..., 2] - vs * np.clip(np.minimum(k, 4 - k), 0, 1)
  return out


def photometric_distort(example: Mapping[str, Any], rng: np.random.Generator, *,
                        brightness_delta: float = 32.0,
                        contrast_range: Sequence[float] = (0.5, 1.5),
                        saturation_range: Sequence[float] = (0.5, 1.5), hue_delta: float = 18.0,
                        p: float = 0.5, channel_swap_p: float = 0.0) -> Example:
  """SSD's photometric distortions (Howard 2013, as in Caffe SSD); changes only the image.

  In order: brightness (add ``U(-brightness_delta, brightness_delta)``, pixel units), then, with the
  order of contrast and the HSV step chosen by a coin flip, contrast (blend with the mean gray level by
  ``U(contrast_range)``), saturation (multiply S by ``U(saturation_range)``) and hue (rotate H by
  ``U(-hue_delta, hue_delta)`` degrees); each step is applied with probability ``p``. Finally the
  channels are permuted randomly with probability ``channel_swap_p`` (Caffe SSD's default 0). Values are
  clipped to [0, 255] after every step. Caffe SSD scales pixel values for "contrast"; this blends
  with the mean (torchvision's definition), which keeps gray images gray.

  Returns:
    The example with a float32 image in ``[0, 255]`` (expects unnormalized pixel values).
  """
  fn = "photometric_distort"
  _check_rng(rng, fn)
  ex = _prepare(example, fn)
  if ex["image"].shape[-1] != 3:
    raise ValueError(f"{fn}: image must have 3 (RGB) channels, got {_describe(ex['image'])}.")
  c_lo, c_hi = _pair(contrast_range, "contrast_range", fn, kind=float)
  s_lo, s_hi = _pair(saturation_range, "saturation_range", fn, kind=float)
  x = ex["image"].astype(np.float32)
  u = rng.random(6)
  brightness = rng.uniform(-brightness_delta, brightness_delta)
  contrast = rng.uniform(c_lo, c_hi)
  saturation = rng.uniform(s_lo, s_hi)
  hue = rng.uniform(-hue_delta, hue_delta)
  perm = rng.permutation(3)
  if u[0] < p:
    x = np.clip(x + brightness, 0, 255)

  def adjust_contrast(x):
    if u[2] < p:
      gray = x @ np.array([0.299, 0.587, 0.114], np.float32)
      x = np.clip(gray.mean() + contrast * (x - gray.mean()), 0, 255)
    return x

  contrast_first = u[1] < 0.5
  if contrast_first:
    x = adjust_contrast(x)
  if u[3] < p or u[4] < p:
    hsv = _rgb_to_hsv(x)
    if u[3] < p:
      hsv[..., 1] = np.clip(hsv[..., 1] * saturation, 0, 1)
    if u[4] < p:
      hsv[..., 0] = (hsv[..., 0] + hue) % 360.0
    x = np.clip(_hsv_to_rgb(hsv), 0, 255).astype(np.float32)
  if not contrast_first:
    x = adjust_contrast(x)
  if u[5] < channel_swap_p:
    x = x[..., perm]
  ex["image"] = np.ascontiguousarray(x, np.float32)
  return ex


def normalize_image(example: Mapping[str, Any], mean: Sequence[float] = IMAGENET_MEAN,
                    std: Sequence[float] = IMAGENET_STD) -> Example:
  """``image -> (image / 255 - mean) / std`` as float32; the padded area (outside ``image_hw``) is 0.

  ``mean``/``std`` are per channel for pixel values scaled to [0, 1] (torchvision's ImageNet
  constants by default; Caffe-style mean subtraction is ``mean = m / 255, std = 1 / 255``). Input
  pixel values are in [0, 255] whatever the dtype.
  """
  fn = "normalize_image"
  ex = _prepare(example, fn)
  c = ex["image"].shape[-1]
  mean = np.asarray(mean, np.float32).reshape(-1)
  std = np.asarray(std, np.float32).reshape(-1)
  if mean.shape not in ((1,), (c,)) or std.shape not in ((1,), (c,)):
    raise ValueError(f"{fn}: mean and std must have 1 or {c} values, got {mean.shape} and {std.shape}.")
  if np.any(std <= 0):
    raise ValueError(f"{fn}: std must be > 0, got {std.tolist()}.")
  image = (ex["image"].astype(np.float32) / 255.0 - mean) / std
  if "image_hw" in ex:
    h, w = (int(v) for v in np.asarray(ex["image_hw"]))
    image[h:] = 0.0
    image[:, w:] = 0.0
  ex["image"] = image.astype(np.float32)
  return ex


# ------------------------------------------------------------------------------------------------
# Batch contract: fixed number of instances, mask stride
# ------------------------------------------------------------------------------------------------


def downsample_masks(masks: np.ndarray, stride: int, *, rule: str = "area") -> np.ndarray:
  """Downsamples ``[N, H, W]`` masks by an integer ``stride`` to ``[N, H / stride, W / stride]`` bool.

  Rules: ``"area"`` (default): a low-resolution pixel is on when at least half of its
  ``stride x stride`` block is on (area average ``>= 0.5``), so the mask's area is preserved on
  average and its position is unbiased; ``"sample"``: strided sampling of the pixel at offset
  ``stride // 2`` in each block (cheaper, drops thin structures more often). ``stride = 1`` returns the
  masks as bool.

  Raises:
    ValueError: ``H`` or ``W`` is not divisible by ``stride`` (pad to a multiple first), or bad args.
  """
  fn = "downsample_masks"
  masks = np.asarray(masks)
  if masks.ndim != 3:
    raise ValueError(f"{fn}: masks must be [N, H, W], got {_describe(masks)}.")
  if isinstance(stride, bool) or not isinstance(stride, (int, np.integer)) or stride < 1:
    raise ValueError(f"{fn}: stride must be a positive int, got {stride!r}.")
  if rule not in ("area", "sample"):
    raise ValueError(f"{fn}: rule must be 'area' or 'sample', got {rule!r}.")
  n, h, w = masks.shape
  if h % stride or w % stride:
    raise ValueError(f"{fn}: mask size {(h, w)} must be divisible by stride {stride}; pad the image "
                     "to a multiple of the stride.")
  masks = masks.astype(bool)
  if stride == 1:
    return masks
  if rule == "sample":
    return np.ascontiguousarray(masks[:, stride // 2::stride, stride // 2::stride])
  blocks = masks.reshape(n, h // stride, stride, w // stride, stride)
  return blocks.sum(axis=(2, 4), dtype=np.int32) * 2 >= stride * stride


def pad_instances(example: Mapping[str, Any], max_boxes: int, *, mask_stride: int = 1,
                  mask_rule: str = "area") -> Example:
  """Pads or truncates instances to ``max_boxes = M`` slots (the batch contract's per-example part).

  Output keys: ``boxes [M, 4] float32``, ``labels [M] int32``, ``box_valid [M] bool``, ``is_crowd`` and
  ``difficult [M] bool`` (False where absent), ``masks [M, H / s, W / s] bool`` when the example has
  masks (downsampled with :func:`downsample_masks`, ``s = mask_stride``), and ``num_dropped_boxes``
  (int32 scalar). Padding slots are 0 / False. Degenerate boxes (width or height <= 0) are removed
  first and are not counted. If more than ``M`` remain, the ``M`` largest by box area are kept (ties:
  the earlier instance), in their original order, and ``num_dropped_boxes`` counts the rest.
  ``orig_hw``, ``scale`` and ``image_hw`` are added if absent (no geometric transform ran).

  Raises:
    ValueError: labels outside 1..K (0 is reserved for padding), or a bad ``max_boxes``/stride.
  """
  fn = "pad_instances"
  if isinstance(max_boxes, bool) or not isinstance(max_boxes, (int, np.integer)) or max_boxes < 0:
    raise ValueError(f"{fn}: max_boxes must be an int >= 0, got {max_boxes!r}.")
  ex = _prepare(example, fn)
  h, w = ex["image"].shape[:2]
  if "boxes" not in ex:
    ex["boxes"] = np.zeros((0, 4), np.float32)
    ex["labels"] = np.zeros((0,), np.int32)
  if np.any(ex["labels"] < 1):
    raise ValueError(f"{fn}: labels must be in 1..K (0 is padding), got {np.unique(ex['labels']).tolist()}.")
  _drop_degenerate(ex)
  n = ex["boxes"].shape[0]
  dropped = max(0, n - max_boxes)
  if dropped:
    order = np.argsort(-_area(ex["boxes"]), kind="stable")[:max_boxes]
    _filter(ex, np.sort(order))
    n = max_boxes
  out_boxes = np.zeros((max_boxes, 4), np.float32)
  out_boxes[:n] = ex["boxes"]
  labels = np.zeros((max_boxes,), np.int32)
  labels[:n] = ex["labels"]
  valid = np.zeros((max_boxes,), bool)
  valid[:n] = True
  for key in ("is_crowd", "difficult"):
    flag = np.zeros((max_boxes,), bool)
    if key in ex:
      flag[:n] = ex[key]
    ex[key] = flag
  if "masks" in ex:
    small = downsample_masks(ex["masks"], mask_stride, rule=mask_rule)
    masks = np.zeros((max_boxes,) + small.shape[1:], bool)
    masks[:n] = small
    ex["masks"] = masks
  ex["boxes"], ex["labels"], ex["box_valid"] = out_boxes, labels, valid
  ex["num_dropped_boxes"] = np.int32(dropped)
  ex.setdefault("orig_hw", np.array([h, w], np.int32))
  ex.setdefault("image_hw", np.array([h, w], np.int32))
  ex.setdefault("scale", np.float32(1.0))
  return ex


# ------------------------------------------------------------------------------------------------
# Composition
# ------------------------------------------------------------------------------------------------


def _takes_rng(fn: Callable) -> bool:
  try:
    params = inspect.signature(fn).parameters
  except (TypeError, ValueError):
    return False
  return "rng" in params


def compose(*fns: Callable) -> Callable[[Mapping[str, Any], np.random.Generator], Example]:
  """Chains transforms into one ``(example, rng) -> example`` function.

  Functions with an ``rng`` parameter are called as ``fn(example, rng)``, the others as
  ``fn(example)``; bind other arguments with ``functools.partial``. All draw from the same generator
  in order, so the pipeline is deterministic given the generator (seed it per example, e.g.
  ``np.random.default_rng([seed, index])``, in a grain ``RandomMapTransform``).
  """
  for f in fns:
    if not callable(f):
      raise TypeError(f"compose: every argument must be callable, got {type(f).__name__}.")
  plan = [(f, _takes_rng(f)) for f in fns]

  def pipeline(example: Mapping[str, Any], rng: np.random.Generator) -> Example:
    _check_rng(rng, "compose pipeline")
    ex = dict(example)
    for f, takes_rng in plan:
      ex = f(ex, rng) if takes_rng else f(ex)
    return ex

  return pipeline
