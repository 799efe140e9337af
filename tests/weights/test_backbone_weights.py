"""torchvision weights -> jaxvision backbones: safe reading, key/layout conversion, output parity.

Fixtures from ``tests/fixtures/gen_weights.py`` (torch needed only there): torchvision's full-size
``resnet18/34/50/101`` and ``vgg16`` with NumPy-seeded weights; the test rebuilds the same state
dicts from the stored key lists, converts them and compares jaxvision's features with
torchvision's within 1e-4 of each output's scale.
"""

from __future__ import annotations

import importlib.util
import os
import pathlib
import pickle
import struct
import zipfile

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxvision.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from jaxvision.models.backbones import ResNet, make_backbone
from jaxvision.weights import io as wio
from jaxvision.weights import torchvision as tvw

FIXTURES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "fixtures")
RTOL = 1e-4  # of max |reference| per output


def _load_gen():
  spec = importlib.util.spec_from_file_location("gen_weights", os.path.join(FIXTURES, "gen_weights.py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)  # NumPy only at import time
  return mod


gen = _load_gen()


@pytest.fixture(scope="module")
def resnet_fx():
  with np.load(os.path.join(FIXTURES, "weights_resnet.npz"), allow_pickle=False) as f:
    return dict(f)


@pytest.fixture(scope="module")
def vgg_fx():
  with np.load(os.path.join(FIXTURES, "weights_vgg16.npz"), allow_pickle=False) as f:
    return dict(f)


def _template(module, size):
  x = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
  return jax.eval_shape(lambda x: module.init(jax.random.key(0), x, train=False), x)


def _compare(fx, prefix, name, actual, rtol=RTOL):
  """Asserts parity on the stored subsample; returns (max abs diff, max abs diff / scale)."""
  sh, sw, sc = (int(s) for s in fx[f"{prefix}_{name}_stride"])
  expected = fx[f"{prefix}_{name}"]
  actual = np.asarray(actual)[:, ::sh, ::sw, ::sc]
  assert actual.shape == expected.shape, (prefix, name, actual.shape, expected.shape)
  scale = float(np.abs(expected).max())
  diff = float(np.abs(actual - expected).max())
  assert scale > 0.1, (prefix, name, scale)  # a dead output would prove nothing
  assert diff <= rtol * scale, f"{prefix} {name}: max |diff| {diff:.3g} vs scale {scale:.3g}"
  return diff, diff / scale


# ------------------------------------------------------------------------------------------------
# Reading files
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["weights_tiny.pth", "weights_tiny_legacy.pth",
                                  "weights_tiny.safetensors"])
def test_reads_torch_zip_legacy_and_safetensors(name):
  sd = wio.load_state_dict(os.path.join(FIXTURES, name))
  expected = gen.tiny_expected()
  assert sorted(sd) == sorted(expected)
  for key, want in expected.items():
    got = sd[key]
    assert got.shape == want.shape, key
    if key == "extra.bf16":
      assert got.dtype.name == "bfloat16"
      got = got.astype(np.float32)
    else:
      assert got.dtype == want.dtype, (key, got.dtype, want.dtype)
    np.testing.assert_array_equal(got, want, err_msg=key)
    assert got.flags.c_contiguous


# A minimal pickle assembler (protocol 2 opcodes), to build torch-zip pickles by hand without torch.
def _p_str(s):
  b = s.encode()
  return b"X" + struct.pack("<I", len(b)) + b


def _p_int(i):
  return b"J" + struct.pack("<i", i)


def _p_global(module, name):
  return b"c" + f"{module}\n{name}\n".encode()


def _p_tuple(*items):
  return b"(" + b"".join(items) + b"t"


def _p_tensor(key, numel, offset, size, stride, storage="FloatStorage"):
  pid = _p_tuple(_p_str("storage"), _p_global("torch", storage), _p_str(key), _p_str("cpu"),
                 _p_int(numel))
  args = _p_tuple(pid + b"Q", _p_int(offset), _p_tuple(*map(_p_int, size)),
                  _p_tuple(*map(_p_int, stride)), b"\x89",
                  _p_global("collections", "OrderedDict") + b")R")
  return _p_global("torch._utils", "_rebuild_tensor_v2") + args + b"R"


def _p_dict(items):
  return b"}" + b"".join(_p_str(k) + v + b"s" for k, v in items) + b"."


def _torch_zip(path, pkl: bytes, storages: dict):
  with zipfile.ZipFile(path, "w") as zf:
    zf.writestr("archive/data.pkl", pkl)
    zf.writestr("archive/byteorder", "little")
    for key, arr in storages.items():
      zf.writestr(f"archive/data/{key}", np.asarray(arr).tobytes())
  return path


def test_hand_built_zip_strides_offsets_and_wrapped_checkpoint(tmp_path):
  data = np.arange(12, dtype=np.float32)
  tensor = _p_tensor("0", 12, 2, (2, 3), (1, 4))  # a transposed view starting at element 2
  inner = b"}" + _p_str("w") + tensor + b"s"
  pkl = b"\x80\x02}" + _p_str("model") + inner + b"s" + _p_str("epoch") + _p_int(3) + b"s."
  path = _torch_zip(tmp_path / "ckpt.pth", pkl, {"0": data})
  sd = wio.load_state_dict(path, key="model")
  np.testing.assert_array_equal(sd["w"], data[2:].reshape(-1)[np.add.outer([0, 1], [0, 4, 8])])
  with pytest.raises(wio.CheckpointFormatError, match="key=") as e:
    wio.load_state_dict(path)  # the top level is not a flat state dict
  assert "epoch" in str(e.value)
  with pytest.raises(wio.CheckpointFormatError, match="no entry 'state_dict'"):
    wio.load_state_dict(path, key="state_dict")


@pytest.mark.parametrize("size,stride,offset", [((3, 3), (3, 1), 0), ((4,), (1,), 1),
                                                ((2, 2), (-1, 1), 2)])
def test_tensor_outside_its_storage_is_refused(tmp_path, size, stride, offset):
  pkl = b"\x80\x02" + _p_dict([("w", _p_tensor("0", 4, offset, size, stride))])
  path = _torch_zip(tmp_path / "bad.pth", pkl, {"0": np.zeros(4, np.float32)})
  with pytest.raises(wio.CheckpointFormatError, match="storage '0'"):
    wio.load_state_dict(path)


def test_truncated_storage_is_refused(tmp_path):
  pkl = b"\x80\x02" + _p_dict([("w", _p_tensor("0", 8, 0, (8,), (1,)))])
  path = _torch_zip(tmp_path / "short.pth", pkl, {"0": np.zeros(4, np.float32)})
  with pytest.raises(wio.CheckpointFormatError, match="16 bytes, expected 8 x 4"):
    wio.load_state_dict(path)


class _Evil:
  def __init__(self, fn, arg):
    self.fn, self.arg = fn, arg

  def __reduce__(self):
    return self.fn, (self.arg,)


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
@pytest.mark.parametrize("payload", ["os.system", "builtins.exec", "storage_type", "build"])
def test_malicious_pickle_is_refused_without_running_it(tmp_path, fmt, payload):
  marker = tmp_path / "pwned"
  if payload == "os.system":
    pkl = pickle.dumps({"w": _Evil(os.system, f"touch {marker}")}, protocol=2)
  elif payload == "builtins.exec":
    pkl = pickle.dumps({"w": _Evil(exec, f"open({str(marker)!r}, 'w').close()")}, protocol=2)
  elif payload == "storage_type":  # code smuggled in where a storage type belongs
    pid = _p_tuple(_p_str("storage"), _p_global("os", "system"), _p_str("0"), _p_str("cpu"), _p_int(1))
    pkl = b"\x80\x02" + _p_dict([("w", pid + b"Q")])
  else:  # BUILD on an allowed function (would overwrite its attributes, e.g. __defaults__)
    state = b"(N}" + _p_str("__defaults__") + b")st"  # (None, {"__defaults__": ()})
    pkl = b"\x80\x02" + _p_dict([("w", _p_global("torch._utils", "_rebuild_tensor_v2") + state + b"b")])
  if fmt == "zip":
    path = _torch_zip(tmp_path / "evil.pth", pkl, {})
  else:
    path = tmp_path / "evil.pth"
    path.write_bytes(pkl)
  match = ("set the state of Function" if payload == "build" else
           r"refusing to load the global (os|posix|__builtin__|builtins)\.(system|exec)")
  with pytest.raises(wio.UnsafeCheckpointError, match=match):
    wio.load_state_dict(path)
  assert not marker.exists()


def test_safetensors_round_trip_and_malformed_files(tmp_path):
  import ml_dtypes
  arrays = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.array([1, -2], np.int64),
            "c": np.array([0.5, -1.25], ml_dtypes.bfloat16), "d": np.zeros((0, 2), np.float16)}
  path = tmp_path / "x.safetensors"
  wio.write_safetensors(path, arrays, metadata={"format": "np"})
  back = wio.load_state_dict(path)
  assert sorted(back) == sorted(arrays)
  for k, v in arrays.items():
    assert back[k].dtype == v.dtype and back[k].shape == v.shape
    np.testing.assert_array_equal(back[k].astype(np.float32), v.astype(np.float32))

  raw = path.read_bytes()
  n = int.from_bytes(raw[:8], "little")
  header = raw[8:8 + n].decode()

  def variant(name, text):
    text = text.encode()
    text += b" " * (-len(text) % 8)
    p = tmp_path / name
    p.write_bytes(len(text).to_bytes(8, "little") + text + raw[8 + n:])
    return p

  big = variant("big.safetensors", header.replace('"data_offsets":[0,24]', '"data_offsets":[0,4000]'))
  with pytest.raises(wio.CheckpointFormatError, match="offsets"):
    wio.read_safetensors(big)
  shape = variant("shape.safetensors", header.replace('"shape":[2,3]', '"shape":[3,3]'))
  with pytest.raises(wio.CheckpointFormatError, match="needs 36 bytes"):
    wio.read_safetensors(shape)
  dtype = variant("dtype.safetensors", header.replace('"F32"', '"C64"'))
  with pytest.raises(wio.CheckpointFormatError, match="unsupported dtype 'C64'"):
    wio.read_safetensors(dtype)
  huge = tmp_path / "huge.safetensors"
  huge.write_bytes((10**9).to_bytes(8, "little") + b"{}")
  with pytest.raises(wio.CheckpointFormatError, match="larger than the file"):
    wio.read_safetensors(huge)
  with pytest.raises(FileNotFoundError, match="does not exist"):
    wio.load_state_dict(tmp_path / "nope.pth")
  junk = tmp_path / "junk.bin"
  junk.write_bytes(np.random.default_rng(0).integers(0, 256, 1000, dtype=np.uint8).tobytes())
  with pytest.raises(wio.CheckpointFormatError, match="not a torch checkpoint"):
    wio.load_state_dict(junk)
  truncated = tmp_path / "truncated.pth"
  truncated.write_bytes((pathlib.Path(FIXTURES) / "weights_tiny_legacy.pth").read_bytes()[:-20])
  with pytest.raises(wio.CheckpointFormatError, match="ends inside storage"):
    wio.load_state_dict(truncated)


