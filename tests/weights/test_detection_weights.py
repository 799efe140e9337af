"""Whole detection models from torchvision: ``convert_fasterrcnn_resnet50_fpn``,
``convert_maskrcnn_resnet50_fpn``, ``convert_retinanet_resnet50_fpn``, ``convert_fcos_resnet50_fpn``
and ``convert_ssd300_vgg16``.

Parity: torchvision's ``FasterRCNN`` / ``MaskRCNN`` / ``RetinaNet`` / ``FCOS`` / ``SSD`` at a tiny
width (tests/fixtures/detection*.npz from gen_detection.py; weights rebuilt here from the stored
key names), converted and run in jaxvision's torchvision configurations, give the same FPN
features, RPN/head outputs, anchors, proposals, box-head and mask-head outputs on fixed RoIs, and
the same final detections and pasted masks (torchvision's transform is the identity in the
fixtures: mean 0, std 1, no resize, no padding). Coverage: the full-size torchvision key sets
(stored from torchvision) convert into the full-size jaxvision models with every key and shape
checked by ``load_into``, also under torchvision's pre-0.13 key names (its released COCO files).
"""

import functools
import importlib.util
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxvision.models import MODELS
from jaxvision.models.detection import faster_rcnn as frcnn
from jaxvision.models.detection import rpn as rpn_lib
from jaxvision.weights import (WeightMismatchError, convert_fasterrcnn_resnet50_fpn,
                               convert_fcos_resnet50_fpn, convert_ssd300_vgg16,
                               fcos_model_config, ssd_model_config,
                               convert_maskrcnn_resnet50_fpn, convert_retinanet_resnet50_fpn,
                               detection_model_config, load_into, load_model_into,
                               retinanet_model_config,
                               upgrade_legacy_detection_keys)

FIXTURES = pathlib.Path(__file__).resolve().parents[1] / "fixtures"


def _load(name):
  spec = importlib.util.spec_from_file_location(name, FIXTURES / f"{name}.py")
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


gen = _load("gen_detection")  # NumPy only at import
B = gen.INPUT_SHAPE[0]


def _npz(name):
  with np.load(FIXTURES / name, allow_pickle=False) as f:
    return dict(f)


@pytest.fixture(scope="module")
def ref():
  return _npz("detection.npz")


@pytest.fixture(scope="module")
def ref_mask():
  return _npz("detection_mask.npz")


def _state_dict(keys_json):
  return {k: (np.zeros(shape, np.int64) if k.endswith("num_batches_tracked")
              else gen.tensor(k, shape))
          for k, shape in json.loads(str(keys_json))}


def _close(actual, expected, rel=1e-4, what=""):
  """Within ``rel`` of the output's scale (fp32), which is asserted to be O(1) or more."""
  actual, expected = np.asarray(actual), np.asarray(expected)
  assert actual.shape == expected.shape, (what, actual.shape, expected.shape)
  scale = float(np.abs(expected).max())
  assert scale > 0.1, what
  np.testing.assert_allclose(actual, expected, rtol=0, atol=rel * scale, err_msg=what)
  return float(np.abs(actual - expected).max())


def _tiny(name, keys_json, convert):
  sd = _state_dict(keys_json)
  config, num_classes = detection_model_config(sd)
  assert config["name"] == name and num_classes == gen.NUM_CLASSES
  assert config["backbone"]["name"] == "resnet50" and config["neck"]["features"] == gen.FPN_FEATURES
  config = dict(config, backbone={**config["backbone"], "width": gen.WIDTH})
  config.pop("name")
  family = MODELS[name](config, num_classes)
  x = jnp.asarray(gen.input_images())
  template = jax.eval_shape(family.init, jax.random.key(0), {"image": x})
  return family, load_into(template, convert(sd)), x


@pytest.fixture(scope="module")
def faster(ref):
  return _tiny("faster_rcnn", ref["frcnn_keys"], convert_fasterrcnn_resnet50_fpn)


def _fixed():
  return jnp.asarray(np.stack([gen.fixed_proposals(i) for i in range(B)]))


