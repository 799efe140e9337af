"""Tests for jaxvision.data.transforms: geometric consistency, bookkeeping, padding and determinism.

The synthetic examples make every check falsifiable: instances are ellipses/rectangles whose boxes are
their tight mask boxes, the segmentation map is painted from the masks with one label per instance,
and the image's red channel encodes the union of the masks, so image, boxes, masks and segmentation
can be compared after any transform.
"""

from __future__ import annotations

import copy
import functools

import numpy as np
import pytest

from jaxvision.data import transforms as T

FG, BG = 230, 10  # red-channel levels inside / outside objects


def make_example(seed=0, h=48, w=64, n=4, *, masks=True, seg=True, shape="ellipse", dtype=np.uint8,
                 large=False):
  """Non-overlapping instances (one per cell of a 2 x 3 grid, or one large one) with tight boxes."""
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[0:h, 0:w] + 0.5
  cells = [(r, c) for r in range(2) for c in range(3)]
  order = rng.permutation(len(cells))[:n]
  ms = []
  for j, k in enumerate(order):
    if large:  # side by side, each nearly the full height
      y0, y1, x0, x1 = 3, h - 3, j * w / n + 2, (j + 1) * w / n - 2
    else:
      r, c = cells[k]
      y0, y1 = r * h / 2 + 2, (r + 1) * h / 2 - 2
      x0, x1 = c * w / 3 + 2, (c + 1) * w / 3 - 2
    cy, cx = rng.uniform(y0 + 0.4 * (y1 - y0), y1 - 0.4 * (y1 - y0)), rng.uniform(
        x0 + 0.4 * (x1 - x0), x1 - 0.4 * (x1 - x0))
    ry = rng.uniform(0.6, 1.0) * min(cy - y0, y1 - cy)
    rx = rng.uniform(0.6, 1.0) * min(cx - x0, x1 - cx)
    if shape == "ellipse":
      m = ((yy - cy) / ry)**2 + ((xx - cx) / rx)**2 <= 1
    else:
      m = (np.abs(yy - cy) <= ry) & (np.abs(xx - cx) <= rx)
    ms.append(m)
  masks_arr = np.stack(ms) if ms else np.zeros((0, h, w), bool)
  boxes, nonempty = T.masks_to_boxes(masks_arr)
  assert nonempty.all()
  labels = np.arange(1, n + 1, dtype=np.int32)
  union = masks_arr.any(0)
  image = rng.integers(0, 256, (h, w, 3)).astype(np.float64)
  image[..., 0] = np.where(union, FG, BG)
  ex = {
      "image": image.astype(dtype),
      "boxes": boxes,
      "labels": labels,
      "is_crowd": np.arange(n) % 2 == 1,
      "difficult": np.arange(n) % 3 == 2,
      "image_id": np.int32(7),
  }
  if masks:
    ex["masks"] = masks_arr
  if seg:
    segmap = np.zeros((h, w), np.int32)
    for i in range(n):
      segmap[masks_arr[i]] = labels[i]
    ex["segmentation"] = segmap
  return ex


def _shift_or(m, fill=False):
  """3x3 dilation of a 2-D bool map with numpy shifts."""
  h, w = m.shape
  p = np.pad(m, 1, constant_values=fill)
  return np.any([p[dy:dy + h, dx:dx + w] for dy in range(3) for dx in range(3)], axis=0)


def assert_consistent(ex, *, box_tol=0.0, check_image=True):
  """Shapes agree; boxes = tight mask boxes (within box_tol); segmentation == masks; image follows masks."""
  H, W = ex["image"].shape[:2]
  n = ex["boxes"].shape[0]
  assert ex["boxes"].dtype == np.float32 and ex["boxes"].shape == (n, 4)
  assert ex["labels"].shape == (n,) and ex["labels"].dtype == np.int32
  for key in ("is_crowd", "difficult"):
    if key in ex:
      assert ex[key].shape == (n,) and ex[key].dtype == bool
  b = ex["boxes"]
  h, w = ex.get("image_hw", (H, W))
  assert np.all(b[:, 2] > b[:, 0]) and np.all(b[:, 3] > b[:, 1]), b
  assert np.all(b[:, :2] >= 0) and np.all(b[:, 2] <= w) and np.all(b[:, 3] <= h), (b, h, w)
  if "masks" in ex:
    assert ex["masks"].shape == (n, H, W) and ex["masks"].dtype == bool
    mb, nonempty = T.masks_to_boxes(ex["masks"])
    assert nonempty.all()
    np.testing.assert_allclose(b, mb, atol=box_tol + 1e-4)
  if "segmentation" in ex:
    assert ex["segmentation"].shape == (H, W) and ex["segmentation"].dtype == np.int32
    if "masks" in ex:
      for i in range(n):
        np.testing.assert_array_equal(ex["masks"][i], ex["segmentation"] == ex["labels"][i])
  if check_image and "masks" in ex and n:
    # The red channel (FG inside objects, BG outside) must move with the masks: disagreements only
    # within one pixel of a mask boundary (bilinear vs nearest sampling).
    union = ex["segmentation"] > 0 if "segmentation" in ex else ex["masks"].any(0)
    union = union & (ex["segmentation"] != 255) if "segmentation" in ex else union
    red_fg = ex["image"][..., 0].astype(np.float32) > (FG + BG) / 2 + 50
    boundary = _shift_or(union) & ~(~_shift_or(~union, fill=True))
    band = _shift_or(boundary)
    bad = (red_fg != union) & ~band
    assert not bad.any(), np.argwhere(bad)[:5]


