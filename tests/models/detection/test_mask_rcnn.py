"""Mask R-CNN (He et al. 2017): the mask loss on the gt class only, the mask branch inside the one
jitted Faster R-CNN step, static shapes (no recompilation while the number of boxes varies), bad
input (no instances, empty/tiny masks, crowd, more instances than max_boxes), RoIPool/softmax
ablations, psum-ed normalizers, config errors, full-size R50-FPN via eval_shape, and a learning
test on shapes (slow)."""

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
from jaxvision.models.detection import mask_rcnn as mrcnn
from jaxvision.models.detection import roi_heads as heads
from jaxvision.models.detection import rpn as rpn_lib
from jaxvision.ops import masks as mask_ops
from jaxvision.ops import roi as roi_ops

K = 3  # foreground classes in the synthetic tests
M = 4  # max boxes
IMAGE = 64
STRIDE = 2  # mask_stride of the synthetic batches


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


class RenameNeck(nn.Module):
  """A stand-in FPN: ``P2..P5 = C2..C5`` (no parameters), ``P6`` = stride-2 subsampling of P5."""

  @nn.compact
  def __call__(self, feats, train: bool = False):
    del train
    out = {f"P{i}": feats[f"C{i}"] for i in (2, 3, 4, 5)}
    out["P6"] = out["P5"][:, ::2, ::2]
    return out


def _module(*, mask_kwargs=None, roi_kwargs=None, rpn_kwargs=None, fpn=False):
  rpn_defaults = {"anchor_sizes": ((16, 32, 48),), "pre_nms_top_n_train": 60,
                  "post_nms_top_n_train": 24, "pre_nms_top_n_test": 60, "post_nms_top_n_test": 16}
  roi_defaults = {"batch_size_per_image": 16, "output_size": 4, "detections_per_image": 10}
  if fpn:
    rpn_defaults.update(levels=("P2", "P3", "P4"), anchor_sizes=((16,), (32,), (64,)))
    roi_defaults.update(fpn_levels=(2, 3, 4, 5))
  rpn_cfg = rpn_lib.RPNConfig(**{**rpn_defaults, **(rpn_kwargs or {})})
  roi_cfg = heads.RoIHeadsConfig(**{**roi_defaults, **(roi_kwargs or {})})
  mask_cfg = mrcnn.MaskHeadConfig(**{"output_size": 7, "num_convs": 2, "conv_features": 8,
                                     **(mask_kwargs or {})})
  outputs = K + 1 if mask_cfg.loss == "softmax" else K
  return mrcnn.MaskRCNN(
      backbone=TinyBackbone(), neck=RenameNeck() if fpn else None,
      rpn_head=rpn_lib.RPNHead(num_anchors=rpn_cfg.num_anchors, conv_features=8),
      box_head=heads.TwoMLPHead(16), box_predictor=heads.FastRCNNPredictor(K),
      rpn_config=rpn_cfg, roi_config=roi_cfg,
      mask_head=mrcnn.MaskRCNNHead(outputs, num_convs=mask_cfg.num_convs,
                                   conv_features=mask_cfg.conv_features),
      mask_config=mask_cfg)


def _family(**kwargs):
  from jaxvision.models.detection import faster_rcnn as frcnn  # noqa: PLC0415

  return frcnn.detection_family(_module(**kwargs), K, mrcnn.mask_rcnn_losses,
                                mrcnn.mask_rcnn_detect, task="instance_segmentation")


def _batch(num_boxes, b=2, seed=0, boxes=None):
  """Random boxes with elliptic instance masks filling them (masks at stride 2)."""
  rng = np.random.default_rng(seed)
  hm = IMAGE // STRIDE
  out = {
      "image": rng.normal(size=(b, IMAGE, IMAGE, 3)).astype(np.float32),
      "image_hw": np.full((b, 2), IMAGE, np.int32),
      "boxes": np.zeros((b, M, 4), np.float32),
      "labels": np.zeros((b, M), np.int32),
      "box_valid": np.zeros((b, M), bool),
      "is_crowd": np.zeros((b, M), bool),
      "masks": np.zeros((b, M, hm, hm), bool),
      "example_valid": np.ones((b,), bool),
  }
  if boxes is not None:
    boxes = np.asarray(boxes, np.float32)
  yy, xx = (np.mgrid[0:hm, 0:hm] + 0.5) * STRIDE
  for i in range(b):
    for j in range(num_boxes if boxes is None else len(boxes)):
      if boxes is None:
        x, y = rng.uniform(0, 40, 2)
        w, h = rng.uniform(10, 24, 2)
        box = np.array([x, y, x + w, y + h], np.float32)
      else:
        box = boxes[j]
      out["boxes"][i, j] = box
      out["labels"][i, j] = rng.integers(1, K + 1)
      out["box_valid"][i, j] = True
      cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
      rx, ry = max((box[2] - box[0]) / 2, 1e-3), max((box[3] - box[1]) / 2, 1e-3)
      out["masks"][i, j] = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1.0
  return out


