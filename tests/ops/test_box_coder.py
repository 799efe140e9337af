"""Tests for jaxvision/ops/box_coder.py.

R-CNN deltas and FCOS distances are compared with torchvision's ``BoxCoder`` and
``BoxLinearCoder(normalize_by_size=True)`` (fixture ``boxes_coder`` from tests/fixtures/gen_boxes.py);
YOLO v1/v2 (no torchvision counterpart) with hand-computed values, NumPy references of the papers'
formulas and encode/decode round trips.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxvision.ops import box_coder as C

WEIGHTS = {"w1": C.RPN_WEIGHTS, "w10": C.FAST_RCNN_WEIGHTS}


@pytest.fixture
def fx(fixture_npz):
  return fixture_npz("boxes_coder")


def _scatter_to_grid(cells, codes, grid_hw, depth=None):
  """Places per-box codes at their cells of an otherwise zero ``[S_h, S_w, (depth,) 4]`` grid."""
  shape = tuple(grid_hw) + ((depth,) if depth else ()) + (4,)
  grid = jnp.zeros(shape, jnp.float32)
  return grid.at[cells[:, 0], cells[:, 1]].set(codes)


# ------------------------------------------------------------------------------------------------
# R-CNN deltas
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("tag", ["w1", "w10"])
def test_encode_matches_torchvision(fx, tag):
  ours = np.asarray(C.encode_boxes(fx["gt"], fx["anchors"], WEIGHTS[tag]))
  ref = fx[f"encode_{tag}"]
  # Measured: max abs error 9.5e-7 (w10), 1.2e-7 (w1); the rest bit-exact.
  np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(ours[:4], 0.0)  # identical boxes
  np.testing.assert_array_equal(ours[4, 2:], 0.0)  # pure translation: dw = dh = 0
  assert np.abs(ours[4, :2]).min() > 0


@pytest.mark.parametrize("tag", ["w1", "w10"])
def test_decode_matches_torchvision(fx, tag):
  fn = jax.jit(lambda d, a: C.decode_boxes(d, a, WEIGHTS[tag]))
  ours = np.asarray(fn(fx["deltas"], fx["anchors"]))
  ref = fx[f"decode_{tag}"]
  # Measured: max relative error 4.3e-6 (XLA's exp and x / 10 -> x * 0.1 vs torch), max abs 7.6e-5 px
  # on boxes up to ~3000 px.
  np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-4)
  assert np.isfinite(ours).all()


def test_decode_clamps_dw_dh(fx):
  anchors, deltas = fx["anchors"][:4], fx["deltas"][:4]
  out = np.asarray(C.decode_boxes(deltas, anchors, C.RPN_WEIGHTS))
  aw = anchors[:, 2] - anchors[:, 0]
  ah = anchors[:, 3] - anchors[:, 1]
  # Rows 0-2 have dw, dh >= 50: clamped at log(1000/16), i.e. 62.5x the anchor's size.
  np.testing.assert_allclose(out[:3, 2] - out[:3, 0], 62.5 * aw[:3], rtol=1e-5)
  # Row 1 has dh = -100 (not clamped from below): a zero-height box; row 3 dw = dh = -80 likewise.
  np.testing.assert_allclose(out[1, 3] - out[1, 1], 0.0, atol=1e-5)
  np.testing.assert_allclose(out[3, 2:] - out[3, :2], 0.0, atol=1e-4)
  # clip=None: no clamp: dw = 50 gives exp(50) times the width, dw = 1e6 overflows.
  big = np.asarray(C.decode_boxes(deltas[:3], anchors[:3], C.RPN_WEIGHTS, clip=None))
  np.testing.assert_allclose(big[0, 2] - big[0, 0], np.exp(50.0) * aw[0], rtol=1e-4)
  assert np.isinf(big[2]).all()
  # A custom clamp.
  out2 = np.asarray(C.decode_boxes(deltas[:1], anchors[:1], C.RPN_WEIGHTS, clip=1.0))
  np.testing.assert_allclose(out2[0, 2] - out2[0, 0], math.e * aw[0], rtol=1e-5)
  np.testing.assert_allclose(out2[0, 3] - out2[0, 1], math.e * ah[0], rtol=1e-5)


def test_class_specific_decode_matches_torchvision(fx):
  n = fx["deltas_cls"].shape[0]
  deltas = fx["deltas_cls"].reshape(n, 3, 4)  # torchvision's [N, 4 C] as [N, C, 4]
  ours = C.decode_boxes(deltas, fx["anchors"][:, None, :], C.FAST_RCNN_WEIGHTS)
  assert ours.shape == (n, 3, 4)
  np.testing.assert_allclose(np.asarray(ours).reshape(n, 12), fx["decode_cls_w10"], rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("tag", ["w1", "w10"])
def test_encode_decode_round_trip(fx, tag):
  codes = C.encode_boxes(fx["gt"], fx["anchors"], WEIGHTS[tag])
  back = C.decode_boxes(codes, fx["anchors"], WEIGHTS[tag])
  np.testing.assert_allclose(back, fx["gt"], rtol=1e-5, atol=1e-3)


def test_ssd_weights_are_inverse_variances():
  assert C.SSD_WEIGHTS == tuple(1.0 / v for v in (0.1, 0.1, 0.2, 0.2))
  assert C.FAST_RCNN_WEIGHTS == (10.0, 10.0, 5.0, 5.0) and C.RPN_WEIGHTS == (1.0, 1.0, 1.0, 1.0)
  assert C.BBOX_XFORM_CLIP == math.log(1000.0 / 16)


def test_encode_degenerate_boxes_are_finite():
  anchors = np.array([[0, 0, 10, 20], [0, 0, 10, 20], [5, 5, 5, 5], [0, 0, 0, 8]], np.float32)
  gt = np.array([[0, 0, 0, 0], [2, 4, 2, 10], [0, 0, 4, 4], [1, 1, 3, 9]], np.float32)
  out = np.asarray(C.encode_boxes(gt, anchors, C.FAST_RCNN_WEIGHTS))
  assert np.isfinite(out).all()
  # Padding gt vs a real anchor: the centre offsets are defined, the log-size ratios are not (0).
  np.testing.assert_allclose(out[0], [10 * (0 - 5) / 10, 10 * (0 - 10) / 20, 0.0, 0.0])
  # Zero-width gt: dx, dy and dh are defined, dw is not.
  np.testing.assert_allclose(out[1], [10 * (2 - 5) / 10, 10 * (7 - 10) / 20, 0.0, 5 * np.log(6 / 20)],
                             rtol=1e-6)
  np.testing.assert_array_equal(out[2], 0.0)  # point anchor: nothing is defined
  np.testing.assert_allclose(out[3], [0.0, 10 * (5 - 4) / 8, 0.0, 5 * np.log(8 / 8)], atol=1e-7)
  # Gradients of a masked loss through the targets stay finite.
  g = jax.grad(lambda b: jnp.sum(C.encode_boxes(b, anchors) * 0.0))(jnp.asarray(gt))
  assert np.isfinite(np.asarray(g)).all()


def test_broadcasting_and_vmap(fx):
  a = fx["anchors"][:8]
  d = fx["deltas"][:8]
  batched = jax.vmap(C.decode_boxes, in_axes=(0, None))(np.stack([d, 2 * d]), a)
  np.testing.assert_allclose(batched[0], C.decode_boxes(d, a), rtol=1e-6)
  # One set of anchors against K candidate boxes each.
  out = C.encode_boxes(fx["gt"][:3][None, :, :], a[:, None, :])
  assert out.shape == (8, 3, 4)
  np.testing.assert_allclose(out[:, 1], C.encode_boxes(np.broadcast_to(fx["gt"][1], (8, 4)), a), rtol=1e-6)
  # Integer boxes are promoted to float32.
  assert C.encode_boxes(np.array([[0, 0, 4, 4]]), np.array([[0, 0, 2, 2]])).dtype == jnp.float32


# ------------------------------------------------------------------------------------------------
# YOLO v1
# ------------------------------------------------------------------------------------------------


def test_yolo_v1_encode_hand_computed():
  # 448 x 448 input, S = 7: 64-pixel cells.
  boxes = np.array(
      [
          [75, 160, 125, 240],  # centre (100, 200), size 50 x 80
          [40, 40, 88, 88],  # centre (64, 64): exactly on a cell corner -> cell (1, 1), offset 0
          [400, 420, 448, 448],  # centre (424, 434)
          [428, 438, 468, 458],  # centre (448, 448): on the image's edge -> last cell, offset 1
          [-30, -30, 10, 10],  # centre (-10, -10): outside -> cell (0, 0), offset clipped to 0
      ],
      np.float32)
  cells, codes = C.encode_yolo_v1(boxes, (448, 448), 7)
  np.testing.assert_array_equal(cells, [[3, 1], [1, 1], [6, 6], [6, 6], [0, 0]])
  assert cells.dtype == jnp.int32
  np.testing.assert_allclose(
      codes,
      [[100 / 64 - 1, 200 / 64 - 3, 50 / 448, 80 / 448], [0, 0, 48 / 448, 48 / 448],
       [424 / 64 - 6, 434 / 64 - 6, 48 / 448, 28 / 448], [1, 1, 40 / 448, 20 / 448],
       [0, 0, 40 / 448, 40 / 448]],
      rtol=1e-6, atol=1e-7)
  assert (np.asarray(codes)[:, :2] >= 0).all() and (np.asarray(codes)[:, :2] <= 1).all()


def test_yolo_v1_round_trip_non_square():
  rng = np.random.default_rng(3)
  image_hw, grid_hw = (320, 480), (5, 6)  # cells of 64 x 80 pixels
  # One box per cell so that scattering is unambiguous: centres drawn inside distinct cells.
  rows, cols = np.meshgrid(np.arange(5), np.arange(6), indexing="ij")
  cy = (rows.reshape(-1) + rng.uniform(0.01, 0.99, 30)) * 64
  cx = (cols.reshape(-1) + rng.uniform(0.01, 0.99, 30)) * 80
  wh = rng.uniform(4, 200, (30, 2))
  boxes = np.stack([cx - wh[:, 0] / 2, cy - wh[:, 1] / 2, cx + wh[:, 0] / 2, cy + wh[:, 1] / 2], 1)
  boxes = boxes.astype(np.float32)
  cells, codes = jax.jit(C.encode_yolo_v1, static_argnums=2)(boxes, jnp.array(image_hw), grid_hw)
  np.testing.assert_array_equal(cells, np.stack([rows.reshape(-1), cols.reshape(-1)], 1))
  grid = _scatter_to_grid(cells, codes, grid_hw)
  decoded = C.decode_yolo_v1(grid, image_hw)
  assert decoded.shape == (5, 6, 4)
  np.testing.assert_allclose(decoded[cells[:, 0], cells[:, 1]], boxes, rtol=1e-5, atol=1e-3)
  # With B = 2 predictors per cell.
  grid2 = jnp.stack([grid, grid * 0.5], axis=2)  # [5, 6, 2, 4]
  decoded2 = C.decode_yolo_v1(grid2, image_hw)
  np.testing.assert_allclose(decoded2[:, :, 0], decoded, rtol=1e-6)


def test_yolo_v1_decode_formula():
  codes = np.zeros((2, 3, 4), np.float32)
  codes[1, 2] = [0.25, 0.5, 0.1, 0.2]
  out = np.asarray(C.decode_yolo_v1(codes, (100, 300)))  # cells: 50 x 100 px
  cx, cy, w, h = (2 + 0.25) * 100, (1 + 0.5) * 50, 0.1 * 300, 0.2 * 100
  np.testing.assert_allclose(out[1, 2], [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], rtol=1e-6)
  np.testing.assert_allclose(out[0, 0], [0, 0, 0, 0], atol=1e-6)


# ------------------------------------------------------------------------------------------------
# YOLO v2
# ------------------------------------------------------------------------------------------------


def _sigmoid(x):
  return 1.0 / (1.0 + np.exp(-x))


def test_yolo_v2_decode_matches_paper_formula():
  rng = np.random.default_rng(4)
  sh, sw, a = 3, 4, 2
  codes = rng.normal(size=(sh, sw, a, 4)).astype(np.float32)
  priors = np.array([[1.08, 1.19], [3.42, 4.41]], np.float32)  # YOLOv2 VOC priors (grid units)
  image_hw = (96, 160)  # 32 x 40 pixel cells
  out = np.asarray(jax.jit(C.decode_yolo_v2)(codes, priors, jnp.array(image_hw)))
  row, col = np.meshgrid(np.arange(sh), np.arange(sw), indexing="ij")
  bx = _sigmoid(codes[..., 0].astype(np.float64)) + col[..., None]
  by = _sigmoid(codes[..., 1].astype(np.float64)) + row[..., None]
  bw = priors[:, 0] * np.exp(codes[..., 2].astype(np.float64))
  bh = priors[:, 1] * np.exp(codes[..., 3].astype(np.float64))
  ref = np.stack([(bx - bw / 2) * 40, (by - bh / 2) * 32, (bx + bw / 2) * 40, (by + bh / 2) * 32], -1)
  np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-4)
  # Optional clamp of tw, th.
  clipped = np.asarray(C.decode_yolo_v2(np.full((1, 1, 1, 4), 9.0, np.float32), priors[:1], (32, 40),
                                        clip=1.0))
  np.testing.assert_allclose(clipped[0, 0, 0, 2] - clipped[0, 0, 0, 0], 1.08 * np.e * 40, rtol=1e-5)


def test_yolo_v2_round_trip():
  rng = np.random.default_rng(5)
  image_hw, grid_hw = (416, 416), 13  # 32-pixel cells
  rows, cols = rng.permutation(169)[:20] // 13, rng.permutation(169)[:20] % 13
  cells_idx = np.unique(np.stack([rows, cols], 1), axis=0)
  n = len(cells_idx)
  cy = (cells_idx[:, 0] + rng.uniform(0.05, 0.95, n)) * 32
  cx = (cells_idx[:, 1] + rng.uniform(0.05, 0.95, n)) * 32
  wh = rng.uniform(8, 300, (n, 2))
  boxes = np.stack([cx - wh[:, 0] / 2, cy - wh[:, 1] / 2, cx + wh[:, 0] / 2, cy + wh[:, 1] / 2], 1)
  boxes = boxes.astype(np.float32)
  priors = np.array([[1.3, 1.7], [3.2, 4.0], [9.5, 8.0]], np.float32)
  prior_idx = rng.integers(0, 3, n)
  cells, t = C.encode_yolo_v2(boxes, priors[prior_idx], image_hw, grid_hw)
  np.testing.assert_array_equal(cells, cells_idx)
  # Inverse of the paper's formulas, checked directly.
  np.testing.assert_allclose(_sigmoid(np.asarray(t[:, 0], np.float64)), cx / 32 - cells_idx[:, 1], rtol=1e-5)
  np.testing.assert_allclose(priors[prior_idx, 1] * np.exp(np.asarray(t[:, 3], np.float64)), wh[:, 1] / 32,
                             rtol=1e-5)
  grid = jnp.zeros((13, 13, 3, 4)).at[cells[:, 0], cells[:, 1], prior_idx].set(t)
  decoded = C.decode_yolo_v2(grid, priors, image_hw)
  np.testing.assert_allclose(decoded[cells[:, 0], cells[:, 1], prior_idx], boxes, rtol=1e-5, atol=2e-3)


def test_yolo_v2_encode_borders_and_degenerate():
  boxes = np.array([[22, 22, 42, 42], [0, 0, 0, 0], [-10, 5, 10, 25]], np.float32)  # centre (32, 32)
  cells, t = C.encode_yolo_v2(boxes, np.array([1.0, 1.0], np.float32), (64, 64), 2)
  np.testing.assert_array_equal(cells, [[1, 1], [0, 0], [0, 0]])
  t = np.asarray(t)
  assert np.isfinite(t).all()
  np.testing.assert_allclose(t[0, :2], np.log(1e-6) - np.log1p(-1e-6), rtol=1e-4)  # offset 0 -> logit(eps)
  np.testing.assert_allclose(t[0, 2:], np.log(20 / 32), rtol=1e-6)
  np.testing.assert_array_equal(t[1, 2:], 0.0)  # padding box: undefined size targets are 0
  _, t_eps = C.encode_yolo_v2(boxes[:1], np.array([1.0, 1.0], np.float32), (64, 64), 2, eps=1e-3)
  np.testing.assert_allclose(np.asarray(t_eps)[0, 0], np.log(1e-3 / (1 - 1e-3)), rtol=1e-4)


# ------------------------------------------------------------------------------------------------
# FCOS
# ------------------------------------------------------------------------------------------------


def _anchor_points(anchors):
  pts = np.stack([0.5 * (anchors[:, 0] + anchors[:, 2]), 0.5 * (anchors[:, 1] + anchors[:, 3])], -1)
  size = np.stack([anchors[:, 2] - anchors[:, 0], anchors[:, 3] - anchors[:, 1]], -1)
  return pts, size


def test_fcos_matches_torchvision_linear_coder(fx):
  pts, size = _anchor_points(fx["fcos_anchors"])
  enc = np.asarray(C.encode_ltrb(fx["fcos_gt"], pts, size))
  dec = np.asarray(C.decode_ltrb(fx["fcos_deltas"], pts, size))
  # Measured: bit-exact.
  np.testing.assert_allclose(enc, fx["fcos_encode"], rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(dec, fx["fcos_decode"], rtol=1e-6, atol=1e-5)
  # Square stride x stride anchors: a per-point scalar normalizer (the stride) gives the same result.
  stride = size[:, 0]
  np.testing.assert_allclose(C.encode_ltrb(fx["fcos_gt"], pts, stride), enc, rtol=1e-6)
  np.testing.assert_allclose(C.decode_ltrb(fx["fcos_deltas"], pts, stride), dec, rtol=1e-6)


def test_fcos_semantics_and_round_trip(fx):
  boxes = np.array([[10, 20, 50, 40]], np.float32)
  points = np.array([[30, 25], [60, 30], [10, 20]], np.float32)
  ltrb = np.asarray(C.encode_ltrb(boxes, points))
  np.testing.assert_array_equal(ltrb, [[20, 5, 20, 15], [50, 10, -10, 10], [0, 0, 40, 20]])
  assert (ltrb[0] > 0).all() and (ltrb[1] < 0).any()  # inside vs outside the box
  np.testing.assert_allclose(C.encode_ltrb(boxes, points, 8.0), ltrb / 8)
  np.testing.assert_allclose(C.decode_ltrb(C.encode_ltrb(boxes, points, 8.0), points, 8.0),
                             np.broadcast_to(boxes, (3, 4)), atol=1e-5)
  pts, size = _anchor_points(fx["fcos_anchors"])
  back = C.decode_ltrb(C.encode_ltrb(fx["fcos_gt"], pts, size), pts, size)
  np.testing.assert_allclose(back, fx["fcos_gt"], rtol=1e-6, atol=1e-4)


# ------------------------------------------------------------------------------------------------
# Bad input
# ------------------------------------------------------------------------------------------------


def test_rcnn_bad_input():
  b = np.zeros((3, 4), np.float32)
  with pytest.raises(ValueError, match="boxes must have last dimension 4"):
    C.encode_boxes(np.zeros((3, 5)), b)
  with pytest.raises(ValueError, match="anchors must have last dimension 4"):
    C.encode_boxes(b, np.zeros((3, 2)))
  with pytest.raises(TypeError, match="boxes must be an array"):
    C.encode_boxes(1.0, b)
  with pytest.raises(ValueError, match="must broadcast"):
    C.encode_boxes(b, np.zeros((2, 4)))
  with pytest.raises(ValueError, match="weights"):
    C.encode_boxes(b, b, (1.0, 1.0, 1.0))
  with pytest.raises(ValueError, match="weights"):
    C.decode_boxes(b, b, (1.0, 1.0, 0.0, 1.0))
  with pytest.raises(TypeError, match="weights"):
    C.decode_boxes(b, b, "10,10,5,5")
  with pytest.raises(TypeError, match="deltas must be an array"):
    C.decode_boxes(None, b)
  with pytest.raises(ValueError, match="deltas must have last dimension 4"):
    C.decode_boxes(np.zeros((3, 8)), b)
  with pytest.raises(TypeError, match="deltas must have a numeric dtype"):
    C.decode_boxes(np.zeros((3, 4), bool), b)
  with pytest.raises(TypeError, match="clip"):
    C.decode_boxes(b, b, clip="4.1")


def test_yolo_bad_input():
  b = np.zeros((3, 4), np.float32)
  with pytest.raises(TypeError, match="grid_hw"):
    C.encode_yolo_v1(b, (448, 448), (7, 7, 7))
  with pytest.raises(ValueError, match=r"grid_hw\[0\] must be > 0"):
    C.encode_yolo_v1(b, (448, 448), (0, 7))
  with pytest.raises(ValueError, match="image_hw"):
    C.encode_yolo_v1(b, (448, 448, 3), 7)
  with pytest.raises(TypeError, match="image_hw"):
    C.decode_yolo_v1(np.zeros((7, 7, 4)), 448)
  with pytest.raises(ValueError, match="boxes must have last dimension 4"):
    C.encode_yolo_v1(np.zeros((3, 2)), (448, 448), 7)
  with pytest.raises(ValueError, match="codes must have rank 3 or 4"):
    C.decode_yolo_v1(np.zeros((49, 4)), (448, 448))
  with pytest.raises(ValueError, match="codes must have rank 4"):
    C.decode_yolo_v2(np.zeros((13, 13, 4)), np.ones((5, 2)), (416, 416))
  with pytest.raises(ValueError, match="priors must have shape"):
    C.decode_yolo_v2(np.zeros((13, 13, 5, 4)), np.ones((4, 2)), (416, 416))
  with pytest.raises(ValueError, match="priors must have last dimension 2"):
    C.encode_yolo_v2(b, np.ones((3, 3)), (416, 416), 13)
  with pytest.raises(ValueError, match="must broadcast"):
    C.encode_yolo_v2(b, np.ones((2, 2)), (416, 416), 13)
  with pytest.raises(ValueError, match="eps"):
    C.encode_yolo_v2(b, np.ones((3, 2)), (416, 416), 13, eps=0.0)


def test_fcos_bad_input():
  b = np.zeros((3, 4), np.float32)
  p = np.zeros((3, 2), np.float32)
  with pytest.raises(ValueError, match="points must have last dimension 2"):
    C.encode_ltrb(b, np.zeros((3, 4)))
  with pytest.raises(ValueError, match="distances must have last dimension 4"):
    C.decode_ltrb(np.zeros((3, 2)), p)
  with pytest.raises(ValueError, match="must broadcast"):
    C.encode_ltrb(b, np.zeros((5, 2)))
  with pytest.raises(ValueError, match="normalizer"):
    C.encode_ltrb(b, p, np.ones((3, 3)))
  with pytest.raises(ValueError, match="normalizer and points must broadcast"):
    C.decode_ltrb(b, p, np.ones((4,)))
  with pytest.raises(TypeError, match="normalizer must have a numeric dtype"):
    C.encode_ltrb(b, p, np.ones((3,), bool))
