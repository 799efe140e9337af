"""Benchmark: RetinaNet anchor matching (and RPN anchor sampling), jaxvision vs torchvision.

RetinaNet (Lin et al. 2017) anchors for one padded 800 x 1344 input: FPN levels P3-P7 (strides 8-128),
9 anchors per location (3 scales x 3 aspect ratios), 201,600 anchors; 100 gt boxes per image; batch 8.

* jaxvision: ``jax.jit(jax.vmap(RETINANET_MATCHER.match_boxes))`` over the batch, median (and min) of
  repeated calls after a warm-up (compilation excluded), ``block_until_ready``.
* torchvision: per image in a Python loop, ``box_iou`` then ``Matcher(0.5, 0.4,
  allow_low_quality_matches=True)`` (what ``torchvision.models.detection.RetinaNet`` does).

Also 800 x 800 (120,087 anchors), and RPN-style balanced sampling (256 anchors, half positive) of
the matched labels: ``vmap(sample_balanced)`` vs torchvision's ``BalancedPositiveNegativeSampler``.

The two contenders are timed in turns within each repeat, so both see the same load on a shared
machine. Each result is one JSON line with the median times, ``ratio = torchvision_s / jaxvision_s`` (> 1:
jaxvision faster), the versions and the device. Both sides also agree-check their outputs on the
benchmark data (``labels_agree``: fraction of anchors with the same label). Run with an environment
that has jax, jaxvision, torch and torchvision::

    python benchmarks/bench_matching.py [--repeats 10]
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxvision.ops import anchors as anchors_lib
from jaxvision.ops import matching, sampling

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from _common import emit, environment, time_interleaved  # noqa: E402

def retinanet_anchors(image_hw: tuple[int, int]) -> np.ndarray:
  """``[A, 4]`` anchors of torchvision's ``retinanet_resnet50_fpn`` for one padded input (P3-P7).

  Feature maps are ``ceil(size / stride)`` (ResNet + FPN's stride-2 P6/P7 convs round up), and the
  strides torchvision's ``AnchorGenerator`` derives from them.
  """
  level_shapes = [(-(-image_hw[0] // s), -(-image_hw[1] // s)) for s in anchors_lib.RETINANET_STRIDES]
  strides = anchors_lib.torchvision_strides(image_hw, level_shapes)
  anchors, _ = anchors_lib.retinanet_anchors(level_shapes, strides, torchvision=True)
  return np.array(anchors)  # a writable copy (torch.from_numpy warns on read-only arrays)


def random_gt(rng, batch: int, num_gt: int, image_hw: tuple[int, int]) -> np.ndarray:
  """``[B, G, 4]`` gt boxes with sides of 16-400 px inside the image."""
  h, w = image_hw
  wh = rng.uniform(16, 400, size=(batch, num_gt, 2))
  x1 = rng.uniform(0, w - wh[..., 0])
  y1 = rng.uniform(0, h - wh[..., 1])
  return np.stack([x1, y1, x1 + wh[..., 0], y1 + wh[..., 1]], axis=-1).astype(np.float32)


def _interleaved_times(fns: dict, repeats: int) -> dict:
  """``{name: (median_s, min_s)}`` from ``_common.time_interleaved`` (milliseconds there)."""
  t = time_interleaved(fns, repeats=repeats)
  return {name: (v["median_ms"] / 1e3, v["min_ms"] / 1e3) for name, v in t.items()}


def bench_retinanet_match(image_hw, num_gt: int = 100, batch: int = 8, repeats: int = 10) -> dict:
  rng = np.random.default_rng(0)
  anchors = retinanet_anchors(image_hw)
  gt = random_gt(rng, batch, num_gt, image_hw)
  valid = np.ones((batch, num_gt), bool)

  match = jax.jit(jax.vmap(matching.RETINANET_MATCHER.match_boxes, in_axes=(None, 0, 0)))
  anchors_j, gt_j, valid_j = jnp.asarray(anchors), jnp.asarray(gt), jnp.asarray(valid)
  t0 = time.perf_counter()
  jax.block_until_ready(match(anchors_j, gt_j, valid_j))
  compile_s = time.perf_counter() - t0

  def jax_fn():
    return jax.block_until_ready(match(anchors_j, gt_j, valid_j))

  result = {
      "benchmark": "retinanet_anchor_matching", "image_hw": list(image_hw),
      "num_anchors": int(anchors.shape[0]), "num_gt": num_gt, "batch": batch, "repeats": repeats,
      "jaxvision_first_call_s": compile_s,
  }
  try:
    import torch
    from torchvision.models.detection import _utils as det_utils
    from torchvision.ops import box_iou
  except ImportError:
    (jax_s, jax_min), = _interleaved_times({"jax": jax_fn}, repeats).values()
    result.update(jaxvision_s=jax_s, jaxvision_min_s=jax_min, torchvision_s=None, ratio=None)
    return result

  matcher = det_utils.Matcher(0.5, 0.4, allow_low_quality_matches=True)
  anchors_t = torch.from_numpy(anchors)
  gts_t = [torch.from_numpy(g) for g in gt]

  def tv():
    with torch.no_grad():
      return [matcher(box_iou(g, anchors_t)) for g in gts_t]

  times = _interleaved_times({"jax": jax_fn, "tv": tv}, repeats)
  (jax_s, jax_min), (tv_s, tv_min) = times["jax"], times["tv"]
  # Agreement on this data (labels everywhere, matched gt where positive).
  matched, labels = jax.device_get(match(anchors_j, gt_j, valid_j))
  tv_out = np.stack([m.numpy() for m in tv()])
  tv_labels = np.where(tv_out >= 0, 1, np.where(tv_out == -1, 0, -1))
  pos = tv_labels == 1
  result.update(
      jaxvision_s=jax_s, jaxvision_min_s=jax_min, torchvision_s=tv_s, torchvision_min_s=tv_min,
      ratio=tv_s / jax_s, labels_agree=float((labels == tv_labels).mean()),
      matched_agree_on_positives=float((matched[pos] == tv_out[pos]).mean()) if pos.any() else None,
      num_positive_per_image=float(pos.sum() / batch))
  return result


def bench_rpn_sampling(image_hw, num_gt: int = 100, batch: int = 8, repeats: int = 10) -> dict:
  """sample_balanced(256, 0.5) on RPN-labelled RetinaNet-sized anchor sets."""
  rng = np.random.default_rng(1)
  anchors = retinanet_anchors(image_hw)
  gt = random_gt(rng, batch, num_gt, image_hw)
  _, labels = jax.jit(jax.vmap(matching.RPN_MATCHER.match_boxes, in_axes=(None, 0, 0)))(
      jnp.asarray(anchors), jnp.asarray(gt), jnp.ones((batch, num_gt), bool))
  labels = labels.astype(jnp.int32)
  keys = jax.random.split(jax.random.key(0), batch)
  sample = jax.jit(jax.vmap(lambda k, l: sampling.sample_balanced(
      k, l, num_samples=256, positive_fraction=0.5)))

  def jax_fn():
    return jax.block_until_ready(sample(keys, labels))

  result = {"benchmark": "rpn_balanced_sampling", "image_hw": list(image_hw),
            "num_anchors": int(anchors.shape[0]), "batch": batch, "num_samples": 256,
            "positive_fraction": 0.5, "repeats": repeats}
  try:
    import torch
    from torchvision.models.detection import _utils as det_utils
  except ImportError:
    (jax_s, jax_min), = _interleaved_times({"jax": jax_fn}, repeats).values()
    result.update(jaxvision_s=jax_s, jaxvision_min_s=jax_min, torchvision_s=None, ratio=None)
    return result
  sampler = det_utils.BalancedPositiveNegativeSampler(256, 0.5)
  labels_t = [torch.from_numpy(np.array(l)).long() for l in labels]
  times = _interleaved_times({"jax": jax_fn, "tv": lambda: sampler(labels_t)}, repeats)
  (jax_s, jax_min), (tv_s, tv_min) = times["jax"], times["tv"]
  result.update(jaxvision_s=jax_s, jaxvision_min_s=jax_min, torchvision_s=tv_s,
                torchvision_min_s=tv_min, ratio=tv_s / jax_s)
  return result


def run(repeats: int = 10) -> list[dict]:
  """Runs every benchmark; returns one dict per result (versions and device included)."""
  results = []
  for hw in ((800, 1344), (800, 800)):
    results.append(bench_retinanet_match(hw, repeats=repeats))
  results.append(bench_rpn_sampling((800, 1344), repeats=repeats))
  env = environment()
  for r in results:
    r.update(env)
  return results


if __name__ == "__main__":
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--repeats", type=int, default=10)
  args = parser.parse_args()
  for res in run(repeats=args.repeats):
    emit(res)