def assert_examples_equal(a, b):
  assert sorted(a) == sorted(b)
  for k in a:
    np.testing.assert_array_equal(np.asarray(a[k]), np.asarray(b[k]), err_msg=k)


def rng(seed):
  return np.random.default_rng(seed)


# ------------------------------------------------------------------------------------------------
# Test example sanity
# ------------------------------------------------------------------------------------------------


def test_synthetic_example_is_consistent():
  ex = make_example(0)
  assert_consistent(ex)
  bad = copy.deepcopy(ex)
  bad["boxes"][0, 2] += 2.0
  with pytest.raises(AssertionError):
    assert_consistent(bad)


def test_masks_to_boxes_continuous_edges():
  m = np.zeros((1, 6, 8), bool)
  m[0, 2:5, 3:7] = True
  boxes, nonempty = T.masks_to_boxes(np.concatenate([m, np.zeros_like(m)]))
  np.testing.assert_array_equal(boxes, [[3, 2, 7, 5], [0, 0, 0, 0]])
  np.testing.assert_array_equal(nonempty, [True, False])


# ------------------------------------------------------------------------------------------------
# Flip
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(3))
def test_flip_consistent_and_twice_is_identity(seed):
  ex = make_example(seed)
  once = T.random_horizontal_flip(ex, rng(0), p=1.0)
  assert_consistent(once)
  W = ex["image"].shape[1]
  np.testing.assert_array_equal(once["boxes"][:, [0, 2]], W - ex["boxes"][:, [2, 0]])
  np.testing.assert_array_equal(once["image"], ex["image"][:, ::-1])
  twice = T.random_horizontal_flip(once, rng(0), p=1.0)
  for k in ex:
    np.testing.assert_array_equal(twice[k], ex[k], err_msg=k)
  np.testing.assert_array_equal(twice["affine"], [1, 1, 0, 0])


@pytest.mark.parametrize("seed", range(3))
def test_vertical_flip_consistent_maps_back_and_twice_is_identity(seed):
  ex = make_example(seed)
  once = T.random_vertical_flip(ex, rng(0), p=1.0)
  assert_consistent(once)
  H = ex["image"].shape[0]
  np.testing.assert_array_equal(once["boxes"][:, [1, 3]], H - ex["boxes"][:, [3, 1]])
  np.testing.assert_array_equal(once["boxes"][:, [0, 2]], ex["boxes"][:, [0, 2]])
  np.testing.assert_array_equal(once["image"], ex["image"][::-1])
  np.testing.assert_array_equal(once["segmentation"], ex["segmentation"][::-1])
  np.testing.assert_allclose(T.boxes_to_original(once["boxes"], once), ex["boxes"], atol=1e-4)
  twice = T.random_vertical_flip(once, rng(0), p=1.0)
  for k in ex:
    np.testing.assert_array_equal(twice[k], ex[k], err_msg=k)
  np.testing.assert_array_equal(twice["affine"], [1, 1, 0, 0])


def test_flip_probability():
  ex = make_example(0)
  kept = T.random_horizontal_flip(ex, rng(0), p=0.0)
  np.testing.assert_array_equal(kept["image"], ex["image"])
  flips = [not np.array_equal(T.random_horizontal_flip(ex, rng(s))["image"], ex["image"]) for s in range(40)]
  assert 8 < sum(flips) < 32


# ------------------------------------------------------------------------------------------------
# Resize, pad, buckets
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs,expect_hw", [
    (dict(max_size=96), (72, 96)),
    (dict(max_size=40), (30, 40)),
    (dict(min_size=30, max_size=1000), (30, 40)),
    (dict(min_size=60, max_size=70), (53, 70)),  # capped by max_size: 48 * 70 / 64 = 52.5
    (dict(target_hw=(100, 100)), (75, 100)),
    (dict(target_hw=(30, 100)), (30, 40)),
])
def test_resize_keep_aspect_sizes_and_consistency(kwargs, expect_hw):
  ex = make_example(1)
  out = T.resize_keep_aspect(ex, **kwargs)
  s = float(out["scale"])
  h, w = out["image"].shape[:2]
  assert abs(h - 48 * s) <= 0.5 and abs(w - 64 * s) <= 0.5
  assert abs(h - expect_hw[0]) <= 1 and w == expect_hw[1]
  np.testing.assert_array_equal(out["image_hw"], (h, w))
  np.testing.assert_array_equal(out["orig_hw"], (48, 64))
  assert out["image"].dtype == np.uint8
  assert_consistent(out, box_tol=1.0)


