"""ResNet and VGG-16 backbones: torchvision parity at a tiny width (tests/fixtures/backbones.npz from
gen_backbones.py), full-size shapes and parameter counts by jax.eval_shape, dilation, FrozenBatchNorm,
a dilated BasicBlock against a lax reference, and errors."""

from __future__ import annotations

import functools
import importlib.util
import pathlib
import re

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxvision.models.backbones import (BasicBlock, ResNet, VGG16, make_backbone,
                                        resnet_dilations)
from jaxvision.models.backbones.vgg import vgg_pool_size
from jaxvision.models.layers import FrozenBatchNorm, frozen_from_batch_norm, make_norm

_FIXTURES = pathlib.Path(__file__).resolve().parents[1] / "fixtures"


def _load_gen():
  spec = importlib.util.spec_from_file_location("gen_backbones", _FIXTURES / "gen_backbones.py")
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


gen = _load_gen()  # numpy_tensor / input_array / cases: no torch imported at module level

_LEAF = {"kernel": "weight", "scale": "weight", "bias": "bias", "mean": "running_mean",
         "var": "running_var"}


def torch_weights(shapes, module_key):
  """Variables shaped like ``shapes`` (an eval_shape tree) filled with the fixture's torch weights.

  ``module_key(path) -> torch module prefix`` maps a Flax module path (tuple of names) to the
  torchvision module name; kernels are transposed ``[O, I, kh, kw] -> [kh, kw, I, O]``.
  """
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(shapes))
  out = {}
  for path, leaf in flat.items():
    key = f"{module_key(path[1:-1])}.{_LEAF[path[-1]]}"
    if path[-1] == "kernel":
      kh, kw, i, o = leaf.shape
      value = np.transpose(gen.numpy_tensor(key, (o, i, kh, kw)), (2, 3, 1, 0))
    else:
      value = gen.numpy_tensor(key, leaf.shape)
    assert value.shape == leaf.shape, (path, value.shape, leaf.shape)
    out[path] = jnp.asarray(value)
  return flax.traverse_util.unflatten_dict(out)


def resnet_torch_key(mods) -> str:
  parts = []
  for m in mods:
    if re.fullmatch(r"layer\d_\d+", m):
      parts += m.split("_")
    elif m in ("downsample_conv", "downsample_bn"):
      parts += ["downsample", "0" if m == "downsample_conv" else "1"]
    else:
      parts.append(m)
  return ".".join(parts)


def vgg_torch_key(batch_norm: bool):
  index, i = {}, 0
  convs = iter([(b, k) for b, n in enumerate((2, 2, 3, 3, 3), 1) for k in range(1, n + 1)])
  for c in gen.vgg_cfg():
    if c == "M":
      i += 1
      continue
    b, k = next(convs)
    index[f"conv{b}_{k}"] = i
    index[f"bn{b}_{k}"] = i + 1
    i += 3 if batch_norm else 2

  def key(mods):
    (m,) = mods
    return m if m.startswith("fc") else f"features.{index[m]}"
  return key


def _shapes(module, x, **kw):
  return jax.eval_shape(functools.partial(module.init, **kw), jax.random.key(0), x)


