"""shard_map and pmap drivers of one per-device step give the numbers of a 1-device run."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxvision.train import parallel


def _step(state, batch):
  """A per-device least-squares SGD step: local sums, psum-ed over the data axis."""
  x, y = batch["x"], batch["y"]
  loss_fn = lambda w: jnp.sum((x @ w - y) ** 2)
  loss, grad = jax.value_and_grad(loss_fn)(state["w"])
  grad, loss = jax.lax.psum(grad, "data"), jax.lax.psum(loss, "data")
  n = jax.lax.psum(x.shape[0], "data")
  return {"w": state["w"] - 0.05 * grad / n}, {"loss": loss / n}


def _run(parallelism, devices, steps=6):
  rng = np.random.RandomState(0)
  dp = parallel.DataParallel(_step, parallelism=parallelism, devices=devices)
  state = dp.put_state({"w": np.zeros((3, 2), np.float32)})
  losses = []
  for i in range(steps):
    x = rng.randn(16, 3).astype(np.float32)
    batch = {"x": x, "y": x @ np.array([[1., -2.], [0.5, 0.], [3., 1.]], np.float32)}
    state, metrics = dp(state, dp.put_batch(batch))
    losses.append(float(np.asarray(metrics["loss"]).reshape(-1)[0]))
  return losses, dp.get_state(state)["w"]


def test_eight_devices_match_one_device():
  ref_losses, ref_w = _run("shard_map", jax.devices()[:1])
  assert ref_losses[-1] < ref_losses[0]
  for parallelism in ("shard_map", "pmap"):
    losses, w = _run(parallelism, None)
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5, err_msg=parallelism)
    np.testing.assert_allclose(w, ref_w, rtol=1e-5, atol=1e-6, err_msg=parallelism)


def test_bad_parallelism_and_batch():
  with pytest.raises(ValueError, match="config.parallelism"):
    parallel.DataParallel(_step, parallelism="ddp")
  dp = parallel.DataParallel(_step)
  with pytest.raises(ValueError, match="divisible by the number of devices"):
    dp.put_batch({"x": np.zeros((12, 3), np.float32)})