@pytest.mark.parametrize("size", [(37, 53), (120, 41)])
@pytest.mark.parametrize("kwargs", [dict(max_size=50), dict(min_size=45, max_size=90), dict(target_hw=(64, 64))])
def test_resize_maps_back_with_scale(size, kwargs):
  h, w = size
  boxes = np.array([[1.5, 2.0, 20.25, 30.0], [0.0, 0.0, w, h], [10.0, 3.0, 11.0, 4.5]], np.float32)
  ex = {"image": np.zeros((h, w, 3), np.uint8), "boxes": boxes, "labels": np.array([1, 2, 3])}
  out = T.resize_keep_aspect(ex, **kwargs)
  assert len(out["boxes"]) == 3
  # Content is scaled by exactly `scale`, so dividing recovers the original boxes (the full-image box
  # may be clipped by up to half an output pixel at the rounded border).
  back = out["boxes"] / out["scale"]
  np.testing.assert_allclose(back[[0, 2]], boxes[[0, 2]], rtol=1e-5, atol=1e-4)
  np.testing.assert_allclose(back[1], boxes[1], atol=0.5 / float(out["scale"]) + 1e-4)
  np.testing.assert_allclose(T.boxes_to_original(out["boxes"], out), back, atol=1e-4)


def test_resize_fixed_size_and_map_back():
  ex = make_example(2)
  out = T.resize(ex, target_hw=(30, 90))
  assert out["image"].shape == (30, 90, 3)
  assert_consistent(out, box_tol=1.0)
  np.testing.assert_allclose(out["affine"], [30 / 48, 90 / 64, 0, 0], rtol=1e-6)
  np.testing.assert_allclose(T.boxes_to_original(out["boxes"], out), ex["boxes"], atol=1e-4)
  np.testing.assert_allclose(out["scale"], np.sqrt(30 / 48 * 90 / 64), rtol=1e-6)


def test_resize_image_values():
  # Upscaling a constant image stays constant; bilinear of a horizontal ramp stays a ramp.
  const = {"image": np.full((5, 7, 3), 77, np.uint8)}
  np.testing.assert_array_equal(T.resize(const, target_hw=(9, 3))["image"], 77)
  ramp = np.tile(np.arange(8, dtype=np.float32)[None, :, None] * 10, (4, 1, 3))
  out = T.resize({"image": ramp}, target_hw=(4, 16))["image"]
  # Output pixel j is centred on source x = (j + 0.5) / 2 - 0.5; inside the image the ramp is linear.
  src = (np.arange(16) + 0.5) / 2 - 0.5
  expect = np.clip(src, 0, 7) * 10
  np.testing.assert_allclose(out[0, :, 0], expect, atol=1e-4)
  # Antialiased 2x downscale of an alternating pattern is flat (no aliasing).
  stripes = np.tile((np.arange(16) % 2 * 200.0)[None, :, None], (2, 1, 3)).astype(np.float32)
  small = T.resize({"image": stripes}, target_hw=(2, 8))["image"]
  assert np.ptp(small[:, 1:-1]) < 1e-3


def test_pad_to_size_values():
  ex = make_example(3, h=40, w=50)
  out = T.pad_to_size(ex, (64, 72))
  assert out["image"].shape == (64, 72, 3)
  np.testing.assert_array_equal(out["image"][:40, :50], ex["image"])
  assert (out["image"][40:] == 0).all() and (out["image"][:, 50:] == 0).all()
  assert (out["segmentation"][40:] == 255).all() and (out["segmentation"][:, 50:] == 255).all()
  np.testing.assert_array_equal(out["segmentation"][:40, :50], ex["segmentation"])
  assert not out["masks"][:, 40:].any() and not out["masks"][:, :, 50:].any()
  np.testing.assert_array_equal(out["boxes"], ex["boxes"])
  np.testing.assert_array_equal(out["image_hw"], (40, 50))
  assert_consistent(out)
  again = T.pad_to_size(out, (70, 80))
  np.testing.assert_array_equal(again["image_hw"], (40, 50))
  with pytest.raises(ValueError, match="does not fit"):
    T.pad_to_size(ex, (30, 72))
  with pytest.raises(ValueError, match="already padded"):
    T.random_horizontal_flip(out, rng(0))


