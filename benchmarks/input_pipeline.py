"""Host input pipeline throughput: images/s of decode + transforms + batching for ``shapes``.

Runs the real pipeline of ``jaxvision.data.builder`` (TFDS array_record source -> grain -> decode
-> augmentations -> normalization -> padding -> batches, as ``train.py`` builds it) and times how
fast batches come out of ``builder.make_loader(...)`` with 0 and 2 grain worker processes, for two
settings of ``config.data``:

* ``segmentation``: the default config block (128 x 128, random flip, no instance masks), what
  ``configs/unet_shapes.py`` trains on;
* ``instance``: the same plus instance masks kept at stride 4 (``keep_masks``, ``mask_stride=4``)
  and photometric distortion, the heavier path detection/instance models use.

The first batch (worker start-up, file opening) is timed apart as ``startup_s``; the next
``--warmup`` batches are dropped, then ``--batches`` batches are timed.

Side by side in the same run, for each config of ``--configs``: that config's own input pipeline
(its ``config.data`` block, in process) and its data-parallel train step (``loop.make_train_step``
under ``parallel.DataParallel`` on all local devices, on real batches already on the devices),
both in images/s at the config's batch size, with ``input_over_step`` = pipeline images/s / step
images/s: above 1 the host keeps up with the devices, below 1 the step waits for input (add
workers). One JSON line per result, with versions and the machine.

    python benchmarks/input_pipeline.py                     # shapes train split, workers 0 and 2
    python benchmarks/input_pipeline.py --workers 0,1,2,4 --batch_size 64 --batches 50
    python benchmarks/input_pipeline.py --settings "" --configs unet_shapes,faster_rcnn_fpn_shapes

The shapes train split is prepared on first use (about 25 s of one core) in ``--data_dir``
(default: ``$JAXVISION_DATA_DIR``, ``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pathlib
import platform
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _config(args, setting: str, workers: int):
  if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
  from configs.common import base  # noqa: PLC0415

  c = base.base_config()
  c.data.data_dir = args.data_dir
  c.data.train_split = args.split
  c.data.batch_size = args.batch_size
  with c.unlocked():
    c.data.worker_count = workers
    c.data.prefetch = args.prefetch
    if setting == "instance":
      c.data.keep_masks = True
      c.data.mask_stride = 4
      c.data.augment.photometric = True
  return c.data


def run_one(args, setting: str, workers: int) -> dict:
  from jaxvision.data import builder  # noqa: PLC0415

  data = _config(args, setting, workers)
  loader = builder.make_loader(data, train=True)
  t0 = time.perf_counter()
  with contextlib.closing(iter(loader)) as it:
    first = next(it)
    startup = time.perf_counter() - t0
    for _ in range(args.warmup):
      next(it)
    t0 = time.perf_counter()
    for _ in range(args.batches):
      next(it)
    elapsed = time.perf_counter() - t0
  images = args.batches * args.batch_size
  return {
      "benchmark": "input_pipeline", "dataset": "shapes", "split": args.split, "setting": setting,
      "worker_count": workers, "prefetch": args.prefetch, "batch_size": args.batch_size,
      "image_size": list(first["image"].shape[1:3]), "batches": args.batches,
      "images_per_s": round(images / elapsed, 1),
      "ms_per_batch": round(1000 * elapsed / args.batches, 2), "startup_s": round(startup, 2),
      "batch_keys": sorted(first),
  }


def _time_batches(it, warmup: int, batches: int) -> float:
  for _ in range(warmup):
    next(it)
  t0 = time.perf_counter()
  for _ in range(batches):
    next(it)
  return time.perf_counter() - t0


def run_config(args, name: str) -> dict:
  """The config's own input pipeline and its train step, images/s side by side."""
  import jax  # noqa: PLC0415

  from jaxvision.data import builder  # noqa: PLC0415
  from jaxvision.train import loop, parallel  # noqa: PLC0415

  if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
  import importlib  # noqa: PLC0415

  config = importlib.import_module(f"configs.{name}").get_config()
  if args.data_dir:
    config.data.data_dir = args.data_dir
  config.data.train_split = args.split
  with config.unlocked():
    config.data.worker_count = 0
  batch_size = int(config.data.batch_size)
  loader = builder.make_loader(config.data, train=True)
  with contextlib.closing(iter(loader)) as it:
    host_batches = [next(it) for _ in range(4)]
    input_s = _time_batches(it, 0, args.batches)
  input_ips = args.batches * batch_size / input_s

  _, family = loop.build_family(config)
  tx = (family.make_optimizer or loop.optim_lib.make_optimizer)(config.optim,
                                                                int(config.train.steps))
  runner = parallel.DataParallel(loop.make_train_step(family, tx), parallelism=config.parallelism)
  state = runner.put_state(loop._init_state(config, family, tx))
  device_batches = [runner.put_batch(b) for b in host_batches]
  t0 = time.perf_counter()
  state, metrics = runner(state, device_batches[0])
  jax.block_until_ready(metrics)
  compile_s = time.perf_counter() - t0
  for i in range(args.warmup):
    state, metrics = runner(state, device_batches[i % 4])
  jax.block_until_ready(metrics)
  t0 = time.perf_counter()
  for i in range(args.steps):
    state, metrics = runner(state, device_batches[i % 4])
  jax.block_until_ready(metrics)
  step_s = time.perf_counter() - t0
  step_ips = args.steps * batch_size / step_s
  return {
      "benchmark": "input_vs_train_step", "config": name, "dataset": config.data.name,
      "batch_size": batch_size, "image_size": list(config.data.image_size),
      "input_images_per_s": round(input_ips, 1), "train_step_images_per_s": round(step_ips, 1),
      "input_over_step": round(input_ips / step_ips, 2), "input_worker_count": 0,
      "timed_batches": args.batches, "timed_steps": args.steps,
      "step_compile_s": round(compile_s, 1), "devices": jax.local_device_count(),
  }


