"""Learning-rate schedules from config.optim against their formulas."""

import math

import ml_collections
import numpy as np
import pytest

from jaxvision.train import optim


def _optim(**kwargs):
  c = ml_collections.ConfigDict({"name": "sgd", "learning_rate": 0.1, "warmup_steps": 0})
  c.update(kwargs)
  return c


def _values(schedule, steps):
  return np.array([float(schedule(t)) for t in steps])


def test_warmup_then_cosine_reaches_zero_at_the_last_step():
  f = optim.learning_rate_schedule(_optim(schedule="cosine", warmup_steps=10), 110)
  np.testing.assert_allclose(_values(f, [0, 5, 10]), [0.0, 0.05, 0.1], rtol=1e-6)
  np.testing.assert_allclose(float(f(60)), 0.1 * 0.5 * (1 + math.cos(math.pi * 0.5)), rtol=1e-5)
  assert abs(float(f(110))) < 1e-8


def test_poly_follows_deeplabs_formula():
  f = optim.learning_rate_schedule(_optim(schedule="poly"), 200)
  t = np.array([0, 1, 50, 100, 199, 200])
  np.testing.assert_allclose(_values(f, t), 0.1 * (1 - t / 200) ** 0.9, rtol=1e-5, atol=1e-9)
  g = optim.learning_rate_schedule(_optim(schedule="poly", power=2.0, warmup_steps=20), 120)
  np.testing.assert_allclose(float(g(70)), 0.1 * (1 - 50 / 100) ** 2, rtol=1e-5)


def test_step_boundaries_are_absolute_steps():
  f = optim.learning_rate_schedule(
      _optim(schedule="step", warmup_steps=10, decay_steps=(50, 80), decay_factor=0.1), 100)
  np.testing.assert_allclose(_values(f, [49, 51, 79, 81]), [0.1, 0.01, 0.01, 0.001], rtol=1e-5)


def test_unknown_schedule_names_the_choices():
  with pytest.raises(ValueError, match="poly"):
    optim.learning_rate_schedule(_optim(schedule="linear"), 10)
