"""Test setup: 8 fake CPU devices, the persistent compilation cache and shared fixtures.

XLA flags must be set before JAX is imported anywhere, so this file sets them at import time.
"""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
_flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in _flags:
  os.environ["XLA_FLAGS"] = (_flags + " --xla_force_host_platform_device_count=8").strip()

import pathlib  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

_CACHE = os.environ.get(
    "JAXVISION_TEST_CACHE", str(pathlib.Path(__file__).resolve().parent.parent / ".jax_cache"))
jax.config.update("jax_compilation_cache_dir", _CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)

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