def _random_variables(module, x, seed=0, **kw):
  """Variables of ``module`` filled with uniform [0.5, 1.5) values, without compiling an init."""
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda a: jnp.asarray(rng.uniform(0.5, 1.5, a.shape) / np.sqrt(max(a.size // a.shape[-1], 1)), jnp.float32),
                      _shapes(module, x, **kw))


def _close(actual, expected, name, rtol=1e-4):
  actual = np.asarray(actual)
  assert actual.shape == expected.shape, (name, actual.shape, expected.shape)
  scale = float(np.max(np.abs(expected))) + 1e-6
  err = float(np.max(np.abs(actual - expected)))
  assert err <= rtol * scale, f"{name}: max |diff| {err:.3g} vs max |ref| {scale:.3g}"


# ------------------------------------------------------------------------------------------------
# torchvision parity
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", sorted(gen.RESNET_CASES))
@pytest.mark.slow
def test_resnet_matches_torchvision(case, fixture_npz):
  ref = fixture_npz("backbones")
  block, layers, rswd, shape = gen.RESNET_CASES[case]
  depth = {("basic", 2): 18, ("bottleneck", 3): 50}[(block, layers[0])]
  output_stride = {(False, False): 32, (False, True): 16, (True, True): 8}[rswd[1:]]
  model = ResNet(depth=depth, width=gen.WIDTH, output_stride=output_stride)
  x = jnp.asarray(gen.input_array(case, shape))
  variables = torch_weights(_shapes(model, x, train=False), resnet_torch_key)
  out = jax.jit(functools.partial(model.apply, train=False))(variables, x)
  for k in ("C2", "C3", "C4", "C5"):
    _close(out[k], ref[f"{case}/{k}"], f"{case}/{k}")
  if case == "resnet18":  # training mode: batch statistics, and the running averages move
    out, mutated = jax.jit(functools.partial(model.apply, train=True, mutable=["batch_stats"]))(
        variables, x)
    for k in ("C2", "C3", "C4", "C5"):
      _close(out[k], ref[f"{case}/train/{k}"], f"{case}/train/{k}", rtol=2e-4)
    assert not np.allclose(mutated["batch_stats"]["bn1"]["mean"], variables["batch_stats"]["bn1"]["mean"])


@pytest.mark.parametrize("case", sorted(gen.VGG_CASES))
def test_vgg16_matches_torchvision(case, fixture_npz):
  ref = fixture_npz("backbones")
  bn, tail, shape = gen.VGG_CASES[case]
  kw = dict(width=gen.WIDTH, fc_features=gen.VGG_FC_FEATURES, norm="batch" if bn else None,
            fc_as_conv=tail is not None)
  if tail == "ssd":
    kw.update(fc6_kernel=3, fc6_dilation=6, pool5_stride=1, ceil_mode=True, dropout_rate=0.0)
  model = VGG16(**kw)
  x = jnp.asarray(gen.input_array(case, shape))
  variables = torch_weights(_shapes(model, x, train=False), vgg_torch_key(bn))
  out = jax.jit(functools.partial(model.apply, train=False))(variables, x)
  names = ["conv4_3", "conv5_3", "pool3", "pool4", "pool5"] + (["fc6", "fc7"] if tail else [])
  assert sorted(out) == sorted(names)
  for k in names:
    _close(out[k], ref[f"{case}/{k}"], f"{case}/{k}")


# ------------------------------------------------------------------------------------------------
# Full-size structure (eval_shape only: nothing compiled)
# ------------------------------------------------------------------------------------------------

# torchvision's parameter counts without the ImageNet classifier (fc: 512*1000+1000 for 18/34,
# 2048*1000+1000 for 50/101): 11,689,512 - 513,000 etc.
_TORCHVISION_PARAMS = {18: 11_176_512, 34: 21_284_672, 50: 23_508_032, 101: 42_500_160}


def _num(tree):
  return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(tree))


@pytest.mark.parametrize("depth", [18, 34, 50, 101])
def test_resnet_full_size_params_and_strides(depth):
  model = make_backbone(f"resnet{depth}")
  x = jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32)
  variables = _shapes(model, x, train=False)
  bn = _num(variables["batch_stats"]) // 2  # mean + var: one per BN scale and one per bias
  assert _num(variables["params"]) == _TORCHVISION_PARAMS[depth]
  out = jax.eval_shape(functools.partial(model.apply, train=False), variables, x)
  e = 1 if depth < 50 else 4
  assert {k: v.shape for k, v in out.items()} == {
      "C2": (1, 56, 56, 64 * e), "C3": (1, 28, 28, 128 * e), "C4": (1, 14, 14, 256 * e),
      "C5": (1, 7, 7, 512 * e)}
  assert model.out_channels == {k: v.shape[-1] for k, v in out.items()}
  # frozen: the same network with every BN's scale/bias moved out of params
  frozen = _shapes(make_backbone(f"resnet{depth}", norm="frozen"), x, train=False)
  assert _num(frozen["params"]) == _TORCHVISION_PARAMS[depth] - 2 * bn
  assert _num(frozen["batch_stats"]) == 4 * bn


