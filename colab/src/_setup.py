# Setup, the same in every jaxvision notebook: install jaxvision (Colab), detect the runtime, scale.
import importlib.util
import os
import subprocess
import sys
import tempfile


def _find_repo():
  """The jaxvision repository (its configs/ sit next to the package): $JAXVISION_REPO, this
  folder, its parent (the notebooks live in colab/) or /content/jaxvision (Colab)."""
  for path in (os.environ.get("JAXVISION_REPO", ""), ".", "..", "/content/jaxvision"):
    if path and os.path.exists(os.path.join(path, "configs", "common", "base.py")):
      return os.path.abspath(path)
  return None


IN_COLAB = "google.colab" in sys.modules
REPO = _find_repo()
if REPO is None:
  # jaxvision is not published on PyPI yet: get the repository first, e.g. in Colab run
  #   !git clone <the jaxvision repository URL> /content/jaxvision
  # (or upload it there), then run this cell again.
  raise RuntimeError("The jaxvision repository was not found: clone or upload it to "
                     "/content/jaxvision (Colab) or start Jupyter inside it, or set $JAXVISION_REPO.")
if importlib.util.find_spec("jaxvision") is None or IN_COLAB:
  # The README's install, from the repository folder: `pip install -e .` run inside it.
  # (On a Colab TPU runtime keep Colab's own jax: pip only adds what is missing.)
  subprocess.check_call([sys.executable, "-m", "pip", "install", "-q", "-e", "."], cwd=REPO)
if REPO not in sys.path:
  sys.path.insert(0, REPO)  # `configs` is importable from the repository root

import jax  # noqa: E402

BACKEND = jax.default_backend()  # "tpu", "gpu" or "cpu"
# Small mode: a few steps on small images, a minute on a 2-core CPU. On by default on CPU;
# JAXVISION_NOTEBOOK_SMALL=1 forces it anywhere, =0 turns it off on CPU.
_small = os.environ.get("JAXVISION_NOTEBOOK_SMALL", "")
SMALL = _small == "1" or (_small != "0" and BACKEND == "cpu")
if BACKEND == "cpu":
  # XLA:CPU compiles the "partitionable" threefry random-number generator several times slower
  # (measured 4-7x for a network's parameter initialisation); only the random streams change.
  jax.config.update("jax_threefry_partitionable", False)


def by_runtime(*, small, cpu, gpu, tpu=None):
  """The value for this runtime: ``small`` in small mode, else the backend's."""
  if SMALL:
    return small
  return {"cpu": cpu, "gpu": gpu, "tpu": gpu if tpu is None else tpu}.get(BACKEND, cpu)


def global_batch(n):
  """``n`` rounded to a multiple of the device count (data parallelism splits the batch)."""
  d = jax.device_count()
  return max(n // d, 1) * d


WORKDIR = tempfile.mkdtemp(prefix="jaxvision_")  # every run of this notebook writes here
# Compiled programs are cached on disk: reloading a trained model (the same initialisation program
# as its training run) then skips compilation. Point this at a lasting folder to keep it across runs.
jax.config.update("jax_compilation_cache_dir", os.path.join(WORKDIR, "jax_cache"))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
DATA_DIR = os.environ.get("JAXVISION_DATA_DIR") or None  # None: ~/tensorflow_datasets

from jaxvision.data import shapes  # noqa: E402

# The built-in dataset: generated locally (no download), once, in about half a minute.
shapes.prepare_shapes(DATA_DIR, splits=["train", "validation"])

# Used by the cells below (imported here once for every notebook).
import jax.numpy as jnp  # noqa: E402, F401
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402, F401

print(f"jax {jax.__version__}, backend {BACKEND}, {jax.device_count()} device(s): "
      f"{jax.devices()[0].device_kind}; small mode {SMALL}; workdir {WORKDIR}")
