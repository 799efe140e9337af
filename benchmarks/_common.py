"""What every benchmark shares: one JSON schema for the environment and one interleaved timer.

Every result line is ``{"benchmark": ..., <case fields>, <timings>, "ratio_...": ...,
"versions": {...}, "device": {...}}``; ``environment()`` gives the last two. Timings of the two sides
of a comparison are taken *interleaved* (one call of each per round), so load from other processes
hits both alike, and reported as median (and min) milliseconds.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from typing import Callable


def versions() -> dict:
  """Versions of the libraries a result depends on (torch/torchvision None when absent)."""
  import jax  # noqa: PLC0415
  import numpy as np  # noqa: PLC0415

  out = {"python": platform.python_version(), "jax": jax.__version__, "numpy": np.__version__}
  try:
    import jaxlib  # noqa: PLC0415

    out["jaxlib"] = jaxlib.__version__
  except ImportError:
    out["jaxlib"] = None
  try:
    import flax  # noqa: PLC0415

    out["flax"] = flax.__version__
  except ImportError:
    out["flax"] = None
  try:
    import torch  # noqa: PLC0415
    import torchvision  # noqa: PLC0415

    out.update(torch=torch.__version__, torchvision=torchvision.__version__)
  except ImportError:
    out.update(torch=None, torchvision=None)
  return out


def device() -> dict:
  """The device the JAX side ran on, the host, and the load when the result was taken."""
  import jax  # noqa: PLC0415

  dev = jax.devices()[0]
  info = {"jax_device": f"{dev.platform}:{dev.device_kind}", "jax_device_count": jax.device_count(),
          "processor": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
          "load_avg_1min": round(os.getloadavg()[0], 2)}
  try:
    import torch  # noqa: PLC0415

    info["torch_threads"] = torch.get_num_threads()
    info["torch_cuda"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
  except ImportError:
    pass
  return info


def environment() -> dict:
  return {"versions": versions(), "device": device()}


def time_interleaved(fns: dict[str, Callable[[], object]], *, repeats: int,
                     warmup: int = 2) -> dict[str, dict[str, float]]:
  """``{name: {"median_ms", "min_ms"}}`` of zero-argument callables timed in alternation.

  Each callable must block until its result is ready (``jax.block_until_ready``,
  ``torch.cuda.synchronize``).
  """
  for fn in fns.values():
    for _ in range(warmup):
      fn()
  times: dict[str, list[float]] = {name: [] for name in fns}
  for _ in range(repeats):
    for name, fn in fns.items():
      t0 = time.perf_counter()
      fn()
      times[name].append(time.perf_counter() - t0)
  return {name: {"median_ms": round(statistics.median(t) * 1e3, 4),
                 "min_ms": round(min(t) * 1e3, 4)} for name, t in times.items()}


def emit(result: dict) -> None:
  """Prints one result as one JSON line (flushed, so partial runs still leave their lines)."""
  print(json.dumps(result), flush=True)
