"""Checkpoints: latest-k and best-by-metric, and falling back past an unreadable checkpoint."""

import pathlib

import numpy as np
import pytest

from jaxvision.train.checkpoint import Checkpointer


def _state(v):
  return {"params": {"w": np.full((3, 2), v, np.float32)}, "step": np.asarray(v, np.int32)}


def test_latest_and_best(tmp_path):
  ck = Checkpointer(str(tmp_path), keep=2, best_metric="miou")
  assert ck.restore_latest(_state(0)) is None
  for step, miou in ((1, 0.5), (2, 0.9), (3, 0.7)):
    ck.save(step, _state(step))
    ck.save_best(step, _state(step), {"miou": miou})
  assert ck.all_steps() == [2, 3]
  state, step = ck.restore_latest(_state(0))
  assert step == 3 and np.all(state["params"]["w"] == 3)
  best, best_step = ck.restore_best(_state(0))
  assert best_step == 2 and np.all(best["params"]["w"] == 2)


def test_unreadable_latest_falls_back(tmp_path, caplog):
  ck = Checkpointer(str(tmp_path), keep=3)
  for step in (1, 2):
    ck.save(step, _state(step))
  for f in pathlib.Path(tmp_path, "checkpoints", "2").rglob("*"):
    if f.is_file():
      f.write_bytes(b"garbage")
  state, step = Checkpointer(str(tmp_path), keep=3).restore_latest(_state(0))
  assert step == 1 and np.all(state["params"]["w"] == 1)
  assert "unreadable" in caplog.text


def test_all_unreadable_is_an_error(tmp_path):
  ck = Checkpointer(str(tmp_path))
  ck.save(1, _state(1))
  for f in pathlib.Path(tmp_path, "checkpoints", "1").rglob("*"):
    if f.is_file():
      f.write_bytes(b"garbage")
  with pytest.raises(RuntimeError, match="could be read"):
    Checkpointer(str(tmp_path)).restore_latest(_state(0))
