"""Tests for jaxvision.eval.coco against pycocotools run directly on the tiny committed fixture.

Fixture: tests/fixtures/coco_tiny/ (written by tests/fixtures/gen_eval.py): 5 images, categories with
ids 2, 5, 9, polygon / RLE / uncompressed-RLE crowd segmentations, and bbox and segm results. The
reference numbers are pycocotools' COCOeval on those JSON files; the tests feed jaxvision arrays
(decoded independently here with NumPy and pycocotools) through our conversions and compare.
"""

from __future__ import annotations

import contextlib
import io
import json
import pathlib
import sys

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from jaxvision.eval import (COCO_STAT_NAMES, CocoEvaluator, build_coco_ground_truth,
                            detections_to_coco, evaluate_coco, ground_truth_from_batch, load_coco,
                            masks_to_rle)

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:pycocotools.*")

FIX = pathlib.Path(__file__).resolve().parents[1] / "fixtures" / "coco_tiny"
GT_JSON = FIX / "instances.json"
DET_BBOX = FIX / "detections_bbox.json"
DET_SEGM = FIX / "detections_segm.json"


def _reference(dets_path, iou_type, cat_ids=None, img_ids=None):
  """pycocotools directly on the JSON files."""
  with contextlib.redirect_stdout(io.StringIO()):
    gt = COCO(str(GT_JSON))
    ev = COCOeval(gt, gt.loadRes(str(dets_path)), iou_type)
    if cat_ids is not None:
      ev.params.catIds = cat_ids
    if img_ids is not None:
      ev.params.imgIds = img_ids
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
  return np.array(ev.stats, np.float64)


def _as_array(stats):
  return np.array([stats[name] for name in COCO_STAT_NAMES])


@pytest.fixture(scope="module")
def data():
  """The fixture decoded into per-image NumPy arrays (xyxy boxes, labels 1..K, masks)."""
  with open(GT_JSON) as f:
    gt = json.load(f)
  with contextlib.redirect_stdout(io.StringIO()):
    coco = COCO(str(GT_JSON))
  cat_ids = sorted(c["id"] for c in gt["categories"])
  label_of = {c: k + 1 for k, c in enumerate(cat_ids)}
  images = []
  for img in gt["images"]:
    anns = [a for a in gt["annotations"] if a["image_id"] == img["id"]]
    xywh = np.array([a["bbox"] for a in anns], np.float64).reshape(-1, 4)
    images.append({
        "image_id": img["id"], "height": img["height"], "width": img["width"],
        "boxes": np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], 1),
        "labels": np.array([label_of[a["category_id"]] for a in anns], np.int32),
        "is_crowd": np.array([bool(a["iscrowd"]) for a in anns], bool),
        "masks": np.array([coco.annToMask(a).astype(bool) for a in anns], bool).reshape(
            -1, img["height"], img["width"]),
    })
  sizes = {im["image_id"]: (im["height"], im["width"]) for im in images}

  def dets(path):
    with open(path) as f:
      results = json.load(f)
    out = {}
    for im in images:
      rs = [r for r in results if r["image_id"] == im["image_id"]]
      h, w = sizes[im["image_id"]]
      if rs and "bbox" in rs[0]:
        xywh = np.array([r["bbox"] for r in rs], np.float64).reshape(-1, 4)
        masks = None
      else:
        masks = np.array([mask_utils.decode(r["segmentation"]).astype(bool) for r in rs],
                         bool).reshape(-1, h, w)
        xywh = np.array([mask_utils.toBbox(r["segmentation"]) for r in rs]).reshape(-1, 4)
      out[im["image_id"]] = {
          "boxes": np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], 1),
          "scores": np.array([r["score"] for r in rs], np.float64),
          "labels": np.array([label_of[r["category_id"]] for r in rs], np.int32),
          "masks": masks,
      }
    return out

  return {"gt": gt, "images": images, "cat_ids": cat_ids, "bbox": dets(DET_BBOX),
          "segm": dets(DET_SEGM)}


def _pad(items, length, fill=0):
  shape = (len(items), length) + items[0].shape[1:]
  out = np.full(shape, fill, items[0].dtype)
  for i, x in enumerate(items):
    out[i, :len(x)] = x
  return out


def test_committed_reference_matches_pycocotools_here(fixture_npz):
  ref = fixture_npz("coco_tiny_reference")
  np.testing.assert_allclose(_reference(DET_BBOX, "bbox"), ref["bbox_stats"], atol=1e-12)
  np.testing.assert_allclose(_reference(DET_SEGM, "segm"), ref["segm_stats"], atol=1e-12)
  # Not a degenerate fixture: every number is defined and non-trivial.
  assert (ref["bbox_stats"] > 0.1).all() and (ref["segm_stats"] > 0.1).all()


