"""Train, evaluate or predict with a jaxvision config.

  python train.py --config configs/unet_shapes.py --workdir runs/unet
  python train.py --config configs/unet_shapes.py:smoke --workdir /tmp/smoke --config.train.steps=5
  python train.py --config configs/unet_shapes.py --workdir runs/unet --mode eval
  python train.py --config configs/unet_shapes.py --workdir runs/unet --mode predict \
      --input my_images/ --output runs/unet/predictions

All logic lives in jaxvision.train; this file only parses flags.
"""

from absl import app
from absl import flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file (configs/*.py[:arg]).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (default: runs/<config name>).")
_MODE = flags.DEFINE_enum("mode", "train", ["train", "eval", "predict"],
                          "train (resumes if possible), eval (a checkpoint on config.data.eval_split) "
                          "or predict (a folder of images -> overlays + JSON).")
_WHICH = flags.DEFINE_enum("checkpoint", "latest", ["latest", "best"],
                           "Checkpoint to evaluate or predict with.")
_INPUT = flags.DEFINE_string("input", None, "predict: folder of images (png/jpg/...).")
_OUTPUT = flags.DEFINE_string("output", None, "predict: output folder (default: <workdir>/predictions).")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "Multi-host: host:port of process 0.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", 1, "Multi-host: number of processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", 0, "Multi-host: this process's index.")


def main(argv):
  del argv
  import json  # noqa: PLC0415

  from absl import logging  # noqa: PLC0415

  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
  import os  # noqa: PLC0415

  import jax  # noqa: PLC0415

  if _NUM_PROCESSES.value > 1:
    jax.distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  from jaxvision.train import loop  # noqa: PLC0415

  config = _CONFIG.value
  name = os.path.splitext(os.path.basename(flags.FLAGS["config"].config_filename))[0]
  workdir = _WORKDIR.value or os.path.join("runs", name)
  if _MODE.value == "train":
    result = loop.train_and_evaluate(config, workdir)
  elif _MODE.value == "eval":
    result = loop.evaluate(config, workdir, which=_WHICH.value)
  else:
    from jaxvision import predict  # noqa: PLC0415

    if not _INPUT.value:
      raise app.UsageError("--mode predict needs --input <folder of images>.")
    predictor = predict.Predictor(config, loop.load_variables(config, workdir, which=_WHICH.value))
    result = predict.predict_folder(predictor, _INPUT.value,
                                    _OUTPUT.value or os.path.join(workdir, "predictions"))
  print(json.dumps({"workdir": workdir, **result}))


if __name__ == "__main__":
  flags.mark_flags_as_required(["config"])
  app.run(main)
