"""Sliding-window detector: the convolutionalized network equals the crop classifier, exact
window-to-box mapping, NMS, static shapes, and (slow) learning on shapes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxvision.models import MODELS
from jaxvision.models.detection import sliding_window as sw


def _batch(b=2, size=(64, 64), seed=0, boxes=None, labels=None):
  rng = np.random.default_rng(seed)
  if boxes is None:
    boxes = [[4.0, 4.0, 30.0, 30.0], [30.0, 20.0, 60.0, 50.0], [0.0, 0.0, 0.0, 0.0]]
    labels = [1, 2, 0]
  m = len(boxes)
  return {
      "image": jnp.asarray(rng.normal(size=(b,) + tuple(size) + (3,)), jnp.float32),
      "boxes": jnp.asarray(np.broadcast_to(np.asarray(boxes, np.float32).reshape(m, 4),
                                           (b, m, 4))),
      "labels": jnp.asarray(np.broadcast_to(np.asarray(labels, np.int32), (b, m))),
      "box_valid": jnp.asarray(np.broadcast_to(np.asarray(labels) > 0, (b, m))),
  }


SMALL = {"features": (4, 8), "fc_size": 2, "hidden": 16, "scales": (1.0, 0.75),
         "windows_per_image": 16, "detections_per_image": 10, "pre_nms_top_n": 100}


def test_receptive_field_hand_worked():
  # 1 stage (3x3 conv, 2x2/2 pool), fc 1: 1 + 2 + 1 = 4. 2 stages: 4 + 2*2 + 2 = 10.
  assert sw.receptive_field(1, 1) == 4
  assert sw.receptive_field(2, 1) == 10
  assert sw.receptive_field(2, 2) == 14  # + (2 - 1) * 4
  assert sw.receptive_field(3, 2) == 30
  assert sw.SlidingWindowConfig().window == 30 and sw.SlidingWindowConfig().stride == 8


@pytest.mark.slow
def test_receptive_field_is_the_window_the_network_reads():
  # Perturbing a pixel just outside the window leaves the score-map cell unchanged; inside, it
  # changes it (for a random network; both corners of the window).
  family = MODELS["sliding_window"](SMALL, 3)
  module = family.module
  r, s = 14, 4
  v = module.init(jax.random.PRNGKey(0), jnp.zeros((1, r, r, 3)))
  img = jax.random.normal(jax.random.PRNGKey(1), (1, 40, 40, 3))
  base = module.apply(v, img, method="score_map")
  i, j = 2, 3  # window at rows [8, 22), columns [12, 26)
  y0, x0 = s * i, s * j
  for (y, x), inside in [((y0, x0), True), ((y0 + r - 1, x0 + r - 1), True),
                         ((y0 - 1, x0), False), ((y0, x0 + r), False)]:
    out = module.apply(v, img.at[0, y, x].add(10.0), method="score_map")
    changed = bool(jnp.max(jnp.abs(out[0, i, j] - base[0, i, j])) > 1e-6)
    assert changed == inside, ((y, x), inside)


@pytest.mark.parametrize("features,fc_size", [((4, 8), 2), ((6, 8, 10), 2), ((5,), 3)])
@pytest.mark.slow
def test_convolutionalized_network_equals_crop_classifier(features, fc_size):
  module = sw.WindowClassifier(num_outputs=7, features=features, fc_size=fc_size, hidden=12)
  r, s = sw.receptive_field(len(features), fc_size), 2 ** len(features)
  v = module.init(jax.random.PRNGKey(0), jnp.zeros((1, r, r, 3)))
  # Non-zero biases so that a bias mix-up would show.
  v = jax.tree.map(lambda x: x + 0.1 * jax.random.normal(jax.random.PRNGKey(3), x.shape), v)
  img = jax.random.normal(jax.random.PRNGKey(2), (2, 3 * r + 5, 2 * r + 3, 3))
  maps = module.apply(v, img, method="score_map")  # (2, h, w, 7)
  h, w = (img.shape[1] - r) // s + 1, (img.shape[2] - r) // s + 1
  assert maps.shape == (2, h, w, 7)
  crops = np.stack([np.asarray(img[b, s * i:s * i + r, s * j:s * j + r])
                    for b in range(2) for i in range(h) for j in range(w)])
  scores = module.apply(v, jnp.asarray(crops)).reshape(2, h, w, 7)
  np.testing.assert_allclose(np.asarray(maps), np.asarray(scores), atol=1e-5, rtol=1e-5)
  assert float(jnp.std(scores)) > 1e-3  # not trivially equal


def test_crop_classifier_rejects_wrong_crop_size():
  module = sw.WindowClassifier(num_outputs=3, features=(4, 8), fc_size=2, hidden=8)
  v = module.init(jax.random.PRNGKey(0), jnp.zeros((1, 14, 14, 3)))
  with pytest.raises(ValueError, match="14 x 14"):
    module.apply(v, jnp.zeros((1, 20, 20, 3)))


@pytest.mark.slow
def test_window_grid_matches_resized_crops_and_family_scores():
  """The detector's multi-scale scores (one pass per scale) equal the crop classifier on the
  grid's crops of the rescaled images, in the grid's order; the boxes are the origins divided
  by the exact resize factors."""
  config = sw.SlidingWindowConfig(**SMALL)
  family = MODELS["sliding_window"](SMALL, 3)
  batch = _batch(size=(48, 56))
  grid = sw.window_grid((48, 56), config)
  # Box = origin / factor, side = window / factor.
  for k, (hs, ws) in enumerate(grid.sizes):
    sel = grid.scale_index == k
    np.testing.assert_allclose(grid.boxes[sel, 0], grid.origin[sel, 1] * 56 / ws, rtol=1e-6)
    np.testing.assert_allclose(grid.boxes[sel, 3] - grid.boxes[sel, 1], 14 * 48 / hs, rtol=1e-6)
  assert grid.map_shapes == ((9, 11), (6, 8))  # (48-14)//4+1, (56-14)//4+1; 36x42 at 0.75
  v = family.init(jax.random.PRNGKey(0), batch)
  out = family.module.apply(v, batch["image"], method=sw.sliding_window_scores, config=config,
                            grid=grid)  # (B, N, O)
  assert out.shape == (2, len(grid.boxes), 3 + 1 + 4)
  idx = jnp.broadcast_to(jnp.arange(len(grid.boxes)), (2, len(grid.boxes)))
  crops = sw.crop_windows(batch["image"], grid, idx, 14)
  direct = family.module.apply(v, crops.reshape((-1, 14, 14, 3))).reshape(out.shape)
  np.testing.assert_allclose(np.asarray(out), np.asarray(direct), atol=1e-5)


@pytest.mark.slow
def test_detections_from_scores_against_hand_worked_nms():
  boxes = jnp.asarray([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [0, 0, 10, 10]],
                      jnp.float32)
  # Class 1: boxes 0 and 1 overlap (IoU 0.68) -> only box 0 (0.9); box 2 (0.5) kept.
  # Class 2: box 1 (0.8) kept, box 3 (0.7) overlaps box 1 -> suppressed; box 3 invalid anyway.
  scores = jnp.asarray([[0.9, 0.1], [0.6, 0.8], [0.5, 0.01], [0.95, 0.7]], jnp.float32)
  valid = jnp.asarray([True, True, True, False])
  det = sw.detections_from_scores(scores, boxes, valid, jnp.asarray([100, 100]),
                                  pre_nms_top_n=6, score_threshold=0.05, nms_threshold=0.3,
                                  detections_per_image=5)
  got = [(int(lab), round(float(s), 3)) for lab, s, ok in
         zip(det["labels"], det["scores"], det["valid"]) if ok]
  assert got == [(1, 0.9), (2, 0.8), (1, 0.5)]
  assert det["boxes"].shape == (5, 4) and not bool(det["valid"][3])


@pytest.mark.slow
def test_train_loss_and_predict_static_shapes_and_empty_images():
  family = MODELS["sliding_window"](SMALL, 3)
  traces = []

  @jax.jit
  def loss(v, b):
    traces.append(1)
    total, terms, _ = family.train_loss(v, b, rng=jax.random.PRNGKey(0))
    return total, terms

  batch = _batch()
  v = family.init(jax.random.PRNGKey(0), batch)
  total, terms = loss(v, batch)
  assert np.isfinite(float(total)) and float(terms["num_fg_windows"]) > 0
  empty = dict(batch, box_valid=jnp.zeros_like(batch["box_valid"]),
               labels=jnp.zeros_like(batch["labels"]))
  total0, terms0 = loss(v, empty)
  assert np.isfinite(float(total0)) and float(terms0["num_fg_windows"]) == 0.0
  assert float(terms0["box"]) == 0.0
  assert len(traces) == 1  # the number of gt boxes never recompiles
  grads = jax.grad(lambda p: family.train_loss({"params": p}, batch,
                                               rng=jax.random.PRNGKey(0))[0])(v["params"])
  assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))
  pred = jax.jit(family.predict)(v, batch)
  assert pred["boxes"].shape == (2, 10, 4) and pred["valid"].shape == (2, 10)
  ok = np.asarray(pred["valid"])
  assert np.all((np.asarray(pred["labels"])[ok] >= 1) & (np.asarray(pred["labels"])[ok] <= 3))


def test_bad_config_raises():
  with pytest.raises(ValueError, match="unknown model config keys"):
    MODELS["sliding_window"]({"window": 32}, 3)
  with pytest.raises(ValueError, match="no 30 x 30 window fits"):
    sw.window_grid((20, 20), sw.SlidingWindowConfig(scales=(1.0,)))
  with pytest.raises(ValueError, match="num_classes"):
    MODELS["sliding_window"]({}, 0)


@pytest.mark.slow
def test_learns_shapes(shapes_dir, shapes_data, run_learning):
  # Measured 2026-11-21 with these settings (same run_learning, via a script): loss 2.62 -> 1.52,
  # mAP@0.5 on 100 validation images 0.001 -> 0.068; 103 s CPU time (220 s wall on the loaded
  # 2-core CPU, excluding dataset preparation). Over the 90 s wall budget on that machine; 200
  # steps at scales (1.41, 1, 0.71, 0.5) took 91 s wall / 53 s CPU but reached only mAP 0.022.
  result = run_learning(shapes_data(shapes_dir, batch_size=8), "sliding_window", {
      "features": (8, 16, 32), "hidden": 64, "windows_per_image": 32, "positive_fraction": 0.5,
      "detections_per_image": 30}, steps=300, lr=6e-3)
  assert result["loss_last"] < 0.8 * result["loss_first"], result
  assert result["map_trained"] > max(0.03, result["map_untrained"] + 0.02), result
