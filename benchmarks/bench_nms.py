"""NMS benchmark: jaxvision ``nms`` / ``batched_nms`` vs ``torchvision.ops.nms`` / ``batched_nms`` on CPU.

Same inputs for both (seeded NumPy, boxes clustered around object centres so that suppression
happens, like a detector's pre-NMS candidates). jaxvision is jitted, warmed up and timed with
``block_until_ready``; torchvision is timed by wall clock. The two are timed *interleaved* (one run
of each per repeat), so load from other processes on a shared machine hits both alike. Reported:
median (and min) milliseconds, ``ratio = torchvision_ms / jaxvision_ms`` (> 1: jaxvision faster),
whether the keep lists are identical, compile time, versions and device.

    python benchmarks/bench_nms.py            # one JSON line per result
    python benchmarks/ops.py --only nms

Cases: single-class NMS at 1k / 5k / 20k boxes, IoU 0.5, ``max_output_size`` 1000 (typical
detector use; jaxvision stops once 1000 boxes are kept, torchvision always finishes) and ``= N``
(full greedy pass on both sides); 80-class ``batched_nms`` at 5k boxes with 300 and N outputs.
"""

from __future__ import annotations

import pathlib
import sys
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from _common import emit, environment, time_interleaved  # noqa: E402

# Torch's CPU NMS kernel is single-threaded; XLA may use both cores for large fusions. Both use
# their defaults; the thread counts are reported.


def make_boxes(n: int, seed: int = 0, img: float = 1024.0, per_obj: int = 20):
  """``n`` float32 xyxy boxes around ``n / per_obj`` objects and uniform scores."""
  rng = np.random.default_rng(seed)
  n_obj = max(1, n // per_obj)
  centers = rng.uniform(0, img, (n_obj, 2))
  sizes = rng.uniform(16, 256, (n_obj, 2))
  k = rng.integers(0, n_obj, n)
  c = centers[k] + rng.normal(0, 0.1, (n, 2)) * sizes[k]
  wh = sizes[k] * np.exp(rng.normal(0, 0.2, (n, 2)))
  boxes = np.concatenate([c - wh / 2, c + wh / 2], axis=1).astype(np.float32)
  scores = rng.uniform(0, 1, n).astype(np.float32)
  return boxes, scores


def run(sizes=(1000, 5000, 20000), repeats: int = 30) -> list[dict]:
  import jax
  import torch
  import torchvision

  from jaxvision.ops.nms import batched_nms, nms

  env = environment()
  cases = []
  for n in sizes:
    for k in sorted({min(1000, n), n}):
      cases.append(("nms", n, k, None))
  cases.append(("batched_nms", 5000, 300, 80))
  cases.append(("batched_nms", 5000, 5000, 80))

  results = []
  for op, n, k, num_classes in cases:
    boxes, scores = make_boxes(n, seed=n)
    tb, ts = torch.from_numpy(boxes), torch.from_numpy(scores)
    jb, js = jax.device_put(boxes), jax.device_put(scores)
    if num_classes is None:
      fn = jax.jit(lambda b, s, k=k: nms(b, s, iou_threshold=0.5, max_output_size=k))
      args = (jb, js)
      torch_fn = lambda: torchvision.ops.nms(tb, ts, 0.5)  # noqa: E731
    else:
      classes = np.random.default_rng(n + 1).integers(0, num_classes, n).astype(np.int32)
      tc = torch.from_numpy(classes.astype(np.int64))
      fn = jax.jit(lambda b, s, c, k=k: batched_nms(b, s, c, iou_threshold=0.5, max_output_size=k))
      args = (jb, js, jax.device_put(classes))
      torch_fn = lambda: torchvision.ops.batched_nms(tb, ts, tc, 0.5)  # noqa: E731
    t0 = time.perf_counter()
    idx, valid = jax.block_until_ready(fn(*args))
    compile_s = time.perf_counter() - t0
    ref = torch_fn().numpy()[:k]
    identical = bool(np.array_equal(np.asarray(idx)[np.asarray(valid)], ref))
    jax_fn = lambda: jax.block_until_ready(fn(*args))  # noqa: E731
    reps = repeats if n * k < 5000 * 5000 else max(5, repeats // 3)
    t = time_interleaved({"jaxvision": jax_fn, "torchvision": torch_fn}, repeats=reps, warmup=3)
    jm, tm = t["jaxvision"]["median_ms"], t["torchvision"]["median_ms"]
    results.append({
        "benchmark": op, "num_boxes": n, "max_output_size": k, "num_classes": num_classes or 1,
        "iou_threshold": 0.5, "kept": int(np.asarray(valid).sum()),
        "torchvision_kept_total": int(torch_fn().shape[0]), "identical_keep": identical,
        "jaxvision_ms": round(jm, 4), "torchvision_ms": round(tm, 4),
        "ratio_torchvision_over_jaxvision": round(tm / jm, 2),
        "jaxvision_min_ms": t["jaxvision"]["min_ms"], "torchvision_min_ms": t["torchvision"]["min_ms"],
        "repeats": reps, "jaxvision_compile_s": round(compile_s, 2), **env,
    })
  return results


if __name__ == "__main__":
  for result in run():
    emit(result)