@pytest.mark.slow
def test_faster_rcnn_features_rpn_and_box_head_parity(ref, faster):
  family, variables, x = faster
  m = family.module
  feats = jax.jit(functools.partial(m.apply, method=m.features))(variables, x)
  for level in range(2, 7):
    _close(feats[f"P{level}"], ref[f"frcnn_P{level}"], what=f"P{level}")
  logits, deltas = jax.jit(functools.partial(m.apply, method=m.rpn))(variables, feats)
  anchors, counts = rpn_lib.rpn_anchors(m.rpn_config, x.shape[1:3],
                                        [feats[n].shape[1:3] for n in m.rpn_config.levels])
  np.testing.assert_array_equal(anchors, ref["frcnn_anchors"])
  start = 0
  for level, count in zip(m.rpn_config.levels, counts):  # per level
    sl = slice(start, start + int(count))
    _close(logits[:, sl], ref["frcnn_rpn_logits"][:, sl], what=f"RPN logits {level}")
    _close(deltas[:, sl], ref["frcnn_rpn_deltas"][:, sl], what=f"RPN deltas {level}")
    start += int(count)
  assert start == logits.shape[1]
  fixed = _fixed()
  # Every FPN level P2..P5 receives some of the fixed RoIs (the level rule is exercised).
  from jaxvision.ops.roi import assign_fpn_levels  # noqa: PLC0415
  assert set(np.asarray(assign_fpn_levels(fixed.reshape(-1, 4), k_min=2, k_max=5)).tolist()) == {
      2, 3, 4, 5}
  class_logits, box_deltas = jax.jit(functools.partial(m.apply, method=m.roi_heads,
                                                       image_size=x.shape[1:3]))(
      variables, feats, fixed, jnp.ones(fixed.shape[:2], bool))
  _close(class_logits, ref["frcnn_class_logits"], what="class logits")
  # torchvision's 4 (K + 1) regression outputs; jaxvision drops the background slot.
  _close(box_deltas.reshape(B, gen.NUM_FIXED, -1), ref["frcnn_box_regression"][..., 4:],
         what="box deltas")


def _match_detections(boxes, scores, labels, valid, ref_boxes, ref_scores, ref_labels):
  """Same detections: same count, labels, boxes within 1e-3 and scores within 1e-5, in the same
  score order; detections whose scores tie exactly (equal fp32 values, which torchvision's sort
  leaves in an unspecified order) may come in either order."""
  n = int(np.sum(valid))
  assert n == len(ref_scores)
  boxes, scores, labels = np.asarray(boxes)[:n], np.asarray(scores)[:n], np.asarray(labels)[:n]
  np.testing.assert_allclose(scores, ref_scores, rtol=0, atol=1e-5)
  used = np.zeros(n, bool)
  for i in range(n):
    cand = np.flatnonzero(~used & (np.abs(scores - ref_scores[i]) <= 1e-5)
                          & (labels == ref_labels[i]) & (np.abs(boxes - ref_boxes[i]).max(-1) <= 1e-3))
    assert cand.size, f"torchvision detection {i} ({ref_labels[i]}, {ref_scores[i]}, " \
                      f"{ref_boxes[i]}) has no jaxvision counterpart"
    j = cand[np.argmin(np.abs(cand - i))]
    assert abs(j - i) <= 1 or scores[j] == scores[i], (i, j)
    used[j] = True
  return float(np.max(np.abs(np.sort(boxes, 0) - np.sort(ref_boxes, 0)))) if n else 0.0


@pytest.mark.slow
def test_faster_rcnn_proposals_and_detections_equal_torchvisions(ref, faster):
  family, variables, x = faster
  m = family.module
  batch = {"image": x}

  def proposals(v, b):
    feats = m.apply(v, b["image"], method=m.features)
    return m.apply(v, feats, b, method=frcnn.inference_proposals)

  props = jax.jit(proposals)(variables, batch)
  for i in range(B):
    expected = ref[f"frcnn_proposals_{i}"]
    assert int(props.valid[i].sum()) == len(expected) > 100
    # Boxes decoded from the same (1e-5-close) deltas; in pixels of a 64 x 96 image.
    np.testing.assert_allclose(props.boxes[i][:len(expected)], expected, rtol=0, atol=1e-3)
  dets = jax.jit(family.predict)(variables, batch)
  for i in range(B):
    _match_detections(dets["boxes"][i], dets["scores"][i], dets["labels"][i], dets["valid"][i],
                      ref[f"frcnn_det_boxes_{i}"], ref[f"frcnn_det_scores_{i}"],
                      ref[f"frcnn_det_labels_{i}"])


