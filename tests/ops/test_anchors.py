"""Tests for jaxvision/ops/anchors.py.

torchvision settings are compared bit for bit with ``AnchorGenerator`` and ``DefaultBoxGenerator``
outputs (fixture ``boxes_anchors`` from tests/fixtures/gen_boxes.py); paper settings with the papers'
formulas; k-means on synthetic clusters with known centres.
"""

from __future__ import annotations

import math

import jax
import numpy as np
import pytest

from jaxvision.ops import anchors as A

FPN_LEVELS = [(32, 24), (16, 12), (8, 6), (4, 3), (2, 2)]  # 128 x 96 input, strides 4..64
RETINA_LEVELS = [(16, 16), (8, 8), (4, 4), (2, 2), (1, 1)]  # 128 x 128 input, strides 8..128


@pytest.fixture
def fx(fixture_npz):
  return fixture_npz("boxes_anchors")


def _centres(boxes):
  b = np.asarray(boxes, np.float64)
  return (b[:, :2] + b[:, 2:]) / 2, b[:, 2:] - b[:, :2]


# ------------------------------------------------------------------------------------------------
# torchvision parity (bit-exact)
# ------------------------------------------------------------------------------------------------


def test_faster_rcnn_matches_torchvision(fx):
  out = A.faster_rcnn_anchors((10, 14), stride=16, torchvision=True)
  np.testing.assert_array_equal(np.asarray(out), fx["frcnn_160x224"])
  # A non-divisible image: torchvision's strides are image // feature (100 // 7, 130 // 9).
  (stride,) = A.torchvision_strides((100, 130), [(7, 9)])
  assert stride == (14, 14)
  out = A.grid_anchors((7, 9), stride, (128, 256, 512), (0.5, 1.0, 2.0), round_base=True)
  np.testing.assert_array_equal(np.asarray(out), fx["frcnn_100x130"])


def test_fpn_matches_torchvision(fx):
  strides = A.torchvision_strides((128, 96), FPN_LEVELS)
  assert strides == [(4, 4), (8, 8), (16, 16), (32, 32), (64, 48)]  # 96 // 2 = 48 on P6
  anchors, counts = A.multilevel_anchors(FPN_LEVELS, strides, A.FPN_SIZES, (0.5, 1.0, 2.0), round_base=True)
  np.testing.assert_array_equal(np.asarray(anchors), fx["fpn_128x96"])
  assert counts == tuple(3 * h * w for h, w in FPN_LEVELS)


def test_retinanet_matches_torchvision(fx):
  assert A.retinanet_sizes(torchvision=True) == tuple(tuple(int(v) for v in r) for r in fx["retina_sizes"])
  anchors, counts = A.retinanet_anchors(RETINA_LEVELS, A.torchvision_strides((128, 128), RETINA_LEVELS),
                                        torchvision=True)
  np.testing.assert_array_equal(np.asarray(anchors), fx["retina_128x128"])
  assert counts == tuple(9 * h * w for h, w in RETINA_LEVELS)


def test_ssd300_matches_torchvision(fx):
  np.testing.assert_array_equal(np.asarray(A.ssd300_default_boxes(torchvision=True)), fx["ssd300"])
  # Under jit too (the centres are computed on the host so XLA cannot turn x / c into x * (1 / c)).
  out = jax.jit(lambda: A.ssd300_default_boxes(torchvision=True))()
  np.testing.assert_array_equal(np.asarray(out), fx["ssd300"])
  # Without the w, h clamp (scale 1.05 boxes exceed the image).
  out = A.ssd_default_boxes(A.SSD300_FEATURE_SIZES, (300, 300), scales=A.TORCHVISION_SSD300_SCALES,
                            steps=A.TORCHVISION_SSD300_STEPS)
  np.testing.assert_array_equal(np.asarray(out), fx["ssd300_noclip"])


