"""Argument checks shared by the ops, losses and metrics.

Every public op validates its array arguments at trace time with these helpers, so that bad input
fails with a ``TypeError``/``ValueError`` that names the argument, shows what was received (shape and
dtype) and says what was expected. The checks only look at static information (rank, shape, dtype),
so they cost nothing inside ``jit`` and never force a host sync.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax.numpy as jnp
import numpy as np


def _describe(x: Any) -> str:
  shape = getattr(x, "shape", None)
  dtype = getattr(x, "dtype", None)
  if shape is None:
    return f"{type(x).__name__} {x!r}"[:80]
  return f"shape {tuple(shape)} dtype {dtype}"


def check_array(
    x: Any,
    name: str,
    *,
    ndim: int | Sequence[int] | None = None,
    shape: Sequence[int | None] | None = None,
    last_dim: int | None = None,
    kind: str | None = None,
) -> jnp.ndarray:
  """Validates ``x`` and returns it as a JAX array.

  Args:
    x: the argument (a JAX/NumPy array; nested lists are accepted and converted).
    name: the argument's name, used in the error message.
    ndim: allowed rank, or a sequence of allowed ranks.
    shape: expected shape; ``None`` entries match any size. Implies ``ndim``.
    last_dim: required size of the last axis (e.g. 4 for boxes).
    kind: ``"float"``, ``"int"``, ``"bool"``, ``"numeric"`` (int or float) or ``None`` (any).

  Raises:
    TypeError: ``x`` is not an array (a scalar or ``None`` where an array is expected), or has the
      wrong dtype kind.
    ValueError: wrong rank or shape.
  """
  if x is None or isinstance(x, (bool, int, float, complex, str)):
    raise TypeError(f"{name} must be an array, got {_describe(x)}.")
  if not hasattr(x, "shape"):
    try:
      x = np.asarray(x)
    except Exception as e:  # pragma: no cover - message only
      raise TypeError(f"{name} must be an array, got {type(x).__name__}.") from e
  if ndim is None and shape is not None:
    ndim = len(shape)
  if ndim is not None:
    allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
    if len(x.shape) not in allowed:
      want = " or ".join(str(a) for a in allowed)
      expect = f" (expected shape {_fmt_shape(shape)})" if shape is not None else ""
      raise ValueError(f"{name} must have rank {want}{expect}, got {_describe(x)}.")
  if shape is not None:
    for got, want in zip(x.shape, shape):
      if want is not None and got != want:
        raise ValueError(f"{name} must have shape {_fmt_shape(shape)}, got {_describe(x)}.")
  if last_dim is not None and (len(x.shape) == 0 or x.shape[-1] != last_dim):
    raise ValueError(f"{name} must have last dimension {last_dim}, got {_describe(x)}.")
  if kind is not None:
    # jnp.issubdtype (not np's) so that bfloat16 and other ml_dtypes count as floating.
    dt = x.dtype
    ok = {
        "float": jnp.issubdtype(dt, jnp.floating),
        "int": jnp.issubdtype(dt, jnp.integer),
        "bool": dt == jnp.bool_,
        "numeric": jnp.issubdtype(dt, jnp.floating) or jnp.issubdtype(dt, jnp.integer),
    }[kind]
    if not ok:
      raise TypeError(f"{name} must have a {kind} dtype, got {_describe(x)}.")
  return jnp.asarray(x)


def check_same_leading(a: Any, b: Any, name_a: str, name_b: str, axes: int = 1) -> None:
  """Checks that ``a`` and ``b`` agree on their first ``axes`` dimensions."""
  if tuple(a.shape[:axes]) != tuple(b.shape[:axes]):
    raise ValueError(
        f"{name_a} and {name_b} must agree on their first {axes} dimension(s), got "
        f"{name_a} {_describe(a)} and {name_b} {_describe(b)}.")


def check_positive_int(x: Any, name: str, *, allow_zero: bool = False) -> int:
  """Checks a static (Python) integer hyper-parameter such as ``max_output_size``."""
  if isinstance(x, bool) or not isinstance(x, (int, np.integer)):
    raise TypeError(f"{name} must be a Python int, got {_describe(x)}.")
  if x < 0 or (x == 0 and not allow_zero):
    raise ValueError(f"{name} must be {'>= 0' if allow_zero else '> 0'}, got {x}.")
  return int(x)


def _fmt_shape(shape: Sequence[int | None] | None) -> str:
  if shape is None:
    return "?"
  return "[" + ", ".join("?" if s is None else str(s) for s in shape) + "]"
