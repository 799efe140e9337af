"""The region-based line's speed story (R-CNN -> SPP-net -> Fast R-CNN -> Faster R-CNN), side by
side in one run on one machine: test time per image, with proposals, and the mAP of the same runs.

For each detector (a trained workdir, or a config with random weights when no workdir is given):

* ``model_ms``: ``family.predict`` on one preprocessed validation image (batch 1, jitted, warmed
  up), median over ``--repeats`` rounds, all detectors timed *interleaved* (one call of each per
  round) so load from other processes hits them alike. It includes everything inside the model:
  R-CNN warps and runs the CNN once per proposal; SPP-net and Fast R-CNN run the convolutions once
  per image and pool each proposal from the shared map; Faster R-CNN also computes its own
  proposals (RPN) inside the same call.
* ``proposal_ms``: for the detectors that take external proposals (R-CNN, SPP-net, Fast R-CNN), the
  time of selective search (``jaxvision.data.selective_search``, scikit-image) on the same images,
  median per image. Faster R-CNN needs none (0).
* ``total_ms = model_ms + proposal_ms`` and ``speedup_vs_rcnn``: R-CNN's total / this total.
* ``mAP``: the last validation evaluation in the workdir's ``metrics.jsonl`` (VOC AP@0.5, from the
  run that trained it), None without a workdir. Note: on ``shapes`` these runs were evaluated with
  the pipeline's proposals (``data.proposals="shapes"``: dense windows at evaluation), not selective
  search, so the mAP and the proposal time come from different proposal sources; the model time is
  measured with the proposals the run used (the number of proposals is in the line).

    python benchmarks/detector_speed.py \
        --detector rcnn=/tmp/runs/rcnn --detector spp_net=/tmp/runs/spp \
        --detector fast_rcnn=/tmp/runs/fast_rcnn --detector faster_rcnn=/tmp/runs/frcnn
    python benchmarks/detector_speed.py   # the four shapes configs, random weights (speed only)

Measured 2026-11-22 on the 2-core CPU with the zoo's trained workdirs (benchmarks/RESULTS.md,
results_detector_speed_cpu.jsonl): total per image R-CNN 291.7 ms, SPP-net 122.5, Fast R-CNN
130.2 (selective search 100.1 ms of each), Faster R-CNN 10.8 (FPN 12.3): 1x / 2.4x / 2.2x / 27x.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import sys
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT))
from _common import emit, environment, time_interleaved  # noqa: E402

CONFIGS = {"rcnn": "rcnn_shapes", "spp_net": "spp_net_shapes", "fast_rcnn": "fast_rcnn_shapes",
           "faster_rcnn": "faster_rcnn_shapes", "faster_rcnn_fpn": "faster_rcnn_fpn_shapes",
           "sliding_window": "sliding_window_shapes"}
EXTERNAL_PROPOSALS = ("rcnn", "spp_net", "fast_rcnn")


def _last_eval(workdir: str) -> dict | None:
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return None
  last = None
  with open(path) as f:
    for line in f:
      row = json.loads(line)
      if row.get("split") == "eval":
        last = row
  return last


def _predictor(name: str, workdir: str | None, data_dir: str | None):
  import importlib  # noqa: PLC0415

  import jax  # noqa: PLC0415

  from jaxvision.predict import Predictor, load_config_json  # noqa: PLC0415
  from jaxvision.train import loop  # noqa: PLC0415

  if workdir:
    config = load_config_json(os.path.join(workdir, "config.json"))
    if data_dir:
      config.data.data_dir = data_dir
    return Predictor.from_workdir(workdir, config)
  config = importlib.import_module(f"configs.{CONFIGS[name]}").get_config()
  if data_dir:
    config.data.data_dir = data_dir
  _, family = loop.build_family(config)
  batch = loop.example_batch(config, 1)
  variables = jax.jit(lambda k: family.init_variables(k, batch))(jax.random.PRNGKey(0))
  return Predictor(config, variables)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--detector", action="append", default=[],
                      help="name[=workdir]; name in " + ", ".join(CONFIGS))
  parser.add_argument("--images", type=int, default=10, help="validation images to cycle through")
  parser.add_argument("--repeats", type=int, default=20)
  parser.add_argument("--data_dir", default=None)
  args = parser.parse_args(argv)

  import jax  # noqa: PLC0415

  from jaxvision.data import pipeline, selective_search  # noqa: PLC0415

  specs = args.detector or ["rcnn", "spp_net", "fast_rcnn", "faster_rcnn"]
  detectors = {}
  for spec in specs:
    name, _, workdir = spec.partition("=")
    if name not in CONFIGS:
      raise SystemExit(f"--detector: unknown name {name!r}; known: {sorted(CONFIGS)}")
    detectors[name] = workdir or None

  source, _ = pipeline.shapes_source("validation", args.data_dir)  # prepared on first use
  images = [np.asarray(source[i]["image"]) for i in range(args.images)]
  data_dir = args.data_dir

  env = environment()
  runs = {}
  for name, workdir in detectors.items():
    predictor = _predictor(name, workdir, data_dir)
    batches = [{k: v[None] for k, v in predictor.preprocess(im).items()} for im in images]
    t0 = time.perf_counter()
    jax.block_until_ready(predictor._predict(predictor.variables, batches[0]))
    compile_s = time.perf_counter() - t0
    counter = iter(range(10 ** 9))

    def call(p=predictor, bs=batches, c=counter):
      return jax.block_until_ready(p._predict(p.variables, bs[next(c) % len(bs)]))

    proposals = int(batches[0]["proposals"].shape[1]) if "proposals" in batches[0] else None
    runs[name] = dict(call=call, workdir=workdir, compile_s=compile_s, proposals=proposals)

  timings = time_interleaved({n: r["call"] for n, r in runs.items()}, repeats=args.repeats)
  ss_ms = None
  if any(n in EXTERNAL_PROPOSALS for n in runs):
    per_image, counts = [], []
    for im in images:
      t0 = time.perf_counter()
      counts.append(len(selective_search.selective_search(im)))
      per_image.append(time.perf_counter() - t0)
    ss_ms = statistics.median(per_image) * 1e3
    ss_count = int(np.median(counts))

  totals = {}
  for name, r in runs.items():
    proposal_ms = ss_ms if name in EXTERNAL_PROPOSALS else 0.0
    totals[name] = timings[name]["median_ms"] + proposal_ms
  base = totals.get("rcnn")
  for name, r in runs.items():
    last = _last_eval(r["workdir"]) if r["workdir"] else None
    emit({"benchmark": "detector_speed", "detector": name, "workdir": r["workdir"],
          "images": len(images), "image_size": list(images[0].shape[:2]),
          "model_ms": timings[name]["median_ms"], "model_min_ms": timings[name]["min_ms"],
          "proposals_in_batch": r["proposals"],
          "proposal_ms": round(ss_ms, 2) if name in EXTERNAL_PROPOSALS else 0.0,
          "selective_search_boxes": ss_count if name in EXTERNAL_PROPOSALS else None,
          "total_ms": round(totals[name], 2),
          "speedup_vs_rcnn": round(base / totals[name], 2) if base else None,
          "compile_s": round(r["compile_s"], 2),
          "mAP": round(last["mAP"], 4) if last else None,
          "mAP_step": last["step"] if last else None, **env})


if __name__ == "__main__":
  main()
