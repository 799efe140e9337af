"""Anchors, SSD default boxes and YOLOv2 priors.

* **Grid anchors** (Faster R-CNN, Ren et al., NeurIPS 2015, Sec. 3.1.1: ``k = 9`` anchors of scales
  128, 256, 512 and aspect ratios 1:2, 1:1, 2:1 at every position of the stride-16 feature map; FPN,
  Lin et al., CVPR 2017: one size per level, 32..512 on P2..P6; RetinaNet, Lin et al., ICCV 2017,
  Sec. 4: base size ``4 * stride`` on P3..P7 times octave scales ``2^0, 2^(1/3), 2^(2/3)``, ratios
  0.5, 1, 2). ``torchvision`` settings reproduce ``torchvision.models.detection.anchor_utils.
  AnchorGenerator`` bit for bit.
* **SSD default boxes** (Liu et al., "SSD: Single Shot MultiBox Detector", ECCV 2016, Sec. 2.2):
  ``s_k = s_min + (s_max - s_min) (k - 1) / (m - 1)``, aspect ratios ``{1, 2, 3, 1/2, 1/3}``, one extra
  box of scale ``s'_k = sqrt(s_k s_{k+1})`` for ratio 1, centres ``((j + 0.5) / f_k, (i + 0.5) / f_k)``.
  ``ssd300_default_boxes(torchvision=True)`` reproduces torchvision's ``DefaultBoxGenerator`` of
  ``ssd300_vgg16`` bit for bit.
* **YOLOv2 priors** (Redmon & Farhadi, "YOLO9000", CVPR 2017, Sec. 2 "Dimension Clusters"): k-means on
  the training boxes' ``(w, h)`` with distance ``1 - IoU`` of boxes sharing a centre.

Aspect-ratio conventions differ between the papers and are kept: grid anchors take ``ratio = h / w``
(Faster R-CNN's and torchvision's ``AnchorGenerator``), SSD takes ``a_r = w / h`` (``w = s sqrt(a_r)``).
Since each SSD ratio comes with its inverse the SSD box set does not depend on the convention.

Anchors depend only on static shapes and hyper-parameters, so they are computed on the host with NumPy,
in float32 and in exactly torchvision's operation order (so ``round`` sees the same values; XLA would
turn ``x / c`` into ``x * (1 / c)`` and be 1 ulp off), and returned as float32 JAX arrays of xyxy pixel
boxes. Calling them inside ``jit`` is fine (the result is a compile-time constant); for large pyramids
compute them once outside the step and pass them in.
"""

from __future__ import annotations

import math
from typing import Sequence

import jax.numpy as jnp
import numpy as np

from jaxvision.ops._checks import check_array, check_positive_int

_ORDERS = ("ratio_major", "size_major")

FASTER_RCNN_SIZES = (128, 256, 512)
"""Faster R-CNN's three anchor scales (pixels) at stride 16."""
FASTER_RCNN_RATIOS = (0.5, 1.0, 2.0)
"""Aspect ratios ``h / w`` of Faster R-CNN, FPN and RetinaNet anchors."""
FPN_SIZES = ((32,), (64,), (128,), (256,), (512,))
"""One anchor size per FPN level P2..P6 (torchvision's ``fasterrcnn_resnet50_fpn``)."""
FPN_STRIDES = (4, 8, 16, 32, 64)
"""Strides of P2..P6."""
RETINANET_STRIDES = (8, 16, 32, 64, 128)
"""Strides of P3..P7."""
SSD300_FEATURE_SIZES = (38, 19, 10, 5, 3, 1)
"""SSD300's six source layers: conv4_3, fc7, conv8_2, conv9_2, conv10_2, conv11_2."""
SSD300_ASPECT_RATIOS = ((2,), (2, 3), (2, 3), (2, 3), (2,), (2,))
"""Extra SSD ratios per layer; each ``r`` adds ``r`` and ``1 / r``: 4, 6, 6, 6, 4, 4 boxes per location."""
TORCHVISION_SSD300_SCALES = (0.07, 0.15, 0.33, 0.51, 0.69, 0.87, 1.05)
TORCHVISION_SSD300_STEPS = (8, 16, 32, 64, 100, 300)


