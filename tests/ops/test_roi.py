"""Tests for ``jaxvision.ops.roi``: RoIAlign, RoIPool, multi-level RoIAlign, spatial pyramid pooling.

Parity with torchvision comes from fixtures written by ``tests/fixtures/gen_roi.py`` (outputs and the
feature gradient for a fixed random cotangent); SPP is checked against a slow NumPy reference; the
hand-worked cases use a 5x5 image whose values are linear in (y, x), so bilinear interpolation is
exact and every expected number can be worked out on paper.
"""

from __future__ import annotations

import functools
import math
import resource

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxvision.ops import roi as roi_lib
from jaxvision.ops.roi import (assign_fpn_levels, multilevel_roi_align, roi_align, roi_pool,
                               spatial_pyramid_pool)

TOL = dict(rtol=1e-5, atol=1e-5)
NUM_ALIGN_CASES = 9
NUM_POOL_CASES = 5
LEVELS = (2, 3, 4, 5)


def _jit(fn, *args):
  """Runs ``fn(*args)`` as one jitted program (cheap to compile, cached across runs)."""
  return jax.jit(fn)(*args)


def _out_and_grad(fn, features, cot):
  """``fn(features)`` and the vjp of ``cot``, in one jitted program."""

  @jax.jit
  def run(x, c):
    out, vjp = jax.vjp(fn, x)
    return out, vjp(c)[0]

  return run(features, cot)


# ------------------------------------------------------------------------------------------------
# Hand-worked values
# ------------------------------------------------------------------------------------------------

# v[y, x] = 5 y + x + 1 on a 5x5 map (values 1..25). v is linear, so bilinear sampling gives
# v(y, x) = 5 y + x + 1 exactly at any interior point.
LINEAR = (5 * np.arange(5)[:, None] + np.arange(5)[None, :] + 1).astype(np.float32)[None, :, :, None]


def _align1(box, output_size, sampling_ratio, aligned):
  fn = functools.partial(roi_align, output_size=output_size, spatial_scale=1.0,
                         sampling_ratio=sampling_ratio, aligned=aligned)
  out = _jit(fn, LINEAR, np.array([box], np.float32), np.array([0], np.int32))
  return np.asarray(out)[0, :, :, 0]


def test_roi_align_hand_worked_interior():
  # Box [1, 1, 3, 3], 2x2 bins of 1 px, one sample per bin at the bin centre.
  # aligned=False: centres at 1.5 and 2.5 -> v = 5 * 1.5 + 1.5 + 1 = 10, 11 / 15, 16.
  np.testing.assert_allclose(_align1([1, 1, 3, 3], 2, 1, False), [[10, 11], [15, 16]], **TOL)
  # aligned=True shifts by -0.5 px: centres at 1 and 2 -> exact pixels v[1,1]=7, 8 / 12, 13.
  np.testing.assert_allclose(_align1([1, 1, 3, 3], 2, 1, True), [[7, 8], [12, 13]], **TOL)
  # Tiny box, aligned=False: width 0.2 is raised to 1, so the single sample sits at 2.2 + 0.5 = 2.7:
  # v = 5 * 2.7 + 2.7 + 1 = 17.2.
  np.testing.assert_allclose(_align1([2.2, 2.2, 2.4, 2.4], 1, 1, False), [[17.2]], **TOL)


def test_roi_align_hand_worked_border_rule():
  # Box [3, 3, 6, 6], one 3x3 bin, 2x2 samples at 3 + 0.75 = 3.75 and 3 + 2.25 = 5.25 per axis.
  # 5.25 > H = 5: those samples contribute 0 but still count. Only (3.75, 3.75) remains:
  # v = 5 * 3.75 + 3.75 + 1 = 23.5, divided by 4 samples = 5.875.
  np.testing.assert_allclose(_align1([3, 3, 6, 6], 1, 2, False), [[5.875]], **TOL)
  # Box [3, 3, 5, 5]: samples at 3.5 and 4.5; 4.5 is in [H - 1, H] and clamps to row/col 4:
  # v(3.5, 3.5) = 22, v(3.5, 4) = 22.5, v(4, 3.5) = 24.5, v(4, 4) = 25 -> mean 94 / 4 = 23.5.
  np.testing.assert_allclose(_align1([3, 3, 5, 5], 1, 2, False), [[23.5]], **TOL)
  # Box [-2, -2, 0, 0]: samples at -1.5 (< -1: contributes 0) and -0.5 (in [-1, 0]: clamps to 0).
  # Only (-0.5, -0.5) -> v[0, 0] = 1 contributes: 1 / 4 = 0.25.
  np.testing.assert_allclose(_align1([-2, -2, 0, 0], 1, 2, False), [[0.25]], **TOL)