def test_choose_bucket():
  buckets = [(256, 256), (192, 256), (256, 192), (512, 512)]
  assert T.choose_bucket(100, 200, buckets, max_size=256) == (192, 256)
  assert T.choose_bucket(200, 100, buckets, max_size=256) == (256, 192)
  assert T.choose_bucket(100, 100, buckets, max_size=256) == (256, 256)
  assert T.choose_bucket(300, 400, buckets) == (512, 512)
  assert T.choose_bucket(600, 600, buckets) == (512, 512)  # nothing fits: least downscaling
  assert T.choose_bucket(10, 10, [(64, 64), (64, 64)]) == (64, 64)
  with pytest.raises(ValueError):
    T.choose_bucket(10, 10, [])


@pytest.mark.parametrize("hw", [(48, 64), (64, 30), (200, 150)])
def test_resize_to_bucket(hw):
  buckets = [(64, 64), (48, 64), (64, 48)]
  ex = make_example(4, h=hw[0], w=hw[1])
  out = T.resize_to_bucket(ex, buckets=buckets, max_size=64)
  bucket = T.choose_bucket(hw[0], hw[1], buckets, max_size=64)
  assert out["image"].shape[:2] == bucket
  rh, rw = out["image_hw"]
  assert rh <= bucket[0] and rw <= bucket[1] and max(rh, rw) == 64
  assert_consistent(out, box_tol=1.0)
  assert (out["segmentation"][rh:] == 255).all() and (out["segmentation"][:, rw:] == 255).all()
  np.testing.assert_allclose(out["boxes"] / out["scale"], ex["boxes"], atol=0.5 / float(out["scale"]) + 1e-3)


# ------------------------------------------------------------------------------------------------
# Scale jitter
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(6))
def test_scale_jitter(seed):
  ex = make_example(seed)
  out = T.scale_jitter(ex, rng(seed), target_hw=(56, 56), scale_range=(0.5, 2.0))
  assert out["image"].shape == (56, 56, 3)
  h, w = out["image_hw"]
  s = float(out["scale"]) / min(56 / 48, 56 / 64)
  assert 0.5 <= s <= 2.0
  assert (out["image"][h:] == 0).all() and (out["image"][:, w:] == 0).all()
  assert (out["segmentation"][h:] == 255).all() and (out["segmentation"][:, w:] == 255).all()
  assert_consistent(out, box_tol=1.0)
  # Every kept instance came from the input with its label and flags.
  for i, lab in enumerate(out["labels"]):
    j = int(np.flatnonzero(ex["labels"] == lab)[0])
    assert out["is_crowd"][i] == ex["is_crowd"][j] and out["difficult"][i] == ex["difficult"][j]


@pytest.mark.parametrize("seed", range(3))
def test_scale_jitter_equals_resize_then_crop(seed):
  # scale_jitter resamples only the kept window; it must equal resizing everything by the recorded
  # scale and cropping at the recorded offset (float image: no uint8 rounding ties).
  ex = make_example(seed, dtype=np.float32)
  out = T.scale_jitter(ex, rng(seed), target_hw=(40, 40), scale_range=(1.3, 2.0))
  s = float(out["scale"])
  full = T.resize_keep_aspect(ex, min_size=48 * s)
  assert full["image"].shape[:2] == (T._round(48 * s), T._round(64 * s))
  ty, tx = (int(round(-v)) for v in out["affine"][2:])
  ch, cw = out["image_hw"]
  np.testing.assert_allclose(out["image"][:ch, :cw], full["image"][ty:ty + ch, tx:tx + cw], atol=0.05)
  np.testing.assert_array_equal(out["segmentation"][:ch, :cw], full["segmentation"][ty:ty + ch, tx:tx + cw])
  assert_consistent(out, box_tol=1.0)


def test_scale_jitter_crops_and_pads():
  outcomes = set()
  for seed in range(20):
    out = T.scale_jitter(make_example(seed), rng(seed), target_hw=(48, 64), scale_range=(0.5, 2.0))
    outcomes.add("crop" if np.any(out["affine"][2:] < 0) else "pad" if out["image_hw"][0] < 48 else "fit")
  assert {"crop", "pad"} <= outcomes


# ------------------------------------------------------------------------------------------------
# SSD crop and expand
# ------------------------------------------------------------------------------------------------


def _patch(out):
  """The crop window in input coordinates, read from the bookkeeping (input had identity affine)."""
  ty, tx = out["affine"][2:]
  h, w = out["image"].shape[:2]
  return np.array([-tx, -ty, -tx + w, -ty + h], np.float32)


@pytest.mark.parametrize("with_masks", [True, False])
def test_ssd_crop_keeps_boxes_with_centre_inside(with_masks):
  cropped = 0
  for seed in range(25):
    ex = make_example(seed, n=5, masks=with_masks, seg=with_masks)
    out = T.ssd_random_crop(ex, rng(seed), min_ious=(0.0, 0.1, 0.3))
    if out["image"].shape == ex["image"].shape:
      continue
    cropped += 1
    x1, y1, x2, y2 = _patch(out)
    cx = (ex["boxes"][:, 0] + ex["boxes"][:, 2]) / 2
    cy = (ex["boxes"][:, 1] + ex["boxes"][:, 3]) / 2
    inside = (cx > x1) & (cx < x2) & (cy > y1) & (cy < y2)
    np.testing.assert_array_equal(np.sort(out["labels"]), ex["labels"][inside])
    if with_masks:
      assert_consistent(out)
    else:
      clipped = ex["boxes"][inside] - np.array([x1, y1, x1, y1])
      clipped = np.clip(clipped, 0, [x2 - x1, y2 - y1, x2 - x1, y2 - y1])
      np.testing.assert_allclose(out["boxes"], clipped, atol=1e-5)
      assert_consistent(out)
    np.testing.assert_array_equal(out["is_crowd"], ex["is_crowd"][inside])
  assert cropped >= 10