# ------------------------------------------------------------------------------------------------
# Layout helpers
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case,k,stride,pad,out_pad", [("k4s2p0", 4, 2, 0, 0), ("k4s2p1", 4, 2, 1, 0),
                                                       ("k3s2p1o1", 3, 2, 1, 1)])
@pytest.mark.parametrize("transpose_kernel", [False, True])
def test_conv_transpose_kernel_matches_torch(case, k, stride, pad, out_pad, transpose_kernel):
  fx = dict(np.load(os.path.join(FIXTURES, "weights_convt.npz")))
  weight = gen.numpy_tensor(f"{case}.weight", (3, 2, k, k))
  bias = gen.numpy_tensor(f"{case}.bias", (2,))
  layer = nn.ConvTranspose(2, (k, k), strides=(stride, stride),
                           padding=((k - 1 - pad, k - 1 - pad + out_pad),) * 2,
                           transpose_kernel=transpose_kernel)
  kernel = tvw.conv_transpose_kernel(weight, transpose_kernel=transpose_kernel)
  out = layer.apply({"params": {"kernel": kernel, "bias": bias}}, fx["x"])
  assert out.shape == fx[case].shape
  np.testing.assert_allclose(np.asarray(out), fx[case], atol=1e-5, rtol=1e-5)


def test_imagenet_normalization_constants_match_torchvision(resnet_fx, vgg_fx):
  for fx in (resnet_fx, vgg_fx):
    np.testing.assert_array_equal(fx["mean"], np.array(IMAGENET_MEAN))
    np.testing.assert_array_equal(fx["std"], np.array(IMAGENET_STD))


