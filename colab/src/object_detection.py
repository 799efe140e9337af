# Source of colab/object_detection.ipynb: edit this file, then run `python colab/build.py`.

# %% [markdown]
# # Object detection with jaxvision
#
# 1. **Anchors and matching**: RetinaNet's anchors on a `shapes` image, which ones become positive,
#    negative or ignored, and the box-regression targets.
# 2. **Non-maximum suppression step by step**, then the same with `ops.nms.nms` (and soft-NMS).
# 3. **RoIPool vs RoIAlign** on a toy feature map: quantised bins against bilinear sampling.
# 4. **RetinaNet** (Lin et al., ICCV 2017) and **Faster R-CNN with FPN** (Ren et al. 2015; Lin et
#    al. 2017) trained briefly on `shapes`, their detections, **mAP and precision-recall curves**.
#
# Small mode (CPU, or `JAXVISION_NOTEBOOK_SMALL=1`) trains only a tiny RetinaNet (the config's
# `:smoke` size) for a few steps on 64 x 64 images: every cell runs, the detector is not useful yet.
# A GPU/TPU runtime trains both `configs/*_shapes.py` detectors for longer.

# %% [include _setup.py]

# %% [markdown]
# ## 1. Anchors and matching
#
# `configs/retinanet_shapes.py` uses pyramid levels P3-P5 (strides 8, 16, 32) with 9 anchors per
# cell: 3 sizes (`anchor_scale * stride * 2^(i/3)`) x 3 aspect ratios. Below, the 9 anchors of one
# P4 cell, and every anchor's match against a validation image's ground truth (RetinaNet's rule:
# IoU >= 0.5 positive, < 0.4 negative, in between ignored, and each ground-truth box also claims its
# best anchors).

# %%
from jaxvision import viz
from jaxvision.data import pipeline
from jaxvision.models.detection import retinanet
from jaxvision.ops import box_coder, boxes as box_ops, matching, nms, roi

source, info = pipeline.shapes_source("validation", DATA_DIR)
ex = pipeline.decode_shapes(source[3])
image, gt_boxes, gt_labels = ex["image"], ex["boxes"], ex["labels"]
gt_valid = np.ones(len(gt_boxes), bool)
anchors, counts = retinanet.retinanet_anchors_for({"P3": (16, 16), "P4": (8, 8), "P5": (4, 4)},
                                                  anchor_scale=2.0)
anchors = np.asarray(anchors)
print("anchors per level (P3, P4, P5):", counts, "total", len(anchors))

cell = counts[0] + (4 * 8 + 4) * 9  # P4 cell (row 4, column 4): 9 consecutive anchors
matched, labels = matching.match_boxes(anchors, gt_boxes, gt_valid, thresholds=[0.4, 0.5],
                                       labels=[0, -1, 1], allow_low_quality_matches=True)
matched, labels = np.asarray(matched), np.asarray(labels)
pos, ign = labels == matching.POSITIVE, labels == matching.IGNORE
colours = viz.palette(info.num_classes + 1)
fig, axes = plt.subplots(1, 3, figsize=(12, 4))
axes[0].imshow(viz.draw_boxes(image, anchors[cell:cell + 9], width=1))
axes[0].set_title("the 9 anchors of one P4 cell")
axes[1].imshow(viz.draw_boxes(image, gt_boxes, colours=colours[gt_labels],
                              texts=[info.class_names[k - 1] for k in gt_labels]))
axes[1].set_title("ground truth")
canvas = viz.draw_boxes(image, anchors[ign], colours=[[128, 128, 128]], width=1)
canvas = viz.draw_boxes(canvas, anchors[pos], colours=colours[gt_labels[matched[pos]]], width=1)
axes[2].imshow(canvas)
axes[2].set_title(f"{pos.sum()} positive (class colour), {ign.sum()} ignored (grey)")
for ax in axes:
  ax.axis("off")
plt.show()

# %% [markdown]
# The regression targets of the positive anchors are the R-CNN deltas `(dx, dy, dw, dh)` of their
# matched box (`box_coder.encode_boxes`); decoding them gives the ground truth back exactly.

# %%
targets = box_coder.encode_boxes(gt_boxes[matched[pos]], anchors[pos])
back = box_coder.decode_boxes(targets, anchors[pos])
print("first targets:\n", np.round(np.asarray(targets[:3]), 3))
print("max |decode(encode(gt)) - gt| =", float(np.abs(np.asarray(back) - gt_boxes[matched[pos]]).max()))