_VARS = {}


def _variables(family, tag="default"):
  if tag not in _VARS:
    _VARS[tag] = jax.jit(family.init)(jax.random.PRNGKey(0), _batch(1))
  return _VARS[tag]


def _loss_and_grads(family):
  def fn(variables, batch, rng):
    def loss(params):
      total, terms, _ = family.train_loss({**variables, "params": params}, batch, rng=rng)
      return total, terms
    return jax.value_and_grad(loss, has_aux=True)(variables["params"])
  return fn


TERMS = ("rpn_cls", "rpn_box", "head_cls", "head_box", "mask")


# ------------------------------------------------------------------------------------------------
# The mask loss
# ------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_sigmoid_mask_loss_uses_only_the_gt_class_channel():
  rng = np.random.default_rng(0)
  p, m = 5, 6
  logits = jnp.asarray(rng.normal(size=(2, p, m, m, K)), jnp.float32)
  targets = jnp.asarray(rng.uniform(size=(2, p, m, m)) > 0.5, jnp.float32)
  labels = jnp.asarray(rng.integers(1, K + 1, (2, p)), jnp.int32)
  valid = jnp.asarray(rng.uniform(size=(2, p)) > 0.3).at[0, 0].set(True)
  loss, grad = jax.value_and_grad(
      lambda x: mrcnn.mask_loss(x, targets, labels, valid, kind="sigmoid"))(logits)
  # NumPy reference: BCE of the gt class's channel, mean over valid RoIs' pixels.
  x = np.asarray(logits)
  t, lab, v = np.asarray(targets), np.asarray(labels), np.asarray(valid)
  picked = np.take_along_axis(x, (lab - 1)[..., None, None, None], axis=-1)[..., 0]
  bce = np.maximum(picked, 0) - picked * t + np.log1p(np.exp(-np.abs(picked)))
  ref = bce[v].sum() / (v.sum() * m * m)
  np.testing.assert_allclose(float(loss), ref, rtol=1e-5)
  g = np.asarray(grad)
  onehot = np.eye(K, dtype=bool)[lab - 1] & v[..., None]  # (2, P, K)
  on = np.broadcast_to(onehot[:, :, None, None, :], g.shape)
  assert np.all(g[~on] == 0.0), "channels other than the gt class (or invalid RoIs) got gradient"
  assert np.all(np.abs(g[on]) > 0)
  # With the softmax ablation every channel of a valid RoI gets gradient (classes compete).
  logits_sm = jnp.asarray(rng.normal(size=(2, p, m, m, K + 1)), jnp.float32)
  g_sm = np.asarray(jax.grad(lambda x: mrcnn.mask_loss(x, targets, labels, valid,
                                                       kind="softmax"))(logits_sm))
  assert np.all(np.abs(g_sm[v]) > 0) and np.all(g_sm[~v] == 0.0)
  # Softmax reference: per-pixel CE with class = label inside the mask, 0 outside.
  xs = np.asarray(logits_sm)
  logp = xs - np.log(np.exp(xs).sum(-1, keepdims=True))
  cls = np.where(t >= 0.5, lab[..., None, None], 0)
  nll = -np.take_along_axis(logp, cls[..., None], axis=-1)[..., 0]
  np.testing.assert_allclose(
      float(mrcnn.mask_loss(logits_sm, targets, labels, valid, kind="softmax")),
      nll[v].sum() / (v.sum() * m * m), rtol=1e-5)
  # No valid RoI: 0, finite.
  none = mrcnn.mask_loss(logits, targets, labels, jnp.zeros_like(valid))
  assert float(none) == 0.0


def test_mask_probabilities_pick_the_detected_class():
  logits = jnp.zeros((1, 2, 3, 3, K)).at[0, 0, :, :, 1].set(5.0).at[0, 1, :, :, 2].set(-5.0)
  probs = mrcnn.mask_probabilities(logits, jnp.array([[2, 3]]))
  np.testing.assert_allclose(np.asarray(probs[0, 0]), jax.nn.sigmoid(5.0), rtol=1e-6)
  np.testing.assert_allclose(np.asarray(probs[0, 1]), jax.nn.sigmoid(-5.0), rtol=1e-6)