# ------------------------------------------------------------------------------------------------
# Argument helpers
# ------------------------------------------------------------------------------------------------


def _positive_numbers(x, name: str) -> tuple[float, ...]:
  """A non-empty sequence of positive finite Python numbers."""
  if isinstance(x, (str, bytes)) or not isinstance(x, (Sequence, np.ndarray)):
    raise TypeError(f"{name} must be a sequence of positive numbers, got {x!r}.")
  out = []
  for v in x:
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
      raise TypeError(f"{name} must be a sequence of positive numbers, got {x!r}.")
    if not (math.isfinite(v) and v > 0):
      raise ValueError(f"{name} must contain positive finite numbers, got {x!r}.")
    out.append(v)
  if not out:
    raise ValueError(f"{name} must not be empty.")
  return tuple(out)


def _hw_pair(x, name: str, *, integer: bool) -> tuple:
  """``x`` or ``(x, x)`` as a pair ``(h, w)`` of positive ints (or numbers when not ``integer``)."""
  if isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, bool):
    x = (x, x)
  if not isinstance(x, (tuple, list)) or len(x) != 2:
    raise TypeError(f"{name} must be a number or a pair (h, w), got {x!r}.")
  if integer:
    return check_positive_int(x[0], f"{name}[0]"), check_positive_int(x[1], f"{name}[1]")
  return _positive_numbers(x, name)


def _check_order(order: str) -> None:
  if order not in _ORDERS:
    raise ValueError(f"order must be one of {_ORDERS}, got {order!r}.")


# ------------------------------------------------------------------------------------------------
# Grid anchors (Faster R-CNN, FPN, RetinaNet)
# ------------------------------------------------------------------------------------------------


def cell_anchors(sizes: Sequence[float], aspect_ratios: Sequence[float], *, round_base: bool = False,
                 order: str = "ratio_major") -> np.ndarray:
  """The ``A = len(sizes) * len(aspect_ratios)`` anchors of one location, centred at 0.

  An anchor of size ``s`` and ratio ``r = h / w`` has area ``s^2``: ``w = s / sqrt(r)``,
  ``h = s sqrt(r)``. Computed in float32 with torchvision's ``generate_anchors`` operations
  (``h_ratio = sqrt(r)``, ``w_ratio = 1 / h_ratio``, ``[-w, -h, w, h] / 2``, then ``round`` half to
  even when ``round_base``).

  Args:
    sizes: anchor sizes (square roots of the areas) in pixels.
    aspect_ratios: ratios ``h / w``.
    round_base: round the zero-centred corners to integers (torchvision).
    order: ``"ratio_major"`` (default; torchvision and py-faster-rcnn): anchor ``a = ir * len(sizes) +
      js`` has ratio ``ir`` and size ``js``. ``"size_major"`` (Detectron's RetinaNet): ``a = js *
      len(aspect_ratios) + ir``.

  Returns:
    NumPy float32 ``[A, 4]`` xyxy offsets from the anchor centre.
  """
  _check_order(order)
  scales = np.asarray(_positive_numbers(sizes, "sizes"), np.float32)
  ratios = np.asarray(_positive_numbers(aspect_ratios, "aspect_ratios"), np.float32)
  h_ratios = np.sqrt(ratios)
  w_ratios = np.float32(1) / h_ratios
  ws = w_ratios[:, None] * scales[None, :]  # [R, S]
  hs = h_ratios[:, None] * scales[None, :]
  if order == "size_major":
    ws, hs = ws.T, hs.T  # [S, R]
  ws, hs = ws.reshape(-1), hs.reshape(-1)
  base = np.stack([-ws, -hs, ws, hs], axis=1) / np.float32(2)
  return np.round(base) if round_base else base


