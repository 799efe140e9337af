"""FPN: torchvision.ops.FeaturePyramidNetwork parity (tests/fixtures/backbones.npz), presets on a
full-size ResNet-50 by eval_shape, and errors."""

from __future__ import annotations

import functools
import importlib.util
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxvision.models.backbones import ResNet
from jaxvision.models.necks import FPN, fpn_retinanet, fpn_two_stage

_FIXTURES = pathlib.Path(__file__).resolve().parents[1] / "fixtures"
_spec = importlib.util.spec_from_file_location("gen_backbones", _FIXTURES / "gen_backbones.py")
gen = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gen)


def _torch_key(path, first_level):
  """``params/lateral_C3/conv/kernel`` -> ``inner_blocks.0.0.weight`` etc."""
  mod, leaf = path[1], {"kernel": "weight", "bias": "bias"}[path[-1]]
  if mod.startswith("lateral_C"):
    return f"inner_blocks.{int(mod[len('lateral_C'):]) - first_level}.0.{leaf}"
  if mod.startswith("output_P"):
    return f"layer_blocks.{int(mod[len('output_P'):]) - first_level}.0.{leaf}"
  return f"extra_blocks.{mod}.{leaf}"


@pytest.mark.parametrize("case", sorted(gen.FPN_CASES))
def test_fpn_matches_torchvision(case, fixture_npz):
  ref = fixture_npz("backbones")
  extra, channels, sizes, features = gen.FPN_CASES[case]
  first = 6 - len(channels)
  names = tuple(f"C{first + j}" for j in range(len(channels)))
  feats = {n: jnp.asarray(gen.input_array(f"{case}/{n}", (1, h, w, c)))
           for n, c, (h, w) in zip(names, channels, sizes)}
  max_level = 5 + (1 if extra == "maxpool" else 2)
  fpn = FPN(features=features, min_level=first, max_level=max_level, in_levels=names, extra=extra)
  shapes = jax.eval_shape(fpn.init, jax.random.key(0), feats)
  flat = jax.tree_util.tree_flatten_with_path(shapes)[0]
  leaves = {}
  for path, leaf in flat:
    path = tuple(p.key for p in path)
    key = _torch_key(path, first)
    if path[-1] == "kernel":
      kh, kw, i, o = leaf.shape
      value = np.transpose(gen.numpy_tensor(key, (o, i, kh, kw)), (2, 3, 1, 0))
    else:
      value = gen.numpy_tensor(key, leaf.shape)
    leaves[path] = jnp.asarray(value)
  variables = jax.tree_util.tree_map_with_path(lambda p, _: leaves[tuple(k.key for k in p)], shapes)
  out = fpn.apply(variables, feats)
  assert sorted(out) == [f"P{l}" for l in range(first, max_level + 1)]
  for k, v in out.items():
    expected = ref[f"{case}/{k}"]
    assert v.shape == expected.shape, (k, v.shape, expected.shape)
    scale = float(np.max(np.abs(expected)))
    np.testing.assert_allclose(v, expected, atol=1e-4 * scale, rtol=0, err_msg=k)


def _eval(module, *args):
  v = jax.eval_shape(module.init, jax.random.key(0), *args)
  return v, jax.eval_shape(module.apply, v, *args)


def test_fpn_presets_on_full_size_resnet50():
  backbone = ResNet(depth=50, norm="frozen")
  x = jax.ShapeDtypeStruct((2, 512, 384, 3), jnp.float32)
  _, feats = _eval(backbone, x)
  v, out = _eval(fpn_retinanet(), feats)
  assert {k: a.shape for k, a in out.items()} == {
      "P3": (2, 64, 48, 256), "P4": (2, 32, 24, 256), "P5": (2, 16, 12, 256),
      "P6": (2, 8, 6, 256), "P7": (2, 4, 3, 256)}
  assert v["params"]["p6"]["kernel"].shape == (3, 3, 2048, 256)  # paper: P6 from C5
  v, _ = _eval(fpn_retinanet(extra="p6p7_from_p5"), feats)
  assert v["params"]["p6"]["kernel"].shape == (3, 3, 256, 256)
  v, out = _eval(fpn_two_stage(), feats)
  assert {k: a.shape[1:3] for k, a in out.items()} == {
      "P2": (128, 96), "P3": (64, 48), "P4": (32, 24), "P5": (16, 12), "P6": (8, 6)}
  n = sum(int(np.prod(a.shape)) for a in jax.tree.leaves(v["params"]))
  # torchvision fasterrcnn_resnet50_fpn's FPN: laterals (256+512+1024+2048)*256 + 4*256 and
  # four 3x3 256->256 output convs with bias.
  assert n == (256 + 512 + 1024 + 2048) * 256 + 4 * 256 + 4 * (9 * 256 * 256 + 256)


def test_fpn_norm_variants_and_training_mode():
  feats = {f"C{l}": jnp.ones((1, 2 ** (6 - l), 2 ** (6 - l), 4 * l)) for l in (3, 4, 5)}
  for norm in ("batch", "group", "frozen"):
    fpn = FPN(features=8, max_level=6, norm=norm)
    v = jax.eval_shape(fpn.init, jax.random.key(0), feats)
    assert "bias" not in v["params"]["lateral_C3"]["conv"]
    out = jax.eval_shape(functools.partial(fpn.apply, train=True, mutable=["batch_stats"]), v, feats)
    assert out[0]["P6"].shape == (1, 1, 1, 8)


def test_fpn_errors():
  feats = {"C3": jnp.zeros((1, 8, 8, 4)), "C4": jnp.zeros((1, 4, 4, 4)), "C5": jnp.zeros((1, 2, 2, 4))}
  bad = [
      (dict(extra="p8"), "extra"),
      (dict(min_level=2), "min_level"),
      (dict(in_levels=("C3", "C5")), "consecutive"),
      (dict(extra=None), "extra=None"),
      (dict(max_level=4), "max_level"),
      (dict(norm="layer"), "norm"),
      (dict(in_levels=("C3", "C4", "C5", "C6"), max_level=7), "missing"),
  ]
  for kwargs, match in bad:
    with pytest.raises(ValueError, match=match):
      FPN(**kwargs).init(jax.random.key(0), feats)
