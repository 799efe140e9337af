"""Visualization: overlays put the right colours at the right pixels; figures render."""

import json

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest

from jaxvision import viz


def test_palette_is_distinct_and_background_black():
  p = viz.palette(21)
  assert p.shape == (21, 3) and p.dtype == np.uint8
  assert tuple(p[0]) == (0, 0, 0)
  assert len({tuple(c) for c in p}) == 21


def test_overlay_segmentation_blends_only_foreground():
  image = np.full((4, 5, 3), 100, np.uint8)
  labels = np.zeros((4, 5), np.int32)
  labels[1, 2] = 3
  labels[0, 0] = 255
  out = viz.overlay_segmentation(image, labels, num_classes=4, alpha=0.5)
  expected = np.round(0.5 * 100 + 0.5 * viz.palette(4)[3].astype(float)).astype(np.uint8)
  np.testing.assert_array_equal(out[1, 2], expected)
  np.testing.assert_array_equal(out[2, 2], image[2, 2])  # background untouched
  np.testing.assert_array_equal(out[0, 0], image[0, 0])  # ignore untouched
  with pytest.raises(ValueError, match="label_map shape"):
    viz.overlay_segmentation(image, labels[:3])


def test_draw_detections_outlines_boxes_in_class_colour_and_masks():
  image = np.zeros((40, 40, 3), np.uint8)
  masks = np.zeros((2, 40, 40), bool)
  masks[0, 30:35, 30:35] = True
  out = viz.draw_detections(image, [[5, 5, 20, 20], [0, 0, 1, 1]], [0.9, 0.8], [2, 0],
                            class_names=["a", "b"], masks=masks)
  colour = viz.palette(3)[2]
  np.testing.assert_array_equal(out[12, 5], colour)  # left edge of the box
  np.testing.assert_array_equal(out[12, 12], 0)  # inside stays
  assert (out[32, 32] > 0).any()  # the mask of the kept detection
  with pytest.raises(ValueError, match="same length"):
    viz.draw_detections(image, [[0, 0, 1, 1]], [0.5, 0.1], [1])


def test_figures_render(tmp_path):
  rows = [{"step": s, "split": "train", "loss": 1.0 / s} for s in range(1, 6)]
  rows.append({"step": 5, "split": "eval", "mean_iou": 0.5})
  (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
  fig = viz.plot_training_curves(str(tmp_path))
  assert [line.get_label() for line in fig.axes[0].lines] == ["loss"]
  assert [line.get_label() for line in fig.axes[1].lines] == ["mean_iou"]
  fig = viz.plot_segmentation(np.zeros((8, 8, 3)), np.zeros((8, 8), int), ["bg", "x"],
                              ground_truth=np.ones((8, 8), int))
  assert len(fig.axes) == 3
  from jaxvision.eval.voc import evaluate_voc

  res = evaluate_voc([np.array([[0, 0, 10, 10.]])], [np.array([0.9])], [np.array([1])],
                     [np.array([[0, 0, 10, 10.]])], [np.array([1])], num_classes=1)
  fig = viz.plot_pr_curves(res, ["thing"])
  assert "AP 1.00" in fig.axes[0].lines[0].get_label()
  with pytest.raises(FileNotFoundError, match="metrics.jsonl"):
    viz.read_metrics(str(tmp_path / "nope"))