def grid_anchors(feature_hw, stride, sizes: Sequence[float], aspect_ratios: Sequence[float], *,
                 offset: float = 0.0, round_base: bool = False, order: str = "ratio_major"):
  """Anchors tiled over one feature map.

  The anchor centre of feature cell ``(i, j)`` is ``((j + offset) * stride_x, (i + offset) * stride_y)``
  in input pixels. ``offset = 0`` (default, torchvision) puts it at the cell's top-left corner;
  ``offset = 0.5`` at the cell's centre, which is where py-faster-rcnn's ``[0, 0, 15, 15]`` base anchor
  (centre 7.5 in integer-pixel coordinates = 8.0 in continuous ones) and Detectron put it.

  Order: location-major, row by row, then the ``A`` anchors of the location (see ``cell_anchors``):
  anchor ``a`` of cell ``(i, j)`` is row ``(i * W + j) * A + a``; a head's ``[H, W, A * 4]`` output
  reshaped to ``[H * W * A, 4]`` lines up with it.

  The torchvision mode is ``offset=0.0, round_base=True, order="ratio_major"`` with integer strides
  ``image_size // feature_size`` (see ``torchvision_strides``): then the result equals
  ``AnchorGenerator(sizes=(sizes,), aspect_ratios=(aspect_ratios,))`` exactly.

  Args:
    feature_hw: ``(H, W)`` of the feature map, Python ints.
    stride: pixels between neighbouring cells, a number or ``(stride_y, stride_x)``.
    sizes: anchor sizes in pixels.
    aspect_ratios: ratios ``h / w``.
    offset: position of the anchor centre inside the cell, in cells.
    round_base: round the zero-centred anchor corners (torchvision).
    order: order of the anchors of one location, see ``cell_anchors``.

  Returns:
    float32 ``[H * W * A, 4]`` xyxy anchors.
  """
  return jnp.asarray(_grid_anchors_np(feature_hw, stride, sizes, aspect_ratios, offset, round_base, order))


def _grid_anchors_np(feature_hw, stride, sizes, aspect_ratios, offset, round_base, order) -> np.ndarray:
  """``grid_anchors`` as NumPy float32 (arguments checked here)."""
  fh, fw = _hw_pair(feature_hw, "feature_hw", integer=True)
  sy, sx = _hw_pair(stride, "stride", integer=False)
  if isinstance(offset, bool) or not isinstance(offset, (int, float)):
    raise TypeError(f"offset must be a Python float, got {offset!r}.")
  base = cell_anchors(sizes, aspect_ratios, round_base=round_base, order=order)  # [A, 4]
  # Integer shifts are exact in float32 (torchvision adds int32 shifts to float32 anchors).
  shift_x = (np.arange(fw, dtype=np.float32) + np.float32(offset)) * np.float32(sx)  # [W]
  shift_y = (np.arange(fh, dtype=np.float32) + np.float32(offset)) * np.float32(sy)  # [H]
  shift_x, shift_y = np.meshgrid(shift_x, shift_y, indexing="xy")  # [H, W] each
  shifts = np.stack([shift_x, shift_y, shift_x, shift_y], axis=-1).reshape(-1, 1, 4)  # [H*W, 1, 4]
  return (shifts + base[None]).reshape(-1, 4)  # [H*W*A, 4]


def _per_level(x, n: int, name: str) -> list:
  """``x`` given once for every level (a flat sequence of numbers) or once per level."""
  if isinstance(x, (str, bytes)) or not isinstance(x, (Sequence, np.ndarray)) or len(x) == 0:
    raise TypeError(f"{name} must be a sequence of numbers or one sequence per level, got {x!r}.")
  if isinstance(x[0], (Sequence, np.ndarray)):
    if len(x) != n:
      raise ValueError(f"{name} has {len(x)} levels, but level_shapes has {n}.")
    return list(x)
  return [x] * n


