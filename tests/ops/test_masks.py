"""Mask ops of Mask R-CNN: targets (RoIAlign of the gt masks at the RoIs) and pasting, against slow
NumPy references and hand-worked cases."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxvision.ops import masks as mask_ops


# ------------------------------------------------------------------------------------------------
# NumPy references (one loop per pixel/sample: slow and obvious)
# ------------------------------------------------------------------------------------------------


def _np_bilinear_torchvision(img, y, x):
  """torchvision's RoIAlign bilinear_interpolate (border rule) on a 2-D array."""
  h, w = img.shape
  if y < -1.0 or y > h or x < -1.0 or x > w:
    return 0.0
  y, x = max(y, 0.0), max(x, 0.0)
  y_low, x_low = int(np.floor(y)), int(np.floor(x))
  if y_low >= h - 1:
    y_low = y_high = h - 1
    y = float(y_low)
  else:
    y_high = y_low + 1
  if x_low >= w - 1:
    x_low = x_high = w - 1
    x = float(x_low)
  else:
    x_high = x_low + 1
  ly, lx = y - y_low, x - x_low
  hy, hx = 1 - ly, 1 - lx
  return (hy * hx * img[y_low, x_low] + hy * lx * img[y_low, x_high] + ly * hx * img[y_high, x_low]
          + ly * lx * img[y_high, x_high])


def _np_mask_target(mask, box, m, stride, g=2, threshold=0.5):
  """Crop + resize of one gt mask at a box: aligned RoIAlign (scale 1/stride) then threshold."""
  x1, y1, x2, y2 = (np.float64(v) / stride - 0.5 for v in box)
  bw, bh = (x2 - x1) / m, (y2 - y1) / m
  out = np.zeros((m, m))
  for i in range(m):
    for j in range(m):
      acc = 0.0
      for gy in range(g):
        for gx in range(g):
          y = y1 + i * bh + (gy + 0.5) * bh / g
          x = x1 + j * bw + (gx + 0.5) * bw / g
          acc += _np_bilinear_torchvision(mask.astype(np.float64), y, x)
      out[i, j] = acc / (g * g)
  return out if threshold is None else (out >= threshold).astype(np.float64)


def _np_paste(mask, box, h, w):
  """Bilinear paste with zero padding, grid_sample(align_corners=False) convention."""
  m_h, m_w = mask.shape
  x1, y1, x2, y2 = (np.float64(v) for v in box)
  out = np.zeros((h, w))
  if not (x2 > x1 and y2 > y1):
    return out
  for yy in range(h):
    v = (yy + 0.5 - y1) / (y2 - y1) * m_h - 0.5
    for xx in range(w):
      u = (xx + 0.5 - x1) / (x2 - x1) * m_w - 0.5
      v0, u0 = int(np.floor(v)), int(np.floor(u))
      acc = 0.0
      for r, wr in ((v0, 1 - (v - v0)), (v0 + 1, v - v0)):
        for c, wc in ((u0, 1 - (u - u0)), (u0 + 1, u - u0)):
          if 0 <= r < m_h and 0 <= c < m_w:  # zero padding outside the mask grid
            acc += wr * wc * mask[r, c]
      out[yy, xx] = acc
  return out


# ------------------------------------------------------------------------------------------------
# paste_masks
# ------------------------------------------------------------------------------------------------


def test_paste_hand_worked_integer_box_is_exact():
  # An all-ones 4x4 mask at box x 2..6, y 3..7 (one mask cell per pixel): pixel x = 2 (centre
  # 2.5) reads u = 0 (weight 1 on tap 0), pixel x = 1 reads u = -1 (tap 0 weight 0): the pasted
  # mask is exactly the box.
  out = mask_ops.paste_masks(jnp.ones((1, 4, 4)), jnp.array([[2.0, 3.0, 6.0, 7.0]]), (12, 12))
  expected = np.zeros((12, 12), bool)
  expected[3:7, 2:6] = True
  np.testing.assert_array_equal(np.asarray(out[0]), expected)
  soft = mask_ops.paste_masks(jnp.ones((1, 4, 4)), jnp.array([[2.0, 3.0, 6.0, 7.0]]), (12, 12),
                              threshold=None)
  np.testing.assert_allclose(np.asarray(soft[0]), expected.astype(np.float32), atol=1e-6)
  # Half-pixel edges: box x 2.5..6.5 gives pixels 2 and 6 the weight 0.5 (u = -0.5 and 3.5).
  soft = mask_ops.paste_masks(jnp.ones((1, 4, 4)), jnp.array([[2.5, 3.0, 6.5, 7.0]]), (12, 12),
                              threshold=None)
  np.testing.assert_allclose(np.asarray(soft[0, 5, 1:8]), [0, 0.5, 1, 1, 1, 0.5, 0], atol=1e-6)