@pytest.mark.parametrize("output_stride,c4,c5", [(32, 32, 16), (16, 32, 32), (8, 64, 64)])
def test_resnet50_dilated_shapes_512(output_stride, c4, c5):
  model = ResNet(depth=50, output_stride=output_stride)
  x = jax.ShapeDtypeStruct((2, 512, 512, 3), jnp.float32)
  out = jax.eval_shape(functools.partial(model.apply, train=False), _shapes(model, x, train=False), x)
  assert out["C3"].shape == (2, 64, 64, 512)
  assert out["C4"].shape == (2, c4, c4, 1024)
  assert out["C5"].shape == (2, c5, c5, 2048)
  assert model.strides == {"C2": 4, "C3": 8, "C4": 512 // c4, "C5": 512 // c5}


def test_resnet_dilation_plan_follows_torchvision_and_multi_grid():
  plan = resnet_dilations(50, 8)
  assert plan[2] == [(1, 1)] + [(1, 2)] * 5  # layer3: first block keeps the previous dilation
  assert plan[3] == [(1, 2), (1, 4), (1, 4)]
  assert resnet_dilations(101, 16)[3] == [(1, 1), (1, 2), (1, 2)]
  assert resnet_dilations(50, 32)[1] == [(2, 1), (1, 1), (1, 1), (1, 1)]
  assert resnet_dilations(50, 16, multi_grid=(1, 2, 4))[3] == [(1, 2), (1, 4), (1, 8)]
  with pytest.raises(ValueError, match="multi_grid"):
    resnet_dilations(50, 16, multi_grid=(1, 2))
  with pytest.raises(ValueError, match="output_stride"):
    resnet_dilations(50, 4)


def test_vgg16_full_size_fcn_and_ssd300():
  x = jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32)
  model = make_backbone("vgg16")
  variables = _shapes(model, x, train=False)
  assert _num(variables["params"]) == 134_260_544  # torchvision vgg16 minus the 1000-way fc8
  out = jax.eval_shape(functools.partial(model.apply, train=False), variables, x)
  assert {k: v.shape[1:] for k, v in out.items()} == {
      "conv4_3": (28, 28, 512), "conv5_3": (14, 14, 512), "pool3": (28, 28, 256),
      "pool4": (14, 14, 512), "pool5": (7, 7, 512), "fc6": (7, 7, 4096), "fc7": (7, 7, 4096)}
  ssd = VGG16(fc6_kernel=3, fc6_dilation=6, pool5_stride=1, ceil_mode=True, fc_features=1024,
              dropout_rate=0.0)
  x300 = jax.ShapeDtypeStruct((1, 300, 300, 3), jnp.float32)
  v = _shapes(ssd, x300, train=False)
  out = jax.eval_shape(functools.partial(ssd.apply, train=False), v, x300)
  assert out["conv4_3"].shape == (1, 38, 38, 512)  # ceil-mode pool3: 75 -> 38
  assert out["fc7"].shape == (1, 19, 19, 1024)
  assert _num(v["params"]) == 14_714_688 + 4_719_616 + 1_049_600  # convs + fc6 + fc7
  # the paper's FCN layout: 100 px input padding and an unpadded fc6
  paper = VGG16(conv1_1_padding=100, fc6_padding="valid", ceil_mode="all")
  out = jax.eval_shape(functools.partial(paper.apply, train=False), _shapes(paper, x, train=False), x)
  # 224 + 198 = 422 -> 211 -> 106 -> 53 -> 27 -> 14 (ceil), fc6 7x7 unpadded -> 8
  assert out["pool5"].shape[1:3] == (14, 14) and out["fc7"].shape[1:3] == (8, 8)


def test_vgg_pool_size_rounding():
  assert vgg_pool_size(75, ceil=True) == 38 and vgg_pool_size(75, ceil=False) == 37
  assert vgg_pool_size(38, ceil=True) == 19
  x = jnp.zeros((1, 75, 75, 3))
  m = VGG16(width=8, fc_as_conv=False, ceil_mode=("pool1", "pool3"))
  out = jax.eval_shape(functools.partial(m.apply, train=False), _shapes(m, x, train=False), x)
  assert out["pool3"].shape[1:3] == (10, 10)  # 75 -c-> 38 -f-> 19 -c-> 10


def test_vgg_dropout_only_in_training():
  m = VGG16(width=4, fc_features=8, dropout_rate=0.5)
  x = jnp.asarray(gen.input_array("dropout", (1, 32, 32, 3)))
  v = _random_variables(m, x, train=False)
  apply = jax.jit(m.apply, static_argnames="train")
  a = apply(v, x, train=False)["fc7"]
  b = apply(v, x, train=True, rngs={"dropout": jax.random.key(1, impl="rbg")})["fc7"]
  assert not np.allclose(a, b)
  np.testing.assert_array_equal(a, apply(v, x, train=False)["fc7"])


# ------------------------------------------------------------------------------------------------
# Blocks and norms
# ------------------------------------------------------------------------------------------------


def _lax_conv(x, w, stride, dilation):
  pad = dilation * (w.shape[0] - 1) // 2
  return jax.lax.conv_general_dilated(x, w, (stride, stride), [(pad, pad)] * 2,
                                      rhs_dilation=(dilation, dilation),
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                      precision="highest")


