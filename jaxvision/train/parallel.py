"""Data parallelism: one per-device step function, run with shard_map inside jit or with pmap.

A *per-device step* is written once, as the code that runs on one device's slice of the global batch:
it computes local sums, reduces them across the ``data`` axis itself (``lax.psum`` of gradients, loss
numerators and normalizers such as the number of labelled pixels or positives, ``lax.pmean`` of
BatchNorm statistics through ``axis_name``), and returns replicated state and metrics. Two drivers run
it, with the same numbers:

* ``"shard_map"`` (default): ``jax.jit(jax.shard_map(step, mesh=..., in_specs=..., out_specs=...))``
  over a 1-D mesh of every device of every host. State is replicated (``P()``), the batch is split on
  its leading axis (``P("data")``). Buffers of the state are donated.
* ``"pmap"``: ``jax.pmap(step, axis_name="data")`` with the batch reshaped to ``[D, B/D, ...]`` and the
  state stacked along a new leading device axis.

The mesh is built with ``AxisType.Auto`` axes (newer ``jax.make_mesh`` defaults to Explicit axes,
which changes how integer-label losses are typed).
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

AXIS = "data"
PARALLELISM = ("shard_map", "pmap")


def data_mesh(devices=None) -> jax.sharding.Mesh:
  """A 1-D ``data`` mesh over ``devices`` (default: all devices of all processes)."""
  devices = jax.devices() if devices is None else list(devices)
  return jax.make_mesh((len(devices),), (AXIS,), axis_types=(jax.sharding.AxisType.Auto,),
                       devices=devices)


def check_parallelism(name: str) -> str:
  if name not in PARALLELISM:
    raise ValueError(f"config.parallelism must be one of {PARALLELISM}, got {name!r}.")
  return name


class DataParallel:
  """Runs a per-device step over a data mesh (``shard_map`` in ``jit``) or with ``pmap``.

  Args:
    step: ``step(state, batch, *extra) -> (state, metrics)``, the per-device function; it may use
      collectives over axis ``"data"``.
    parallelism: ``"shard_map"`` or ``"pmap"``.
    devices: devices to use (default all). The global batch must divide evenly among them.
    donate_state: donate the state's buffers to the step (training); False for evaluation.
    batch_outputs: the step's second output is per-example (leading axis = the local batch, e.g.
      predictions) instead of replicated metrics; ``local_outputs`` brings it back to the host.
  """

  def __init__(self, step: Callable, *, parallelism: str = "shard_map", devices=None,
               donate_state: bool = True, batch_outputs: bool = False):
    self.parallelism = check_parallelism(parallelism)
    self.mesh = data_mesh(devices)
    self.num_devices = self.mesh.size
    donate = (0,) if donate_state else ()
    self.batch_outputs = batch_outputs
    if parallelism == "shard_map":
      out_specs = (P(), P(AXIS) if batch_outputs else P())
      sharded = jax.shard_map(step, mesh=self.mesh, in_specs=(P(), P(AXIS)), out_specs=out_specs,
                              check_vma=False)
      self._fn = jax.jit(sharded, donate_argnums=donate)
    else:
      self._fn = jax.pmap(step, axis_name=AXIS, devices=list(self.mesh.devices.reshape(-1)),
                          donate_argnums=donate)

  # ---- placement -------------------------------------------------------------------------------

  def put_state(self, state):
    """Places a host state on the devices (replicated, or stacked for pmap)."""
    if self.parallelism == "shard_map":
      return jax.device_put(state, NamedSharding(self.mesh, P()))
    # pmap takes host arrays with a leading device axis and places slice i on device i.
    d = self.num_devices
    return jax.tree.map(lambda x: np.broadcast_to(np.asarray(x)[None], (d,) + np.shape(x)), state)

  def get_state(self, state):
    """Brings a device state back to one host copy (NumPy leaves)."""
    if self.parallelism == "pmap":
      state = jax.tree.map(lambda x: x[0], state)
    return jax.device_get(state)

  def put_batch(self, batch: dict[str, np.ndarray]):
    """Splits a host batch across devices along the leading (example) axis."""
    n = next(iter(batch.values())).shape[0]
    if n % self.num_devices:
      raise ValueError(f"the batch size {n} must be divisible by the number of devices "
                       f"{self.num_devices}; change config.data.batch_size.")
    if self.parallelism == "shard_map":
      sharding = NamedSharding(self.mesh, P(AXIS))
      if jax.process_count() == 1:
        return jax.device_put(batch, sharding)
      return jax.tree.map(
          lambda x: jax.make_array_from_process_local_data(sharding, x), batch)
    return jax.tree.map(lambda x: np.reshape(x, (self.num_devices, -1) + x.shape[1:]), batch)

  def __call__(self, state, batch):
    return self._fn(state, batch)

  def local_outputs(self, outputs):
    """This host's rows of per-example outputs (``batch_outputs=True``) as NumPy, in batch order."""
    if self.parallelism == "pmap":
      return jax.tree.map(lambda x: np.reshape(np.asarray(x), (-1,) + x.shape[2:]), outputs)
    if jax.process_count() == 1:
      return jax.tree.map(np.asarray, outputs)

    def local(x):
      shards = sorted(x.addressable_shards, key=lambda s: s.index[0].start or 0)
      return np.concatenate([np.asarray(s.data) for s in shards], axis=0)

    return jax.tree.map(local, outputs)


def psum_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
  """Sums a dict of per-device metric numerators/denominators over the data axis."""
  return jax.tree.map(functools.partial(jax.lax.psum, axis_name=AXIS), metrics)