def test_roi_align_hand_worked_gradient():
  # d out / d v for box [3, 3, 6, 6] (the 5.875 case): only the sample at (3.75, 3.75) is valid; it
  # reads rows/cols 3, 4 with weights 0.25 / 0.75 each, and the bin divides by 4 samples.
  loss = lambda v: roi_align(v, jnp.array([[3.0, 3, 6, 6]]), jnp.array([0]), output_size=1,
                             sampling_ratio=2).sum()
  grad = _jit(jax.grad(loss), LINEAR)
  want = np.zeros((5, 5), np.float32)
  want[3:5, 3:5] = np.outer([0.25, 0.75], [0.25, 0.75]) / 4
  np.testing.assert_allclose(np.asarray(grad)[0, :, :, 0], want, **TOL)


def test_roi_pool_and_spp_hand_worked():
  # Box [1, 1, 3, 3] at scale 1: cells 1..3 inclusive, e = 3, 2 bins of 1.5 cells:
  # bin 0 = [floor(0), ceil(1.5)) = [0, 2) -> cells 1, 2; bin 1 = [floor(1.5), ceil(3)) = [1, 3) ->
  # cells 2, 3. Maxima (v grows with y and x): v[2, 2] = 13, v[2, 3] = 14, v[3, 2] = 18, v[3, 3] = 19.
  boxes = np.array([[1, 1, 3, 3], [0.5, 0.5, 2.5, 2.5]], np.float32)
  # The second box's ends are x.5: C's round() gives 1 and 3 (half away from zero), so it pools the
  # same cells; numpy/jnp round-half-to-even would give 0 and 2.
  out = np.asarray(_jit(functools.partial(roi_pool, output_size=2), LINEAR, boxes, np.array([0, 0])))
  out = out[..., 0]
  np.testing.assert_array_equal(out, [[[13, 14], [18, 19]]] * 2)
  # SPP with bins (1, 2): the 1x1 level is the max over cells 1..3 = v[3, 3] = 19.
  spp = _jit(functools.partial(spatial_pyramid_pool, bins=(1, 2)), LINEAR, boxes[:1], np.array([0]))
  np.testing.assert_array_equal(np.asarray(spp), [[19, 13, 14, 18, 19]])
  spp_avg = _jit(functools.partial(spatial_pyramid_pool, bins=(1,), pool="avg"), LINEAR, boxes[:1],
                 np.array([0]))
  np.testing.assert_allclose(np.asarray(spp_avg), [[13.0]], **TOL)  # mean of v over cells 1..3 = v[2, 2]


# ------------------------------------------------------------------------------------------------
# torchvision parity
# ------------------------------------------------------------------------------------------------


def _align_case(d, i):
  oh, ow, scale, sr, aligned, maxgrid = d[f"cfg_{i}"]
  kwargs = dict(output_size=(int(oh), int(ow)), spatial_scale=float(scale), sampling_ratio=int(sr),
                aligned=bool(aligned), max_sampling_ratio=int(maxgrid) if sr <= 0 else None)
  return d[str(d[f"fname_{i}"])], d[f"boxes_{i}"], d[f"idx_{i}"], kwargs


def test_fixture_case_counts(fixture_npz):
  assert int(fixture_npz("roi_align")["num_cases"]) == NUM_ALIGN_CASES
  assert int(fixture_npz("roi_pool")["num_cases"]) == NUM_POOL_CASES


@pytest.mark.parametrize("i", range(NUM_ALIGN_CASES))
def test_roi_align_matches_torchvision(fixture_npz, i):
  # Cases (gen_roi.ALIGN_CASES + 2 thin maps): 7x7 sr 2 aligned F/T at scale 1/2, (3, 5) sr 1,
  # (4, 2) sr 3 aligned at 1/4, adaptive sampling aligned F/T, 14x14 (mask head), 1-row and 1-column
  # maps. Boxes include border-crossing, negative, tiny, zero-size, inverted and huge ones.
  d = fixture_npz("roi_align")
  features, boxes, idx, kwargs = _align_case(d, i)
  out, grad = _out_and_grad(lambda x: roi_align(x, boxes, idx, **kwargs), features, d[f"cot_{i}"])
  assert out.shape == d[f"out_{i}"].shape and out.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(out), d[f"out_{i}"], **TOL)
  np.testing.assert_allclose(np.asarray(grad), d[f"grad_{i}"], **TOL)