@pytest.mark.parametrize("stride,dilation,c_in", [(1, 2, 8), (2, 1, 4), (1, 1, 8)])
def test_basic_block_matches_lax_reference(stride, dilation, c_in):
  """A (dilated) BasicBlock with frozen norms against plain lax convolutions (no torchvision
  reference exists for a dilated BasicBlock)."""
  block = BasicBlock(8, stride=stride, dilation=dilation, norm=make_norm("frozen", train=False))
  x = jnp.asarray(gen.input_array("block", (2, 9, 10, c_in)))
  shapes = jax.eval_shape(block.init, jax.random.key(0), x)
  rng = np.random.default_rng(0)
  variables = jax.tree.map(lambda s: jnp.asarray(rng.uniform(0.5, 1.5, s.shape), jnp.float32), shapes)
  out = block.apply(variables, x)
  p, s = variables["params"], variables["batch_stats"]

  def bn(y, name):
    st = s[name]
    return (y - st["mean"]) / jnp.sqrt(st["var"] + 1e-5) * st["scale"] + st["bias"]

  y = jax.nn.relu(bn(_lax_conv(x, p["conv1"]["kernel"], stride, dilation), "bn1"))
  y = bn(_lax_conv(y, p["conv2"]["kernel"], 1, dilation), "bn2")
  short = x
  if "downsample_conv" in p:
    short = bn(_lax_conv(x, p["downsample_conv"]["kernel"], stride, 1), "downsample_bn")
  else:
    assert stride == 1 and c_in == 8
  np.testing.assert_allclose(out, jax.nn.relu(y + short), rtol=1e-4, atol=1e-4)


def test_frozen_batch_norm_is_fixed_and_converts():
  x = jnp.asarray(gen.input_array("fbn", (2, 3, 3, 4)))
  bn = FrozenBatchNorm()
  v = bn.init(jax.random.key(0), x)
  assert "params" not in v and sorted(v["batch_stats"]) == ["bias", "mean", "scale", "var"]
  np.testing.assert_allclose(bn.apply(v, x), x / np.sqrt(1 + 1e-5), rtol=1e-6)
  # from a trained nn.BatchNorm: same output as its eval mode
  import flax.linen as nn
  ref = nn.BatchNorm(use_running_average=True, epsilon=1e-5)
  rv = ref.init(jax.random.key(0), x)
  rng = np.random.default_rng(1)
  rv = jax.tree.map(lambda a: jnp.asarray(rng.uniform(0.5, 1.5, a.shape), jnp.float32), rv)
  fv = {"batch_stats": frozen_from_batch_norm(rv["params"], rv["batch_stats"])}
  np.testing.assert_allclose(bn.apply(fv, x), ref.apply(rv, x), rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match="missing"):
    frozen_from_batch_norm({"scale": 1}, {"mean": 0})


def test_frozen_resnet_norms_are_not_params_and_never_update():
  model = ResNet(depth=18, width=4, norm="frozen")
  x = jnp.asarray(gen.input_array("frozen", (1, 32, 32, 3)))
  v = _random_variables(model, x, train=False)
  assert not any("bn" in "/".join(k) for k in flax.traverse_util.flatten_dict(v["params"]))

  # training mode: the frozen statistics are used as they are and come back unchanged
  out, mutated = jax.jit(functools.partial(model.apply, train=True, mutable=["batch_stats"]))(v, x)
  np.testing.assert_array_equal(out["C5"], jax.jit(functools.partial(model.apply, train=False))(v, x)["C5"])
  jax.tree.map(np.testing.assert_array_equal, mutated["batch_stats"], v["batch_stats"])


def test_make_backbone_errors():
  with pytest.raises(ValueError, match="unknown backbone 'resnet152'"):
    make_backbone("resnet152")
  with pytest.raises(ValueError, match="depth"):
    make_backbone("resnet18", depth=50)
  x = jnp.zeros((1, 32, 32, 3))
  with pytest.raises(ValueError, match="norm"):
    ResNet(depth=18, width=4, norm="group").init(jax.random.key(0), x)
  with pytest.raises(ValueError, match="NHWC"):
    ResNet(depth=18, width=4).init(jax.random.key(0), x[0])
  with pytest.raises(ValueError, match="pool5_stride"):
    VGG16(width=4, pool5_stride=3).init(jax.random.key(0), x)
  with pytest.raises(ValueError, match="ceil_mode"):
    VGG16(width=4, ceil_mode=("pool9",)).init(jax.random.key(0), x)
  assert isinstance(make_backbone("resnet34", width=8), ResNet)
  assert make_backbone("resnet34", width=8).depth == 34


def test_resnet_trainable_mask_like_torchvision_detection():
  from jaxvision.models.backbones.resnet import resnet_trainable_mask

  model = ResNet(depth=18, width=4)
  v = _shapes(model, jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32), train=False)
  flat = flax.traverse_util.flatten_dict(resnet_trainable_mask(v["params"], 3))
  assert all(m == (k[0].split("_")[0] in ("layer2", "layer3", "layer4")) for k, m in flat.items())
  assert not any(jax.tree.leaves(resnet_trainable_mask(v["params"], 0)))
  assert all(jax.tree.leaves(resnet_trainable_mask(v["params"], 5)))
  with pytest.raises(ValueError, match="trainable_layers"):
    resnet_trainable_mask(v["params"], 6)