def _full_template(name, num_classes=90):
  family = MODELS[name]({"preset": "torchvision_fpn"}, num_classes)
  batch = {"image": jnp.zeros((1, 64, 64, 3))}
  return jax.eval_shape(family.init, jax.random.key(0), batch)


_LEGACY = {"backbone.fpn.inner_blocks.0.0.weight": "backbone.fpn.inner_blocks.0.weight",
           "backbone.fpn.layer_blocks.3.0.bias": "backbone.fpn.layer_blocks.3.bias",
           "rpn.head.conv.0.0.weight": "rpn.head.conv.weight",
           "rpn.head.conv.0.0.bias": "rpn.head.conv.bias",
           "roi_heads.mask_head.0.0.weight": "roi_heads.mask_head.mask_fcn1.weight",
           "roi_heads.mask_head.3.0.bias": "roi_heads.mask_head.mask_fcn4.bias"}


@pytest.mark.parametrize("legacy", [False, True])
@pytest.mark.parametrize("name,key,convert", [
    ("faster_rcnn", "full_fasterrcnn_resnet50_fpn_keys", convert_fasterrcnn_resnet50_fpn),
    ("mask_rcnn", "full_maskrcnn_resnet50_fpn_keys", convert_maskrcnn_resnet50_fpn)])
def test_full_size_torchvision_keys_load_into_the_full_size_model(ref, ref_mask, name, key, convert,
                                                                  legacy):
  keys = json.loads(str((ref if name == "faster_rcnn" else ref_mask)[key]))
  # Zero-stride views: real shapes, no memory spent on values.
  sd = {k: np.broadcast_to(np.float32(0.0), shape) for k, shape in keys}
  if legacy:  # torchvision < 0.13 names, as in its released *_coco checkpoints
    sd = {_LEGACY.get(k, k): v for k, v in sd.items()}
    assert any(k in sd for k in _LEGACY.values())
    assert set(upgrade_legacy_detection_keys(sd)) == {k for k, _ in keys}
  loaded = load_into(_full_template(name), convert(sd))  # raises on any key/shape difference
  n_params = sum(int(np.prod(v.shape)) for v in jax.tree.leaves(loaded["params"]))
  n_stats = sum(int(np.prod(v.shape)) for v in jax.tree.leaves(loaded["batch_stats"]))
  n_torch = sum(int(np.prod(s)) for k, s in keys if not k.endswith("num_batches_tracked"))
  assert n_params + n_stats == n_torch  # every torchvision value has a place, and nothing else
  config, num_classes = detection_model_config(sd)
  assert num_classes == 90 and config["name"] == name
  assert config["backbone"]["name"] == "resnet50" and config["neck"]["features"] == 256
  assert config["box_head"]["representation_size"] == 1024


def test_mismatches_are_reported(ref, ref_mask):
  sd = _state_dict(ref["frcnn_keys"])
  del sd["rpn.head.bbox_pred.bias"]
  with pytest.raises(WeightMismatchError, match=r"missing.*rpn\.head\.bbox_pred\.bias"):
    convert_fasterrcnn_resnet50_fpn(sd)
  masked = _state_dict(ref_mask["mrcnn_keys"])
  with pytest.raises(WeightMismatchError, match="use convert_maskrcnn_resnet50_fpn"):
    convert_fasterrcnn_resnet50_fpn(masked)
  with pytest.raises(WeightMismatchError, match="no mask branch"):
    convert_maskrcnn_resnet50_fpn(_state_dict(ref["frcnn_keys"]))
  # A file for another number of classes: load_into names the box predictor's shapes.
  family = MODELS["faster_rcnn"]({"preset": "torchvision_fpn", "backbone": {"width": gen.WIDTH},
                                  "neck": {"features": gen.FPN_FEATURES},
                                  "box_head": {"representation_size": gen.REPRESENTATION}},
                                 gen.NUM_CLASSES + 2)
  template = jax.eval_shape(family.init, jax.random.key(0),
                            {"image": jnp.zeros(gen.INPUT_SHAPE)})
  with pytest.raises(WeightMismatchError, match="box_predictor/cls_score/kernel"):
    load_into(template, convert_fasterrcnn_resnet50_fpn(_state_dict(ref["frcnn_keys"])))


