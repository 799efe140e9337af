"""U-Net (Ronneberger et al. 2015): sizes, parameter count, variants, mirror padding, weight map,
family glue, and a learning test on the shapes dataset (slow)."""

from __future__ import annotations

import functools
import time

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from jaxvision.losses import softmax_cross_entropy
from jaxvision.models import MODELS
from jaxvision.models.segmentation import unet


def _eval_shapes(module, input_shape):
  """Variables and logits shape via ``jax.eval_shape``: traced, never compiled or run."""
  x = jax.ShapeDtypeStruct(input_shape, jnp.float32)
  variables = jax.eval_shape(functools.partial(module.init, train=False), jax.random.key(0), x)
  out = jax.eval_shape(functools.partial(module.apply, train=False), variables, x)
  return variables, out["logits"]


def _num_params(params) -> int:
  return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))


def _image(shape, seed=0):
  return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


def _key(seed=0):
  # XLA's RngBitGenerator: on CPU a jitted init with threefry keys takes ~10 s to compile even for
  # the tiny U-Net, with "rbg" keys ~2 s.
  return jax.random.key(seed, impl="rbg")


_VARIABLES = {}


def _init(module, x):
  """Jitted init (one compilation, not one per primitive as eager init), cached by what the
  variables depend on (not the spatial size, drop-out, mirror padding or axis name): tests that
  use the same architecture share one compilation."""
  key = (module.num_classes, module.depth, module.base_features, module.padding, module.norm,
         module.upsampling, x.shape[-1])
  if key not in _VARIABLES:
    _VARIABLES[key] = jax.jit(functools.partial(module.init, train=False))(_key(), x)
  return _VARIABLES[key]


def _apply(module, variables, x, *, dropout_key=None, **kwargs):
  """Jitted ``module.apply(variables, x, **kwargs)`` (with a "dropout" rng if given)."""
  if dropout_key is None:
    return jax.jit(functools.partial(module.apply, **kwargs))(variables, x)
  apply = lambda v, x, k: module.apply(v, x, rngs={"dropout": k}, **kwargs)  # noqa: E731
  return jax.jit(apply)(variables, x, dropout_key)


# ------------------------------------------------------------------------------------------------
# Sizes
# ------------------------------------------------------------------------------------------------


def test_valid_size_arithmetic():
  assert unet.unet_output_size(572, 4) == 388  # paper Fig. 1
  assert unet.valid_input_size(388, 4) == 572
  assert unet.unet_border(4) == 92
  for depth in range(0, 5):
    step = 2**depth
    for n in range(1, 400):
      ok = unet._valid_sizes(n, depth)[1] is None
      assert ok == ((n + 4) % step == 0 and n >= unet.valid_input_size(1, depth)), (n, depth)
      if ok:
        assert unet.unet_output_size(n, depth) == n - 2 * unet.unet_border(depth)
    for out in range(1, 100):
      n = unet.valid_input_size(out, depth)
      assert out <= unet.unet_output_size(n, depth) < out + step
      assert n == step or unet._valid_sizes(n - step, depth)[1] is not None or \
          unet.unet_output_size(n - step, depth) < out
  with pytest.raises(ValueError, match="odd size.*nearest usable sizes: 300 and 316"):
    unet.unet_output_size(301, 4)
  with pytest.raises(ValueError, match="depth"):
    unet.unet_output_size(572, -1)


def test_paper_unet_572_to_388_without_compiling():
  _, logits = _eval_shapes(unet.UNetPaper(num_classes=2), (1, 572, 572, 1))
  assert logits.shape == (1, 388, 388, 2) and logits.dtype == jnp.float32