def test_json_paths_equal_direct_pycocotools(fixture_npz):
  ref = fixture_npz("coco_tiny_reference")
  for path, iou_type in ((DET_BBOX, "bbox"), (DET_SEGM, "segm")):
    stats = evaluate_coco(GT_JSON, path, iou_type, per_class=True)
    np.testing.assert_allclose(_as_array(stats), ref[f"{iou_type}_stats"], atol=1e-12)
    names = {2: "circle", 5: "square", 9: "triangle"}
    per_class = [stats[f"AP/{names[c]}"] for c in ref["cat_ids"]]
    np.testing.assert_allclose(per_class, ref[f"{iou_type}_class_ap"], atol=1e-12)


def test_bbox_detections_from_padded_arrays(data, fixture_npz):
  ref = fixture_npz("coco_tiny_reference")["bbox_stats"]
  ids = [im["image_id"] for im in data["images"]]
  dets = [data["bbox"][i] for i in ids]
  d = max(len(x["boxes"]) for x in dets) + 2
  boxes = _pad([x["boxes"].astype(np.float32) for x in dets], d)
  scores = _pad([x["scores"] for x in dets], d)
  labels = _pad([x["labels"] for x in dets], d)
  valid = _pad([np.ones(len(x["boxes"]), bool) for x in dets], d, False)
  labels[~valid] = 1  # garbage in the padding, masked by valid
  ev = CocoEvaluator(str(GT_JSON), iou_types=("bbox",))
  ev.update(np.array(ids[:2]), boxes[:2], scores[:2], labels[:2], valid=valid[:2])
  ev.update(np.array(ids[2:]), boxes[2:], scores[2:], labels[2:], valid=valid[2:])
  stats = ev.result()
  np.testing.assert_allclose([stats[f"bbox/{n}"] for n in COCO_STAT_NAMES], ref, atol=1e-12)
  json.dumps(ev.results)  # JSON-serializable
  # The conversion itself: xyxy -> xywh and label -> category id.
  with open(DET_BBOX) as f:
    raw = json.load(f)
  ours = sorted((r["image_id"], r["category_id"], r["score"], tuple(r["bbox"])) for r in ev.results)
  theirs = sorted((r["image_id"], r["category_id"], r["score"], tuple(r["bbox"])) for r in raw)
  assert ours == theirs


def test_segm_detections_from_lists(data, fixture_npz):
  ref = fixture_npz("coco_tiny_reference")["segm_stats"]
  ids = [im["image_id"] for im in data["images"]]
  dets = [data["segm"][i] for i in ids]
  results = detections_to_coco(np.array(ids), [x["boxes"] for x in dets],
                               [x["scores"] for x in dets], [x["labels"] for x in dets],
                               masks=[x["masks"] for x in dets], category_ids=data["cat_ids"])
  stats = evaluate_coco(GT_JSON, results, "segm")
  np.testing.assert_allclose(_as_array(stats), ref, atol=1e-12)
  # Probability masks are thresholded at 0.5 and give the same RLE.
  probs = [np.where(x["masks"], 0.9, 0.1).astype(np.float32) for x in dets]
  results2 = detections_to_coco(np.array(ids), [x["boxes"] for x in dets],
                                [x["scores"] for x in dets], [x["labels"] for x in dets],
                                masks=probs, category_ids={k + 1: c for k, c in
                                                           enumerate(data["cat_ids"])})
  assert [r["segmentation"] for r in results2] == [r["segmentation"] for r in results]
  # Through the evaluator, with padded full-size masks cropped to each image's size.
  hmax = max(im["height"] for im in data["images"])
  wmax = max(im["width"] for im in data["images"])
  ev = CocoEvaluator(GT_JSON, iou_types=("segm",))
  for i, x in zip(ids, dets):
    padded = np.zeros((len(x["masks"]), hmax, wmax), bool)
    padded[:, :x["masks"].shape[1], :x["masks"].shape[2]] = x["masks"]
    ev.update(np.array([i]), [x["boxes"]], [x["scores"]], [x["labels"]], masks=[padded])
  np.testing.assert_allclose([ev.result()[f"segm/{n}"] for n in COCO_STAT_NAMES], ref, atol=1e-12)


