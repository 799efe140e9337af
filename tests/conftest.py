"""Test setup: 8 fake CPU devices, the persistent compilation cache and shared fixtures.

XLA flags must be set before JAX is imported anywhere, so this file sets them at import time.
"""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
_flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in _flags:
  _flags += " --xla_force_host_platform_device_count=8"
# The tests compile far more than they run (tiny models, a few steps), and LLVM's expensive passes
# are a large part of a CPU compile: two model tests with a cold cache 31 s -> 20-26 s, a config
# smoke test (train, evaluate, restore) 21.6 s -> 16.9 s, with the generated code as fast.
# (--xla_backend_optimization_level=0 compiles a little faster still, but its code is ~20x slower:
# the same smoke test took 51 s.) Numerics stay IEEE: XLA's CPU fast-math is off either way.
if "xla_llvm_disable_expensive_passes" not in _flags:
  _flags += " --xla_llvm_disable_expensive_passes=true"
os.environ["XLA_FLAGS"] = _flags.strip()

import pathlib  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

_CACHE = os.environ.get(
    "JAXVISION_TEST_CACHE", str(pathlib.Path(__file__).resolve().parent.parent / ".jax_cache"))
jax.config.update("jax_compilation_cache_dir", _CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
# Random bits from the classic (non-partitionable) threefry lowering: the same keys give other
# values, but initialising a model compiles ~1.6x faster on CPU (a Faster R-CNN init: 11.9 s ->
# 7.5 s), and the tests compile hundreds of inits. Library code does not depend on this setting.
jax.config.update("jax_threefry_partitionable", False)

FIXTURES = pathlib.Path(__file__).resolve().parent / "fixtures"


@pytest.fixture
def fixture_npz():
  """Loads ``tests/fixtures/<name>.npz`` (written by ``tests/fixtures/generate.py``)."""

  def load(name):
    path = FIXTURES / f"{name}.npz"
    if not path.exists():
      raise FileNotFoundError(f"{path} is missing: run `python tests/fixtures/generate.py` "
                              "in an environment with torch/torchvision to regenerate fixtures.")
    return dict(np.load(path, allow_pickle=False))

  return load


@pytest.fixture(scope="session")
def shapes_dir(tmp_path_factory):
  """The built-in shapes dataset (train and validation splits), prepared once per test process:
  in ``$JAXVISION_DATA_DIR`` when it is set (and then reused across runs), else in a temporary
  directory."""
  from jaxvision.data import shapes  # noqa: PLC0415

  data_dir = os.environ.get(shapes.DATA_DIR_ENV) or str(tmp_path_factory.mktemp("tfds"))
  shapes.prepare_shapes(data_dir, splits=["train", "validation"])
  return data_dir


def test_devices_available():
  assert jax.device_count() == 8, jax.devices()
