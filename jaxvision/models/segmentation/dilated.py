"""Dilated convolutions and the context module: Yu and Koltun, "Multi-Scale Context Aggregation by
Dilated Convolutions", ICLR 2016 (https://arxiv.org/abs/1511.07122).

The network (``ContextNet``) is a front-end that predicts class scores at output stride 8, the
context module that refines them, and bilinear upsampling to the input size.

Front-end (paper Sec. 4, ``FrontEnd``): VGG-16 with its last two pooling layers removed and the
layers after them dilated instead, so the output has stride 8 at VGG-16's receptive field:
``conv1``-``conv3`` blocks each followed by a 2x2 max pool, the ``conv4`` block (no pool), the
``conv5`` block with dilation 2, ``fc6`` (7x7, dilation 4, 4096 channels) and ``fc7`` (1x1, 4096),
each with ReLU and drop-out 0.5 in training, and ``final`` (1x1 to ``C`` scores). The paper trains
it on reflection-padded crops with unpadded convolutions; here every convolution is zero-padded to
keep its size (a 128 px input gives 16x16 scores), pools round up. ``width``, ``fc_features``,
``fc6_kernel`` and ``norm`` make small variants (a "small VGG-like" front-end for CPU experiments).

Context module (paper Sec. 3, Table 1, ``ContextModule``): ``C`` channels in and out, layers of 3x3
convolutions with dilations 1, 1, 2, 4, 8, 16, 1, each followed by ReLU ("pointwise truncation"),
and a final 1x1 convolution (no truncation). Stacking dilations that double makes the receptive
field grow exponentially with depth while the parameters grow linearly (Sec. 2): after the 3x3
layers with dilations ``d_1..d_L`` the receptive field is ``1 + 2 sum(d_i)`` pixels (3, 5, 9, 17,
33, 65, 67 for the basic module), with ``L (9 C^2 + C) + C^2 + C`` parameters.
``receptive_field_from_gradients`` measures it on any network.

Identity initialisation (Sec. 3): random initialisation did not train the module; instead
``k(t, a) = 1[t = 0] 1[a = b]`` (each layer passes its input to the next: the module starts as
``relu`` of the front-end's scores, so training starts from the front-end's prediction). The large
module (``channel_multipliers=(2, 2, 4, 8, 16, 32, 32)``) widens layer ``i`` to ``c_i`` channels
and uses the generalisation ``k(t, a) = C / c_{i+1}`` if ``t = 0`` and
``floor(a C / c_i) = floor(b C / c_{i+1})``, and noise ``N(0, sigma)`` elsewhere
(``sigma = init_noise``, paper: ``sigma << C / c_{i+1}``).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxvision.models.family import Family
from jaxvision.models.layers.conv import Conv
from jaxvision.models.layers.norm import make_norm
from jaxvision.models.segmentation._common import as_dict, check_keys, pixel_softmax_family
from jaxvision.ops.unpool import resize_bilinear

__all__ = ["FrontEnd", "ContextModule", "ContextNet", "make_context_net", "identity_init",
           "receptive_field_from_gradients", "context_receptive_field", "context_num_params",
           "context_lr_scaled_optimizer",
           "BASIC_DILATIONS", "LARGE_MULTIPLIERS"]

BASIC_DILATIONS = (1, 1, 2, 4, 8, 16, 1)
LARGE_MULTIPLIERS = (2, 2, 4, 8, 16, 32, 32)
VGG_BLOCKS = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))

conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


# ------------------------------------------------------------------------------------------------
# Front-end
# ------------------------------------------------------------------------------------------------


class FrontEnd(nn.Module):
  """Yu & Koltun's dilated VGG-16 front-end: class scores at output stride 8 (module docstring).

  Attributes:
    num_classes: ``C``.
    width: VGG base width (64 = paper); every convolution's channels scale with it.
    fc_features: channels of ``fc6``/``fc7`` (4096).
    fc6_kernel: 7 (paper) or smaller for tiny variants.
    norm: None (paper) or ``"batch"``.
    dropout_rate: after ``fc6`` and ``fc7`` in training (0.5).
    axis_name, dtype: cross-replica BatchNorm axis, compute dtype.

  ``__call__(x [B, H, W, 3], train)`` -> ``[B, ceil(H/8), ceil(W/8), C]`` scores.
  """
  num_classes: int
  width: int = 64
  fc_features: int = 4096
  fc6_kernel: int = 7
  norm: str | None = None
  dropout_rate: float = 0.5
  axis_name: str | None = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    if x.ndim != 4:
      raise ValueError(f"FrontEnd expects NHWC images [B, H, W, C], got shape {tuple(x.shape)}.")
    norm = make_norm(self.norm, train=train, axis_name=self.axis_name, dtype=self.dtype)
    conv = functools.partial(Conv, kernel_init=conv_init, dtype=self.dtype)

    def conv_relu(x, features, kernel, dilation, name):
      pad = dilation * (kernel - 1) // 2
      x = conv(features, (kernel, kernel), kernel_dilation=(dilation, dilation),
               padding=((pad, pad), (pad, pad)), use_bias=norm is None, name=name)(x)
      if norm is not None:
        x = norm(name=f"{name}_bn")(x)
      return nn.relu(x)

    for b, block in enumerate(VGG_BLOCKS, start=1):
      dilation = 2 if b == 5 else 1  # pool4 removed: conv5 sees stride 8 instead of 16
      for k, c in enumerate(block, start=1):
        x = conv_relu(x, max(1, round(c * self.width / 64)), 3, dilation, f"conv{b}_{k}")
      if b <= 3:
        _, h, w, _ = x.shape
        x = nn.max_pool(x, (2, 2), strides=(2, 2), padding=((0, h % 2), (0, w % 2)))  # ceil
    # fc6: stride 8 instead of 32 -> dilation 4
    x = conv_relu(x, self.fc_features, self.fc6_kernel, 4, "fc6")
    x = nn.Dropout(self.dropout_rate, deterministic=not train or self.dropout_rate == 0)(x)
    x = conv_relu(x, self.fc_features, 1, 1, "fc7")
    x = nn.Dropout(self.dropout_rate, deterministic=not train or self.dropout_rate == 0)(x)
    return Conv(self.num_classes, (1, 1), dtype=self.dtype, name="final")(x)  # (B, H/8, W/8, C)


# ------------------------------------------------------------------------------------------------
# Context module
# ------------------------------------------------------------------------------------------------


def identity_init(num_classes: int, noise: float = 0.0):
  """The paper's (generalised) identity initialiser for a ``[k, k, c_in, c_out]`` kernel.

  ``C / c_out`` at the centre tap where ``floor(a C / c_in) == floor(b C / c_out)`` (exactly the
  identity when ``c_in == c_out == C``), plus ``N(0, noise)`` everywhere when ``noise > 0``.
  """
  def init(key, shape, dtype=jnp.float32):
    kh, kw, c_in, c_out = shape
    a = np.arange(c_in)[:, None] * num_classes // c_in
    b = np.arange(c_out)[None, :] * num_classes // c_out
    kernel = np.zeros(shape, np.float32)
    kernel[kh // 2, kw // 2] = (a == b) * (num_classes / c_out)
    out = jnp.asarray(kernel, dtype)
    if noise > 0:
      out = out + noise * jax.random.normal(key, shape, dtype)
    return out
  return init


class ContextModule(nn.Module):
  """The context module (basic by default); see the module docstring.

  Attributes:
    num_classes: ``C``, channels of the input and output.
    dilations: of the 3x3 layers (``BASIC_DILATIONS``); the final 1x1 layer is added.
    channel_multipliers: per 3x3 layer, its channels in units of ``C`` (None: all 1, the basic
      module; ``LARGE_MULTIPLIERS``: the large one).
    initialization: ``"identity"`` (paper) or ``"random"`` (He normal; the paper's failed baseline).
    init_noise: ``sigma`` of the identity init's noise (used when a layer changes width).
    dtype: compute dtype.

  ``__call__(x [B, h, w, C])`` -> ``[B, h, w, C]``.
  """
  num_classes: int
  dilations: Sequence[int] = BASIC_DILATIONS
  channel_multipliers: Sequence[int] | None = None
  initialization: str = "identity"
  init_noise: float = 1e-3
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    c = self.num_classes
    if x.shape[-1] != c:
      raise ValueError(f"ContextModule expects {c} input channels (the class scores), got "
                       f"shape {tuple(x.shape)}.")
    mults = tuple(self.channel_multipliers) if self.channel_multipliers is not None else (
        (1,) * len(self.dilations))
    if len(mults) != len(self.dilations):
      raise ValueError(f"channel_multipliers ({len(mults)}) must have one entry per dilation "
                       f"({len(self.dilations)}).")
    if self.initialization not in ("identity", "random"):
      raise ValueError(f"ContextModule initialization must be 'identity' or 'random', got "
                       f"{self.initialization!r}.")
    for i, (d, m) in enumerate(zip(self.dilations, mults), start=1):
      noise = self.init_noise if (x.shape[-1] != c * m) else 0.0
      kinit = identity_init(c, noise) if self.initialization == "identity" else conv_init
      x = Conv(c * m, (3, 3), kernel_dilation=(d, d), padding=((d, d), (d, d)),
               kernel_init=kinit, dtype=self.dtype, name=f"ctx_conv{i}")(x)
      x = nn.relu(x)  # (B, h, w, c m)
    noise = self.init_noise if x.shape[-1] != c else 0.0
    kinit = identity_init(c, noise) if self.initialization == "identity" else conv_init
    return Conv(c, (1, 1), kernel_init=kinit, dtype=self.dtype,
                name=f"ctx_conv{len(self.dilations) + 1}")(x)  # (B, h, w, C)


def context_receptive_field(dilations: Sequence[int] = BASIC_DILATIONS) -> int:
  """Receptive field (pixels, one axis) of the 3x3 layers with these dilations: ``1 + 2 sum(d)``."""
  return 1 + 2 * int(sum(dilations))


def context_num_params(num_classes: int, num_layers: int) -> int:
  """Parameters of a basic module with ``num_layers`` 3x3 layers and the final 1x1 layer."""
  c = num_classes
  return num_layers * (9 * c * c + c) + c * c + c


# ------------------------------------------------------------------------------------------------
# The network
# ------------------------------------------------------------------------------------------------


class ContextNet(nn.Module):
  """Front-end + context module + bilinear upsampling to the input (module docstring).

  Attributes:
    num_classes: ``C``.
    frontend: a ``FrontEnd`` (or any module mapping ``(x, train)`` to ``C`` scores at stride 8).
    context: a ``ContextModule`` or None (front-end alone, the paper's baseline).
    aux_frontend: also return the front-end's own upsampled scores as ``"aux"``.

  ``__call__(x, train)`` -> ``{"logits": [B, H, W, C]}`` (+ ``"aux"``).
  """
  num_classes: int
  frontend: nn.Module
  context: nn.Module | None = None
  aux_frontend: bool = False

  @nn.compact
  def __call__(self, x, train: bool = False):
    if x.ndim != 4:
      raise ValueError(f"ContextNet expects NHWC images [B, H, W, C], got shape {tuple(x.shape)}.")
    _, height, width, _ = x.shape
    scores = self.frontend(x, train=train)  # (B, H/8, W/8, C)
    refined = self.context(scores) if self.context is not None else scores
    out = {"logits": resize_bilinear(refined.astype(jnp.float32), (height, width),
                                     align_corners=False)}  # (B, H, W, C)
    if self.aux_frontend and self.context is not None:
      out["aux"] = resize_bilinear(scores.astype(jnp.float32), (height, width), align_corners=False)
    return out


# ------------------------------------------------------------------------------------------------
# Receptive field by gradients
# ------------------------------------------------------------------------------------------------


def receptive_field_from_gradients(apply_fn: Callable, variables: Any, input_shape: Sequence[int],
                                   *, inputs=None) -> tuple[int, int]:
  """Receptive field ``(height, width)`` of the centre output pixel, measured from gradients.

  Differentiates the sum over channels of the output at the centre pixel ``(h // 2, w // 2)`` of
  the first image with respect to the input and returns the height and width of the bounding box
  of the input pixels with a nonzero gradient.

  The measurement sees only paths that carry gradient: ReLUs that are off, zero weights (e.g. an
  identity-initialised layer, whose receptive field is 1 pixel) or exact cancellations shrink it.
  To measure the architectural receptive field use weights and inputs that keep every unit active,
  e.g. positive weights and ``inputs`` of ones (the default), and an input larger than the field.

  Args:
    apply_fn: ``apply_fn(variables, x)`` -> ``[B, h, w, K]`` or a dict with ``"logits"``.
    variables: its variables.
    input_shape: ``(B, H, W, C)``.
    inputs: optional input array of that shape (default ones).

  Returns:
    ``(rf_height, rf_width)`` in input pixels.
  """
  shape = tuple(int(s) for s in input_shape)
  if len(shape) != 4:
    raise ValueError(f"input_shape must be (B, H, W, C), got {input_shape!r}.")
  x = jnp.ones(shape, jnp.float32) if inputs is None else jnp.asarray(inputs, jnp.float32)
  if x.shape != shape:
    raise ValueError(f"inputs has shape {x.shape}, expected input_shape {shape}.")

  def center(x):
    out = apply_fn(variables, x)
    if isinstance(out, dict):
      out = out["logits"]
    _, h, w, _ = out.shape
    return jnp.sum(out[0, h // 2, w // 2])

  g = np.asarray(jnp.sum(jnp.abs(jax.grad(center)(x)[0]), axis=-1))  # (H, W)
  rows, cols = np.nonzero(g)
  if rows.size == 0:
    return (0, 0)
  return (int(rows.max() - rows.min() + 1), int(cols.max() - cols.min() + 1))


# ------------------------------------------------------------------------------------------------
# Config
# ------------------------------------------------------------------------------------------------

_KEYS = ("width", "fc_features", "fc6_kernel", "norm", "dropout_rate", "context", "dilations",
         "channel_multipliers", "initialization", "init_noise", "aux_frontend", "aux_weight",
         "context_lr_scale", "class_weights", "axis_name", "dtype")


def context_lr_scaled_optimizer(scale: float) -> Callable:
  """``make_optimizer`` for the family: ``config.optim``'s optimizer with the context module's
  updates multiplied by ``scale``.

  With Adam every weight moves by about the learning rate per step whatever its gradient, so the
  identity-initialised module drifts from the identity as fast as the front-end's weights change,
  and seven stacked layers compound the drift; a smaller step for the module keeps it near its
  initialisation while the front-end learns (the paper trains the front-end first, then the module).
  """
  def make_optimizer(optim_config, total_steps):
    import optax  # noqa: PLC0415

    from jaxvision.train import optim as optim_lib  # noqa: PLC0415

    def is_context(params):
      return {k: jax.tree.map(lambda _, c=(k == "context"): c, v) for k, v in params.items()}

    return optax.chain(optim_lib.make_optimizer(optim_config, total_steps),
                       optax.masked(optax.scale(scale), is_context))
  return make_optimizer


def make_context_net(model_config: Any, num_classes: int) -> Family:
  """Builds the front-end + context module family from ``config.model`` (``MODELS["context"]``).

  Keys (all optional): front-end ``width`` (64), ``fc_features`` (4096), ``fc6_kernel`` (7),
  ``norm`` (None | "batch"), ``dropout_rate`` (0.5); ``context`` ("basic" | "large" | "none"),
  ``dilations`` (``BASIC_DILATIONS``), ``channel_multipliers`` (overrides "large"'s),
  ``initialization`` ("identity" | "random"), ``init_noise`` (1e-3), ``aux_frontend`` (False),
  ``aux_weight`` (0.4), ``context_lr_scale`` (1.0: the module's updates relative to the rest, see
  ``context_lr_scaled_optimizer``), ``class_weights``, ``axis_name``, ``dtype``.
  """
  cfg = as_dict(model_config)
  check_keys(cfg, _KEYS, "context")
  dtype = jnp.dtype(cfg.get("dtype", "float32"))
  frontend = FrontEnd(num_classes=num_classes, width=int(cfg.get("width", 64)),
                      fc_features=int(cfg.get("fc_features", 4096)),
                      fc6_kernel=int(cfg.get("fc6_kernel", 7)), norm=cfg.get("norm"),
                      dropout_rate=float(cfg.get("dropout_rate", 0.5)),
                      axis_name=cfg.get("axis_name"), dtype=dtype)
  kind = cfg.get("context", "basic")
  if kind not in ("basic", "large", "none"):
    raise ValueError(f"model.context must be 'basic', 'large' or 'none', got {kind!r}.")
  context = None
  if kind != "none":
    mults = cfg.get("channel_multipliers")
    if mults is None and kind == "large":
      mults = LARGE_MULTIPLIERS
    context = ContextModule(num_classes=num_classes,
                            dilations=tuple(int(d) for d in cfg.get("dilations", BASIC_DILATIONS)),
                            channel_multipliers=tuple(mults) if mults is not None else None,
                            initialization=cfg.get("initialization", "identity"),
                            init_noise=float(cfg.get("init_noise", 1e-3)), dtype=dtype)
  module = ContextNet(num_classes=num_classes, frontend=frontend, context=context,
                      aux_frontend=bool(cfg.get("aux_frontend", False)))
  scale = float(cfg.get("context_lr_scale", 1.0))
  return pixel_softmax_family(module, num_classes, class_weights=cfg.get("class_weights"),
                              aux_weight=float(cfg.get("aux_weight", 0.4)),
                              make_optimizer=(context_lr_scaled_optimizer(scale)
                                              if scale != 1.0 and context is not None else None))
