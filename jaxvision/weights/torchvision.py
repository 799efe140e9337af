"""Converters from torchvision state dicts to jaxvision backbone variables, and a checked loader.

``convert_resnet(state_dict, depth)`` and ``convert_vgg16(state_dict)`` map torchvision's
``resnet18/34/50/101`` and ``vgg16`` / ``vgg16_bn`` state dicts (``{name: np.ndarray}``, e.g. from
``jaxvision.weights.io.load_state_dict``) to the variables of ``jaxvision.models.backbones.ResNet``
and ``VGG16`` (``{"params": ..., "batch_stats": ...}``). ``load_into(template, converted)``
puts them into a model's variables, checking every key and shape first; ``load_backbone_weights``
does file -> converted -> checked variables in one call. Tested for exact output parity with
torchvision (``tests/weights/test_backbone_weights.py``, fixtures from
``tests/fixtures/gen_weights.py``).

Layout differences handled here:

* Activations: torchvision is NCHW, jaxvision NHWC (``x_jax = x_torch.transpose(0, 2, 3, 1)``).
* ``Conv2d.weight [O, I, kh, kw]`` -> ``nn.Conv`` kernel ``[kh, kw, I, O]`` (``transpose(2, 3, 1,
  0)``); biases unchanged. ``Linear.weight [out, in]`` -> ``nn.Dense`` kernel ``[in, out]``.
* ``ConvTranspose2d.weight [I, O, kh, kw]`` (``conv_transpose_kernel``): for ``nn.ConvTranspose``
  with ``transpose_kernel=True`` (scatter semantics, as PyTorch; jaxvision's FCN upsampling) it is
  ``transpose(2, 3, 1, 0)`` -> ``[kh, kw, O, I]``; with the Flax default ``transpose_kernel=False``
  (gather form: SegNet/U-Net/DeconvNet/hourglass decoders) it is ``transpose(2, 3, 0, 1)`` flipped in
  both spatial axes -> ``[kh, kw, I, O]``. PyTorch's ``padding=p`` (and ``output_padding=q``) is the
  explicit Flax/lax padding ``(k - 1 - p, k - 1 - p + q)`` per axis (``"VALID"`` for ``p = q = 0``).
* BatchNorm ``weight, bias, running_mean, running_var`` -> ``scale, bias, mean, var``: with
  ``norm="batch"`` (``nn.BatchNorm``) ``scale``/``bias`` go to ``params`` and ``mean``/``var`` to
  ``batch_stats``; with ``norm="frozen"`` (``FrozenBatchNorm``, torchvision's detection backbones)
  all four go to ``batch_stats`` (``jaxvision.models.layers.norm``). ``num_batches_tracked`` is
  dropped. Epsilon is 1e-5 in both libraries (``nn.BatchNorm2d`` and ``FrozenBatchNorm2d``); PyTorch's
  BN ``momentum=0.1`` is Flax's ``momentum=0.9`` (only matters when training).
* VGG-16's classifier as convolutions (FCN, Long et al. 2015): ``classifier.0`` (``Linear(25088,
  4096)``, its input being ``pool5`` flattened in C, H, W order) -> ``fc6`` 7x7 kernel
  ``weight.reshape(4096, 512, 7, 7).transpose(2, 3, 1, 0)``; ``classifier.3`` (``Linear(4096, 4096)``)
  -> ``fc7`` 1x1 kernel; ``classifier.6`` (the 1000 ImageNet classes) is not part of the backbone and
  is dropped. torchvision applies ``AdaptiveAvgPool2d((7, 7))`` before its classifier, which is the
  identity on the 7x7 ``pool5`` of a 224 x 224 input: there ``fc6``/``fc7`` equal torchvision's
  classifier outputs exactly (the centre pixel of ``fc6_padding="same"``, the only pixel of
  ``"valid"``). On other sizes the convolutional ``fc6`` slides over ``pool5`` (FCN), where torchvision
  would resample ``pool5`` to 7x7 first.
* Padding, pooling and rounding agree by construction of the backbones: symmetric explicit conv
  padding (PyTorch's, not ``"SAME"``), max pools padded with -inf, VGG pools in floor mode
  (torchvision's ``vgg16``; ``ceil_mode`` only for SSD/FCN variants), ResNet v1.5 (stride on the 3x3).

Image normalization. torchvision's ImageNet weights expect RGB in ``[0, 1]`` normalized with mean
``(0.485, 0.456, 0.406)`` and std ``(0.229, 0.224, 0.225)``: exactly
``jaxvision.data.transforms.IMAGENET_MEAN`` / ``IMAGENET_STD`` (the constants of
``normalize_image``, applied to 0..255 images as ``(x / 255 - mean) / std``; the test checks them
against the constants torchvision's weight metadata carries). torchvision's classification preset
also resizes the short side to 256 (bilinear, antialiased) and centre-crops 224; its detection
models normalize inside the model (``GeneralizedRCNNTransform``: min size 800, max 1333), while in
jaxvision normalization and resizing belong to the data pipeline (``config.data``), so a config that
fine-tunes converted weights must keep ``normalize_image``'s default constants.

Whole detection models (``convert_fasterrcnn_resnet50_fpn``, ``convert_maskrcnn_resnet50_fpn``,
``convert_retinanet_resnet50_fpn``, ``convert_fcos_resnet50_fpn``, ``convert_ssd300_vgg16``;
tests/weights/test_detection_weights.py, fixtures from tests/fixtures/gen_detection.py). They
convert into jaxvision's torchvision configurations; ``detection_model_config`` (R-CNNs:
``preset="torchvision_fpn"``), ``retinanet_model_config`` (``anchor_style="torchvision"``,
``fpn_extra="p6p7_from_p5"``, ...), ``fcos_model_config`` (``points_style="torchvision"``,
``threshold_on="score"``, ...) and ``ssd_model_config`` (``preset="torchvision_ssd300"``) return
the model config and ``K`` for a file. On the same network input these give torchvision's
features, RPN/head outputs, anchors, proposals, detections and pasted masks (parity numbers in
the tests). What differs is the *input*: torchvision's detectors wrap the network in
``GeneralizedRCNNTransform``, jaxvision does that work in the data pipeline (``config.data``), so
match it there:

* Input: torchvision takes RGB in ``[0, 1]`` and normalizes inside the model with the ImageNet
  mean/std above; jaxvision's pipeline normalizes (``normalize_image``, the same constants) and the
  model takes the normalized image. Keep ``normalize_image``'s defaults.
* Resize: torchvision scales each image by ``min(800 / short side, 1333 / long side)`` (bilinear,
  ``align_corners=False``, *no* antialiasing) and pads the batch at the bottom/right with zeros
  (after normalization) to a multiple of 32. jaxvision resizes to fit ``config.data.image_size``
  keeping the aspect ratio (``resize_keep_aspect``, antialiased by default) and pads with 0 after
  normalization. ``image_size=(800, 1344)`` reproduces torchvision's scale for landscape images up
  to 4:3 (e.g. COCO's 640 x 480 -> 1067 x 800 in both); portrait images are scaled to fit the 800
  rows (torchvision would give them 800 columns), and downscaled images differ slightly by the
  antialiasing. Both clip boxes to the real (unpadded) image (``image_hw``), and torchvision's
  anchors, like jaxvision's ``torchvision`` anchor rules, use the padded size (``image // map``
  strides), so the padded size must be the same multiple of 32 for identical anchors.
* SSD300 (``ssd300_vgg16``) differs: its transform stretches every image to exactly 300 x 300
  (the aspect ratio is not kept; jaxvision's ``image_size=(300, 300)`` fits and pads instead) and
  normalizes Caffe-style, ``255 x - 255 mean`` with mean ``(0.48235, 0.45882, 0.40784)``: set
  ``config.data.mean = (0.48235, 0.45882, 0.40784)`` and ``config.data.std = (1 / 255,) * 3``.
* Output: torchvision maps boxes back to the original image in its transform; jaxvision returns
  network-input coordinates and the evaluators map them back with the batch's ``scale``.
* Classes: the R-CNNs' and SSD's ``K + 1`` softmax (0 = background) and jaxvision's agree, labels
  equal; RetinaNet's and FCOS's sigmoid heads have a background channel 0 that jaxvision drops
  (labels equal again, COCO category ids for the COCO files).

Loading a downloaded file (e.g. ``fasterrcnn_resnet50_fpn_coco-258fb6c6.pth``)::

  from jaxvision.weights import load_state_dict, detection_model_config, load_model_into
  config, k = detection_model_config(load_state_dict(path))      # the matching model config
  family = MODELS[config.pop("name")](config, k)
  variables = family.init(key, batch)                         # or jax.eval_shape(...)
  variables = load_model_into(variables, path, "fasterrcnn_resnet50_fpn")   # checked, whole model
  family.predict(variables, batch)

Wiring ``config.init_from`` (for the training loop, ``jaxvision.train.loop._init_state``): after
the family's initial variables, before ``tx.init(params)``, replace the backbone sub-tree by the
converted file, checked::

  variables = jax.jit(lambda k: family.init_variables(k, dummy))(key)
  if config.get("init_from"):
    variables = load_backbone_into(variables, config.init_from, config.model.backbone,
                                   at="backbone")  # WeightMismatchError on any mismatch

``at`` is the backbone's path inside each collection (``"backbone"`` for the families whose module
holds it as the ``backbone`` attribute); the norm (``"batch"`` / ``"frozen"``) and, for VGG,
``fc_as_conv`` are read from the variables; ``prefix``/``key`` select the backbone inside a larger
checkpoint (``prefix="backbone.body."`` for torchvision's detection models). A resumed run
restores its own checkpoint over these values, as it does over a random initialization.
"""

