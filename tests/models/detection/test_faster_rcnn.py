"""Faster R-CNN (Ren et al. 2015): the family glue, one jitted step through RPN -> proposals ->
sampling -> RoI heads, static shapes (no recompilation while the number of boxes varies), bad
input, psum-ed normalizers across devices, full-size R50-FPN / C4 via eval_shape, and a learning
test on the shapes dataset (slow)."""

from __future__ import annotations

import functools
import time

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxvision.models import MODELS
from jaxvision.models.detection import faster_rcnn as frcnn
from jaxvision.models.detection import roi_heads as heads
from jaxvision.models.detection import rpn as rpn_lib

K = 3  # foreground classes in the synthetic tests
M = 4  # max boxes
IMAGE = 64


class TinyBackbone(nn.Module):
  """Four strided convolutions: C2..C5 at strides 4..32 (compiles in a second)."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    del train
    c2 = nn.relu(nn.Conv(8, (3, 3), strides=4, name="c2")(x))
    c3 = nn.relu(nn.Conv(8, (3, 3), strides=2, name="c3")(c2))
    c4 = nn.relu(nn.Conv(8, (3, 3), strides=2, name="c4")(c3))
    c5 = nn.relu(nn.Conv(8, (3, 3), strides=2, name="c5")(c4))
    return {"C2": c2, "C3": c3, "C4": c4, "C5": c5}


def _module(*, rpn_kwargs=None, roi_kwargs=None):
  rpn_cfg = rpn_lib.RPNConfig(**{"anchor_sizes": ((16, 32, 48),), "pre_nms_top_n_train": 60,
                                 "post_nms_top_n_train": 24, "pre_nms_top_n_test": 60,
                                 "post_nms_top_n_test": 16, **(rpn_kwargs or {})})
  roi_cfg = heads.RoIHeadsConfig(**{"batch_size_per_image": 16, "output_size": 4,
                                    "detections_per_image": 10, **(roi_kwargs or {})})
  return frcnn.FasterRCNN(
      backbone=TinyBackbone(),
      rpn_head=rpn_lib.RPNHead(num_anchors=rpn_cfg.num_anchors, conv_features=8),
      box_head=heads.TwoMLPHead(16), box_predictor=heads.FastRCNNPredictor(K),
      rpn_config=rpn_cfg, roi_config=roi_cfg)


def _family(**kwargs):
  return frcnn.detection_family(_module(**kwargs), K, frcnn.faster_rcnn_losses,
                                frcnn.faster_rcnn_detect)


def _batch(num_boxes, b=2, seed=0, boxes=None):
  rng = np.random.default_rng(seed)
  out = {
      "image": rng.normal(size=(b, IMAGE, IMAGE, 3)).astype(np.float32),
      "image_hw": np.full((b, 2), IMAGE, np.int32),
      "boxes": np.zeros((b, M, 4), np.float32),
      "labels": np.zeros((b, M), np.int32),
      "box_valid": np.zeros((b, M), bool),
      "example_valid": np.ones((b,), bool),
  }
  for i in range(b):
    for j in range(num_boxes):
      x, y = rng.uniform(0, 40, 2)
      w, h = rng.uniform(10, 24, 2)
      out["boxes"][i, j] = [x, y, x + w, y + h]
      out["labels"][i, j] = rng.integers(1, K + 1)
      out["box_valid"][i, j] = True
  if boxes is not None:
    out["boxes"][:, :len(boxes)] = boxes
    out["labels"][:, :len(boxes)] = 1
    out["box_valid"][:, :len(boxes)] = True
  return out


_VARS = {}


def _variables(family):
  key = id(family.module.__class__), family.module.rpn_config.objectness
  if key not in _VARS:
    _VARS[key] = jax.jit(family.init)(jax.random.PRNGKey(0), _batch(1))
  return _VARS[key]


def _loss_and_grads(family):
  def fn(variables, batch, rng):
    def loss(params):
      total, terms, _ = family.train_loss({**variables, "params": params}, batch, rng=rng)
      return total, terms
    return jax.value_and_grad(loss, has_aux=True)(variables["params"])
  return fn


# ------------------------------------------------------------------------------------------------
# One jitted step
# ------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_train_step_terms_and_gradients_reach_every_stage():
  family = _family()
  variables = _variables(family)
  (total, terms), grads = jax.jit(_loss_and_grads(family))(variables, _batch(3),
                                                           jax.random.PRNGKey(1))
  for name in ("rpn_cls", "rpn_box", "head_cls", "head_box"):
    assert name in terms and np.isfinite(float(terms[name])) and float(terms[name]) > 0
  np.testing.assert_allclose(float(total), sum(float(terms[n]) for n in
                                               ("rpn_cls", "rpn_box", "head_cls", "head_box")),
                             rtol=1e-5)
  # An untrained softmax over K + 1 classes starts near log(K + 1); the RPN near log 2.
  assert abs(float(terms["head_cls"]) - np.log(K + 1)) < 0.2
  assert abs(float(terms["rpn_cls"]) - np.log(2)) < 0.1
  for stage in ("backbone", "rpn_head", "box_head", "box_predictor"):
    norm = sum(float(jnp.sum(jnp.abs(g))) for g in jax.tree.leaves(grads[stage]))
    assert norm > 0 and np.isfinite(norm), stage


@pytest.mark.slow
def test_predict_contract():
  family = _family()
  preds = jax.jit(family.predict)(_variables(family), _batch(2))
  assert set(preds) == {"boxes", "scores", "labels", "valid"}
  assert preds["boxes"].shape == (2, 10, 4) and preds["scores"].shape == (2, 10)
  labels, valid = np.asarray(preds["labels"]), np.asarray(preds["valid"])
  assert np.all((labels[valid] >= 1) & (labels[valid] <= K)) and np.all(labels[~valid] == 0)
  b = np.asarray(preds["boxes"])
  assert b.min() >= 0 and b.max() <= IMAGE


@pytest.mark.slow
def test_stage_methods_via_apply():
  family = _family()
  module, variables = family.module, _variables(family)
  images = jnp.asarray(_batch(1)["image"])
  feats = module.apply(variables, images, method=module.features)
  assert set(feats) == {"C2", "C3", "C4", "C5"}
  logits, deltas = module.apply(variables, feats, method=module.rpn)
  assert logits.shape == (2, 4 * 4 * 9) and deltas.shape == (2, 144, 4)  # C4 of 64 px: 4 x 4
  rois = jnp.array([[[0, 0, 32, 32], [8, 8, 60, 40]]] * 2, jnp.float32)
  cls, box = module.apply(variables, feats, rois, jnp.ones((2, 2), bool), image_size=(64, 64),
                          method=module.roi_heads)
  assert cls.shape == (2, 2, K + 1) and box.shape == (2, 2, K, 4)


def test_no_recompilation_while_the_number_of_boxes_varies():
  family = _family()
  variables = _variables(family)
  traced = chex.assert_max_traces(_loss_and_grads(family), n=1)
  step = jax.jit(traced)
  predict = jax.jit(chex.assert_max_traces(family.predict, n=1))
  for n in range(M + 1):  # 0 .. max_boxes gt boxes
    (total, _), _ = step(variables, _batch(n, seed=n), jax.random.PRNGKey(n))
    assert np.isfinite(float(total))
    predict(variables, _batch(n, seed=n))
  chex.clear_trace_counter()


def test_row_buckets_give_the_same_outputs_with_few_proposals():
  # Two candidates per image before NMS: at most 2 of the 16 test proposal slots are valid, so at
  # inference the box head and the post-processing run on the 2-row bucket (buckets 16, 8, 4, 2),
  # against all 16 rows with row_buckets=1: the same predictions. (Training always uses all rows.)
  sparse = {"pre_nms_top_n_test": 2, "pre_nms_top_n_train": 2}
  families = [_family(rpn_kwargs=sparse, roi_kwargs={"row_buckets": nb}) for nb in (1, 4)]
  variables = _variables(families[0])
  batch = jax.tree.map(jnp.asarray, _batch(3))
  module = families[1].module
  proposals = module.apply(variables, batch, method=lambda m, b: frcnn.inference_proposals(
      m, m.features(b["image"]), b))
  assert int(jnp.max(jnp.sum(proposals.valid, axis=1))) <= 2
  preds = [jax.jit(f.predict)(variables, batch) for f in families]
  for key in preds[0]:
    np.testing.assert_array_equal(np.asarray(preds[0][key]), np.asarray(preds[1][key]), key)
  assert np.any(np.asarray(preds[0]["valid"]))


@pytest.mark.parametrize("case", ["no_objects", "degenerate", "outside_image", "nan_box",
                                  "padding_example"])
@pytest.mark.slow
def test_bad_input_gives_finite_loss_and_gradients(case):
  family = _family()
  variables = _variables(family)
  if case == "no_objects":
    batch = _batch(0)
  elif case == "degenerate":  # zero width, zero height, inverted
    batch = _batch(0, boxes=[[10, 10, 10, 30], [5, 20, 25, 20], [40, 40, 30, 30]])
  elif case == "outside_image":  # entirely outside the 64 x 64 image, and one straddling it
    batch = _batch(0, boxes=[[100, 100, 140, 150], [-50, -40, -10, -5], [50, 50, 90, 90]])
  elif case == "nan_box":
    batch = _batch(2)
    batch["boxes"][:, 0] = np.nan
  else:  # an evaluation-style padding example in the batch
    batch = _batch(2)
    batch["example_valid"][1] = False
  (total, terms), grads = jax.jit(_loss_and_grads(family))(variables, batch, jax.random.PRNGKey(0))
  assert np.isfinite(float(total)), terms
  assert all(np.all(np.isfinite(np.asarray(g))) for g in jax.tree.leaves(grads))
  preds = jax.jit(family.predict)(variables, batch)
  assert all(np.all(np.isfinite(np.asarray(v))) for v in preds.values())


@pytest.mark.slow
def test_normalizers_are_psummed_across_devices(summed_losses):
  # Sampling sizes above the candidate counts make sampling deterministic (every candidate is
  # taken), so one device on the whole batch and two devices on halves must give the same loss.
  family = _family(rpn_kwargs={"batch_size_per_image": 512},
                   roi_kwargs={"batch_size_per_image": 128})
  variables = _variables(family)
  batch = jax.tree.map(jnp.asarray, _batch(3, b=4, seed=3))
  key = jax.random.PRNGKey(0)

  results = [summed_losses(family, variables, batch, key, n) for n in (1, 2)]
  (t1, terms1), (t2, terms2) = results
  np.testing.assert_allclose(float(t1), float(t2), rtol=1e-5)
  for name in ("rpn_cls", "rpn_box", "head_cls", "head_box"):
    np.testing.assert_allclose(float(terms1[name]), float(terms2[name]), rtol=1e-5, err_msg=name)


# ------------------------------------------------------------------------------------------------
# Configuration and full-size models
# ------------------------------------------------------------------------------------------------


def test_registry_and_config_errors():
  family = MODELS["faster_rcnn"]({"backbone": {"name": "resnet18", "width": 4, "norm": "batch"},
                                  "rpn": {"anchor_sizes": [[16, 32, 64]]},
                                  "box_head": {"kind": "conv", "num_convs": 1}}, 5)
  assert family.task == "detection" and family.num_classes == 5
  assert family.module.rpn_config.anchor_sizes == ((16.0, 32.0, 64.0),)
  with pytest.raises(ValueError, match="unknown model config keys"):
    MODELS["faster_rcnn"]({"rpn_levels": 3}, 5)
  with pytest.raises(ValueError, match="preset"):
    MODELS["faster_rcnn"]({"preset": "c5"}, 5)
  with pytest.raises(ValueError, match=r"unknown model.rpn keys \['nms'\]"):
    MODELS["faster_rcnn"]({"rpn": {"nms": 0.5}}, 5)
  with pytest.raises(ValueError, match="box_head.kind"):
    MODELS["faster_rcnn"]({"box_head": {"kind": "mlp3"}}, 5)
  with pytest.raises(ValueError, match="num_classes"):
    MODELS["faster_rcnn"]({}, 0)


def _abstract_batch(b, size, max_boxes=8):
  return {"image": jax.ShapeDtypeStruct((b, size, size, 3), jnp.float32),
          "image_hw": jax.ShapeDtypeStruct((b, 2), jnp.int32),
          "boxes": jax.ShapeDtypeStruct((b, max_boxes, 4), jnp.float32),
          "labels": jax.ShapeDtypeStruct((b, max_boxes), jnp.int32),
          "box_valid": jax.ShapeDtypeStruct((b, max_boxes), jnp.bool_)}


def _num_params(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


@pytest.mark.slow
def test_full_size_resnet50_fpn_eval_shape():
  """Faster R-CNN R50-FPN at 800 x 800: shapes only (jax.eval_shape, nothing compiled)."""
  family = MODELS["faster_rcnn"]({"preset": "torchvision_fpn"}, 90)
  batch = _abstract_batch(1, 800)
  variables = jax.eval_shape(family.init, jax.random.PRNGKey(0), batch)
  # torchvision's fasterrcnn_resnet50_fpn(num_classes=91) has 41,755,286 parameters besides its
  # (frozen) BatchNorm affine terms, which live in batch_stats here.
  assert _num_params(variables["params"]) == 41_755_286
  assert set(variables["params"]) == {"backbone", "neck", "rpn_head", "box_head", "box_predictor"}
  preds = jax.eval_shape(family.predict, variables, batch)
  assert preds["boxes"].shape == (1, 100, 4) and preds["labels"].shape == (1, 100)
  loss, terms, _ = jax.eval_shape(
      functools.partial(family.train_loss, rng=jax.random.PRNGKey(0)), variables, batch)
  assert loss.shape == () and {"rpn_cls", "rpn_box", "head_cls", "head_box"} <= set(terms)
  # The paper's FPN preset: 2k softmax scores (k = 3) and a 4K box layer.
  paper = MODELS["faster_rcnn"]({"preset": "fpn"}, 90)
  pv = jax.eval_shape(paper.init, jax.random.PRNGKey(0), batch)
  assert pv["params"]["rpn_head"]["cls_logits"]["kernel"].shape == (1, 1, 256, 6)
  assert pv["params"]["box_predictor"]["bbox_pred"]["kernel"].shape == (1024, 360)


def test_full_size_resnet50_c4_eval_shape():
  family = MODELS["faster_rcnn"]({"preset": "c4"}, 20)
  batch = _abstract_batch(1, 608)
  variables = jax.eval_shape(family.init, jax.random.PRNGKey(0), batch)
  params = variables["params"]
  assert params["rpn_head"]["conv"]["kernel"].shape == (3, 3, 1024, 1024)  # on C4 (1024 ch)
  assert params["rpn_head"]["cls_logits"]["kernel"].shape == (1, 1, 1024, 18)  # 2k, k = 9
  assert params["box_head"]["layer4_0"]["conv3"]["kernel"].shape == (1, 1, 512, 2048)  # res5
  assert params["box_predictor"]["cls_score"]["kernel"].shape == (2048, 21)
  preds = jax.eval_shape(family.predict, variables, batch)
  assert preds["scores"].shape == (1, 100)
  loss, _, _ = jax.eval_shape(functools.partial(family.train_loss, rng=jax.random.PRNGKey(0)),
                              variables, batch)
  assert loss.shape == ()


# ------------------------------------------------------------------------------------------------
# Learning (slow)
# ------------------------------------------------------------------------------------------------


def _voc_map(family, variables, batches, num_classes):
  from jaxvision.eval.voc import VocEvaluator  # noqa: PLC0415

  predict = jax.jit(family.predict)
  ev = VocEvaluator(num_classes)
  for batch in batches:
    p = jax.device_get(predict(variables, batch))
    ev.update(p["boxes"], p["scores"], p["labels"], batch["boxes"], batch["labels"],
              valid=p["valid"], gt_valid=batch["box_valid"])
  return float(ev.result()["mAP"])


@pytest.mark.slow
def test_learns_shapes(shapes_dir):
  # A tiny C4 Faster R-CNN (ResNet-18 width 8, C4 at stride 8, conv box head), 250 steps of 8
  # images. Measured: loss 2.01 -> 0.99, mAP@0.5 0.001 -> 0.138; 137 s of CPU time (700 s wall on
  # the loaded shared CPU).
  import optax  # noqa: PLC0415

  import ml_collections  # noqa: PLC0415
  from jaxvision.data import builder  # noqa: PLC0415

  start = time.time()
  data = ml_collections.ConfigDict({
      "name": "shapes", "data_dir": shapes_dir, "train_split": "train", "eval_split": "validation",
      "image_size": (128, 128), "batch_size": 8, "eval_batch_size": 100, "max_boxes": 8,
      "mask_stride": 1, "keep_masks": False, "seed": 0,
      "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225),
      "augment": {"flip": True, "photometric": False, "elastic": False, "scale_jitter": None}})
  train = builder.make_split(data, train=True)
  val = builder.make_split(data, train=False)
  val = [val[i] for i in range(len(val))]
  family = MODELS["faster_rcnn"]({
      "backbone": {"name": "resnet18", "width": 8, "norm": "batch", "output_stride": 8},
      "rpn": {"anchor_sizes": ((16, 32, 64),), "pre_nms_top_n_train": 300,
              "post_nms_top_n_train": 100, "pre_nms_top_n_test": 300, "post_nms_top_n_test": 50},
      "roi_heads": {"batch_size_per_image": 64, "detections_per_image": 30},
      "box_head": {"kind": "conv", "num_convs": 1, "conv_features": 32,
                   "representation_size": 128}}, 5)
  variables = jax.jit(family.init)(jax.random.PRNGKey(0), val[0])
  untrained = _voc_map(family, variables, val, 5)
  steps = 250
  tx = optax.adamw(optax.warmup_cosine_decay_schedule(0.0, 3e-3, 30, steps), weight_decay=1e-4)
  params, rest = variables["params"], {k: v for k, v in variables.items() if k != "params"}
  opt_state = tx.init(params)

  @jax.jit
  def step(params, rest, opt_state, batch, key):
    def loss_fn(p):
      total, terms, mutated = family.train_loss({"params": p, **rest}, batch, rng=key)
      return total, (terms, mutated)
    (total, (terms, mutated)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), {**rest, **mutated}, opt_state, total

  losses = []
  for i in range(steps):
    params, rest, opt_state, total = step(params, rest, opt_state, train[i],
                                          jax.random.PRNGKey(i))
    losses.append(float(total))
  trained = _voc_map(family, {"params": params, **rest}, val, 5)
  print(f"loss {np.mean(losses[:10]):.3f} -> {np.mean(losses[-20:]):.3f}; mAP@0.5 untrained "
        f"{untrained:.3f} -> trained {trained:.3f}; {time.time() - start:.0f} s")
  assert np.mean(losses[-20:]) < 0.6 * np.mean(losses[:10])
  assert trained > untrained + 0.05 and trained > 3 * max(untrained, 0.01)


def test_bad_batch_raises_value_error_naming_the_key():
  family = _family()
  variables = _variables(family)
  batch = _batch(1)
  del batch["box_valid"]
  with pytest.raises(ValueError, match="box_valid"):
    family.train_loss(variables, batch, rng=jax.random.PRNGKey(0))
  batch = _batch(1)
  batch["labels"] = batch["labels"][:, :2]
  with pytest.raises(ValueError, match=r"batch\['labels'\] must be \[B, M\]"):
    family.train_loss(variables, batch, rng=jax.random.PRNGKey(0))