def test_paper_parameter_count():
  # Arithmetic (3x3 conv C_in -> C_out: 9 C_in C_out + C_out; 2x2 up-conv: 4 C_in C_out + C_out):
  #   contracting, C_in = 1 (paper: grey images):
  #     64:   9*1*64+64 = 640          9*64*64+64 = 36,928
  #     128:  9*64*128+128 = 73,856    9*128*128+128 = 147,584
  #     256:  295,168                  590,080
  #     512:  1,180,160                2,359,808
  #     1024: 4,719,616                9,438,208          -> 18,841,024
  #   expansive (up-conv, then 3x3 on the concatenation 2C -> C, then C -> C):
  #     512:  4*1024*512+512 = 2,097,664   9*1024*512+512 = 4,719,104   2,359,808
  #     256:  524,544                      1,179,904                    590,080
  #     128:  131,200                      295,040                      147,584
  #     64:   32,832                       73,792                       36,928  -> 12,189,504
  #   head 1x1: 64*2+2 = 130
  #   total 18,841,024 + 12,189,504 + 130 = 31,030,658 (about 31.0M); RGB input adds 9*2*64 = 1,152.
  def expected(c_in, classes=2, base=64, depth=4):
    conv = lambda k, i, o: k * k * i * o + o  # noqa: E731
    total, c = 0, c_in
    for level in range(depth + 1):
      f = base * 2**level
      total += conv(3, c, f) + conv(3, f, f)
      c = f
    for level in reversed(range(depth)):
      f = base * 2**level
      total += conv(2, c, f) + conv(3, 2 * f, f) + conv(3, f, f)
      c = f
    return total + conv(1, c, classes)

  assert expected(1) == 31_030_658 and expected(3) == 31_031_810
  for c_in in (1, 3):
    variables, _ = _eval_shapes(unet.UNetPaper(num_classes=2), (1, 572, 572, c_in))
    assert set(variables) == {"params"}  # no BatchNorm in the paper
    assert _num_params(variables["params"]) == expected(c_in)
  # The same network has the same parameters.
  variables, logits = _eval_shapes(unet.UNetSame(num_classes=2), (1, 256, 256, 1))
  assert logits.shape == (1, 256, 256, 2) and _num_params(variables["params"]) == expected(1)


# ------------------------------------------------------------------------------------------------
# Variants
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("hw", [(64, 64), (60, 44), (37, 50)])
def test_same_version_keeps_the_input_size(hw):
  model = unet.UNetTiny(num_classes=3)
  x = _image((2, *hw, 3))
  variables = _init(model, x)
  logits = _apply(model, variables, x, train=False)["logits"]
  chex.assert_shape(logits, (2, *hw, 3))
  assert np.all(np.isfinite(logits))


@pytest.mark.parametrize("upsampling", unet.UPSAMPLINGS)
@pytest.mark.parametrize("padding,size,out", [("VALID", 572, 388), ("SAME", 256, 256),
                                              ("VALID", 188, 4), ("SAME", 100, 100)])
def test_upsampling_options_give_the_right_shape(upsampling, padding, size, out):
  model = unet.UNet(num_classes=5, depth=4, base_features=8, padding=padding, upsampling=upsampling)
  _, logits = _eval_shapes(model, (2, size, size, 3))
  assert logits.shape == (2, out, out, 5)


@pytest.mark.parametrize("upsampling", unet.UPSAMPLINGS)
@pytest.mark.slow
def test_upsampling_options_run(upsampling):
  model = unet.UNetTiny(num_classes=3, upsampling=upsampling)
  x = _image((1, 32, 32, 3))
  variables = _init(model, x)
  logits = _apply(model, variables, x, train=False)["logits"]
  chex.assert_shape(logits, (1, 32, 32, 3))
  assert np.all(np.isfinite(logits)) and np.std(logits) > 0