from __future__ import annotations

import os
import re
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

__all__ = ["convert_resnet", "convert_vgg16", "convert_backbone", "convert_deeplabv3",
           "convert_fcn_resnet", "convert_fasterrcnn_resnet50_fpn", "convert_maskrcnn_resnet50_fpn",
           "detection_model_config", "upgrade_legacy_detection_keys",
           "convert_retinanet_resnet50_fpn", "retinanet_model_config", "load_into",
           "load_model_into", "MODEL_CONVERTERS", "convert_fcos_resnet50_fpn", "fcos_model_config",
           "convert_ssd300_vgg16", "ssd_model_config",
           "load_backbone_weights", "load_backbone_into", "check_variables", "infer_resnet_depth",
           "resnet_torchvision_keys", "vgg16_torchvision_keys", "conv_kernel", "linear_kernel",
           "conv_transpose_kernel", "WeightMismatchError"]

_BN_FIELDS = {"weight": "scale", "bias": "bias", "running_mean": "mean", "running_var": "var"}
_VGG16_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")
_SHOWN = 20  # entries listed per category in a mismatch report


class WeightMismatchError(ValueError):
  """Weights and model disagree. ``missing``, ``unexpected``: key lists; ``mismatched``:
  ``[(key, expected shape/dtype, found shape/dtype)]``."""

  def __init__(self, what: str, missing=(), unexpected=(), mismatched=(), hint: str = ""):
    self.missing, self.unexpected = list(missing), list(unexpected)
    self.mismatched = list(mismatched)
    lines = [f"{what}: {len(self.missing)} missing, {len(self.unexpected)} unexpected, "
             f"{len(self.mismatched)} mismatched; nothing was loaded."]
    if self.missing:
      lines.append("  missing (expected, not found): " + _listing(self.missing))
    if self.unexpected:
      lines.append("  unexpected (found, not expected): " + _listing(self.unexpected))
    if self.mismatched:
      lines.append("  mismatched (key: expected vs found):")
      lines += [f"    {k}: expected {e}, found {f}" for k, e, f in self.mismatched[:_SHOWN]]
      if len(self.mismatched) > _SHOWN:
        lines.append(f"    ... and {len(self.mismatched) - _SHOWN} more")
    if hint:
      lines.append("  " + hint)
    super().__init__("\n".join(lines))


def _listing(keys: Sequence[str]) -> str:
  shown = ", ".join(keys[:_SHOWN])
  return shown + (f", ... and {len(keys) - _SHOWN} more" if len(keys) > _SHOWN else "")


# ------------------------------------------------------------------------------------------------
# Array layout
# ------------------------------------------------------------------------------------------------


def _ndim(w, n: int, what: str) -> np.ndarray:
  w = np.asarray(w)
  if w.ndim != n:
    raise ValueError(f"{what}: expected a {n}-D array, got shape {w.shape}.")
  return w


def conv_kernel(weight) -> np.ndarray:
  """``Conv2d.weight [O, I, kh, kw]`` -> ``nn.Conv`` kernel ``[kh, kw, I, O]``."""
  return _ndim(weight, 4, "conv_kernel weight").transpose(2, 3, 1, 0)


def linear_kernel(weight) -> np.ndarray:
  """``Linear.weight [out, in]`` -> ``nn.Dense`` kernel ``[in, out]``."""
  return _ndim(weight, 2, "linear_kernel weight").T


def conv_transpose_kernel(weight, *, transpose_kernel: bool = False) -> np.ndarray:
  """``ConvTranspose2d.weight [I, O, kh, kw]`` -> ``nn.ConvTranspose`` kernel (module docstring).

  ``transpose_kernel=False`` (Flax's default): ``[kh, kw, I, O]``, spatially flipped;
  ``transpose_kernel=True``: ``[kh, kw, O, I]``. Only ``groups=1`` and ``dilation=1`` are covered.
  """
  w = _ndim(weight, 4, "conv_transpose_kernel weight")
  if transpose_kernel:
    return w.transpose(2, 3, 1, 0)
  return w.transpose(2, 3, 0, 1)[::-1, ::-1]


# ------------------------------------------------------------------------------------------------
# Generic table-driven conversion
# ------------------------------------------------------------------------------------------------

# kind -> the state-dict fields a module of that kind has
_FIELDS = {
    "conv": ("weight",),
    "conv_bias": ("weight", "bias"),
    "bn": ("weight", "bias", "running_mean", "running_var"),
    "fc6": ("weight", "bias"),
    "fc7": ("weight", "bias"),
    "linear": ("weight", "bias"),  # nn.Linear -> nn.Dense
    "fc_flat": ("weight", "bias"),  # nn.Linear on a flattened [C, k, k] map -> nn.Dense on [k, k, C]
    "conv_t_bias": ("weight", "bias"),  # nn.ConvTranspose2d -> nn.ConvTranspose (gather form)
    "gn": ("weight", "bias"),  # nn.GroupNorm -> nn.GroupNorm (scale, bias in params)
    "l2scale": ("scale_weight",),  # SSD's L2Norm scale -> L2Norm's "scale"
}


def _set(tree: dict, path: Sequence[str], value) -> None:
  for p in path[:-1]:
    tree = tree.setdefault(p, {})
  tree[path[-1]] = value


def _fc6_kernel(weight, in_channels: int) -> np.ndarray:
  w = _ndim(weight, 2, "classifier.0.weight")  # (F, C * k * k)
  f, n = w.shape
  k = int(round(np.sqrt(n / in_channels))) if n % in_channels == 0 else 0
  if k < 1 or in_channels * k * k != n:
    raise ValueError(f"classifier.0.weight {w.shape}: its {n} inputs are not {in_channels} "
                     "channels x k x k.")
  return conv_kernel(w.reshape(f, in_channels, k, k))  # (k, k, C, F)


def _convert(state_dict: Mapping[str, Any], table: Mapping[str, tuple[tuple[str, ...], str]], *,
             norm: str, prefix: str, skip: Iterable[str], what: str, hint: str = "",
             fc6_channels: int = 512) -> dict:
  """Maps ``state_dict`` through ``table`` (torch module name -> (jaxvision path, kind)).

  Keys outside ``prefix`` are ignored; inside it, a key must belong to a table module (its fields)
  or start with a ``skip`` module name; ``num_batches_tracked`` is dropped. Every table field must
  be present. Raises ``WeightMismatchError`` otherwise.
  """
  if norm not in ("batch", "frozen"):
    raise ValueError(f"norm must be 'batch' or 'frozen', got {norm!r}.")
  if not isinstance(state_dict, Mapping):
    raise TypeError("state_dict must be a mapping of names to arrays, got "
                    f"{type(state_dict).__name__}.")
  skip = tuple(skip)
  found: dict[str, dict[str, Any]] = {}
  unexpected, n_in_prefix = [], 0
  for key, value in state_dict.items():
    if not key.startswith(prefix):
      continue
    n_in_prefix += 1
    name = key[len(prefix):]
    module, _, field = name.rpartition(".")
    if field == "num_batches_tracked" or any(name == s or name.startswith(s + ".") for s in skip):
      continue
    if module in table and field in _FIELDS[table[module][1]]:
      found.setdefault(module, {})[field] = value
    else:
      unexpected.append(key)
  if prefix and n_in_prefix == 0:
    raise WeightMismatchError(f"{what}: no key starts with prefix {prefix!r}",
                              unexpected=sorted(state_dict)[:_SHOWN])
  missing = [prefix + f"{m}.{f}" for m, (_, kind) in table.items() for f in _FIELDS[kind]
             if f not in found.get(m, {})]
  if missing or unexpected:
    raise WeightMismatchError(what, missing, unexpected, hint=hint)

  params: dict = {}
  stats: dict = {}
  for module, (path, kind) in table.items():
    fields = found[module]
    if kind in ("conv", "conv_bias"):
      _set(params, path + ("kernel",), conv_kernel(fields["weight"]))
      if kind == "conv_bias":
        _set(params, path + ("bias",), np.asarray(fields["bias"]))
    elif kind == "bn":
      for field, name in _BN_FIELDS.items():
        target = stats if norm == "frozen" or name in ("mean", "var") else params
        _set(target, path + (name,), np.asarray(fields[field]))
    elif kind == "fc6":
      _set(params, path + ("kernel",), _fc6_kernel(fields["weight"], fc6_channels))
      _set(params, path + ("bias",), np.asarray(fields["bias"]))
    elif kind == "fc7":
      w = _ndim(fields["weight"], 2, f"{module}.weight")  # (F2, F)
      _set(params, path + ("kernel",), w.T[None, None])  # (1, 1, F, F2)
      _set(params, path + ("bias",), np.asarray(fields["bias"]))
    elif kind == "linear":
      _set(params, path + ("kernel",), linear_kernel(fields["weight"]))
      _set(params, path + ("bias",), np.asarray(fields["bias"]))
    elif kind == "fc_flat":
      k = _fc6_kernel(fields["weight"], fc6_channels)  # (k, k, C, F)
      _set(params, path + ("kernel",), k.reshape(-1, k.shape[-1]))  # (k k C, F): NHWC flatten
      _set(params, path + ("bias",), np.asarray(fields["bias"]))
    elif kind == "l2scale":
      _set(params, path + ("scale",), np.asarray(fields["scale_weight"]))
    elif kind == "gn":
      _set(params, path + ("scale",), np.asarray(fields["weight"]))
      _set(params, path + ("bias",), np.asarray(fields["bias"]))
    elif kind == "conv_t_bias":
      _set(params, path + ("kernel",), conv_transpose_kernel(fields["weight"]))
      _set(params, path + ("bias",), np.asarray(fields["bias"]))
  out = {"params": params}
  if stats:
    out["batch_stats"] = stats
  return out


