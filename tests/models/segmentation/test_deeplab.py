"""DeepLabv3: ASPP against a lax reference, full-size parameter counts and shapes by eval_shape,
config errors, and a learning test on shapes (slow). torchvision parity of the whole model (through
the weight converter) is in tests/weights/test_segmentation_weights.py."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxvision.models import MODELS
from jaxvision.models.layers import ASPP
from jaxvision.models.segmentation import deeplab

def _lax_conv(x, w, dilation):
  return jax.lax.conv_general_dilated(x, w, (1, 1), [(dilation, dilation)] * 2 if w.shape[0] == 3
                                      else [(0, 0)] * 2, rhs_dilation=(dilation, dilation),
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                      precision="highest")


def test_aspp_matches_lax_reference_without_norm():
  aspp = ASPP(features=4, rates=(1, 3), norm=None, dropout_rate=0.0)
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 7, 9, 3)), jnp.float32)
  v = aspp.init(jax.random.key(0), x)
  rng = np.random.default_rng(1)
  v = jax.tree.map(lambda a: jnp.asarray(rng.normal(size=a.shape) * 0.5, jnp.float32), v)
  p = v["params"]

  def unit(name, inp, dilation=1):
    return jax.nn.relu(_lax_conv(inp, p[name]["conv"]["kernel"], dilation) + p[name]["conv"]["bias"])

  pooled = unit("pooling", jnp.mean(x, axis=(1, 2), keepdims=True))
  branches = [unit("branch0", x), unit("branch1", x, 1), unit("branch2", x, 3),
              jnp.broadcast_to(pooled, (2, 7, 9, 4))]
  ref = unit("project", jnp.concatenate(branches, -1))
  np.testing.assert_allclose(aspp.apply(v, x), ref, rtol=1e-5, atol=1e-5)


# torchvision deeplabv3_resnet50 / _resnet101 (21 classes, aux_loss=True): 42,004,074 / 60,996,202.
@pytest.mark.parametrize("depth,expected", [(50, 42_004_074), (101, 60_996_202)])
def test_full_size_matches_torchvision_parameter_count(depth, expected):
  family = MODELS["deeplab"]({"backbone": f"resnet{depth}", "output_stride": 8,
                              "head": "torchvision", "aux": True}, 21)
  x = jax.ShapeDtypeStruct((1, 513, 513, 3), jnp.float32)
  v = jax.eval_shape(functools.partial(family.module.init, train=False), jax.random.key(0), x)
  assert sum(int(np.prod(a.shape)) for a in jax.tree.leaves(v["params"])) == expected
  out = jax.eval_shape(functools.partial(family.module.apply, train=False), v, x)
  assert out["logits"].shape == out["aux"].shape == (1, 513, 513, 21)
  assert v["params"]["aspp"]["branch3"]["conv"]["kernel"].shape == (3, 3, 2048, 256)


def test_default_rates_follow_output_stride_and_multi_grid():
  assert deeplab.default_rates(16) == (6, 12, 18)
  assert deeplab.default_rates(8) == (12, 24, 36)
  with pytest.raises(ValueError, match="output_stride"):
    deeplab.default_rates(32)
  family = MODELS["deeplab"]({"backbone": "resnet50", "output_stride": 16,
                              "multi_grid": (1, 2, 4)}, 6)
  assert family.module.backbone.multi_grid == (1, 2, 4)
  x = jax.ShapeDtypeStruct((2, 129, 97, 3), jnp.float32)
  v = jax.eval_shape(functools.partial(family.module.init, train=False), jax.random.key(0), x)
  out = jax.eval_shape(functools.partial(family.module.apply, train=False), v, x)
  assert out["logits"].shape == (2, 129, 97, 6) and "aux" not in out


def test_config_errors():
  with pytest.raises(ValueError, match="unknown DeepLab model config keys"):
    deeplab.make_deeplab({"ratess": (1, 2, 3)}, 3)
  with pytest.raises(ValueError, match="backbone"):
    deeplab.make_deeplab({"backbone": "vgg16"}, 3)
  with pytest.raises(ValueError, match="output_stride"):
    deeplab.make_deeplab({"output_stride": 32}, 3)
  with pytest.raises(ValueError, match="head"):
    deeplab.make_deeplab({"head": "v2"}, 3)
  with pytest.raises(ValueError, match="unknown DeepLab model.crf keys \\['iters'\\]"):
    deeplab.make_deeplab({"crf": {"iters": 5}}, 3)


@pytest.mark.slow
def test_dense_crf_post_processing_is_the_crf_of_the_logits():
  from jaxvision.data.transforms import IMAGENET_MEAN, IMAGENET_STD  # noqa: PLC0415
  from jaxvision.ops import crf  # noqa: PLC0415

  cfg = {"backbone": "resnet18", "width": 4, "output_stride": 8, "aspp_features": 8,
         "rates": (1, 2, 3)}
  crf_cfg = {"num_iters": 3, "sigma_alpha": 8.0, "sigma_beta": 13.0, "sigma_gamma": 2.0,
             "w_appearance": 20.0, "w_smoothness": 3.0}
  plain = MODELS["deeplab"](cfg, 3)
  off = MODELS["deeplab"]({**cfg, "crf": {**crf_cfg, "num_iters": 0}}, 3)
  with_crf = MODELS["deeplab"]({**cfg, "crf": crf_cfg}, 3)
  rng = np.random.default_rng(0)
  image = np.zeros((2, 24, 32, 3), np.float32)
  image[:, :, 16:] = 1.5  # two flat regions
  batch = {"image": jnp.asarray(image + 0.05 * rng.normal(size=image.shape), jnp.float32)}
  variables = jax.jit(plain.init_variables)(jax.random.key(0), batch)
  logits = plain.module.apply(variables, batch["image"], train=False)["logits"]
  want = jnp.argmax(jax.vmap(functools.partial(crf.dense_crf, **crf_cfg))(
      logits, crf.to_rgb255(batch["image"], IMAGENET_MEAN, IMAGENET_STD)), -1)
  got = jax.jit(with_crf.predict)(variables, batch)["segmentation"]
  np.testing.assert_array_equal(got, want)
  np.testing.assert_array_equal(jax.jit(off.predict)(variables, batch)["segmentation"],
                                jnp.argmax(logits, -1))  # num_iters 0: the plain argmax


# Learning-test budget (slow test): STEPS steps of BATCH shapes images. Measured with this test on
# the shared 2-core CPU: val mIoU 0.009 -> 0.225, loss 2.24 -> 0.89, 65 s CPU time (132 s wall).
STEPS, BATCH, MIN_MIOU = 600, 4, 0.19


@pytest.mark.slow
def test_deeplab_learns_shapes(train_on_shapes, load_config):
  before, after, losses, seconds = train_on_shapes(load_config("deeplab_shapes"), steps=STEPS,
                                                   batch_size=BATCH)
  print(f"DeepLab shapes: loss {np.mean(losses[:10]):.3f} -> {np.mean(losses[-20:]):.3f}, val "
        f"mIoU {before:.3f} -> {after:.3f}, {STEPS} steps of {BATCH} in {seconds:.0f} s")
  assert np.all(np.isfinite(losses))
  assert np.mean(losses[-20:]) < 0.75 * np.mean(losses[:10])
  assert after > MIN_MIOU and after > before + 0.05