@pytest.mark.parametrize("threshold,constraint", [(0.5, "any"), (0.3, "all"), (0.7, "any")])
def test_ssd_crop_min_iou_constraint(threshold, constraint):
  cropped = 0
  for seed in range(60):
    ex = make_example(seed, n=2, large=seed % 2 == 0)
    out = T.ssd_random_crop(ex, rng(seed), min_ious=(threshold,), iou_constraint=constraint)
    if out["image"].shape == ex["image"].shape and not out["affine"][2:].any():
      continue
    cropped += 1
    patch = _patch(out)[None]
    cx = (ex["boxes"][:, 0] + ex["boxes"][:, 2]) / 2
    cy = (ex["boxes"][:, 1] + ex["boxes"][:, 3]) / 2
    inside = (cx > patch[0, 0]) & (cx < patch[0, 2]) & (cy > patch[0, 1]) & (cy < patch[0, 3])
    ious = T._box_iou(ex["boxes"][inside], patch)[:, 0]
    assert len(ious)
    if constraint == "any":
      assert ious.max() >= threshold - 1e-6, ious
    else:
      assert ious.min() >= threshold - 1e-6, ious
    assert_consistent(out)
  assert cropped >= 4


def test_ssd_crop_whole_image_option_and_impossible_constraint():
  ex = make_example(0)
  out = T.ssd_random_crop(ex, rng(0), min_ious=(None,))
  assert_examples_equal({k: out[k] for k in ex}, ex)
  # IoU 0.99 with small objects is impossible for patches of >= 0.9 of the image: returns unchanged.
  out = T.ssd_random_crop(ex, rng(0), min_ious=(0.99,), scale_range=(0.9, 1.0), max_trials=20)
  np.testing.assert_array_equal(out["image"], ex["image"])
  np.testing.assert_array_equal(out["boxes"], ex["boxes"])


@pytest.mark.parametrize("seed", range(4))
def test_random_expand(seed):
  ex = make_example(seed)
  out = T.random_expand(ex, rng(seed), max_ratio=3.0, p=1.0)
  H, W = out["image"].shape[:2]
  assert 48 <= H <= 3 * 48 and 64 <= W <= 3 * 64
  ty, tx = (int(v) for v in out["affine"][2:])
  np.testing.assert_array_equal(out["image"][ty:ty + 48, tx:tx + 64], ex["image"])
  np.testing.assert_array_equal(out["boxes"], ex["boxes"] + np.array([tx, ty, tx, ty], np.float32))
  outside = np.ones((H, W), bool)
  outside[ty:ty + 48, tx:tx + 64] = False
  fill = np.rint(np.array(T.IMAGENET_MEAN) * 255)
  np.testing.assert_array_equal(out["image"][outside], np.broadcast_to(fill, (outside.sum(), 3)))
  assert (out["segmentation"][outside] == 255).all()
  np.testing.assert_array_equal(out["image_hw"], (H, W))
  assert_consistent(out)
  np.testing.assert_allclose(T.boxes_to_original(out["boxes"], out), ex["boxes"], atol=1e-5)


def test_expand_flip_resize_map_back_chain():
  ex = make_example(5, masks=False, seg=False)
  pipe = T.compose(functools.partial(T.random_expand, p=1.0),
                   functools.partial(T.random_horizontal_flip, p=1.0),
                   functools.partial(T.resize, target_hw=(50, 70)))
  out = pipe(ex, rng(3))
  np.testing.assert_allclose(T.boxes_to_original(out["boxes"], out), ex["boxes"], atol=1e-3)


# ------------------------------------------------------------------------------------------------
# Elastic deformation
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(4))
def test_elastic_consistent(seed):
  ex = make_example(seed, h=64, w=80)
  out = T.elastic_deform(ex, rng(seed), sigma=4.0)
  assert out["image"].shape == ex["image"].shape and out["image"].dtype == np.uint8
  assert not np.array_equal(out["image"], ex["image"])
  assert not np.array_equal(out["masks"], ex["masks"])
  assert_consistent(out)  # boxes are re-fitted: exact


def test_elastic_zero_sigma_is_identity():
  ex = make_example(1)
  out = T.elastic_deform(ex, rng(0), sigma=0.0)
  for k in ex:
    np.testing.assert_array_equal(out[k], ex[k], err_msg=k)


