"""The Colab notebooks (``colab/``): generated from their sources, valid, and they run.

* Fast: every ``colab/<name>.ipynb`` equals what ``python colab/build.py`` makes of
  ``colab/src/<name>.py`` (so the committed notebooks cannot drift from the reviewed sources), is
  valid nbformat and carries no outputs; the source parser rejects malformed sources.
* Slow: every notebook executes top to bottom in small mode (``JAXVISION_NOTEBOOK_SMALL=1``, CPU,
  one device, the ``shapes_dir`` dataset through ``JAXVISION_DATA_DIR``) in a fresh kernel of this
  interpreter (nbclient + ipykernel); any cell error fails the test.

``python tests/test_notebooks.py [name ...]`` runs the notebooks the same way and prints each one's
wall and CPU time (the shapes dataset is prepared in ``$JAXVISION_DATA_DIR``, or a temporary folder);
with ``$JAXVISION_NOTEBOOK_OUT`` set, the executed notebooks are written there for review.
"""

from __future__ import annotations

import importlib.util
import json
import os
import pathlib
import resource
import sys
import time

import nbformat
import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
COLAB = ROOT / "colab"
EXPECTED = ("object_detection", "quickstart", "research_code", "semantic_segmentation")
NOTEBOOKS = sorted(p.stem for p in COLAB.glob("*.ipynb"))
KERNEL_NAME = "jaxvision-notebook-test"
CELL_TIMEOUT_S = 300