# %% [markdown]
# ## 2. Non-maximum suppression, step by step
#
# Greedy NMS: take the highest-scoring remaining box, keep it, drop every remaining box whose IoU with
# it is above the threshold, repeat. Written out in NumPy on a few detections around two objects:

# %%
rng = np.random.default_rng(1)
centres = np.array([[15.0, 20.0, 60.0, 75.0], [60.0, 50.0, 110.0, 100.0]])
dets = np.concatenate([c + rng.normal(0, 4, (6, 4)) for c in centres]).astype(np.float32)
det_scores = rng.uniform(0.3, 1.0, len(dets)).astype(np.float32)
iou = np.asarray(box_ops.box_iou(dets, dets))
threshold, remaining, kept, frames = 0.5, list(np.argsort(-det_scores)), [], []
while remaining:
  best, remaining = remaining[0], remaining[1:]
  kept.append(int(best))
  dropped = [i for i in remaining if iou[best, i] > threshold]
  remaining = [i for i in remaining if iou[best, i] <= threshold]
  frames.append((list(kept), dropped, list(remaining)))

canvas0 = np.full((128, 128, 3), 255, np.uint8)
fig, axes = plt.subplots(1, len(frames) + 1, figsize=(3.2 * (len(frames) + 1), 3.4))
axes[0].imshow(viz.draw_boxes(canvas0, dets, colours=[[170, 170, 170]], width=1,
                              texts=[f"{v:.2f}" for v in det_scores]))
axes[0].set_title(f"{len(dets)} detections", fontsize=9)
axes[0].axis("off")
for step, (ax, (k, d, r)) in enumerate(zip(axes[1:], frames), 1):
  c = viz.draw_boxes(canvas0, dets[r], colours=[[170, 170, 170]], width=1)
  c = viz.draw_boxes(c, dets[d], colours=[[230, 60, 60]], width=1)
  c = viz.draw_boxes(c, dets[k], colours=[[40, 160, 40]], texts=[f"{det_scores[i]:.2f}" for i in k])
  ax.imshow(c)
  ax.set_title(f"step {step}: keep {k[-1]}, drop {len(d)}", fontsize=9)
  ax.axis("off")
plt.show()

keep, valid = nms.nms(dets, det_scores, iou_threshold=threshold, max_output_size=8)
print("by hand:   ", kept)
print("ops.nms:   ", np.asarray(keep)[np.asarray(valid)].tolist(), "(static output: padded with -1)",
      np.asarray(keep).tolist())
sk, ss, sv = nms.soft_nms(dets, det_scores, max_output_size=len(dets), sigma=0.5)
print("soft-NMS keeps every box with a decayed score:", np.round(np.asarray(ss)[np.asarray(sv)], 3))

# %% [markdown]
# ## 3. RoIPool vs RoIAlign
#
# Both cut a fixed-size `2 x 2` feature out of a box. RoIPool (Fast R-CNN) rounds the box to whole
# feature cells and takes the max over integer bins; RoIAlign (Mask R-CNN) samples the feature map
# bilinearly at regular points inside exact bins, so the output moves smoothly with the box.

# %%
fmap = np.add.outer(np.arange(8.0), 0.5 * np.arange(8.0))[None, :, :, None].astype(np.float32)
box = np.array([[1.3, 1.6, 5.4, 5.2]], np.float32)
shifts = np.linspace(0, 2, 41, dtype=np.float32)  # the box, then moved right in small steps
moved = box + shifts[:, None] * np.array([1, 0, 1, 0], np.float32)
idx = np.zeros(len(shifts), np.int32)  # every RoI reads image 0
pool = np.asarray(roi.roi_pool(fmap, moved, idx, output_size=2))[:, :, :, 0]
align = np.asarray(roi.roi_align(fmap, moved, idx, output_size=2, sampling_ratio=2,
                                 aligned=True))[:, :, :, 0]
print("RoIPool :", pool[0].tolist())
print("RoIAlign:", np.round(align[0], 3).tolist())
pool_v, align_v = pool[:, 0, 0], align[:, 0, 0]
fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
axes[0].imshow(fmap[0, :, :, 0], cmap="Greys", extent=(0, 8, 8, 0))
x0, y0, x1, y1 = box[0]
axes[0].add_patch(plt.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, color="tab:orange", lw=2))
rx0, ry0, rx1, ry1 = np.round(box[0])  # RoIPool's rounded box (inclusive end cells)
axes[0].add_patch(plt.Rectangle((rx0, ry0), rx1 - rx0 + 1, ry1 - ry0 + 1, fill=False,
                                color="tab:blue", ls="--", lw=2))