# ------------------------------------------------------------------------------------------------
# ResNet
# ------------------------------------------------------------------------------------------------


def _resnet_stages(depth: int):
  from jaxvision.models.backbones.resnet import RESNET_STAGES  # noqa: PLC0415
  if depth not in RESNET_STAGES:
    raise ValueError(f"depth must be one of {sorted(RESNET_STAGES)}, got {depth!r}.")
  return RESNET_STAGES[depth]


def _resnet_table(depth: int) -> dict[str, tuple[tuple[str, ...], str]]:
  kind, blocks = _resnet_stages(depth)
  convs = 2 if kind == "basic" else 3
  table = {"conv1": (("conv1",), "conv"), "bn1": (("bn1",), "bn")}
  for s, n in enumerate(blocks, start=1):
    for b in range(n):
      src, dst = f"layer{s}.{b}", f"layer{s}_{b}"
      for k in range(1, convs + 1):
        table[f"{src}.conv{k}"] = ((dst, f"conv{k}"), "conv")
        table[f"{src}.bn{k}"] = ((dst, f"bn{k}"), "bn")
      # torchvision projects where the stride or the width changes: every stage's first block,
      # except layer1 of the basic-block nets (64 -> 64 at stride 1).
      if b == 0 and (s > 1 or kind == "bottleneck"):
        table[f"{src}.downsample.0"] = ((dst, "downsample_conv"), "conv")
        table[f"{src}.downsample.1"] = ((dst, "downsample_bn"), "bn")
  return table


def resnet_torchvision_keys(depth: int) -> list[str]:
  """The state-dict keys ``convert_resnet`` needs for ``depth`` (no ``fc``, no counters)."""
  return [f"{m}.{f}" for m, (_, kind) in _resnet_table(depth).items() for f in _FIELDS[kind]]


def infer_resnet_depth(state_dict: Mapping[str, Any], prefix: str = "") -> int | None:
  """The torchvision ResNet depth (18/34/50/101) whose block layout the keys have, or None."""
  from jaxvision.models.backbones.resnet import RESNET_STAGES  # noqa: PLC0415
  blocks = []
  for s in range(1, 5):
    ids = {k[len(prefix):].split(".")[1] for k in state_dict
           if k.startswith(f"{prefix}layer{s}.") and k[len(prefix):].count(".") >= 2}
    blocks.append(len(ids))
  kind = "bottleneck" if f"{prefix}layer1.0.conv3.weight" in state_dict else "basic"
  for depth, stages in RESNET_STAGES.items():
    if stages == (kind, tuple(blocks)):
      return depth
  return None


def convert_resnet(state_dict: Mapping[str, Any], depth: int, *, norm: str = "batch",
                   prefix: str = "") -> dict:
  """torchvision ``resnet<depth>`` state dict -> ``ResNet(depth, norm=norm)`` variables.

  Args:
    state_dict: ``{name: array}`` in torchvision's naming and layout (``fc.*`` and
      ``num_batches_tracked`` are dropped).
    depth: 18, 34, 50 or 101.
    norm: the backbone's norm, ``"batch"`` (``scale``/``bias`` in ``params``, ``mean``/``var`` in
      ``batch_stats``) or ``"frozen"`` (all four in ``batch_stats``).
    prefix: where the ResNet sits in a larger state dict (``"backbone.body."`` in torchvision's
      detection models); keys outside it are ignored.

  Returns:
    ``{"params": ..., "batch_stats": ...}`` of NumPy arrays (transposed views of the inputs where
    possible; the backbone's naming, see ``jaxvision.models.backbones.resnet``).

  Raises:
    WeightMismatchError: keys of the ResNet missing from the state dict, or keys under ``prefix``
      that a ResNet-``depth`` does not have (with the depth the keys suggest).
  """
  table = _resnet_table(depth)
  hint = ""
  guess = infer_resnet_depth(state_dict, prefix)
  if guess is not None and guess != depth:
    hint = f"the keys look like a ResNet-{guess}, not a ResNet-{depth}."
  return _convert(state_dict, table, norm=norm, prefix=prefix, skip=("fc",),
                  what=f"torchvision resnet{depth} state dict", hint=hint)


# ------------------------------------------------------------------------------------------------
# VGG-16
# ------------------------------------------------------------------------------------------------


def _vgg16_table(batch_norm: bool, fc_as_conv: bool) -> dict[str, tuple[tuple[str, ...], str]]:
  table, i, block, k = {}, 0, 1, 1
  for c in _VGG16_CFG:
    if c == "M":  # MaxPool2d
      i, block, k = i + 1, block + 1, 1
      continue
    table[f"features.{i}"] = ((f"conv{block}_{k}",), "conv_bias")
    if batch_norm:
      table[f"features.{i + 1}"] = ((f"bn{block}_{k}",), "bn")
    i += 3 if batch_norm else 2  # Conv2d (+ BatchNorm2d) + ReLU
    k += 1
  if fc_as_conv:
    table["classifier.0"] = (("fc6",), "fc6")
    table["classifier.3"] = (("fc7",), "fc7")
  return table


def vgg16_torchvision_keys(batch_norm: bool = False, fc_as_conv: bool = True) -> list[str]:
  """The state-dict keys ``convert_vgg16`` needs (``classifier.6`` is never needed)."""
  return [f"{m}.{f}" for m, (_, kind) in _vgg16_table(batch_norm, fc_as_conv).items()
          for f in _FIELDS[kind]]


def convert_vgg16(state_dict: Mapping[str, Any], *, fc_as_conv: bool = True,
                  batch_norm: bool | None = None, norm: str = "batch", prefix: str = "") -> dict:
  """torchvision ``vgg16`` (or ``vgg16_bn``) state dict -> ``VGG16`` variables.

  Args:
    state_dict: ``{name: array}`` in torchvision's naming and layout.
    fc_as_conv: convert ``classifier.0``/``classifier.3`` to the convolutions ``fc6`` (7x7) and
      ``fc7`` (1x1), for ``VGG16(fc_as_conv=True)``; False drops the whole classifier.
      ``classifier.6`` (ImageNet logits) is always dropped.
    batch_norm: ``vgg16_bn`` layout (BatchNorm after each convolution, for ``VGG16(norm="batch")``);
      None: detected from the keys (``features.1.running_mean`` present).
    norm: with ``batch_norm``, ``"batch"`` or ``"frozen"`` placement of the BN arrays.
    prefix: where the VGG sits in a larger state dict; keys outside it are ignored.

  Raises:
    WeightMismatchError: missing or unexpected keys (e.g. a ``vgg16_bn`` file with
      ``batch_norm=False``).
  """
  if batch_norm is None:
    batch_norm = f"{prefix}features.1.running_mean" in state_dict
  table = _vgg16_table(bool(batch_norm), fc_as_conv)
  skip = ("classifier.6",) if fc_as_conv else ("classifier",)
  name = "vgg16_bn" if batch_norm else "vgg16"
  return _convert(state_dict, table, norm=norm, prefix=prefix, skip=skip,
                  what=f"torchvision {name} state dict", fc6_channels=512)


def convert_backbone(state_dict: Mapping[str, Any], backbone_name: str, *, norm: str | None = None,
                     fc_as_conv: bool = True, prefix: str = "") -> dict:
  """``convert_resnet`` / ``convert_vgg16`` by ``jaxvision.models.backbones`` name.

  ``norm``: None -> ``"batch"`` for ResNets, plain ``vgg16`` for VGG (``"batch"`` -> ``vgg16_bn``).
  """
  from jaxvision.models.backbones import BACKBONES  # noqa: PLC0415
  if backbone_name not in BACKBONES:
    raise ValueError(f"backbone_name must be one of {list(BACKBONES)}, got {backbone_name!r}.")
  if backbone_name == "vgg16":
    return convert_vgg16(state_dict, fc_as_conv=fc_as_conv, batch_norm=norm is not None,
                         norm=norm or "batch", prefix=prefix)
  return convert_resnet(state_dict, int(backbone_name[len("resnet"):]), norm=norm or "batch",
                        prefix=prefix)


# ------------------------------------------------------------------------------------------------
# Segmentation models: deeplabv3_resnet50/101 and fcn_resnet50/101
# ------------------------------------------------------------------------------------------------


