# Source of colab/research_code.ipynb: edit this file, then run `python colab/build.py`.

# %% [markdown]
# # Using jaxvision from research code: the ops and losses alone
#
# You do not have to use jaxvision's models, configs or training loop. Every op in `jaxvision.ops`
# and every loss in `jaxvision.losses` is a pure function of arrays with static shapes, for **one
# image** (RoI ops take a batch), checked against torchvision: put them inside your own `jax.jit`,
# `jax.vmap` and `jax.grad`.
#
# This notebook writes a small detector from scratch in Flax, a one-stage head trained with the focal
# loss (`losses.sigmoid_focal_loss`) on anchors (`ops.anchors`) matched to the ground truth
# (`ops.matching`) and regressed with the R-CNN box coder (`ops.box_coder`, `losses.smooth_l1_loss`),
# plus a second-stage classifier on `ops.roi.roi_align` features whose gradient flows back through
# RoIAlign into the backbone. One custom `jit`-ed train step, `vmap` over the images, `optax`.
#
# Conventions (DESIGN.md): boxes are float32 `[..., 4]` **xyxy in pixels**; ground truth is padded
# to a fixed number of slots with a boolean `valid` mask; labels are 1..K (0 = padding); images NHWC.

# %% [include _setup.py]

# %%
import flax.linen as nn
import optax

from configs.common import base
from jaxvision import losses, viz
from jaxvision.data import builder
from jaxvision.ops import anchors, box_coder, boxes as box_ops, matching, nms, roi

SIZE = by_runtime(small=64, cpu=128, gpu=128)
K = 5  # foreground classes of `shapes`
data = base.base_config().data  # the library's input pipeline, on its own (no model, no loop)
data.data_dir, data.image_size, data.batch_size = DATA_DIR, (SIZE, SIZE), global_batch(16)
train_batches = builder.make_split(data, train=True)  # train_batches[i]: a dict of NumPy arrays
batch = train_batches[0]
print({k: (v.shape, v.dtype.name) for k, v in batch.items() if k in ("image", "boxes", "labels",
                                                                     "box_valid")})

# %% [markdown]
# ## `jax.grad` through RoIAlign
#
# `roi.roi_align` is differentiable with respect to the feature map (its backward equals
# torchvision's). The gradient of the pooled sum with respect to the features shows which cells a
# RoI reads, with their bilinear weights: a 2 x 2 output with 2 x 2 samples per bin reads 16 points.

# %%
fmap = jnp.zeros((1, 16, 16, 1))
box = jnp.array([[3.3, 2.5, 11.6, 9.0]])  # xyxy on the 16 x 16 map (spatial_scale=1)


def pooled_sum(f):
  return roi.roi_align(f, box, jnp.array([0]), output_size=2, sampling_ratio=2, aligned=True).sum()


g = jax.grad(pooled_sum)(fmap)[0, :, :, 0]
plt.figure(figsize=(4, 4))
plt.imshow(g, cmap="viridis")
plt.gca().add_patch(plt.Rectangle((box[0, 0] - 0.5, box[0, 1] - 0.5), box[0, 2] - box[0, 0],
                                  box[0, 3] - box[0, 1], fill=False, color="w"))
plt.title("d sum(roi_align) / d features")
plt.colorbar()
plt.show()
print("total gradient", float(g.sum()), "= output bins", 2 * 2)

# %% [markdown]
# ## A detector of your own
#
# A 3-layer conv backbone (stride 8), a dense head with `A` anchors per cell, and an RoI classifier
# on RoIAlign features. Anchors depend only on static shapes, so they are computed once on the host.