def test_ssd_non_square_and_ssdlite_match_torchvision(fx):
  levels = [(30, 40), (15, 20), (8, 10), (4, 5), (2, 3), (1, 1)]
  out = A.ssd_default_boxes(levels, (240, 320), scales=A.TORCHVISION_SSD300_SCALES,
                            steps=A.TORCHVISION_SSD300_STEPS, clip="size")
  np.testing.assert_array_equal(np.asarray(out), fx["ssd300_240x320"])
  # ssdlite320-like: no steps (centres (j + 0.5) / f_k as in the paper), torchvision's scales.
  tv_scales = tuple(float(s) for s in fx["ssdlite_scales"])
  # torchvision's scales are the paper formula for k = 1..m but s_{m+1} = 1 (ours extrapolates).
  np.testing.assert_allclose(A.ssd_scales(6, 0.2, 0.95)[:6], tv_scales[:6], rtol=1e-12)
  out = A.ssd_default_boxes([20, 10, 5, 3, 2, 1], (320, 320), [(2, 3)] * 6, scales=tv_scales, clip="size")
  np.testing.assert_array_equal(np.asarray(out), fx["ssdlite_320"])


# ------------------------------------------------------------------------------------------------
# Grid anchors: structure and paper presets
# ------------------------------------------------------------------------------------------------


def test_cell_anchors_order_and_shapes():
  sizes, ratios = (32.0, 64.0), (0.5, 1.0, 2.0)
  rm = A.cell_anchors(sizes, ratios)
  sm = A.cell_anchors(sizes, ratios, order="size_major")
  assert rm.shape == sm.shape == (6, 4) and rm.dtype == np.float32
  w, h = rm[:, 2] - rm[:, 0], rm[:, 3] - rm[:, 1]
  # ratio-major: a = ir * len(sizes) + js.
  np.testing.assert_allclose(np.sqrt(w * h), [32, 64, 32, 64, 32, 64], rtol=1e-6)
  np.testing.assert_allclose(h / w, [0.5, 0.5, 1, 1, 2, 2], rtol=1e-6)
  # size-major: a = js * len(ratios) + ir; the same set of anchors.
  w2, h2 = sm[:, 2] - sm[:, 0], sm[:, 3] - sm[:, 1]
  np.testing.assert_allclose(np.sqrt(w2 * h2), [32, 32, 32, 64, 64, 64], rtol=1e-6)
  np.testing.assert_allclose(h2 / w2, [0.5, 1, 2, 0.5, 1, 2], rtol=1e-6)
  np.testing.assert_array_equal(sm, rm[[0, 2, 4, 1, 3, 5]])
  np.testing.assert_array_equal(rm[:, :2], -rm[:, 2:])  # zero-centred
  # Rounding (torchvision): half-size 22.627 -> 23.
  np.testing.assert_array_equal(A.cell_anchors((32,), (0.5,), round_base=True), [[-23, -11, 23, 11]])


@pytest.mark.parametrize("offset", [0.0, 0.5])
def test_grid_anchor_layout(offset):
  fh, fw, stride = 3, 5, (8, 10)  # (stride_y, stride_x)
  sizes, ratios = (16.0, 40.0), (0.5, 2.0)
  out = np.asarray(A.grid_anchors((fh, fw), stride, sizes, ratios, offset=offset))
  n_a = 4
  assert out.shape == (fh * fw * n_a, 4) and out.dtype == np.float32
  centres, wh = _centres(out)
  base = A.cell_anchors(sizes, ratios)
  for i in range(fh):
    for j in range(fw):
      for a in range(n_a):
        r = (i * fw + j) * n_a + a
        np.testing.assert_allclose(centres[r], [(j + offset) * 10, (i + offset) * 8], atol=1e-5)
        np.testing.assert_allclose(out[r], base[a] + np.tile(centres[r], 2), atol=1e-5)
  np.testing.assert_allclose(wh[:, 0] * wh[:, 1], np.tile([16**2, 40**2, 16**2, 40**2], fh * fw), rtol=1e-5)


def test_faster_rcnn_paper_preset():
  out = np.asarray(A.faster_rcnn_anchors((2, 3)))  # stride 16, k = 9
  assert out.shape == (2 * 3 * 9, 4)
  centres, wh = _centres(out)
  np.testing.assert_allclose(centres[:9], np.full((9, 2), 8.0), atol=1e-4)  # cell (0, 0): centre (8, 8)
  np.testing.assert_allclose(centres[(1 * 3 + 2) * 9], [40.0, 24.0], atol=1e-4)  # cell (1, 2)
  np.testing.assert_allclose(np.sqrt(wh[:9, 0] * wh[:9, 1]), [128, 256, 512] * 3, rtol=1e-5)
  np.testing.assert_allclose(wh[:9, 1] / wh[:9, 0], np.repeat([0.5, 1, 2], 3), rtol=1e-5)