def test_input_stride_runs_the_network_on_the_pooled_image_and_resizes_the_logits():
  model = unet.UNetTiny(num_classes=3)
  x = _image((2, 32, 48, 3))
  variables = _init(model, x)  # input_stride changes no parameter
  got = _apply(unet.UNetTiny(num_classes=3, input_stride=2), variables, x, train=False)["logits"]
  pooled = x.reshape(2, 16, 2, 24, 2, 3).mean(axis=(2, 4))  # 2x2 average pooling
  low = _apply(model, variables, pooled, train=False)["logits"]  # (2, 16, 24, 3)
  want = jax.image.resize(low, (2, 32, 48, 3), "bilinear")  # half-pixel centres
  chex.assert_shape(got, (2, 32, 48, 3))
  np.testing.assert_allclose(got, want, atol=1e-5)


def test_invalid_fields_and_inputs_raise():
  x = jnp.zeros((1, 32, 32, 3))
  for kwargs, match in [({"padding": "same"}, "padding"), ({"upsampling": "deconv"}, "upsampling"),
                        ({"norm": "layer"}, "norm"), ({"dropout_rate": 1.0}, "dropout_rate"),
                        ({"mirror_pad": True}, "mirror_pad"), ({"input_stride": 0}, "input_stride")]:
    with pytest.raises(ValueError, match=match):
      unet.UNetTiny(num_classes=2, **kwargs).init(jax.random.key(0), x, train=False)
  with pytest.raises(ValueError, match="height.*mirror_pad=True"):
    unet.UNet(num_classes=2, depth=2, base_features=4).init(jax.random.key(0), x, train=False)
  with pytest.raises(ValueError, match="width must be >= 2\\*\\*depth = 4"):
    unet.UNetTiny(num_classes=2).init(jax.random.key(0), jnp.zeros((1, 8, 3, 3)), train=False)
  with pytest.raises(ValueError, match="input_stride > 1 is for padding='SAME'"):
    _VALID_TINY(num_classes=2, input_stride=2).init(jax.random.key(0), x, train=False)
  with pytest.raises(ValueError, match="multiples of input_stride=2"):
    unet.UNetTiny(num_classes=2, input_stride=2).init(jax.random.key(0), jnp.zeros((1, 32, 33, 3)),
                                                      train=False)
  with pytest.raises(ValueError, match="NHWC"):
    unet.UNetTiny(num_classes=2).init(jax.random.key(0), jnp.zeros((32, 32, 3)), train=False)


# ------------------------------------------------------------------------------------------------
# Valid network on whole images: mirror padding, overlap-tile
# ------------------------------------------------------------------------------------------------

_VALID_TINY = functools.partial(unet.UNet, depth=2, base_features=4, padding="VALID")


@pytest.mark.parametrize("hw", [(36, 40), (37, 30)])
def test_mirror_padding_gives_an_output_of_the_original_size(hw):
  depth, (h, w) = 2, hw
  images = np.random.default_rng(0).normal(size=(2, h, w, 3)).astype(np.float32)
  padded = unet.mirror_pad_for_valid_unet(images, depth)
  assert isinstance(padded, np.ndarray)
  (top, bottom), (left, right) = unet.valid_unet_pad_widths((h, w), depth)
  assert top == left == unet.unet_border(depth) == 20
  np.testing.assert_array_equal(
      padded, np.pad(images, ((0, 0), (top, bottom), (left, right), (0, 0)), mode="reflect"))
  model = _VALID_TINY(num_classes=3)
  variables = _init(model, jnp.asarray(padded))
  logits = _apply(model, variables, jnp.asarray(padded), train=False)["logits"]
  # 36 and 40 are 0 mod 4 = 4 mod 2**depth: exactly the original size; 37 and 30 need extra pixels.
  exact = (h % 4 == 0, w % 4 == 0)
  assert (logits.shape[1] == h) == exact[0] and (logits.shape[2] == w) == exact[1]
  assert h <= logits.shape[1] < h + 4 and w <= logits.shape[2] < w + 4
  # The in-module version pads the same way and crops to the input size.
  inside = _VALID_TINY(num_classes=3, mirror_pad=True)
  logits_inside = _apply(inside, variables, jnp.asarray(images), train=False)["logits"]
  chex.assert_shape(logits_inside, (2, h, w, 3))
  np.testing.assert_allclose(logits_inside, logits[:, :h, :w], rtol=1e-5, atol=1e-5)
  # JAX arrays stay JAX arrays (usable under jit).
  assert isinstance(unet.mirror_pad_for_valid_unet(jnp.asarray(images[0]), depth), jax.Array)


