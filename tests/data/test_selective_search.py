"""Selective search (scikit-image graph segmentation + hierarchical grouping)."""

import numpy as np
import pytest

pytest.importorskip("skimage")

from jaxvision.data import selective_search as ss  # noqa: E402


def _iou(a, b):
  a = np.asarray(a, np.float64)[:, None]
  b = np.asarray(b, np.float64)[None]
  iw = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
  ih = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
  inter = iw * ih
  area = lambda x: (x[..., 2] - x[..., 0]) * (x[..., 3] - x[..., 1])  # noqa: E731
  return inter / (area(a) + area(b) - inter)


def _two_rectangles():
  img = np.zeros((64, 80, 3), np.float32)
  img[:] = (0.2, 0.6, 0.2)  # green background
  img[8:28, 10:40] = (1.0, 0.0, 0.0)  # red: x 10..40, y 8..28
  img[36:60, 45:75] = (0.0, 0.0, 1.0)  # blue: x 45..75, y 36..60
  return img, np.asarray([[10, 8, 40, 28], [45, 36, 75, 60]], np.float32)


def test_two_coloured_rectangles_get_covering_proposals():
  img, gt = _two_rectangles()
  boxes = ss.selective_search(img)
  assert boxes.dtype == np.float32 and boxes.ndim == 2 and boxes.shape[1] == 4
  assert len(np.unique(boxes, axis=0)) == len(boxes)  # duplicates dropped
  best = _iou(gt, boxes).max(1)
  assert np.all(best >= 0.8), best
  # The whole image is one of the proposals (the last merge of every strategy).
  assert np.any(np.all(boxes == [0, 0, 80, 64], axis=1))


def test_grouping_hand_made_segmentation():
  # Four regions: 0 | 1 on top (same colour), 2 below spanning both, 3 a lone pixel block inside 2.
  seg = np.zeros((4, 6), np.int32)
  seg[:2, 3:] = 1
  seg[2:, :] = 2
  seg[3, 5] = 3
  colour = np.zeros((4, 6, 3), np.float32)
  colour[2:] = 0.9  # region 2 (and 3) a different colour from 0 and 1
  boxes = ss.hierarchical_grouping(seg, colour, similarities=("colour",), bins=4)
  assert boxes.shape == (2 * 4 - 1, 4)
  np.testing.assert_array_equal(boxes[:4], [[0, 0, 3, 2], [3, 0, 6, 2], [0, 2, 6, 4], [5, 3, 6, 4]])
  # Colour only: 0 and 1 (identical histograms, similarity 1) merge first; 2 and 3 (both 0.9)
  # too; then everything.
  merged = {tuple(b) for b in boxes[4:6].tolist()}
  assert merged == {(0.0, 0.0, 6.0, 2.0), (0.0, 2.0, 6.0, 4.0)}
  np.testing.assert_array_equal(boxes[-1], [0, 0, 6, 4])


def test_size_similarity_merges_small_regions_first():
  # Three strips of sizes 2, 2 and 20 columns... left to right 0 | 1 | 2; 0-1 adjacent, 1-2 adjacent.
  seg = np.zeros((3, 24), np.int32)
  seg[:, 2:4] = 1
  seg[:, 4:] = 2
  boxes = ss.hierarchical_grouping(seg, np.zeros((3, 24, 3), np.float32), similarities=("size",))
  # s_size(0, 1) = 1 - 12/72 > s_size(1, 2) = 1 - 66/72: 0 and 1 merge first.
  np.testing.assert_array_equal(boxes[3], [0, 0, 4, 3])
  np.testing.assert_array_equal(boxes[4], [0, 0, 24, 3])


def test_transform_pads_and_respects_image_hw():
  img, gt = _two_rectangles()
  padded = np.zeros((96, 96, 3), np.float32) - 2.0
  padded[:64, :80] = (img - 0.5) / 0.25  # normalized values, any range
  ex = {"image": padded, "image_hw": np.asarray([64, 80])}
  out = ss.add_selective_search_proposals(ex, np.random.default_rng(0), max_proposals=500)
  p, v = out["proposals"], out["proposals_valid"]
  assert p.shape == (500, 4) and v.shape == (500,) and 0 < v.sum() < 500
  assert np.all(p[~v] == 0)
  assert np.all(p[v][:, 2] <= 80) and np.all(p[v][:, 3] <= 64)
  assert np.all(_iou(gt, p[v]).max(1) >= 0.8)
  few = ss.add_selective_search_proposals(ex, np.random.default_rng(0), max_proposals=3)
  assert few["proposals_valid"].all() and few["proposals"].shape == (3, 4)


def test_bad_input_raises():
  with pytest.raises(ValueError, match="image must be"):
    ss.selective_search(np.zeros((8, 8)))
  with pytest.raises(ValueError, match="similarities"):
    ss.hierarchical_grouping(np.zeros((4, 4), np.int32), np.zeros((4, 4, 3)),
                             similarities=("texture",))
  with pytest.raises(ValueError, match="colour space"):
    ss.selective_search(np.zeros((8, 8, 3)), strategies=(("xyz", 10.0, ("size",)),))
  with pytest.raises(ValueError, match="max_proposals"):
    ss.add_selective_search_proposals({"image": np.zeros((8, 8, 3))}, None, max_proposals=0)
