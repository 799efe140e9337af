"""A run killed with SIGKILL and resumed ends with the same parameters as an uninterrupted run."""

import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
STEPS = 14


def _cmd(workdir, data_dir):
  return [sys.executable, str(ROOT / "train.py"), "--config", str(ROOT / "configs/unet_shapes.py:smoke"),
          "--workdir", str(workdir), f"--config.data.data_dir={data_dir}",
          f"--config.train.steps={STEPS}", "--config.train.checkpoint_every=2",
          f"--config.train.eval_every={STEPS}"]


def _env():
  env = dict(os.environ)
  env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
  env["JAX_PLATFORMS"] = "cpu"
  return env


def _final_params(workdir):
  from jaxvision.train.checkpoint import Checkpointer

  ck = Checkpointer(str(workdir))
  steps = ck.all_steps()
  assert max(steps) == STEPS, steps
  restored = ck._latest.restore(STEPS)  # noqa: SLF001 - raw restore of the saved pytree
  ck.close()
  return restored["params"]


@pytest.mark.slow
def test_sigkill_then_resume_matches_uninterrupted(tmp_path):
  data_dir = tmp_path / "tfds"
  straight, killed = tmp_path / "straight", tmp_path / "killed"
  subprocess.run(_cmd(straight, data_dir), check=True, cwd=ROOT, env=_env(), timeout=600,
                 capture_output=True)

  proc = subprocess.Popen(_cmd(killed, data_dir), cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  deadline = time.time() + 300
  while not (killed / "checkpoints" / "4").exists():
    assert proc.poll() is None, "the run ended before it could be killed"
    assert time.time() < deadline
    time.sleep(0.02)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  saved = sorted(int(p.name) for p in (killed / "checkpoints").iterdir() if p.name.isdigit())
  assert max(saved) < STEPS, f"the run finished before the kill (checkpoints {saved})"

  subprocess.run(_cmd(killed, data_dir), check=True, cwd=ROOT, env=_env(), timeout=600,
                 capture_output=True)
  a, b = _final_params(straight), _final_params(killed)
  flat_a = {k: v for k, v in _flatten(a)}
  flat_b = {k: v for k, v in _flatten(b)}
  assert flat_a.keys() == flat_b.keys()
  for k in flat_a:
    np.testing.assert_array_equal(flat_a[k], flat_b[k], err_msg=k)


def _flatten(tree, prefix=""):
  if isinstance(tree, dict):
    for k, v in tree.items():
      yield from _flatten(v, f"{prefix}/{k}")
  else:
    yield prefix, np.asarray(tree)