@pytest.fixture(scope="module")
def masked(ref_mask):
  return _tiny("mask_rcnn", ref_mask["mrcnn_keys"], convert_maskrcnn_resnet50_fpn)


@pytest.mark.slow
def test_mask_rcnn_mask_logits_parity(ref_mask, masked):
  family, variables, x = masked
  m = family.module
  assert m.mask_config.aligned is False and m.mask_config.channel_offset == 1
  fixed = _fixed()[:, :gen.NUM_MASK_FIXED]

  def mask_logits(v, x, rois):
    feats = m.apply(v, x, method=m.features)
    return m.apply(v, feats, rois, jnp.ones(rois.shape[:2], bool), image_size=x.shape[1:3],
                   method=m.mask_logits)

  logits = jax.jit(mask_logits)(variables, x, fixed)  # (B, S, 28, 28, K + 1)
  _close(logits, ref_mask["mrcnn_mask_logits"], what="mask logits")


@pytest.mark.slow
def test_mask_rcnn_detections_and_masks_equal_torchvisions(ref_mask, masked):
  family, variables, x = masked
  out = jax.jit(family.predict)(variables, {"image": x})
  for i in range(B):
    _match_detections(out["boxes"][i], out["scores"][i], out["labels"][i], out["valid"][i],
                      ref_mask[f"mrcnn_det_boxes_{i}"], ref_mask[f"mrcnn_det_scores_{i}"],
                      ref_mask[f"mrcnn_det_labels_{i}"])
    packed = ref_mask[f"mrcnn_det_masks_{i}"]
    expected = np.unpackbits(packed, axis=-1)[..., :x.shape[2]].astype(bool)
    assert expected.sum() > 1000  # the stored masks are not empty
    # Pasted exactly as torchvision's paste_masks_in_image (the preset's paste="torchvision"),
    # binarized as its COCO evaluation does (> 0.5).
    np.testing.assert_array_equal(out["masks"][i][:len(expected)], expected)


# ------------------------------------------------------------------------------------------------
# RetinaNet
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ref_retina():
  return _npz("detection_retinanet.npz")


@pytest.fixture(scope="module")
def retina(ref_retina):
  sd = _state_dict(ref_retina["retina_keys"])
  config, num_classes = retinanet_model_config(sd)
  assert num_classes == gen.NUM_CLASSES  # torchvision's K + 1 outputs, class 0 = background
  assert config["fpn_features"] == gen.FPN_FEATURES and config["head_convs"] == 4
  return _tiny_dense("retinanet", config, num_classes, convert_retinanet_resnet50_fpn(sd))


def _tiny_dense(name, config, num_classes, converted):
  """``(family, variables, x)``: ``MODELS[name]`` at the fixtures' backbone width with the
  converted variables loaded, and the fixtures' input images."""
  config = dict(config, backbone_args={**config["backbone_args"], "width": gen.WIDTH})
  family = MODELS[name](config, num_classes)
  x = jnp.asarray(gen.input_images())
  template = jax.eval_shape(functools.partial(family.module.init, train=False),
                            jax.random.key(0), x)
  return family, load_into(template, converted), x


def _fpn_levels(family, variables, x):
  """The neck's ``P3..P7`` maps of a RetinaNet/FCOS module (backbone + neck only)."""
  m = family.module

  def features(v, x):
    c = m.backbone.apply({k: col["backbone"] for k, col in v.items()}, x, train=False)
    return m.neck.apply({"params": v["params"]["neck"]}, c)

  return jax.jit(features)(variables, x)


