# Source of colab/instance_segmentation.ipynb: edit this file, then run `python colab/build.py`.

# %% [markdown]
# # Instance segmentation: Mask R-CNN on `shapes`
#
# Mask R-CNN (He et al., ICCV 2017) is Faster R-CNN plus a small fully convolutional branch that
# predicts a 28 x 28 mask for each detected box, from RoIAlign features (`configs/mask_rcnn_shapes.py`:
# a tiny ResNet-18 + FPN trained from scratch). This notebook shows the dataset's instance masks,
# trains the model with `train_and_evaluate` (COCO box and mask AP on the validation images) and
# draws its predicted masks over the images.
#
# Small mode (CPU, or `JAXVISION_NOTEBOOK_SMALL=1`) trains the config's `:smoke` size for a few steps
# on 64 x 64 images: every cell runs, the masks are not useful yet. A GPU/TPU runtime trains longer.

# %% [include _setup.py]

# %% [markdown]
# ## Instance masks in the data
#
# Each `shapes` example has one binary mask per instance (`masks [N, H, W]`, the visible pixels,
# disjoint), its tight box and its class; `viz.draw_detections` blends masks in the class colour.

# %%
from jaxvision import viz
from jaxvision.data import pipeline

source, info = pipeline.shapes_source("validation", DATA_DIR)
examples = [pipeline.decode_shapes(source[i]) for i in range(3)]
fig, axes = plt.subplots(1, len(examples), figsize=(3.2 * len(examples), 3.2))
for ax, ex in zip(axes, examples):
  ax.imshow(viz.draw_detections(ex["image"], ex["boxes"], np.ones(len(ex["boxes"])), ex["labels"],
                                class_names=info.class_names, masks=ex["masks"]))
  ax.set_title(f"{len(ex['boxes'])} instances (ground truth)", fontsize=9)
  ax.axis("off")
plt.show()

# %% [markdown]
# ## Train Mask R-CNN
#
# `config.data.keep_masks = True` makes the input pipeline carry the instance masks (at
# `mask_stride`); `config.task = "instance_segmentation"` adds COCO mask AP (`segm/AP`, through
# pycocotools) to the evaluation.

# %%
from configs import mask_rcnn_shapes
from jaxvision.predict import Predictor
from jaxvision.train import loop

config = mask_rcnn_shapes.get_config("smoke" if SMALL else None)
config.data.train_split, config.data.eval_split = "train", "validation"
config.data.data_dir = DATA_DIR
config.data.batch_size = global_batch(8)
config.data.eval_batch_size = global_batch(40)
config.train.steps = by_runtime(small=20, cpu=300, gpu=1500, tpu=1500)
config.optim.warmup_steps = min(config.optim.warmup_steps, config.train.steps // 10)
config.train.eval_every = config.train.checkpoint_every = config.train.steps
config.train.log_every = max(config.train.steps // 10, 1)
if SMALL:
  config.data.image_size = (64, 64)
mask_dir = os.path.join(WORKDIR, "mask_rcnn")
metrics = loop.train_and_evaluate(config, mask_dir)
print({k: round(v, 4) for k, v in metrics.items() if k in ("bbox/AP", "bbox/AP50", "segm/AP",
                                                           "segm/AP50")})

# %% [markdown]
# ## Predicted masks
#
# `Predictor` returns, per image, boxes, scores, labels and `masks [n, H, W]` at the image's own size;
# the five highest-scoring detections are drawn next to the ground truth.

# %%
predictor = Predictor.from_workdir(mask_dir, batch_size=len(examples))
results = predictor([ex["image"] for ex in examples])
fig, axes = plt.subplots(2, len(examples), figsize=(3.2 * len(examples), 6.4))
for col, (ex, res) in enumerate(zip(examples, results)):
  top = np.argsort(-res["scores"])[:5]
  axes[0, col].imshow(viz.draw_detections(ex["image"], res["boxes"][top], res["scores"][top],
                                          res["labels"][top], class_names=info.class_names,
                                          masks=res["masks"][top]))
  axes[0, col].set_title("Mask R-CNN (top 5)", fontsize=9)
  axes[1, col].imshow(viz.draw_detections(ex["image"], ex["boxes"], np.ones(len(ex["boxes"])),
                                          ex["labels"], class_names=info.class_names,
                                          masks=ex["masks"]))
  axes[1, col].set_title("ground truth", fontsize=9)
for ax in axes.ravel():
  ax.axis("off")
plt.show()

# %% [markdown]
# The paper's ablations are config keys: `--config.model.mask_head.pooler=pool` (RoIPool instead of
# RoIAlign for the mask features, Table 2c) and `--config.model.mask_head.loss=softmax` (competing
# classes, Table 2b), e.g.
# `python train.py --config configs/mask_rcnn_shapes.py --workdir runs/mask_roipool --config.model.mask_head.pooler=pool`.