def test_retinanet_paper_preset():
  sizes = A.retinanet_sizes()
  np.testing.assert_allclose(sizes[0], [32, 32 * 2**(1 / 3), 32 * 2**(2 / 3)])
  np.testing.assert_allclose(sizes[4], [512, 512 * 2**(1 / 3), 512 * 2**(2 / 3)])
  levels = [(4, 4), (2, 2), (1, 1)]
  anchors, counts = A.retinanet_anchors(levels, (8, 16, 32))
  assert counts == (144, 36, 9) and anchors.shape == (189, 4)
  centres, wh = _centres(anchors)
  np.testing.assert_allclose(centres[:9], np.full((9, 2), 4.0), atol=1e-4)  # stride 8, offset 0.5
  np.testing.assert_allclose(centres[144:153], np.full((9, 2), 8.0), atol=1e-4)
  # Size-major: the first three anchors are the three ratios of the smallest size.
  np.testing.assert_allclose(np.sqrt(wh[:9, 0] * wh[:9, 1]), np.repeat(sizes[0], 3), rtol=1e-5)
  np.testing.assert_allclose(np.sqrt(wh[180:, 0] * wh[180:, 1]), np.repeat(sizes[2], 3), rtol=1e-5)


def test_multilevel_per_level_ratios_and_jit():
  levels = [(4, 6), (2, 3)]
  ratios = ((1.0,), (0.5, 1.0, 2.0))
  anchors, counts = A.multilevel_anchors(levels, (8, 16), ((20.0,), (40.0, 80.0)), ratios, offset=0.5)
  assert counts == (24, 36)
  np.testing.assert_array_equal(anchors[:24], A.grid_anchors((4, 6), 8, (20.0,), (1.0,), offset=0.5))
  np.testing.assert_array_equal(anchors[24:],
                                A.grid_anchors((2, 3), 16, (40.0, 80.0), (0.5, 1, 2), offset=0.5))
  jitted = jax.jit(lambda: A.multilevel_anchors(levels, (8, 16), ((20.0,), (40.0, 80.0)), ratios,
                                                offset=0.5)[0])()
  np.testing.assert_array_equal(np.asarray(jitted), np.asarray(anchors))


# ------------------------------------------------------------------------------------------------
# SSD (paper)
# ------------------------------------------------------------------------------------------------


def test_ssd300_has_8732_boxes():
  assert A.ssd_boxes_per_location() == (4, 6, 6, 6, 4, 4)
  boxes = A.ssd300_default_boxes()
  assert boxes.shape == (8732, 4)
  assert sum(f * f * a for f, a in zip(A.SSD300_FEATURE_SIZES, (4, 6, 6, 6, 4, 4))) == 8732
  assert A.ssd300_default_boxes(torchvision=True).shape == (8732, 4)


def test_ssd_paper_scales_ratios_and_centres():
  scales = A.ssd_scales(6)
  np.testing.assert_allclose(scales, [0.2, 0.34, 0.48, 0.62, 0.76, 0.9, 1.04], rtol=1e-12)
  assert A.ssd_scales(1, 0.3, 0.8) == (0.3, 0.8)
  boxes = np.asarray(A.ssd300_default_boxes(normalized_cxcywh=True), np.float64)
  xyxy = np.asarray(A.ssd300_default_boxes(), np.float64)
  # The two outputs agree.
  np.testing.assert_allclose(xyxy, np.concatenate([boxes[:, :2] - boxes[:, 2:] / 2,
                                                   boxes[:, :2] + boxes[:, 2:] / 2], 1) * 300, atol=1e-3)
  # Level 2 (fc7, 19 x 19, 6 boxes): starts after 38 * 38 * 4 boxes.
  start = 38 * 38 * 4
  lvl = boxes[start:start + 19 * 19 * 6].reshape(19, 19, 6, 4)
  s, s_next = scales[1], scales[2]
  w, h = lvl[0, 0, :, 2], lvl[0, 0, :, 3]
  np.testing.assert_allclose(w, [s, math.sqrt(s * s_next), s * math.sqrt(2), s / math.sqrt(2),
                                 s * math.sqrt(3), s / math.sqrt(3)], rtol=1e-6)
  np.testing.assert_allclose(w / h, [1, 1, 2, 0.5, 3, 1 / 3], rtol=1e-5)  # a_r = w / h
  np.testing.assert_allclose(lvl[4, 7, 0, :2], [(7 + 0.5) / 19, (4 + 0.5) / 19], rtol=1e-6)
  assert (lvl[..., :2] == lvl[..., :1, :2]).all()  # one centre per location
  # Last level: one location at the centre, s'_6 = sqrt(0.9 * 1.04).
  np.testing.assert_allclose(boxes[-4:, :2], 0.5)
  np.testing.assert_allclose(boxes[-3, 2], math.sqrt(0.9 * 1.04), rtol=1e-6)