def test_paste_matches_numpy_reference():
  rng = np.random.default_rng(0)
  d, m, h, w = 5, 7, 23, 19
  masks = rng.uniform(size=(d, m, m)).astype(np.float32)
  boxes = np.array([[1.3, 2.2, 15.7, 20.1], [-4.0, -3.0, 8.5, 6.0], [10.0, 10.0, 30.0, 40.0],
                    [5.0, 5.0, 5.0, 9.0], [3.25, 7.75, 4.75, 9.5]], np.float32)  # incl. degenerate
  got = np.asarray(jax.jit(lambda a, b: mask_ops.paste_masks(a, b, (h, w), threshold=None))(
      masks, boxes))
  for i in range(d):
    np.testing.assert_allclose(got[i], _np_paste(masks[i], boxes[i], h, w), atol=1e-5,
                               err_msg=f"detection {i}")
  hard = np.asarray(mask_ops.paste_masks(masks, boxes, (h, w)))
  ref = np.stack([_np_paste(masks[i], boxes[i], h, w) for i in range(d)])
  sure = np.abs(ref - 0.5) > 1e-4  # away from the threshold
  np.testing.assert_array_equal(hard[sure], ref[sure] >= 0.5)
  assert not hard[3].any()  # zero-width box pastes nothing


def test_paste_bad_boxes_are_empty_and_finite():
  masks = jnp.ones((3, 4, 4))
  boxes = jnp.array([[np.nan, 0, 5, 5], [6, 6, 2, 2], [0, 0, np.inf, 5]], jnp.float32)
  soft = mask_ops.paste_masks(masks, boxes, (8, 8), threshold=None)
  assert np.all(np.isfinite(np.asarray(soft))) and not np.asarray(soft).any()


def test_paste_errors_name_the_argument():
  with pytest.raises(ValueError, match="boxes"):
    mask_ops.paste_masks(jnp.ones((2, 4, 4)), jnp.zeros((3, 4)), (8, 8))
  with pytest.raises(TypeError, match="masks"):
    mask_ops.paste_masks(jnp.ones((2, 4, 4), jnp.int32), jnp.zeros((2, 4)), (8, 8))
  with pytest.raises(ValueError, match="image_size"):
    mask_ops.paste_masks(jnp.ones((2, 4, 4)), jnp.zeros((2, 4)), (0, 8))


# ------------------------------------------------------------------------------------------------
# mask_targets
# ------------------------------------------------------------------------------------------------


def test_targets_hand_worked_box_on_the_instance_is_all_ones():
  masks = np.zeros((1, 2, 16, 16), bool)
  masks[0, 1, 4:12, 8:16] = True  # rows 4..11, cols 8..15: the box x 8..16, y 4..12
  t = mask_ops.mask_targets(masks, jnp.array([[8.0, 4.0, 16.0, 12.0]]), jnp.array([0]),
                            jnp.array([1]), output_size=6)
  np.testing.assert_array_equal(np.asarray(t[0]), np.ones((6, 6)))
  # The left half of the same box over the other (empty) slot: zeros.
  t = mask_ops.mask_targets(masks, jnp.array([[8.0, 4.0, 16.0, 12.0]]), jnp.array([0]),
                            jnp.array([0]), output_size=6)
  assert not np.asarray(t).any()
  # A box twice as wide, instance on its right half: columns 3..5 of 6 on.
  t = mask_ops.mask_targets(masks, jnp.array([[0.0, 4.0, 16.0, 12.0]]), jnp.array([0]),
                            jnp.array([1]), output_size=6)
  np.testing.assert_array_equal(np.asarray(t[0]), np.tile([0, 0, 0, 1, 1, 1], (6, 1)))