# ------------------------------------------------------------------------------------------------
# One jitted step and inference
# ------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_train_step_terms_and_gradients_reach_the_mask_head():
  family = _family()
  variables = _variables(family)
  (total, terms), grads = jax.jit(_loss_and_grads(family))(variables, _batch(3),
                                                           jax.random.PRNGKey(1))
  for name in TERMS:
    assert name in terms and np.isfinite(float(terms[name])) and float(terms[name]) > 0, name
  np.testing.assert_allclose(float(total), sum(float(terms[n]) for n in TERMS), rtol=1e-5)
  assert float(terms["num_mask_rois"]) >= 3  # at least the 3 appended gt boxes per image
  # P = 4 slots per image and the sampler keeps at most 4 foreground RoIs per image: none dropped
  assert float(terms["num_mask_rois_dropped"]) == 0.0
  assert set(grads) == {"backbone", "rpn_head", "box_head", "box_predictor", "mask_head"}
  for stage in grads:
    norm = sum(float(jnp.sum(jnp.abs(g))) for g in jax.tree.leaves(grads[stage]))
    assert norm > 0 and np.isfinite(norm), stage


def _hand_made_sample(batch, rng, s=16):
  """A ``[2, s]`` RoiSample: image 0 has five foreground RoIs (jittered gt boxes 2, 0, 1, 2, 1;
  more than P = 4 of one image) and a background row, image 1 one foreground RoI on gt 1 and
  background rows."""
  from jaxvision.ops import sampling  # noqa: PLC0415

  rois = np.tile(np.array([0, 0, 32, 32], np.float32), (2, s, 1))
  labels = np.zeros((2, s), np.int32)
  matched = np.zeros((2, s), np.int32)
  valid = np.zeros((2, s), bool)
  for i, rows in ((0, [(2, True), (0, True), (1, True), (0, False), (2, True), (1, True)]),
                  (1, [(1, True), (2, False)])):
    for r, (g, fg) in enumerate(rows):
      rois[i, r] = batch["boxes"][i, g] + rng.uniform(-2, 2, 4)
      labels[i, r] = batch["labels"][i, g] if fg else 0
      matched[i, r] = g
      valid[i, r] = True
  valid[1, 6] = True  # a background row
  return sampling.RoiSample(rois=jnp.asarray(rois), labels=jnp.asarray(labels),
                            matched_boxes=jnp.asarray(rois), matched_gt=jnp.asarray(matched),
                            valid=jnp.asarray(valid))


def _reference_mask_loss(module, variables, feats, batch, sample, kept):
  """The mean per-pixel BCE of the gt class's channel against each kept RoI's matched gt mask
  RoIAligned at the RoI, computed row by row (``kept``: (image, row) pairs)."""
  logits = np.asarray(module.apply(variables, feats, sample.rois, sample.valid,
                                   image_size=(IMAGE, IMAGE), method=module.mask_outputs))
  rois, labels, matched = map(np.asarray, (sample.rois, sample.labels, sample.matched_gt))
  m = module.mask_config.mask_size
  assert logits.shape[2:4] == (m, m) == (14, 14)  # 2 x the pooled 7 x 7
  total = 0.0
  for i, r in kept:
    g = matched[i, r]
    t = np.asarray(mask_ops.mask_targets(batch["masks"][i:i + 1, g:g + 1], rois[i, r][None],
                                         jnp.zeros(1, jnp.int32), jnp.zeros(1, jnp.int32),
                                         output_size=m, mask_stride=STRIDE))[0]
    assert t.sum() > 20  # the RoI covers its instance
    x = logits[i, r, :, :, labels[i, r] - 1]
    total += np.sum(np.maximum(x, 0) - x * t + np.log1p(np.exp(-np.abs(x))))
  return total / (len(kept) * m * m)


def _mask_branch(module, variables, feats, sample, batch, key):
  return jax.jit(lambda v, f, smp, b, k: module.apply(v, f, smp, b, k,
                                                      method=mrcnn.mask_branch_loss))(
      variables, feats, sample, batch, key)


@pytest.mark.slow
def test_mask_branch_loss_uses_the_matched_gt_masks_at_the_rois():
  """mask_branch_loss on a hand-made RoI sample equals the BCE of the gt class's channel against
  each RoI's matched gt mask RoIAligned at the RoI (right image, right gt slot, right channel,
  normalized by the positives' pixels). The B x P = 8 slots are shared by the batch: image 0's
  five positives (more than P = 4) all enter beside image 1's one."""
  module = _module()
  variables = _variables(_family())
  batch = _batch(3, seed=5)
  feats = {"C4": jnp.asarray(np.random.default_rng(0).normal(size=(2, 4, 4, 8)), jnp.float32)}
  assert mrcnn.num_mask_rois(module) == 4  # int(16 * 0.25)
  sample = _hand_made_sample(batch, np.random.default_rng(1))
  loss, n_pos, n_dropped = _mask_branch(module, variables, feats, sample, batch,
                                        jax.random.PRNGKey(0))
  assert int(n_pos) == 6 and int(n_dropped) == 0
  kept = [(0, 0), (0, 1), (0, 2), (0, 4), (0, 5), (1, 0)]
  np.testing.assert_allclose(float(loss), _reference_mask_loss(module, variables, feats, batch,
                                                               sample, kept), rtol=1e-5)


