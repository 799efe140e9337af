"""Tests for jaxvision/ops/boxes.py against torchvision fixtures (tests/fixtures/gen_boxes.py).

Fixture ``boxes_ops`` holds 40 x 30 boxes (14 hand-built adversarial ones: identical, touching along an
edge and at a corner, nested, zero-area points and segments, the all-zero padding box, negative and
origin-straddling coordinates, a huge box, sub-pixel shifts; plus seeded random boxes, half of them
snapped to integers so that edges coincide) and torchvision's outputs on them.

The documented difference: where the union is 0 torchvision returns NaN (0 / 0) and jaxvision computes
the IoU term as 0; CIoU additionally gives a finite value for point boxes (``w = h = 0``), where
torchvision's ``atan(0 / 0)`` is NaN. At those entries jaxvision is compared with a float64 NumPy
reference of its own contract.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxvision.ops import boxes as B

PAIRWISE = {
    "iou": B.box_iou,
    "giou": B.generalized_box_iou,
    "diou": B.distance_box_iou,
    "ciou": B.complete_box_iou,
}


def _numpy_reference(b1, b2, kind, eps=1e-7):
  """Slow, obvious float64 reference of jaxvision's contract (IoU term 0 where the union is 0)."""
  b1 = b1.astype(np.float64)[:, None, :]
  b2 = b2.astype(np.float64)[None, :, :]
  area1 = (b1[..., 2] - b1[..., 0]) * (b1[..., 3] - b1[..., 1])
  area2 = (b2[..., 2] - b2[..., 0]) * (b2[..., 3] - b2[..., 1])
  iw = np.clip(np.minimum(b1[..., 2], b2[..., 2]) - np.maximum(b1[..., 0], b2[..., 0]), 0, None)
  ih = np.clip(np.minimum(b1[..., 3], b2[..., 3]) - np.maximum(b1[..., 1], b2[..., 1]), 0, None)
  inter = iw * ih
  union = area1 + area2 - inter
  with np.errstate(divide="ignore", invalid="ignore"):
    iou = np.where(union > 0, inter / union, 0.0)
  if kind == "iou":
    return iou
  cw = np.maximum(b1[..., 2], b2[..., 2]) - np.minimum(b1[..., 0], b2[..., 0])
  ch = np.maximum(b1[..., 3], b2[..., 3]) - np.minimum(b1[..., 1], b2[..., 1])
  if kind == "giou":
    area_c = cw * ch
    with np.errstate(divide="ignore", invalid="ignore"):
      return iou - np.where(area_c > 0, (area_c - union) / area_c, 0.0)
  rho2 = (((b1[..., 0] + b1[..., 2]) - (b2[..., 0] + b2[..., 2])) / 2)**2 + (
      ((b1[..., 1] + b1[..., 3]) - (b2[..., 1] + b2[..., 3])) / 2)**2
  diou = iou - rho2 / (cw**2 + ch**2 + eps)
  if kind == "diou":
    return diou
  w1, h1 = b1[..., 2] - b1[..., 0], b1[..., 3] - b1[..., 1]
  w2, h2 = b2[..., 2] - b2[..., 0], b2[..., 3] - b2[..., 1]
  with np.errstate(divide="ignore", invalid="ignore"):  # atan(w / 0) = +-pi / 2; atan(0 / 0) := 0
    a1 = np.where((w1 == 0) & (h1 == 0), 0.0, np.arctan(w1 / h1))
    a2 = np.where((w2 == 0) & (h2 == 0), 0.0, np.arctan(w2 / h2))
  v = 4 / np.pi**2 * (a1 - a2)**2
  return diou - v / (1 - iou + v + eps) * v


@pytest.fixture
def fx(fixture_npz):
  return fixture_npz("boxes_ops")


