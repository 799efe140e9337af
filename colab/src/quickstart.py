# Source of colab/quickstart.ipynb: edit this file, then run `python colab/build.py`.

# %% [markdown]
# # jaxvision quickstart: a U-Net on the built-in `shapes` dataset
#
# This notebook trains the README's default experiment (`configs/unet_shapes.py`: a U-Net, Ronneberger
# et al. 2015) with `jaxvision.train.loop.train_and_evaluate`, plots its training curves from the run's
# `metrics.jsonl`, and looks at its predictions with `jaxvision.predict.Predictor` and `jaxvision.viz`.
#
# * **Data**: `shapes`, 128 x 128 procedural images of 5 shape classes (circle, square, triangle, star,
#   cross) with clutter and occlusion, generated on your machine: no download.
# * **Runtime**: the first cell detects TPU, GPU or CPU and scales the run. On a CPU (or with
#   `JAXVISION_NOTEBOOK_SMALL=1`) the notebook runs in *small mode*: a short run on 64 x 64 images that
#   finishes in about a minute and only shows that everything works; a GPU or TPU runtime
#   (Runtime > Change runtime type) trains long enough to give a useful model.
#
# The same run from a shell: `python train.py --config configs/unet_shapes.py --workdir runs/unet`.

# %% [include _setup.py]

# %% [markdown]
# ## The experiment config
#
# An experiment is one `ml_collections.ConfigDict` with sections `data`, `model`, `optim`, `train`
# and `eval` (`configs/common/base.py`). `configs/unet_shapes.py` is the U-Net; any key can be changed
# before training, exactly like `--config.train.steps=...` on the command line.

# %%
from configs import unet_shapes

config = unet_shapes.get_config()
config.data.data_dir = DATA_DIR
config.train.steps = by_runtime(small=60, cpu=600, gpu=2000, tpu=2000)
config.data.batch_size = global_batch(8)
if SMALL:
  config.data.image_size = (64, 64)  # images are resized (keeping the aspect ratio) and padded
  config.model.depth = 3  # a 64 px image needs fewer down-sampling steps
config.optim.warmup_steps = min(config.optim.warmup_steps, config.train.steps // 10)
config.train.log_every = max(config.train.steps // 30, 1)
config.train.eval_every = max(config.train.steps // 3, 1)  # three points on the evaluation curve
config.train.checkpoint_every = config.train.steps
print({k: config.model[k] for k in ("name", "depth", "base_features", "norm", "upsampling")},
      "steps", config.train.steps, "image size", config.data.image_size)

# %% [markdown]
# ## Train
#
# `train_and_evaluate(config, workdir)` builds the data pipeline, the model family and the optimizer,
# trains on every device with data parallelism, evaluates on the 200 validation images every
# `eval_every` steps and writes `config.json`, `metrics.jsonl`, TensorBoard events and checkpoints into
# the workdir. Running it again on the same workdir resumes from the last checkpoint.

# %%
from jaxvision.train import loop

unet_dir = os.path.join(WORKDIR, "unet")
final = loop.train_and_evaluate(config, unet_dir)
print({k: round(float(final[k]), 4) for k in ("mean_iou", "pixel_accuracy")})
print(sorted(os.listdir(unet_dir)))

# %% [markdown]
# ## Training curves
#
# `viz.plot_training_curves` reads the workdir's `metrics.jsonl`: the training loss on the left, the
# validation metrics (mean IoU and pixel accuracy) on the right.

# %%
from jaxvision import viz

fig = viz.plot_training_curves(unet_dir)
plt.show()

# %% [markdown]
# ## Predictions
#
# `Predictor.from_workdir` loads the run's config and its latest checkpoint; it takes raw images of any
# size and returns label maps at the image's own size. Below: validation images, the predicted label
# map and the ground truth, with the colour legend of the classes.

# %%
from jaxvision.data import pipeline
from jaxvision.predict import Predictor

predictor = Predictor.from_workdir(unet_dir, batch_size=4)
source, info = pipeline.shapes_source("validation", DATA_DIR)
examples = [pipeline.decode_shapes(source[i]) for i in range(4)]
results = predictor([ex["image"] for ex in examples])
for ex, res in zip(examples[:2], results[:2]):
  viz.plot_segmentation(ex["image"], res["segmentation"], info.seg_class_names,
                        ground_truth=ex["segmentation"])
  plt.show()

# %% [markdown]
# The same predictions blended over the images (`viz.overlay_segmentation`; background is left as is):

# %%
fig, axes = plt.subplots(1, len(examples), figsize=(3 * len(examples), 3))
for ax, ex, res in zip(axes, examples, results):
  ax.imshow(viz.overlay_segmentation(ex["image"], res["segmentation"],
                                     num_classes=info.num_seg_classes))
  ax.axis("off")
plt.show()

# %% [markdown]
# ## Next
#
# * Longer runs: `python train.py --config configs/unet_shapes.py --workdir runs/unet` (the README's
#   model zoo lists what it reaches and how long it takes).
# * Other models: every file in `configs/` is an experiment (FCN, SegNet, DeepLab, SSD, RetinaNet,
#   Faster R-CNN, ...); the other notebooks in `colab/` show segmentation, detection and the ops alone.
# * Your own images: `predictor([image])` above, or `python train.py ... --mode predict --input dir/`.
