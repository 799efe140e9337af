"""Boundary F-score (Csurka et al. 2013): a hand-worked shifted square, a brute-force reference on
random maps, class presence rules, ignored pixels and errors."""

from __future__ import annotations

import numpy as np
import pytest

from jaxvision.eval.segmentation_boundary import (boundary_f_score, boundary_map,
                                                  boundary_tolerance)


def _square(shift=0):
  m = np.zeros((20, 20), np.int32)
  m[5:15, 5 + shift:15 + shift] = 1
  return m


def test_shifted_square_by_hand():
  gt, pred = _square(), _square(1)
  assert boundary_map(gt == 1).sum() == 36  # the 10 x 10 square's outline
  # tolerance 0: only the 9 + 9 top/bottom pixels the two outlines share match: P = R = 1/2
  out = boundary_f_score(gt, pred, 2, tolerance=0)
  np.testing.assert_allclose(out["boundary_f"][1], 0.5)
  np.testing.assert_allclose(out["boundary_precision"][1], 0.5)
  # tolerance 1: every outline pixel is within 1 px of the other outline
  out = boundary_f_score(gt, pred, 2, tolerance=1)
  np.testing.assert_allclose(out["boundary_f"][1], 1.0)
  assert out["boundary_f_valid"].tolist() == [True, True]
  ident = boundary_f_score(gt, gt, 2, tolerance=0)
  assert ident["mean_boundary_f"] == 1.0


def _brute_force(gt, pred, c, tol):
  gb = np.argwhere(boundary_map(gt == c))
  pb = np.argwhere(boundary_map(pred == c))
  if len(gb) == 0 and len(pb) == 0:
    return None
  if len(gb) == 0 or len(pb) == 0:
    return 0.0
  d = np.sqrt(((gb[:, None, :] - pb[None, :, :]) ** 2).sum(-1))  # (G, P)
  recall = np.mean(d.min(1) <= tol)
  precision = np.mean(d.min(0) <= tol)
  return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


@pytest.mark.parametrize("tol", [0, 1, 1.5, 2.5])
def test_matches_brute_force_on_random_maps(tol):
  rng = np.random.default_rng(0)
  gt = rng.integers(0, 3, (3, 12, 14)).astype(np.int32)
  gt = np.repeat(np.repeat(gt[:, ::3, ::3], 3, 1), 3, 2)[:, :12, :14]  # blobs, not salt and pepper
  pred = np.where(rng.random(gt.shape) < 0.15, rng.integers(0, 3, gt.shape), gt).astype(np.int32)
  out = boundary_f_score(gt, pred, 3, tolerance=tol)
  for c in range(3):
    vals = [v for v in (_brute_force(g, p, c, tol) for g, p in zip(gt, pred)) if v is not None]
    np.testing.assert_allclose(out["boundary_f"][c], np.mean(vals), rtol=1e-12)


def test_presence_rules_ignore_and_errors():
  gt = _square()
  pred = _square()
  pred[0:2, 0:2] = 2  # a class that is only predicted: scored 0
  out = boundary_f_score(gt, pred, 3, tolerance=1)
  assert out["boundary_f"][2] == 0.0 and out["boundary_f_valid"][2]
  out = boundary_f_score(gt, gt, 4, tolerance=1)
  assert not out["boundary_f_valid"][3] and out["mean_boundary_f"] == 1.0
  # a wrong prediction inside an ignored region does not count
  gt_ign = gt.copy()
  gt_ign[:, :4] = 255
  pred = gt.copy()
  pred[8:12, 0:2] = 1
  assert boundary_f_score(gt_ign, pred, 2, tolerance=0)["mean_boundary_f"] == 1.0
  assert boundary_tolerance(300, 400) == pytest.approx(3.75)
  with pytest.raises(ValueError, match="same shape"):
    boundary_f_score(gt, gt[:5], 2)
  with pytest.raises(ValueError, match="tolerance"):
    boundary_f_score(gt, gt, 2, tolerance=-1)
  with pytest.raises(ValueError, match="integer"):
    boundary_f_score(gt.astype(float), gt, 2)