# ------------------------------------------------------------------------------------------------
# Parity with torchvision
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["iou", "giou", "diou", "ciou"])
def test_pairwise_matches_torchvision(fx, kind):
  b1, b2, ref = fx["boxes1"], fx["boxes2"], fx[kind]
  ours = np.asarray(PAIRWISE[kind](b1, b2))
  assert ours.shape == ref.shape == (40, 30)
  assert ours.dtype == np.float32
  assert np.isfinite(ours).all()
  finite = np.isfinite(ref)
  # Where torchvision is defined, equal at fp32 precision (measured: IoU, GIoU, DIoU bit-exact;
  # CIoU max abs error 1.8e-7).
  np.testing.assert_allclose(ours[finite], ref[finite], rtol=1e-5, atol=1e-6)
  # The NaN entries come only from degenerate boxes, and the fixture has some.
  nan_rows, nan_cols = np.nonzero(~finite)
  assert len(nan_rows) > 0
  # Everywhere (incl. torchvision's NaNs) equal to the float64 reference of jaxvision's contract.
  np.testing.assert_allclose(ours, _numpy_reference(b1, b2, kind), rtol=1e-5, atol=1e-6)


def test_iou_is_zero_where_union_is_zero(fx):
  b1, b2 = fx["boxes1"], fx["boxes2"]
  nan = np.isnan(fx["iou"])
  ours = np.asarray(B.box_iou(b1, b2))
  assert nan.sum() >= 4  # point/point, padding/padding, segment/segment pairs
  np.testing.assert_array_equal(ours[nan], 0.0)
  # The padding box [0, 0, 0, 0] never overlaps anything, itself included.
  pad1 = np.nonzero((b1 == 0).all(1))[0]
  assert len(pad1) == 1
  np.testing.assert_array_equal(ours[pad1], 0.0)


def test_adversarial_values(fx):
  b1, b2 = fx["boxes1"], fx["boxes2"]
  iou = np.asarray(B.box_iou(b1, b2))
  giou = np.asarray(B.generalized_box_iou(b1, b2))
  assert iou[0, 1] == 1.0 and giou[0, 1] == 1.0  # identical boxes
  assert iou[0, 2] == 0.0 and giou[0, 2] == 0.0  # touching along an edge: enclosing box = union
  assert iou[0, 3] == 0.0 and giou[0, 3] == pytest.approx(-0.5)  # touching at a corner
  assert iou[0, 4] == pytest.approx(0.36)  # nested 6x6 in 10x10
  assert iou[0, 5] == 0.0  # point inside a box: union = area of the box, intersection 0


def test_box_area_matches_torchvision(fx):
  np.testing.assert_array_equal(np.asarray(B.box_area(fx["boxes1"])), fx["area1"])


@pytest.mark.parametrize("in_fmt", ["xyxy", "xywh", "cxcywh"])
@pytest.mark.parametrize("out_fmt", ["xyxy", "xywh", "cxcywh"])
def test_convert_matches_torchvision(fx, in_fmt, out_fmt):
  ours = np.asarray(B.convert_boxes(fx["boxes1"], in_fmt, out_fmt))
  np.testing.assert_allclose(ours, fx[f"convert_{in_fmt}_{out_fmt}"], rtol=1e-6, atol=1e-5)


def test_convert_yxyx():
  b = np.array([[1.0, 2.0, 3.0, 4.0]], np.float32)
  np.testing.assert_array_equal(B.convert_boxes(b, "xyxy", "yxyx"), [[2.0, 1.0, 4.0, 3.0]])
  np.testing.assert_array_equal(B.convert_boxes(b, "yxyx", "cxcywh"), [[3.0, 2.0, 2.0, 2.0]])


@pytest.mark.parametrize("name,hw", [("clip_37_53", (37, 53)), ("clip_100_7", (100, 7))])
def test_clip_matches_torchvision(fx, name, hw):
  np.testing.assert_array_equal(np.asarray(B.clip_boxes(fx["boxes1"], hw)), fx[name])
  # Also with a traced image size (one image at a time, vmapped over a batch of sizes).
  hws = jnp.array([hw, hw], jnp.int32)
  out = jax.jit(jax.vmap(B.clip_boxes, in_axes=(None, 0)))(fx["boxes1"], hws)
  np.testing.assert_array_equal(np.asarray(out[1]), fx[name])