# ------------------------------------------------------------------------------------------------
# Key mapping (every depth, cheap: zero-stride arrays, shapes only)
# ------------------------------------------------------------------------------------------------


def _shape_only(keys_json):
  import json
  return {k: np.broadcast_to(np.zeros((), dtype), shape)
          for k, shape, dtype in json.loads(str(keys_json))}


@pytest.mark.parametrize("depth", [18, 34, 50, 101])
def test_resnet_keys_cover_the_backbone_exactly(resnet_fx, depth):
  sd = _shape_only(resnet_fx[f"resnet{depth}_keys"])
  needed = set(tvw.resnet_torchvision_keys(depth))
  dropped = {k for k in sd if k.startswith("fc.") or k.endswith("num_batches_tracked")}
  assert needed == set(sd) - dropped  # the torchvision model has exactly these keys
  assert tvw.infer_resnet_depth(sd) == depth
  for norm in ("batch", "frozen"):
    conv = tvw.convert_resnet(sd, depth, norm=norm)
    template = _template(ResNet(depth=depth, norm=norm), 64)
    assert tvw.check_variables(template, conv) == ([], [], [])
  assert "scale" in conv["batch_stats"]["layer1_0"]["bn1"]  # frozen: all four in batch_stats


@pytest.mark.parametrize("name,norm", [("vgg16_small", None), ("vgg16_bn", "batch")])
def test_vgg16_keys_cover_the_backbone_exactly(vgg_fx, name, norm):
  sd = _shape_only(vgg_fx[f"{name}_keys"])
  conv = tvw.convert_vgg16(sd)  # vgg16_bn detected from its keys
  assert ("batch_stats" in conv) == (norm == "batch")
  fc = gen.VGG_SMALL_FC if name == "vgg16_small" else 4096
  template = _template(make_backbone("vgg16", norm=norm, fc_features=fc), 224)
  assert tvw.check_variables(template, conv) == ([], [], [])
  assert conv["params"]["fc6"]["kernel"].shape == (7, 7, 512, fc)
  headless = tvw.convert_vgg16(sd, fc_as_conv=False)
  template = _template(make_backbone("vgg16", norm=norm, fc_as_conv=False), 64)
  assert tvw.check_variables(template, headless) == ([], [], [])


