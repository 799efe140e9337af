"""``jaxvision.models.layers``: Conv, ConvTranspose and AtrousConv equal their ``flax.linen``
originals."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxvision.models.layers import AtrousConv, Conv, ConvTranspose


def _assert_same_as_flax(ref, ours, x):
  """``ours`` has ``ref``'s parameters (shapes and initialisation) and gives its values and
  gradients (parameters and input) under non-trivial parameters."""
  variables = ref.init(jax.random.PRNGKey(0), x)
  mine = ours.init(jax.random.PRNGKey(0), x)
  assert jax.tree.map(jnp.shape, mine) == jax.tree.map(jnp.shape, variables)
  for a, b in zip(jax.tree.leaves(mine), jax.tree.leaves(variables)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))  # same initialisation
  # Non-trivial bias so that the bias path is checked too.
  variables = jax.tree.map(lambda v: v + 0.1, variables)
  y_ref, y = ref.apply(variables, x), ours.apply(variables, x)
  assert y.shape == y_ref.shape
  np.testing.assert_allclose(np.asarray(y), np.asarray(y_ref), rtol=1e-5, atol=1e-5)

  def loss(module):
    return lambda v, x: jnp.sum(jnp.sin(module.apply(v, x)))

  g_ref = jax.grad(loss(ref), argnums=(0, 1))(variables, x)
  g = jax.grad(loss(ours), argnums=(0, 1))(variables, x)
  for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(g_ref)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kernel, strides, transpose_kernel, use_bias", [
    ((2, 2), (2, 2), False, True),    # U-Net up-convolution, Mask R-CNN conv5_mask
    ((4, 4), (2, 2), True, False),    # FCN 2x upsampling (bilinear-initialised, transposed kernel)
    ((4, 4), (2, 2), False, True),
    ((6, 4), (3, 2), False, True),    # non-square, 2 x 2 blocks
    ((3, 2), (1, 2), True, True),     # stride 1 along one axis: 3 blocks
    ((16, 16), (8, 8), True, False),  # FCN-8s' last upsampling
    ((3, 3), (2, 2), False, True),    # not a multiple of the stride: nn.ConvTranspose itself
])
def test_conv_transpose_equals_flax(kernel, strides, transpose_kernel, use_bias):
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 5, 3, 4)), jnp.float32)
  kw = dict(features=6, kernel_size=kernel, strides=strides, padding="VALID",
            transpose_kernel=transpose_kernel, use_bias=use_bias)
  _assert_same_as_flax(nn.ConvTranspose(**kw), ConvTranspose(**kw), x)


def test_conv_transpose_takes_the_product_form_only_where_it_applies():
  x = jnp.zeros((1, 4, 4, 3))
  assert ConvTranspose(5, (4, 4), strides=(2, 2), padding="VALID")._block_factors(x) == (2, 2)
  assert ConvTranspose(5, (2, 2), strides=(2, 2), padding="VALID")._block_factors(x) == (1, 1)
  assert ConvTranspose(5, (3, 3), strides=(2, 2), padding="VALID")._block_factors(x) is None
  assert ConvTranspose(5, (2, 2), strides=(2, 2), padding="SAME")._block_factors(x) is None
  assert ConvTranspose(5, (2, 2), strides=(2, 2), padding="VALID",
                       kernel_dilation=(2, 2))._block_factors(x) is None


@pytest.mark.parametrize("rate, kept", [(1, None), (6, None), (12, (3, 1)), (16, (1, 1)),
                                        (24, (1, 1))])
def test_atrous_conv_equals_flax_and_skips_padding_only_taps(rate, kept):
  # 16 x 12 map: rate 12 reaches past the width only, rate >= 16 past both axes.
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 16, 12, 8)), jnp.float32)
  kw = dict(features=5, kernel_size=(3, 3), padding=((rate, rate), (rate, rate)),
            kernel_dilation=(rate, rate))
  ours = AtrousConv(**kw)
  taps = ours._kept_taps(x)
  assert (taps is None if kept is None
          else tuple(s.stop - s.start for s in taps) == kept)
  _assert_same_as_flax(nn.Conv(**kw), ours, x)


@pytest.mark.parametrize("kernel, strides, padding, use_bias, product", [
    ((1, 1), (1, 1), ((0, 0), (0, 0)), False, True),  # ResNet's 1x1 convolutions
    ((1, 1), (2, 2), ((0, 0), (0, 0)), False, True),  # ResNet's strided projection shortcut
    ((1, 1), (1, 1), "SAME", True, True),             # heads' 1x1 classifiers
    ((1, 1), (2, 1), "VALID", True, True),
    ((1, 1), 1, 0, True, True),                       # ints
    (1, 1, 0, True, False),                           # an int kernel: flax's 1-D convolution
    ((1, 1), (1, 1), ((1, 1), (1, 1)), True, False),  # padded: nn.Conv itself
    ((3, 3), (1, 1), "SAME", True, False),
    ((3, 3), (2, 2), ((1, 1), (1, 1)), False, False),
])
def test_conv_equals_flax_and_takes_the_product_form_for_1x1(kernel, strides, padding, use_bias,
                                                              product):
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 7, 6, 5)), jnp.float32)
  kw = dict(features=4, kernel_size=kernel, strides=strides, padding=padding, use_bias=use_bias)
  ours = Conv(**kw)
  assert (ours._pointwise_strides(x) is not None) == product
  _assert_same_as_flax(nn.Conv(**kw), ours, x)


def test_conv_keeps_flax_auto_names():
  class Net(nn.Module):
    @nn.compact
    def __call__(self, x):
      return Conv(3, (1, 1))(nn.Conv(3, (3, 3))(x))

  params = Net().init(jax.random.PRNGKey(0), jnp.zeros((1, 4, 4, 2)))["params"]
  assert set(params) == {"Conv_0", "Conv_1"}


def test_conv_leaves_grouped_masked_and_custom_convolutions_to_flax():
  x = jnp.zeros((1, 4, 4, 4))
  assert Conv(4, (1, 1))._pointwise_strides(x) == (1, 1)
  assert Conv(4, (1, 1), feature_group_count=2)._pointwise_strides(x) is None
  assert Conv(4, (1, 1), mask=jnp.ones((1, 1, 4, 4)))._pointwise_strides(x) is None
  assert Conv(4, (1, 1), input_dilation=(2, 2))._pointwise_strides(x) is None
  assert Conv(4, (1, 1), padding="CIRCULAR")._pointwise_strides(x) is None
  assert Conv(4, (1, 1),
              conv_general_dilated=jax.lax.conv_general_dilated)._pointwise_strides(x) is None
  assert Conv(4, (1, 1))._pointwise_strides(jnp.zeros((4, 4, 4))) is None  # no batch axis
