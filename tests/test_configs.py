"""Every config in configs/: its smoke variant trains, evaluates, checkpoints and restores; its
full-size model is checked with jax.eval_shape (no compilation)."""

import importlib.util
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
CONFIGS = sorted(p for p in (ROOT / "configs").glob("*.py") if p.name != "__init__.py")


def load_config(path: pathlib.Path, arg=None):
  if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # configs import configs.common
  spec = importlib.util.spec_from_file_location(f"_config_{path.stem}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg) if arg else module.get_config()


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("tfds"))


def test_there_are_configs():
  assert CONFIGS, "no configs found"


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_docstring_states_command_and_expectation(path):
  doc = path.read_text().split('"""')[1]
  assert f"python train.py --config configs/{path.name}" in doc
  assert "Expected" in doc and "Hardware" in doc


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_smoke_trains_evaluates_and_restores(path, tmp_path, data_dir):
  from jaxvision.train import loop

  config = load_config(path, "smoke")
  config.data.data_dir = data_dir
  assert config.train.steps <= 3 and max(config.data.image_size) <= 128
  result = loop.train_and_evaluate(config, str(tmp_path))
  assert 0.0 <= result["mean_iou"] <= 1.0
  assert (tmp_path / "metrics.jsonl").exists() and (tmp_path / "config.json").exists()
  assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
  restored = loop.evaluate(config, str(tmp_path))
  assert restored["step"] == config.train.steps
  assert restored["mean_iou"] == pytest.approx(result["mean_iou"], abs=1e-6)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_full_size_model_shapes(path):
  from jaxvision import models
  from jaxvision.data import builder

  config = load_config(path)
  info = builder.dataset_info(config.data)
  family = models.MODELS[config.model.name](config.model, info.num_seg_classes)
  h, w = config.data.image_size
  per_device = config.data.batch_size // jax.device_count() or 1
  x = jax.ShapeDtypeStruct((per_device, h, w, 3), jnp.float32)
  variables = jax.eval_shape(lambda x: family.module.init(jax.random.PRNGKey(0), x, train=False), x)
  out = jax.eval_shape(lambda v, x: family.module.apply(v, x, train=False), variables, x)
  assert out["logits"].shape[-1] == info.num_seg_classes


def test_unknown_config_key_names_the_nearest(tmp_path):
  proc = subprocess.run(
      [sys.executable, str(ROOT / "train.py"), "--config", str(ROOT / "configs/unet_shapes.py:smoke"),
       "--workdir", str(tmp_path), "--config.train.stepz=3"],
      capture_output=True, text=True, cwd=ROOT, timeout=120)
  assert proc.returncode != 0
  assert 'Did you mean "steps"' in proc.stderr