def test_mismatches_are_reported_never_partially_loaded(resnet_fx):
  sd50 = _shape_only(resnet_fx["resnet50_keys"])
  with pytest.raises(tvw.WeightMismatchError) as e:
    tvw.convert_resnet(sd50, 101)
  msg = str(e.value)
  assert f"{17 * 15} missing" in msg and "layer3.6.conv1.weight" in msg  # 17 blocks x 15 keys
  assert "the keys look like a ResNet-50, not a ResNet-101" in msg
  with pytest.raises(tvw.WeightMismatchError, match="layer1.0.conv3.weight") as e:
    tvw.convert_resnet(sd50, 18)
  assert "layer4.2.bn3.running_var" in e.value.unexpected and not e.value.missing

  broken = dict(sd50)
  del broken["layer2.1.bn2.running_var"]
  broken["layer2.1.extra.weight"] = np.zeros(3, np.float32)
  with pytest.raises(tvw.WeightMismatchError) as e:
    tvw.convert_resnet(broken, 50)
  assert e.value.missing == ["layer2.1.bn2.running_var"]
  assert e.value.unexpected == ["layer2.1.extra.weight"]

  # shapes: a full-width checkpoint into a narrow backbone
  sd18 = _shape_only(resnet_fx["resnet18_keys"])
  template = _template(ResNet(depth=18, width=32), 64)
  with pytest.raises(tvw.WeightMismatchError) as e:
    tvw.load_into(template, tvw.convert_resnet(sd18, 18))
  assert ("params/conv1/kernel", "(7, 7, 3, 32) float32", "(7, 7, 3, 64) float32") in e.value.mismatched
  assert len(e.value.mismatched) == 100 and not e.value.missing and not e.value.unexpected
  assert "100 mismatched; nothing was loaded" in str(e.value)
  assert "batch_stats/bn1/mean: expected (32,) float32, found (64,) float32" in str(e.value)

  # batch-norm variables into a frozen-norm backbone: scale/bias are in the wrong collection
  template = _template(ResNet(depth=18, norm="frozen"), 64)
  with pytest.raises(tvw.WeightMismatchError, match="batch_stats/bn1/scale") as e:
    tvw.load_into(template, tvw.convert_resnet(sd18, 18, norm="batch"))
  assert "params/bn1/scale" in e.value.unexpected

  # a detection-style prefix that matches nothing
  with pytest.raises(tvw.WeightMismatchError, match="no key starts with prefix 'backbone.body.'"):
    tvw.convert_resnet(sd18, 18, prefix="backbone.body.")