def test_elastic_paper_settings_smooth_displacement():
  # 3x3 grid, std 10 px on a 256^2 image: the deformation is a smooth warp, not noise; a ramp image
  # stays monotone-ish locally (neighbouring outputs sample nearby inputs).
  h = w = 256
  ramp = np.zeros((h, w, 3), np.float32)
  ramp[..., 0] = np.arange(w)[None, :]
  ramp[..., 1] = np.arange(h)[:, None]
  out = T.elastic_deform({"image": ramp}, rng(0))["image"]
  inner = (slice(48, -48), slice(48, -48))  # away from the clamped borders
  step_x = np.diff(out[..., 0], axis=1)[inner]
  step_y = np.diff(out[..., 1], axis=0)[inner]
  assert np.abs(out[..., 0] - ramp[..., 0]).max() > 2.0  # it moved
  # Locally ~ a translation: the sampled input advances by about one pixel per output pixel.
  assert np.abs(step_x - 1.0).max() < 0.5 and np.abs(step_y - 1.0).max() < 0.5


@pytest.mark.parametrize("seed", range(4))
def test_elastic_boxes_without_masks_approximate_mask_boxes(seed):
  ex = make_example(seed, h=96, w=120, shape="rect")
  with_masks = T.elastic_deform(ex, rng(seed), sigma=6.0)
  no_masks = {k: v for k, v in ex.items() if k != "masks"}
  approx = T.elastic_deform(no_masks, rng(seed), sigma=6.0)
  np.testing.assert_array_equal(approx["segmentation"], with_masks["segmentation"])
  assert np.array_equal(approx["labels"], with_masks["labels"])
  np.testing.assert_allclose(approx["boxes"], with_masks["boxes"], atol=1.5)


@pytest.mark.parametrize("seed", range(3))
def test_elastic_boxes_without_masks_enclose_deformed_objects(seed):
  # For non-box-shaped objects the mask-free boxes are conservative: they contain the tight box.
  ex = make_example(seed, h=128, w=128, shape="ellipse")
  tight = T.elastic_deform(ex, rng(seed))
  approx = T.elastic_deform({k: v for k, v in ex.items() if k != "masks"}, rng(seed))
  assert np.array_equal(approx["labels"], tight["labels"])
  assert np.all(approx["boxes"][:, :2] <= tight["boxes"][:, :2] + 1.0)
  assert np.all(approx["boxes"][:, 2:] >= tight["boxes"][:, 2:] - 1.0)


# ------------------------------------------------------------------------------------------------
# Photometric and normalization
# ------------------------------------------------------------------------------------------------


def test_hsv_round_trip_and_hue_rotation():
  rgb = np.random.default_rng(0).uniform(0, 255, (50, 3))
  np.testing.assert_allclose(T._hsv_to_rgb(T._rgb_to_hsv(rgb)), rgb, atol=1e-9)
  red = np.array([[200.0, 0.0, 0.0]])
  hsv = T._rgb_to_hsv(red)
  hsv[:, 0] += 120
  np.testing.assert_allclose(T._hsv_to_rgb(hsv), [[0.0, 200.0, 0.0]], atol=1e-9)


def test_photometric_distort():
  ex = make_example(0)
  changed = 0
  for seed in range(8):
    out = T.photometric_distort(ex, rng(seed), p=1.0)
    assert out["image"].dtype == np.float32 and out["image"].shape == ex["image"].shape
    assert out["image"].min() >= 0 and out["image"].max() <= 255
    for k in ("boxes", "labels", "masks", "segmentation"):
      np.testing.assert_array_equal(out[k], ex[k])
    changed += not np.allclose(out["image"], ex["image"])
  assert changed == 8
  # p = 0: identity (as float32).
  np.testing.assert_array_equal(T.photometric_distort(ex, rng(0), p=0.0)["image"], ex["image"])
  # Gray stays gray under every step (hue/saturation/contrast definitions are sound).
  gray = {"image": np.repeat(np.random.default_rng(1).integers(0, 256, (8, 8, 1)), 3, -1).astype(np.uint8)}
  for seed in range(5):
    g = T.photometric_distort(gray, rng(seed), p=1.0)["image"]
    np.testing.assert_allclose(g[..., 0], g[..., 1], atol=1e-3)
    np.testing.assert_allclose(g[..., 0], g[..., 2], atol=1e-3)