def _segmentation_table(state_dict: Mapping[str, Any], head: str, depth: int | None,
                        aux: bool | None) -> tuple[dict, int, bool]:
  """The ``_convert`` table of torchvision's ``DeepLabV3`` / ``FCN`` for ``DeepLab(head=...)``."""
  if depth is None:
    depth = infer_resnet_depth(state_dict, "backbone.")
    if depth is None:
      raise WeightMismatchError(
          f"torchvision {head} state dict: no ResNet-18/34/50/101 under 'backbone.'",
          unexpected=sorted(state_dict)[:_SHOWN])
  table = {f"backbone.{m}": (("backbone",) + path, kind)
           for m, (path, kind) in _resnet_table(depth).items()}
  if head == "deeplabv3":
    # ASPP (classifier.0): convs.0 the 1x1 branch, convs.1..n the atrous branches, convs.n+1 the
    # image pooling (AdaptiveAvgPool2d, Conv2d, BatchNorm2d, ReLU), then the 1x1 projection.
    branches = sorted({int(k.split(".")[3]) for k in state_dict
                       if k.startswith("classifier.0.convs.")})
    if len(branches) < 2 or branches != list(range(len(branches))):
      raise WeightMismatchError("torchvision deeplabv3 state dict: no ASPP branches "
                                "'classifier.0.convs.<i>'", unexpected=sorted(state_dict)[:_SHOWN])
    num_rates = len(branches) - 2
    for i in range(num_rates + 1):
      table[f"classifier.0.convs.{i}.0"] = (("aspp", f"branch{i}", "conv"), "conv")
      table[f"classifier.0.convs.{i}.1"] = (("aspp", f"branch{i}", "norm"), "bn")
    table[f"classifier.0.convs.{num_rates + 1}.1"] = (("aspp", "pooling", "conv"), "conv")
    table[f"classifier.0.convs.{num_rates + 1}.2"] = (("aspp", "pooling", "norm"), "bn")
    table["classifier.0.project.0"] = (("aspp", "project", "conv"), "conv")
    table["classifier.0.project.1"] = (("aspp", "project", "norm"), "bn")
    table["classifier.1"] = (("head_conv", "conv"), "conv")  # DeepLabHead's 3x3 conv, BN
    table["classifier.2"] = (("head_conv", "norm"), "bn")
  else:
    num_rates = 0
    table["classifier.0"] = (("fcn_conv", "conv"), "conv")  # FCNHead: 3x3 conv, BN
    table["classifier.1"] = (("fcn_conv", "norm"), "bn")
  table["classifier.4"] = (("classifier",), "conv_bias")
  if aux is None:
    aux = "aux_classifier.0.weight" in state_dict
  if aux:
    table["aux_classifier.0"] = (("aux_conv", "conv"), "conv")
    table["aux_classifier.1"] = (("aux_conv", "norm"), "bn")
    table["aux_classifier.4"] = (("aux_classifier",), "conv_bias")
  return table, num_rates, aux


def _convert_segmentation(state_dict, head: str, depth, aux, norm: str) -> dict:
  table, _, _ = _segmentation_table(state_dict, head, depth, aux)
  skip = () if any(k.startswith("aux_classifier.") for k in table) else ("aux_classifier",)
  return _convert(state_dict, table, norm=norm, prefix="", skip=skip,
                  what=f"torchvision {head} state dict")


def convert_deeplabv3(state_dict: Mapping[str, Any], *, depth: int | None = None,
                      aux: bool | None = None, norm: str = "batch") -> dict:
  """torchvision ``deeplabv3_resnet50/101`` state dict -> variables of
  ``DeepLab(backbone=ResNet(depth, output_stride=8), head="torchvision", aux=aux)``.

  torchvision's model: a ResNet with strides replaced by dilation in ``layer3`` and ``layer4``
  (output stride 8; ``make_deeplab`` with ``output_stride=8`` builds the same), ``DeepLabHead``
  (ASPP with rates (12, 24, 36) + image pooling, 256 channels, 1x1 projection, drop-out 0.5, 3x3
  conv + BN + ReLU, 1x1 classifier) and, with ``aux_loss=True``, ``FCNHead`` on ``layer3``; logits
  bilinearly resized to the input (``align_corners=False``), as ``DeepLab`` does.

  Args:
    state_dict: ``{name: array}`` in torchvision's naming.
    depth: the ResNet depth (None: read from the keys).
    aux: convert the auxiliary head (None: when the state dict has ``aux_classifier``; ``False``
      drops it).
    norm: ``"batch"`` (``nn.BatchNorm``) or ``"frozen"`` for every BatchNorm.

  Returns:
    ``{"params": ..., "batch_stats": ...}``; check it into a model with ``load_into``. The number
    of ASPP rates and classes follow the state dict.
  """
  return _convert_segmentation(state_dict, "deeplabv3", depth, aux, norm)


def convert_fcn_resnet(state_dict: Mapping[str, Any], *, depth: int | None = None,
                       aux: bool | None = None, norm: str = "batch") -> dict:
  """torchvision ``fcn_resnet50/101`` state dict -> variables of
  ``DeepLab(backbone=ResNet(depth, output_stride=8), head="fcn", aux=aux)``.

  torchvision's ``FCN``: the same dilated ResNet (output stride 8) with ``FCNHead`` on ``layer4``
  (3x3 conv to 512 channels, BN, ReLU, drop-out 0.1, 1x1 classifier) and optionally on ``layer3``.
  Arguments as ``convert_deeplabv3``.
  """
  return _convert_segmentation(state_dict, "fcn", depth, aux, norm)


# ------------------------------------------------------------------------------------------------
# Detection models: fasterrcnn_resnet50_fpn and maskrcnn_resnet50_fpn
# ------------------------------------------------------------------------------------------------

# torchvision < 0.13 module names (those of its released COCO checkpoints, e.g.
# fasterrcnn_resnet50_fpn_coco-258fb6c6.pth) -> the current ones; torchvision itself renames them
# on load (the ``_version`` checks of FeaturePyramidNetwork, RPNHead, MaskRCNNHeads and RetinaNet's
# heads).
_LEGACY_DETECTION_KEYS = (
    (re.compile(r"^(backbone\.fpn\.(?:inner|layer)_blocks\.\d+)\.(weight|bias)$"), r"\1.0.\2"),
    (re.compile(r"^rpn\.head\.conv\.(weight|bias)$"), r"rpn.head.conv.0.0.\1"),
    (re.compile(r"^roi_heads\.mask_head\.mask_fcn(\d+)\.(weight|bias)$"),
     lambda m: f"roi_heads.mask_head.{int(m[1]) - 1}.0.{m[2]}"),
)
# RetinaNet's head towers only (FCOS's current names have the same form: conv.{3i}.weight).
_LEGACY_RETINANET_HEAD = (
    re.compile(r"^(head\.(?:classification|regression)_head\.conv)\.(\d+)\.(weight|bias)$"),
    lambda m: f"{m[1]}.{int(m[2]) // 2}.0.{m[3]}")


def upgrade_legacy_detection_keys(state_dict: Mapping[str, Any], *,
                                  retinanet: bool = False) -> dict[str, Any]:
  """``state_dict`` with torchvision < 0.13 detection key names renamed to the current ones.

  ``backbone.fpn.inner_blocks.0.weight`` -> ``backbone.fpn.inner_blocks.0.0.weight`` (and
  ``layer_blocks``), ``rpn.head.conv.weight`` -> ``rpn.head.conv.0.0.weight``,
  ``roi_heads.mask_head.mask_fcn1.weight`` -> ``roi_heads.mask_head.0.0.weight``; with
  ``retinanet``, RetinaNet's ``head.classification_head.conv.2.weight`` -> ``...conv.1.0.weight``.
  Current names pass unchanged (torchvision's released ``*_coco`` checkpoints use the old ones).
  """
  rules = _LEGACY_DETECTION_KEYS + ((_LEGACY_RETINANET_HEAD,) if retinanet else ())
  out = {}
  for key, value in state_dict.items():
    for pattern, repl in rules:
      new = pattern.sub(repl, key)
      if new != key:
        key = new
        break
    out[key] = value
  return out


def _count(state_dict: Mapping[str, Any], pattern: str) -> int:
  """Number of consecutive indices ``i`` from 0 for which ``pattern.format(i)`` is a key."""
  n = 0
  while pattern.format(n) in state_dict:
    n += 1
  return n


def _resnet_fpn_table(state_dict: Mapping[str, Any], depth: int | None, what: str):
  """``(table, depth)``: the ``_convert`` table of a torchvision ``resnet_fpn_backbone``'s ResNet
  (``backbone.body.*``, depth inferred when None) and FPN lateral/output convs."""
  if depth is None:
    depth = infer_resnet_depth(state_dict, "backbone.body.")
    if depth is None:
      raise WeightMismatchError(f"{what}: no ResNet-18/34/50/101 under 'backbone.body.'",
                                unexpected=sorted(state_dict)[:_SHOWN])
  table = {f"backbone.body.{m}": (("backbone",) + path, kind)
           for m, (path, kind) in _resnet_table(depth).items()}
  n_fpn = _count(state_dict, "backbone.fpn.inner_blocks.{}.0.weight")
  if n_fpn == 0:
    raise WeightMismatchError(f"{what}: no FPN ('backbone.fpn.inner_blocks.<i>')",
                              unexpected=sorted(state_dict)[:_SHOWN])
  first = 6 - n_fpn  # torchvision returns layer1..4 = C2..C5 (fewer with returned_layers)
  for i in range(n_fpn):
    table[f"backbone.fpn.inner_blocks.{i}.0"] = (("neck", f"lateral_C{first + i}", "conv"),
                                                 "conv_bias")
    table[f"backbone.fpn.layer_blocks.{i}.0"] = (("neck", f"output_P{first + i}", "conv"),
                                                 "conv_bias")
  return table, depth