@pytest.mark.parametrize("stride", [1, 2, 4])
def test_targets_match_numpy_crop_and_resize(stride):
  rng = np.random.default_rng(stride)
  b, mm, size, m = 2, 3, 32, 7
  hm = size // stride
  yy, xx = np.mgrid[0:hm, 0:hm]
  masks = np.zeros((b, mm, hm, hm), bool)
  for i in range(b):
    for j in range(mm):
      cy, cx, r = rng.uniform(2, hm - 2), rng.uniform(2, hm - 2), rng.uniform(2, hm / 2)
      masks[i, j] = (yy - cy) ** 2 + 0.5 * (xx - cx) ** 2 < r * r  # ellipses
  n = 9
  xy = rng.uniform(-4, size - 8, (n, 2))
  wh = rng.uniform(2, size, (n, 2))
  rois = np.concatenate([xy, xy + wh], axis=1).astype(np.float32)
  image_index = rng.integers(0, b, n).astype(np.int32)
  gt_index = rng.integers(0, mm, n).astype(np.int32)
  gt_index[-1] = -1  # padding row
  fn = jax.jit(lambda *a: mask_ops.mask_targets(*a, output_size=m, mask_stride=stride,
                                                threshold=None))
  soft = np.asarray(fn(masks, rois, image_index, gt_index))
  for k in range(n - 1):
    ref = _np_mask_target(masks[image_index[k], gt_index[k]], rois[k], m, stride, threshold=None)
    np.testing.assert_allclose(soft[k], ref, atol=1e-5, err_msg=f"roi {k}")
  assert not soft[-1].any()
  hard = np.asarray(mask_ops.mask_targets(masks, rois, image_index, gt_index, output_size=m,
                                          mask_stride=stride))
  assert set(np.unique(hard)) <= {0.0, 1.0}
  sure = np.abs(soft - 0.5) > 1e-4
  np.testing.assert_array_equal(hard[sure], (soft >= 0.5)[sure])


def test_targets_bad_input():
  masks = np.zeros((1, 2, 8, 8), bool)
  masks[0, 0, 2:4, 2:4] = True
  rois = jnp.array([[np.nan, 0, 4, 4], [2, 2, 2, 2], [2, 2, 4, 4], [2, 2, 4, 4]], jnp.float32)
  t = mask_ops.mask_targets(masks, rois, jnp.array([0, 0, 5, 0]), jnp.array([0, 0, 0, 7]),
                            output_size=4)
  assert np.all(np.isfinite(np.asarray(t)))
  assert not np.asarray(t)[2:].any()  # image 5 and gt 7 do not exist
  # No gt slots at all (max_boxes = 0).
  t = mask_ops.mask_targets(np.zeros((1, 0, 8, 8), bool), rois, jnp.zeros(4, jnp.int32),
                            jnp.zeros(4, jnp.int32), output_size=4)
  assert t.shape == (4, 4, 4) and not np.asarray(t).any()
  with pytest.raises(ValueError, match="gt_masks"):
    mask_ops.mask_targets(np.zeros((2, 8, 8), bool), rois, jnp.zeros(4, jnp.int32),
                          jnp.zeros(4, jnp.int32))
  with pytest.raises(ValueError, match="gt_index"):
    mask_ops.mask_targets(masks, rois, jnp.zeros(4, jnp.int32), jnp.zeros(3, jnp.int32))
  with pytest.raises(ValueError, match="mask_stride"):
    mask_ops.mask_targets(masks, rois, jnp.zeros(4, jnp.int32), jnp.zeros(4, jnp.int32),
                          mask_stride=0)


def test_mask_iou():
  a = np.zeros((3, 4, 4), bool)
  b = np.zeros((3, 4, 4), bool)
  a[0, :2] = True
  b[0, 1:3] = True  # 4 shared of 12
  a[1] = True
  b[1] = True
  np.testing.assert_allclose(np.asarray(mask_ops.mask_iou(a, b)), [4 / 12, 1.0, 0.0])
