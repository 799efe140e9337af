# Source of colab/semantic_segmentation.ipynb: edit this file, then run `python colab/build.py`.

# %% [markdown]
# # Semantic segmentation with jaxvision
#
# 1. **FCN-32s / 16s / 8s** (Long, Shelhamer and Darrell, CVPR 2015) trained side by side on `shapes`:
#    the skip connections from pool4 and pool3 sharpen the coarse stride-32 prediction.
# 2. **SegNet's max unpooling** (Badrinarayanan et al., TPAMI 2017) on a toy array.
# 3. **Dense CRF** refinement (Krähenbühl and Koltun, NIPS 2011) of a noisy prediction, before/after.
# 4. **Checkerboard artefacts** of transposed convolutions against resize-convolution (Odena et al.,
#    Distill 2016).
# 5. **Adversarial training** (Luc et al., 2016): the hybrid loss, and a run on an accelerator.
#
# Small mode (CPU, or `JAXVISION_NOTEBOOK_SMALL=1`) trains FCN-32s and FCN-8s (not 16s) for a few
# dozen steps on 64 x 64 images and skips the adversarial run: enough to run every cell, far too
# short for useful masks (they stay background). A GPU/TPU runtime trains all of them for longer.

# %% [include _setup.py]

# %% [markdown]
# ## 1. FCN-32s, FCN-16s and FCN-8s side by side
#
# The three configs differ only in `model.variant`: FCN-32s upsamples the stride-32 class scores by
# 32 in one learned (bilinear-initialised) transposed convolution; FCN-16s first fuses them with
# scores from pool4 (stride 16), FCN-8s also with pool3 (stride 8).

# %%
from configs import fcn8s_shapes, fcn16s_shapes, fcn32s_shapes
from jaxvision import viz
from jaxvision.data import pipeline
from jaxvision.predict import Predictor
from jaxvision.train import loop

steps = by_runtime(small=25, cpu=300, gpu=2000, tpu=2000)
variants = {"FCN-32s": fcn32s_shapes, "FCN-16s": fcn16s_shapes, "FCN-8s": fcn8s_shapes}
if SMALL:  # each model costs a compilation of its training step; small mode keeps the extremes
  del variants["FCN-16s"]