def _full_size_load(ref, keys_name, model_config, name, convert):
  """Loads zeros of torchvision's full-size key set ``ref[keys_name]`` into the full-size model
  ``MODELS[name]``: ``(config, num_classes, loaded parameter count, torchvision's count)``."""
  keys = json.loads(str(ref[keys_name]))
  sd = {k: np.broadcast_to(np.float32(0.0), shape) for k, shape in keys}
  config, num_classes = model_config(sd)
  family = MODELS[name](config, num_classes)
  template = jax.eval_shape(functools.partial(family.module.init, train=False),
                            jax.random.key(0), jnp.zeros((1, 64, 64, 3)))
  loaded = load_into(template, convert(sd))
  n = sum(int(np.prod(v.shape)) for v in jax.tree.leaves(loaded))
  n_torch = sum(int(np.prod(s)) for k, s in keys if not k.endswith("num_batches_tracked"))
  return config, num_classes, n, n_torch


@pytest.mark.slow
def test_retinanet_features_and_head_parity(ref_retina, retina):
  family, variables, x = retina
  per_level = jax.jit(functools.partial(family.module.apply, train=False))(variables, x)
  feats = _fpn_levels(family, variables, x)
  for level in range(3, 8):
    _close(feats[f"P{level}"], ref_retina[f"retina_P{level}"], what=f"P{level}")
  from jaxvision.models.detection import retinanet  # noqa: PLC0415
  logits = retinanet.flatten_levels(per_level, "cls_logits", gen.NUM_CLASSES)
  deltas = retinanet.flatten_levels(per_level, "bbox_deltas", 4)
  # jaxvision drops torchvision's class-0 (background) channel.
  _close(logits, ref_retina["retina_cls_logits"][..., 1:], what="class logits")
  _close(deltas, ref_retina["retina_bbox_regression"], what="box deltas")
  shapes = {n: tuple(v["cls_logits"].shape[1:3]) for n, v in per_level.items()}
  anchors, _ = retinanet.retinanet_anchors_for(shapes, style="torchvision",
                                               image_size=x.shape[1:3])
  np.testing.assert_array_equal(anchors, ref_retina["retina_anchors"])


@pytest.mark.slow
def test_retinanet_detections_equal_torchvisions(ref_retina, retina):
  family, variables, x = retina
  dets = jax.jit(family.predict)(variables, {"image": x})
  assert dets["boxes"].shape == (B, 300, 4)
  for i in range(B):
    boxes = ref_retina[f"retina_det_boxes_{i}"]
    # Some boxes are clipped to zero width or height: torchvision keeps them, and so does the
    # torchvision configuration (drop_empty_boxes=False).
    assert np.any((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) == 0)
    _match_detections(dets["boxes"][i], dets["scores"][i], dets["labels"][i], dets["valid"][i],
                      boxes, ref_retina[f"retina_det_scores_{i}"],
                      ref_retina[f"retina_det_labels_{i}"])


@pytest.mark.parametrize("legacy", [False, True])
def test_full_size_retinanet_keys_load_into_the_full_size_model(ref_retina, legacy):
  keys = json.loads(str(ref_retina["full_retinanet_resnet50_fpn_keys"]))
  sd = {k: np.broadcast_to(np.float32(0.0), shape) for k, shape in keys}
  if legacy:  # torchvision < 0.13: head towers as Sequential(conv, relu, ...) -> conv.{2i}
    import re  # noqa: PLC0415
    sd = {re.sub(r"conv\.(\d)\.0\.", lambda m: f"conv.{2 * int(m[1])}.", k): v
          for k, v in sd.items()}
    assert "head.classification_head.conv.6.weight" in sd
  config, num_classes = retinanet_model_config(sd)
  assert num_classes == 90 and config["fpn_features"] == 256 and config["head_features"] == 256
  family = MODELS["retinanet"](config, num_classes)
  template = jax.eval_shape(functools.partial(family.module.init, train=False),
                            jax.random.key(0), jnp.zeros((1, 64, 64, 3)))
  loaded = load_into(template, convert_retinanet_resnet50_fpn(sd))
  n = sum(int(np.prod(v.shape)) for v in jax.tree.leaves(loaded))
  n_torch = sum(int(np.prod(s)) for k, s in keys if not k.endswith("num_batches_tracked"))
  a = 9
  assert n == n_torch - a * (256 * 9 + 1)  # all but the background channel of cls_logits


