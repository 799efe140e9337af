"""Patch-wise ("sliding window") segmentation: classify every pixel from the patch around it.

The lecture's first idea for semantic segmentation: cut a patch around each pixel, run a CNN
classifier on it, take the predicted class as the pixel's label. "Problem: very inefficient! Not
reusing shared features between overlapping patches." This module implements that baseline with
the patch classifiers of Havaei et al., "Brain Tumor Segmentation with Deep Neural Networks",
Medical Image Analysis 35, 2017 (https://arxiv.org/abs/1505.03540), and shows the fix: the same
weights applied *convolutionally* to the whole image give exactly the same per-pixel scores at a
fraction of the cost (``patchwise_scores`` vs ``fcn_scores``; ``benchmarks/patchwise_vs_fcn.py``).

Patch classifiers (paper Sec. 3, Fig. 1-3; all convolutions unpadded, all pools stride 1, so the
network is a function of its ``patch_size x patch_size`` input only and slides densely):

* **Maxout** (Goodfellow et al. 2013): a layer computes ``F K`` feature maps and every output map is
  the maximum over ``K`` consecutive ones, ``Z_s = max(O_{sK}, ..., O_{sK + K - 1})``
  (``maxout_pieces = K``; the paper's figures use 2).
* **TwoPathCNN** (Fig. 2), on a 33 x 33 patch: a *local path* (7x7 conv, 64 maxout maps, 4x4 max
  pool with stride 1; 3x3 conv, 64 maxout maps, 2x2 max pool stride 1; 33 -> 27 -> 24 -> 22 -> 21)
  and a *global path* (13x13 conv, 160 maxout maps; 33 -> 21), concatenated (224 x 21 x 21) and
  classified by a 21 x 21 convolution (a fully connected layer written as a convolution) to the
  class scores (1 x 1). ``LocalPathCNN``/``GlobalPathCNN`` (the paper's ablations) keep one path.
* **InputCascadeCNN** (Fig. 3a): a first TwoPathCNN on a 65 x 65 patch predicts the 33 x 33 class
  probabilities around the pixel (it slides over the bigger patch), which are concatenated as extra
  channels to the central 33 x 33 input patch of a second TwoPathCNN. Receptive field
  ``33 + 33 - 1 = 65``.

``PatchwiseSegmenter`` wraps a classifier for segmentation. ``__call__`` is the fully convolutional
pass: the image is zero-padded by ``r = (R - 1) / 2`` (``R`` the receptive field) and the classifier
runs once over it, giving ``[B, H, W, K]`` logits; ``classify_patches`` is the literal patch-wise
pass on ``[N, R, R, C]`` patches. Every pixel's patch is the ``R x R`` window of the zero-padded
image centred on it, so the two agree to float rounding (``test_patchwise_equals_fcn``).

Training (``train_mode``): ``"dense"`` trains on the fully convolutional pass (the loss over every
pixel's patch, computed without redundancy); ``"patches"`` is the paper's patch training: per image
``patches_per_image`` centres are drawn (uniformly over labelled pixels, or with every class present
in the image equally likely, ``class_balanced``: the paper's first training phase), their patches
cut out and classified one by one. (The paper's second phase, re-training only the output layer on
the true label distribution, and its MRI-specific pre-processing are not implemented.) Prediction
always uses the fully convolutional pass.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxvision.losses import cross_entropy_normalizer
from jaxvision.models.family import Family
from jaxvision.models.layers.conv import Conv
from jaxvision.models.segmentation._common import (IGNORE_LABEL, check_class_weights,
                                                   check_image, check_positive_ints,
                                                   cross_entropy_pieces, he_init,
                                                   parse_model_config)

__all__ = ["maxout", "RowSumConv", "TwoPathCNN", "InputCascadeCNN", "PatchwiseSegmenter",
           "receptive_field", "pad_for_patches", "extract_patches", "sample_patch_centers", "patchwise_scores",
           "fcn_scores", "make_patchwise", "ARCHITECTURES", "TRAIN_MODES"]

ARCHITECTURES = ("two_path", "local_path", "global_path", "input_cascade")
TRAIN_MODES = ("dense", "patches")


def maxout(x, pieces: int):
  """Maxout over groups of ``pieces`` consecutive channels: ``[..., F K] -> [..., F]``."""
  if x.shape[-1] % pieces:
    raise ValueError(f"maxout: {x.shape[-1]} channels are not divisible by pieces={pieces}.")
  return jnp.max(x.reshape(*x.shape[:-1], x.shape[-1] // pieces, pieces), axis=-1)


def _path_extent(kernels: Sequence[int], pools: Sequence[int]) -> int:
  """Pixels a stack of unpadded convs and stride-1 pools removes: ``sum (k - 1) + sum (p - 1)``."""
  return sum(k - 1 for k in kernels) + sum(p - 1 for p in pools)


class RowSumConv(nn.Module):
  """An unpadded ``k_h x k_w`` convolution computed as the sum of ``k_h`` ``1 x k_w`` convolutions.

  Same parameters (``kernel [k_h, k_w, C, F]``, ``bias [F]``, the names of ``nn.Conv``) and the
  same result as ``nn.Conv(F, (k_h, k_w), padding="VALID")``, but the CPU backend's im2col buffer
  holds ``k_w C`` instead of ``k_h k_w C`` values per output pixel: Havaei et al.'s 21 x 21 output
  layer over 224 channels run densely over a 128 x 128 image would otherwise need a ~6.5 GB buffer
  per image. ``lax.scan`` over the kernel rows; the FLOPs are the same.
  """
  features: int
  kernel_size: tuple[int, int]
  kernel_init: Any = he_init
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    kh, kw = self.kernel_size
    kernel = self.param("kernel", self.kernel_init, (kh, kw, x.shape[-1], self.features))
    bias = self.param("bias", nn.initializers.zeros, (self.features,))
    x, kernel = x.astype(self.dtype), kernel.astype(self.dtype)
    b, h, w, _ = x.shape
    h_out, w_out = h - kh + 1, w - kw + 1

    def add_row(acc, i):  # acc += conv(x rows i .. i + h_out, kernel row i)
      rows = jax.lax.dynamic_slice_in_dim(x, i, h_out, axis=1)  # (B, h_out, W, C)
      k_row = jax.lax.dynamic_slice_in_dim(kernel, i, 1, axis=0)  # (1, k_w, C, F)
      return acc + jax.lax.conv_general_dilated(
          rows, k_row, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")), None

    acc = jnp.zeros((b, h_out, w_out, self.features), self.dtype)
    out, _ = jax.lax.scan(add_row, acc, jnp.arange(kh))  # (B, h_out, w_out, F)
    return out + bias.astype(self.dtype)


class TwoPathCNN(nn.Module):
  """Havaei et al.'s TwoPathCNN (or one of its paths) as a sliding patch classifier.

  Attributes:
    num_classes: output scores ``K``.
    patch_size: ``R``, the input patch (= receptive field) the classifier is built for (paper: 33).
    local_features, local_kernels, local_pools: the local path's maxout maps, kernels and stride-1
      max-pool windows per layer (paper: ``(64, 64)``, ``(7, 3)``, ``(4, 2)``; pool 1 = none).
    global_features, global_kernels: the global path's layers (paper: ``(160,)``, ``(13,)``).
    use_local, use_global: keep the path (both: TwoPathCNN; one: Local/GlobalPathCNN). Both paths
      must shrink the input equally (the paper: 12 px), so their maps concatenate.
    maxout_pieces: ``K`` linear maps per maxout unit.
    dropout_rate: drop-out before the output layer in training (paper: drop-out regularisation).
    dtype: compute dtype; the scores are float32.

  ``__call__(x [B, S, S, C], *, train) -> [B, S - R + 1, S - R + 1, K]`` class scores (logits) of
  every ``R x R`` window of ``x`` (``S = R``: one patch, ``[B, 1, 1, K]``).
  """
  num_classes: int
  patch_size: int = 33
  local_features: Sequence[int] = (64, 64)
  local_kernels: Sequence[int] = (7, 3)
  local_pools: Sequence[int] = (4, 2)
  global_features: Sequence[int] = (160,)
  global_kernels: Sequence[int] = (13,)
  use_local: bool = True
  use_global: bool = True
  maxout_pieces: int = 2
  dropout_rate: float = 0.0
  dtype: Any = jnp.float32

  def extents(self) -> tuple[int, int]:
    """``(path extent e, output kernel R - e)``, checking the configuration."""
    check_positive_ints(self.num_classes, "num_classes", 1)
    lf = check_positive_ints(self.local_features, "local_features")
    lk = check_positive_ints(self.local_kernels, "local_kernels", len(lf))
    lp = check_positive_ints(self.local_pools, "local_pools", len(lf))
    gf = check_positive_ints(self.global_features, "global_features")
    gk = check_positive_ints(self.global_kernels, "global_kernels", len(gf))
    check_positive_ints(self.maxout_pieces, "maxout_pieces", 1)
    if not (self.use_local or self.use_global):
      raise ValueError("TwoPathCNN needs use_local or use_global (or both).")
    e_local, e_global = _path_extent(lk, lp), _path_extent(gk, ())
    if self.use_local and self.use_global and e_local != e_global:
      raise ValueError(f"the local path removes {e_local} px and the global path {e_global} px; "
                       "they must be equal to concatenate (paper: 12 and 12).")
    extent = e_local if self.use_local else e_global
    r = check_positive_ints(self.patch_size, "patch_size", 1)[0]
    if r - extent < 1:
      raise ValueError(f"patch_size {r} is not larger than the paths' extent {extent}.")
    return extent, r - extent

  @nn.compact
  def __call__(self, x, *, train: bool):
    check_image(x, "TwoPathCNN")
    _, out_kernel = self.extents()
    r = self.patch_size
    if x.shape[1] < r or x.shape[2] < r:
      raise ValueError(f"TwoPathCNN: x shape {tuple(x.shape)} is smaller than patch_size {r}.")
    k = self.maxout_pieces
    conv = functools.partial(Conv, padding="VALID", dtype=self.dtype, kernel_init=he_init)
    feats = []
    if self.use_local:
      y = x
      layers = zip(self.local_features, self.local_kernels, self.local_pools)
      for i, (f, ks, p) in enumerate(layers):
        y = maxout(conv(f * k, (ks, ks), name=f"local_conv{i}")(y), k)  # (B, S - ks + 1, ., f)
        if p > 1:
          y = nn.max_pool(y, (p, p), strides=(1, 1), padding="VALID")  # (B, . - p + 1, ., f)
      feats.append(y)
    if self.use_global:
      y = x
      for i, (f, ks) in enumerate(zip(self.global_features, self.global_kernels)):
        y = maxout(conv(f * k, (ks, ks), name=f"global_conv{i}")(y), k)
      feats.append(y)
    y = jnp.concatenate(feats, axis=-1)  # (B, S - e, S - e, F_local + F_global)
    if self.dropout_rate > 0:
      y = nn.Dropout(self.dropout_rate, deterministic=not train, name="dropout")(y)
    # The fully connected output layer as an (R - e) x (R - e) convolution.
    logits = RowSumConv(self.num_classes, (out_kernel, out_kernel), dtype=self.dtype,
                        name="output")(y)
    return logits.astype(jnp.float32)  # (B, S - R + 1, S - R + 1, K)


class InputCascadeCNN(nn.Module):
  """Havaei et al.'s InputCascadeCNN: a first CNN's probabilities as extra input channels.

  ``first`` slides over the ``R1 + R2 - 1`` patch and predicts the ``R2 x R2`` class probabilities
  around the centre; they are concatenated to the central ``R2 x R2`` input of ``second``.
  ``__call__(x [B, S, S, C]) -> [B, S - R + 1, S - R + 1, K]`` with ``R = R1 + R2 - 1``.
  """
  first: TwoPathCNN
  second: TwoPathCNN

  @nn.compact
  def __call__(self, x, *, train: bool):
    r1 = self.first.patch_size
    if r1 % 2 == 0:
      raise ValueError(f"InputCascadeCNN: the first CNN's patch_size must be odd, got {r1}.")
    probs = jax.nn.softmax(self.first(x, train=train), axis=-1)  # (B, S - R1 + 1, ., K)
    c = (r1 - 1) // 2
    centre = x[:, c:x.shape[1] - c, c:x.shape[2] - c]  # (B, S - R1 + 1, ., C): the aligned input
    return self.second(jnp.concatenate([centre, probs.astype(x.dtype)], axis=-1), train=train)


class PatchwiseSegmenter(nn.Module):
  """Segmentation with a sliding patch classifier (see the module docstring).

  Attributes:
    num_classes: ``K``.
    architecture: ``"two_path"`` (TwoPathCNN), ``"local_path"``, ``"global_path"`` or
      ``"input_cascade"`` (two TwoPathCNNs of the same widths).
    patch_size: the (each) TwoPathCNN's patch (paper: 33); the cascade's receptive field is
      ``2 patch_size - 1``.
    local_features, local_kernels, local_pools, global_features, global_kernels, maxout_pieces,
      dropout_rate, dtype: the TwoPathCNN's (see there).

  ``__call__(x [B, H, W, C], *, train) -> {"logits": [B, H, W, K]}``: the fully convolutional pass
  over the image zero-padded by ``(R - 1) / 2``. ``classify_patches(patches [N, R, R, C], *, train)
  -> [N, K]``: the same classifier on explicit patches.
  """
  num_classes: int
  architecture: str = "two_path"
  patch_size: int = 33
  local_features: Sequence[int] = (64, 64)
  local_kernels: Sequence[int] = (7, 3)
  local_pools: Sequence[int] = (4, 2)
  global_features: Sequence[int] = (160,)
  global_kernels: Sequence[int] = (13,)
  maxout_pieces: int = 2
  dropout_rate: float = 0.0
  dtype: Any = jnp.float32

  def setup(self):
    if self.architecture == "input_cascade":
      self.classifier = InputCascadeCNN(_two_path_cnn(self), _two_path_cnn(self))
    else:
      self.classifier = _two_path_cnn(self)

  @property
  def receptive_field(self) -> int:
    """``R``: the side of the patch that determines one pixel's scores."""
    r = check_positive_ints(self.patch_size, "patch_size", 1)[0]
    return 2 * r - 1 if self.architecture == "input_cascade" else r

  def __call__(self, x, *, train: bool):
    check_image(x, "PatchwiseSegmenter")
    padded = pad_for_patches(x, self.receptive_field)  # (B, H + R - 1, W + R - 1, C)
    return {"logits": self.classifier(padded, train=train)}  # (B, H, W, K)

  def classify_patches(self, patches, *, train: bool):
    """Scores of each patch ``[N, R, R, C] -> [N, K]`` (one classifier pass per patch)."""
    r = self.receptive_field
    check_image(patches, "classify_patches")
    if patches.shape[1:3] != (r, r):
      raise ValueError(f"patches must be [N, {r}, {r}, C] (the receptive field), got shape "
                       f"{tuple(patches.shape)}.")
    return self.classifier(patches, train=train)[:, 0, 0]  # (N, K)