def test_roi_align_adaptive_bound_is_static(fixture_npz):
  # Adaptive case 4 needs up to 6 samples per bin side. With a bound of 3, RoIs needing <= 3 still
  # equal torchvision; the others are sampled with 3 and (in general) differ.
  d = fixture_npz("roi_align")
  features, boxes, idx, kwargs = _align_case(d, 4)
  assert kwargs["max_sampling_ratio"] == 6 and not kwargs["aligned"]
  kwargs["max_sampling_ratio"] = 3
  out = np.asarray(jax.jit(lambda b, i: roi_align(features, b, i, **kwargs))(boxes, idx))
  oh, ow = kwargs["output_size"]
  w = np.maximum(boxes[:, 2] - boxes[:, 0], 1)  # scale 1, aligned=False
  h = np.maximum(boxes[:, 3] - boxes[:, 1], 1)
  need = np.maximum(np.ceil(h / oh), np.ceil(w / ow))
  ok = need <= 3
  assert 0 < ok.sum() < len(ok)
  np.testing.assert_allclose(out[ok], d["out_4"][ok], **TOL)
  assert not np.allclose(out[~ok], d["out_4"][~ok], **TOL)


@pytest.mark.parametrize("i", range(NUM_POOL_CASES))
def test_roi_pool_matches_torchvision(fixture_npz, i):
  # Cases: 7x7 at 1/2, (3, 5) at 1, 2x2 at 1/4, 4x4 at 1/16, and integer-valued features (ties:
  # the gradient must go to the first maximum in row-major order, like torchvision's).
  d = fixture_npz("roi_pool")
  oh, ow, scale = d[f"cfg_{i}"]
  features, boxes, idx = d[str(d[f"fname_{i}"])], d[f"boxes_{i}"], d[f"idx_{i}"]
  fn = lambda x: roi_pool(x, boxes, idx, output_size=(int(oh), int(ow)), spatial_scale=float(scale))
  out, grad = _out_and_grad(fn, features, d[f"cot_{i}"])
  np.testing.assert_allclose(np.asarray(out), d[f"out_{i}"], **TOL)
  np.testing.assert_allclose(np.asarray(grad), d[f"grad_{i}"], **TOL)


def test_fpn_levels_match_torchvision_level_mapper(fixture_npz):
  d = fixture_npz("roi_multiscale")
  assign = functools.partial(assign_fpn_levels, k_min=2, k_max=5)
  # Exact boundaries sqrt(area) = 112, 224, 448 -> levels 3, 4, 5 (the eps=1e-6 inside the floor);
  # zero and negative areas -> k_min.
  edge = np.array([[10, 10, 122, 122], [0, 0, 224, 224], [-100, -50, 348, 398], [0, 0, 0, 0],
                   [5, 0, 0, 5]], np.float32)
  levels = np.asarray(_jit(assign, np.concatenate([d["boxes"], edge])))
  np.testing.assert_array_equal(levels[:-5], d["levels"])
  assert set(np.unique(d["levels"])) == set(LEVELS)  # every level is exercised
  assert d["eps_matters"].sum() >= 3  # boxes that only torchvision's eps keeps on the upper level
  np.testing.assert_array_equal(levels[-5:], [3, 4, 5, 2, 2])


def test_multilevel_roi_align_matches_multiscale_roi_align(fixture_npz):
  d = fixture_npz("roi_multiscale")
  feats = {f"P{l}": d[f"P{l}"] for l in LEVELS}
  fn = lambda f: multilevel_roi_align(f, d["boxes"], d["idx"], levels=LEVELS, output_size=7,
                                      sampling_ratio=2)
  out, grads = _out_and_grad(fn, feats, d["cot_0"])
  np.testing.assert_allclose(np.asarray(out), d["out_0"], **TOL)
  for l in LEVELS:
    np.testing.assert_allclose(np.asarray(grads[f"P{l}"]), d[f"grad_0_P{l}"], **TOL)
  # A list of maps (finest first) instead of a dict, another output size and sampling ratio.
  oh, ow, sr = (int(v) for v in d["cfg_1"])
  fn = functools.partial(multilevel_roi_align, levels=LEVELS, output_size=(oh, ow), sampling_ratio=sr)
  out = _jit(fn, [d[f"P{l}"] for l in LEVELS], d["boxes"], d["idx"])
  np.testing.assert_allclose(np.asarray(out), d["out_1"], **TOL)
  # aligned=True (torchvision's LevelMapper + roi_align per level; MultiScaleRoIAlign lacks it).
  fn = functools.partial(multilevel_roi_align, levels=LEVELS, output_size=7, sampling_ratio=2,
                         aligned=True)
  out = _jit(fn, feats, d["boxes"], d["idx"])
  np.testing.assert_allclose(np.asarray(out), d["out_aligned"], **TOL)