@pytest.mark.slow
def test_mask_branch_subsamples_and_counts_positives_beyond_the_slots():
  """With P = 1 (2 shared slots for 6 positives) two positives are kept, four counted as
  dropped, and the loss is the mean over the kept two (those select_mask_rois names)."""
  module = _module(mask_kwargs={"rois_per_image": 1})
  variables = _variables(_family())
  batch = _batch(3, seed=5)
  feats = {"C4": jnp.asarray(np.random.default_rng(0).normal(size=(2, 4, 4, 8)), jnp.float32)}
  sample = _hand_made_sample(batch, np.random.default_rng(1))
  key = jax.random.PRNGKey(3)
  loss, n_pos, n_dropped = _mask_branch(module, variables, feats, sample, batch, key)
  assert int(n_pos) == 2 and int(n_dropped) == 4
  rows, image_index, valid, _ = mrcnn.select_mask_rois(key, sample, 2)
  s = sample.labels.shape[1]
  kept = [(int(r) // s, int(r) % s) for r in np.asarray(rows)]
  assert np.asarray(valid).all() and list(np.asarray(image_index)) == [i for i, _ in kept]
  np.testing.assert_allclose(float(loss), _reference_mask_loss(module, variables, feats, batch,
                                                               sample, kept), rtol=1e-5)


def test_select_mask_rois_keeps_every_positive_that_fits_and_a_uniform_subset_otherwise():
  from jaxvision.ops import sampling  # noqa: PLC0415

  b, s = 2, 16
  labels = np.zeros((b, s), np.int32)
  valid = np.zeros((b, s), bool)
  labels[0, :12] = 1  # 12 positives in image 0, 4 in image 1, 2 background rows
  labels[1, :4] = 2
  valid[0, :13] = True
  valid[1, :5] = True
  valid[0, 5] = False  # an invalid row with a label is not a positive
  sample = sampling.RoiSample(rois=jnp.zeros((b, s, 4)), labels=jnp.asarray(labels),
                              matched_boxes=jnp.zeros((b, s, 4)),
                              matched_gt=jnp.zeros((b, s), jnp.int32), valid=jnp.asarray(valid))
  positives = {(i, r) for i in range(b) for r in range(s) if valid[i, r] and labels[i, r] > 0}
  assert len(positives) == 15
  select = jax.jit(mrcnn.select_mask_rois, static_argnums=2)
  rows, image_index, ok, dropped = select(jax.random.PRNGKey(0), sample, 16)  # all fit
  got = {(int(r) // s, int(r) % s) for r, v in zip(np.asarray(rows), np.asarray(ok)) if v}
  assert got == positives and int(np.sum(ok)) == 15 and float(dropped) == 0.0
  np.testing.assert_array_equal(np.asarray(image_index), np.asarray(rows) // s)
  counts = dict.fromkeys(positives, 0)
  trials = 400
  for t in range(trials):  # 6 slots for 15 positives: each kept with probability 6 / 15
    rows, _, ok, dropped = select(jax.random.PRNGKey(t), sample, 6)
    assert np.asarray(ok).all() and float(dropped) == 9.0
    kept = {(int(r) // s, int(r) % s) for r in np.asarray(rows)}
    assert len(kept) == 6 and kept <= positives
    for k in kept:
      counts[k] += 1
  freq = np.array(list(counts.values())) / trials
  assert np.all(np.abs(freq - 0.4) < 0.1), freq  # 4 sigma is 0.098


@pytest.mark.slow
def test_predict_contract_and_masks_inside_boxes():
  family = _family()
  preds = jax.jit(family.predict)(_variables(family), _batch(2))
  assert set(preds) == {"boxes", "scores", "labels", "valid", "masks"}
  assert preds["masks"].shape == (2, 10, IMAGE, IMAGE) and preds["masks"].dtype == jnp.bool_
  masks, valid = np.asarray(preds["masks"]), np.asarray(preds["valid"])
  assert not masks[~valid].any()
  boxes = np.asarray(preds["boxes"])
  for i, j in zip(*np.nonzero(valid)):  # pasted pixels lie within the box (+1 px bilinear edge)
    ys, xs = np.nonzero(masks[i, j])
    if len(ys):
      x1, y1, x2, y2 = boxes[i, j]
      assert xs.min() >= np.floor(x1) - 1 and xs.max() <= np.ceil(x2) and ys.min() >= np.floor(y1) - 1


def test_row_buckets_give_the_same_masks():
  # D = 10 detections (buckets 10, 5, 3, 2) with at most 3 valid (one proposal x K classes): at
  # inference the mask head runs on the 3-row bucket, against all 10 rows with row_buckets=1, and
  # gives the same masks. (Training always uses all rows.)
  families = [_family(roi_kwargs={"row_buckets": nb}, rpn_kwargs={"pre_nms_top_n_test": 1})
              for nb in (1, 4)]
  variables = _variables(families[0])
  batch = jax.tree.map(jnp.asarray, _batch(1))
  preds = [jax.jit(f.predict)(variables, batch) for f in families]
  assert 0 < int(np.max(np.sum(np.asarray(preds[0]["valid"]), axis=1))) <= 3  # 1 RoI x K
  for key in preds[0]:
    np.testing.assert_array_equal(np.asarray(preds[0][key]), np.asarray(preds[1][key]), key)
  assert np.asarray(preds[0]["masks"]).any()


def test_no_recompilation_while_the_number_of_boxes_varies():
  family = _family()
  variables = _variables(family)
  step = jax.jit(chex.assert_max_traces(_loss_and_grads(family), n=1))
  predict = jax.jit(chex.assert_max_traces(family.predict, n=1))
  for n in range(M + 1):  # 0 .. max_boxes gt instances
    (total, terms), _ = step(variables, _batch(n, seed=n), jax.random.PRNGKey(n))
    assert np.isfinite(float(total)) and np.isfinite(float(terms["mask"]))
    predict(variables, _batch(n, seed=n))
  chex.clear_trace_counter()


def _crowd_batch():
  batch = _batch(3)
  batch["is_crowd"][:] = batch["box_valid"]  # every instance a crowd region
  return batch


def _too_many_instances_batch():
  """Seven instances through the data pipeline's pad_instances with max_boxes = M = 4."""
  from jaxvision.data import transforms  # noqa: PLC0415

  rng = np.random.default_rng(7)
  examples = []
  for _ in range(2):
    n = 7
    masks = np.zeros((n, IMAGE, IMAGE), bool)
    boxes = np.zeros((n, 4), np.float32)
    for j in range(n):
      x, y = rng.integers(0, 48, 2)
      w, h = rng.integers(4, 16, 2)
      masks[j, y:y + h, x:x + w] = True
      boxes[j] = [x, y, x + w, y + h]
    ex = {"image": rng.normal(size=(IMAGE, IMAGE, 3)).astype(np.float32), "boxes": boxes,
          "labels": rng.integers(1, K + 1, n).astype(np.int32), "masks": masks}
    examples.append(transforms.pad_instances(ex, M, mask_stride=STRIDE))
  assert all(int(e["num_dropped_boxes"]) == 3 for e in examples)
  keys = ("image", "image_hw", "boxes", "labels", "box_valid", "is_crowd", "masks")
  batch = {k: np.stack([e[k] for e in examples]) for k in keys}
  batch["example_valid"] = np.ones((2,), bool)
  return batch


@pytest.mark.parametrize("case", ["no_instances", "empty_masks", "tiny_masks", "crowd",
                                  "too_many_instances", "padding_example", "nan_box"])
@pytest.mark.slow
def test_bad_input_gives_finite_loss_and_gradients(case):
  family = _family()
  variables = _variables(family)
  if case == "no_instances":
    batch = _batch(0)
  elif case == "empty_masks":  # boxes whose masks have no pixel (e.g. lost when downsampled)
    batch = _batch(3)
    batch["masks"][:] = False
  elif case == "tiny_masks":  # 1-2 px instances: tiny boxes and single-pixel masks
    batch = _batch(0, boxes=[[10, 10, 11, 11], [30, 30, 32, 31], [50, 5, 50.5, 5.5]])
  elif case == "crowd":
    batch = _crowd_batch()
  elif case == "too_many_instances":
    batch = _too_many_instances_batch()
  elif case == "padding_example":
    batch = _batch(2)
    batch["example_valid"][1] = False
  else:
    batch = _batch(2)
    batch["boxes"][:, 0] = np.nan
  (total, terms), grads = jax.jit(_loss_and_grads(family))(variables, batch, jax.random.PRNGKey(0))
  assert np.isfinite(float(total)), terms
  assert all(np.isfinite(float(terms[n])) for n in TERMS)
  assert all(np.all(np.isfinite(np.asarray(g))) for g in jax.tree.leaves(grads))
  if case in ("no_instances", "crowd"):  # crowd regions are never positives: no mask loss
    assert float(terms["mask"]) == 0.0 and float(terms["num_mask_rois"]) == 0.0
  preds = jax.jit(family.predict)(variables, batch)
  assert all(np.all(np.isfinite(np.asarray(v))) for v in preds.values())


@pytest.mark.slow
def test_normalizers_are_psummed_across_devices(summed_losses):
  family = _family(rpn_kwargs={"batch_size_per_image": 512},
                   roi_kwargs={"batch_size_per_image": 128})
  variables = _variables(family)
  batch = jax.tree.map(jnp.asarray, _batch(3, b=4, seed=3))
  key = jax.random.PRNGKey(0)

  results = [summed_losses(family, variables, batch, key, n) for n in (1, 2)]
  (t1, terms1), (t2, terms2) = results
  np.testing.assert_allclose(float(t1), float(t2), rtol=1e-5)
  for name in TERMS:
    np.testing.assert_allclose(float(terms1[name]), float(terms2[name]), rtol=1e-5, err_msg=name)


# ------------------------------------------------------------------------------------------------
# Ablations: RoIPool (with FPN levels) and the softmax mask loss
# ------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_roipool_fpn_pools_each_roi_at_its_level():
  rng = np.random.default_rng(0)
  feats = {f"P{l}": jnp.asarray(rng.normal(size=(2, 256 >> l, 256 >> l, 3)), jnp.float32)
           for l in (2, 3, 4, 5)}
  rois = jnp.asarray([[[0, 0, 20, 20], [10, 10, 150, 130], [0, 0, 255, 255]],
                      [[5, 5, 60, 80], [0, 0, 0, 0], [30, 40, 90, 200]]], jnp.float32)
  valid = jnp.asarray([[True, True, True], [True, False, True]])
  roi_cfg = heads.RoIHeadsConfig(fpn_levels=(2, 3, 4, 5))
  cfg = mrcnn.MaskHeadConfig(pooler="pool", output_size=5)
  got = np.asarray(mrcnn.pool_mask_rois(feats, rois, valid, roi_config=roi_cfg, mask_config=cfg,
                                        image_size=(256, 256)))
  flat = np.asarray(rois).reshape(-1, 4)
  levels = np.asarray(roi_ops.assign_fpn_levels(flat, k_min=2, k_max=5))
  assert len(set(levels[np.asarray(valid).reshape(-1)].tolist())) >= 2  # several levels used
  for r in range(6):
    i = r // 3
    if not bool(np.asarray(valid).reshape(-1)[r]):
      assert not got[r].any()
      continue
    lvl = int(levels[r])
    ref = roi_ops.roi_pool(feats[f"P{lvl}"], flat[r:r + 1], jnp.array([i]), output_size=5,
                           spatial_scale=2.0 ** -lvl)
    np.testing.assert_allclose(got[r], np.asarray(ref[0]), rtol=1e-6, err_msg=f"roi {r}")


@pytest.mark.parametrize("mask_kwargs,fpn", [({"pooler": "pool"}, False), ({"loss": "softmax"}, True)],
                         ids=["roipool", "softmax_fpn"])
@pytest.mark.slow
def test_ablations_train_and_predict(mask_kwargs, fpn):
  # (RoIPool over FPN levels is checked numerically above; here RoIPool on C4 keeps compiling cheap.)
  family = _family(mask_kwargs=mask_kwargs, fpn=fpn)
  variables = jax.jit(family.init)(jax.random.PRNGKey(0), _batch(1))
  expect = K + 1 if mask_kwargs.get("loss") == "softmax" else K
  assert variables["params"]["mask_head"]["mask_fcn_logits"]["kernel"].shape[-1] == expect
  (total, terms), grads = jax.jit(_loss_and_grads(family))(variables, _batch(3),
                                                           jax.random.PRNGKey(0))
  assert np.isfinite(float(total)) and float(terms["mask"]) > 0
  norm = sum(float(jnp.sum(jnp.abs(g))) for g in jax.tree.leaves(grads["mask_head"]))
  assert norm > 0
  preds = jax.jit(family.predict)(variables, _batch(2))
  assert preds["masks"].shape == (2, 10, IMAGE, IMAGE)


# ------------------------------------------------------------------------------------------------
# Configuration and full-size models
# ------------------------------------------------------------------------------------------------


def test_registry_and_config_errors():
  small = {"backbone": {"name": "resnet18", "width": 4, "norm": "batch"},
           "rpn": {"anchor_sizes": [[16, 32, 64]]}, "box_head": {"kind": "conv", "num_convs": 1},
           "mask_head": {"num_convs": 1, "conv_features": 8}}
  family = MODELS["mask_rcnn"](small, 5)
  assert family.task == "instance_segmentation" and family.num_classes == 5
  assert isinstance(family.module, mrcnn.MaskRCNN)
  assert family.module.mask_config.num_convs == 1
  with pytest.raises(ValueError, match=r"unknown model.mask_head keys \['convs'\]"):
    MODELS["mask_rcnn"]({**small, "mask_head": {"convs": 2}}, 5)
  with pytest.raises(ValueError, match="model.mask_head.pooler"):
    MODELS["mask_rcnn"]({**small, "mask_head": {"pooler": "warp"}}, 5)
  with pytest.raises(ValueError, match="model.mask_head.loss"):
    MODELS["mask_rcnn"]({**small, "mask_head": {"loss": "dice"}}, 5)
  with pytest.raises(ValueError, match="model.mask_head.output_size"):
    MODELS["mask_rcnn"]({**small, "mask_head": {"output_size": 0}}, 5)
  with pytest.raises(ValueError, match="model.mask_head.rois_per_image"):
    MODELS["mask_rcnn"]({**small, "mask_head": {"rois_per_image": -1}}, 5)
  with pytest.raises(ValueError, match="unknown model config keys"):
    MODELS["mask_rcnn"]({"mask_branch": {}}, 5)
  with pytest.raises(ValueError, match="num_classes"):
    MODELS["mask_rcnn"]({}, 0)


def test_batch_without_masks_raises_naming_the_key():
  family = _family()
  variables = _variables(family)
  batch = _batch(1)
  del batch["masks"]
  with pytest.raises(ValueError, match="keep_masks"):
    family.train_loss(variables, batch, rng=jax.random.PRNGKey(0))
  batch = _batch(1)
  batch["masks"] = batch["masks"][:, :, :, :-3]
  with pytest.raises(ValueError, match=r"batch\['masks'\]"):
    family.train_loss(variables, batch, rng=jax.random.PRNGKey(0))


def _abstract_batch(b, size, max_boxes=8, stride=4):
  return {"image": jax.ShapeDtypeStruct((b, size, size, 3), jnp.float32),
          "image_hw": jax.ShapeDtypeStruct((b, 2), jnp.int32),
          "boxes": jax.ShapeDtypeStruct((b, max_boxes, 4), jnp.float32),
          "labels": jax.ShapeDtypeStruct((b, max_boxes), jnp.int32),
          "box_valid": jax.ShapeDtypeStruct((b, max_boxes), jnp.bool_),
          "masks": jax.ShapeDtypeStruct((b, max_boxes, size // stride, size // stride), jnp.bool_)}


def test_full_size_resnet50_fpn_eval_shape():
  """Mask R-CNN R50-FPN at 800 x 800: shapes only (jax.eval_shape, nothing compiled)."""
  family = MODELS["mask_rcnn"]({"preset": "torchvision_fpn"}, 90)
  batch = _abstract_batch(1, 800)
  variables = jax.eval_shape(family.init, jax.random.PRNGKey(0), batch)
  # torchvision's maskrcnn_resnet50_fpn(num_classes=91) has 44,401,393 parameters besides its
  # (frozen) BatchNorm affine terms: Faster R-CNN's 41,755,286 + the mask head's 2,646,107.
  n = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(variables["params"]))
  assert n == 44_401_393
  head = variables["params"]["mask_head"]
  assert head["mask_fcn1"]["kernel"].shape == (3, 3, 256, 256)
  assert head["conv5_mask"]["kernel"].shape == (2, 2, 256, 256)
  assert head["mask_fcn_logits"]["kernel"].shape == (1, 1, 256, 91)  # background slot first
  assert family.module.mask_config.channel_offset == 1
  preds = jax.eval_shape(family.predict, variables, batch)
  assert preds["masks"].shape == (1, 100, 800, 800) and preds["masks"].dtype == jnp.bool_
  loss, terms, _ = jax.eval_shape(
      functools.partial(family.train_loss, rng=jax.random.PRNGKey(0)), variables, batch)
  assert loss.shape == () and set(TERMS) <= set(terms)


# ------------------------------------------------------------------------------------------------
# Learning (slow)
# ------------------------------------------------------------------------------------------------


def _box_fill_iou(batches):
  """The same IoU for the trivial prediction "the whole gt box" (a reference point)."""
  ious = []
  for batch in batches:
    hm = batch["masks"].shape[2]
    stride = batch["image"].shape[1] // hm
    boxes = np.asarray(batch["boxes"]) / stride
    ones = jnp.ones(boxes.shape[:2] + (4, 4))
    fill = jax.vmap(lambda o, b: mask_ops.paste_masks(o, b, (hm, hm)))(ones, boxes)
    iou = np.asarray(mask_ops.mask_iou(fill, batch["masks"]))
    ious.append(iou[np.asarray(batch["box_valid"])])
  return float(np.mean(np.concatenate(ious)))


def _gt_box_mask_iou(family, variables, batches):
  """Mean IoU of the masks predicted at the gt boxes for the gt classes, pasted at the gt masks'
  resolution, against the gt masks (the mask branch alone, independent of detection quality)."""
  module = family.module

  @jax.jit
  def predict(variables, batch):
    def run(mdl):
      feats = mdl.features(batch["image"], train=False)
      logits = mdl.mask_logits(feats, batch["boxes"], batch["box_valid"],
                               image_size=batch["image"].shape[1:3])
      probs = mrcnn.mask_probabilities(logits, batch["labels"])
      stride = batch["image"].shape[1] // batch["masks"].shape[2]  # paste at the gt's resolution
      return jax.vmap(lambda p, b: mask_ops.paste_masks(p, b / stride, batch["masks"].shape[2:]))(
          probs, batch["boxes"])
    return module.apply(variables, method=run)

  ious = []
  for batch in batches:
    pred = np.asarray(predict(variables, batch))
    iou = np.asarray(mask_ops.mask_iou(pred, batch["masks"]))
    ious.append(iou[np.asarray(batch["box_valid"])])
  return float(np.mean(np.concatenate(ious)))


@pytest.mark.slow
def test_learns_shapes(shapes_dir, shapes_data):
  # A tiny FPN Mask R-CNN on 64 px shapes images (ResNet-18 width 8 + 16-channel FPN, 16-channel
  # 2-conv mask head), 120 steps of 8 images, the whole Mask R-CNN loss. Asserts the mask loss
  # falls and the mask IoU at the gt boxes rises well above the untrained model's.
  import optax  # noqa: PLC0415

  from jaxvision.data import builder  # noqa: PLC0415

  start = time.time()
  data = shapes_data(shapes_dir, image_size=(64, 64), mask_stride=2, keep_masks=True)
  train = builder.make_split(data, train=True)
  val = builder.make_split(data, train=False)
  val = [val[i] for i in range(2)]
  family = MODELS["mask_rcnn"]({
      "preset": "fpn",
      "backbone": {"name": "resnet18", "width": 8, "norm": "batch"},
      "neck": {"features": 16},
      "rpn": {"levels": ("P2", "P3"), "anchor_sizes": ((12,), (24,)),
              "pre_nms_top_n_train": 100, "post_nms_top_n_train": 50,
              "pre_nms_top_n_test": 100, "post_nms_top_n_test": 30},
      "roi_heads": {"fpn_levels": (2, 3, 4, 5), "batch_size_per_image": 32,
                    "detections_per_image": 10},
      "box_head": {"kind": "mlp", "representation_size": 64},
      "mask_head": {"num_convs": 2, "conv_features": 16, "rois_per_image": 8}}, 5)
  variables = jax.jit(family.init)(jax.random.PRNGKey(0), val[0])
  untrained = _gt_box_mask_iou(family, variables, val)
  steps = 120
  tx = optax.adamw(optax.warmup_cosine_decay_schedule(0.0, 6e-3, 10, steps), weight_decay=1e-4)
  params, rest = variables["params"], {k: v for k, v in variables.items() if k != "params"}
  opt_state = tx.init(params)

  @jax.jit
  def step(params, rest, opt_state, batch, key):
    def loss_fn(p):
      total, terms, mutated = family.train_loss({"params": p, **rest}, batch, rng=key)
      return total, (terms, mutated)
    (total, (terms, mutated)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), {**rest, **mutated}, opt_state, terms["mask"]

  losses = []
  for i in range(steps):
    params, rest, opt_state, mask_term = step(params, rest, opt_state, train[i],
                                              jax.random.PRNGKey(i))
    losses.append(float(mask_term))
  trained = _gt_box_mask_iou(family, {"params": params, **rest}, val)
  whole_box = _box_fill_iou(val)
  print(f"mask loss {np.mean(losses[:10]):.3f} -> {np.mean(losses[-10:]):.3f}; mask IoU at gt "
        f"boxes untrained {untrained:.3f} -> trained {trained:.3f} (whole-box masks: "
        f"{whole_box:.3f}); {time.time() - start:.0f} s")
  # Measured 2026-11-21 on the shared 2-core CPU (23 s with a warm compilation cache, 75-85 s
  # cold under load): mask loss 0.84 -> 0.57, IoU 0.466 -> 0.684, whole-box masks 0.614.
  assert np.mean(losses[-10:]) < 0.8 * np.mean(losses[:10])
  assert trained > untrained + 0.12
  assert trained > whole_box + 0.03  # shapes, not just boxes
