"""The training loop's failure modes: a non-finite loss stops the run and keeps good checkpoints."""

import pathlib
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _smoke_config(data_dir):
  if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
  from configs import unet_shapes

  config = unet_shapes.get_config("smoke")
  config.data.data_dir = data_dir
  return config


def test_nan_loss_stops_with_a_clear_error(tmp_path):
  from jaxvision.train import loop
  from jaxvision.train.checkpoint import Checkpointer

  config = _smoke_config(str(tmp_path / "tfds"))
  config.train.steps = 3
  config.train.checkpoint_every = 1
  config.optim.warmup_steps = 0
  config.optim.schedule = "constant"
  # Poison the data after the first step: a NaN image makes the loss NaN at step 2.
  from jaxvision.data import builder

  real = builder.make_split

  def poisoned(data, *, train, start_step=0):
    ds = real(data, train=train, start_step=start_step)
    if not train:
      return ds

    class Poisoned:
      def __getitem__(self, i):
        batch = dict(ds[i])
        if start_step + i >= 1:
          batch["image"] = batch["image"] * float("nan")
        return batch

    return Poisoned()

  builder.make_split = poisoned
  try:
    with pytest.raises(loop.NonFiniteLossError, match="step 2") as info:
      loop.train_and_evaluate(config, str(tmp_path / "run"))
  finally:
    builder.make_split = real
  assert "learning_rate" in str(info.value)
  # The good step-1 checkpoint is kept and nothing after it was written.
  ck = Checkpointer(str(tmp_path / "run"))
  assert ck.all_steps() == [1]
  ck.close()
