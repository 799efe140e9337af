"""The shared argument checks: clear errors naming the argument; bf16 counts as float."""

import jax.numpy as jnp
import numpy as np
import pytest

from jaxvision.ops._checks import check_array, check_positive_int


def test_accepts_bfloat16_as_float():
  x = jnp.ones((2, 4), jnp.bfloat16)
  assert check_array(x, "boxes", last_dim=4, kind="float").dtype == jnp.bfloat16
  assert check_array(x, "boxes", kind="numeric").shape == (2, 4)


@pytest.mark.parametrize("bad, kwargs, exc, words", [
    (3.0, {}, TypeError, "boxes must be an array"),
    (None, {}, TypeError, "boxes must be an array"),
    (np.zeros((3,)), {"ndim": 2}, ValueError, "rank 2"),
    (np.zeros((3, 5)), {"last_dim": 4}, ValueError, "last dimension 4"),
    (np.zeros((3, 4)), {"shape": (2, 4)}, ValueError, "shape [2, 4]"),
    (np.zeros((3, 4), np.int32), {"kind": "float"}, TypeError, "float dtype"),
])
def test_errors_name_the_argument(bad, kwargs, exc, words):
  with pytest.raises(exc) as info:
    check_array(bad, "boxes", **kwargs)
  assert words in str(info.value) and "boxes" in str(info.value)


def test_positive_int():
  assert check_positive_int(3, "max_output_size") == 3
  with pytest.raises(TypeError, match="max_output_size"):
    check_positive_int(2.0, "max_output_size")
  with pytest.raises(ValueError, match="max_output_size"):
    check_positive_int(0, "max_output_size")