def test_valid_network_tiles_agree_with_one_pass():
  # Overlap-tile (paper Fig. 2): an input tile shifted by a multiple of 2**depth gives exactly the
  # corresponding part of the whole-image output (no padding effects in the valid network).
  model = _VALID_TINY(num_classes=3)
  full = _image((1, 76, 76, 3))  # valid: (76 + 4) % 4 == 0, output 36
  variables = _init(model, full)
  apply = jax.jit(functools.partial(model.apply, train=False))
  out_full = apply(variables, full)["logits"]
  assert out_full.shape == (1, 36, 36, 3)
  for top, left in [(0, 0), (8, 16), (16, 4)]:
    tile = full[:, top:top + 60, left:left + 60]  # output 20 x 20
    out_tile = apply(variables, tile)["logits"]
    np.testing.assert_allclose(out_tile, out_full[:, top:top + 20, left:left + 20], rtol=1e-4,
                               atol=1e-5)


def test_crop_labels_to_output():
  labels = np.arange(2 * 10 * 12).reshape(2, 10, 12)
  np.testing.assert_array_equal(unet.crop_labels_to_output(labels, (6, 4)), labels[:, 2:8, 4:8])
  assert unet.crop_labels_to_output(labels, (10, 12)) is labels
  with pytest.raises(ValueError, match="larger"):
    unet.crop_labels_to_output(labels, (12, 12))


# ------------------------------------------------------------------------------------------------
# BatchNorm and drop-out
# ------------------------------------------------------------------------------------------------


def test_batchnorm_variant_updates_batch_stats_in_train_mode():
  model = unet.UNetTiny(num_classes=3, norm="batch")
  x = _image((4, 32, 32, 3)) * 3.0 + 1.0
  variables = _init(model, x)
  assert set(variables) == {"params", "batch_stats"}
  # Conv biases are dropped before BatchNorm.
  assert "bias" not in variables["params"]["down0"]["conv1"]["conv"]
  out, updates = _apply(model, variables, x, train=True, mutable=["batch_stats"])
  changed = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), variables["batch_stats"],
                         updates["batch_stats"])
  assert all(jax.tree.leaves(changed))
  chex.assert_shape(out["logits"], (4, 32, 32, 3))
  # Eval mode uses the running averages and needs nothing mutable.
  _apply(model, {**variables, "batch_stats": updates["batch_stats"]}, x, train=False)


def test_cross_replica_batchnorm_equals_batchnorm_over_the_global_batch():
  x = _image((8, 16, 16, 3))
  local = unet.UNetTiny(num_classes=3, norm="batch")
  variables = _init(local, x)
  _, want = _apply(local, variables, x, train=True, mutable=["batch_stats"])
  replicated = unet.UNetTiny(num_classes=3, norm="batch", axis_name="data")
  per_replica = jax.jit(jax.vmap(
      lambda xb: replicated.apply(variables, xb, train=True, mutable=["batch_stats"])[1],
      axis_name="data"))
  got = per_replica(x.reshape(2, 4, 16, 16, 3))  # 2 "devices" of 4 images each
  jax.tree.map(lambda g, w: np.testing.assert_allclose(g[0], w, rtol=1e-4, atol=1e-5), got, want)