def _two_path_cnn(seg: PatchwiseSegmenter) -> TwoPathCNN:
  """The TwoPathCNN (or one path) that ``seg``'s fields describe (a free function: linen wraps
  module methods, and a submodule built inside one would attach to ``seg``)."""
  if seg.architecture not in ARCHITECTURES:
    raise ValueError(f"architecture must be one of {ARCHITECTURES}, got {seg.architecture!r}.")
  return TwoPathCNN(
      num_classes=seg.num_classes, patch_size=seg.patch_size,
      local_features=tuple(seg.local_features), local_kernels=tuple(seg.local_kernels),
      local_pools=tuple(seg.local_pools), global_features=tuple(seg.global_features),
      global_kernels=tuple(seg.global_kernels),
      use_local=seg.architecture != "global_path", use_global=seg.architecture != "local_path",
      maxout_pieces=seg.maxout_pieces, dropout_rate=seg.dropout_rate, dtype=seg.dtype)


def receptive_field(module: PatchwiseSegmenter) -> int:
  """The module's receptive field ``R`` (odd): its patches are ``R x R``."""
  return module.receptive_field


# ------------------------------------------------------------------------------------------------
# Patches
# ------------------------------------------------------------------------------------------------


def pad_for_patches(images, patch_size: int):
  """Zero-pads ``[B, H, W, C]`` by ``(R - 1) / 2`` on every side (``R = patch_size``, odd)."""
  if patch_size % 2 == 0:
    raise ValueError(f"patch_size must be odd (a patch centred on its pixel), got {patch_size}.")
  r = (patch_size - 1) // 2
  return jnp.pad(images, ((0, 0), (r, r), (r, r), (0, 0)))


