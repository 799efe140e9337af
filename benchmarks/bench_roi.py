"""Benchmark: RoIAlign forward and forward+backward, jaxvision vs torchvision, on CPU.

The Faster/Mask R-CNN box-head setting: 2 images of 800 x 1344, 256-channel FPN maps, 512 RoIs per
image (1024 in all), output 7 x 7, ``sampling_ratio=2``, ``aligned=False``, float32:

* ``single_level``: all RoIs on P2 (200 x 336, spatial scale 1/4), ``roi_align`` vs
  ``torchvision.ops.roi_align`` (NCHW, the layout its CPU kernel is written for).
* ``multilevel``: P2-P5 (200 x 336 ... 25 x 42), each RoI on its FPN level,
  ``multilevel_roi_align`` vs ``torchvision.ops.MultiScaleRoIAlign``.

RoIs are proposal-like: centres uniform in the image, sqrt(area) log-uniform in [16, 800] px, aspect
ratio in [1/3, 3], some crossing the border. "fwd_bwd" is the loss ``sum(outputs)`` and the gradient
with respect to the features (jaxvision: ``jax.value_and_grad``; torchvision: ``.sum().backward()``).

Protocol: inputs generated once with a NumPy seed and fed to both; jaxvision ``jit``-ed, compiled and
warmed up (compile time reported separately), timed with ``block_until_ready``; the two libraries are
timed alternately, call by call, so machine load hits both alike; medians reported.
``ratio = torchvision_s / jaxvision_s`` (> 1: jaxvision faster). Also reported: the outputs' max
absolute difference, and XLA's temporary-buffer size for the compiled program (``jax_temp_bytes``:
memory beyond inputs and outputs; a ``[K, H, W]`` one-hot or a gathered ``[K, 7, 7, 4 * 4, C]``
intermediate would show up here as >= 0.3 GB).

    python benchmarks/bench_roi.py [--repeats 10]      # one JSON line per result
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxvision.ops import roi

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from _common import emit, environment, time_interleaved  # noqa: E402

IMAGE_HW = (800, 1344)
LEVELS = (2, 3, 4, 5)
BATCH = 2
ROIS_PER_IMAGE = 512
CHANNELS = 256
OUTPUT = 7
SAMPLING = 2


def proposals(rng: np.random.Generator, n: int, image_hw=IMAGE_HW) -> np.ndarray:
  """``[n, 4]`` proposal-like xyxy boxes (see the module docstring)."""
  h, w = image_hw
  s = np.exp(rng.uniform(np.log(16), np.log(800), n))
  ratio = np.exp(rng.uniform(-np.log(3), np.log(3), n))
  bw, bh = s * np.sqrt(ratio), s / np.sqrt(ratio)
  cx, cy = rng.uniform(0, w, n), rng.uniform(0, h, n)
  return np.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], 1).astype(np.float32)


def _setup(seed: int = 0):
  rng = np.random.default_rng(seed)
  ih, iw = IMAGE_HW
  feats = [rng.standard_normal((BATCH, -(-ih // 2**l), -(-iw // 2**l), CHANNELS), dtype=np.float32)
           for l in LEVELS]
  boxes = np.concatenate([proposals(rng, ROIS_PER_IMAGE) for _ in range(BATCH)])
  idx = np.repeat(np.arange(BATCH), ROIS_PER_IMAGE).astype(np.int32)
  return feats, boxes, idx


def run(repeats: int = 10) -> list[dict]:
  import torch
  import torchvision
  from torchvision.ops import MultiScaleRoIAlign

  feats, boxes, idx = _setup()
  rois_t = torch.from_numpy(np.concatenate([idx[:, None].astype(np.float32), boxes], 1))
  boxes_j, idx_j = jnp.asarray(boxes), jnp.asarray(idx)
  per_image_t = [torch.from_numpy(boxes[idx == b]) for b in range(BATCH)]
  results = []

  for setting in ("single_level", "multilevel"):
    if setting == "single_level":
      maps_j = jnp.asarray(feats[0])

      def jfwd(m, b, i):
        return roi.roi_align(m, b, i, output_size=OUTPUT, spatial_scale=1 / 4,
                             sampling_ratio=SAMPLING, aligned=False)

      x_t = torch.from_numpy(np.ascontiguousarray(feats[0].transpose(0, 3, 1, 2)))

      def tfwd(x):
        return torchvision.ops.roi_align(x, rois_t, OUTPUT, spatial_scale=1 / 4,
                                         sampling_ratio=SAMPLING, aligned=False)
    else:
      maps_j = [jnp.asarray(f) for f in feats]

      def jfwd(m, b, i):
        return roi.multilevel_roi_align(m, b, i, levels=LEVELS, output_size=OUTPUT,
                                        sampling_ratio=SAMPLING, aligned=False)

      x_t = {f"p{l}": torch.from_numpy(np.ascontiguousarray(f.transpose(0, 3, 1, 2)))
             for l, f in zip(LEVELS, feats)}
      pooler = MultiScaleRoIAlign([f"p{l}" for l in LEVELS], OUTPUT, SAMPLING)

      def tfwd(x):
        return pooler(x, per_image_t, [IMAGE_HW] * BATCH)

    def tfwd_bwd(x_t=x_t, tfwd=tfwd):
      x = ({k: v.detach().requires_grad_(True) for k, v in x_t.items()} if isinstance(x_t, dict)
           else x_t.detach().requires_grad_(True))
      y = tfwd(x)
      y.sum().backward()
      return y

    for mode in ("fwd", "fwd_bwd"):
      if mode == "fwd":
        jitted = jax.jit(jfwd)
      else:
        jitted = jax.jit(jax.value_and_grad(lambda m, b, i, jfwd=jfwd: jnp.sum(jfwd(m, b, i))))
      t0 = time.perf_counter()
      compiled = jitted.lower(maps_j, boxes_j, idx_j).compile()
      compile_s = time.perf_counter() - t0
      temp = compiled.memory_analysis().temp_size_in_bytes
      jcall = lambda compiled=compiled: jax.block_until_ready(compiled(maps_j, boxes_j, idx_j))
      if mode == "fwd":
        tcall = lambda tfwd=tfwd: tfwd(x_t)
      else:
        tcall = tfwd_bwd
      with torch.no_grad() if mode == "fwd" else torch.enable_grad():
        times = time_interleaved({"jax": jcall, "torch": tcall}, repeats=repeats)
        out_t = tfwd(x_t).detach().numpy().transpose(0, 2, 3, 1)
      out_j = np.asarray(jax.jit(jfwd)(maps_j, boxes_j, idx_j))
      results.append({
          "benchmark": "roi_align", "setting": setting, "mode": mode,
          "batch": BATCH, "rois_per_image": ROIS_PER_IMAGE, "channels": CHANNELS,
          "image_hw": list(IMAGE_HW), "levels": list(LEVELS) if setting == "multilevel" else [2],
          "output_size": OUTPUT, "sampling_ratio": SAMPLING,
          "jaxvision_ms": times["jax"]["median_ms"], "torchvision_ms": times["torch"]["median_ms"],
          "ratio_torchvision_over_jaxvision": round(
              times["torch"]["median_ms"] / times["jax"]["median_ms"], 3),
          "jax_compile_s": round(compile_s, 2),
          "jax_temp_bytes": int(temp), "max_abs_diff": float(np.abs(out_j - out_t).max()),
          "repeats": repeats, **environment(),
      })
  return results


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--repeats", type=int, default=10)
  args = parser.parse_args()
  for result in run(repeats=args.repeats):
    emit(result)


if __name__ == "__main__":
  main()