def multilevel_anchors(level_shapes, strides, sizes_per_level, aspect_ratios, *, offset: float = 0.0,
                       round_base: bool = False, order: str = "ratio_major"):
  """``grid_anchors`` for every level of a pyramid, concatenated level by level.

  Args:
    level_shapes: ``[(H_l, W_l), ...]`` feature map sizes, finest first.
    strides: one stride per level (a number or ``(stride_y, stride_x)``).
    sizes_per_level: one sequence of sizes per level, e.g. ``FPN_SIZES``.
    aspect_ratios: ratios ``h / w``, one sequence for all levels or one per level.
    offset, round_base, order: as in ``grid_anchors``.

  Returns:
    ``(anchors, counts)``: float32 ``[sum_l H_l W_l A_l, 4]`` and the Python tuple of per-level counts
    ``H_l * W_l * A_l`` (static, for splitting head outputs). With ``FPN_SIZES``, ratios ``(0.5, 1, 2)``,
    ``torchvision_strides`` and ``offset=0, round_base=True`` this is torchvision's FPN
    ``AnchorGenerator`` output.
  """
  if not isinstance(level_shapes, (Sequence, np.ndarray)) or len(level_shapes) == 0:
    raise TypeError(f"level_shapes must be a non-empty sequence of (H, W) pairs, got {level_shapes!r}.")
  n = len(level_shapes)
  if not isinstance(strides, (Sequence, np.ndarray)) or len(strides) != n:
    raise ValueError(f"strides must give one stride per level ({n}), got {strides!r}.")
  if not isinstance(sizes_per_level, (Sequence, np.ndarray)) or len(sizes_per_level) != n:
    raise ValueError(f"sizes_per_level must give one sequence of sizes per level ({n}), got "
                     f"{sizes_per_level!r}.")
  ratios = _per_level(aspect_ratios, n, "aspect_ratios")
  levels = [
      _grid_anchors_np(shape, stride, sizes, r, offset, round_base, order)
      for shape, stride, sizes, r in zip(level_shapes, strides, sizes_per_level, ratios)
  ]
  return jnp.asarray(np.concatenate(levels, axis=0)), tuple(len(a) for a in levels)