def test_dropout_at_the_bottom():
  model = unet.UNetTiny(num_classes=3, dropout_rate=0.5)
  x = _image((1, 16, 16, 3))
  variables = _init(model, x)
  a = _apply(model, variables, x, train=True, dropout_key=_key(1))["logits"]
  b = _apply(model, variables, x, train=True, dropout_key=_key(2))["logits"]
  assert not np.allclose(a, b)
  e1 = _apply(model, variables, x, train=False)["logits"]
  np.testing.assert_array_equal(e1, _apply(model, variables, x, train=False)["logits"])


# ------------------------------------------------------------------------------------------------
# Weight map (paper Eq. 2)
# ------------------------------------------------------------------------------------------------


def test_distance_transform_and_components_match_scipy():
  ndimage = pytest.importorskip("scipy.ndimage")
  rng = np.random.default_rng(0)
  for shape, p in [((30, 41), 0.02), ((17, 9), 0.3), ((64, 64), 0.5), ((5, 70), 0.01)]:
    mask = rng.random(shape) < p
    mask[rng.integers(shape[0]), rng.integers(shape[1])] = True
    want = ndimage.distance_transform_edt(~mask)
    np.testing.assert_allclose(unet._distance_to(mask), want, rtol=1e-12, atol=1e-12)
    # With a cut-off: exact up to it, inf (a larger distance) only beyond it.
    cut = unet._distance_to(mask, max_distance=6.5)
    near = np.isfinite(cut)
    assert np.all(near[want <= 6.5])
    np.testing.assert_allclose(cut[near], want[near], rtol=1e-12, atol=1e-12)
    labels, n = unet._connected_components(mask)
    want, n_want = ndimage.label(mask)
    assert n == n_want
    np.testing.assert_array_equal(labels, want)


def test_weight_map_follows_the_formula():
  # Two 10 x 10 squares of classes 1 and 2 with a 3-pixel gap between them, on background 0.
  seg = np.zeros((20, 30), np.int32)
  seg[5:15, 5:15] = 1
  seg[5:15, 18:28] = 2
  seg[0, 0] = 255  # unlabelled
  masks = np.stack([seg == 1, seg == 2])
  w0, sigma = 10.0, 5.0
  w = unet.unet_weight_map(seg, masks, w0=w0, sigma=sigma)
  assert w.dtype == np.float32 and w.shape == seg.shape
  n = seg.size - 1
  counts = {0: n - 200, 1: 100, 2: 100}
  wc = {c: n / (3 * counts[c]) for c in counts}
  # Gap pixel (10, 15): 1 px right of square 1, 3 px left of square 2.
  np.testing.assert_allclose(w[10, 15], wc[0] + w0 * np.exp(-(1 + 3) ** 2 / (2 * sigma**2)),
                             rtol=1e-6)
  # Gap centre (10, 16): 2 px from both.
  np.testing.assert_allclose(w[10, 16], wc[0] + w0 * np.exp(-(2 + 2) ** 2 / (2 * sigma**2)),
                             rtol=1e-6)
  # Far corner (19, 0): d1 = |(19,0)-(14,5)| and d2 = |(19,0)-(14,18)|.
  d1, d2 = np.hypot(5, 5), np.hypot(5, 18)
  np.testing.assert_allclose(w[19, 0], wc[0] + w0 * np.exp(-(d1 + d2) ** 2 / (2 * sigma**2)),
                             rtol=1e-6)
  # Inside objects only the class term; unlabelled pixels 0.
  np.testing.assert_allclose(w[10, 10], wc[1], rtol=1e-6)
  assert w[0, 0] == 0
  # Without masks the objects are the connected components of each class: the same here.
  np.testing.assert_allclose(unet.unet_weight_map(seg, w0=w0, sigma=sigma), w, rtol=1e-6)
  # One object: no border term; no class balance: ones.
  one = unet.unet_weight_map(np.where(seg == 2, 0, seg), class_balance=False)
  np.testing.assert_array_equal(one[seg != 255], 1.0)
  ex = unet.add_unet_weight_map({"segmentation": seg, "masks": masks})
  np.testing.assert_array_equal(ex["weight_map"], w)


