"""One process of the 2-process ``jax.distributed`` test (tests/train/test_distributed.py).

usage: python distributed_worker.py PROCESS_ID NUM_PROCESSES PORT OUT_JSON DATA_DIR WORKDIR

Each process has 2 CPU devices; collectives across processes use gloo. It runs (1) three train steps
of the U-Net smoke family on a fixed global batch of which it feeds only its own half, and (2) the full
``train_and_evaluate`` loop (per-host data shards, orbax checkpoints), then writes its numbers as JSON.
With NUM_PROCESSES=1 it is the single-process reference on the same global batch.
"""

import json
import os
import sys

pid, nproc, port, out_path, data_dir, workdir = (int(sys.argv[1]), int(sys.argv[2]), sys.argv[3],
                                                 sys.argv[4], sys.argv[5], sys.argv[6])
os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={4 // nproc}"
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

if nproc > 1:
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(f"localhost:{port}", nproc, pid)

import numpy as np  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from configs import unet_shapes  # noqa: E402
from jaxvision.train import loop, parallel  # noqa: E402

config = unet_shapes.get_config("smoke")
config.data.data_dir = data_dir
info, family = loop.build_family(config)
tx = loop.optim_lib.make_optimizer(config.optim, 3)
state = loop._init_state(config, family, tx)
runner = parallel.DataParallel(loop.make_train_step(family, tx), parallelism="shard_map")
state = runner.put_state(state)

rng = np.random.default_rng(0)
global_batch = loop.example_batch(config, 8)
global_batch["image"] = rng.normal(size=global_batch["image"].shape).astype(np.float32)
global_batch["segmentation"] = rng.integers(0, 6, global_batch["segmentation"].shape).astype(np.int32)
per = 8 // nproc
local = {k: v[pid * per:(pid + 1) * per] for k, v in global_batch.items()}
losses = []
for _ in range(3):
  state, metrics = runner(state, runner.put_batch(local))
  losses.append(float(np.asarray(jax.device_get(metrics["loss"])).reshape(-1)[0]))
params = runner.get_state(state).params
checksum = float(sum(np.abs(np.asarray(x, np.float64)).sum() for x in jax.tree.leaves(params)))

result = loop.train_and_evaluate(config, workdir)
out = {"process_index": jax.process_index(), "process_count": jax.process_count(),
       "device_count": jax.device_count(), "losses": losses, "param_checksum": checksum,
       "eval": result}
with open(out_path, "w") as f:
  json.dump(out, f)