def torchvision_strides(image_hw, level_shapes) -> list[tuple[int, int]]:
  """torchvision's per-level strides ``(image_h // H_l, image_w // W_l)`` (integer division)."""
  ih, iw = _hw_pair(image_hw, "image_hw", integer=True)
  out = []
  for shape in level_shapes:
    fh, fw = _hw_pair(shape, "level_shapes[i]", integer=True)
    out.append((ih // fh, iw // fw))
  return out


def faster_rcnn_anchors(feature_hw, *, stride: int = 16, torchvision: bool = False):
  """Faster R-CNN's ``k = 9`` anchors (sizes 128, 256, 512 x ratios 0.5, 1, 2) on one feature map.

  Paper settings (default): anchor centres at the cell centres (``offset=0.5``), exact sizes, ratio-major
  order. ``torchvision=True``: ``AnchorGenerator(((128, 256, 512),), ((0.5, 1.0, 2.0),))`` (corner
  ``offset=0``, rounded); pass ``stride = image_size // feature_size`` as torchvision does.
  """
  return grid_anchors(feature_hw, stride, FASTER_RCNN_SIZES, FASTER_RCNN_RATIOS,
                      offset=0.0 if torchvision else 0.5, round_base=torchvision)


def retinanet_sizes(strides: Sequence[int] = RETINANET_STRIDES, *, torchvision: bool = False):
  """RetinaNet's anchor sizes per level: ``4 * stride * 2^(i / 3)``, ``i = 0, 1, 2``.

  torchvision truncates them to integers (``int(x * 2 ** (1 / 3))``: 32, 40, 50 on P3).
  """
  out = []
  for s in _positive_numbers(strides, "strides"):
    base = 4 * s
    if torchvision:
      out.append((base, int(base * 2**(1.0 / 3)), int(base * 2**(2.0 / 3))))
    else:
      out.append(tuple(base * 2**(i / 3.0) for i in range(3)))
  return tuple(out)


def retinanet_anchors(level_shapes, strides: Sequence = RETINANET_STRIDES, *, torchvision: bool = False):
  """RetinaNet's 9 anchors per location on P3..P7 (``multilevel_anchors`` output and counts).

  The sizes are always those of P3, P4, ... (``retinanet_sizes(RETINANET_STRIDES)``, one level per entry
  of ``level_shapes``); ``strides`` only places the grid. Paper settings (default): exact sizes
  ``4 * stride * 2^(i/3)``, centres at cell centres (``offset=0.5``), Detectron's size-major order.
  ``torchvision=True``: torchvision's ``retinanet_resnet50_fpn`` generator (integer sizes, ``offset=0``,
  rounded, ratio-major); pass ``torchvision_strides(image_hw, level_shapes)`` as ``strides`` for exact
  parity on any image size.
  """
  n = len(level_shapes)
  if n > len(RETINANET_STRIDES):
    raise ValueError(f"level_shapes has {n} levels; RetinaNet has {len(RETINANET_STRIDES)} (P3..P7).")
  sizes = retinanet_sizes(RETINANET_STRIDES[:n], torchvision=torchvision)
  return multilevel_anchors(level_shapes, strides, sizes, FASTER_RCNN_RATIOS,
                            offset=0.0 if torchvision else 0.5, round_base=torchvision,
                            order="ratio_major" if torchvision else "size_major")


# ------------------------------------------------------------------------------------------------
# SSD default boxes
# ------------------------------------------------------------------------------------------------


def ssd_scales(num_levels: int, s_min: float = 0.2, s_max: float = 0.9) -> tuple[float, ...]:
  """The paper's ``s_k = s_min + (s_max - s_min)(k - 1)/(m - 1)``, ``k = 1..m``, plus ``s_{m+1}``.

  The paper does not define ``s_{m+1}`` (needed for the last layer's ``s'_m``); it is the same formula
  at ``k = m + 1``, i.e. ``s_max + (s_max - s_min) / (m - 1)`` (1.04 for SSD300's defaults). For
  ``m = 1`` the scales are ``(s_min, s_max)``. Returns ``m + 1`` Python floats.
  """
  m = check_positive_int(num_levels, "num_levels")
  if m == 1:
    return (float(s_min), float(s_max))
  step = (s_max - s_min) / (m - 1)
  return tuple(s_min + step * k for k in range(m + 1))


def ssd_boxes_per_location(aspect_ratios=SSD300_ASPECT_RATIOS) -> tuple[int, ...]:
  """``2 + 2 * len(ratios)`` boxes per location on each level (4, 6, 6, 6, 4, 4 for SSD300)."""
  return tuple(2 + 2 * len(r) for r in aspect_ratios)


def _ssd_wh(scales, aspect_ratios, k: int) -> np.ndarray:
  """``[A_k, 2]`` normalized ``(w, h)`` of level ``k``: ``s_k``, ``s'_k``, then ``(w, h), (h, w)`` per ratio.

  Computed in float64 (Python floats, as torchvision) and rounded to float32 once.
  """
  s_k = scales[k]
  wh = [[s_k, s_k], [math.sqrt(s_k * scales[k + 1])] * 2]
  for ar in aspect_ratios[k]:
    w, h = s_k * math.sqrt(ar), s_k / math.sqrt(ar)
    wh += [[w, h], [h, w]]
  return np.asarray(wh, np.float64).astype(np.float32)


def ssd_default_boxes(feature_sizes, image_hw, aspect_ratios=SSD300_ASPECT_RATIOS, *, s_min: float = 0.2,
                      s_max: float = 0.9, scales: Sequence[float] | None = None,
                      steps: Sequence[float] | None = None, clip: str | None = None,
                      normalized_cxcywh: bool = False):
  """SSD default boxes for all source layers, concatenated layer by layer.

  Level ``k`` (``f_k = (H_k, W_k)``) has, at every location, the boxes (normalized ``w, h``)
  ``(s_k, s_k)``, ``(s'_k, s'_k)`` with ``s'_k = sqrt(s_k s_{k+1})``, then for each ``r`` in
  ``aspect_ratios[k]``: ``(s_k sqrt(r), s_k / sqrt(r))`` and its transpose (ratios ``r`` and ``1/r``).
  This is also torchvision's order. Centres are ``((j + 0.5) / W_k, (i + 0.5) / H_k)`` (the paper) or,
  with ``steps``, ``((j + 0.5) step_k / image_w, (i + 0.5) step_k / image_h)`` (torchvision, Caffe SSD).
  Row ``(i * W_k + j) * A_k + a`` within a level.

  Args:
    feature_sizes: per level ``f_k`` (square) or ``(H_k, W_k)``, Python ints.
    image_hw: ``(h, w)`` of the network input in pixels, Python numbers.
    aspect_ratios: per level, the extra ratios ``r`` (each adds ``r`` and ``1 / r``). The paper's full
      set ``{1, 2, 3, 1/2, 1/3}`` is ``(2, 3)``.
    s_min, s_max: the paper's scale range, used when ``scales`` is ``None`` (see ``ssd_scales``).
    scales: explicit ``m + 1`` scales (the last one only feeds ``s'_m``), e.g.
      ``TORCHVISION_SSD300_SCALES``.
    steps: optional per-level steps in pixels for the centres (see above).
    clip: ``None`` (default: boxes may extend past the image), ``"size"`` (clamp the normalized
      ``w, h`` to ``[0, 1]`` before making corners: torchvision's ``clip=True``), or ``"image"`` (clip
      the corners to the image: Caffe SSD's ``PriorBox clip``).
    normalized_cxcywh: return ``[cx, cy, w, h]`` normalized by the image size instead of xyxy pixels.

  Returns:
    float32 ``[sum_k H_k W_k A_k, 4]``: xyxy pixels (``(c - 0.5 * wh) * (image_w, image_h)``, in that
    operation order, as torchvision), or normalized cxcywh.
  """
  if not isinstance(feature_sizes, (Sequence, np.ndarray)) or len(feature_sizes) == 0:
    raise TypeError(f"feature_sizes must be a non-empty sequence, got {feature_sizes!r}.")
  m = len(feature_sizes)
  grids = [_hw_pair(f, f"feature_sizes[{k}]", integer=True) for k, f in enumerate(feature_sizes)]
  img_h, img_w = _hw_pair(image_hw, "image_hw", integer=False)
  if not isinstance(aspect_ratios, (Sequence, np.ndarray)) or len(aspect_ratios) != m:
    raise ValueError(f"aspect_ratios must give one sequence of ratios per level ({m}), got "
                     f"{aspect_ratios!r}.")
  aspect_ratios = [() if len(r) == 0 else _positive_numbers(r, f"aspect_ratios[{k}]")
                   for k, r in enumerate(aspect_ratios)]
  if scales is None:
    if not 0 < s_min <= s_max:
      raise ValueError(f"need 0 < s_min <= s_max, got s_min={s_min!r}, s_max={s_max!r}.")
    scales = ssd_scales(m, s_min, s_max)
  else:
    scales = _positive_numbers(scales, "scales")
    if len(scales) != m + 1:
      raise ValueError(f"scales must have len(feature_sizes) + 1 = {m + 1} entries, got {len(scales)}.")
  if steps is not None:
    steps = _positive_numbers(steps, "steps")
    if len(steps) != m:
      raise ValueError(f"steps must have one entry per level ({m}), got {len(steps)}.")
  if clip not in (None, "size", "image"):
    raise ValueError(f"clip must be None, 'size' or 'image', got {clip!r}.")

  levels = []
  for k, (fh, fw) in enumerate(grids):
    # Number of cells per image side that the centres are spread over (torchvision's x_f_k, y_f_k),
    # rounded to float32 like torchvision's Python scalar in a float32 op.
    if steps is not None:
      nx, ny = np.float32(img_w / steps[k]), np.float32(img_h / steps[k])
    else:
      nx, ny = np.float32(fw), np.float32(fh)
    # A true float32 division, as torchvision's (not XLA's x * (1 / c)).
    cx = (np.arange(fw, dtype=np.float32) + np.float32(0.5)) / nx  # [W]
    cy = (np.arange(fh, dtype=np.float32) + np.float32(0.5)) / ny  # [H]
    cx, cy = np.meshgrid(cx, cy, indexing="xy")  # [H, W]
    wh = _ssd_wh(scales, aspect_ratios, k)  # [A, 2]
    if clip == "size":
      wh = np.clip(wh, 0.0, 1.0)
    a = wh.shape[0]
    centres = np.broadcast_to(np.stack([cx, cy], -1).reshape(-1, 1, 2), (fh * fw, a, 2))  # [H*W, A, 2]
    sizes = np.broadcast_to(wh[None], (fh * fw, a, 2))  # [H*W, A, 2]
    levels.append(np.concatenate([centres, sizes], -1).reshape(-1, 4))  # [H*W*A, 4] cxcywh
  boxes = np.concatenate(levels, axis=0)
  ctr, half = boxes[:, :2], np.float32(0.5) * boxes[:, 2:]
  scale = np.asarray([img_w, img_h], np.float32)
  if clip == "image":
    lo, hi = np.clip(ctr - half, 0.0, 1.0), np.clip(ctr + half, 0.0, 1.0)
    if normalized_cxcywh:
      return jnp.asarray(np.concatenate([(lo + hi) / 2, hi - lo], axis=1))
    return jnp.asarray(np.concatenate([lo * scale, hi * scale], axis=1))
  if normalized_cxcywh:
    return jnp.asarray(boxes)
  return jnp.asarray(np.concatenate([(ctr - half) * scale, (ctr + half) * scale], axis=1))


def ssd300_default_boxes(*, torchvision: bool = False, normalized_cxcywh: bool = False):
  """The 8732 default boxes of SSD300 on a 300 x 300 input.

  Paper (default): ``s_min = 0.2``, ``s_max = 0.9`` over the six layers, centres ``(j + 0.5) / f_k``,
  no clipping. (The paper's VOC model additionally uses scale 0.1 on conv4_3 and Caffe's ``steps``;
  pass ``scales=``/``steps=`` to ``ssd_default_boxes`` for that.) ``torchvision=True``:
  ``ssd300_vgg16``'s ``DefaultBoxGenerator`` (``TORCHVISION_SSD300_SCALES``,
  ``TORCHVISION_SSD300_STEPS``, ``clip="size"``), bit for bit.
  """
  if torchvision:
    return ssd_default_boxes(SSD300_FEATURE_SIZES, (300, 300), SSD300_ASPECT_RATIOS,
                             scales=TORCHVISION_SSD300_SCALES, steps=TORCHVISION_SSD300_STEPS,
                             clip="size", normalized_cxcywh=normalized_cxcywh)
  return ssd_default_boxes(SSD300_FEATURE_SIZES, (300, 300), SSD300_ASPECT_RATIOS,
                           normalized_cxcywh=normalized_cxcywh)


# ------------------------------------------------------------------------------------------------
# YOLOv2 dimension clusters
# ------------------------------------------------------------------------------------------------


def wh_iou(wh1, wh2):
  """Pairwise IoU of boxes given by ``(w, h)`` only, all sharing one centre: ``[N, 2], [K, 2] -> [N, K]``.

  ``inter = min(w1, w2) * min(h1, h2)``; 0 where the union is 0. This is YOLOv2's clustering similarity
  and how YOLO v2/v3 pick the prior responsible for a ground-truth box.
  """
  wh1 = check_array(wh1, "wh1", ndim=2, last_dim=2, kind="numeric").astype(jnp.float32)
  wh2 = check_array(wh2, "wh2", ndim=2, last_dim=2, kind="numeric").astype(jnp.float32)
  return _wh_iou(wh1, wh2, jnp)


def _wh_iou(wh1, wh2, xp):
  """``wh_iou`` in the array namespace ``xp`` (``jnp``, or ``np`` for ``kmeans_anchors`` on the host)."""
  inter = xp.minimum(wh1[:, None, 0], wh2[None, :, 0]) * xp.minimum(wh1[:, None, 1], wh2[None, :, 1])
  union = (wh1[:, 0] * wh1[:, 1])[:, None] + (wh2[:, 0] * wh2[:, 1])[None, :] - inter
  ok = union > 0
  return xp.where(ok, inter / xp.where(ok, union, 1.0), 0.0)


def mean_best_iou(wh, priors) -> float:
  """YOLOv2's "Avg IOU" (Table 1): the mean over boxes of the best ``wh_iou`` with any prior."""
  wh = np.asarray(check_array(wh, "wh", ndim=2, last_dim=2, kind="numeric"), np.float64)
  priors = np.asarray(check_array(priors, "priors", ndim=2, last_dim=2, kind="numeric"), np.float64)
  return float(np.mean(np.max(_wh_iou(wh, priors, np), axis=1)))


def kmeans_anchors(wh, k: int, *, seed: int = 0, iters: int = 100, restarts: int = 5) -> np.ndarray:
  """YOLOv2 dimension clusters: k-means of box sizes with distance ``d = 1 - IoU(box, centroid)``.

  Lloyd iterations on the host (this is dataset statistics, run once before training): every box joins
  the centroid it overlaps most (``wh_iou``, ties to the lower index), each centroid moves to the mean
  ``(w, h)`` of its members, until the assignment stops changing or ``iters`` rounds. Initialization is
  k-means++ under the same distance; a cluster that loses all its members is re-seeded at the box that
  fits its centroid worst. k-means only finds a local optimum (on four well separated clusters a single
  k-means++ start merged two of them for 3 seeds in 10), so ``restarts`` independent starts are run and
  the one with the highest mean best IoU (``mean_best_iou``, YOLOv2's criterion) is kept. All randomness
  comes from ``numpy.random.default_rng(seed)``: deterministic for a given ``seed``.

  Args:
    wh: ``[N, 2]`` positive box sizes ``(w, h)``: in grid-cell units (box size / stride) to get YOLOv2's
      priors directly, or in pixels.
    k: number of clusters (YOLOv2: 5), at most the number of distinct sizes.
    seed: seed of the k-means++ initializations.
    iters: maximum number of Lloyd iterations per start.
    restarts: number of k-means++ starts.

  Returns:
    NumPy float32 ``[k, 2]`` centroids sorted by area (ascending).
  """
  k = check_positive_int(k, "k")
  iters = check_positive_int(iters, "iters")
  restarts = check_positive_int(restarts, "restarts")
  if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
    raise TypeError(f"seed must be a Python int, got {seed!r}.")
  wh = np.asarray(check_array(wh, "wh", ndim=2, last_dim=2, kind="numeric"), np.float64)
  if not np.all(np.isfinite(wh)) or not np.all(wh > 0):
    raise ValueError("wh must contain positive finite sizes; drop zero-size (padding) boxes first.")
  n_distinct = len(np.unique(wh, axis=0))
  if k > n_distinct:
    raise ValueError(f"k = {k} exceeds the number of distinct sizes in wh ({n_distinct}).")
  rng = np.random.default_rng(seed)

  def iou(centroids):
    return _wh_iou(wh, centroids, np)  # [N, k] float64

  best, best_fit = None, -1.0
  for _ in range(restarts):
    # k-means++: each next centre drawn with probability proportional to d^2 to the nearest chosen one.
    centroids = wh[[rng.integers(len(wh))]]
    for _ in range(1, k):
      p = (1.0 - iou(centroids).max(axis=1))**2
      if p.sum() <= 0:  # every remaining box coincides (in float32) with a chosen centre
        p = np.ones_like(p)
      centroids = np.concatenate([centroids, wh[[rng.choice(len(wh), p=p / p.sum())]]], axis=0)
    assign = None
    for _ in range(iters):
      sim = iou(centroids)
      new_assign = np.argmax(sim, axis=1)
      if assign is not None and np.array_equal(new_assign, assign):
        break
      assign = new_assign
      for c in range(k):
        members = wh[assign == c]
        if len(members):
          centroids[c] = members.mean(axis=0)
        else:  # empty cluster: restart it at the worst-fitted box
          centroids[c] = wh[np.argmin(sim.max(axis=1))]
    fit = float(iou(centroids).max(axis=1).mean())
    if fit > best_fit:
      best, best_fit = centroids, fit
  order = np.argsort(best[:, 0] * best[:, 1], kind="stable")
  return best[order].astype(np.float32)
