"""Tests for jaxvision.eval.voc: VOC AP (2007 11-point and 2010+ area), matching rules, inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest

from jaxvision.eval import VocEvaluator, evaluate_voc, voc_ap

# ------------------------------------------------------------------------------------------------
# A slow reference written after the devkit's voc_eval (one class at a time, one detection at a time).
# ------------------------------------------------------------------------------------------------


def _devkit_ap(rec, prec, use_07):
  if use_07:
    ap = 0.0
    for t in [k / 10 for k in range(11)]:  # exact k/10 thresholds (see voc.py's docstring)
      p = 0.0 if np.sum(rec >= t) == 0 else np.max(prec[rec >= t])
      ap += p / 11.0
    return ap
  mrec = np.concatenate(([0.0], rec, [1.0]))
  mpre = np.concatenate(([0.0], prec, [0.0]))
  for i in range(mpre.size - 1, 0, -1):
    mpre[i - 1] = max(mpre[i - 1], mpre[i])
  i = np.where(mrec[1:] != mrec[:-1])[0]
  return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))


def _devkit_voc_eval(dets, gts, cls, ovthresh, use_07, plus1):
  """dets: per image (boxes, scores, labels); gts: per image (boxes, labels, difficult)."""
  one = 1.0 if plus1 else 0.0
  class_recs, npos = {}, 0
  for i, (gb, gl, gd) in enumerate(gts):
    m = gl == cls
    class_recs[i] = {"bbox": gb[m], "difficult": gd[m], "det": [False] * int(m.sum())}
    npos += int((~gd[m]).sum())
  image_ids, conf, bbs = [], [], []
  for i, (db, ds, dl) in enumerate(dets):
    for b, s, l in zip(db, ds, dl):
      if l == cls:
        image_ids.append(i)
        conf.append(s)
        bbs.append(b)
  order = np.argsort(-np.array(conf), kind="stable")
  nd = len(order)
  tp, fp, ignored = np.zeros(nd), np.zeros(nd), np.zeros(nd, bool)
  for d in range(nd):
    r = class_recs[image_ids[order[d]]]
    bb = bbs[order[d]]
    ovmax, jmax = -np.inf, -1
    gt = r["bbox"]
    if gt.size > 0:
      ixmin = np.maximum(gt[:, 0], bb[0])
      iymin = np.maximum(gt[:, 1], bb[1])
      ixmax = np.minimum(gt[:, 2], bb[2])
      iymax = np.minimum(gt[:, 3], bb[3])
      iw = np.maximum(ixmax - ixmin + one, 0.0)
      ih = np.maximum(iymax - iymin + one, 0.0)
      inters = iw * ih
      uni = ((bb[2] - bb[0] + one) * (bb[3] - bb[1] + one) +
             (gt[:, 2] - gt[:, 0] + one) * (gt[:, 3] - gt[:, 1] + one) - inters)
      overlaps = inters / uni
      ovmax, jmax = np.max(overlaps), int(np.argmax(overlaps))
    if ovmax >= ovthresh:
      if not r["difficult"][jmax]:
        if not r["det"][jmax]:
          tp[d] = 1.0
          r["det"][jmax] = True
        else:
          fp[d] = 1.0
      else:
        ignored[d] = True
    else:
      fp[d] = 1.0
  fp, tp = np.cumsum(fp), np.cumsum(tp)
  rec = tp / npos if npos else np.zeros(nd)
  prec = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
  ap = _devkit_ap(rec, prec, use_07) if npos else float("nan")
  return ap, rec[~ignored], prec[~ignored]


def _random_dataset(rng, num_images=30, k=4):
  dets, gts = [], []
  for _ in range(num_images):
    g = int(rng.integers(0, 7))
    xy = rng.uniform(0, 80, (g, 2))
    wh = rng.uniform(3, 30, (g, 2))
    gb = np.concatenate([xy, xy + wh], 1)
    gl = rng.integers(1, k + 1, g)
    gd = rng.random(g) < 0.15
    db, dl, ds = [], [], []
    for b, l, size in zip(gb, gl, wh.mean(1)):
      for _ in range(int(rng.random() < 0.8) + int(rng.random() < 0.3)):  # TP + duplicates
        db.append(b + rng.normal(0, 0.1 * size, 4))
        dl.append(l if rng.random() > 0.1 else rng.integers(1, k + 1))
        ds.append(rng.uniform(0.2, 1.0))
    for _ in range(int(rng.integers(0, 4))):  # false positives
      xy = rng.uniform(0, 80, 2)
      db.append(np.concatenate([xy, xy + rng.uniform(3, 30, 2)]))
      dl.append(rng.integers(1, k + 1))
      ds.append(rng.uniform(0.0, 0.8))
    db = np.array(db, np.float64).reshape(-1, 4)
    db[:, 2:] = np.maximum(db[:, 2:], db[:, :2] + 1.0)  # keep boxes non-degenerate
    dets.append((db, np.array(ds), np.array(dl, np.int64)))
    gts.append((gb, gl, gd))
  return dets, gts


def _evaluate(dets, gts, **kw):
  return evaluate_voc([d[0] for d in dets], [d[1] for d in dets], [d[2] for d in dets],
                      [g[0] for g in gts], [g[1] for g in gts], gt_difficult=[g[2] for g in gts],
                      **kw)


# ------------------------------------------------------------------------------------------------
# Hand-worked cases
# ------------------------------------------------------------------------------------------------

# Image 0: class-1 gts g1, g2 and a class-3 gt (never detected). Image 1: class-1 gt g3 and a
# difficult class-1 gt g4.
_GT_BOXES = [np.array([[0, 0, 10, 10], [20, 20, 30, 30], [0, 0, 5, 5]], np.float32),
             np.array([[0, 0, 10, 10], [40, 40, 50, 50]], np.float32)]
_GT_LABELS = [np.array([1, 1, 3]), np.array([1, 1])]
_GT_DIFFICULT = [np.array([False, False, False]), np.array([False, True])]
# Class-1 detections in score order:
#   d1 0.9 img0 [0,0,10,9]    IoU(g1) = 0.9          -> TP
#   d2 0.8 img1 [0,0,10,10]   IoU(g3) = 1            -> TP
#   d3 0.7 img0 [1,0,10,10]   IoU(g1) = 0.9, taken   -> FP (duplicate)
#   d4 0.6 img1 [40,40,50,50] IoU(g4) = 1, difficult -> ignored
#   d5 0.5 img0 [50,50,60,60] no overlap             -> FP
#   d6 0.4 img0 [20,20,30,31] IoU(g2) = 100/110      -> TP
# plus a class-2 detection (no class-2 gt anywhere: AP NaN, left out of mAP).
_DET_BOXES = [np.array([[0, 0, 10, 9], [1, 0, 10, 10], [50, 50, 60, 60], [20, 20, 30, 31],
                        [0, 0, 10, 10]], np.float32),
              np.array([[0, 0, 10, 10], [40, 40, 50, 50]], np.float32)]
_DET_SCORES = [np.array([0.9, 0.7, 0.5, 0.4, 0.95]), np.array([0.8, 0.6])]
_DET_LABELS = [np.array([1, 1, 1, 1, 2]), np.array([1, 1])]
# npos(class 1) = 3. After dropping d4: TP TP FP FP TP
#   recall    = 1/3, 2/3, 2/3, 2/3, 1
#   precision = 1,   1,   2/3, 1/2, 3/5
# VOC2010+: envelope = 1, 1, 2/3, 3/5, 3/5 ->
#   AP = (1/3)*1 + (1/3)*1 + (1/3)*(3/5) = 2/3 + 1/5 = 13/15
# VOC2007: t = 0..0.6 (7 thresholds): max precision with recall >= t is 1;
#   t = 0.7, 0.8, 0.9, 1.0 (4 thresholds): only recall 1 qualifies, precision 3/5 ->
#   AP = (7 * 1 + 4 * 0.6) / 11 = 9.4 / 11
_AP_2010 = 13 / 15
_AP_2007 = 9.4 / 11


def _hand(**kw):
  return evaluate_voc(_DET_BOXES, _DET_SCORES, _DET_LABELS, _GT_BOXES, _GT_LABELS,
                      gt_difficult=_GT_DIFFICULT, **kw)


def test_hand_worked_2010_and_2007():
  r = _hand()
  assert r["ap"][0] == pytest.approx(_AP_2010)
  assert math.isnan(r["ap"][1])  # class 2: detections but no ground truth
  assert r["ap"][2] == 0.0  # class 3: ground truth but no detections
  assert r["mAP"] == pytest.approx((_AP_2010 + 0.0) / 2)
  assert set(r["ap_per_class"]) == {"1", "3"}
  np.testing.assert_allclose(r["recall"][0], [1 / 3, 2 / 3, 2 / 3, 2 / 3, 1])
  np.testing.assert_allclose(r["precision"][0], [1, 1, 2 / 3, 1 / 2, 3 / 5])
  np.testing.assert_allclose(r["scores"][0], [0.9, 0.8, 0.7, 0.5, 0.4])
  np.testing.assert_array_equal(r["num_positives"], [3, 0, 1])
  np.testing.assert_array_equal(r["num_detections"], [5, 1, 0])  # d4 ignored
  np.testing.assert_array_equal(r["num_true_positives"], [3, 0, 0])
  np.testing.assert_allclose(r["precision"][1], [0.0])
  r07 = _hand(use_07_metric=True, class_names=["a", "b", "c"])
  assert r07["ap"][0] == pytest.approx(_AP_2007)
  assert r07["mAP"] == pytest.approx(_AP_2007 / 2)
  assert r07["ap_per_class"] == {"a": pytest.approx(_AP_2007), "c": 0.0}


def test_iou_threshold_is_configurable():
  # At 0.95 only d2 (IoU 1) matches; d1, d3, d6 (IoU <= 0.91) become FPs, d4 is still ignored.
  # Sequence TP(d2 second): d1 FP, d2 TP, d3 FP, d5 FP, d6 FP -> recall 0, 1/3, ..; precision 0, 1/2,
  # 1/3, 1/4, 1/5. Envelope at recall 1/3 is 1/2 -> AP = 1/3 * 1/2 = 1/6.
  r = _hand(iou_threshold=0.95)
  assert r["ap"][0] == pytest.approx(1 / 6)
  np.testing.assert_allclose(r["precision"][0], [0, 1 / 2, 1 / 3, 1 / 4, 1 / 5])


def test_threshold_is_inclusive_and_pixel_inclusive_option():
  # IoU exactly 0.5 matches (>=).
  r = evaluate_voc([np.array([[0, 0, 10, 5.0]])], [np.array([0.9])], [np.array([1])],
                   [np.array([[0, 0, 10, 10.0]])], [np.array([1])])
  assert r["ap"][0] == 1.0
  # gt [0,0,9,9], det [0,0,9,4]: continuous IoU 36/81 < 0.5 (FP); devkit +1 IoU 50/100 = 0.5 (TP).
  args = ([np.array([[0, 0, 9, 4.0]])], [np.array([0.9])], [np.array([1])],
          [np.array([[0, 0, 9, 9.0]])], [np.array([1])])
  assert evaluate_voc(*args)["ap"][0] == 0.0
  assert evaluate_voc(*args, pixel_inclusive=True)["ap"][0] == 1.0


def test_duplicates_and_best_gt_only():
  # Two gts; det A (0.9) takes g1; det B (0.8) has its best IoU with g1 too (taken) although it also
  # overlaps g2 at >= 0.5: devkit semantics -> FP, and g2 stays unmatched.
  gt = np.array([[0, 0, 10, 10], [2, 0, 12, 10]], np.float64)
  dets = np.array([[0, 0, 10, 10], [1, 0, 11, 10]], np.float64)
  # IoU(B, g1) = 90/110, IoU(B, g2) = 90/110 too (tie -> first, g1). Make g1 strictly best:
  dets[1] = [0.5, 0, 10.5, 10]  # IoU(B,g1) = 95/105, IoU(B,g2) = 85/115 = 0.739
  r = evaluate_voc([dets], [np.array([0.9, 0.8])], [np.array([1, 1])], [gt], [np.array([1, 1])])
  # TP, FP: recall 1/2, 1/2; precision 1, 1/2 -> AP = 1/2 * 1 = 0.5
  np.testing.assert_allclose(r["precision"][0], [1, 0.5])
  assert r["ap"][0] == pytest.approx(0.5)


def test_eleven_point_thresholds_are_exact_tenths():
  # 10 gts, 3 perfect detections: recall 0.1, 0.2, 0.3 at precision 1. Thresholds 0, .1, .2, .3
  # qualify (3/10 == 0.3 exactly) -> AP07 = 4/11 (np.arange(0, 1.1, 0.1) would give 3/11).
  gt = np.array([[10 * i, 0, 10 * i + 5, 5] for i in range(10)], np.float64)
  r = evaluate_voc([gt[:3]], [np.array([0.9, 0.8, 0.7])], [np.ones(3, int)], [gt],
                   [np.ones(10, int)], use_07_metric=True)
  assert r["ap"][0] == pytest.approx(4 / 11)


def test_no_detections_and_no_ground_truth():
  r = evaluate_voc([np.zeros((0, 4))], [np.zeros(0)], [np.zeros(0, int)],
                   [np.array([[0, 0, 4, 4.0], [5, 5, 9, 9]])], [np.array([1, 2])])
  np.testing.assert_array_equal(r["ap"], [0.0, 0.0])
  assert r["mAP"] == 0.0
  for use_07 in (True, False):
    assert voc_ap(np.zeros(0), np.zeros(0), use_07_metric=use_07) == 0.0
  r = evaluate_voc([np.array([[0, 0, 4, 4.0]])], [np.array([0.5])], [np.array([1])],
                   [[]], [[]], num_classes=2)
  assert math.isnan(r["mAP"]) and np.isnan(r["ap"]).all() and r["ap_per_class"] == {}
  # Only difficult ground truth: no positives -> excluded, and the matching detection is ignored.
  r = evaluate_voc([np.array([[0, 0, 4, 4.0]])], [np.array([0.5])], [np.array([1])],
                   [np.array([[0, 0, 4, 4.0]])], [np.array([1])], gt_difficult=[np.array([True])])
  assert math.isnan(r["ap"][0]) and r["num_detections"][0] == 0


# ------------------------------------------------------------------------------------------------
# Against the devkit-style reference on random data
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("use_07", [False, True])
@pytest.mark.parametrize("plus1", [False, True])
def test_matches_devkit_reference_random(use_07, plus1):
  rng = np.random.default_rng(10 + 2 * use_07 + plus1)
  dets, gts = _random_dataset(rng)
  for thr in (0.5, 0.7):
    r = _evaluate(dets, gts, num_classes=4, iou_threshold=thr, use_07_metric=use_07,
                  pixel_inclusive=plus1)
    aps = []
    for k in range(1, 5):
      ap, rec, prec = _devkit_voc_eval(dets, gts, k, thr, use_07, plus1)
      if math.isnan(ap):
        assert math.isnan(r["ap"][k - 1])
        continue
      aps.append(ap)
      assert r["ap"][k - 1] == pytest.approx(ap, abs=1e-12), (k, thr)
      np.testing.assert_allclose(r["recall"][k - 1], rec, atol=1e-12)
      np.testing.assert_allclose(r["precision"][k - 1], prec, atol=1e-12)
    assert r["mAP"] == pytest.approx(np.mean(aps), abs=1e-12)
    assert 0.05 < r["mAP"] < 0.99  # the random data is neither trivial nor hopeless


def test_padded_arrays_equal_lists_and_evaluator_streams():
  rng = np.random.default_rng(5)
  dets, gts = _random_dataset(rng, num_images=12)
  expected = _evaluate(dets, gts, num_classes=4)

  def pad(items, d, width=None):
    out = np.zeros((len(items), d) + ((width,) if width else ()))
    valid = np.zeros((len(items), d), bool)
    for i, x in enumerate(items):
      out[i, :len(x)] = x
      valid[i, :len(x)] = True
    return out, valid

  dmax = max(len(d[0]) for d in dets) + 2
  gmax = max(len(g[0]) for g in gts) + 1
  boxes, valid = pad([d[0] for d in dets], dmax, 4)
  scores, _ = pad([d[1] for d in dets], dmax)
  labels, _ = pad([d[2] for d in dets], dmax)
  labels = labels.astype(np.int32)
  labels[~valid] = 3  # garbage in the padding: must be masked out by valid
  gt_boxes, gt_valid = pad([g[0] for g in gts], gmax, 4)
  gt_labels, _ = pad([g[1] for g in gts], gmax)  # padding label 0 (no gt_valid needed)
  gt_diff, _ = pad([g[2] for g in gts], gmax)
  r = evaluate_voc(boxes.astype(np.float32), scores, labels, gt_boxes, gt_labels.astype(np.int32),
                   valid=valid, gt_difficult=gt_diff.astype(bool), num_classes=4)
  np.testing.assert_allclose(r["ap"], expected["ap"], atol=1e-6)

  ev = VocEvaluator(4)
  for sl in (slice(0, 5), slice(5, 12)):
    ev.update(boxes[sl], scores[sl], labels[sl], gt_boxes[sl], gt_labels[sl].astype(np.int32),
              valid=valid[sl], gt_valid=gt_valid[sl], gt_difficult=gt_diff[sl].astype(bool))
  np.testing.assert_allclose(ev.result()["ap"], expected["ap"], atol=1e-6)
  assert ev.result()["mAP"] == pytest.approx(expected["mAP"], abs=1e-6)


def test_errors_name_the_argument():
  b, s, l = [np.zeros((2, 4))], [np.zeros(2)], [np.ones(2, int)]
  with pytest.raises(ValueError, match="boxes"):
    evaluate_voc([np.zeros((2, 3))], s, l, b, l)
  with pytest.raises(ValueError, match="scores"):
    evaluate_voc(b, [np.zeros(3)], l, b, l)
  with pytest.raises(ValueError, match="gt_boxes"):
    evaluate_voc(b, s, l, b + b, l + l)  # 2 gt images for 1 detection image
  with pytest.raises(TypeError, match="labels"):
    evaluate_voc(b, s, [np.ones(2, np.float32)], b, l)
  with pytest.raises(ValueError, match="gt_labels"):
    evaluate_voc(b, s, l, b, [np.array([1, 5])], num_classes=3)
  with pytest.raises(ValueError, match="num_classes"):
    evaluate_voc(b, s, l, b, l, num_classes=0)
  with pytest.raises(ValueError, match="iou_threshold"):
    evaluate_voc(b, s, l, b, l, iou_threshold=0.0)
  with pytest.raises(TypeError, match="scores"):
    evaluate_voc(b, None, l, b, l)
  with pytest.raises(ValueError, match="gt_difficult"):
    evaluate_voc(b, s, l, b, l, gt_difficult=[np.zeros(3, bool)])
  with pytest.raises(ValueError, match="boxes"):
    evaluate_voc(np.zeros((1, 2, 4, 1)), np.zeros((1, 2)), np.ones((1, 2), int), b, l)