def _rcnn_table(state_dict: Mapping[str, Any], depth: int | None, what: str):
  """``_convert`` table of torchvision's ``FasterRCNN`` with a ``resnet_fpn_backbone``."""
  table, depth = _resnet_fpn_table(state_dict, depth, what)
  table["rpn.head.conv.0.0"] = (("rpn_head", "conv"), "conv_bias")
  table["rpn.head.cls_logits"] = (("rpn_head", "cls_logits"), "conv_bias")
  table["rpn.head.bbox_pred"] = (("rpn_head", "bbox_pred"), "conv_bias")
  table["roi_heads.box_head.fc6"] = (("box_head", "fc6"), "fc_flat")
  table["roi_heads.box_head.fc7"] = (("box_head", "fc7"), "linear")
  table["roi_heads.box_predictor.cls_score"] = (("box_predictor", "cls_score"), "linear")
  table["roi_heads.box_predictor.bbox_pred"] = (("box_predictor", "bbox_pred"), "linear")
  fpn_channels = int(np.shape(state_dict["backbone.fpn.inner_blocks.0.0.weight"])[0])
  return table, depth, fpn_channels


def convert_fasterrcnn_resnet50_fpn(state_dict: Mapping[str, Any], *, depth: int | None = None,
                                    norm: str = "frozen") -> dict:
  """torchvision ``fasterrcnn_resnet50_fpn`` state dict -> variables of
  ``make_faster_rcnn({"preset": "torchvision_fpn"}, num_classes)``'s module.

  Mapping (kernels transposed as in the module docstring):

  * ``backbone.body.*`` -> ``backbone/...`` (``convert_resnet``; FrozenBatchNorm: all four arrays
    in ``batch_stats`` with ``norm="frozen"``, the preset's backbone norm).
  * ``backbone.fpn.inner_blocks.{i}.0`` / ``layer_blocks.{i}.0`` -> ``neck/lateral_C{i+2}/conv``
    / ``neck/output_P{i+2}/conv`` (``P6`` is a max pool: no weights).
  * ``rpn.head.conv.0.0``, ``cls_logits``, ``bbox_pred`` -> ``rpn_head/conv``, ``cls_logits``
    (``k`` sigmoid logits), ``bbox_pred``; channel ``a * 4 + c`` is anchor ``a``'s delta ``c`` in
    both libraries.
  * ``roi_heads.box_head.fc6`` (``Linear(C * 7 * 7, 1024)`` on the ``[C, 7, 7]`` RoI features
    flattened channel-first) -> ``box_head/fc6`` (``Dense`` on ``[7, 7, C]`` flattened
    channel-last: the weight is reordered), ``fc7`` -> ``box_head/fc7``.
  * ``roi_heads.box_predictor.cls_score`` (``K + 1`` classes, 0 = background) and ``bbox_pred``
    (``4 (K + 1)``, the preset's ``box_background_slot``) -> ``box_predictor/...``.

  Key names of torchvision < 0.13 (its released ``*_coco`` files) are accepted
  (``upgrade_legacy_detection_keys``); ``num_batches_tracked`` is dropped. Widths and the number
  of classes follow the state dict (``detection_model_config`` gives the matching model config).

  Args:
    state_dict: ``{name: array}``.
    depth: the ResNet depth (None: read from the keys).
    norm: ``"frozen"`` (torchvision's detection backbones, the preset) or ``"batch"``.

  Raises:
    WeightMismatchError: missing or unexpected keys (a Mask R-CNN file names its mask keys: use
      ``convert_maskrcnn_resnet50_fpn``).
  """
  state_dict = upgrade_legacy_detection_keys(state_dict)
  what = "torchvision fasterrcnn_resnet50_fpn state dict"
  table, _, channels = _rcnn_table(state_dict, depth, what)
  hint = ("it has a mask branch: use convert_maskrcnn_resnet50_fpn."
          if any(k.startswith("roi_heads.mask_") for k in state_dict) else "")
  return _convert(state_dict, table, norm=norm, prefix="", skip=(), what=what, hint=hint,
                  fc6_channels=channels)


def convert_maskrcnn_resnet50_fpn(state_dict: Mapping[str, Any], *, depth: int | None = None,
                                  norm: str = "frozen") -> dict:
  """torchvision ``maskrcnn_resnet50_fpn`` state dict -> variables of
  ``make_mask_rcnn({"preset": "torchvision_fpn"}, num_classes)``'s module.

  Everything of ``convert_fasterrcnn_resnet50_fpn``, plus the mask branch:
  ``roi_heads.mask_head.{i}.0`` (``MaskRCNNHeads``' 3x3 convolutions) ->
  ``mask_head/mask_fcn{i+1}``,
  ``roi_heads.mask_predictor.conv5_mask`` (``ConvTranspose2d(2, stride 2)``) ->
  ``mask_head/conv5_mask`` (``conv_transpose_kernel``, gather form) and ``mask_fcn_logits``
  (``K + 1`` channels, 0 = background: ``mask_head.background_slot``, which the preset's
  ``box_background_slot`` implies) -> ``mask_head/mask_fcn_logits``.
  """
  state_dict = upgrade_legacy_detection_keys(state_dict)
  what = "torchvision maskrcnn_resnet50_fpn state dict"
  table, _, channels = _rcnn_table(state_dict, depth, what)
  n_convs = _count(state_dict, "roi_heads.mask_head.{}.0.weight")
  if n_convs == 0 or "roi_heads.mask_predictor.mask_fcn_logits.weight" not in state_dict:
    raise WeightMismatchError(f"{what}: no mask branch ('roi_heads.mask_head.<i>', "
                              "'roi_heads.mask_predictor'); a Faster R-CNN file needs "
                              "convert_fasterrcnn_resnet50_fpn",
                              missing=["roi_heads.mask_head.0.0.weight",
                                       "roi_heads.mask_predictor.mask_fcn_logits.weight"])
  for i in range(n_convs):
    table[f"roi_heads.mask_head.{i}.0"] = (("mask_head", f"mask_fcn{i + 1}"), "conv_bias")
  table["roi_heads.mask_predictor.conv5_mask"] = (("mask_head", "conv5_mask"), "conv_t_bias")
  table["roi_heads.mask_predictor.mask_fcn_logits"] = (("mask_head", "mask_fcn_logits"),
                                                       "conv_bias")
  return _convert(state_dict, table, norm=norm, prefix="", skip=(), what=what,
                  fc6_channels=channels)


def detection_model_config(state_dict: Mapping[str, Any]) -> tuple[dict, int]:
  """``(model_config, num_classes)`` of the jaxvision model a torchvision ``fasterrcnn_`` /
  ``maskrcnn_resnet50_fpn`` state dict converts into: the ``torchvision_fpn`` preset with the
  file's ResNet depth, FPN width, box-head width (and mask-head width and depth) and ``K`` =
  ``cls_score`` rows - 1. For ``make_faster_rcnn`` / ``make_mask_rcnn`` (``config.model``)."""
  sd = upgrade_legacy_detection_keys(state_dict)
  table, depth, channels = _rcnn_table(sd, None, "torchvision detection state dict")
  del table
  for key in ("roi_heads.box_predictor.cls_score.weight", "roi_heads.box_head.fc6.weight"):
    if key not in sd:
      raise WeightMismatchError("torchvision detection state dict", missing=[key])
  num_classes = int(np.shape(sd["roi_heads.box_predictor.cls_score.weight"])[0]) - 1
  config: dict[str, Any] = {
      "name": "faster_rcnn", "preset": "torchvision_fpn",
      "backbone": {"name": f"resnet{depth}", "norm": "frozen"},
      "neck": {"features": channels},
      "box_head": {"kind": "mlp",
                   "representation_size": int(np.shape(sd["roi_heads.box_head.fc6.weight"])[0])},
  }
  n_convs = _count(sd, "roi_heads.mask_head.{}.0.weight")
  if n_convs:
    config["name"] = "mask_rcnn"
    config["mask_head"] = {  # the preset sets aligned=False, paste="torchvision", background slot
        "num_convs": n_convs,
        "conv_features": int(np.shape(sd["roi_heads.mask_head.0.0.weight"])[0])}
  return config, num_classes


def _drop_class0(weight, bias, num_anchors: int):
  """A class head's ``[A (K + 1), ...]`` weight and bias without each anchor's class 0."""
  w, b = np.asarray(weight), np.asarray(bias)
  if w.shape[0] % num_anchors or w.shape[0] // num_anchors < 2:
    raise ValueError(f"class logits weight {w.shape}: {w.shape[0]} outputs are not "
                     f"{num_anchors} anchors x (K + 1 >= 2) classes.")
  c = w.shape[0] // num_anchors
  rest = w.shape[1:]
  w = w.reshape((num_anchors, c) + rest)[:, 1:].reshape((num_anchors * (c - 1),) + rest)
  return w, b.reshape(num_anchors, c)[:, 1:].reshape(-1)