def test_ssd_clip_modes():
  free = np.asarray(A.ssd300_default_boxes())
  assert free.min() < 0 and free.max() > 300  # boxes extend past the image without clipping
  img = np.asarray(A.ssd_default_boxes(A.SSD300_FEATURE_SIZES, (300, 300), clip="image"))
  assert img.min() >= 0 and img.max() <= 300
  np.testing.assert_array_equal(img, np.clip(free, 0, 300))
  size = np.asarray(A.ssd_default_boxes(A.SSD300_FEATURE_SIZES, (300, 300), clip="size",
                                        normalized_cxcywh=True))
  assert size[:, 2:].max() <= 1.0
  assert size[:, 2:].max() == 1.0  # s'_6 = 0.967, s_6 sqrt(2) = 1.27 -> 1
  img_n = np.asarray(A.ssd_default_boxes(A.SSD300_FEATURE_SIZES, (300, 300), clip="image",
                                         normalized_cxcywh=True))
  np.testing.assert_allclose(img_n[:, :2] * 300 - img_n[:, 2:] * 150, img[:, :2], atol=1e-3)


# ------------------------------------------------------------------------------------------------
# YOLOv2 priors
# ------------------------------------------------------------------------------------------------


def test_wh_iou_values():
  wh1 = np.array([[2.0, 2.0], [0.0, 0.0]])
  wh2 = np.array([[1.0, 4.0], [2.0, 2.0], [0.0, 0.0]])
  iou = np.asarray(A.wh_iou(wh1, wh2))
  np.testing.assert_allclose(iou, [[2 / 6, 1.0, 0.0], [0.0, 0.0, 0.0]], rtol=1e-6)


def _clusters(seed, n_per=150):
  rng = np.random.default_rng(seed)
  centres = np.array([[12.0, 10.0], [30.0, 70.0], [95.0, 45.0], [200.0, 210.0]])
  wh = np.concatenate([c * np.exp(rng.normal(scale=0.06, size=(n_per, 2))) for c in centres])
  return centres, wh[rng.permutation(len(wh))]


def test_kmeans_recovers_cluster_centres():
  centres, wh = _clusters(0)
  priors = A.kmeans_anchors(wh, 4, seed=0, iters=50)
  assert priors.shape == (4, 2) and priors.dtype == np.float32
  np.testing.assert_allclose(priors, centres, rtol=0.03)  # sorted by area, like centres
  # Deterministic for a seed; with restarts, seeds whose first start fails (3, 7) find them too.
  np.testing.assert_array_equal(A.kmeans_anchors(wh, 4, seed=0, iters=50), priors)
  np.testing.assert_allclose(A.kmeans_anchors(wh, 4, seed=7, iters=50), priors, rtol=1e-6)
  np.testing.assert_allclose(A.kmeans_anchors(wh, 4, seed=3, iters=50), priors, rtol=1e-6)
  # A single start from seed 7 lands in a local optimum (two centroids on the largest cluster).
  assert A.mean_best_iou(wh, A.kmeans_anchors(wh, 4, seed=7, restarts=1)) < 0.8
  # Better fit than random boxes as priors (YOLOv2's Table 1 argument).
  fit = A.mean_best_iou(wh, priors)
  rng = np.random.default_rng(1)
  random_fits = [A.mean_best_iou(wh, wh[rng.choice(len(wh), 4, replace=False)]) for _ in range(10)]
  assert fit > 0.85 and fit > max(random_fits)


def test_kmeans_more_clusters_fit_better():
  _, wh = _clusters(1, n_per=60)
  fits = [A.mean_best_iou(wh, A.kmeans_anchors(wh, k, seed=0)) for k in (1, 2, 4, 6)]
  assert fits == sorted(fits) and fits[0] < fits[-1]


# ------------------------------------------------------------------------------------------------
# Bad input
# ------------------------------------------------------------------------------------------------