gy = y0 - 0.5 + (y1 - y0) * (np.arange(4) + 0.5) / 4  # aligned=True: 2 x 2 samples per bin
gx = x0 - 0.5 + (x1 - x0) * (np.arange(4) + 0.5) / 4
axes[0].plot(*np.meshgrid(gx + 0.5, gy + 0.5), "o", color="tab:orange", ms=4)
axes[0].set_title("box (orange) and its 16 RoIAlign samples;\nRoIPool's rounded cells (blue)",
                  fontsize=9)
axes[1].plot(shifts, pool_v, drawstyle="steps-post", label="RoIPool bin (0, 0)")
axes[1].plot(shifts, align_v, label="RoIAlign bin (0, 0)")
axes[1].set_xlabel("box shifted right by (feature cells)")
axes[1].legend()
plt.show()

# %% [markdown]
# ## 4. Train RetinaNet and Faster R-CNN on `shapes`
#
# Both are ordinary experiment configs trained by `train_and_evaluate`; evaluation reports VOC
# mAP@0.5 on the validation images. In small mode only RetinaNet trains, at the config's `:smoke`
# size (a few channels) for a few steps; Faster R-CNN needs `JAXVISION_NOTEBOOK_SMALL=0` on a CPU.

# %%
from configs import faster_rcnn_fpn_shapes, retinanet_shapes
from jaxvision.predict import Predictor
from jaxvision.train import loop

steps = by_runtime(small=20, cpu=300, gpu=1500, tpu=1500)
experiments = {"RetinaNet": retinanet_shapes, "Faster R-CNN FPN": faster_rcnn_fpn_shapes}
if SMALL:  # compiling each detector's training, evaluation and prediction steps dominates here
  del experiments["Faster R-CNN FPN"]
detectors = {}
for name, module in experiments.items():
  config = module.get_config("smoke" if SMALL else None)
  config.data.train_split, config.data.eval_split = "train", "validation"
  config.data.data_dir = DATA_DIR
  config.data.batch_size = global_batch(8)
  config.data.eval_batch_size = global_batch(40)
  config.train.steps = steps
  config.optim.warmup_steps = min(config.optim.warmup_steps, steps // 10)
  config.train.eval_every = config.train.checkpoint_every = steps
  config.train.log_every = max(steps // 10, 1)
  if SMALL:
    config.data.image_size = (64, 64)
  workdir = os.path.join(WORKDIR, name.replace(" ", "_"))
  metrics = loop.train_and_evaluate(config, workdir)
  detectors[name] = Predictor.from_workdir(workdir, batch_size=8)
  print(f"{name}: validation mAP@0.5 {metrics['mAP']:.3f} after {steps} steps")

# %% [markdown]
# The five highest-scoring detections on validation images (`viz.draw_detections`: class name and
# score in the class's colour; a briefly trained detector's are mostly wrong).

# %%
images = [pipeline.decode_shapes(source[i]) for i in range(3)]
fig, axes = plt.subplots(len(detectors), len(images), figsize=(3.2 * len(images),
                                                                3.2 * len(detectors)))
for row, (name, predictor) in zip(np.atleast_2d(axes), detectors.items()):
  for ax, ex, res in zip(row, images, predictor([e["image"] for e in images])):
    top = np.argsort(-res["scores"])[:5]
    ax.imshow(viz.draw_detections(ex["image"], res["boxes"][top], res["scores"][top],
                                  res["labels"][top], class_names=info.class_names))
    ax.set_title(name, fontsize=9)
    ax.axis("off")
plt.show()

# %% [markdown]
# ## mAP and precision-recall curves
#
# `eval.voc.evaluate_voc` computes VOC AP per class (area under the interpolated precision-recall
# curve, IoU >= 0.5) from per-image detections in original image coordinates;
# `viz.plot_pr_curves` draws its curves.

# %%
from jaxvision.eval import voc

n_eval = by_runtime(small=40, cpu=200, gpu=200)
val = [pipeline.decode_shapes(source[i]) for i in range(n_eval)]
for name, predictor in detectors.items():
  results = predictor([e["image"] for e in val])
  pr = voc.evaluate_voc([r["boxes"] for r in results], [r["scores"] for r in results],
                        [r["labels"] for r in results], [e["boxes"] for e in val],
                        [e["labels"] for e in val], num_classes=info.num_classes,
                        class_names=info.class_names)
  print(name, {k: round(v, 3) for k, v in pr["ap_per_class"].items()})
  fig = viz.plot_pr_curves(pr, info.class_names)
  fig.axes[0].set_title(f"{name}: mAP {pr['mAP']:.3f} on {n_eval} images")
  plt.show()