def test_load_into_subtree_keeps_the_rest_and_checks_everything():
  template = {"params": {"backbone": {"conv": {"kernel": np.zeros((3, 3, 2, 4), np.float32)}},
                         "head": {"kernel": np.ones((4, 5), np.float32)}}}
  new = {"params": {"conv": {"kernel": np.full((3, 3, 2, 4), 2.0, np.float16)}}}
  out = tvw.load_into(template, new, at="backbone")
  assert out["params"]["backbone"]["conv"]["kernel"].dtype == jnp.float32  # cast to the model's
  np.testing.assert_array_equal(out["params"]["backbone"]["conv"]["kernel"], 2.0)
  np.testing.assert_array_equal(out["params"]["head"]["kernel"], 1.0)
  extra = {"params": {**new["params"], "fc": {"kernel": np.zeros(2)}},
           "batch_stats": {"bn": {"mean": np.zeros(4)}}}
  with pytest.raises(tvw.WeightMismatchError) as e:
    tvw.load_into(template, extra, at="backbone")
  assert e.value.unexpected == ["batch_stats/backbone/bn/mean", "params/backbone/fc/kernel"]
  ints = {"params": {"conv": {"kernel": np.zeros((3, 3, 2, 4), np.int32)}}}
  with pytest.raises(tvw.WeightMismatchError, match="expected .* float32, found .* int32"):
    tvw.load_into(template, ints, at=("backbone",))


# ------------------------------------------------------------------------------------------------
# Output parity with torchvision
# ------------------------------------------------------------------------------------------------


def _resnet_parity(fx, depth, variables, norm):
  module = ResNet(depth=depth, norm=norm)
  x = gen.normalize(fx["image"], IMAGENET_MEAN, IMAGENET_STD)  # (1, 64, 64, 3)
  feats = jax.jit(lambda v, x: module.apply(v, x, train=False))(variables, x)
  return {c: _compare(fx, f"resnet{depth}", c, feats[c]) for c in ("C2", "C3", "C4", "C5")}


def test_resnet18_parity_through_a_detection_style_safetensors_file(resnet_fx, tmp_path):
  sd = gen.state_dict_from_keys(resnet_fx["resnet18_keys"])
  wrapped = {f"backbone.body.{k}": v for k, v in sd.items()}
  wrapped["rpn.head.conv.0.0.weight"] = np.zeros((2, 2, 3, 3), np.float32)  # outside the prefix
  path = tmp_path / "detector.safetensors"
  wio.write_safetensors(path, wrapped)
  variables = tvw.load_backbone_weights(path, "resnet18", prefix="backbone.body.")
  errors = _resnet_parity(resnet_fx, 18, variables, "batch")
  print("resnet18 (norm=batch) max |diff|, relative:", errors)


class _Detector(nn.Module):
  """A model holding a ResNet as ``backbone`` plus a head, as the families do."""
  depth: int

  @nn.compact
  def __call__(self, x, train=False):
    feats = ResNet(depth=self.depth, norm="frozen", name="backbone")(x, train)
    return feats, nn.Conv(3, (1, 1), name="head")(feats["C5"])