def convert_retinanet_resnet50_fpn(state_dict: Mapping[str, Any], *, depth: int | None = None,
                                   norm: str = "frozen") -> dict:
  """torchvision ``retinanet_resnet50_fpn`` state dict -> variables of ``make_retinanet(config,
  num_classes - 1)``'s module, ``config = retinanet_model_config(state_dict)[0]``.

  Mapping: ``backbone.body.*`` -> ``backbone/...`` (frozen BatchNorm);
  ``backbone.fpn.inner_blocks.{i}.0`` / ``layer_blocks.{i}.0`` -> ``neck/lateral_C{i+3}/conv`` /
  ``neck/output_P{i+3}/conv``; ``backbone.fpn.extra_blocks.p6/p7`` -> ``neck/p6``, ``neck/p7``
  (computed from ``P5``: ``fpn_extra="p6p7_from_p5"``); ``head.classification_head.conv.{i}.0``
  -> ``head/cls_subnet/conv{i}/conv``, ``cls_logits`` -> ``head/cls_logits``;
  ``head.regression_head.conv.{i}.0`` -> ``head/box_subnet/conv{i}/conv``, ``bbox_reg`` ->
  ``head/bbox_deltas``. Output channels are anchor-major in both libraries (``a * K + k``,
  ``a * 4 + c``).

  Classes: torchvision's RetinaNet has ``num_classes`` outputs per anchor *including* the
  background, class 0, which is never a positive (its COCO model: 91 = 90 category ids +
  background). jaxvision's sigmoid heads predict ``K`` foreground classes with labels ``1..K`` on
  channels ``0..K-1``, so channel 0 is dropped: ``K = num_classes - 1`` and a jaxvision label equals
  torchvision's label (the COCO category id for the COCO model).
  """
  state_dict = upgrade_legacy_detection_keys(state_dict, retinanet=True)
  what = "torchvision retinanet_resnet50_fpn state dict"
  table = _fpn_p3_table(state_dict, depth, what)
  for head, sub, out, dst in (("classification_head", "cls_subnet", "cls_logits", "cls_logits"),
                              ("regression_head", "box_subnet", "bbox_reg", "bbox_deltas")):
    for i in range(_count(state_dict, f"head.{head}.conv.{{}}.0.weight")):
      table[f"head.{head}.conv.{i}.0"] = (("head", sub, f"conv{i}", "conv"), "conv_bias")
    table[f"head.{head}.{out}"] = (("head", dst), "conv_bias")
  out = _convert(state_dict, table, norm=norm, prefix="", skip=(), what=what)
  a = int(np.shape(state_dict["head.regression_head.bbox_reg.weight"])[0]) // 4
  cls = out["params"]["head"]["cls_logits"]
  w, b = _drop_class0(cls["kernel"].transpose(3, 2, 0, 1), cls["bias"], a)
  cls["kernel"], cls["bias"] = conv_kernel(w), b
  return out


def retinanet_model_config(state_dict: Mapping[str, Any]) -> tuple[dict, int]:
  """``(model_config, K)`` of the jaxvision RetinaNet a torchvision ``retinanet_resnet50_fpn``
  state dict converts into (``make_retinanet(model_config, K)``): torchvision's architecture and
  inference settings (frozen BatchNorm, ``P6``/``P7`` from ``P5``, its anchors, boxes clipped to
  zero size kept, 300 detections, L1 box loss) with the file's widths; ``K`` = its
  ``num_classes - 1`` (see ``convert_retinanet_resnet50_fpn``)."""
  sd = upgrade_legacy_detection_keys(state_dict, retinanet=True)
  depth = infer_resnet_depth(sd, "backbone.body.")
  need = ["head.classification_head.cls_logits.weight", "head.regression_head.bbox_reg.weight",
          "backbone.fpn.inner_blocks.0.0.weight", "head.classification_head.conv.0.0.weight"]
  missing = [k for k in need if k not in sd]
  if depth is None or missing:
    raise WeightMismatchError("torchvision retinanet_resnet50_fpn state dict", missing=missing,
                              hint="" if depth else "no ResNet under 'backbone.body.'.")
  a = int(np.shape(sd["head.regression_head.bbox_reg.weight"])[0]) // 4
  k = int(np.shape(sd["head.classification_head.cls_logits.weight"])[0]) // a - 1
  config = {
      "name": "retinanet", "backbone": f"resnet{depth}", "backbone_args": {"norm": "frozen"},
      "fpn_features": int(np.shape(sd["backbone.fpn.inner_blocks.0.0.weight"])[0]),
      "fpn_extra": "p6p7_from_p5",
      "head_features": int(np.shape(sd["head.classification_head.conv.0.0.weight"])[0]),
      "head_convs": _count(sd, "head.classification_head.conv.{}.0.weight"),
      "anchor_style": "torchvision", "drop_empty_boxes": False, "box_loss": "l1",
      "max_detections": 300,
  }
  return config, k


def _fpn_p3_table(state_dict: Mapping[str, Any], depth: int | None, what: str) -> dict:
  """Backbone + ``P3..P7`` FPN (``LastLevelP6P7``) part of RetinaNet's and FCOS's tables."""
  table, _ = _resnet_fpn_table(state_dict, depth, what)
  table["backbone.fpn.extra_blocks.p6"] = (("neck", "p6"), "conv_bias")
  table["backbone.fpn.extra_blocks.p7"] = (("neck", "p7"), "conv_bias")
  return table


def convert_fcos_resnet50_fpn(state_dict: Mapping[str, Any], *, depth: int | None = None,
                              norm: str = "frozen") -> dict:
  """torchvision ``fcos_resnet50_fpn`` state dict -> variables of ``make_fcos(config, K)``'s
  module, ``(config, K) = fcos_model_config(state_dict)``.

  Mapping: backbone and ``P3..P7`` FPN as ``convert_retinanet_resnet50_fpn``;
  ``head.classification_head.conv.{3i}`` (conv) / ``conv.{3i+1}`` (``GroupNorm(32)``) ->
  ``head/cls_tower/conv{i}/conv`` / ``norm``, ``cls_logits`` -> ``head/cls_logits`` (class 0,
  the background, dropped: ``K = num_classes - 1``, labels equal torchvision's);
  ``head.regression_head.conv.*`` -> ``head/reg_tower/...``, ``bbox_reg`` -> ``head/bbox_reg``,
  ``bbox_ctrness`` -> ``head/centerness`` (computed from the regression tower:
  ``centerness_on_reg``). torchvision has no per-level scale on the distances: the scales
  ``head/scale_P3..P7`` are set to 1 (``relu(1 * x)``, in units of torchvision's anchor sizes
  ``2^l``, the ``"relu"`` activation).
  """
  state_dict = upgrade_legacy_detection_keys(state_dict)
  what = "torchvision fcos_resnet50_fpn state dict"
  table = _fpn_p3_table(state_dict, depth, what)
  for head, sub in (("classification_head", "cls_tower"), ("regression_head", "reg_tower")):
    i = 0  # Sequential of (conv, GroupNorm, ReLU) x num_convs: conv.0, conv.1, conv.3, ...
    while f"head.{head}.conv.{3 * i}.weight" in state_dict:
      table[f"head.{head}.conv.{3 * i}"] = (("head", sub, f"conv{i}", "conv"), "conv_bias")
      table[f"head.{head}.conv.{3 * i + 1}"] = (("head", sub, f"conv{i}", "norm"), "gn")
      i += 1
  table["head.classification_head.cls_logits"] = (("head", "cls_logits"), "conv_bias")
  table["head.regression_head.bbox_reg"] = (("head", "bbox_reg"), "conv_bias")
  table["head.regression_head.bbox_ctrness"] = (("head", "centerness"), "conv_bias")
  out = _convert(state_dict, table, norm=norm, prefix="", skip=(), what=what)
  cls = out["params"]["head"]["cls_logits"]
  w, b = _drop_class0(cls["kernel"].transpose(3, 2, 0, 1), cls["bias"], 1)
  cls["kernel"], cls["bias"] = conv_kernel(w), b
  levels = [f"P{6 - _count(state_dict, 'backbone.fpn.inner_blocks.{}.0.weight') + i}"
            for i in range(_count(state_dict, "backbone.fpn.inner_blocks.{}.0.weight") + 2)]
  for name in levels:  # P3..P7
    out["params"]["head"][f"scale_{name}"] = np.ones((), np.float32)
  return out


