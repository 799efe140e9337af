"""dense_common: post-processing vs a NumPy reference, the tiny backbone, multi-scale resizing and
the family glue (normalizer psum-ed over devices)."""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from jaxvision.models.detection import dense_common


def _np_iou(a, b):
  lt = np.maximum(a[:2], b[:2])
  rb = np.minimum(a[2:], b[2:])
  inter = np.prod(np.clip(rb - lt, 0, None))
  union = np.prod(a[2:] - a[:2]) + np.prod(b[2:] - b[:2]) - inter
  return inter / union if union > 0 else 0.0


def _np_postprocess(boxes, scores, hw, *, score_threshold, iou_threshold, top_k, max_det):
  """Slow, obvious reference: clip, threshold, top-k over (box, class), per-class greedy NMS."""
  n, k = scores.shape
  boxes = boxes.copy()
  if boxes.ndim == 2:
    boxes = np.repeat(boxes[:, None], k, axis=1)
  boxes[..., 0::2] = np.clip(boxes[..., 0::2], 0, hw[1])
  boxes[..., 1::2] = np.clip(boxes[..., 1::2], 0, hw[0])
  cands = []
  for i in range(n):
    for c in range(k):
      b = boxes[i, c]
      if scores[i, c] > score_threshold and b[2] > b[0] and b[3] > b[1]:
        cands.append((-scores[i, c], i * k + c, i, c))
  cands = sorted(cands)[:top_k]
  kept = []
  for neg, _, i, c in cands:
    if all(kc != c or _np_iou(boxes[i, c], boxes[ki, kc]) <= iou_threshold for ki, kc, _ in kept):
      kept.append((i, c, -neg))
  kept = kept[:max_det]
  return ([boxes[i, c] for i, c, _ in kept], [s for _, _, s in kept], [c + 1 for _, c, _ in kept])


@pytest.mark.parametrize("class_specific", [False, True])
@pytest.mark.slow
def test_postprocess_matches_numpy(class_specific):
  rng = np.random.default_rng(0)
  b, n, k = 3, 40, 3
  xy = rng.uniform(-10, 60, (b, n, 2))
  wh = rng.uniform(2, 30, (b, n, 2))
  boxes = np.concatenate([xy, xy + wh], -1).astype(np.float32)
  if class_specific:
    boxes = (boxes[:, :, None, :] + rng.normal(0, 2, (b, n, k, 4))).astype(np.float32)
  scores = rng.uniform(size=(b, n, k)).astype(np.float32)
  scores[0, :5] = np.nan  # never selected
  hw = np.array([[64, 64], [50, 60], [64, 40]], np.int32)
  kw = dict(score_threshold=0.3, iou_threshold=0.4, pre_nms_top_k=50, max_detections=12)
  out = jax.jit(functools.partial(dense_common.postprocess, **kw))(boxes, scores, hw)
  assert out["boxes"].shape == (b, 12, 4) and out["labels"].dtype == jnp.int32
  for i in range(b):
    ref_boxes, ref_scores, ref_labels = _np_postprocess(
        boxes[i], np.nan_to_num(scores[i], nan=-1.0), hw[i], score_threshold=0.3,
        iou_threshold=0.4, top_k=50, max_det=12)
    v = np.asarray(out["valid"][i])
    assert v.sum() == len(ref_scores)
    assert np.all(v[:len(ref_scores)])  # valid slots first
    np.testing.assert_allclose(np.asarray(out["scores"][i])[v], ref_scores, rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(out["labels"][i])[v], ref_labels)
    np.testing.assert_allclose(np.asarray(out["boxes"][i])[v], np.reshape(ref_boxes, (-1, 4)),
                               rtol=1e-6)
    # padding slots are all zeros
    assert not np.asarray(out["labels"][i])[~v].any() and not np.asarray(out["boxes"][i])[~v].any()


@pytest.mark.slow
def test_postprocess_no_candidates_and_errors():
  boxes = jnp.zeros((2, 5, 4))
  out = dense_common.postprocess(boxes, jnp.full((2, 5, 2), 0.9), max_detections=3)
  assert not np.asarray(out["valid"]).any()  # zero-size boxes are never detections
  with pytest.raises(ValueError, match="boxes"):
    dense_common.postprocess(jnp.zeros((2, 4, 4)), jnp.zeros((2, 5, 2)))
  with pytest.raises(ValueError, match="iou_threshold"):
    dense_common.postprocess(jnp.zeros((2, 5, 4)), jnp.zeros((2, 5, 2)), iou_threshold=1.5)
  with pytest.raises(ValueError, match="max_detections"):
    dense_common.postprocess(jnp.zeros((2, 5, 4)), jnp.zeros((2, 5, 2)), max_detections=0)


def test_tiny_backbone_strides():
  net = dense_common.TinyBackbone(widths=(4, 8, 8), depth=2, act="leaky_relu")
  x = jnp.zeros((2, 40, 24, 3))
  variables = jax.eval_shape(lambda: net.init(jax.random.PRNGKey(0), x, train=False))
  feats = jax.eval_shape(lambda v: net.apply(v, x, train=False), variables)
  assert {k: v.shape for k, v in feats.items()} == {
      "s2": (2, 20, 12, 4), "s4": (2, 10, 6, 8), "s8": (2, 5, 3, 8)}
  with pytest.raises(ValueError, match="act"):
    dense_common.TinyBackbone(act="gelu").init(jax.random.PRNGKey(0), x, train=False)