# ------------------------------------------------------------------------------------------------
# Family glue
# ------------------------------------------------------------------------------------------------


def test_family_from_registry():
  assert MODELS["unet"].__name__ == "make_unet"
  cfg = ml_collections.ConfigDict({"name": "unet", "depth": 2, "base_features": 4, "padding": "SAME",
                                   "norm": "batch"})
  family = MODELS["unet"](cfg, 3)
  assert isinstance(family.module, unet.UNet) and family.module.norm == "batch"
  x = _image((2, 16, 16, 3))
  variables = _init(family.module, x)
  outputs = _apply(family.module, variables, x, train=False)
  labels = np.random.default_rng(0).integers(0, 3, (2, 16, 16)).astype(np.int32)
  labels[0, :4] = 255
  total, terms = family.loss(outputs, {"segmentation": labels})
  ce = softmax_cross_entropy(outputs["logits"], jnp.asarray(labels))
  np.testing.assert_allclose(total, jnp.sum(ce) / np.sum(labels != 255), rtol=1e-6)
  assert set(terms) == {"cross_entropy"}
  np.testing.assert_allclose(family.loss(outputs, {"segmentation": labels}, normalizer=10.0)[0],
                             jnp.sum(ce) / 10.0, rtol=1e-6)
  assert float(family.loss_normalizer(outputs, {"segmentation": labels})) == np.sum(labels != 255)
  pred = family.postprocess(outputs)
  assert pred.shape == (2, 16, 16) and pred.dtype == jnp.int32
  with pytest.raises(ValueError, match="unknown U-Net model config keys \\['widht'\\]"):
    unet.make_unet({"widht": 3}, 3)
  with pytest.raises(ValueError, match="preset"):
    unet.make_unet({"preset": "huge"}, 3)
  paper = unet.make_unet({"preset": "paper", "dtype": "bfloat16"}, 2).module
  assert (paper.padding, paper.base_features, paper.dtype) == ("VALID", 64, jnp.bfloat16)


def test_family_loss_crops_labels_and_uses_the_weight_map():
  family = unet.make_unet({"depth": 2, "base_features": 4, "padding": "VALID", "weight_map": True}, 3)
  x = _image((1, 44, 44, 3))  # valid: output 4 x 4
  variables = _init(family.module, x)
  outputs = _apply(family.module, variables, x, train=False)
  assert outputs["logits"].shape == (1, 4, 4, 3)
  labels = np.random.default_rng(1).integers(0, 2, (1, 44, 44)).astype(np.int32)
  weights = np.random.default_rng(2).random((1, 44, 44)).astype(np.float32)
  total, _ = family.loss(outputs, {"segmentation": labels, "weight_map": weights})
  ce = softmax_cross_entropy(outputs["logits"], jnp.asarray(labels[:, 20:24, 20:24]))
  np.testing.assert_allclose(total, jnp.sum(ce * weights[:, 20:24, 20:24]) / 16, rtol=1e-6)
  with pytest.raises(ValueError, match="weight_map"):
    family.loss(outputs, {"segmentation": labels})


def test_family_class_weights_give_the_weighted_mean():
  weights = [0.5, 1.0, 3.0]
  family = unet.make_unet({"depth": 2, "base_features": 4, "padding": "SAME", "norm": "batch",
                           "class_weights": weights}, 3)
  x = _image((2, 16, 16, 3))
  outputs = _apply(family.module, _init(family.module, x), x, train=False)
  labels = np.random.default_rng(3).integers(0, 3, (2, 16, 16)).astype(np.int32)
  labels[1, 5:] = 255
  total, _ = family.loss(outputs, {"segmentation": labels})
  ce = softmax_cross_entropy(outputs["logits"], jnp.asarray(labels), class_weights=jnp.asarray(weights))
  w = np.where(labels == 255, 0.0, np.asarray(weights)[np.minimum(labels, 2)])
  np.testing.assert_allclose(total, jnp.sum(ce) / w.sum(), rtol=1e-6)
  with pytest.raises(ValueError, match="class_weights"):
    unet.make_unet({"class_weights": [1.0, 2.0]}, 3)