# %%
STRIDE = 8
SIZES = tuple(s * SIZE / 128 for s in (20, 32, 52))  # shapes are 16-56 px at 128 px
ANCHORS = anchors.grid_anchors((SIZE // STRIDE, SIZE // STRIDE), STRIDE, SIZES, (1.0,), offset=0.5)
A = len(SIZES)
print("anchors", ANCHORS.shape)


class MyDetector(nn.Module):
  @nn.compact
  def __call__(self, x, gt_boxes, gt_valid):
    for features in (16, 32, 32):
      x = nn.relu(nn.Conv(features, (3, 3), strides=2)(x))
    b, h, w, _ = x.shape
    cls = nn.Conv(A * K, (3, 3), bias_init=nn.initializers.constant(-4.6))(x)  # prior 0.01
    deltas = nn.Conv(A * 4, (3, 3), kernel_init=nn.initializers.zeros)(x)
    # Second stage on the ground-truth boxes: RoIAlign on the stride-8 features. Padding slots get
    # image index -1 (zero features, no gradient).
    g = gt_boxes.shape[1]
    idx = jnp.where(gt_valid, jnp.arange(b)[:, None], -1).reshape(-1)
    pooled = roi.roi_align(x, gt_boxes.reshape(-1, 4), idx, output_size=4,
                           spatial_scale=1 / STRIDE, sampling_ratio=2, aligned=True)
    roi_logits = nn.Dense(K + 1)(nn.relu(nn.Dense(64)(pooled.reshape(b * g, -1))))
    return cls.reshape(b, h * w * A, K), deltas.reshape(b, h * w * A, 4), roi_logits.reshape(b, g, -1)


def image_loss(cls_logits, deltas, gt_boxes, gt_labels, gt_valid):
  """RetinaNet's loss for ONE image (vmapped below): focal loss + smooth L1 on matched anchors."""
  matched, labels = matching.match_boxes(ANCHORS, gt_boxes, gt_valid, thresholds=[0.4, 0.5],
                                         labels=[0, -1, 1], allow_low_quality_matches=True)
  positive = labels == matching.POSITIVE
  target = jax.nn.one_hot(gt_labels[matched] - 1, K) * positive[:, None]
  cls = losses.sigmoid_focal_loss(cls_logits, target).sum(-1) * (labels != matching.IGNORE)
  reg_target = box_coder.encode_boxes(gt_boxes[matched], ANCHORS)
  reg = losses.smooth_l1_loss(deltas, reg_target, beta=1 / 9).sum(-1) * positive
  return (cls.sum() + reg.sum()) / jnp.maximum(positive.sum(), 1)


model = MyDetector()
params = model.init(jax.random.PRNGKey(0), batch["image"], batch["boxes"], batch["box_valid"])
tx = optax.adam(3e-3)
opt_state = tx.init(params)


@jax.jit
def train_step(params, opt_state, batch):
  def loss_fn(params):
    cls, deltas, roi_logits = model.apply(params, batch["image"], batch["boxes"], batch["box_valid"])
    det = jax.vmap(image_loss)(cls, deltas, batch["boxes"], batch["labels"], batch["box_valid"])
    roi_ce = losses.softmax_cross_entropy(roi_logits, batch["labels"], ignore_label=None)
    roi_ce = (roi_ce * batch["box_valid"]).sum() / jnp.maximum(batch["box_valid"].sum(), 1)
    return det.mean() + roi_ce, (det.mean(), roi_ce)

  (loss, terms), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
  updates, opt_state = tx.update(grads, opt_state, params)
  return optax.apply_updates(params, updates), opt_state, loss, terms


steps = by_runtime(small=40, cpu=400, gpu=2000)
history = []
for step in range(steps):
  params, opt_state, loss, (det, roi_ce) = train_step(params, opt_state, train_batches[step])
  history.append((float(det), float(roi_ce)))
det_loss, roi_loss = np.array(history).T
print(f"{steps} steps: detection loss {det_loss[:5].mean():.3f} -> {det_loss[-5:].mean():.3f}, "
      f"RoI loss {roi_loss[:5].mean():.3f} -> {roi_loss[-5:].mean():.3f}")
plt.figure(figsize=(5, 3))
plt.plot(det_loss, label="focal + smooth L1")
plt.plot(roi_loss, label="RoIAlign classifier CE")
plt.xlabel("step")
plt.legend()
plt.show()

# %% [markdown]
# The RoI classifier's gradient reaches the backbone only through `roi_align`: the gradient of its
# loss alone with respect to the first convolution is not zero.

# %%
def roi_only(params):
  _, _, roi_logits = model.apply(params, batch["image"], batch["boxes"], batch["box_valid"])
  ce = losses.softmax_cross_entropy(roi_logits, batch["labels"], ignore_label=None)
  return (ce * batch["box_valid"]).sum()


first_conv = jax.grad(roi_only)(params)["params"]["Conv_0"]["kernel"]
print("|d RoI loss / d first conv kernel| =", float(jnp.abs(first_conv).sum()))

# %% [markdown]
# ## Inference with `vmap`-ed class-aware NMS
#
# Decode the deltas, score every (anchor, class) pair, keep the top candidates and run
# `nms.batched_nms` per image, all in one `jit` with static output sizes (`valid` marks real slots).

# %%
@jax.jit
def detect(params, images):
  b = images.shape[0]
  cls, deltas, _ = model.apply(params, images, jnp.zeros((b, 1, 4)), jnp.zeros((b, 1), bool))

  def one_image(cls, deltas):
    scores = jax.nn.sigmoid(cls).reshape(-1)  # (anchor, class) pairs
    top_scores, top = jax.lax.top_k(scores, 200)
    anchor, label = top // K, top % K + 1
    boxes = box_ops.clip_boxes(box_coder.decode_boxes(deltas[anchor], ANCHORS[anchor]),
                               (SIZE, SIZE))
    keep, valid = nms.batched_nms(boxes, top_scores, label, iou_threshold=0.5, max_output_size=10,
                                  score_threshold=0.05)
    keep = jnp.maximum(keep, 0)
    return boxes[keep], top_scores[keep], jnp.where(valid, label[keep], 0)

  return jax.vmap(one_image)(cls, deltas)


val = builder.make_split(data, train=False)[0]
det_boxes, det_scores, det_labels = jax.device_get(detect(params, val["image"]))
up = max(128 // SIZE, 1)  # draw small images enlarged so that the captions fit
fig, axes = plt.subplots(1, 4, figsize=(12, 3))
for i, ax in enumerate(axes):
  image = np.repeat(np.repeat(val["image"][i], up, 0), up, 1)
  ax.imshow(viz.draw_detections(image, det_boxes[i] * up, det_scores[i], det_labels[i],
                                class_names=shapes.SHAPES_CLASSES, score_threshold=0.2))
  ax.axis("off")
plt.show()

# %% [markdown]
# Everything above is plain JAX: swap in your own backbone, matcher thresholds, losses or sampling
# (`ops.sampling.sample_balanced` for a fixed-size positive/negative sample), and shard the step with
# `jax.jit` shardings or `shard_map` as you would any JAX function.
