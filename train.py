"""Train, evaluate or predict with a jaxvision config.

  python train.py --config configs/unet_shapes.py --workdir runs/unet
  python train.py --config configs/unet_shapes.py:smoke --workdir /tmp/smoke --config.train.steps=5
  python train.py --config configs/unet_shapes.py --workdir runs/unet --mode eval

All logic lives in jaxvision.train; this file only parses flags.
"""

from absl import app
from absl import flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file (configs/*.py[:arg]).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (default: runs/<config name>).")
_MODE = flags.DEFINE_enum("mode", "train", ["train", "eval"], "train (resumes if possible) or eval.")
_WHICH = flags.DEFINE_enum("checkpoint", "latest", ["latest", "best"], "Checkpoint to evaluate.")
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
  else:
    result = loop.evaluate(config, workdir, which=_WHICH.value)
  print(json.dumps({"workdir": workdir, **result}))


if __name__ == "__main__":
  flags.mark_flags_as_required(["config"])
  app.run(main)