def extract_patches(images, centers, patch_size: int):
  """The ``R x R`` patches centred on ``centers`` (zero outside the image).

  Args:
    images: ``[B, H, W, C]``.
    centers: int ``[B, P, 2]`` pixel coordinates ``(row, col)`` inside the image.
    patch_size: ``R`` (odd).

  Returns:
    ``[B, P, R, R, C]``: ``out[b, p, i, j] = images[b, row + i - r, col + j - r]`` (``r = (R-1)/2``),
    0 where that is outside the image.
  """
  check_image(images, "extract_patches")
  if centers.ndim != 3 or centers.shape[0] != images.shape[0] or centers.shape[-1] != 2:
    raise ValueError(f"centers must be int [B, P, 2] with B = {images.shape[0]}, got shape "
                     f"{tuple(centers.shape)}.")
  padded = pad_for_patches(images, patch_size)  # (B, H + R - 1, W + R - 1, C)
  c = images.shape[-1]

  def one(img, ctr):  # (H', W', C), (2,) -> (R, R, C); the padded patch starts at (row, col)
    return jax.lax.dynamic_slice(img, (ctr[0], ctr[1], 0), (patch_size, patch_size, c))

  return jax.vmap(lambda img, ctrs: jax.vmap(lambda ctr: one(img, ctr))(ctrs))(
      padded, centers.astype(jnp.int32))


