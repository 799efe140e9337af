"""Tests for jaxvision.ops.unpool against PyTorch fixtures (tests/fixtures/gen_unpool_losses.py)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxvision.ops import unpool

# The lecture's example (unpooling slides): 4x4 input, 2x2 max pooling, then max unpooling.
_SLIDE_X = np.array([[1, 2, 6, 3], [3, 5, 2, 1], [1, 2, 2, 1], [7, 3, 4, 8]], np.float32)

_POOL_CASES = [
    ("k2s2", (2, 2), (2, 2), (0, 0)),
    ("k3s2p1", (3, 3), (2, 2), (1, 1)),
    ("k32s21p10", (3, 2), (2, 1), (1, 0)),
]


# ------------------------------------------------------------------------------------------------
# Max pooling with indices / max unpooling
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name,window,stride,padding", _POOL_CASES)
def test_max_pool_with_argmax_matches_torch(fixture_npz, name, window, stride, padding):
  f = fixture_npz("unpool_maxpool")
  x = f[f"{name}_x"]  # small integers: many ties, so PyTorch's first-maximum rule is exercised

  def pool(x):
    return unpool.max_pool_with_argmax(x, window, stride, padding)

  pooled, indices = jax.jit(pool)(x)
  assert indices.dtype == jnp.int32
  np.testing.assert_array_equal(np.asarray(pooled), f[f"{name}_pooled"])
  np.testing.assert_array_equal(np.asarray(indices), f[f"{name}_indices"])
  # Gradient goes to the selected element only (accumulating over overlapping windows).
  _, vjp = jax.vjp(lambda x: pool(x)[0], jnp.asarray(x))
  (gx,) = vjp(jnp.asarray(f[f"{name}_g"]))
  np.testing.assert_allclose(np.asarray(gx), f[f"{name}_grad_x"], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name,window,stride,padding", _POOL_CASES)
def test_max_unpool_matches_torch(fixture_npz, name, window, stride, padding):
  f = fixture_npz("unpool_maxpool")
  hw = f[f"{name}_x"].shape[1:3]
  indices = jnp.asarray(f[f"{name}_indices"])
  unpool_fn = jax.jit(lambda y: unpool.max_unpool(y, indices, hw))
  out = unpool_fn(f[f"{name}_y"])
  np.testing.assert_array_equal(np.asarray(out), f[f"{name}_unpooled"])
  _, vjp = jax.vjp(unpool_fn, jnp.asarray(f[f"{name}_y"]))
  (gy,) = vjp(jnp.asarray(f[f"{name}_g2"]))
  np.testing.assert_allclose(np.asarray(gy), f[f"{name}_grad_y"], rtol=1e-6, atol=1e-6)


def test_max_pool_and_unpool_slide_example():
  x = _SLIDE_X[None, :, :, None]
  pooled, indices = unpool.max_pool_with_argmax(x, 2, 2)
  np.testing.assert_array_equal(pooled[0, :, :, 0], [[5, 6], [7, 8]])
  np.testing.assert_array_equal(indices[0, :, :, 0], [[1 * 4 + 1, 0 * 4 + 2], [3 * 4 + 0, 3 * 4 + 3]])
  rest = jnp.array([[1.0, 2.0], [3.0, 4.0]])[None, :, :, None]
  out = unpool.max_unpool(rest, indices, (4, 4))
  want = [[0, 0, 2, 0], [0, 1, 0, 0], [0, 0, 0, 0], [3, 0, 0, 4]]
  np.testing.assert_array_equal(out[0, :, :, 0], want)


def test_max_pool_unbatched_vmap_and_ties():
  # Unbatched input and vmap agree with the batched call; an all-equal window picks its first
  # element; -inf padding never wins even when every real value is negative.
  x = -np.ones((4, 4, 2), np.float32)
  p, i = unpool.max_pool_with_argmax(x, 3, 2, 1)
  assert p.shape == (2, 2, 2) and i.shape == (2, 2, 2)
  np.testing.assert_array_equal(p, -1.0)
  np.testing.assert_array_equal(i[..., 0], [[0, 1], [4, 5]])  # first real element of each window
  pb, ib = jax.vmap(lambda a: unpool.max_pool_with_argmax(a, 3, 2, 1))(x[None])
  np.testing.assert_array_equal(pb[0], p)
  np.testing.assert_array_equal(ib[0], i)
  # Integer inputs work too (value pooling of e.g. label maps).
  pi, ii = unpool.max_pool_with_argmax(_SLIDE_X.astype(np.int32)[:, :, None], 2)
  np.testing.assert_array_equal(pi[..., 0], [[5, 6], [7, 8]])
  # Out-of-range indices (e.g. -1 padding) are dropped, never wrapped.
  out = unpool.max_unpool(jnp.ones((1, 1, 2, 1)), jnp.array([[[[-1], [16]]]], jnp.int32), (4, 4))
  np.testing.assert_array_equal(out, 0.0)


# ------------------------------------------------------------------------------------------------
# Nearest / bed of nails / sub-pixel
# ------------------------------------------------------------------------------------------------


def test_nearest_and_bed_of_nails_slide_example():
  x = np.array([[1, 2], [3, 4]], np.float32)[:, :, None]
  nn = unpool.nearest_unpool(x, 2)[..., 0]
  np.testing.assert_array_equal(nn, [[1, 1, 2, 2], [1, 1, 2, 2], [3, 3, 4, 4], [3, 3, 4, 4]])
  bon = unpool.bed_of_nails_unpool(x, 2)[..., 0]
  np.testing.assert_array_equal(bon, [[1, 0, 2, 0], [0, 0, 0, 0], [3, 0, 4, 0], [0, 0, 0, 0]])


def test_nearest_and_bed_of_nails_rectangular_factor():
  x = np.random.default_rng(0).standard_normal((2, 3, 4, 5)).astype(np.float32)
  nn = np.asarray(unpool.nearest_unpool(x, (2, 3)))
  np.testing.assert_array_equal(nn, x.repeat(2, axis=1).repeat(3, axis=2))
  np.testing.assert_array_equal(nn, unpool.resize_nearest(x, (6, 12)))
  bon = np.asarray(unpool.bed_of_nails_unpool(x, (2, 3)))
  want = np.zeros((2, 6, 12, 5), np.float32)
  want[:, ::2, ::3] = x
  np.testing.assert_array_equal(bon, want)
  # Bed of nails is max unpooling with every index at the window's top-left position.
  rows = np.arange(3)[:, None] * 2
  cols = np.arange(4)[None, :] * 3
  idx = np.broadcast_to((rows * 12 + cols)[None, :, :, None], x.shape).astype(np.int32)
  np.testing.assert_array_equal(unpool.max_unpool(x, idx, (6, 12)), want)


@pytest.mark.parametrize("r", [2, 3])
def test_pixel_shuffle_matches_torch(fixture_npz, r):
  f = fixture_npz("unpool_shuffle")
  np.testing.assert_array_equal(unpool.pixel_shuffle(f[f"r{r}_x"], r), f[f"r{r}_shuffled"])
  np.testing.assert_array_equal(unpool.pixel_unshuffle(f[f"r{r}_z"], r), f[f"r{r}_unshuffled"])
  np.testing.assert_array_equal(
      unpool.pixel_unshuffle(unpool.pixel_shuffle(f[f"r{r}_x"], r), r), f[f"r{r}_x"])
  # Unbatched.
  np.testing.assert_array_equal(unpool.pixel_shuffle(f[f"r{r}_x"][0], r), f[f"r{r}_shuffled"][0])


# ------------------------------------------------------------------------------------------------
# Resizing
# ------------------------------------------------------------------------------------------------

_SIZES = [(11, 13), (3, 4), (10, 14), (9, 3), (1, 1), (5, 7), (2, 17)]


@pytest.mark.parametrize("align_corners", [False, True])
def test_resize_bilinear_matches_torch(fixture_npz, align_corners):
  f = fixture_npz("unpool_resize")
  x = jnp.asarray(f["x"])
  worst = 0.0
  for oh, ow in _SIZES:  # up, down, mixed, identity, 1x1
    key = f"bilinear_{oh}x{ow}_ac{int(align_corners)}"
    y, vjp = jax.vjp(lambda x: unpool.resize_bilinear(x, (oh, ow), align_corners=align_corners), x)
    np.testing.assert_allclose(np.asarray(y), f[f"{key}_y"], rtol=1e-5, atol=1e-6, err_msg=key)
    (gx,) = vjp(jnp.asarray(f[f"{key}_g"]))
    np.testing.assert_allclose(np.asarray(gx), f[f"{key}_grad_x"], rtol=1e-5, atol=1e-5, err_msg=key)
    worst = max(worst, float(np.max(np.abs(np.asarray(y) - f[f"{key}_y"]))))
  assert worst < 1e-5
  # Downsampling really is torch's (no antialiasing), i.e. not jax.image.resize.
  ref = jax.image.resize(x, (2, 3, 4, 3), method="bilinear")
  assert not np.allclose(ref, f["bilinear_3x4_ac0_y"], atol=1e-3)
  key = f"bilinear_x2_7x49_ac{int(align_corners)}_y"
  np.testing.assert_allclose(
      unpool.resize_bilinear(f["x2"][0], (7, 49), align_corners=align_corners), f[key][0],
      rtol=1e-5, atol=1e-6)


def test_resize_nearest_matches_torch(fixture_npz):
  f = fixture_npz("unpool_resize")
  for oh, ow in _SIZES:
    np.testing.assert_array_equal(unpool.resize_nearest(f["x"], (oh, ow)), f[f"nearest_{oh}x{ow}_y"])
    lab = unpool.resize_nearest(f["labels"], (oh, ow))
    assert lab.dtype == jnp.int32
    np.testing.assert_array_equal(lab, f[f"nearest_{oh}x{ow}_labels"])
  # A size where floor(dst * in / out) must be evaluated in float32 as PyTorch does.
  np.testing.assert_array_equal(unpool.resize_nearest(f["x2"], (7, 49)), f["nearest_x2_7x49_y"])


def test_resize_jit_and_unbatched(fixture_npz):
  f = fixture_npz("unpool_resize")
  y = jax.jit(lambda x: unpool.resize_bilinear(x, (11, 13), align_corners=False))(f["x"][1])
  np.testing.assert_allclose(y, f["bilinear_11x13_ac0_y"][1], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("factor", [2, 4])
def test_bilinear_kernel_conv_transpose_is_bilinear_upsampling(factor):
  k = 2 * factor - factor % 2
  kernel = unpool.bilinear_kernel(k, 3)
  assert kernel.shape == (k, k, 3, 3)
  x = jnp.asarray(np.random.default_rng(1).standard_normal((1, 5, 6, 3)).astype(np.float32))
  full = jax.lax.conv_transpose(x, kernel, (factor, factor), "VALID",
                                dimension_numbers=("NHWC", "HWIO", "NHWC"))
  pad = (k - factor) // 2  # Caffe/PyTorch padding: crop this much on each side
  y = full[:, pad:pad + 5 * factor, pad:pad + 6 * factor]
  ref = unpool.resize_bilinear(x, (5 * factor, 6 * factor), align_corners=False)
  inner = (slice(None), slice(factor, -factor), slice(factor, -factor))
  np.testing.assert_allclose(y[inner], ref[inner], rtol=1e-5, atol=1e-6)
  # It is diagonal over channels and matches FCN's upsample_filt for k = 4.
  np.testing.assert_array_equal(kernel[:, :, 0, 1], 0.0)
  if factor == 2:
    taps = np.array([0.25, 0.75, 0.75, 0.25])
    np.testing.assert_allclose(kernel[:, :, 1, 1], np.outer(taps, taps))


# ------------------------------------------------------------------------------------------------
# Bad input
# ------------------------------------------------------------------------------------------------


def test_bad_inputs_raise_naming_the_argument():
  x = jnp.zeros((1, 4, 4, 2))
  with pytest.raises(ValueError, match="x must have rank 3 or 4"):
    unpool.max_pool_with_argmax(jnp.zeros((4, 4)))
  with pytest.raises(TypeError, match="x must be an array"):
    unpool.nearest_unpool(3.0, 2)
  with pytest.raises(TypeError, match="x must have a numeric dtype"):
    unpool.max_pool_with_argmax(jnp.zeros((1, 4, 4, 1), bool))
  with pytest.raises(TypeError, match="x must have a float dtype"):
    unpool.resize_bilinear(jnp.zeros((4, 4, 1), jnp.int32), (8, 8), align_corners=False)
  with pytest.raises(TypeError, match="align_corners"):
    unpool.resize_bilinear(x, (8, 8), align_corners=None)
  with pytest.raises(ValueError, match="out_hw"):
    unpool.resize_nearest(x, 8)
  with pytest.raises(ValueError, match=r"out_hw\[1\] must be > 0"):
    unpool.resize_nearest(x, (8, 0))
  with pytest.raises(TypeError, match="factor must be a Python int"):
    unpool.bed_of_nails_unpool(x, 2.0)
  with pytest.raises(ValueError, match="factor must be > 0"):
    unpool.nearest_unpool(x, 0)
  with pytest.raises(ValueError, match="divisible by factor"):
    unpool.pixel_shuffle(x, 2)
  with pytest.raises(ValueError, match="divisible by factor"):
    unpool.pixel_unshuffle(jnp.zeros((1, 5, 4, 1)), 2)
  with pytest.raises(ValueError, match="padding must be at most half the window"):
    unpool.max_pool_with_argmax(x, 2, 2, 2)
  with pytest.raises(ValueError, match="padding must be 'VALID'"):
    unpool.max_pool_with_argmax(x, 2, 2, "SAME")
  with pytest.raises(ValueError, match="smaller than the window"):
    unpool.max_pool_with_argmax(x, 5)
  with pytest.raises(TypeError, match="indices must have a int dtype"):
    unpool.max_unpool(jnp.zeros((1, 2, 2, 2)), jnp.zeros((1, 2, 2, 2)), (4, 4))
  with pytest.raises(ValueError, match="indices must have the shape of x"):
    unpool.max_unpool(jnp.zeros((1, 2, 2, 2)), jnp.zeros((1, 2, 2, 1), jnp.int32), (4, 4))
  with pytest.raises(ValueError, match="output_hw"):
    unpool.max_unpool(jnp.zeros((1, 2, 2, 2)), jnp.zeros((1, 2, 2, 2), jnp.int32), 4)
  with pytest.raises(ValueError, match="kernel_size must be > 0"):
    unpool.bilinear_kernel(0, 3)