def test_resnet50_frozen_parity_loaded_into_a_model(resnet_fx, tmp_path):
  sd = gen.state_dict_from_keys(resnet_fx["resnet50_keys"])
  path = tmp_path / "resnet50.safetensors"
  wio.write_safetensors(path, sd)
  model = _Detector(50)
  template = _template(model, 64)
  variables = jax.tree.map(lambda s: jnp.full(s.shape, 0.5, s.dtype), template)
  loaded = tvw.load_backbone_into(variables, path, "resnet50", at="backbone")  # norm read: frozen
  assert "bn1" not in loaded["params"]["backbone"]
  assert "scale" in loaded["batch_stats"]["backbone"]["bn1"]
  np.testing.assert_array_equal(loaded["params"]["head"]["kernel"], 0.5)  # untouched
  x = gen.normalize(resnet_fx["image"], IMAGENET_MEAN, IMAGENET_STD)
  feats, _ = jax.jit(lambda v, x: model.apply(v, x))(loaded, x)
  errors = {c: _compare(resnet_fx, "resnet50", c, feats[c]) for c in ("C2", "C3", "C4", "C5")}
  print("resnet50 (norm=frozen) max |diff|, relative:", errors)


@pytest.mark.slow
@pytest.mark.parametrize("depth,norm", [(34, "batch"), (101, "frozen")])
def test_resnet34_101_parity(resnet_fx, depth, norm):
  sd = gen.state_dict_from_keys(resnet_fx[f"resnet{depth}_keys"])
  variables = tvw.load_into(_template(ResNet(depth=depth, norm=norm), 64),
                            tvw.convert_resnet(sd, depth, norm=norm))
  errors = _resnet_parity(resnet_fx, depth, variables, norm)
  print(f"resnet{depth} (norm={norm}) max |diff|, relative:", errors)


def test_vgg16_parity_conv_layers_and_fc_as_conv(vgg_fx):
  """Full torchvision VGG-16 features; classifier at hidden width 32 (same keys and layout)."""
  sd = gen.state_dict_from_keys(vgg_fx["vgg16_small_keys"])
  module = make_backbone("vgg16", fc_features=gen.VGG_SMALL_FC)  # fc6_padding="same"
  variables = tvw.load_into(_template(module, 224), tvw.convert_vgg16(sd, fc_as_conv=True))
  x = gen.normalize(vgg_fx["image"], IMAGENET_MEAN, IMAGENET_STD)  # (1, 224, 224, 3)
  feats = jax.jit(lambda v, x: module.apply(v, x, train=False))(variables, x)
  errors = {k: _compare(vgg_fx, "vgg16_small", k, feats[k]) for k in ("conv4_3", "conv5_3", "pool5")}
  # fc6 "same" on the 7x7 pool5: its centre pixel sees exactly the 7x7 classifier input
  for k in ("fc6", "fc7"):
    assert feats[k].shape == (1, 7, 7, gen.VGG_SMALL_FC)
    errors[k] = _compare(vgg_fx, "vgg16_small", k, feats[k][:, 3:4, 3:4])
  print("vgg16 (classifier width 32) max |diff|, relative:", errors)


@pytest.mark.slow
def test_vgg16_full_classifier_parity(vgg_fx):
  """The real 25088 -> 4096 -> 4096 classifier (~120 M weights: ~1 GB of RAM, slow)."""
  sd = gen.state_dict_from_keys(vgg_fx["vgg16_keys"])
  module = make_backbone("vgg16", fc6_padding="valid")
  variables = tvw.load_into(_template(module, 224), tvw.convert_vgg16(sd))
  del sd
  x = gen.normalize(vgg_fx["image"], IMAGENET_MEAN, IMAGENET_STD)
  feats = jax.jit(lambda v, x: module.apply(v, x, train=False))(variables, x)
  errors = {k: _compare(vgg_fx, "vgg16", k, feats[k]) for k in ("fc6", "fc7")}
  print("vgg16 (full classifier, fc6 valid) max |diff|, relative:", errors)


def test_linear_and_conv_kernel_layouts():
  rng = np.random.default_rng(0)
  w, x = rng.normal(size=(5, 3)).astype(np.float32), rng.normal(size=(2, 3)).astype(np.float32)
  dense = nn.Dense(5, use_bias=False).apply({"params": {"kernel": tvw.linear_kernel(w)}}, x)
  np.testing.assert_allclose(np.asarray(dense), x @ w.T, rtol=1e-6, atol=1e-6)
  assert tvw.conv_kernel(np.zeros((8, 3, 7, 5))).shape == (7, 5, 3, 8)
  with pytest.raises(ValueError, match="expected a 4-D array, got shape"):
    tvw.conv_kernel(np.zeros((8, 3)))