def test_multilevel_equals_roi_align_at_the_assigned_level(fixture_npz):
  d = fixture_npz("roi_multiscale")
  feats = [d[f"P{l}"] for l in LEVELS]

  def both(feats, boxes, idx):
    multi = multilevel_roi_align(feats, boxes, idx, levels=LEVELS, output_size=3, sampling_ratio=1)
    # Every RoI pooled on every level, by the single-level op (the reference, not the method).
    each = [roi_align(f, boxes, idx, output_size=3, spatial_scale=2.0**-l, sampling_ratio=1)
            for f, l in zip(feats, LEVELS)]
    return multi, jnp.stack(each), assign_fpn_levels(boxes, k_min=2, k_max=5)

  multi, each, levels = (np.asarray(a) for a in _jit(both, feats, d["boxes"], d["idx"]))
  want = each[np.asarray(levels) - LEVELS[0], np.arange(len(levels))]
  np.testing.assert_allclose(multi, want, **TOL)


def _tv_axis_weights(lo, hi, scale, aligned, n_bins, grid, size):
  """float32 NumPy transcription of torchvision's sample geometry along one axis (no FMA, IEEE
  division) -> dense ``[K, n_bins, grid, size]`` bilinear weights of every sample."""
  f32 = np.float32
  off = f32(0.5 if aligned else 0.0)
  start = lo * f32(scale) - off
  length = (hi * f32(scale) - off) - start
  if not aligned:
    length = np.maximum(length, f32(1))
  bin_size = (length / f32(n_bins))[:, None, None]
  b = np.arange(n_bins, dtype=f32)[None, :, None]
  frac = (np.arange(grid) + 0.5).astype(f32)[None, None, :]
  y = (start[:, None, None] + b * bin_size) + (frac * bin_size) / f32(grid)  # [K, n_bins, grid]
  valid = (y >= -1) & (y <= size)
  y = np.where(y <= 0, f32(0), y)
  low = np.where(valid, y, 0).astype(np.int64)
  top = low >= size - 1
  low = np.where(top, size - 1, low)
  high = np.where(top, size - 1, low + 1)
  y = np.where(top, low.astype(f32), y)
  ly = (y - low.astype(f32)) * valid
  hy = (f32(1) - (y - low.astype(f32))) * valid
  dense = np.zeros(y.shape + (size,), f32)
  k, j, g = np.indices(y.shape)
  np.add.at(dense, (k, j, g, low), hy)
  np.add.at(dense, (k, j, g, high), ly)
  return dense


@pytest.mark.parametrize("scale,aligned,out,sr", [(0.25, False, (7, 7), 2), (0.125, True, (5, 3), 3),
                                                  (1.0, True, (14, 14), 2)])