def test_grid_anchor_bad_input():
  with pytest.raises(ValueError, match=r"feature_hw\[0\] must be > 0"):
    A.grid_anchors((0, 4), 16, (32,), (1.0,))
  with pytest.raises(TypeError, match=r"feature_hw\[1\] must be a Python int"):
    A.grid_anchors((4, 4.5), 16, (32,), (1.0,))
  with pytest.raises(TypeError, match="feature_hw"):
    A.grid_anchors((4, 4, 4), 16, (32,), (1.0,))
  with pytest.raises(ValueError, match="stride"):
    A.grid_anchors((4, 4), -16, (32,), (1.0,))
  with pytest.raises(ValueError, match="sizes"):
    A.grid_anchors((4, 4), 16, (), (1.0,))
  with pytest.raises(ValueError, match="aspect_ratios"):
    A.grid_anchors((4, 4), 16, (32,), (0.0, 1.0))
  with pytest.raises(TypeError, match="sizes"):
    A.grid_anchors((4, 4), 16, 32, (1.0,))
  with pytest.raises(ValueError, match="order"):
    A.grid_anchors((4, 4), 16, (32,), (1.0,), order="scale_major")
  with pytest.raises(TypeError, match="offset"):
    A.grid_anchors((4, 4), 16, (32,), (1.0,), offset="0.5")


def test_multilevel_bad_input():
  with pytest.raises(ValueError, match="strides"):
    A.multilevel_anchors([(4, 4), (2, 2)], (8,), ((32,), (64,)), (1.0,))
  with pytest.raises(ValueError, match="sizes_per_level"):
    A.multilevel_anchors([(4, 4), (2, 2)], (8, 16), ((32,),), (1.0,))
  with pytest.raises(ValueError, match="aspect_ratios has 3 levels"):
    A.multilevel_anchors([(4, 4), (2, 2)], (8, 16), ((32,), (64,)), ((1.0,),) * 3)
  with pytest.raises(TypeError, match="level_shapes"):
    A.multilevel_anchors([], (), (), (1.0,))
  with pytest.raises(ValueError, match="P3..P7"):
    A.retinanet_anchors([(1, 1)] * 6, (8,) * 6)


def test_ssd_bad_input():
  fs = A.SSD300_FEATURE_SIZES
  with pytest.raises(ValueError, match="aspect_ratios"):
    A.ssd_default_boxes(fs, (300, 300), ((2,),) * 5)
  with pytest.raises(ValueError, match="scales"):
    A.ssd_default_boxes(fs, (300, 300), scales=A.TORCHVISION_SSD300_SCALES[:6])
  with pytest.raises(ValueError, match="steps"):
    A.ssd_default_boxes(fs, (300, 300), steps=(8, 16))
  with pytest.raises(ValueError, match="clip"):
    A.ssd_default_boxes(fs, (300, 300), clip=True)
  with pytest.raises(ValueError, match="s_min"):
    A.ssd_default_boxes(fs, (300, 300), s_min=0.9, s_max=0.2)
  with pytest.raises(ValueError, match=r"feature_sizes\[1\]\[0\] must be > 0"):
    A.ssd_default_boxes([38, 0], (300, 300), ((2,), (2,)))
  with pytest.raises(TypeError, match="image_hw"):
    A.ssd_default_boxes(fs, None)
  with pytest.raises(ValueError, match="num_levels"):
    A.ssd_scales(0)


def test_kmeans_bad_input():
  wh = np.array([[1.0, 2.0], [3.0, 4.0], [3.0, 4.0]])
  with pytest.raises(ValueError, match="exceeds the number of distinct sizes"):
    A.kmeans_anchors(wh, 3)
  with pytest.raises(ValueError, match="wh must contain positive"):
    A.kmeans_anchors(np.array([[1.0, 2.0], [0.0, 0.0]]), 1)
  with pytest.raises(ValueError, match="wh must have last dimension 2"):
    A.kmeans_anchors(np.ones((5, 4)), 2)
  with pytest.raises(ValueError, match="wh must have rank 2"):
    A.kmeans_anchors(np.ones((2,)), 1)
  with pytest.raises(ValueError, match="k must be > 0"):
    A.kmeans_anchors(wh, 0)
  with pytest.raises(TypeError, match="seed"):
    A.kmeans_anchors(wh, 1, seed=None)
  with pytest.raises(ValueError, match="wh2 must have last dimension 2"):
    A.wh_iou(wh, np.ones((2, 3)))