# ------------------------------------------------------------------------------------------------
# Learning on the shapes dataset
# ------------------------------------------------------------------------------------------------


def _decode_image_and_labels(record):
  return {"image": np.asarray(record["image"], np.uint8),
          "segmentation": np.asarray(record["segmentation"], np.int32)}


@pytest.mark.slow
def test_small_same_unet_learns_shapes(shapes_dir):
  # Measured on the shared 2-core CPU (see the U-Net report): ~0.25-0.3 s per step, the whole test
  # ~2 min plus ~40 s to prepare the dataset; loss ~1.3 -> ~0.45, val mIoU ~0.13 -> ~0.2.
  from jaxvision.data import pipeline, transforms  # noqa: PLC0415
  from jaxvision.eval.segmentation import confusion_matrix, segmentation_metrics  # noqa: PLC0415

  steps, batch_size = 200, 8
  train_source, info = pipeline.shapes_source("train", data_dir=shapes_dir)
  val_source, _ = pipeline.shapes_source("validation", data_dir=shapes_dir)
  num_classes = info.num_seg_classes  # background + 5 shapes
  train = pipeline.make_dataset(
      train_source, batch_size=batch_size, decode=_decode_image_and_labels, train=True, seed=0,
      transform=transforms.compose(transforms.random_horizontal_flip, transforms.normalize_image))
  val = pipeline.make_dataset(val_source, batch_size=50, decode=_decode_image_and_labels,
                              transform=transforms.compose(transforms.normalize_image), train=False)
  val = [val[i] for i in range(len(val))]

  family = MODELS["unet"]({"padding": "SAME", "depth": 4, "base_features": 8, "norm": "batch"},
                          num_classes)
  variables = _init(family.module, jnp.zeros((1, 128, 128, 3)))
  params, batch_stats = variables["params"], variables["batch_stats"]
  tx = optax.adam(3e-3)
  opt_state = tx.init(params)

  @jax.jit
  def train_step(params, batch_stats, opt_state, batch):
    def loss_fn(p):
      outputs, updates = family.module.apply({"params": p, "batch_stats": batch_stats},
                                             batch["image"], train=True, mutable=["batch_stats"])
      return family.loss(outputs, batch)[0], updates["batch_stats"]
    (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), batch_stats, opt_state, loss

  @jax.jit
  def eval_step(params, batch_stats, image, labels):
    outputs = family.module.apply({"params": params, "batch_stats": batch_stats}, image,
                                  train=False)
    return confusion_matrix(labels, family.postprocess(outputs), num_classes)

  def val_miou(params, batch_stats):
    cm = sum(np.asarray(eval_step(params, batch_stats, b["image"], b["segmentation"]), np.int64)
             for b in val)
    return segmentation_metrics(cm)["mean_iou"]

  start = time.time()
  miou_before = val_miou(params, batch_stats)
  losses = []
  for i in range(steps):
    params, batch_stats, opt_state, loss = train_step(params, batch_stats, opt_state, train[i])
    losses.append(float(loss))
  miou_after = val_miou(params, batch_stats)
  loss_before, loss_after = np.mean(losses[:5]), np.mean(losses[-10:])
  print(f"U-Net shapes: loss {loss_before:.3f} -> {loss_after:.3f}, val mIoU {miou_before:.3f} -> "
        f"{miou_after:.3f}, {steps} steps in {time.time() - start:.0f} s")
  assert np.all(np.isfinite(losses))
  assert loss_after < 0.5 * loss_before
  assert miou_after > miou_before + 0.03