def test_normalize_image():
  img = np.array([[[0, 128, 255]]], np.uint8)
  out = T.normalize_image({"image": img})["image"]
  expect = (np.array([0, 128, 255]) / 255 - np.array(T.IMAGENET_MEAN)) / np.array(T.IMAGENET_STD)
  np.testing.assert_allclose(out[0, 0], expect, rtol=1e-6)
  assert out.dtype == np.float32
  assert T.IMAGENET_MEAN == (0.485, 0.456, 0.406) and T.IMAGENET_STD == (0.229, 0.224, 0.225)
  # Padded area is 0 whether padding came before or after normalization.
  ex = make_example(0, h=20, w=30)
  a = T.normalize_image(T.pad_to_size(ex, (32, 32)))
  b = T.pad_to_size(T.normalize_image(ex), (32, 32))
  np.testing.assert_allclose(a["image"], b["image"], atol=1e-6)
  assert (a["image"][20:] == 0).all() and (a["image"][:, 30:] == 0).all()
  with pytest.raises(ValueError, match="std"):
    T.normalize_image(ex, std=(1.0, 0.0, 1.0))


# ------------------------------------------------------------------------------------------------
# pad_instances / downsample_masks
# ------------------------------------------------------------------------------------------------


def _boxes_example():
  sizes = [3, 9, 1, 7, 5, 9]  # areas 9, 81, 1, 49, 25, 81
  boxes = np.array([[0, 0, s, s] for s in sizes], np.float32)
  masks = np.zeros((6, 16, 16), bool)
  for i, s in enumerate(sizes):
    masks[i, :s, :s] = True
  return {"image": np.zeros((16, 16, 3), np.uint8), "boxes": boxes, "labels": np.arange(1, 7),
          "masks": masks, "is_crowd": np.array([0, 1, 0, 0, 1, 0], bool)}


def test_pad_instances_keeps_largest_and_counts_dropped():
  out = T.pad_instances(_boxes_example(), 3)
  np.testing.assert_array_equal(out["labels"], [2, 4, 6])  # areas 81, 49, 81, original order
  np.testing.assert_array_equal(out["box_valid"], [True, True, True])
  np.testing.assert_array_equal(out["is_crowd"], [True, False, False])
  np.testing.assert_array_equal(out["difficult"], [False] * 3)
  assert out["num_dropped_boxes"] == 3 and out["num_dropped_boxes"].dtype == np.int32
  np.testing.assert_array_equal(out["masks"].sum((1, 2)), [81, 49, 81])
  # Tie at area 81 with room for only one: the earlier instance wins.
  np.testing.assert_array_equal(T.pad_instances(_boxes_example(), 1)["labels"], [2])


def test_pad_instances_pads_and_strides():
  ex = _boxes_example()
  ex["boxes"][2] = [4, 4, 4, 9]  # degenerate: removed, not counted
  out = T.pad_instances(ex, 8, mask_stride=4)
  assert out["boxes"].shape == (8, 4) and out["boxes"].dtype == np.float32
  assert out["labels"].dtype == np.int32 and out["box_valid"].dtype == bool
  np.testing.assert_array_equal(out["box_valid"], [True] * 5 + [False] * 3)
  np.testing.assert_array_equal(out["labels"], [1, 2, 4, 5, 6, 0, 0, 0])
  assert (out["boxes"][5:] == 0).all()
  assert out["masks"].shape == (8, 4, 4) and not out["masks"][5:].any()
  assert out["num_dropped_boxes"] == 0
  np.testing.assert_array_equal(out["orig_hw"], (16, 16))
  np.testing.assert_array_equal(out["image_hw"], (16, 16))
  with pytest.raises(ValueError, match="labels"):
    T.pad_instances({**_boxes_example(), "labels": np.arange(6)}, 8)
  with pytest.raises(ValueError, match="divisible"):
    T.pad_instances(_boxes_example(), 8, mask_stride=3)


def test_downsample_masks_rules():
  m = np.zeros((3, 4, 4), bool)
  m[0, :2, :2] = [[1, 1], [0, 0]]  # 2 of 4 -> on (>= half)
  m[1, :2, :2] = [[1, 0], [0, 0]]  # 1 of 4 -> off
  m[2, 1, 1] = True  # the sampled pixel of block 0
  area = T.downsample_masks(m, 2)
  np.testing.assert_array_equal(area[:, 0, 0], [True, False, False])
  assert not area[:, 1:, :].any() and not area[:, :, 1:].any()
  sample = T.downsample_masks(m, 2, rule="sample")
  np.testing.assert_array_equal(sample[:, 0, 0], [False, False, True])
  rnd = np.random.default_rng(0).random((2, 12, 12)) > 0.5
  ref = np.array([[[rnd[n, 3 * i:3 * i + 3, 3 * j:3 * j + 3].mean() >= 0.5 for j in range(4)]
                   for i in range(4)] for n in range(2)])
  np.testing.assert_array_equal(T.downsample_masks(rnd, 3), ref)
  np.testing.assert_array_equal(T.downsample_masks(rnd, 1), rnd)
  with pytest.raises(ValueError):
    T.downsample_masks(rnd, 5)


# ------------------------------------------------------------------------------------------------
# Determinism, zero instances, no mutation, compose, errors
# ------------------------------------------------------------------------------------------------