def test_ground_truth_built_from_arrays_equals_json(data, fixture_npz):
  ref = fixture_npz("coco_tiny_reference")
  gt = build_coco_ground_truth(data["images"], data["gt"]["categories"])
  for path, iou_type in ((DET_BBOX, "bbox"), (DET_SEGM, "segm")):
    stats = evaluate_coco(gt, path, iou_type)
    np.testing.assert_allclose(_as_array(stats), ref[f"{iou_type}_stats"], atol=1e-12)
  # Same annotations as the JSON (areas from the masks, xywh boxes, crowd flags, category ids).
  by_json = sorted((a["image_id"], a["category_id"], a["iscrowd"], a["area"], tuple(a["bbox"]))
                   for a in data["gt"]["annotations"])
  by_us = sorted((a["image_id"], a["category_id"], a["iscrowd"], a["area"], tuple(a["bbox"]))
                 for a in gt.dataset["annotations"])
  assert by_us == by_json
  assert min(a["id"] for a in gt.dataset["annotations"]) == 1


def test_ground_truth_from_batch_maps_back(data, fixture_npz):
  ref = fixture_npz("coco_tiny_reference")
  images = data["images"]
  m = max(len(im["labels"]) for im in images) + 1
  hmax = max(im["height"] for im in images)
  wmax = max(im["width"] for im in images)
  scale = 2.0  # network = original * 2; masks at stride 2 then have the original resolution
  masks = np.zeros((len(images), m, hmax, wmax), bool)
  for i, im in enumerate(images):
    masks[i, :len(im["masks"]), :im["height"], :im["width"]] = im["masks"]
  batch = {
      "image_id": np.array([im["image_id"] for im in images], np.int32),
      "orig_hw": np.array([(im["height"], im["width"]) for im in images], np.int32),
      "scale": np.full(len(images), scale, np.float32),
      "boxes": _pad([(im["boxes"] * scale).astype(np.float32).reshape(-1, 4) for im in images], m),
      "labels": _pad([im["labels"] for im in images], m),
      "box_valid": _pad([np.ones(len(im["labels"]), bool) for im in images], m, False),
      "is_crowd": _pad([im["is_crowd"] for im in images], m, False),
      "masks": masks,
      "image": np.zeros((len(images), 2 * hmax, 2 * wmax, 3), np.float32),  # mask stride = 2
  }
  gt = build_coco_ground_truth(ground_truth_from_batch(batch), data["gt"]["categories"])
  for path, iou_type in ((DET_BBOX, "bbox"), (DET_SEGM, "segm")):
    np.testing.assert_allclose(_as_array(evaluate_coco(gt, path, iou_type)),
                               ref[f"{iou_type}_stats"], atol=1e-12)
  # Already in original coordinates.
  batch2 = dict(batch, boxes=batch["boxes"] / scale)
  del batch2["scale"]
  gt2 = build_coco_ground_truth(ground_truth_from_batch(batch2, to_original=False),
                                data["gt"]["categories"])
  np.testing.assert_allclose(_as_array(evaluate_coco(gt2, DET_SEGM, "segm")), ref["segm_stats"],
                             atol=1e-12)
  # Streaming evaluator that collects the ground truth from batches.
  ev = CocoEvaluator(None, categories=data["gt"]["categories"], iou_types=("bbox",))
  ids = [im["image_id"] for im in images]
  for i, (im, item) in enumerate(zip(images, ground_truth_from_batch(batch))):
    x = data["bbox"][im["image_id"]]
    ev.update(np.array([ids[i]]), [x["boxes"]], [x["scores"]], [x["labels"]], ground_truth=[item])
  np.testing.assert_allclose([ev.result()[f"bbox/{n}"] for n in COCO_STAT_NAMES],
                             ref["bbox_stats"], atol=1e-12)


def _perfect(data, iou_type):
  results = []
  for im in data["images"]:
    keep = ~im["is_crowd"]
    results += detections_to_coco(
        np.array([im["image_id"]]), [im["boxes"][keep]], [np.ones(keep.sum())],
        [im["labels"][keep]], masks=[im["masks"][keep]] if iou_type == "segm" else None,
        category_ids=data["cat_ids"])
  return results


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_perfect_detections_and_crowd(data, iou_type):
  perfect = _perfect(data, iou_type)
  stats = evaluate_coco(GT_JSON, perfect, iou_type)
  for name in ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR100"):
    assert stats[name] == pytest.approx(1.0), name
  # Detections on crowd regions match the crowd and are ignored: AP stays 1.
  on_crowd = []
  for im in data["images"]:
    c = im["is_crowd"]
    on_crowd += detections_to_coco(
        np.array([im["image_id"]]), [im["boxes"][c]], [np.full(c.sum(), 2.0)], [im["labels"][c]],
        masks=[im["masks"][c]] if iou_type == "segm" else None, category_ids=data["cat_ids"])
  assert len(on_crowd) == 2
  assert evaluate_coco(GT_JSON, perfect + on_crowd, iou_type)["AP"] == pytest.approx(1.0)
  # Dropping the crowd flag turns the crowds into ordinary objects that are then missed.
  no_crowd = [dict(im, is_crowd=np.zeros_like(im["is_crowd"])) for im in data["images"]]
  gt = build_coco_ground_truth(no_crowd, data["gt"]["categories"])
  assert evaluate_coco(gt, perfect, iou_type)["AR100"] < 1.0


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_empty_detections_give_zero(iou_type):
  stats = evaluate_coco(GT_JSON, [], iou_type)
  assert set(stats) == set(COCO_STAT_NAMES)
  assert all(v == 0.0 for v in stats.values()), stats
  ev = CocoEvaluator(GT_JSON, iou_types=(iou_type,))
  ev.update(np.array([1]), np.zeros((1, 0, 4)), np.zeros((1, 0)), np.zeros((1, 0), np.int32),
            masks=np.zeros((1, 0, 48, 64), bool) if iou_type == "segm" else None)
  assert ev.result()[f"{iou_type}/AP"] == 0.0