def sample_patch_centers(rng, labels, num_patches: int, *, class_balanced: bool = False,
                         ignore_label: int = IGNORE_LABEL):
  """Draws ``num_patches`` labelled pixels per image (with replacement).

  ``class_balanced=False``: uniformly over labelled pixels. ``True``: every class present in the
  image is equally likely (pixel weight ``1 / count(its class in the image)``), Havaei et al.'s
  first training phase. Images without a labelled pixel give ``valid = False`` (their centres are
  arbitrary).

  Args:
    rng: a PRNG key.
    labels: int ``[B, H, W]``.
    num_patches: ``P`` (static).

  Returns:
    ``(centers int32 [B, P, 2], valid bool [B])``.
  """
  b, h, w = labels.shape
  labelled = (labels != ignore_label) & (labels >= 0)  # (B, H, W)
  flat = labels.reshape(b, h * w)
  weight = labelled.reshape(b, h * w).astype(jnp.float32)
  if class_balanced:
    # Pixel count of each class in its image: a 256-bin histogram of the labelled pixels (label
    # maps are small non-negative ints; 255 = ignore never counts), read back at every pixel.
    safe = jnp.clip(jnp.where(weight > 0, flat, 0), 0, 255)  # (B, H W)
    counts = jax.vmap(lambda l, m: jnp.zeros(256, jnp.float32).at[l].add(m))(safe, weight)
    weight = weight / jnp.maximum(jnp.take_along_axis(counts, safe, axis=1), 1.0)  # (B, H W)
  valid = jnp.sum(weight, axis=1) > 0  # (B,)
  logits = jnp.where(weight > 0, jnp.log(jnp.maximum(weight, 1e-30)), -jnp.inf)
  logits = jnp.where(valid[:, None], logits, 0.0)  # keep categorical defined on empty images
  keys = jax.random.split(rng, b)
  idx = jax.vmap(lambda k, lg: jax.random.categorical(k, lg, shape=(num_patches,)))(keys, logits)
  centers = jnp.stack([idx // w, idx % w], axis=-1).astype(jnp.int32)  # (B, P, 2)
  return centers, valid


def patchwise_scores(module: PatchwiseSegmenter, variables, images, *, rows_per_chunk: int = 1):
  """Per-pixel scores the slow way: every pixel's patch cut out and classified on its own.

  ``lax.map`` over chunks of ``rows_per_chunk`` image rows; each chunk cuts ``B * rows * W``
  patches of ``R x R`` and runs ``classify_patches`` on them (no computation shared between
  overlapping patches). Returns ``[B, H, W, K]``, equal to ``fcn_scores`` up to float rounding.
  """
  check_image(images, "patchwise_scores")
  b, h, w, _ = images.shape
  r = module.receptive_field
  rows = max(1, min(int(rows_per_chunk), h))
  n_chunks = -(-h // rows)
  cols = jnp.arange(w, dtype=jnp.int32)

  def chunk(i):
    rr = jnp.minimum(i * rows + jnp.arange(rows, dtype=jnp.int32), h - 1)  # (rows,) clamp the tail
    ctr = jnp.stack(jnp.broadcast_arrays(rr[:, None], cols[None, :]), axis=-1).reshape(1, -1, 2)
    ctr = jnp.broadcast_to(ctr, (b, rows * w, 2))
    patches = extract_patches(images, ctr, r)  # (B, rows W, R, R, C)
    scores = module.apply(variables, patches.reshape(b * rows * w, r, r, -1), train=False,
                          method=PatchwiseSegmenter.classify_patches)  # (B rows W, K)
    return scores.reshape(b, rows, w, -1)

  out = jax.lax.map(chunk, jnp.arange(n_chunks))  # (n_chunks, B, rows, W, K)
  out = jnp.transpose(out, (1, 0, 2, 3, 4)).reshape(b, n_chunks * rows, w, -1)
  return out[:, :h]


def fcn_scores(module: PatchwiseSegmenter, variables, images):
  """Per-pixel scores the fast way: one fully convolutional pass (``[B, H, W, K]``)."""
  return module.apply(variables, images, train=False)["logits"]


# ------------------------------------------------------------------------------------------------
# Family glue
# ------------------------------------------------------------------------------------------------


_MODULE_KEYS = ("architecture", "patch_size", "local_features", "local_kernels", "local_pools",
                "global_features", "global_kernels", "maxout_pieces", "dropout_rate", "dtype")
_LOSS_KEYS = ("class_weights", "train_mode", "patches_per_image", "class_balanced")


def make_patchwise(model_config: Any, num_classes: int) -> Family:
  """Builds the patch-wise family (``MODELS["patchwise"]`` once registered).

  Keys (all optional): the ``PatchwiseSegmenter`` fields ``architecture``, ``patch_size``,
  ``local_features``, ``local_kernels``, ``local_pools``, ``global_features``, ``global_kernels``,
  ``maxout_pieces``, ``dropout_rate``, ``dtype``; ``train_mode`` (``"dense"``, default, or
  ``"patches"``), ``patches_per_image`` (patches mode: 64), ``class_balanced`` (patches mode:
  False), ``class_weights`` (``C`` floats). ``name`` is ignored.

  Raises:
    ValueError: an unknown key (listing the known ones) or a bad value.
  """
  kwargs, loss_cfg, _ = parse_model_config(model_config, family="patchwise",
                                           module_keys=_MODULE_KEYS, loss_keys=_LOSS_KEYS)
  module = PatchwiseSegmenter(num_classes=num_classes, **kwargs)
  _two_path_cnn(module).extents()  # validate the architecture now, not at the first trace
  r = module.receptive_field
  if r % 2 == 0:
    raise ValueError(f"model.patch_size must be odd (a patch centred on its pixel), got "
                     f"{module.patch_size}.")
  mode = loss_cfg.get("train_mode", "dense")
  if mode not in TRAIN_MODES:
    raise ValueError(f"model.train_mode must be one of {TRAIN_MODES}, got {mode!r}.")
  num_patches = check_positive_ints(loss_cfg.get("patches_per_image", 64), "patches_per_image",
                                    1)[0]
  balanced = bool(loss_cfg.get("class_balanced", False))
  class_weights = check_class_weights(loss_cfg.get("class_weights"), num_classes)
  ce_loss, dense_normalizer = cross_entropy_pieces(num_classes, class_weights)
  per_pixel = ce_loss.per_pixel

  def dense_train_loss(variables, batch, *, rng, step=None, axis_name=None):
    del step
    outputs = module.apply(variables, batch["image"], train=True, rngs={"dropout": rng})
    normalizer = dense_normalizer(outputs, batch)
    if axis_name is not None:
      normalizer = jax.lax.psum(normalizer, axis_name)
    total, terms = ce_loss(outputs, batch, normalizer=normalizer)
    return total, terms, {}

  def patch_train_loss(variables, batch, *, rng, step=None, axis_name=None):
    del step
    sample_rng, dropout_rng = jax.random.split(rng)
    images, labels = batch["image"], batch["segmentation"]
    b = images.shape[0]
    centers, _ = sample_patch_centers(sample_rng, labels, num_patches, class_balanced=balanced)
    patches = extract_patches(images, centers, r)  # (B, P, R, R, C)
    logits = module.apply(variables, patches.reshape(b * num_patches, r, r, -1), train=True,
                          method=PatchwiseSegmenter.classify_patches,
                          rngs={"dropout": dropout_rng})  # (B P, K)
    centre_labels = jax.vmap(lambda l, c: l[c[:, 0], c[:, 1]])(labels, centers)  # (B, P)
    centre_labels = centre_labels.reshape(b * num_patches)
    normalizer = cross_entropy_normalizer(centre_labels, num_classes=num_classes,
                                          ignore_label=IGNORE_LABEL, class_weights=class_weights)
    if axis_name is not None:
      normalizer = jax.lax.psum(normalizer, axis_name)
    total = jnp.sum(per_pixel(logits, centre_labels)) / jnp.maximum(normalizer, 1e-6)
    return total, {"cross_entropy": total}, {}

  def predict(variables, batch):
    outputs = module.apply(variables, batch["image"], train=False)
    return {"segmentation": jnp.argmax(outputs["logits"], axis=-1).astype(jnp.int32)}

  def postprocess(outputs):
    return jnp.argmax(outputs["logits"], axis=-1).astype(jnp.int32)

  return Family(module=module, task="segmentation",
                train_loss=dense_train_loss if mode == "dense" else patch_train_loss,
                predict=predict, loss=ce_loss, loss_normalizer=dense_normalizer,
                postprocess=postprocess, num_classes=num_classes)
