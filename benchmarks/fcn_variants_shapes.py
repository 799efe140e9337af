"""FCN-32s vs FCN-16s vs FCN-8s on the shapes dataset with an equal training budget.

  python benchmarks/fcn_variants_shapes.py [--steps 600] [--batch_size 4] [--variants 32s,16s,8s]

Each variant trains from ``configs/fcn<v>_shapes.py`` (same backbone, optimizer, data order and seed;
only the skips differ) for ``--steps`` steps of ``--batch_size`` images with the real training loop, then is evaluated on the
validation split: the loop's metrics (mIoU, pixel accuracy) plus the boundary F-score
(``jaxvision.eval.segmentation_boundary``, tolerance 2 px), which is where the paper's skips
(Long et al. 2015, Sec. 4.2, Fig. 4) should show. Prints one JSON line per variant:
``{"benchmark": "fcn_variants_shapes", "variant", "steps", "mean_iou", "pixel_accuracy",
"mean_boundary_f", "train_seconds", "versions", "device"}``.

Measured on the shared 2-core CPU (600 steps of 4 images; benchmarks/results_fcn_variants_cpu.jsonl):

  variant  mIoU   pixel acc.  boundary F (2 px)
  32s      0.170  0.859       0.033
  16s      0.210  0.875       0.099
  8s       0.242  0.880       0.168

At the configs' full budget (``--steps 2000 --batch_size 8``, idle 2-core CPU, 2026-11-22;
benchmarks/results_fcn_variants_2000_cpu.jsonl):

  variant  mIoU   pixel acc.  boundary F (2 px)  training
  32s      0.382  0.887       0.198              363 s
  16s      0.589  0.929       0.352              382 s
  8s       0.631  0.940       0.436              376 s

The paper's ordering (its Table 2 on PASCAL VOC 2011 val: 59.4 / 62.4 / 62.7 mIoU) holds at both
budgets, with the largest relative gains in the boundary score, as its Fig. 4 shows qualitatively.
"""

from __future__ import annotations

import argparse
import importlib
import json
import pathlib
import shutil
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def run_variant(variant: str, steps: int, batch_size: int, workdir: pathlib.Path,
                tolerance: float) -> dict:
  import jax  # noqa: PLC0415
  import numpy as np  # noqa: PLC0415

  from jaxvision.data import builder as data_builder  # noqa: PLC0415
  from jaxvision.eval.segmentation_boundary import boundary_f_score  # noqa: PLC0415
  from jaxvision.train import loop  # noqa: PLC0415

  config = importlib.import_module(f"configs.fcn{variant}_shapes").get_config()
  config.train.steps = config.train.eval_every = config.train.checkpoint_every = steps
  config.data.batch_size = batch_size
  config.train.log_every = max(steps // 10, 1)
  config.optim.warmup_steps = min(int(config.optim.warmup_steps), steps // 10)
  shutil.rmtree(workdir, ignore_errors=True)
  start = time.time()
  metrics = loop.train_and_evaluate(config, str(workdir))
  seconds = time.time() - start

  _, family = loop.build_family(config)
  variables = loop.load_variables(config, str(workdir))
  predict = jax.jit(family.predict)
  labels, preds = [], []
  eval_ds = data_builder.make_split(config.data, train=False)
  for i in range(len(eval_ds)):
    batch = eval_ds[i]
    keep = np.asarray(batch.get("example_valid", np.ones(len(batch["image"]), bool)), bool)
    pred = np.asarray(predict(variables, {"image": batch["image"]})["segmentation"])
    labels.append(np.asarray(batch["segmentation"])[keep])
    preds.append(pred[keep])
  bf = boundary_f_score(np.concatenate(labels), np.concatenate(preds), family.num_classes,
                        tolerance=tolerance)
  return {"variant": variant, "steps": steps, "batch_size": batch_size, "mean_iou": round(float(metrics["mean_iou"]), 4),
          "pixel_accuracy": round(float(metrics["pixel_accuracy"]), 4),
          "mean_boundary_f": round(bf["mean_boundary_f"], 4), "boundary_tolerance_px": tolerance,
          "train_seconds": round(seconds, 1)}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--steps", type=int, default=600)
  parser.add_argument("--batch_size", type=int, default=4)
  parser.add_argument("--variants", default="32s,16s,8s")
  parser.add_argument("--workdir", default="/tmp/fcn_variants_shapes")
  parser.add_argument("--tolerance", type=float, default=2.0)
  args = parser.parse_args()
  from absl import logging  # noqa: PLC0415

  logging.set_verbosity(logging.WARNING)
  import _common  # noqa: PLC0415

  for variant in args.variants.split(","):
    result = run_variant(variant, args.steps, args.batch_size, pathlib.Path(args.workdir) / variant,
                         args.tolerance)
    print(json.dumps({"benchmark": "fcn_variants_shapes", **result, **_common.environment()}),
          flush=True)


if __name__ == "__main__":
  main()