def test_resize_batch_scales_boxes_and_sizes():
  batch = {"image": jnp.ones((2, 64, 64, 3)), "boxes": jnp.asarray([[[8.0, 16.0, 32.0, 64.0]]] * 2),
           "image_hw": jnp.asarray([[64, 64], [48, 64]], jnp.int32), "scale": jnp.asarray([1.0, 0.5])}
  out = dense_common.resize_batch(batch, (96, 96))
  assert out["image"].shape == (2, 96, 96, 3)
  np.testing.assert_allclose(np.asarray(out["image"]), 1.0, rtol=1e-6)
  np.testing.assert_allclose(np.asarray(out["boxes"][0, 0]), [12.0, 24.0, 48.0, 96.0])
  np.testing.assert_array_equal(np.asarray(out["image_hw"]), [[96, 96], [72, 96]])
  np.testing.assert_allclose(np.asarray(out["scale"]), [1.5, 0.75])
  assert dense_common.resize_batch(batch, (64, 64))["image"] is batch["image"]


def test_multiscale_index_depends_only_on_step():
  idx = [int(dense_common.multiscale_index(jnp.int32(s), 3, every=10)) for s in range(0, 200)]
  assert all(0 <= i < 3 for i in idx)
  for start in range(0, 200, 10):
    assert len(set(idx[start:start + 10])) == 1  # one size per 10 steps
  assert len(set(idx)) == 3


class _Toy(nn.Module):
  @nn.compact
  def __call__(self, x, *, train):
    del train
    return {"y": nn.Dense(1)(x.mean(axis=(1, 2)))}


def _toy_family(sizes=()):
  def loss(outputs, batch, step):
    del step
    err = jnp.sum(jnp.square(outputs["y"][:, 0] - batch["image"].shape[1]))
    return {"err": err}, jnp.sum(batch["box_valid"]), {"n": jnp.sum(batch["box_valid"])}

  def decode(outputs, hw):
    b = outputs["y"].shape[0]
    return jnp.zeros((b, 1, 4)), jnp.zeros((b, 1, 1))

  return dense_common.dense_family(_Toy(), num_classes=1, loss=loss, decode=decode,
                                   postprocess_kwargs={"max_detections": 2},
                                   multiscale_sizes=sizes)


def test_dense_family_normalizer_is_psummed():
  family = _toy_family()
  rng = np.random.default_rng(0)
  batch = {"image": jnp.asarray(rng.normal(size=(8, 4, 4, 3)), jnp.float32),
           "box_valid": jnp.asarray(rng.uniform(size=(8, 3)) < 0.5)}
  variables = family.init_variables(jax.random.PRNGKey(0), batch)
  single, terms, _ = family.train_loss(variables, batch, rng=jax.random.PRNGKey(1), step=0)
  outputs = family.module.apply(variables, batch["image"], train=True)
  direct, direct_terms = family.loss(outputs, batch)
  np.testing.assert_allclose(float(direct), float(single), rtol=1e-6)
  assert float(family.loss_normalizer(outputs, batch)) == float(np.sum(batch["box_valid"]))
  half, _ = family.loss(outputs, batch, normalizer=2.0 * family.loss_normalizer(outputs, batch))
  np.testing.assert_allclose(float(half), 0.5 * float(single), rtol=1e-6)
  assert set(direct_terms) == set(terms)
  mesh = jax.make_mesh((4,), ("data",), axis_types=(jax.sharding.AxisType.Auto,),
                       devices=jax.devices()[:4])

  def per_device(v, b):
    loss, t, _ = family.train_loss(v, b, rng=jax.random.PRNGKey(1), step=0, axis_name="data")
    return jax.lax.psum(loss, "data"), jax.lax.psum(t["n"], "data")

  fn = jax.shard_map(per_device, mesh=mesh, in_specs=(P(), P("data")), out_specs=(P(), P()),
                     check_vma=False)
  total, n = jax.jit(fn)(variables, batch)
  np.testing.assert_allclose(float(total), float(single), rtol=1e-5)
  assert float(n) == float(terms["n"]) == float(np.sum(batch["box_valid"]))


def test_dense_family_multiscale_switches_sizes():
  family = _toy_family(sizes=((4, 4), (8, 8)))
  batch = {"image": jnp.ones((2, 4, 4, 3)), "box_valid": jnp.ones((2, 1), bool)}
  variables = family.init_variables(jax.random.PRNGKey(0), batch)
  f = jax.jit(lambda s: family.train_loss(variables, batch, rng=jax.random.PRNGKey(1), step=s)[0])
  y = float(family.module.apply(variables, batch["image"], train=False)["y"][0, 0])
  seen = set()
  for step in range(0, 200, 10):
    idx = int(dense_common.multiscale_index(jnp.int32(step), 2))
    size = (4, 8)[idx]
    np.testing.assert_allclose(float(f(jnp.int32(step))), (y - size) ** 2, rtol=1e-5)
    seen.add(size)
  assert seen == {4, 8}


def test_check_keys_names_unknown():
  with pytest.raises(ValueError, match="foo"):
    dense_common.check_keys({"name": "x", "foo": 1}, ("bar",), "Toy")
