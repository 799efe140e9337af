"""R-CNN: context warping, the three objectives (fine-tuning, SVMs, box regression), inference."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxvision.models import MODELS
from jaxvision.models.detection import rcnn


def _batch(b=2, size=64, p=24, seed=0):
  rng = np.random.default_rng(seed)
  xy = np.sort(rng.uniform(0, size, (b, p, 2, 2)), axis=2)
  props = np.concatenate([xy[:, :, 0], xy[:, :, 1]], axis=-1)
  return {
      "image": jnp.asarray(rng.normal(size=(b, size, size, 3)), jnp.float32),
      "boxes": jnp.asarray([[[8, 8, 30, 30], [20, 24, 60, 50], [0, 0, 0, 0]]] * b, jnp.float32),
      "labels": jnp.asarray([[1, 2, 0]] * b, jnp.int32),
      "box_valid": jnp.asarray([[True, True, False]] * b),
      "proposals": jnp.asarray(props, jnp.float32),
      "proposals_valid": jnp.ones((b, p), bool),
  }


def test_context_boxes_hand_worked():
  out = rcnn.context_boxes(jnp.asarray([[10.0, 10.0, 30.0, 50.0]]), 0.25)  # sides x 2
  np.testing.assert_allclose(np.asarray(out), [[0.0, -10.0, 40.0, 70.0]])


@pytest.mark.slow
def test_warp_of_a_linear_image_is_exact():
  # Bilinear sampling of I(x, y) = 2 x + 3 y + 1 (pixel centres at integer + 0.5) is exact, so the
  # warped bin (i, j) of box [8, 8, 40, 24] to 16 x 16 is I at the bin centre.
  ys, xs = np.mgrid[0:64, 0:64].astype(np.float32)
  img = np.stack([2 * xs + 3 * ys + 1] * 3, -1)[None]
  crops = rcnn.warp_regions(jnp.asarray(img), jnp.asarray([[[8.0, 8.0, 40.0, 24.0]]]),
                            jnp.ones((1, 1), bool), warp_size=16, context_padding=0.0)
  cx = 8 + (np.arange(16) + 0.5) * 2.0 - 0.5
  cy = 8 + (np.arange(16) + 0.5) * 1.0 - 0.5
  expected = 2 * cx[None, :] + 3 * cy[:, None] + 1
  np.testing.assert_allclose(np.asarray(crops[0, ..., 0]), expected, atol=1e-3)


@pytest.mark.slow
def test_losses_gradients_are_separated_and_predict_has_static_shapes():
  family = MODELS["rcnn"]({"features": (4, 8), "fc": (16, 16), "warp_size": 16,
                           "detections_per_image": 10}, 3)
  batch = _batch()
  v = family.init(jax.random.PRNGKey(0), batch)
  loss = jax.jit(lambda v, b: family.train_loss(v, b, rng=jax.random.PRNGKey(1))[:2])
  total, terms = loss(v, batch)
  assert np.isfinite(float(total)) and set(terms) >= {"finetune_cls", "svm", "bbox"}

  @jax.jit
  def term_grads(params):
    return {name: jax.grad(lambda p, n=name: family.train_loss(
        {"params": p}, batch, rng=jax.random.PRNGKey(1))[1][n])(params)
        for name in ("svm", "finetune_cls")}

  mag = lambda t: sum(float(jnp.abs(x).sum()) for x in jax.tree.leaves(t))  # noqa: E731
  grads = term_grads(v["params"])
  g_svm, g_cls = grads["svm"], grads["finetune_cls"]
  assert mag(g_svm["svm"]) > 0 and mag(g_svm["conv1"]) == 0 and mag(g_svm["fc6"]) == 0
  assert mag(g_cls["conv1"]) > 0 and mag(g_cls["svm"]) == 0
  empty = dict(batch, box_valid=jnp.zeros_like(batch["box_valid"]),
               labels=jnp.zeros_like(batch["labels"]))
  assert np.isfinite(float(loss(v, empty)[0]))
  pred = jax.jit(family.predict)(v, batch)
  assert pred["boxes"].shape == (2, 10, 4) and pred["valid"].shape == (2, 10)


@pytest.mark.slow
def test_learns_shapes(shapes_dir, shapes_data, run_learning):
  # R-CNN (16 x 16 warps, 2 conv stages of 8/16, fc 128) on the shapes proposals stand-in
  # (data.proposals="shapes"), 128 regions a step over 4 images; evaluated on 50 images (770
  # warped windows each). Detections are scored by the SVMs (positive hinge weight 20, as in
  # configs/rcnn_shapes.py: with the paper's 2 this run reached mAP 0.011, the SVMs seeing ~50
  # negative pairs per positive). Measured 2026-11-21: loss 5.73 -> 3.87, mAP@0.5 on 50
  # validation images 0.000 -> 0.074; 56 s wall (32 s CPU) on the shared 2-core CPU, excluding
  # dataset preparation.
  result = run_learning(
      shapes_data(shapes_dir, batch_size=4, eval_batch_size=25, proposals="shapes",
                  max_proposals=1000), "rcnn",
      {"warp_size": 16, "features": (8, 16), "fc": (128, 128), "detections_per_image": 30,
       "svm_pos_weight": 20.0},
      steps=300, lr=5e-3, num_val=50)
  assert result["loss_last"] < 0.8 * result["loss_first"], result
  assert result["map_trained"] > max(0.03, result["map_untrained"] + 0.02), result