def fcos_model_config(state_dict: Mapping[str, Any]) -> tuple[dict, int]:
  """``(model_config, K)`` of the jaxvision FCOS a torchvision ``fcos_resnet50_fpn`` state dict
  converts into (``make_fcos(model_config, K)``): torchvision's architecture and inference
  (frozen BatchNorm, its locations, GroupNorm epsilon 1e-5, candidates by the combined score
  > 0.2, boxes clipped to zero size kept) with the file's widths; ``K = num_classes - 1``."""
  sd = upgrade_legacy_detection_keys(state_dict)
  depth = infer_resnet_depth(sd, "backbone.body.")
  need = ["head.classification_head.cls_logits.weight", "backbone.fpn.inner_blocks.0.0.weight",
          "head.classification_head.conv.0.weight", "head.regression_head.bbox_ctrness.weight"]
  missing = [k for k in need if k not in sd]
  if depth is None or missing:
    raise WeightMismatchError("torchvision fcos_resnet50_fpn state dict", missing=missing,
                              hint="" if depth else "no ResNet under 'backbone.body.'.")
  n_convs = 0
  while f"head.classification_head.conv.{3 * n_convs}.weight" in sd:
    n_convs += 1
  config = {
      "name": "fcos", "backbone": f"resnet{depth}", "backbone_args": {"norm": "frozen"},
      "fpn_features": int(np.shape(sd["backbone.fpn.inner_blocks.0.0.weight"])[0]),
      "fpn_extra": "p6p7_from_p5",
      "head_features": int(np.shape(sd["head.classification_head.conv.0.weight"])[0]),
      "head_convs": n_convs, "head_norm": "group", "head_norm_epsilon": 1e-5,
      "centerness_on_reg": True, "reg_activation": "relu", "points_style": "torchvision",
      "threshold_on": "score", "score_threshold": 0.2, "drop_empty_boxes": False,
  }
  return config, int(np.shape(sd["head.classification_head.cls_logits.weight"])[0]) - 1


def convert_ssd300_vgg16(state_dict: Mapping[str, Any]) -> dict:
  """torchvision ``ssd300_vgg16`` state dict -> variables of ``make_ssd(config, K)``'s module,
  ``(config, K) = ssd_model_config(state_dict)`` (``preset="torchvision_ssd300"``).

  Mapping: ``backbone.features.{i}`` (VGG-16 up to ``conv4_3``) -> ``backbone/conv{b}_{k}``;
  ``backbone.extra.0`` (``pool4``, ``conv5_1..3``, then ``pool5`` 3x3/1, ``fc6`` 3x3 dilation 6,
  ``fc7`` 1x1) -> ``backbone/conv5_{k}``, ``backbone/fc6``, ``backbone/fc7``;
  ``backbone.scale_weight`` (``conv4_3``'s L2 normalization) -> ``conv4_3_l2norm/scale``;
  ``backbone.extra.{i}.0`` / ``.2`` -> ``extra{i}_1/conv`` / ``extra{i}_2/conv``;
  ``head.classification_head.module_list.{i}`` / ``regression_head`` -> ``cls_head{i+1}`` /
  ``box_head{i+1}``. Both have ``K + 1`` softmax classes (0 = background) in the anchor-major
  layout ``a * (K + 1) + c``; labels are equal.
  """
  what = "torchvision ssd300_vgg16 state dict"
  table: dict[str, tuple[tuple[str, ...], str]] = {"backbone": (("conv4_3_l2norm",), "l2scale")}
  # VGG-16 configuration D up to conv4_3 (features), then pool4 + conv5_x + fc6/fc7 (extra.0).
  i, block, k = 0, 1, 1
  for c in _VGG16_CFG[:13]:
    if c == "M":
      i, block, k = i + 1, block + 1, 1
      continue
    table[f"backbone.features.{i}"] = (("backbone", f"conv{block}_{k}"), "conv_bias")
    i, k = i + 2, k + 1
  for k in range(3):
    table[f"backbone.extra.0.{1 + 2 * k}"] = (("backbone", f"conv5_{k + 1}"), "conv_bias")
  table["backbone.extra.0.7.1"] = (("backbone", "fc6"), "conv_bias")
  table["backbone.extra.0.7.3"] = (("backbone", "fc7"), "conv_bias")
  e = 1
  while f"backbone.extra.{e}.0.weight" in state_dict:
    table[f"backbone.extra.{e}.0"] = ((f"extra{e}_1", "conv"), "conv_bias")
    table[f"backbone.extra.{e}.2"] = ((f"extra{e}_2", "conv"), "conv_bias")
    e += 1
  n = _count(state_dict, "head.classification_head.module_list.{}.weight")
  if e == 1 or n == 0:
    raise WeightMismatchError(f"{what}: no SSD extras ('backbone.extra.<i>') or heads "
                              "('head.classification_head.module_list.<i>')",
                              unexpected=sorted(state_dict)[:_SHOWN])
  for j in range(n):
    table[f"head.classification_head.module_list.{j}"] = ((f"cls_head{j + 1}",), "conv_bias")
    table[f"head.regression_head.module_list.{j}"] = ((f"box_head{j + 1}",), "conv_bias")
  return _convert(state_dict, table, norm="batch", prefix="", skip=(), what=what)


def ssd_model_config(state_dict: Mapping[str, Any]) -> tuple[dict, int]:
  """``(model_config, K)`` for ``make_ssd`` matching a torchvision ``ssd300_vgg16`` state dict:
  ``preset="torchvision_ssd300"`` with the file's widths (``vgg_width``, ``vgg_fc_features``,
  ``extra_layers``); ``K`` = classes - 1 (the background)."""
  need = ["backbone.features.0.weight", "backbone.extra.0.7.1.weight",
          "head.classification_head.module_list.0.weight",
          "head.regression_head.module_list.0.weight"]
  missing = [k for k in need if k not in state_dict]
  if missing:
    raise WeightMismatchError("torchvision ssd300_vgg16 state dict", missing=missing)
  extras, e = [], 1
  while f"backbone.extra.{e}.0.weight" in state_dict:
    c1 = int(np.shape(state_dict[f"backbone.extra.{e}.0.weight"])[0])
    c3 = int(np.shape(state_dict[f"backbone.extra.{e}.2.weight"])[0])
    extras.append((c1, c3, 2 if e <= 2 else 1, 1 if e <= 2 else 0))  # SSDFeatureExtractorVGG
    e += 1
  a0 = int(np.shape(state_dict["head.regression_head.module_list.0.weight"])[0]) // 4
  k1 = int(np.shape(state_dict["head.classification_head.module_list.0.weight"])[0]) // a0
  config = {"name": "ssd", "preset": "torchvision_ssd300",
            "vgg_width": int(np.shape(state_dict["backbone.features.0.weight"])[0]),
            "vgg_fc_features": int(np.shape(state_dict["backbone.extra.0.7.1.weight"])[0]),
            "extra_layers": tuple(extras)}
  return config, k1 - 1


# ------------------------------------------------------------------------------------------------
# Checked loading
# ------------------------------------------------------------------------------------------------


def _flatten(tree, prefix=()) -> dict[tuple[str, ...], Any]:
  out = {}
  if isinstance(tree, Mapping):
    for k, v in tree.items():
      out.update(_flatten(v, prefix + (str(k),)))
  else:
    out[prefix] = tree
  return out


def _unflatten(flat: Mapping[tuple[str, ...], Any]) -> dict:
  out: dict = {}
  for path, v in flat.items():
    _set(out, path, v)
  return out


def _desc(x) -> str:
  return f"{tuple(np.shape(x))} {np.dtype(x.dtype).name}"


def _compatible(expected, found) -> bool:
  if tuple(np.shape(expected)) != tuple(np.shape(found)):
    return False
  e, f = np.dtype(expected.dtype), np.dtype(found.dtype)
  floating = lambda d: np.issubdtype(d, np.floating) or d.name == "bfloat16"  # noqa: E731
  return e == f or (floating(e) and floating(f))


def _parse_at(at) -> tuple[str, ...]:
  if at is None:
    return ()
  if isinstance(at, str):
    return tuple(p for p in at.split("/") if p)
  return tuple(str(p) for p in at)


def check_variables(template: Mapping[str, Any], converted: Mapping[str, Any], *,
                    at: str | Sequence[str] | None = None) -> tuple[list, list, list]:
  """``(missing, unexpected, mismatched)`` between ``template``'s (sub)trees and ``converted``.

  Keys are ``collection/path/to/leaf``. With ``at``, ``converted[collection]`` is compared with
  ``template[collection][at...]`` for every collection where either has that sub-tree. Shapes
  must be equal; dtypes equal, or both floating (cast on load). Nothing is loaded.
  """
  at = _parse_at(at)
  missing, unexpected, mismatched = [], [], []
  collections_ = sorted(set(template) | set(converted))
  for col in collections_:
    sub = template.get(col, {})
    for p in at:
      sub = sub.get(p, {}) if isinstance(sub, Mapping) else {}
    want = _flatten(sub)
    have = _flatten(converted.get(col, {}))
    name = lambda path: "/".join((col,) + at + path)  # noqa: E731
    missing += [name(p) for p in want if p not in have]
    unexpected += [name(p) for p in have if p not in want]
    mismatched += [(name(p), _desc(want[p]), _desc(have[p])) for p in want
                   if p in have and not _compatible(want[p], have[p])]
  return sorted(missing), sorted(unexpected), sorted(mismatched)


def _without(tree: Mapping[str, Any], skip: Sequence[tuple[str, ...]]) -> dict:
  """``tree`` (one collection) without the leaves under any of the ``skip`` paths."""
  return _unflatten({p: v for p, v in _flatten(tree).items()
                     if not any(p[:len(s)] == s for s in skip)})


