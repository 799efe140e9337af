"""Whole segmentation models from torchvision: ``convert_deeplabv3`` and ``convert_fcn_resnet``.

Parity: torchvision's ``DeepLabV3`` and ``FCN`` at a tiny width (tests/fixtures/deeplab.npz from
gen_deeplab.py; weights rebuilt here from the stored key names), converted and run in
``DeepLab(head="torchvision" | "fcn")``, give the same logits and auxiliary logits. Coverage: the
full-size ``deeplabv3_resnet50`` / ``fcn_resnet50`` key sets (stored from torchvision) convert into
the full-size models built by ``make_deeplab`` with every key and shape checked by ``load_into``.
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
from jaxvision.models.backbones import ResNet
from jaxvision.models.segmentation import deeplab
from jaxvision.weights import WeightMismatchError, convert_deeplabv3, convert_fcn_resnet, load_into

FIXTURES = pathlib.Path(__file__).resolve().parents[1] / "fixtures"


def _load(name):
  spec = importlib.util.spec_from_file_location(name, FIXTURES / f"{name}.py")
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


gen = _load("gen_deeplab")  # NumPy only at import


@pytest.fixture(scope="module")
def ref():
  with np.load(FIXTURES / "deeplab.npz", allow_pickle=False) as f:
    return dict(f)


def _state_dict(keys_json):
  return {k: (np.zeros(shape, np.int64) if k.endswith("num_batches_tracked")
              else gen.gen_backbones.numpy_tensor(k, shape))
          for k, shape in json.loads(str(keys_json))}


def _template(module, shape):
  x = jax.ShapeDtypeStruct(shape, jnp.float32)
  return jax.eval_shape(functools.partial(module.init, train=False), jax.random.key(0), x)


@pytest.mark.parametrize("head", ["torchvision", "fcn"])
def test_tiny_model_parity_through_the_converter(ref, head):
  prefix, convert = ("", convert_deeplabv3) if head == "torchvision" else ("fcn_", convert_fcn_resnet)
  sd = _state_dict(ref[f"{'deeplab' if head == 'torchvision' else 'fcn'}_keys"])
  model = deeplab.DeepLab(num_classes=gen.NUM_CLASSES,
                          backbone=ResNet(depth=50, width=gen.WIDTH, output_stride=8),
                          aspp_features=gen.ASPP_FEATURES, rates=gen.RATES, head=head, aux=True)
  x = jnp.asarray(gen.gen_backbones.input_array("deeplab", gen.INPUT_SHAPE))
  variables = load_into(_template(model, x.shape), convert(sd))
  out = jax.jit(functools.partial(model.apply, train=False))(variables, x)
  for name, key in (("logits", "out"), ("aux", "aux")):
    expected = ref[prefix + key]
    assert out[name].shape == expected.shape
    scale = float(np.abs(expected).max())
    assert scale > 0.1
    np.testing.assert_allclose(out[name], expected, rtol=0, atol=2e-4 * scale, err_msg=name)


@pytest.mark.parametrize("name,head", [("deeplabv3_resnet50", "torchvision"),
                                       ("fcn_resnet50", "fcn")])
def test_full_size_torchvision_keys_load_into_the_full_size_model(ref, name, head):
  keys = json.loads(str(ref[f"full_{name}_keys"]))
  # Zero-stride views: the shapes are real, no memory is spent on values.
  sd = {k: np.broadcast_to(np.float32(0.0), shape) for k, shape in keys}
  family = MODELS["deeplab"]({"backbone": "resnet50", "output_stride": 8, "head": head,
                              "aux": True, "rates": (12, 24, 36)}, 21)
  template = jax.eval_shape(family.init_variables, jax.random.key(0),
                            {"image": jnp.zeros((1, 64, 64, 3))})
  convert = convert_deeplabv3 if head == "torchvision" else convert_fcn_resnet
  loaded = load_into(template, convert(sd))  # raises on any missing/unexpected/mismatched key
  n_params = sum(int(np.prod(v.shape)) for v in jax.tree.leaves(loaded["params"]))
  n_torch = sum(int(np.prod(s)) for k, s in keys
                if not k.endswith(("running_mean", "running_var", "num_batches_tracked")))
  assert n_params == n_torch  # every learnable torchvision value has a place, and nothing else


def test_aux_false_drops_the_auxiliary_head_and_mismatches_are_reported(ref):
  sd = _state_dict(ref["fcn_keys"])
  converted = convert_fcn_resnet(sd, aux=False)
  assert "aux_conv" not in converted["params"] and "aux_classifier" not in converted["params"]
  del sd["classifier.4.bias"]
  with pytest.raises(WeightMismatchError, match="classifier.4.bias"):
    convert_fcn_resnet(sd)
  with pytest.raises(WeightMismatchError, match="no ASPP branches"):
    convert_deeplabv3(_state_dict(ref["fcn_keys"]))
