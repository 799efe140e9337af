"""``config.init_from``: a torchvision backbone file is converted and loaded into the model before
training, for a family whose backbone is named by a string (DeepLab) and by a section (Faster R-CNN).
The state dict is synthetic (values made from the key names by tests/fixtures/gen_weights.py), so
the loaded arrays can be checked exactly; converter parity with torchvision is in tests/weights."""

import importlib.util
import pathlib
import sys

import jax
import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures"


def _gen():
  spec = importlib.util.spec_from_file_location("gen_weights", FIXTURES / "gen_weights.py")
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


def _config(name):
  if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
  return importlib.import_module(f"configs.{name}").get_config("smoke")


@pytest.fixture(scope="module")
def resnet18_file(tmp_path_factory):
  from jaxvision.weights import io as wio  # noqa: PLC0415

  with np.load(FIXTURES / "weights_resnet.npz", allow_pickle=False) as f:
    sd = _gen().state_dict_from_keys(f["resnet18_keys"])
  path = tmp_path_factory.mktemp("weights") / "resnet18.safetensors"
  wio.write_safetensors(path, sd)
  return str(path), sd


@pytest.mark.parametrize("name", ["deeplab_shapes", "faster_rcnn_shapes"])
@pytest.mark.slow
def test_init_from_loads_the_backbone_before_training(name, resnet18_file, tmp_path):
  from jaxvision.train import loop, optim  # noqa: PLC0415

  path, sd = resnet18_file
  config = _config(name)
  config.data.data_dir = str(tmp_path / "tfds")
  if name == "deeplab_shapes":
    config.model.width = 64  # torchvision's ResNet-18
  else:
    config.model.backbone = {"name": "resnet18", "norm": "batch"}
  config.init_from = path
  _, family = loop.build_family(config)
  tx = optim.make_optimizer(config.optim, 1)
  state = loop._init_state(config, family, tx)
  backbone = jax.device_get(state.params["backbone"])
  # conv1.weight (O, I, kh, kw) -> HWIO kernel; layer4's last BatchNorm scale and running mean.
  np.testing.assert_array_equal(backbone["conv1"]["kernel"],
                                np.transpose(sd["conv1.weight"], (2, 3, 1, 0)))
  np.testing.assert_array_equal(backbone["bn1"]["scale"], sd["bn1.weight"])
  stats = jax.device_get(state.batch_stats["backbone"])
  np.testing.assert_array_equal(stats["bn1"]["mean"], sd["bn1.running_mean"])
  assert set(state.params) - {"backbone"}  # the heads keep their fresh initialisation


@pytest.mark.slow
def test_the_training_loop_starts_from_the_loaded_backbone(resnet18_file, tmp_path):
  # One step at learning rate 0 through train_and_evaluate: the checkpoint's backbone is the file's.
  from jaxvision.train import loop  # noqa: PLC0415

  path, sd = resnet18_file
  config = _config("deeplab_shapes")
  config.data.data_dir = str(tmp_path / "tfds")
  config.model.width = 64
  config.init_from = path
  config.train.steps = 1
  config.optim.learning_rate = 0.0
  config.optim.warmup_steps = 0
  config.optim.weight_decay = 0.0
  loop.train_and_evaluate(config, str(tmp_path / "run"))
  variables = loop.load_variables(config, str(tmp_path / "run"))
  np.testing.assert_array_equal(jax.device_get(variables["params"]["backbone"]["conv1"]["kernel"]),
                                np.transpose(sd["conv1.weight"], (2, 3, 1, 0)))


@pytest.mark.slow
def test_init_from_needs_a_backbone_name(resnet18_file, tmp_path):
  from jaxvision.train import loop, optim  # noqa: PLC0415

  config = _config("faster_rcnn_shapes")
  config.data.data_dir = str(tmp_path / "tfds")
  config.model.backbone = {"name": "resnet18", "norm": "batch"}
  config.init_from = resnet18_file[0]
  config.model.backbone = {"norm": "batch"}
  _, family = loop.build_family(config)
  with pytest.raises(ValueError, match="config.init_from"):
    loop._init_state(config, family, optim.make_optimizer(config.optim, 1))


@pytest.mark.slow
def test_init_from_a_whole_torchvision_detector_with_a_new_predictor(tmp_path):
  """``init_from_model``: a whole torchvision Faster R-CNN file (the tiny-width one the detection
  parity test uses, 3 classes) starts a 5-class shapes model; ``init_from_skip`` keeps the fresh
  predictor, everything else is the file's."""
  from jaxvision.train import loop, optim  # noqa: PLC0415
  from jaxvision.weights import (convert_fasterrcnn_resnet50_fpn, detection_model_config,  # noqa: PLC0415
                                 write_safetensors)

  spec = importlib.util.spec_from_file_location("gen_detection", FIXTURES / "gen_detection.py")
  gen = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(gen)
  with np.load(FIXTURES / "detection.npz", allow_pickle=False) as f:
    import json  # noqa: PLC0415

    sd = {k: gen.tensor(k, shape) for k, shape in json.loads(str(f["frcnn_keys"]))
          if not k.endswith("num_batches_tracked")}
  path = tmp_path / "fasterrcnn.safetensors"
  write_safetensors(path, sd)
  model, _ = detection_model_config(sd)
  config = _config("faster_rcnn_fpn_shapes")
  config.data.data_dir = str(tmp_path / "tfds")
  config.model = dict(model, backbone={**model["backbone"], "width": gen.WIDTH})
  config.init_from = str(path)
  config.init_from_model = "fasterrcnn_resnet50_fpn"
  _, family = loop.build_family(config)
  tx = optim.make_optimizer(config.optim, 1)
  with pytest.raises(ValueError, match="box_predictor"):
    loop._init_state(config, family, tx)
  config.init_from_skip = ("box_predictor",)
  state = jax.device_get(loop._init_state(config, family, tx))
  expected = convert_fasterrcnn_resnet50_fpn(sd)["params"]
  np.testing.assert_array_equal(state.params["rpn_head"]["conv"]["kernel"],
                                expected["rpn_head"]["conv"]["kernel"])
  np.testing.assert_array_equal(state.params["backbone"]["conv1"]["kernel"],
                                expected["backbone"]["conv1"]["kernel"])
  assert state.params["box_predictor"]["cls_score"]["kernel"].shape[-1] == 6  # 5 classes + bg


def test_a_missing_weights_file_says_what_to_do(tmp_path):
  from jaxvision.train import loop, optim  # noqa: PLC0415

  config = _config("deeplab_finetune_shapes")
  config.init_from = str(tmp_path / "resnet18-f37072fd.pth")
  _, family = loop.build_family(config)
  with pytest.raises(FileNotFoundError, match="config.init_from .*download"):
    loop._init_state(config, family, optim.make_optimizer(config.optim, 1))