# ------------------------------------------------------------------------------------------------
# Elementwise IoU, transforms, round trips
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["iou", "giou", "diou", "ciou"])
def test_elementwise_equals_pairwise_diagonal(fx, kind):
  b1, b2 = fx["boxes1"][:30], fx["boxes2"]
  pair = np.asarray(PAIRWISE[kind](b1, b2))
  elem = np.asarray(B.elementwise_box_iou(b1, b2, kind))
  np.testing.assert_allclose(elem, np.diagonal(pair), rtol=1e-6, atol=1e-6)
  # Leading batch dims and vmap give the same numbers.
  elem2 = jax.vmap(lambda a, b: B.elementwise_box_iou(a, b, kind))(b1.reshape(5, 6, 4), b2.reshape(5, 6, 4))
  np.testing.assert_allclose(np.asarray(elem2).reshape(-1), elem, rtol=1e-6, atol=1e-7)


def test_pairwise_vmaps_over_batch(fx):
  b1 = np.stack([fx["boxes1"][:8], fx["boxes1"][8:16]])
  b2 = np.stack([fx["boxes2"][:5], fx["boxes2"][5:10]])
  out = jax.jit(jax.vmap(B.box_iou))(b1, b2)
  np.testing.assert_array_equal(np.asarray(out[1]), np.nan_to_num(fx["iou"][8:16, 5:10], nan=0.0))


def test_empty_inputs():
  e = np.zeros((0, 4), np.float32)
  b = np.array([[0, 0, 1, 1]], np.float32)
  for fn in PAIRWISE.values():  # shapes only (eval_shape: no compilation)
    assert jax.eval_shape(fn, e, b).shape == (0, 1)
    assert jax.eval_shape(fn, b, e).shape == (1, 0)
  assert jax.eval_shape(lambda x: B.elementwise_box_iou(x, x, "ciou"), e).shape == (0,)
  assert B.box_iou(e, b).shape == (0, 1)
  assert B.box_area(e).shape == (0,)


def test_flip_round_trip(fx):
  b = fx["boxes1"][:14]  # adversarial boxes, small values: flips are exact
  hflip = B.flip_boxes_horizontal(b, 53.0)
  np.testing.assert_array_equal(B.flip_boxes_horizontal(hflip, 53.0), b)
  np.testing.assert_array_equal(B.flip_boxes_vertical(B.flip_boxes_vertical(b, 37.0), 37.0), b)
  np.testing.assert_array_equal(B.box_area(hflip), B.box_area(b))  # x1 <= x2 preserved
  assert (np.asarray(hflip)[:, 2] >= np.asarray(hflip)[:, 0]).all()
  np.testing.assert_array_equal(hflip[0], [43.0, 0.0, 53.0, 10.0])
  np.testing.assert_array_equal(B.flip_boxes_vertical(b[:1], 37.0)[0], [0.0, 27.0, 10.0, 37.0])


def test_scale_translate_round_trip(fx):
  b = fx["boxes1"]
  np.testing.assert_allclose(B.scale_boxes(B.scale_boxes(b, (2.0, 4.0)), (0.5, 0.25)), b, rtol=0, atol=0)
  np.testing.assert_allclose(B.scale_boxes(b, 3.0), 3.0 * b, rtol=1e-7)
  s = B.scale_boxes(b[:1], (2.0, 3.0))  # (sy, sx)
  np.testing.assert_allclose(s[0], b[0] * np.array([3.0, 2.0, 3.0, 2.0]), rtol=1e-7)
  t = B.translate_boxes(b, (5.0, -7.0))  # (dy, dx)
  np.testing.assert_allclose(t - b, np.broadcast_to([-7.0, 5.0, -7.0, 5.0], b.shape), atol=1e-4)
  np.testing.assert_allclose(B.translate_boxes(t, (-5.0, 7.0)), b, atol=1e-4)
  # IoU is invariant under translation and (uniform) scaling.
  np.testing.assert_allclose(B.box_iou(B.scale_boxes(t, 2.0), B.scale_boxes(t, 2.0)),
                             B.box_iou(b, b), atol=1e-5)


