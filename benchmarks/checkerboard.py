"""Checkerboard artefacts of 2x upsamplers (Odena, Dumoulin and Olah, "Deconvolution and Checkerboard
Artifacts", Distill 2016), measured side by side in one run.

Upsamplers (``jaxvision.models.layers.upsample.Upsample2x``): transposed convolution 3x3 stride 2
(kernel not divisible by the stride: uneven overlap), transposed convolution 4x4 stride 2 (even
overlap), resize-conv (nearest 2x resize then 3x3 convolution: the paper's remedy), sub-pixel
convolution (pixel shuffle), and fixed bilinear resizing as an artefact-free reference.

Measure: the **period-2 energy** of an output ``y`` (``[B, H, W, C]``, ``H, W`` even), the fraction
of its non-DC spectral power on the Nyquist lines ``|f_x| = 1/2`` or ``|f_y| = 1/2`` cycles/pixel:
exactly the patterns that repeat every 2 pixels (the checkerboard and its row/column stripes). An
image upsampled from half resolution has no content there, so whatever sits there the upsampler
made.

* ``untrained``: 32 random initialisations (Flax's default initialisers) of a one-layer upsampler
  (8 -> 8 channels) on a **constant** input (all ones, 16 x 16): an artefact-free upsampler gives a
  constant output, so ``ac_over_dc`` (output power off DC / power at DC) and the period-2 fraction of
  that AC power show the artefact directly; and on a smooth random input.
* ``trained``: a small 2x super-resolution network (3x3 conv 3 -> 32, ReLU, the upsampler 32 -> 32,
  ReLU, 3x3 conv 32 -> 3) trained with Adam on ``shapes`` images (128 px, downsampled 2x by 2x2
  averaging) for ``--steps`` steps to reproduce the full-resolution image; on 64 validation images:
  the period-2 energy of the output in excess of the target's (the target's own is printed too) and
  the PSNR.

One JSON line per (setting, upsampler); ``--png`` writes a picture: for each upsampler, the
untrained output on a constant input (one initialisation, one channel) and the trained network's
output on a validation crop, next to the target.

    python benchmarks/checkerboard.py [--steps 300] [--png benchmarks/checkerboard.png]
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from _common import emit, environment  # noqa: E402

from jaxvision.models.layers.upsample import Upsample2x  # noqa: E402

UPSAMPLERS = {
    "transposed_3x3_s2": dict(method="transposed", kernel_size=3),
    "transposed_4x4_s2": dict(method="transposed", kernel_size=4),
    "resize_conv": dict(method="resize_conv"),
    "pixel_shuffle": dict(method="pixel_shuffle"),
    "bilinear": dict(method="bilinear"),
}


def period2_energy(y) -> np.ndarray:
  """Per image: power on the Nyquist lines / all non-DC power (``y``: ``[B, H, W, C]``, even H, W)."""
  y = np.asarray(y, np.float64)
  b, h, w, _ = y.shape
  if h % 2 or w % 2:
    raise ValueError(f"period2_energy needs an even height and width, got {(h, w)}.")
  p = np.abs(np.fft.fft2(y, axes=(1, 2))) ** 2  # (B, H, W, C)
  p = p.sum(axis=-1)
  nyquist = np.zeros((h, w), bool)
  nyquist[h // 2, :] = True
  nyquist[:, w // 2] = True
  ac = p.reshape(b, -1).sum(axis=1) - p[:, 0, 0]
  return p[:, nyquist].sum(axis=1) / np.maximum(ac, 1e-30)


def ac_over_dc(y) -> np.ndarray:
  y = np.asarray(y, np.float64)
  mean = y.mean(axis=(1, 2), keepdims=True)
  return ((y - mean) ** 2).sum(axis=(1, 2, 3)) / np.maximum((mean ** 2).sum(axis=(1, 2, 3)) *
                                                             y.shape[1] * y.shape[2], 1e-30)


class Upsampler(nn.Module):
  spec: dict
  features: int

  @nn.compact
  def __call__(self, x):
    h, w = x.shape[1:3]
    features = None if self.spec["method"] == "bilinear" else self.features
    return Upsample2x(features=features, **self.spec)(x, (2 * h, 2 * w))


class SuperResolution(nn.Module):
  spec: dict
  width: int = 32

  @nn.compact
  def __call__(self, x):
    y = nn.relu(nn.Conv(self.width, (3, 3), padding="SAME")(x))
    y = nn.relu(Upsampler(self.spec, self.width)(y))
    return nn.Conv(x.shape[-1], (3, 3), padding="SAME")(y)


def smooth_field(rng: np.random.Generator, shape) -> np.ndarray:
  """Low-pass random field: white noise blurred by a 5x5 binomial filter (wrap-around)."""
  x = rng.normal(size=shape)
  k = np.array([1, 4, 6, 4, 1], np.float64) / 16
  for axis in (1, 2):
    x = sum(k[i] * np.roll(x, i - 2, axis=axis) for i in range(5))
  return x.astype(np.float32)


def untrained(name: str, spec: dict, inits: int, seed: int) -> list[dict]:
  module = Upsampler(spec, 8)
  results = []
  for kind in ("constant", "smooth"):
    x = (np.ones((1, 16, 16, 8), np.float32) if kind == "constant" else
         smooth_field(np.random.default_rng(seed), (1, 16, 16, 8)))
    outs = []
    for i in range(inits):
      variables = module.init(jax.random.key(seed + i), x)
      outs.append(np.asarray(module.apply(variables, x)))
    y = np.concatenate(outs)  # (inits, 32, 32, 8)
    r = {"benchmark": "checkerboard", "setting": f"untrained_{kind}_input", "upsampler": name,
         "inits": inits, "period2_energy": round(float(period2_energy(y).mean()), 5)}
    if kind == "constant":
      r["ac_over_dc"] = round(float(ac_over_dc(y).mean()), 5)
    results.append(r)
  return results


def shapes_images(split: str, n: int, data_dir: str | None) -> np.ndarray:
  from jaxvision.data import pipeline  # noqa: PLC0415

  source, _ = pipeline.shapes_source(split, data_dir)
  return np.stack([np.asarray(source[i]["image"], np.float32) / 255.0 for i in range(n)])


def downsample2(x):
  b, h, w, c = x.shape
  return x.reshape(b, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))


def trained(name: str, spec: dict, train_images, val_images, steps: int, batch: int, seed: int):
  model = SuperResolution(spec)
  params = model.init(jax.random.key(seed), downsample2(train_images[:1]))
  tx = optax.adam(optax.cosine_decay_schedule(2e-3, steps))
  opt_state = tx.init(params)

  @jax.jit
  def step(params, opt_state, hi):
    def loss_fn(p):
      return jnp.mean((model.apply(p, downsample2(hi)) - hi) ** 2)
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  rng = np.random.default_rng(seed)
  t0 = time.perf_counter()
  losses = []
  for _ in range(steps):
    idx = rng.choice(len(train_images), batch, replace=False)
    params, opt_state, loss = step(params, opt_state, jnp.asarray(train_images[idx]))
    losses.append(float(loss))
  seconds = time.perf_counter() - t0
  out = np.asarray(jax.jit(model.apply)(params, downsample2(val_images)))
  mse = float(np.mean((out - val_images) ** 2))
  e_out, e_target = period2_energy(out), period2_energy(val_images)
  result = {"benchmark": "checkerboard", "setting": "trained_super_resolution", "upsampler": name,
            "steps": steps, "batch": batch, "val_images": len(val_images),
            "period2_energy": round(float(e_out.mean()), 5),
            "target_period2_energy": round(float(e_target.mean()), 5),
            "period2_excess": round(float((e_out - e_target).mean()), 5),
            "psnr_db": round(10 * np.log10(1.0 / mse), 2),
            "final_loss": round(float(np.mean(losses[-20:])), 5), "train_s": round(seconds, 1)}
  return result, out


def main(argv=None) -> list[dict]:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=300)
  parser.add_argument("--batch", type=int, default=16)
  parser.add_argument("--inits", type=int, default=32)
  parser.add_argument("--train_images", type=int, default=512)
  parser.add_argument("--val_images", type=int, default=64)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--data_dir", default=None)
  parser.add_argument("--png", default=None, help="write the picture here")
  args = parser.parse_args(argv)
  env = environment()
  results, pictures = [], {}
  for name, spec in UPSAMPLERS.items():
    for r in untrained(name, spec, args.inits, args.seed):
      results.append(r)
      emit({**r, **env})
  train_images = shapes_images("train", args.train_images, args.data_dir)
  val_images = shapes_images("validation", args.val_images, args.data_dir)
  for name, spec in UPSAMPLERS.items():
    r, out = trained(name, spec, train_images, val_images, args.steps, args.batch, args.seed)
    results.append(r)
    pictures[name] = out[0]
    emit({**r, **env})
  if args.png:
    save_picture(args.png, pictures, val_images[0], args.seed)
  return results


def save_picture(path: str, trained_out: dict, target, seed: int) -> None:
  import matplotlib  # noqa: PLC0415

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # noqa: PLC0415

  names = list(UPSAMPLERS)
  fig, axes = plt.subplots(2, len(names) + 1, figsize=(2.6 * (len(names) + 1), 5.6))
  x = np.ones((1, 16, 16, 8), np.float32)
  for j, name in enumerate(names):
    module = Upsampler(UPSAMPLERS[name], 8)
    y = np.asarray(module.apply(module.init(jax.random.key(seed), x), x))[0, :, :, 0]
    axes[0, j].imshow(y, cmap="gray")
    axes[0, j].set_title(f"{name}\nuntrained, constant input", fontsize=8)
    crop = np.clip(trained_out[name][32:96, 32:96], 0, 1)
    axes[1, j].imshow(crop)
    axes[1, j].set_title(f"{name}\ntrained 2x SR (crop)", fontsize=8)
  axes[0, -1].axis("off")
  axes[1, -1].imshow(target[32:96, 32:96])
  axes[1, -1].set_title("target (crop)", fontsize=8)
  for ax in axes.ravel():
    ax.set_xticks([])
    ax.set_yticks([])
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


if __name__ == "__main__":
  main()