def test_only_seen_images_and_img_ids(data):
  ids = [1, 10]
  ev = CocoEvaluator(GT_JSON, iou_types=("bbox",), only_seen_images=True)
  for i in ids:
    x = data["bbox"][i]
    ev.update(np.array([i]), [x["boxes"]], [x["scores"]], [x["labels"]])
  expected = _reference(DET_BBOX, "bbox", img_ids=ids)
  np.testing.assert_allclose([ev.result()[f"bbox/{n}"] for n in COCO_STAT_NAMES], expected,
                             atol=1e-12)
  assert not np.allclose(expected, _reference(DET_BBOX, "bbox"))


def test_quiet_by_default_and_verbose_prints(capsys):
  evaluate_coco(GT_JSON, DET_BBOX, "bbox")
  assert capsys.readouterr().out == ""
  evaluate_coco(GT_JSON, DET_BBOX, "bbox", verbose=True)
  assert "Average Precision" in capsys.readouterr().out


def test_missing_pycocotools_says_what_to_install(monkeypatch):
  for name in ("pycocotools", "pycocotools.coco", "pycocotools.cocoeval", "pycocotools.mask"):
    monkeypatch.setitem(sys.modules, name, None)
  with pytest.raises(ImportError, match=r"pip install jaxvision\[coco\]"):
    evaluate_coco(GT_JSON, [], "bbox")


def test_errors(data):
  with pytest.raises(ValueError, match="iou_type"):
    evaluate_coco(GT_JSON, [], "keypoints")
  bad = [{"image_id": 999, "category_id": 2, "bbox": [0, 0, 1, 1], "score": 1.0}]
  with pytest.raises(ValueError, match="999"):
    evaluate_coco(GT_JSON, bad, "bbox")
  with pytest.raises(ValueError, match="segmentation"):
    evaluate_coco(GT_JSON, bad, "segm")
  with pytest.raises(ValueError, match="masks"):
    CocoEvaluator(GT_JSON, iou_types=("segm",)).update(
        np.array([1]), np.zeros((1, 1, 4)), np.ones((1, 1)), np.ones((1, 1), np.int32))
  with pytest.raises(ValueError, match="boxes"):
    detections_to_coco(np.array([1]), np.zeros((1, 2, 3)), np.ones((1, 2)), np.ones((1, 2), int))
  with pytest.raises(ValueError, match="scores"):
    detections_to_coco(np.array([1]), np.zeros((1, 2, 4)), np.ones((2, 2)), np.ones((1, 2), int))
  with pytest.raises(ValueError, match="labels"):
    detections_to_coco(np.array([1]), np.zeros((1, 1, 4)), np.ones((1, 1)),
                       np.full((1, 1), 4), category_ids=[2, 5, 9])
  im = dict(data["images"][0])
  with pytest.raises(ValueError, match="masks"):
    build_coco_ground_truth([dict(im, masks=im["masks"][:, :-1])], data["gt"]["categories"])
  with pytest.raises(ValueError, match="labels"):
    build_coco_ground_truth([im], ["only", "two"])
  with pytest.raises(ValueError, match="duplicate image_id"):
    build_coco_ground_truth([im, im], data["gt"]["categories"])
  with pytest.raises(TypeError, match="annotations"):
    load_coco(42)
  with pytest.raises(ValueError, match="masks"):
    masks_to_rle(np.zeros((4, 4), bool))
  with pytest.raises(ValueError, match="original resolution"):  # 28x28 per-box masks, not pasted
    CocoEvaluator(GT_JSON, iou_types=("segm",)).update(
        np.array([1]), np.zeros((1, 1, 4)), np.ones((1, 1)), np.ones((1, 1), np.int32),
        masks=np.zeros((1, 1, 28, 28), bool))