@pytest.mark.parametrize("fmt", ["xywh", "cxcywh", "yxyx"])
def test_convert_round_trip(fx, fmt):
  b = fx["boxes1"]
  np.testing.assert_allclose(B.convert_boxes(B.convert_boxes(b, "xyxy", fmt), fmt, "xyxy"), b, atol=1e-5)


def test_normalize_round_trip(fx):
  b = fx["boxes1"]
  n = B.normalize_boxes(b, (37, 53))
  np.testing.assert_allclose(n, b / np.array([53, 37, 53, 37], np.float32), rtol=1e-6)
  np.testing.assert_allclose(B.denormalize_boxes(n, jnp.array([37, 53])), b, rtol=1e-6, atol=1e-5)


def test_ioa_and_valid():
  a = np.array([[0, 0, 10, 10], [0, 0, 0, 0]], np.float32)
  b = np.array([[5, 5, 15, 15], [2, 2, 4, 4], [3, 3, 3, 3]], np.float32)
  np.testing.assert_allclose(B.box_ioa(a, b), [[0.25, 1.0, 0.0], [0.0, 0.0, 0.0]])
  np.testing.assert_array_equal(B.is_valid_box(b), [True, True, False])
  np.testing.assert_array_equal(B.is_valid_box(b, min_size=2.0), [True, False, False])


# ------------------------------------------------------------------------------------------------
# Gradients
# ------------------------------------------------------------------------------------------------


DEGENERATE_PAIRS = np.array(
    [
        # boxes1                boxes2
        [[0, 0, 0, 0], [0, 0, 0, 0]],  # padding vs padding (union 0)
        [[5, 5, 5, 5], [5, 5, 5, 5]],  # identical points
        [[5, 5, 5, 5], [0, 0, 10, 10]],  # point inside a box
        [[0, 0, 0, 10], [0, 0, 10, 0]],  # two segments (union 0, enclosing area > 0)
        [[0, 0, 10, 10], [10, 0, 20, 10]],  # touching
        [[0, 0, 10, 10], [0, 0, 10, 10]],  # identical
        [[0, 0, 10, 10], [30, 30, 40, 40]],  # disjoint
        [[3, 3, 3, 9], [0, 0, 10, 10]],  # zero-width vs box (aspect angle pi/2 vs pi/4)
    ],
    np.float32)


@pytest.mark.parametrize("kind", ["iou", "giou", "diou", "ciou"])
def test_elementwise_gradients_finite_on_degenerate_pairs(kind):
  b1, b2 = DEGENERATE_PAIRS[:, 0], DEGENERATE_PAIRS[:, 1]

  def loss(p, t):
    return jnp.sum(1.0 - B.elementwise_box_iou(p, t, kind))

  g1, g2 = jax.jit(jax.grad(loss, argnums=(0, 1)))(b1, b2)
  assert np.isfinite(np.asarray(g1)).all() and np.isfinite(np.asarray(g2)).all()
  assert np.abs(np.asarray(g1)).max() < 1e3  # finite and of a sane size, not ~1 / eps
  val = np.asarray(B.elementwise_box_iou(b1, b2, kind))
  assert np.isfinite(val).all()


