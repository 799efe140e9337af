"""Two processes on localhost with ``jax.distributed`` (CPU collectives over gloo) train like one.

Each process owns 2 CPU devices and feeds its half of the global batch; the losses and parameters
after three steps equal a single process with 4 devices on the same global batch, and the whole loop
(per-host data shards, cross-process evaluation, orbax checkpoints) runs to the end in both.
"""

import json
import os
import pathlib
import socket
import subprocess
import sys

import numpy as np
import pytest

HERE = pathlib.Path(__file__).resolve().parent
WORKER = HERE / "distributed_worker.py"


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _run(nproc, tmp_path, data_dir):
  port = str(_free_port())
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  procs, outs = [], []
  workdir = tmp_path / f"run{nproc}"
  for pid in range(nproc):
    out = tmp_path / f"out{nproc}_{pid}.json"
    outs.append(out)
    procs.append(subprocess.Popen(
        [sys.executable, str(WORKER), str(pid), str(nproc), port, str(out), data_dir, str(workdir)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
  logs = [p.communicate(timeout=600)[0] for p in procs]
  for p, log in zip(procs, logs):
    assert p.returncode == 0, log[-3000:]
  return [json.loads(o.read_text()) for o in outs], workdir


@pytest.mark.slow
def test_two_processes_match_one(tmp_path):
  data_dir = str(tmp_path / "tfds")
  single, _ = _run(1, tmp_path, data_dir)  # also prepares the dataset before the 2-process run
  multi, workdir = _run(2, tmp_path, data_dir)
  assert [m["process_count"] for m in multi] == [2, 2]
  assert all(m["device_count"] == 4 for m in multi) and single[0]["device_count"] == 4
  for m in multi:
    np.testing.assert_allclose(m["losses"], single[0]["losses"], rtol=1e-5)
    np.testing.assert_allclose(m["param_checksum"], single[0]["param_checksum"], rtol=1e-5)
  # Both processes finish the loop with the same (replicated) evaluation.
  assert multi[0]["eval"]["mean_iou"] == multi[1]["eval"]["mean_iou"]
  assert 0.0 <= multi[0]["eval"]["mean_iou"] <= 1.0
  assert (workdir / "metrics.jsonl").exists()
