"""Every config in configs/: its smoke variant trains, evaluates, checkpoints and restores; its
full-size model is checked with jax.eval_shape (no compilation)."""

import importlib.util
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
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


def _distinct_smoke_configs():
  """One ``pytest.param`` per distinct ``:smoke`` variant, its id naming every config that has it
  (a config that only changes the full-size run, e.g. deeplab_finetune_shapes vs deeplab_shapes,
  has the same smoke run: training it twice would prove nothing more)."""
  groups: dict[str, list[pathlib.Path]] = {}
  for path in CONFIGS:
    groups.setdefault(load_config(path, "smoke").to_json_best_effort(sort_keys=True), []).append(path)
  return [pytest.param(paths[0], id="+".join(p.stem for p in paths)) for paths in groups.values()]


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


@pytest.mark.parametrize("path", _distinct_smoke_configs())
def test_smoke_trains_evaluates_and_restores(path, tmp_path, data_dir):
  from jaxvision.train import loop

  config = load_config(path, "smoke")
  config.data.data_dir = data_dir
  assert config.train.steps <= 3 and max(config.data.image_size) <= 128
  result = loop.train_and_evaluate(config, str(tmp_path))
  key = config.eval.best_metric
  assert 0.0 <= result[key] <= 1.0 or np.isnan(result[key])
  assert (tmp_path / "metrics.jsonl").exists() and (tmp_path / "config.json").exists()
  assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
  restored = loop.evaluate(config, str(tmp_path))
  assert restored["step"] == config.train.steps
  np.testing.assert_allclose(restored[key], result[key], atol=1e-6)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_full_size_model_shapes(path):
  """The full-size model initialises and predicts with the contract's shapes (eval_shape, no compile)."""
  from jaxvision.train import loop

  config = load_config(path)
  info, family = loop.build_family(config)
  per_device = max(config.data.batch_size // jax.device_count(), 1)
  batch = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype),
                       loop.example_batch(config, per_device))
  variables = jax.eval_shape(lambda b: family.init_variables(jax.random.PRNGKey(0), b), batch)
  preds = jax.eval_shape(family.predict, variables, batch)
  if family.task == "segmentation":
    assert preds["segmentation"].shape[0] == per_device
  else:
    d = preds["boxes"].shape[1]
    assert preds["boxes"].shape == (per_device, d, 4)
    assert preds["scores"].shape == preds["labels"].shape == preds["valid"].shape == (per_device, d)
    assert 1 <= family.num_classes == info.num_classes
  from jax.sharding import PartitionSpec as P  # noqa: PLC0415

  from jaxvision.train import parallel  # noqa: PLC0415

  def device_loss(v, b):  # as in the train step: under the data axis (cross-replica BatchNorm)
    return family.train_loss(v, b, rng=jax.random.PRNGKey(0), step=jnp.int32(0),
                             axis_name=parallel.AXIS)[0]

  fn = jax.shard_map(device_loss, mesh=parallel.data_mesh(jax.devices()[:1]),
                     in_specs=(P(), P(parallel.AXIS)), out_specs=P(), check_vma=False)
  loss = jax.eval_shape(fn, variables, batch)
  assert loss.shape == ()


def test_unknown_config_key_names_the_nearest(tmp_path):
  proc = subprocess.run(
      [sys.executable, str(ROOT / "train.py"), "--config", str(ROOT / "configs/unet_shapes.py:smoke"),
       "--workdir", str(tmp_path), "--config.train.stepz=3"],
      capture_output=True, text=True, cwd=ROOT, timeout=120)
  assert proc.returncode != 0
  assert 'Did you mean "steps"' in proc.stderr
