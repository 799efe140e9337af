"""Optimizers and learning-rate schedules from ``config.optim`` (optax).

Keys of ``config.optim``:
  name: ``"sgd"`` (momentum, Nesterov option) or ``"adamw"``.
  learning_rate: peak learning rate.
  schedule: ``"constant"``, ``"cosine"`` (to 0 at ``config.train.steps``), ``"poly"`` (DeepLab's
    ``lr * (1 - t / T) ** power``, ``power`` 0.9 by default, to 0 at ``config.train.steps``) or
    ``"step"`` (multiply by ``decay_factor`` at each step in ``decay_steps``).
  warmup_steps: linear warmup from 0 to the peak.
  momentum, nesterov: SGD only.
  weight_decay: decoupled (AdamW) or L2-style added to the gradient (SGD, as the papers' Caffe
    solvers do), applied only to kernels (``weight_decay_mask="kernels"``: parameters with ndim > 1,
    never biases or normalization scales) or to all parameters (``"all"``).
  grad_clip_norm: clip the global gradient norm (0: off).
  ema_decay: keep an exponential moving average of the parameters (0: off; e.g. 0.999). The
    training loop updates it after every step (``jaxvision.train.loop.ema_decay_at``), checkpoints
    it, and evaluates and predicts with it.
"""

from __future__ import annotations

from typing import Any

import jax
import optax

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("constant", "cosine", "poly", "step")


def learning_rate_schedule(optim: Any, total_steps: int) -> optax.Schedule:
  """The learning rate as a function of the step (warmup, then the configured decay)."""
  lr = float(optim.learning_rate)
  warmup = int(optim.get("warmup_steps", 0))
  name = optim.get("schedule", "constant")
  if name not in SCHEDULES:
    raise ValueError(f"config.optim.schedule must be one of {SCHEDULES}, got {name!r}.")
  decay_steps = max(total_steps - warmup, 1)
  if name == "constant":
    main = optax.constant_schedule(lr)
  elif name == "cosine":
    main = optax.cosine_decay_schedule(lr, decay_steps)
  elif name == "poly":
    main = optax.polynomial_schedule(lr, 0.0, float(optim.get("power", 0.9)), decay_steps)
  else:
    boundaries = {int(s) - warmup: float(optim.get("decay_factor", 0.1))
                  for s in optim.get("decay_steps", ())}
    main = optax.piecewise_constant_schedule(lr, boundaries)
  if warmup <= 0:
    return main
  return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), main], [warmup])


def _decay_mask(params: Any, which: str) -> Any:
  if which == "all":
    return jax.tree.map(lambda _: True, params)
  if which == "kernels":
    return jax.tree.map(lambda p: p.ndim > 1, params)
  raise ValueError(f"config.optim.weight_decay_mask must be 'kernels' or 'all', got {which!r}.")


def make_optimizer(optim: Any, total_steps: int) -> optax.GradientTransformation:
  """Builds the optax chain described by ``config.optim`` (see the module docstring)."""
  name = optim.get("name", "adamw")
  if name not in OPTIMIZERS:
    raise ValueError(f"config.optim.name must be one of {OPTIMIZERS}, got {name!r}.")
  schedule = learning_rate_schedule(optim, total_steps)
  wd = float(optim.get("weight_decay", 0.0))
  mask = lambda params: _decay_mask(params, optim.get("weight_decay_mask", "kernels"))
  chain = []
  clip = float(optim.get("grad_clip_norm", 0.0))
  if clip > 0:
    chain.append(optax.clip_by_global_norm(clip))
  if name == "adamw":
    chain.append(optax.adamw(schedule, b1=float(optim.get("b1", 0.9)), b2=float(optim.get("b2", 0.999)),
                             weight_decay=wd, mask=mask))
  else:
    if wd > 0:
      chain.append(optax.add_decayed_weights(wd, mask=mask))
    chain.append(optax.sgd(schedule, momentum=float(optim.get("momentum", 0.9)),
                           nesterov=bool(optim.get("nesterov", False))))
  return optax.chain(*chain)