def test_sample_geometry_is_bit_exact(scale, aligned, out, sr):
  # XLA's FMA contraction and reciprocal-multiply rewrites would move sample points by an ulp, which
  # at FPN-sized coordinates (hundreds of px) changes outputs by ~1e-4 and can flip a sample across
  # -1 or H. The torchvision fixtures use small maps, where this stays invisible: check it here.
  rng = np.random.default_rng(3)
  h, w, k = 150, 400, 300
  lo = rng.uniform(-0.2, 1.1, (k, 2)) * [w, h] / scale
  boxes = np.concatenate([lo, lo + rng.uniform(0, 0.9, (k, 2)) * [w, h] / scale], 1).astype(np.float32)
  grid = roi_lib._check_sampling(sr, None)

  def geometry(boxes):
    full = lambda v, dt: jnp.full((k,), v, dt)
    return roi_lib._sample_grid(boxes, full(scale, jnp.float32), aligned, out, *grid,
                                full(h, jnp.int32), full(w, jnp.int32), full(0, jnp.int32))[:4]

  yidx, wy, xidx, wx = (np.asarray(a) for a in _jit(geometry, boxes))
  for idx, wt, size, stride, n, lo_col in ((yidx, wy, h, w, out[0], 1), (xidx, wx, w, 1, out[1], 0)):
    dense = np.zeros(idx.shape[:3] + (size,), np.float32)
    kk, jj, gg, _ = np.indices(idx.shape)
    np.add.at(dense, (kk, jj, gg, idx // stride), wt)
    want = _tv_axis_weights(boxes[:, lo_col], boxes[:, lo_col + 2], scale, aligned, n, sr, size)
    np.testing.assert_array_equal(dense, want)


# ------------------------------------------------------------------------------------------------
# Spatial pyramid pooling against a slow NumPy reference
# ------------------------------------------------------------------------------------------------


def _c_round(v: np.float32) -> int:
  """C ``round`` of a float32 value (exact in float64): halves away from zero."""
  v = float(v)
  return int(math.copysign(math.floor(abs(v) + 0.5), v))


def _spp_reference(features, boxes, idx, bins, scale, pool, cot=None):
  """Loops over RoIs, levels, bins, channels; returns ``[K, D]`` and, given ``cot``, d<out, cot>/dF."""
  _, h, w, c = features.shape
  s = np.float32(scale)
  rows, grad = [], np.zeros_like(features)
  for k, (box, b) in enumerate(zip(boxes, idx)):
    x1, y1, x2, y2 = (_c_round(np.float32(v) * s) for v in box)
    ew, eh = max(x2 - x1 + 1, 1), max(y2 - y1 + 1, 1)
    vec = []
    for n in bins:
      bh, bw = np.float32(eh) / np.float32(n), np.float32(ew) / np.float32(n)
      for i in range(n):
        for j in range(n):
          h0 = min(max(math.floor(np.float32(i) * bh) + y1, 0), h)
          h1 = min(max(math.ceil(np.float32(i + 1) * bh) + y1, 0), h)
          w0 = min(max(math.floor(np.float32(j) * bw) + x1, 0), w)
          w1 = min(max(math.ceil(np.float32(j + 1) * bw) + x1, 0), w)
          win = features[b, h0:h1, w0:w1, :]  # [hh, ww, C]
          pos = len(vec) * c
          if win.size == 0:
            vec.append(np.zeros(c, np.float32))
            continue
          if pool == "max":
            vec.append(win.max(axis=(0, 1)))
            first = win.reshape(-1, c).argmax(axis=0)  # first maximum, row-major
            if cot is not None:
              for ch in range(c):
                r, q = divmod(int(first[ch]), w1 - w0)
                grad[b, h0 + r, w0 + q, ch] += cot[k, pos + ch]
          else:
            vec.append(win.mean(axis=(0, 1)))
            if cot is not None:
              grad[b, h0:h1, w0:w1, :] += cot[k, pos:pos + c] / win[..., 0].size
    rows.append(np.concatenate(vec))
  return np.stack(rows), grad


def _spp_inputs():
  rng = np.random.default_rng(7)
  features = rng.standard_normal((2, 9, 11, 3)).astype(np.float32)
  scale = 0.25
  fb = np.array([[0, 0, 11, 9], [-2, -1, 4, 3], [8.6, 6.2, 13, 12], [2.5, 1.5, 6.5, 4.5],
                 [-2.5, -0.5, 0.5, 3.5], [3, 3, 3, 3], [5, 4, 2, 1], [-9, -9, -3, -2],
                 [1.2, 2.7, 9.9, 8.1], [0.3, 0.2, 1.1, 0.9]], np.float32)
  xy = rng.uniform(-1, 10, (6, 2))
  fb = np.concatenate([fb, np.concatenate([xy, xy + rng.uniform(0.5, 8, (6, 2))], 1)])
  boxes = (fb / scale).astype(np.float32)
  idx = rng.integers(0, 2, len(boxes)).astype(np.int32)
  return features, boxes, idx, scale


@pytest.mark.parametrize("bins,pool", [((1, 2, 4), "max"), ((1, 3), "avg")])
def test_spatial_pyramid_pool_matches_numpy(bins, pool):
  features, boxes, idx, scale = _spp_inputs()
  dim = features.shape[-1] * sum(n * n for n in bins)
  cot = np.random.default_rng(8).standard_normal((len(boxes), dim)).astype(np.float32)
  fn = lambda x: spatial_pyramid_pool(x, boxes, idx, bins=bins, spatial_scale=scale, pool=pool)
  out, grad = _out_and_grad(fn, features, cot)
  ref, ref_grad = _spp_reference(features, boxes, idx, bins, scale, pool, cot)
  assert out.shape == (len(boxes), dim)
  np.testing.assert_allclose(np.asarray(out), ref, **TOL)
  np.testing.assert_allclose(np.asarray(grad), ref_grad, **TOL)


def test_spp_single_level_is_roi_pool():
  features, boxes, idx, scale = _spp_inputs()

  def both(f, b, i):
    return (spatial_pyramid_pool(f, b, i, bins=(3,), spatial_scale=scale),
            roi_pool(f, b, i, output_size=3, spatial_scale=scale))

  spp, pooled = _jit(both, features, boxes, idx)
  np.testing.assert_array_equal(np.asarray(spp), np.asarray(pooled).reshape(len(boxes), -1))


# ------------------------------------------------------------------------------------------------
# jit, grad, dtypes, padding
# ------------------------------------------------------------------------------------------------


def test_jit_traces_once_and_boxes_get_no_gradient():
  features = jnp.asarray(np.random.default_rng(0).standard_normal((2, 6, 7, 4)), jnp.float32)

  @jax.jit
  @chex.assert_max_traces(n=1)
  def loss(f, b, i):
    return jnp.sum(roi_align(f, b, i, output_size=2, spatial_scale=0.5, sampling_ratio=2) ** 2)

  b1 = jnp.array([[0.0, 0, 8, 8], [2, 3, 13, 11]])
  b2 = jnp.array([[1.0, 1, 5, 9], [-4, 0, 6, 2]])
  i = jnp.array([0, 1])
  g1 = jax.grad(loss)(features, b1, i)
  g2 = jax.grad(loss)(features, b2, i)
  assert g1.shape == features.shape and not np.allclose(g1, g2)
  loss(features, b1, i)
  loss(features, b2, i)  # no retrace for new box values
  # Like torchvision, no gradient flows to the boxes.
  gb = jax.grad(lambda b: loss(features, b, i))(b1)
  np.testing.assert_array_equal(np.asarray(gb), 0)


def test_out_of_range_box_indices_give_zeros():
  features = jnp.asarray(np.random.default_rng(1).standard_normal((2, 6, 7, 3)), jnp.float32)
  boxes = jnp.array([[1.0, 1, 5, 5]] * 3)
  idx = jnp.array([1, -1, 2])  # -1: padding; 2: past the batch
  for fn in (functools.partial(roi_align, output_size=2, sampling_ratio=2),
             functools.partial(roi_pool, output_size=2),
             functools.partial(multilevel_roi_align, levels=(3,), output_size=2, sampling_ratio=2)):
    f = [features] if fn.func is multilevel_roi_align else features
    out, g = _out_and_grad(lambda x, fn=fn: fn(x, boxes, idx), f, jnp.ones((3, 2, 2, 3)))
    out = np.asarray(out)
    assert np.abs(out[0]).sum() > 0
    np.testing.assert_array_equal(out[1:], 0)
    # Only the valid RoI (image 1) sends gradient back; image 0 gets none.
    g = np.asarray(g[0] if isinstance(g, list) else g)
    np.testing.assert_array_equal(g[0], 0)
    assert np.abs(g[1]).sum() > 0


def test_zero_rois():
  features = jnp.ones((2, 6, 7, 3))
  boxes, idx = jnp.zeros((0, 4)), jnp.zeros((0,), jnp.int32)

  def loss(f):
    a = roi_align(f, boxes, idx, output_size=2, sampling_ratio=2)
    p = spatial_pyramid_pool(f, boxes, idx, bins=(1, 2))
    assert a.shape == (0, 2, 2, 3) and p.shape == (0, 15)
    return a.sum() + p.sum()

  grad = _jit(jax.grad(loss), features)
  np.testing.assert_array_equal(np.asarray(grad), 0)


def test_bfloat16_features():
  features = np.random.default_rng(2).standard_normal((1, 8, 8, 4)).astype(np.float32)
  boxes, idx = np.array([[0.5, 1, 6, 7.5], [2, 2, 9, 4]], np.float32), np.array([0, 0])
  fn = functools.partial(roi_align, output_size=3, sampling_ratio=2, aligned=True)
  ref = _jit(fn, features, boxes, idx)
  out = _jit(fn, jnp.asarray(features, jnp.bfloat16), boxes, idx)
  assert out.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(out, np.float32), np.asarray(ref), rtol=2e-2, atol=2e-2)


# ------------------------------------------------------------------------------------------------
# Argument errors (trace time, naming the argument)
# ------------------------------------------------------------------------------------------------

_F = np.zeros((2, 5, 6, 3), np.float32)
_B = np.zeros((4, 4), np.float32)
_I = np.zeros((4,), np.int32)
_ALIGN = functools.partial(roi_align, output_size=2, sampling_ratio=2)


@pytest.mark.parametrize("call,exc,match", [
    (lambda: _ALIGN(_F[0], _B, _I), ValueError, "features must have rank 4"),
    (lambda: _ALIGN(_F.astype(np.int32), _B, _I), TypeError, "features must have a float dtype"),
    (lambda: _ALIGN(_F[:, :0], _B, _I), ValueError, "features must have H >= 1"),
    (lambda: _ALIGN(_F, _B[:, :3], _I), ValueError, "boxes must have last dimension 4"),
    (lambda: _ALIGN(_F, _B[None], _I), ValueError, "boxes must have rank 2"),
    (lambda: _ALIGN(_F, _B, _I.astype(np.float32)), TypeError, "box_indices must have a int dtype"),
    (lambda: _ALIGN(_F, _B, _I[:, None]), ValueError, "box_indices must have rank 1"),
    (lambda: _ALIGN(_F, _B, _I[:3]), ValueError, "boxes and box_indices must agree"),
    (lambda: _ALIGN(_F, _B, None), TypeError, "box_indices must be an array"),
    (lambda: roi_align(_F, _B, _I, output_size=0, sampling_ratio=2), ValueError, "output_size"),
    (lambda: roi_align(_F, _B, _I, output_size=(2, 3, 4), sampling_ratio=2), ValueError, "output_size"),
    (lambda: roi_align(_F, _B, _I, output_size=2, sampling_ratio=2.0), TypeError, "sampling_ratio"),
    (lambda: roi_align(_F, _B, _I, output_size=2, sampling_ratio=-1), ValueError, "max_sampling_ratio"),
    (lambda: roi_align(_F, _B, _I, output_size=2, sampling_ratio=2, spatial_scale=-1.0), ValueError,
     "spatial_scale"),
    (lambda: roi_align(_F, _B, _I, output_size=2, sampling_ratio=2, spatial_scale=jnp.ones(())),
     TypeError, "spatial_scale"),
    (lambda: roi_pool(_F, _B, _I[:2], output_size=2), ValueError, "boxes and box_indices"),
    (lambda: roi_pool(_F, _B, _I, output_size=(0, 1)), ValueError, r"output_size\[0\]"),
    (lambda: spatial_pyramid_pool(_F, _B, _I, pool="min"), ValueError, "pool must be"),
    (lambda: spatial_pyramid_pool(_F, _B, _I, bins=(1, 0)), ValueError, r"bins\[1\]"),
    (lambda: spatial_pyramid_pool(_F, _B, _I, bins=4), TypeError, "bins"),
    (lambda: multilevel_roi_align([_F, _F[:, ::2]], _B, _I, levels=(2,), output_size=2,
                                  sampling_ratio=2), ValueError, "levels has 1"),
    (lambda: multilevel_roi_align([_F, _F[:, ::2]], _B, _I, levels=(2, 4), output_size=2,
                                  sampling_ratio=2), ValueError, "consecutive"),
    (lambda: multilevel_roi_align([_F, _F[..., :2]], _B, _I, levels=(2, 3), output_size=2,
                                  sampling_ratio=2), ValueError, "share B, C and dtype"),
    (lambda: multilevel_roi_align({"P2": _F}, _B, _I, levels=(2, 3), output_size=2,
                                  sampling_ratio=2), ValueError, "missing"),
    (lambda: multilevel_roi_align([_F], _B[:, :2], _I, levels=(2,), output_size=2,
                                  sampling_ratio=2), ValueError, "boxes must have last dimension 4"),
])
def test_bad_arguments_raise(call, exc, match):
  with pytest.raises(exc, match=match):
    call()


# ------------------------------------------------------------------------------------------------
# Memory at detector scale (slow)
# ------------------------------------------------------------------------------------------------


def _roi_align_reference(f, box, scale, out, sr):
  """Straight transcription of the sampling rules for one RoI, aligned=False (float64): [out, out, C]."""
  h, w = f.shape[:2]
  x1, y1, x2, y2 = (float(v) * scale for v in box)
  rw, rh = max(x2 - x1, 1.0), max(y2 - y1, 1.0)
  res = np.zeros((out, out, f.shape[-1]))
  for ph in range(out):
    for pw in range(out):
      for iy in range(sr):
        for ix in range(sr):
          y = y1 + ph * rh / out + (iy + 0.5) * rh / out / sr
          x = x1 + pw * rw / out + (ix + 0.5) * rw / out / sr
          if y < -1 or y > h or x < -1 or x > w:
            continue
          y, x = max(y, 0.0), max(x, 0.0)
          y0, x0 = int(y), int(x)
          if y0 >= h - 1:
            y0 = y1_ = h - 1
            y = float(y0)
          else:
            y1_ = y0 + 1
          if x0 >= w - 1:
            x0 = x1_ = w - 1
            x = float(x0)
          else:
            x1_ = x0 + 1
          ly, lx = y - y0, x - x0
          res[ph, pw] += ((1 - ly) * (1 - lx) * f[y0, x0] + (1 - ly) * lx * f[y0, x1_] +
                          ly * (1 - lx) * f[y1_, x0] + ly * lx * f[y1_, x1_])
  return res / (sr * sr)


@pytest.mark.slow
@pytest.mark.parametrize("multilevel", [False, True])
def test_detector_scale_forward_backward_memory(multilevel):
  """2 images x 512 RoIs, 256-channel FPN maps of an 800x1344 input, 7x7, sampling 2: fwd + bwd."""
  rng = np.random.default_rng(0)
  b, k, c = 2, 512, 256
  sizes = [(200, 336), (100, 168), (50, 84), (25, 42)] if multilevel else [(200, 336)]
  maps = [jnp.asarray(rng.standard_normal((b, h, w, c), dtype=np.float32)) for h, w in sizes]
  s = np.exp(rng.uniform(np.log(16), np.log(800), b * k))
  ctr = rng.uniform(0, 1, (b * k, 2)) * [1344, 800]
  boxes = np.concatenate([ctr - s[:, None] / 2, ctr + s[:, None] / 2], 1).astype(np.float32)
  idx = np.repeat(np.arange(b), k).astype(np.int32)

  def pool(m, bx, ix):
    if multilevel:
      return multilevel_roi_align(m, bx, ix, levels=LEVELS, output_size=7, sampling_ratio=2)
    return roi_align(m[0], bx, ix, output_size=7, spatial_scale=0.25, sampling_ratio=2)

  def loss(m, bx, ix):
    out = pool(m, bx, ix)
    return jnp.sum(out), out

  step = jax.jit(jax.value_and_grad(loss, has_aux=True))
  compiled = step.lower(maps, boxes, idx).compile()
  temp = compiled.memory_analysis().temp_size_in_bytes
  (total, out), grads = compiled(maps, boxes, idx)
  jax.block_until_ready(grads)
  # Output and cotangent are [1024, 7, 7, 256] f32 = 49 MiB each. Measured temporaries: 99 MiB on one
  # level; 398 MiB on P2-P5 (plus the concatenated levels and their gradient, 174 MiB each). A
  # gathered [K, 7, 7, 16, C] intermediate alone would be 784 MiB; [K, H, W]-sized one-hots more.
  bound = (640 if multilevel else 256) * 2**20
  assert temp < bound, f"XLA temporaries {temp / 2**20:.0f} MiB"
  peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
  assert peak_rss < 8 * 2**30, f"peak RSS {peak_rss / 2**30:.1f} GiB"
  out = np.asarray(out)
  assert np.isfinite(out).all() and all(np.isfinite(np.asarray(g)).all() for g in grads)
  # Spot-check a few RoIs against the float64 transcription (single level: all on P2).
  if not multilevel:
    feats = np.asarray(maps[0])
    for r in (0, 1, 600, 1023):
      ref = _roi_align_reference(feats[idx[r]], boxes[r], 0.25, 7, 2)
      np.testing.assert_allclose(out[r], ref, rtol=1e-4, atol=1e-4)
