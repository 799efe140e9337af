"""Patch-wise (sliding-window) segmentation vs the same weights applied fully convolutionally.

The lecture's point about the sliding-window baseline: classifying every pixel from its own patch
recomputes the features of overlapping patches again and again, while the same network applied
convolutionally to the whole image computes every feature once. Both give the same per-pixel
scores (checked here: ``max_abs_diff``), so the difference is pure cost.

Model: Havaei et al. 2017's TwoPathCNN with the paper's widths (local path 7x7 conv 64 maxout maps
+ 4x4 pool, 3x3 conv 64 + 2x2 pool; global path 13x13 conv 160; 21x21 output layer; maxout of 2
pieces; 33 x 33 patches; 4 input channels, 5 classes), random weights. ``patchwise`` cuts the
33 x 33 patch around every pixel (``jaxvision.models.segmentation.patchwise.patchwise_scores``,
``rows_per_chunk`` image rows of patches per batch of the classifier) and ``fcn`` runs one pass over
the zero-padded image (``fcn_scores``). Both jitted, warmed up, timed with ``block_until_ready``,
interleaved repeats, median. ``gmacs_per_image``: analytic multiply-accumulates (two_path and
single-path architectures).

    python benchmarks/patchwise_vs_fcn.py                  # one JSON line per method
    python benchmarks/patchwise_vs_fcn.py --size 48 --architecture input_cascade
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxvision.models.segmentation import patchwise as pw


def two_path_macs(cnn: pw.TwoPathCNN, h: int, w: int, c_in: int) -> int:
  """Multiply-accumulates of one unpadded pass of ``cnn`` over an ``h x w x c_in`` input."""
  k_pieces, total, widths = cnn.maxout_pieces, 0, []
  paths = []
  if cnn.use_local:
    paths.append(zip(cnn.local_features, cnn.local_kernels, cnn.local_pools))
  if cnn.use_global:
    paths.append(zip(cnn.global_features, cnn.global_kernels, [1] * len(cnn.global_features)))
  for layers in paths:
    hh, ww, c = h, w, c_in
    for f, k, p in layers:
      hh, ww = hh - k + 1, ww - k + 1
      total += hh * ww * k * k * c * f * k_pieces  # conv to f * K maps, then maxout
      hh, ww, c = hh - p + 1, ww - p + 1, f  # stride-1 pooling
    widths.append(c)
  _, out_k = cnn.extents()
  oh, ow = h - cnn.patch_size + 1, w - cnn.patch_size + 1
  return total + oh * ow * out_k * out_k * sum(widths) * cnn.num_classes


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--size", type=int, default=32, help="image height and width")
  parser.add_argument("--batch", type=int, default=1)
  parser.add_argument("--channels", type=int, default=4)
  parser.add_argument("--classes", type=int, default=5)
  parser.add_argument("--architecture", default="two_path", choices=pw.ARCHITECTURES)
  parser.add_argument("--rows_per_chunk", type=int, default=4)
  parser.add_argument("--repeats", type=int, default=3)
  args = parser.parse_args()

  model = pw.PatchwiseSegmenter(num_classes=args.classes, architecture=args.architecture)
  shape = (args.batch, args.size, args.size, args.channels)
  images = jnp.asarray(np.random.default_rng(0).normal(size=shape), jnp.float32)
  variables = jax.jit(functools.partial(model.init, train=False))(jax.random.key(0), images)

  fns = {
      "patchwise": jax.jit(functools.partial(pw.patchwise_scores, model,
                                             rows_per_chunk=args.rows_per_chunk)),
      "fcn": jax.jit(functools.partial(pw.fcn_scores, model)),
  }
  compiled, compile_s, outputs = {}, {}, {}
  for name, fn in fns.items():
    t0 = time.perf_counter()
    compiled[name] = fn.lower(variables, images).compile()
    compile_s[name] = time.perf_counter() - t0
    outputs[name] = np.asarray(jax.block_until_ready(compiled[name](variables, images)))
  max_abs_diff = float(np.max(np.abs(outputs["patchwise"] - outputs["fcn"])))
  scale = float(np.max(np.abs(outputs["fcn"])))

  times = {name: [] for name in fns}
  for _ in range(args.repeats):  # interleaved, so load from other processes hits both alike
    for name in fns:
      t0 = time.perf_counter()
      jax.block_until_ready(compiled[name](variables, images))
      times[name].append(time.perf_counter() - t0)

  median = {name: statistics.median(t) for name, t in times.items()}
  macs = {"patchwise": None, "fcn": None}
  if args.architecture != "input_cascade":  # analytic count (XLA's cost analysis counts a loop once)
    cnn, r = pw._two_path_cnn(model), model.receptive_field  # noqa: SLF001
    macs["patchwise"] = args.size**2 * two_path_macs(cnn, r, r, args.channels)
    macs["fcn"] = two_path_macs(cnn, args.size + r - 1, args.size + r - 1, args.channels)
  for name in fns:
    print(json.dumps({
        "benchmark": "patchwise_vs_fcn",
        "method": name,
        "architecture": args.architecture,
        "receptive_field": model.receptive_field,
        "image_hw": [args.size, args.size],
        "batch": args.batch,
        "channels": args.channels,
        "images_per_s": round(args.batch / median[name], 4),
        "ms_per_image": round(1000 * median[name] / args.batch, 2),
        "min_ms_per_image": round(1000 * min(times[name]) / args.batch, 2),
        "ratio_vs_patchwise": round(median["patchwise"] / median[name], 2),
        "gmacs_per_image": None if macs[name] is None else round(macs[name] / 1e9, 3),
        "max_abs_diff": max_abs_diff,
        "output_scale": scale,
        "repeats": args.repeats,
        "rows_per_chunk": args.rows_per_chunk if name == "patchwise" else None,
        "compile_s": round(compile_s[name], 2),
        "jax": jax.__version__,
        "device": f"{jax.devices()[0].platform} ({platform.machine()}, {os.cpu_count()} cores)",
    }))


if __name__ == "__main__":
  main()
