"""Dense CRF (jaxvision.ops.crf): speed and accuracy of the permutohedral lattice against the brute
force, and whether the CRF helps segmentation on shapes. One JSON line per result.

Command: python benchmarks/crf.py [--quick] [--images 200] [--unet_steps 300]

1. ``crf_speed``: one mean-field run (5 iterations, 6 labels), permutohedral vs the dense ``N x N``
   brute force, on a shapes image subsampled to S x S (interleaved timing; the lattice build
   included), with the argmax agreement and mean |dQ| between the two (logits: noisy ground truth).
2. ``crf_miou``: validation-split mIoU without and with the CRF for
   * ``noisy_iid``: logits = 2 onehot(ground truth) + 1.5 N(0, 1) i.i.d. per pixel and class;
   * ``noisy_blob``: the same with the noise blurred by a Gaussian of 4 px and rescaled to std 1.5
     (spatially correlated errors: harder);
   * ``unet``: the logits of a small U-Net (depth 4, 8 features, BatchNorm, same padding) trained
     briefly (``--unet_steps``, batch 8, Adam 3e-3, class-weighted cross-entropy) on the train split.
   The CRF parameters are fixed in advance (``CRF`` below), not tuned on the evaluated images.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import emit, environment, time_interleaved  # noqa: E402

from jaxvision.data import shapes_gen  # noqa: E402
from jaxvision.data.transforms import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402
from jaxvision.eval.segmentation import confusion_matrix, segmentation_metrics  # noqa: E402
from jaxvision.ops import crf  # noqa: E402

CRF = dict(num_iters=5, sigma_alpha=20.0, sigma_beta=13.0, sigma_gamma=3.0, w_appearance=5.0,
           w_smoothness=3.0)
NUM_CLASSES = 6


def load(split, n):
  exs = [shapes_gen.generate_example(shapes_gen.example_seed(split, i), shapes_gen.SPEC_V1)
         for i in range(n)]
  return (np.stack([e["image"] for e in exs]).astype(np.float32),
          np.stack([e["segmentation"] for e in exs]).astype(np.int32))


def miou(segs, pred):
  cm = np.asarray(confusion_matrix(jnp.asarray(segs), jnp.asarray(pred), NUM_CLASSES), np.int64)
  return float(segmentation_metrics(cm)["mean_iou"])


def run_crf(logits, images, batch=8, **kw):
  fn = jax.jit(jax.vmap(functools.partial(crf.dense_crf, **{**CRF, **kw})))
  return np.concatenate([np.asarray(jnp.argmax(fn(logits[i:i + batch], images[i:i + batch]), -1))
                         for i in range(0, len(logits), batch)])


def speed(sizes, repeats):
  images, segs = load("validation", 1)
  for s in sizes:
    stride = 128 // s  # the whole image, subsampled, so every size has shapes in it
    img, seg = images[0, ::stride, ::stride], segs[0, ::stride, ::stride]
    rng = np.random.default_rng(0)
    logits = (2.0 * np.eye(NUM_CLASSES, dtype=np.float32)[seg]
              + 1.5 * rng.normal(size=(s, s, NUM_CLASSES)).astype(np.float32))
    fast = jax.jit(functools.partial(crf.dense_crf, **CRF))
    fns = {"permutohedral": lambda: jax.block_until_ready(fast(logits, img))}
    row = {"benchmark": "crf_speed", "size": s, "pixels": s * s}
    if s * s <= 64 * 64:
      brute = jax.jit(functools.partial(crf.dense_crf, method="brute_force", **CRF))
      fns["brute_force"] = lambda: jax.block_until_ready(brute(logits, img))
      qa, qb = fast(logits, img), brute(logits, img)
      row["argmax_agreement"] = float(jnp.mean(jnp.argmax(qa, -1) == jnp.argmax(qb, -1)))
      row["mean_abs_dq"] = float(jnp.mean(jnp.abs(qa - qb)))
    t = time_interleaved(fns, repeats=repeats, warmup=1)
    row.update({f"{k}_ms": v["median_ms"] for k, v in t.items()})
    if "brute_force" in t:
      row["ratio_brute_over_permutohedral"] = round(t["brute_force"]["median_ms"]
                                                    / t["permutohedral"]["median_ms"], 2)
    emit({**row, **environment()})


def blur_noise(noise, sigma):
  """Gaussian-blurred noise (per image and class), rescaled to unit standard deviation."""
  r = int(3 * sigma)
  k = np.exp(-np.arange(-r, r + 1) ** 2 / (2 * sigma**2))
  k /= k.sum()
  out = np.apply_along_axis(lambda v: np.convolve(v, k, mode="same"), 1, noise)
  out = np.apply_along_axis(lambda v: np.convolve(v, k, mode="same"), 2, out)
  return out / out.std()


def train_unet(steps, seed=0):
  import optax  # noqa: PLC0415

  from jaxvision.models.segmentation import unet  # noqa: PLC0415

  family = unet.make_unet({"padding": "SAME", "depth": 4, "base_features": 8, "norm": "batch",
                           "class_weights": (0.064, 0.649, 0.999, 1.537, 1.494, 1.001)},
                          NUM_CLASSES)
  train_x, train_y = load("train", min(steps * 8, 2000))
  norm = lambda x: (x / 255.0 - np.asarray(IMAGENET_MEAN)) / np.asarray(IMAGENET_STD)  # noqa: E731
  train_x = norm(train_x).astype(np.float32)
  variables = jax.jit(functools.partial(family.module.init, train=False))(
      jax.random.key(seed, impl="rbg"), train_x[:1])
  params, stats = variables["params"], variables["batch_stats"]
  tx = optax.adam(3e-3)
  opt = tx.init(params)

  @jax.jit
  def step(params, stats, opt, x, y):
    def loss_fn(p):
      out, mut = family.module.apply({"params": p, "batch_stats": stats}, x, train=True,
                                     mutable=["batch_stats"])
      return family.loss(out, {"segmentation": y})[0], mut["batch_stats"]
    (loss, stats), g = jax.value_and_grad(loss_fn, has_aux=True)(params)
    upd, opt = tx.update(g, opt, params)
    return optax.apply_updates(params, upd), stats, opt, loss

  t = time.time()
  for i in range(steps):
    idx = np.arange(i * 8, i * 8 + 8) % len(train_x)
    params, stats, opt, loss = step(params, stats, opt, train_x[idx], train_y[idx])
  apply = jax.jit(lambda x: family.module.apply({"params": params, "batch_stats": stats}, x,
                                                train=False)["logits"])
  return (lambda images: np.concatenate([np.asarray(apply(norm(images[i:i + 20]).astype(
      np.float32))) for i in range(0, len(images), 20)])), float(loss), time.time() - t


def quality(n_val, unet_steps):
  images, segs = load("validation", n_val)
  rng = np.random.default_rng(0)
  onehot = np.eye(NUM_CLASSES, dtype=np.float32)[segs]
  cases = {"noisy_iid": 2.0 * onehot + 1.5 * rng.normal(size=onehot.shape).astype(np.float32),
           "noisy_blob": 2.0 * onehot + 1.5 * blur_noise(
               rng.normal(size=onehot.shape).astype(np.float32), 4.0).astype(np.float32)}
  for name, logits in cases.items():
    emit({"benchmark": "crf_miou", "logits": name, "images": n_val, "crf": CRF,
          "miou_without_crf": miou(segs, logits.argmax(-1)),
          "miou_with_crf": miou(segs, run_crf(logits, images)), **environment()})
  if unet_steps:
    predict, last_loss, secs = train_unet(unet_steps)
    logits = predict(images)
    emit({"benchmark": "crf_miou", "logits": "unet", "unet_steps": unet_steps,
          "unet_last_loss": round(last_loss, 4), "unet_train_s": round(secs, 1), "images": n_val,
          "crf": CRF, "miou_without_crf": miou(segs, logits.argmax(-1)),
          "miou_with_crf": miou(segs, run_crf(logits, images)), **environment()})


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--quick", action="store_true", help="small sizes, 40 images, no U-Net")
  p.add_argument("--part", choices=("all", "speed", "quality"), default="all")
  p.add_argument("--unet_steps", type=int, default=300)
  p.add_argument("--images", type=int, default=200, help="validation images for the mIoU")
  args = p.parse_args()
  if args.part in ("all", "speed"):
    speed([32, 64] if args.quick else [32, 64, 128], repeats=3 if args.quick else 5)
  if args.part in ("all", "quality"):
    quality(40 if args.quick else args.images, 0 if args.quick else args.unet_steps)


if __name__ == "__main__":
  main()