def environment() -> dict:
  import grain  # noqa: PLC0415
  import jax  # noqa: PLC0415
  import numpy as np  # noqa: PLC0415
  import PIL  # noqa: PLC0415
  import tensorflow_datasets as tfds  # noqa: PLC0415

  try:
    grain_version = grain.__version__
  except AttributeError:
    from importlib.metadata import version  # noqa: PLC0415

    grain_version = version("grain")
  load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
  return {
      "python": platform.python_version(), "jax": jax.__version__, "grain": grain_version,
      "tensorflow_datasets": tfds.__version__, "numpy": np.__version__, "pillow": PIL.__version__,
      "host": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
      "device": f"{jax.devices()[0].device_kind} x {jax.device_count()}",
      "load_avg_1m_at_end": round(load, 2) if load is not None else None,
  }


def main(argv=None) -> list[dict]:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--workers", default="0,2", help="comma-separated worker counts")
  parser.add_argument("--settings", default="segmentation,instance")
  parser.add_argument("--batch_size", type=int, default=32)
  parser.add_argument("--batches", type=int, default=30, help="timed batches per result")
  parser.add_argument("--warmup", type=int, default=3)
  parser.add_argument("--prefetch", type=int, default=2)
  parser.add_argument("--split", default="train")
  parser.add_argument("--data_dir", default=None)
  parser.add_argument("--configs", default="unet_shapes",
                      help="comma-separated configs/ names: their pipeline vs their train step")
  parser.add_argument("--steps", type=int, default=20, help="timed train steps per config")
  args = parser.parse_args(argv)
  from jaxvision.data import pipeline  # noqa: PLC0415

  pipeline.shapes_source(args.split, args.data_dir)  # prepare before timing anything
  results = []
  for setting in filter(None, args.settings.split(",")):
    for workers in (int(w) for w in args.workers.split(",")):
      results.append(run_one(args, setting, workers))
  for name in filter(None, args.configs.split(",")):
    results.append(run_config(args, name))
  env = environment()
  for r in results:
    print(json.dumps({**r, **env}), flush=True)
  return results


if __name__ == "__main__":  # required: grain workers are spawned processes
  main()