RANDOM = {
    "flip": T.random_horizontal_flip,
    "scale_jitter": functools.partial(T.scale_jitter, target_hw=(40, 40)),
    "ssd_crop": T.ssd_random_crop,
    "expand": T.random_expand,
    "elastic": functools.partial(T.elastic_deform, sigma=5.0),
    "photometric": T.photometric_distort,
}
DETERMINISTIC = {
    "resize_keep_aspect": functools.partial(T.resize_keep_aspect, max_size=40),
    "resize": functools.partial(T.resize, target_hw=(30, 30)),
    "resize_to_bucket": functools.partial(T.resize_to_bucket, buckets=[(32, 48), (48, 32)], max_size=48),
    "pad_to_size": functools.partial(T.pad_to_size, target_hw=(64, 64)),
    "normalize": T.normalize_image,
    "pad_instances": functools.partial(T.pad_instances, max_boxes=5),
}


def _call(fn, ex, seed):
  return T.compose(fn)(ex, rng(seed))


@pytest.mark.parametrize("name", sorted(RANDOM))
def test_same_seed_same_result_different_seed_differs(name):
  ex = make_example(0)
  a, b = _call(RANDOM[name], ex, 11), _call(RANDOM[name], ex, 11)
  assert_examples_equal(a, b)
  others = [_call(RANDOM[name], ex, s) for s in range(12, 40)]
  assert any(not np.array_equal(o["image"].shape, a["image"].shape) or not np.array_equal(o["image"], a["image"])
             for o in others)


@pytest.mark.parametrize("name", sorted(RANDOM) + sorted(DETERMINISTIC))
def test_zero_instances_pass_through(name):
  fn = {**RANDOM, **DETERMINISTIC}[name]
  ex = make_example(0, n=0)
  for seed in range(3):
    out = _call(fn, ex, seed)
    if name == "pad_instances":
      assert not out["box_valid"].any() and out["boxes"].shape == (5, 4) and out["masks"].shape[0] == 5
      continue
    assert out["boxes"].shape == (0, 4) and out["labels"].shape == (0,)
    assert out["masks"].shape == (0,) + out["image"].shape[:2]
    assert out["segmentation"].shape == out["image"].shape[:2]
  # Examples without any instance keys (semantic segmentation only) pass through too.
  seg_only = {k: ex[k] for k in ("image", "segmentation")}
  out = _call(fn, seg_only, 0)
  assert out["segmentation"].shape == out["image"].shape[:2]


@pytest.mark.parametrize("name", sorted(RANDOM) + sorted(DETERMINISTIC))
def test_inputs_not_mutated_and_outputs_consistent(name):
  fn = {**RANDOM, **DETERMINISTIC}[name]
  ex = make_example(2)
  before = copy.deepcopy(ex)
  for seed in range(3):
    out = _call(fn, ex, seed)
    if name not in ("pad_instances",):
      assert_consistent(out, box_tol=1.0, check_image=name not in ("photometric", "normalize"))
  assert_examples_equal(ex, before)


def test_compose_matches_manual_sequence():
  ex = make_example(3)
  pipe = T.compose(T.photometric_distort, T.random_expand, T.ssd_random_crop,
                   functools.partial(T.resize, target_hw=(40, 40)), T.random_horizontal_flip,
                   T.normalize_image, functools.partial(T.pad_instances, max_boxes=6, mask_stride=2))
  out = pipe(ex, rng(5))
  r = rng(5)
  manual = T.photometric_distort(ex, r)
  manual = T.random_expand(manual, r)
  manual = T.ssd_random_crop(manual, r)
  manual = T.resize(manual, target_hw=(40, 40))
  manual = T.random_horizontal_flip(manual, r)
  manual = T.pad_instances(T.normalize_image(manual), max_boxes=6, mask_stride=2)
  assert out["image"].shape == (40, 40, 3) and out["masks"].shape == (6, 20, 20)
  for k in ("image", "boxes", "labels", "box_valid", "masks", "affine"):
    np.testing.assert_array_equal(out[k], manual[k], err_msg=k)
  with pytest.raises(TypeError, match="callable"):
    T.compose(T.normalize_image, 3)


def test_argument_errors():
  ex = make_example(0)
  with pytest.raises(TypeError, match="rng"):
    T.random_horizontal_flip(ex, 0)
  with pytest.raises(ValueError, match="masks"):
    T.random_horizontal_flip({**ex, "masks": ex["masks"][:, :10]}, rng(0))
  with pytest.raises(ValueError, match="labels"):
    T.resize(dict(ex, labels=ex["labels"][:2]), target_hw=(10, 10))
  with pytest.raises(ValueError, match="boxes"):
    T.resize(dict(ex, boxes=np.zeros((4, 5))), target_hw=(10, 10))
  with pytest.raises(ValueError, match="target_hw"):
    T.resize(ex, target_hw=(0, 10))
  with pytest.raises(ValueError, match="give"):
    T.resize_keep_aspect(ex)