fcn = {}
for name, module in variants.items():
  config = module.get_config()
  config.data.data_dir = DATA_DIR
  config.data.batch_size = global_batch(8)
  config.train.steps = steps
  config.optim.warmup_steps = min(config.optim.warmup_steps, steps // 10)
  config.train.eval_every = config.train.checkpoint_every = steps
  config.train.log_every = max(steps // 10, 1)
  if SMALL:
    config.data.image_size = (64, 64)
  workdir = os.path.join(WORKDIR, name)
  metrics = loop.train_and_evaluate(config, workdir)
  fcn[name] = (metrics, Predictor.from_workdir(workdir, batch_size=2))
  print(f"{name}: validation mIoU {metrics['mean_iou']:.3f}, "
        f"pixel accuracy {metrics['pixel_accuracy']:.3f}")

# %%
source, info = pipeline.shapes_source("validation", DATA_DIR)
examples = [pipeline.decode_shapes(source[i]) for i in (0, 1)]
names = list(fcn)
fig, axes = plt.subplots(len(examples), len(names) + 2, figsize=(2.6 * (len(names) + 2),
                                                                  2.6 * len(examples)))
for row, ex in zip(axes, examples):
  row[0].imshow(ex["image"])
  row[0].set_title("image")
  for ax, name in zip(row[1:], names):
    seg = fcn[name][1]([ex["image"]])[0]["segmentation"]
    ax.imshow(viz.colorize(seg, info.num_seg_classes))
    ax.set_title(f"{name} (mIoU {fcn[name][0]['mean_iou']:.2f})", fontsize=9)
  row[-1].imshow(viz.colorize(ex["segmentation"], info.num_seg_classes))
  row[-1].set_title("ground truth")
  for ax in row:
    ax.axis("off")
plt.tight_layout()
plt.show()

# %% [markdown]
# ## 2. SegNet: max unpooling with the encoder's pooling indices
#
# SegNet's encoder stores *where* each 2 x 2 max came from; its decoder puts every value back at
# that position and leaves zeros elsewhere (a sparse map that the following convolutions densify).
# Nothing else crosses from encoder to decoder, unlike U-Net's skip connections.
# `ops.unpool.max_pool_with_argmax` returns PyTorch's flat `row * W + col` indices.

# %%
from jaxvision.ops import unpool

x = jnp.array([[1., 5., 2., 0.],
               [3., 4., 8., 1.],
               [0., 2., 1., 7.],
               [9., 1., 3., 6.]])[None, :, :, None]  # [B, H, W, C]
pooled, indices = unpool.max_pool_with_argmax(x, 2)
decoded = pooled * 10  # stand-in for the decoder's features at the pooled size
panels = {"encoder input": x, "max pooled": pooled,
          "max_unpool(indices)": unpool.max_unpool(decoded, indices, (4, 4)),
          "nearest unpool": unpool.nearest_unpool(decoded, 2)}
print("pooled", pooled[0, :, :, 0].tolist(), "indices", indices[0, :, :, 0].tolist())
fig, axes = plt.subplots(1, len(panels), figsize=(11, 3))
for ax, (title, a) in zip(axes, panels.items()):
  a = np.asarray(a)[0, :, :, 0]
  ax.imshow(a, cmap="Blues")
  for (r, c), v in np.ndenumerate(a):
    ax.text(c, r, f"{v:g}", ha="center", va="center")
  ax.set_title(title)
  ax.axis("off")
plt.show()

# %% [markdown]
# `configs/segnet_shapes.py` trains SegNet on `shapes`; `model.upsampling` swaps the unpooling for
# the other decoders of the paper's comparison (`nearest`, `bilinear`, `transposed`, ...).
#
# ## 3. Dense CRF refinement, before and after
#
# A fully connected CRF with Gaussian edge potentials pulls labels toward regions of similar colour
# and position (mean-field inference, permutohedral-lattice filtering, `ops.crf.dense_crf`). Here the
# "network output" is the ground truth plus strong i.i.d. noise, on validation images.

# %%
from jaxvision.eval import segmentation as seg_metrics
from jaxvision.ops import crf

n_crf = by_runtime(small=4, cpu=20, gpu=100)
ims = np.stack([pipeline.decode_shapes(source[i])["image"] for i in range(n_crf)])
gts = np.stack([pipeline.decode_shapes(source[i])["segmentation"] for i in range(n_crf)])
rng = np.random.default_rng(0)
noisy = (2.0 * np.eye(info.num_seg_classes, dtype=np.float32)[gts]
         + 1.5 * rng.normal(size=gts.shape + (info.num_seg_classes,)).astype(np.float32))
refine = jax.jit(jax.vmap(lambda logits, image: crf.dense_crf(
    logits, image, num_iters=5, sigma_alpha=20.0, sigma_beta=13.0, sigma_gamma=3.0,
    w_appearance=5.0, w_smoothness=3.0)))
q = refine(noisy, ims.astype(np.float32))
before, after = noisy.argmax(-1), np.asarray(q).argmax(-1)


def miou(pred):
  cm = seg_metrics.confusion_matrix(gts, pred, info.num_seg_classes)
  return seg_metrics.segmentation_metrics(np.asarray(cm))["mean_iou"]


print(f"{n_crf} images: mIoU {miou(before):.3f} without the CRF, {miou(after):.3f} with it")
fig, axes = plt.subplots(1, 4, figsize=(11, 3))
for ax, (title, im) in zip(axes, [("image", ims[0]),
                                  ("noisy prediction", viz.colorize(before[0], 6)),
                                  ("after dense CRF", viz.colorize(after[0], 6)),
                                  ("ground truth", viz.colorize(gts[0], 6))]):
  ax.imshow(im)
  ax.set_title(title)
  ax.axis("off")
plt.show()

# %% [markdown]
# ## 4. Checkerboard artefacts: transposed convolution vs resize-convolution
#
# A stride-2 transposed convolution whose kernel size (3) is not a multiple of the stride overlaps
# unevenly: some output pixels receive 1 kernel tap, others 2 or 4. Even with all-ones weights a
# *constant* input comes out as a checkerboard. Resizing first (nearest neighbour) and then
# convolving gives every output pixel the same number of taps (Odena et al. 2016). The same holds for
# the randomly initialised layers of `models.layers.upsample.Upsample2x`, averaged over 64 draws.

# %%
from jaxvision.models.layers.upsample import Upsample2x

const = jnp.ones((1, 8, 8, 1))


def upsampled(method, params=None, key=0):
  layer = Upsample2x(method=method, features=1, kernel_size=3)
  variables = layer.init(jax.random.PRNGKey(key), const, (16, 16))
  if params == "ones":
    variables = jax.tree.map(lambda p: jnp.ones_like(p) if p.ndim == 4 else jnp.zeros_like(p),
                             variables)
  return np.asarray(layer.apply(variables, const, (16, 16)))[0, :, :, 0]


pictures = {
    "transposed, ones": upsampled("transposed", "ones"),
    "resize-conv, ones": upsampled("resize_conv", "ones"),
    "transposed, |random| mean": np.mean([np.abs(upsampled("transposed", key=k))
                                          for k in range(64)], 0),
    "resize-conv, |random| mean": np.mean([np.abs(upsampled("resize_conv", key=k))
                                           for k in range(64)], 0),
}
fig, axes = plt.subplots(1, 4, figsize=(12, 3))
for ax, (title, im) in zip(axes, pictures.items()):
  ax.imshow(im[2:-2, 2:-2], cmap="magma", vmin=0)  # the interior (borders see zero padding)
  ax.set_title(title, fontsize=9)
  ax.axis("off")
plt.show()
print("interior values, transposed:", sorted(set(np.round(pictures["transposed, ones"][2:-2, 2:-2]
                                                            .ravel(), 3))),
      "resize-conv:", sorted(set(np.round(pictures["resize-conv, ones"][2:-2, 2:-2].ravel(), 3))))

# %% [markdown]
# ## 5. Adversarial training
#
# Luc et al. add a discriminator that tells ground-truth label maps from predicted ones (given the
# image) and train the segmentor on `multi-class CE + lambda * adversarial` (`losses.
# hybrid_segmentation_loss`), alternating the two players' updates (`configs/adversarial_shapes.py`).
# On toy tensors the hybrid loss is the cross-entropy plus the weighted non-saturating term:

# %%
from jaxvision import losses

seg_logits = jnp.asarray(rng.normal(size=(2, 8, 8, 6)), jnp.float32)
labels = jnp.asarray(rng.integers(0, 6, size=(2, 8, 8)))
disc_on_fake = jnp.array([-1.0, 0.5])  # discriminator logits for the two predicted maps
for w in (0.0, 0.1, 1.0):
  total, terms = losses.hybrid_segmentation_loss(seg_logits, labels, disc_on_fake, adv_weight=w)
  print(f"lambda {w}: total {float(total):.4f} = ce {float(terms['ce']):.4f} "
        f"+ {w} x adv {float(terms['adv']):.4f}")

# %% [markdown]
# A short adversarial run (skipped in small mode: it compiles a second network and two alternating
# steps). The README notes that at small budgets the adversarial term has not shown a gain on
# `shapes` yet.

# %%
if SMALL:
  print("small mode: skipped; on a GPU/TPU runtime this trains configs/adversarial_shapes.py")
else:
  from configs import adversarial_shapes

  config = adversarial_shapes.get_config()
  config.data.data_dir = DATA_DIR
  config.data.batch_size = global_batch(8)
  config.train.steps = by_runtime(small=0, cpu=400, gpu=2000)
  config.train.eval_every = config.train.checkpoint_every = config.train.steps
  adv_dir = os.path.join(WORKDIR, "adversarial")
  print(loop.train_and_evaluate(config, adv_dir)["mean_iou"])
  viz.plot_training_curves(adv_dir, train_keys=("loss",))
  plt.show()
