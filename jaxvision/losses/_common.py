"""Argument checks shared by the loss modules (on top of ``jaxvision.ops._checks``).

Hyper-parameters of losses are static Python numbers (they select code paths, e.g. ``beta == 0`` in
smooth-L1), so they are validated eagerly; array arguments go through ``check_array``.
"""

from __future__ import annotations

from typing import Any

from jaxvision.ops._checks import check_array


def check_number(v: Any, name: str, *, low: float | None = None, high: float | None = None) -> float:
  """A static Python number hyper-parameter in ``[low, high]`` (either bound optional)."""
  if isinstance(v, bool) or not isinstance(v, (int, float)):
    raise TypeError(f"{name} must be a Python float, got {type(v).__name__} {v!r}.")
  if (low is not None and v < low) or (high is not None and v > high):
    lo = "-inf" if low is None else low
    hi = "inf" if high is None else high
    raise ValueError(f"{name} must be in [{lo}, {hi}], got {v!r}.")
  return float(v)


def check_same_shape(a, b, name_a: str, name_b: str) -> None:
  if tuple(a.shape) != tuple(b.shape):
    raise ValueError(f"{name_a} and {name_b} must have the same shape, got {name_a} shape "
                     f"{tuple(a.shape)} and {name_b} shape {tuple(b.shape)}.")


def check_min_rank(x: Any, name: str, min_rank: int, *, kind: str | None = None, what: str = ""):
  """``check_array`` plus a lower bound on the rank (``what`` describes the expected layout)."""
  x = check_array(x, name, kind=kind)
  if x.ndim < min_rank:
    layout = f" {what}" if what else ""
    raise ValueError(f"{name} must have rank >= {min_rank}{layout}, got shape {tuple(x.shape)} "
                     f"dtype {x.dtype}.")
  return x


def check_int_labels(logits, labels, name: str = "labels"):
  """``labels`` must be an integer array shaped like ``logits[..., 0]``."""
  labels = check_array(labels, name, kind="int")
  if tuple(labels.shape) != tuple(logits.shape[:-1]):
    raise ValueError(f"{name} must have shape logits.shape[:-1] = {tuple(logits.shape[:-1])}, got "
                     f"{name} shape {tuple(labels.shape)} (logits shape {tuple(logits.shape)}).")
  return labels


def check_ignore_label(ignore_label: Any) -> int | None:
  if ignore_label is None:
    return None
  if isinstance(ignore_label, bool) or not isinstance(ignore_label, int):
    raise TypeError(f"ignore_label must be a Python int or None, got {ignore_label!r}.")
  return ignore_label


def valid_labels(labels, num_classes: int, ignore_label: int | None):
  """True where the label is a real class: in ``[0, num_classes)`` and not ``ignore_label``."""
  valid = (labels >= 0) & (labels < num_classes)
  if ignore_label is not None:
    valid &= labels != ignore_label
  return valid