def _build_module():
  spec = importlib.util.spec_from_file_location("jaxvision_colab_build", COLAB / "build.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


# ------------------------------------------------------------------------------------------------
# Fast: sources and generated notebooks agree
# ------------------------------------------------------------------------------------------------


def test_every_notebook_is_built_from_its_source():
  build = _build_module()
  names = build.sources()
  assert set(EXPECTED) <= set(names), names
  assert sorted(names) == NOTEBOOKS, "an .ipynb without a source or a source without an .ipynb"
  assert build.stale() == [], "run `python colab/build.py` and commit colab/*.ipynb"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_is_valid_and_has_no_outputs(name):
  nb = nbformat.read(COLAB / f"{name}.ipynb", as_version=4)
  nbformat.validate(nb)
  code = [c for c in nb.cells if c.cell_type == "code"]
  assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# ")
  assert all(c.outputs == [] and c.execution_count is None for c in code)
  # The first code cell is the shared setup: install in Colab, runtime detection, small mode.
  setup = code[0].source
  for needle in ("pip", "install", "jax.default_backend()", "JAXVISION_NOTEBOOK_SMALL",
                 "prepare_shapes"):
    assert needle in setup, needle
  assert len({c.id for c in nb.cells}) == len(nb.cells)


def test_parser_cells_and_errors():
  build = _build_module()
  src = ("# header, not in the notebook\n\n# %% [markdown]\n# # Title\n#\n# text\n\n"
         "# %%\nx = 1\n\n\nprint(x)\n\n# %%\ny = 2\n")
  assert build.parse(src) == [("markdown", "# Title\n\ntext"), ("code", "x = 1\n\n\nprint(x)"),
                              ("code", "y = 2")]
  include = build.parse("# %% [include _setup.py]\n\n# %%\nz = 3\n")
  assert include[0][0] == "code" and "JAXVISION_NOTEBOOK_SMALL" in include[0][1]
  assert include[1] == ("code", "z = 3")
  bad = {
      "unknown marker": "# %% [raw]\nx\n",
      "markdown without comments": "# %% [markdown]\nnot a comment\n",
      "empty cell": "# %%\n\n# %%\nx = 1\n",
      "no cells": "x = 1\n",
      "missing include": "# %% [include _nope.py]\n",
      "include with a body": "# %% [include _setup.py]\nx = 1\n",
  }
  for what, text in bad.items():
    with pytest.raises(ValueError):
      build.parse(text)
      pytest.fail(what)


def test_build_is_deterministic():
  build = _build_module()
  for name in build.sources():
    assert build.render(name) == build.render(name)


# ------------------------------------------------------------------------------------------------
# Slow: execute every notebook in small mode
# ------------------------------------------------------------------------------------------------


def _kernel_env(data_dir: str, jupyter_dir: pathlib.Path) -> dict[str, str]:
  """Environment for the kernel: small mode, CPU, one device, this dataset, a private kernelspec."""
  spec_dir = jupyter_dir / "kernels" / KERNEL_NAME
  spec_dir.mkdir(parents=True, exist_ok=True)
  (spec_dir / "kernel.json").write_text(json.dumps({
      "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
      "display_name": "jaxvision tests", "language": "python"}))
  flags = " ".join(f for f in os.environ.get("XLA_FLAGS", "").split()
                   if "xla_force_host_platform_device_count" not in f)  # one device, as a user's CPU
  tmp = jupyter_dir.parent / "notebook_tmp"  # the notebooks' temporary workdirs land here
  tmp.mkdir(parents=True, exist_ok=True)
  return {
      "TMPDIR": str(tmp),
      "JUPYTER_PATH": str(jupyter_dir),
      "JUPYTER_RUNTIME_DIR": str(jupyter_dir / "runtime"),
      "JAXVISION_NOTEBOOK_SMALL": "1",
      "JAXVISION_DATA_DIR": str(data_dir),
      "JAX_PLATFORMS": "cpu",
      "XLA_FLAGS": flags,
      "MPLBACKEND": "module://matplotlib_inline.backend_inline",
  }


def run_notebook(name: str, data_dir: str, jupyter_dir: pathlib.Path,
                 save_to: str | None = None) -> dict[str, float]:
  """Executes ``colab/<name>.ipynb`` (cwd ``colab/``); returns wall and kernel CPU seconds.

  ``save_to``: a folder to write the executed notebook (with its outputs) into, for reviewing.

  Raises ``nbclient.exceptions.CellExecutionError`` (with the cell's traceback) on any error.
  """
  from nbclient import NotebookClient  # noqa: PLC0415

  nb = nbformat.read(COLAB / f"{name}.ipynb", as_version=4)
  saved = {k: os.environ.get(k) for k in _kernel_env(data_dir, jupyter_dir)}
  os.environ.update(_kernel_env(data_dir, jupyter_dir))
  try:
    client = NotebookClient(nb, kernel_name=KERNEL_NAME, timeout=CELL_TIMEOUT_S,
                            allow_errors=False, resources={"metadata": {"path": str(COLAB)}})
    cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    client.execute()
    wall = time.perf_counter() - t0
    cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)  # the kernel, reaped at shutdown
  finally:
    for k, v in saved.items():
      if v is None:
        os.environ.pop(k, None)
      else:
        os.environ[k] = v
  cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
  if save_to:
    os.makedirs(save_to, exist_ok=True)
    nbformat.write(nb, os.path.join(save_to, f"{name}.ipynb"))
  return {"wall_s": wall, "cpu_s": cpu}


@pytest.mark.slow
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_in_small_mode(name, shapes_dir, tmp_path):
  times = run_notebook(name, shapes_dir, tmp_path / "jupyter")
  print(f"{name}: {times['wall_s']:.1f} s wall, {times['cpu_s']:.1f} s CPU")


if __name__ == "__main__":
  import tempfile

  from jaxvision.data import shapes

  data = os.environ.get("JAXVISION_DATA_DIR") or tempfile.mkdtemp()
  shapes.prepare_shapes(data, splits=["train", "validation"])
  load = os.getloadavg()[0]
  for n in sys.argv[1:] or NOTEBOOKS:
    t = run_notebook(n, data, pathlib.Path(tempfile.mkdtemp()),
                     save_to=os.environ.get("JAXVISION_NOTEBOOK_OUT"))
    print(json.dumps({"notebook": n, "wall_s": round(t["wall_s"], 1), "cpu_s": round(t["cpu_s"], 1),
                      "load_avg_before": round(load, 1), "load_avg_after": round(os.getloadavg()[0], 1)}),
          flush=True)
    load = os.getloadavg()[0]
