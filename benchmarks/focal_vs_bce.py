"""Benchmark: the focal-loss claim (Lin et al. 2017, Sec. 3 and Table 1), side by side on shapes.

RetinaNet's claim: with a dense one-stage detector the ~10^4 - 10^5 easy background anchors per
image dominate a cross-entropy loss; the focal loss ``-alpha_t (1 - p_t)^gamma log p_t``
down-weights them and trains a better detector than cross-entropy, with or without online hard example mining
(as the paper reports on COCO, Table 1: with ResNet-50 at 600 px, alpha-balanced CE reaches at best
31.1 AP and FL (gamma 2, alpha 0.25) 34.0 AP; with ResNet-101, the OHEM variants reach at most
32.8 AP against FL's 36.0).

Three runs of ``configs/retinanet_shapes.py`` through the common training loop
(``jaxvision.train.loop.train_and_evaluate``), identical except for ``model.cls_loss``:

* ``focal``: alpha 0.25, gamma 2 (the paper's);
* ``bce``: plain binary cross-entropy over all non-ignored anchors (gamma 0, no alpha), with the
  same prior-probability bias init (pi = 0.01) and the same normalization by the number of
  positive anchors;
* ``bce_ohem``: binary cross-entropy on the positives plus, per image, the 3 x #positives
  negatives with the highest loss (OHEM 1:3; without the paper's NMS before the selection).

Same data order, seed, initialization, optimizer, steps and batch. Each variant prints one JSON
line with its validation VOC mAP@0.5 (and per-class AP), final training loss and wall time::

    python benchmarks/focal_vs_bce.py [--steps 600] [--variants focal,bce,bce_ohem] [--seed 0]

``--steps`` sets the training budget (the config's cosine schedule follows it); ``--workdir``
keeps the runs (default: a temporary directory, deleted afterwards).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pathlib
import platform
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
VARIANTS = ("focal", "bce", "bce_ohem")


def _load_config():
  if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
  from configs import retinanet_shapes  # noqa: PLC0415

  return retinanet_shapes.get_config()


def run_variant(variant: str, *, steps: int, seed: int, workdir: str, data_dir: str | None,
                batch_size: int | None) -> dict:
  import jax  # noqa: PLC0415

  from jaxvision.train import loop  # noqa: PLC0415

  config = _load_config()
  config.model.cls_loss = variant
  config.train.steps = steps
  config.train.seed = seed
  config.data.seed = seed
  config.train.eval_every = steps
  config.train.checkpoint_every = steps
  config.train.log_every = max(steps // 20, 1)
  if batch_size:
    config.data.batch_size = batch_size
  if data_dir:
    config.data.data_dir = data_dir
  start = time.time()
  with contextlib.redirect_stdout(sys.stderr):  # the loop's progress lines; stdout is JSON only
    result = loop.train_and_evaluate(config, workdir)
  wall = time.time() - start
  train_rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))
                if '"split": "train"' in line]
  last = train_rows[-1] if train_rows else {}
  return {
      "benchmark": "focal_vs_bce",
      "variant": variant,
      "mAP": round(float(result["mAP"]), 4),
      **{k: round(float(v), 4) for k, v in result.items() if k.startswith("ap/")},
      "final_train_loss": round(float(last.get("loss", float("nan"))), 4),
      "final_cls_loss": round(float(last.get("cls_loss", float("nan"))), 4),
      "final_box_loss": round(float(last.get("box_loss", float("nan"))), 4),
      "steps": steps,
      "batch_size": int(config.data.batch_size),
      "seed": seed,
      "eval_split": config.data.eval_split,
      "wall_s": round(wall, 1),
      "device": str(jax.devices()[0].device_kind),
      "jax": jax.__version__,
      "python": platform.python_version(),
  }


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--steps", type=int, default=600)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--batch_size", type=int, default=None, help="default: the config's (16)")
  parser.add_argument("--variants", default=",".join(VARIANTS))
  parser.add_argument("--workdir", default=None, help="keep the runs here (default: a temp dir)")
  parser.add_argument("--data_dir", default=None)
  args = parser.parse_args(argv)
  variants = [v for v in args.variants.split(",") if v]
  unknown = sorted(set(variants) - set(VARIANTS))
  if unknown:
    parser.error(f"unknown variants {unknown}; choose from {VARIANTS}")
  with tempfile.TemporaryDirectory() as tmp:
    base = args.workdir or tmp
    for variant in variants:
      row = run_variant(variant, steps=args.steps, seed=args.seed,
                        workdir=os.path.join(base, f"{variant}_seed{args.seed}"),
                        data_dir=args.data_dir, batch_size=args.batch_size)
      print(json.dumps(row), flush=True)


if __name__ == "__main__":
  main()