def test_load_model_into_reads_a_file_and_checks_the_whole_model(tmp_path, ref, faster):
  from jaxvision.weights import write_safetensors  # noqa: PLC0415

  family, variables, x = faster
  sd = _state_dict(ref["frcnn_keys"])
  path = tmp_path / "fasterrcnn_tiny.safetensors"
  write_safetensors(path, {k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")})
  template = jax.eval_shape(family.init, jax.random.key(0), {"image": x})
  loaded = load_model_into(template, path, "fasterrcnn_resnet50_fpn")
  for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(variables)):
    np.testing.assert_array_equal(a, b)
  with pytest.raises(WeightMismatchError, match="nothing was loaded"):
    load_model_into(template, path, "maskrcnn_resnet50_fpn")
  with pytest.raises(ValueError, match="model must be one of"):
    load_model_into(template, path, "fasterrcnn_mobilenet_v3")


def test_mask_rcnn_torchvision_preset_mask_settings_and_overrides():
  from jaxvision.models.detection import mask_rcnn  # noqa: PLC0415

  tv = mask_rcnn.build_mask_rcnn({"preset": "torchvision_fpn"}, 3).mask_config
  assert (tv.aligned, tv.paste, tv.channel_offset) == (False, "torchvision", 1)
  given = mask_rcnn.build_mask_rcnn({"preset": "torchvision_fpn",
                                     "mask_head": {"aligned": True, "paste": "bilinear"}}, 3)
  assert (given.mask_config.aligned, given.mask_config.paste) == (True, "bilinear")
  paper = mask_rcnn.build_mask_rcnn({"preset": "fpn"}, 3).mask_config
  assert (paper.aligned, paper.paste) == (True, "bilinear")  # unchanged defaults
  with pytest.raises(ValueError, match="model.mask_head.paste"):
    mask_rcnn.MaskHeadConfig(paste="nearest")


# ------------------------------------------------------------------------------------------------
# FCOS
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ref_fcos():
  return _npz("detection_fcos.npz")


@pytest.fixture(scope="module")
def fcos(ref_fcos):
  sd = {k: (np.zeros(shape, np.int64) if k.endswith("num_batches_tracked")
            else gen.tensor(k, shape, "fcos"))
        for k, shape in json.loads(str(ref_fcos["fcos_keys"]))}
  config, num_classes = fcos_model_config(sd)
  assert num_classes == gen.NUM_CLASSES and config["head_features"] == gen.FCOS_FEATURES
  return _tiny_dense("fcos", config, num_classes, convert_fcos_resnet50_fpn(sd))


@pytest.mark.slow
def test_fcos_features_head_and_locations_parity(ref_fcos, fcos):
  from jaxvision.models.detection import fcos as fcos_lib  # noqa: PLC0415
  from jaxvision.models.detection import retinanet  # noqa: PLC0415

  family, variables, x = fcos
  per_level = jax.jit(functools.partial(family.module.apply, train=False))(variables, x)
  feats = _fpn_levels(family, variables, x)
  for level in range(3, 8):
    _close(feats[f"P{level}"], ref_fcos[f"fcos_P{level}"], what=f"P{level}")
  logits = retinanet.flatten_levels(per_level, "cls_logits", gen.NUM_CLASSES)
  _close(logits, ref_fcos["fcos_cls_logits"][..., 1:], what="class logits")  # class 0 dropped
  _close(retinanet.flatten_levels(per_level, "ltrb", 4), ref_fcos["fcos_bbox_regression"],
         what="distances")
  _close(retinanet.flatten_levels(per_level, "centerness", 1), ref_fcos["fcos_bbox_ctrness"],
         what="centerness")
  shapes = {n: tuple(v["cls_logits"].shape[1:3]) for n, v in per_level.items()}
  loc, _ = fcos_lib.fcos_points(shapes, style="torchvision", image_size=x.shape[1:3])
  anchors = ref_fcos["fcos_anchors"]  # one anchor per location: centre and size 2^l
  np.testing.assert_array_equal(loc["points"], (anchors[:, :2] + anchors[:, 2:]) / 2)
  np.testing.assert_array_equal(loc["strides"], anchors[:, 2] - anchors[:, 0])


@pytest.mark.slow
def test_fcos_detections_equal_torchvisions(ref_fcos, fcos):
  family, variables, x = fcos
  dets = jax.jit(family.predict)(variables, {"image": x})
  for i in range(B):
    _match_detections(dets["boxes"][i], dets["scores"][i], dets["labels"][i], dets["valid"][i],
                      ref_fcos[f"fcos_det_boxes_{i}"], ref_fcos[f"fcos_det_scores_{i}"],
                      ref_fcos[f"fcos_det_labels_{i}"])


def test_full_size_fcos_keys_load_into_the_full_size_model(ref_fcos):
  config, num_classes, n, n_torch = _full_size_load(
      ref_fcos, "full_fcos_resnet50_fpn_keys", fcos_model_config, "fcos", convert_fcos_resnet50_fpn)
  assert num_classes == 90 and config["head_convs"] == 4 and config["head_features"] == 256
  # All but the background class's 3x3 filter and bias; plus the five per-level scales (1).
  assert n == n_torch - (256 * 9 + 1) + 5


# ------------------------------------------------------------------------------------------------
# SSD300
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ref_ssd():
  return _npz("detection_ssd.npz")


@pytest.fixture(scope="module")
def ssd(ref_ssd):
  sd = {k: (np.zeros(shape, np.int64) if k.endswith("num_batches_tracked")
            else gen.tensor(k, shape, "ssd"))
        for k, shape in json.loads(str(ref_ssd["ssd_keys"]))}
  config, num_classes = ssd_model_config(sd)
  assert num_classes == gen.NUM_CLASSES and config["extra_layers"] == gen.SSD_EXTRAS
  assert (config["vgg_width"], config["vgg_fc_features"]) == (gen.WIDTH, gen.SSD_FC)
  family = MODELS[config.pop("name")](config, num_classes)
  x = jnp.asarray(gen.ssd_input())
  template = jax.eval_shape(family.init, jax.random.key(0), {"image": x})
  return family, load_into(template, convert_ssd300_vgg16(sd)), x


@pytest.mark.slow
def test_ssd_head_outputs_default_boxes_and_detections_equal_torchvisions(ref_ssd, ssd):
  from jaxvision.models.detection import ssd as ssd_lib  # noqa: PLC0415
  from jaxvision.ops import anchors as anchor_ops  # noqa: PLC0415

  family, variables, x = ssd
  out = jax.jit(functools.partial(family.module.apply, train=False))(variables, x)
  rows = gen.ssd_rows()
  cls = jnp.concatenate([c.reshape(B, -1, c.shape[-1]) for c in out["cls_logits"]], axis=1)
  box = jnp.concatenate([d.reshape(B, -1, 4) for d in out["box_deltas"]], axis=1)
  assert cls.shape[1] == 8732
  # Every source level (38, 19, 10, 5, 3, 1 cells; 4, 6, 6, 6, 4, 4 boxes) has stored rows.
  bounds = np.cumsum([38 * 38 * 4, 19 * 19 * 6, 10 * 10 * 6, 5 * 5 * 6, 3 * 3 * 4, 4])
  assert set(np.searchsorted(bounds, rows, side="right").tolist()) == set(range(6))
  _close(cls[:, rows], ref_ssd["ssd_cls_logits"], what="class logits")
  _close(box[:, rows], ref_ssd["ssd_bbox_regression"], what="box deltas")
  shapes = [c.shape[1:3] for c in out["cls_logits"]]
  priors = ssd_lib.default_boxes_for(shapes, (300, 300), anchor_ops.SSD300_ASPECT_RATIOS,
                                     scales=anchor_ops.TORCHVISION_SSD300_SCALES,
                                     steps=ssd_lib.SSD300_STEPS, clip="size")
  np.testing.assert_allclose(priors[rows], ref_ssd["ssd_anchors"], rtol=0, atol=1e-4)
  batch = {"image": x, "image_hw": jnp.full((B, 2), 300, jnp.int32)}
  dets = jax.jit(family.predict)(variables, batch)
  for i in range(B):
    _match_detections(dets["boxes"][i], dets["scores"][i], dets["labels"][i], dets["valid"][i],
                      ref_ssd[f"ssd_det_boxes_{i}"], ref_ssd[f"ssd_det_scores_{i}"],
                      ref_ssd[f"ssd_det_labels_{i}"])


def test_full_size_ssd300_keys_load_into_the_full_size_model(ref_ssd):
  keys = json.loads(str(ref_ssd["full_ssd300_vgg16_keys"]))
  sd = {k: np.broadcast_to(np.float32(0.0), shape) for k, shape in keys}
  config, num_classes = ssd_model_config(sd)
  assert num_classes == 90 and config["vgg_width"] == 64 and config["vgg_fc_features"] == 1024
  family = MODELS[config.pop("name")](config, num_classes)
  template = jax.eval_shape(family.init, jax.random.key(0),
                            {"image": jnp.zeros((1, 300, 300, 3))})
  loaded = load_into(template, convert_ssd300_vgg16(sd))
  n = sum(int(np.prod(v.shape)) for v in jax.tree.leaves(loaded))
  assert n == sum(int(np.prod(s)) for _, s in keys)  # every torchvision value, nothing else


def test_load_model_into_skips_the_predictor_for_fine_tuning_on_other_classes(tmp_path, ref):
  """A COCO-style file (here the tiny model with gen.NUM_CLASSES classes) into a model with another
  number of classes: without ``skip`` the predictor's shapes are reported; with
  ``skip=["box_predictor"]`` everything else is loaded exactly and the predictor keeps its fresh
  initialisation. A skip path that names nothing is an error."""
  from jaxvision.weights import write_safetensors  # noqa: PLC0415

  sd = _state_dict(ref["frcnn_keys"])
  path = tmp_path / "fasterrcnn_tiny.safetensors"
  write_safetensors(path, {k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")})
  config, num_classes = detection_model_config(sd)
  config = dict(config, backbone={**config["backbone"], "width": gen.WIDTH})
  config.pop("name")
  x = jnp.asarray(gen.input_images())
  other = MODELS["faster_rcnn"](config, num_classes + 2)
  shapes = jax.eval_shape(other.init, jax.random.key(1), {"image": x})
  rng = np.random.default_rng(1)  # stands in for a fresh initialisation (no init compile)
  fresh = jax.tree.map(lambda s: rng.normal(size=s.shape).astype(s.dtype), shapes)
  with pytest.raises(WeightMismatchError, match="box_predictor/cls_score"):
    load_model_into(fresh, path, "fasterrcnn_resnet50_fpn")
  loaded = load_model_into(fresh, path, "fasterrcnn_resnet50_fpn", skip=["box_predictor"])
  expected = convert_fasterrcnn_resnet50_fpn(sd)
  for name in ("backbone", "neck", "rpn_head", "box_head"):
    for a, b in zip(jax.tree.leaves(loaded["params"][name]),
                    jax.tree.leaves(expected["params"][name])):
      np.testing.assert_array_equal(a, b)
  for a, b in zip(jax.tree.leaves(loaded["params"]["box_predictor"]),
                  jax.tree.leaves(fresh["params"]["box_predictor"])):
    np.testing.assert_array_equal(a, b)
  assert loaded["params"]["box_predictor"]["cls_score"]["kernel"].shape[-1] == num_classes + 3
  with pytest.raises(ValueError, match="name nothing"):
    load_model_into(fresh, path, "fasterrcnn_resnet50_fpn", skip=["box_predictr"])
