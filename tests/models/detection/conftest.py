"""Helpers shared by the detection families' tests."""

import jax
import pytest
from jax.sharding import PartitionSpec as P


def _summed_losses(family, variables, batch, key, num_devices: int):
  """``(total, terms)`` of ``family.train_loss`` with the batch split over ``num_devices`` devices,
  each device's share ``psum``-med (what the training step adds up)."""

  def local(v, b):
    total, terms, _ = family.train_loss(v, b, rng=key, axis_name="data")
    return jax.lax.psum(total, "data"), jax.tree.map(lambda t: jax.lax.psum(t, "data"), terms)

  mesh = jax.make_mesh((num_devices,), ("data",), axis_types=(jax.sharding.AxisType.Auto,),
                       devices=jax.devices()[:num_devices])
  fn = jax.jit(jax.shard_map(local, mesh=mesh, in_specs=(P(), P("data")), out_specs=P(),
                             check_vma=False))
  return fn(variables, batch)


@pytest.fixture
def summed_losses():
  return _summed_losses


def _shapes_data(shapes_dir, **overrides):
  """``configs/common/base.py``'s data block on ``shapes_dir`` (128 px, flips, 8 boxes, ImageNet
  normalization) with batches of 8 (evaluation: 50) and ``overrides``."""
  import pathlib  # noqa: PLC0415
  import sys  # noqa: PLC0415

  root = str(pathlib.Path(__file__).resolve().parents[3])
  if root not in sys.path:
    sys.path.insert(0, root)  # configs/ is not an installed package
  from configs.common import base  # noqa: PLC0415

  data = base.base_config().data
  data.data_dir = str(shapes_dir)
  data.batch_size = 8
  data.eval_batch_size = 50
  for key, value in overrides.items():
    data[key] = value
  return data


@pytest.fixture
def shapes_data():
  return _shapes_data