def load_into(template: Mapping[str, Any], converted: Mapping[str, Any], *,
              at: str | Sequence[str] | None = None, what: str = "load_into",
              skip: Sequence[str] = ()) -> dict:
  """``template`` with ``converted``'s arrays in place, after checking every key and shape.

  Args:
    template: the model's variables (``{"params": ..., "batch_stats": ...}``; arrays, or
      ``jax.ShapeDtypeStruct`` from ``jax.eval_shape(module.init, ...)`` when ``at`` is None).
    converted: variables of the same structure (e.g. ``convert_resnet``'s output).
    at: None: ``converted`` must cover the whole template. A path (``"backbone"``,
      ``"a/b"`` or a tuple): ``converted`` replaces that sub-tree in every collection and must
      cover it exactly; the rest of the template is kept.
    what: named in the error message.
    skip: sub-tree paths (``"roi_heads/box_predictor"``, relative to each collection, or to
      ``at``) left out on both sides: the template's values stay there and ``converted``'s are
      dropped (fine-tuning a model whose predictor has another number of classes). Every path
      must name something in the template (a typo is an error, not a silent full load).

  Returns:
    A new nested dict; loaded leaves are ``jax.Array`` of the template's dtype (floating values
    are cast, e.g. a float16 checkpoint into a float32 model), other leaves are the template's.

  Raises:
    WeightMismatchError: any missing key, unexpected key, or shape/dtype mismatch (all listed);
      nothing is loaded then.
  """
  import jax.numpy as jnp  # noqa: PLC0415

  at_path = _parse_at(at)
  if skip:
    skip_paths = [_parse_at(s) for s in ([skip] if isinstance(skip, str) else skip)]
    flat_template = [p[1 + len(at_path):] for p in _flatten(template) if p[1:1 + len(at_path)]
                     == at_path]
    unknown = [s for s in skip_paths if not s or not any(p[:len(s)] == s for p in flat_template)]
    if unknown:
      raise ValueError(f"{what}: skip paths {['/'.join(s) for s in unknown]} name nothing in the "
                       "model's variables.")
    converted = {col: _without(tree, skip_paths) for col, tree in converted.items()}
    checked = {col: (_without(tree, [at_path + s for s in skip_paths])) for col, tree in
               template.items()}
  else:
    checked = template
  missing, unexpected, mismatched = check_variables(checked, converted, at=at)
  if missing or unexpected or mismatched:
    raise WeightMismatchError(what, missing, unexpected, mismatched)
  flat = _flatten(template)
  for col, tree in converted.items():
    for path, value in _flatten(tree).items():
      full = (col,) + at_path + path
      flat[full] = jnp.asarray(np.asarray(value), dtype=flat[full].dtype)
  return _unflatten(flat)


def _backbone_template(backbone_name: str, norm: str | None, **backbone_kwargs):
  import jax  # noqa: PLC0415
  import jax.numpy as jnp  # noqa: PLC0415

  from jaxvision.models.backbones import make_backbone  # noqa: PLC0415
  module = make_backbone(backbone_name, norm=norm, **backbone_kwargs)
  size = 224 if backbone_name == "vgg16" else 64  # VGG's fc6 "valid" needs a 7x7 pool5
  x = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
  return jax.eval_shape(lambda x: module.init(jax.random.key(0), x, train=False), x)


def load_backbone_weights(path: str | os.PathLike, backbone_name: str, *, norm: str | None = None,
                          prefix: str = "", key: str | None = None, **backbone_kwargs) -> dict:
  """Variables for ``make_backbone(backbone_name, norm=norm, **backbone_kwargs)`` from a file.

  Args:
    path: a torchvision state dict (``.pth`` zip or legacy, safetensors or npz), read safely
      (``jaxvision.weights.io.load_state_dict``).
    backbone_name: ``"resnet18"``, ``"resnet34"``, ``"resnet50"``, ``"resnet101"`` or ``"vgg16"``.
    norm: ResNet ``"batch"`` (default) or ``"frozen"``; VGG None (``vgg16``) or ``"batch"``
      (``vgg16_bn``).
    prefix: sub-module prefix inside a larger state dict (``"backbone.body."``).
    key: the entry holding the state dict in a wrapped checkpoint (``"model"``).
    backbone_kwargs: other backbone fields (``output_stride``, ``fc_as_conv``, ...); widths must be
      the full ones the checkpoint has.

  Returns:
    ``{"params": ..., "batch_stats": ...}`` (``jax.Array``), ready for
    ``module.apply(variables, images, train=False)``.

  Raises:
    WeightMismatchError: the file does not fit the backbone (every offending key listed).
  """
  from jaxvision.weights.io import load_state_dict  # noqa: PLC0415

  if backbone_name != "vgg16" and norm is None:
    norm = "batch"
  state_dict = load_state_dict(path, key=key)
  converted = convert_backbone(state_dict, backbone_name, norm=norm, prefix=prefix,
                               fc_as_conv=backbone_kwargs.get("fc_as_conv", True))
  template = _backbone_template(backbone_name, norm, **backbone_kwargs)
  return load_into(template, converted, what=f"{os.fspath(path)} into {backbone_name}")


def load_backbone_into(variables: Mapping[str, Any], path: str | os.PathLike, backbone_name: str,
                       *, at: str | Sequence[str] = "backbone", prefix: str = "",
                       key: str | None = None, fc_as_conv: bool | None = None) -> dict:
  """A model's ``variables`` with the backbone sub-tree ``at`` loaded from a torchvision file.

  The backbone's norm is read from ``variables``: ``FrozenBatchNorm`` if the stem's norm keeps
  ``scale`` in ``batch_stats``, ``nn.BatchNorm`` if in ``params``, none (plain ``vgg16``)
  otherwise. ``fc_as_conv`` (VGG): None -> whether ``variables`` has ``fc6``.
  """
  from jaxvision.weights.io import load_state_dict  # noqa: PLC0415

  at_path = _parse_at(at)
  sub = {}
  for col in ("params", "batch_stats"):
    tree = variables.get(col, {})
    for p in at_path:
      tree = tree.get(p, {}) if isinstance(tree, Mapping) else {}
    sub[col] = tree
  first_bn = "bn1" if backbone_name != "vgg16" else "bn1_1"
  if "scale" in sub["batch_stats"].get(first_bn, {}):
    norm = "frozen"
  elif first_bn in sub["params"]:
    norm = "batch"
  else:
    norm = None if backbone_name == "vgg16" else "batch"
  if fc_as_conv is None:
    fc_as_conv = "fc6" in sub["params"]
  state_dict = load_state_dict(path, key=key)
  converted = convert_backbone(state_dict, backbone_name, norm=norm, prefix=prefix,
                               fc_as_conv=fc_as_conv)
  return load_into(variables, converted, at=at_path,
                   what=f"{os.fspath(path)} into {'/'.join(at_path) or 'the model'} ({backbone_name})")


# Whole-model converters by torchvision's builder name (``load_model_into``).
MODEL_CONVERTERS = {
    "fasterrcnn_resnet50_fpn": convert_fasterrcnn_resnet50_fpn,
    "maskrcnn_resnet50_fpn": convert_maskrcnn_resnet50_fpn,
    "retinanet_resnet50_fpn": convert_retinanet_resnet50_fpn,
    "fcos_resnet50_fpn": convert_fcos_resnet50_fpn,
    "ssd300_vgg16": convert_ssd300_vgg16,
    "deeplabv3_resnet50": convert_deeplabv3,
    "deeplabv3_resnet101": convert_deeplabv3,
    "fcn_resnet50": convert_fcn_resnet,
    "fcn_resnet101": convert_fcn_resnet,
}


def load_model_into(variables: Mapping[str, Any], path: str | os.PathLike, model: str, *,
                    key: str | None = None, skip: Sequence[str] = (),
                    **converter_kwargs) -> dict:
  """A model's ``variables`` replaced *entirely* by a torchvision whole-model file, checked.

  Args:
    variables: the jaxvision model's variables (arrays, or ``jax.eval_shape`` structs), the
      template every converted key and shape is checked against.
    path: a ``.pth`` / safetensors / npz state dict (read safely, ``load_state_dict``).
    model: torchvision's builder name, a key of ``MODEL_CONVERTERS``
      (``"fasterrcnn_resnet50_fpn"``, ``"maskrcnn_resnet50_fpn"``, ``"retinanet_resnet50_fpn"``,
      ``"deeplabv3_resnet50"``, ...).
    key: the entry holding the state dict in a wrapped checkpoint (``"model"``).
    skip: param sub-trees kept from ``variables`` (see ``load_into``), e.g. the class-specific
      predictor when fine-tuning a COCO model on other classes.
    converter_kwargs: passed to the converter (``depth``, ``norm``, ``aux``).

  Returns:
    New variables (``jax.Array`` of the template's dtypes).

  Raises:
    ValueError: an unknown ``model``.
    WeightMismatchError: the file does not fit the model (every offending key listed; nothing
      loaded).
  """
  from jaxvision.weights.io import load_state_dict  # noqa: PLC0415

  if model not in MODEL_CONVERTERS:
    raise ValueError(f"model must be one of {sorted(MODEL_CONVERTERS)}, got {model!r}.")
  converted = MODEL_CONVERTERS[model](load_state_dict(path, key=key), **converter_kwargs)
  return load_into(variables, converted, what=f"{os.fspath(path)} into the model ({model})",
                   skip=skip)