def test_ciou_inverted_boxes_follow_atan():
  # Raw predictions can be inverted (x2 < x1 or y2 < y1): the aspect term keeps atan(w / h), as
  # torchvision, rather than atan2's other branch.
  p = np.array([[0, 10, 6, 2], [8, 0, 2, 5], [0, 0, 4, 0]], np.float32)
  t = np.array([[0, 0, 4, 9], [1, 1, 5, 3], [0, 0, 3, 3]], np.float32)
  ours = np.asarray(B.elementwise_box_iou(p, t, "ciou"))
  np.testing.assert_allclose(ours, np.diagonal(_numpy_reference(p, t, "ciou")), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(np.asarray(B.complete_box_iou(p, t)), _numpy_reference(p, t, "ciou"),
                             rtol=1e-5, atol=1e-6)


def test_ciou_alpha_has_no_gradient():
  # d/dp of CIoU equals the gradient of the same formula with alpha frozen at its value.
  p = jnp.array([[1.0, 2.0, 7.0, 5.0]])
  t = jnp.array([[0.0, 0.0, 4.0, 9.0]])
  g_pair = jax.jit(jax.grad(lambda p: B.complete_box_iou(p, t)[0, 0]))(p)
  g_elem = jax.jit(jax.grad(lambda p: B.elementwise_box_iou(p, t, "ciou")[0]))(p)
  np.testing.assert_allclose(g_pair, g_elem, rtol=1e-5, atol=1e-7)
  iou = B.box_iou(p, t)[0, 0]
  w1, h1, w2, h2 = 6.0, 3.0, 4.0, 9.0
  v = 4 / np.pi**2 * (np.arctan(w1 / h1) - np.arctan(w2 / h2))**2
  a = v / (1 - float(iou) + v + 1e-7)

  def frozen(p):
    ww, hh = p[0, 2] - p[0, 0], p[0, 3] - p[0, 1]
    vv = 4 / jnp.pi**2 * (jnp.arctan(ww / hh) - np.arctan(w2 / h2))**2
    return B.distance_box_iou(p, t)[0, 0] - a * vv

  np.testing.assert_allclose(g_pair, jax.jit(jax.grad(frozen))(p), rtol=1e-4, atol=1e-6)


# ------------------------------------------------------------------------------------------------
# Bad input
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fn", list(PAIRWISE.values()) + [B.box_ioa])
def test_pairwise_bad_input(fn):
  good = np.zeros((3, 4), np.float32)
  with pytest.raises(ValueError, match="boxes1 must have rank 2"):
    fn(np.zeros((4,), np.float32), good)
  with pytest.raises(ValueError, match="boxes2 must have rank 2"):
    fn(good, np.zeros((2, 3, 4), np.float32))
  with pytest.raises(ValueError, match="boxes2 must have last dimension 4"):
    fn(good, np.zeros((3, 5), np.float32))
  with pytest.raises(TypeError, match="boxes1 must be an array"):
    fn(1.0, good)
  with pytest.raises(TypeError, match="boxes1 must have a numeric dtype"):
    fn(np.zeros((3, 4), bool), good)


@pytest.mark.parametrize("fn", [B.box_area, B.xyxy_to_cxcywh, B.cxcywh_to_xyxy, B.xyxy_to_xywh,
                                B.xywh_to_xyxy, B.yxyx_to_xyxy, B.is_valid_box])
def test_unary_bad_input(fn):
  with pytest.raises(ValueError, match="boxes must have last dimension 4"):
    fn(np.zeros((3, 3), np.float32))
  with pytest.raises(TypeError, match="boxes must be an array"):
    fn(3.0)
  with pytest.raises(TypeError, match="boxes must be an array"):
    fn(None)


def test_other_bad_input():
  b = np.zeros((2, 4), np.float32)
  with pytest.raises(ValueError, match="in_fmt"):
    B.convert_boxes(b, "xyzw", "xyxy")
  with pytest.raises(ValueError, match="out_fmt"):
    B.convert_boxes(b, "xyxy", "ltrb")
  with pytest.raises(ValueError, match="image_hw"):
    B.clip_boxes(b, (3, 4, 5))
  with pytest.raises(ValueError, match="image_hw"):
    B.normalize_boxes(b, 10)
  with pytest.raises(ValueError, match="boxes must have last dimension 4"):
    B.clip_boxes(np.zeros((2, 2)), (3, 4))
  with pytest.raises(ValueError, match="kind"):
    B.elementwise_box_iou(b, b, "eiou")
  with pytest.raises(ValueError, match="same shape"):
    B.elementwise_box_iou(b, b[:1], "iou")
  with pytest.raises(ValueError, match="boxes1 must have last dimension 4"):
    B.elementwise_box_iou(np.zeros((2, 3)), np.zeros((2, 3)), "iou")
  with pytest.raises(TypeError, match="boxes1 must be an array"):
    B.elementwise_box_iou(0.0, b, "iou")
