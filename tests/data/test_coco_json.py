"""COCO-format JSON + image folder source on the committed fixture (tests/fixtures/gen_coco_tiny.py).

Fixture: image 5 (a.png, 40 x 48): square polygon x 4..20 y 6..18, circle as compressed RLE (disk
centre (32, 27) radius 6), crowd as uncompressed RLE (x 2..14, y 30..38); image 9 (b.jpg, 32 x 40):
a two-part polygon; image 12 (c.png, grey): no annotations; image 20 (d.jpg): truncated file.
Categories 3 circle, 7 square, 11 triangle -> labels 1, 2, 3.
"""

import functools
import json
import logging
import pathlib
import shutil

import numpy as np
import pytest

from jaxvision.data import coco_json, pipeline
from jaxvision.data import transforms as T

FIX = pathlib.Path(__file__).resolve().parents[1] / "fixtures" / "coco_tiny" / "source"
ANN, IMAGES = str(FIX / "instances.json"), str(FIX / "images")


def disk(h, w, cy, cx, r):
  yy, xx = np.mgrid[:h, :w]
  return (yy + 0.5 - cy) ** 2 + (xx + 0.5 - cx) ** 2 <= r * r


def rect(h, w, x1, y1, x2, y2):
  m = np.zeros((h, w), bool)
  m[y1:y2, x1:x2] = True
  return m


@pytest.fixture(scope="module")
def source():
  return coco_json.CocoJsonSource(ANN, IMAGES)


def test_records_and_info(source):
  assert len(source) == 4  # the image without annotations and the corrupt one are kept
  assert [source[i]["id"] for i in range(4)] == [5, 9, 12, 20]  # ascending ids
  info = source.info
  assert info.class_names == ("circle", "square", "triangle")
  assert info.category_ids == (3, 7, 11) and info.num_classes == 3


def test_polygon_rle_and_crowd_masks(source):
  ex = source.decoder(with_masks=True)(source[0])
  h, w = 40, 48
  assert ex["image"].shape == (h, w, 3) and ex["image"].dtype == np.uint8
  assert tuple(ex["image"][10, 10]) == (220, 40, 40)  # the square is painted red
  np.testing.assert_array_equal(ex["labels"], [2, 1, 1])  # square (7) -> 2, circles (3) -> 1
  np.testing.assert_array_equal(ex["is_crowd"], [False, False, True])
  circle = disk(h, w, 27, 32, 6)
  ys, xs = np.nonzero(circle)
  np.testing.assert_allclose(ex["boxes"], [[4, 6, 20, 18],
                                           [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1],
                                           [2, 30, 14, 38]])
  assert ex["masks"].shape == (3, h, w) and ex["masks"].dtype == bool
  np.testing.assert_array_equal(ex["masks"][0], rect(h, w, 4, 6, 20, 18))  # polygon
  np.testing.assert_array_equal(ex["masks"][1], circle)  # compressed RLE
  np.testing.assert_array_equal(ex["masks"][2], rect(h, w, 2, 30, 14, 38))  # uncompressed RLE
  assert ex["image_id"] == 5


def test_multi_part_polygon_jpeg_and_grey_image(source):
  decode = source.decoder(with_masks=True)
  ex = decode(source[1])
  assert ex["image"].shape == (32, 40, 3)
  np.testing.assert_array_equal(ex["labels"], [3])
  np.testing.assert_allclose(ex["boxes"], [[2, 2, 30, 20]])
  np.testing.assert_array_equal(ex["masks"][0], rect(32, 40, 2, 2, 10, 8) | rect(32, 40, 20, 10, 30, 20))
  grey = decode(source[2])
  assert grey["image"].shape == (24, 24, 3) and np.all(grey["image"] == 77)
  assert grey["boxes"].shape == (0, 4) and grey["masks"].shape == (0, 24, 24)
  # Without masks, no pycocotools work and no masks key.
  assert "masks" not in source.decoder()(source[1])


def test_corrupt_image_raises_unreadable(source):
  with pytest.raises(pipeline.UnreadableExample, match="d.jpg") as e:
    source.decoder()(source[3])
  assert e.value.placeholder["image_id"] == 20


def _transform(masks):
  return T.compose(functools.partial(T.resize_keep_aspect, target_hw=(48, 48), max_size=None),
                   functools.partial(T.pad_to_size, target_hw=(48, 48)), T.normalize_image,
                   functools.partial(T.pad_instances, max_boxes=2, mask_stride=4 if masks else 1))


def test_eval_keeps_a_marked_placeholder_and_counts_it(source, caplog):
  decode = source.decoder(with_masks=True)
  ds = pipeline.make_dataset(source, batch_size=4, decode=decode, transform=_transform(True),
                             train=False)
  before = pipeline.skipped_in_this_process()
  with caplog.at_level(logging.INFO, logger="jaxvision.data.pipeline"):
    (batch,) = list(ds)
  assert pipeline.skipped_in_this_process() == before + 1
  np.testing.assert_array_equal(batch["example_valid"], [True, True, True, False])
  np.testing.assert_array_equal(batch["num_skipped_images"], [0, 0, 0, 1])
  np.testing.assert_array_equal(batch["image_id"], [5, 9, 12, 20])
  assert not batch["box_valid"][3].any() and not batch["masks"][3].any()
  assert any("d.jpg" in r.getMessage() for r in caplog.records)
  # Bounded masks: at most max_boxes=2 per image, at stride 4 (48 / 4 = 12). Image 5's box areas
  # (scale 1): square 16x12 = 192, circle 12x12 = 144, crowd 12x8 = 96 -> the crowd is dropped.
  assert batch["masks"].shape == (4, 2, 12, 12)
  np.testing.assert_array_equal(batch["num_dropped_boxes"], [1, 0, 0, 0])
  np.testing.assert_array_equal(batch["labels"][0], [2, 1])
  np.testing.assert_array_equal(batch["is_crowd"][0], [False, False])


def test_train_replaces_the_unreadable_image(source):
  decode = source.decoder()
  make = functools.partial(pipeline.make_dataset, source, batch_size=2, decode=decode,
                           transform=_transform(False), train=True, seed=0)
  ds = make()
  batches = [ds[i] for i in range(6)]  # 3 epochs of 4 images
  ids = np.concatenate([b["image_id"] for b in batches])
  skipped = np.concatenate([b["num_skipped_images"] for b in batches])
  assert 20 not in ids and np.all(np.concatenate([b["example_valid"] for b in batches]))
  assert skipped.sum() == 3  # the corrupt image came up once per epoch, replaced each time
  assert set(ids) == {5, 9, 12}
  # Deterministic: the same batches again.
  again = make()
  for i in range(6):
    for k in batches[i]:
      np.testing.assert_array_equal(batches[i][k], again[i][k])


def test_category_mapping_follows_the_training_file(tmp_path):
  data = json.loads(pathlib.Path(ANN).read_text())
  data["categories"] = [c for c in data["categories"] if c["id"] != 3]  # eval file without circles
  data["annotations"] = [a for a in data["annotations"] if a["category_id"] != 3]
  path = tmp_path / "val.json"
  path.write_text(json.dumps(data))
  ids, names = coco_json.load_categories(ANN)
  assert (ids, names) == ((3, 7, 11), ("circle", "square", "triangle"))
  val = coco_json.CocoJsonSource(str(path), IMAGES, category_ids=ids, class_names=names)
  assert val.info.class_names == ("circle", "square", "triangle")
  assert coco_json.CocoJsonSource(str(path), IMAGES).info.class_names == ("square", "triangle")
  np.testing.assert_array_equal(val.decoder()(val[0])["labels"], [2])  # square keeps label 2
  with pytest.raises(ValueError, match=r"categories \[3\]"):
    coco_json.CocoJsonSource(ANN, IMAGES, category_ids=(7, 11))


def test_missing_files_and_size_mismatch(tmp_path):
  with pytest.raises(pipeline.DatasetNotFoundError, match="instances_train2017.json"):
    coco_json.CocoJsonSource(str(tmp_path / "nope.json"), IMAGES)
  with pytest.raises(pipeline.DatasetNotFoundError, match="image folder"):
    coco_json.CocoJsonSource(ANN, str(tmp_path / "no_images"))
  # A missing image file and a file whose size disagrees with the JSON are unreadable examples.
  images = tmp_path / "images"
  shutil.copytree(IMAGES, images)
  (images / "b.jpg").unlink()
  data = json.loads(pathlib.Path(ANN).read_text())
  data["images"][2]["height"] = 41  # a.png is 40 high
  path = tmp_path / "ann.json"
  path.write_text(json.dumps(data))
  src = coco_json.CocoJsonSource(str(path), str(images))
  with pytest.raises(pipeline.UnreadableExample, match="41 x 48"):
    src.decoder()(src[0])
  with pytest.raises(pipeline.UnreadableExample, match="b.jpg"):
    src.decoder()(src[1])
  with pytest.raises(ValueError, match="not a COCO instances file"):
    (tmp_path / "bad.json").write_text("[]")
    coco_json.CocoJsonSource(str(tmp_path / "bad.json"), IMAGES)


def test_segmentation_to_mask_rejects_bad_input():
  with pytest.raises(ValueError, match="RLE size"):
    coco_json.segmentation_to_mask({"size": [3, 3], "counts": [9]}, 4, 4)
  with pytest.raises(ValueError, match="polygons or an RLE"):
    coco_json.segmentation_to_mask("abc", 4, 4)
  assert not coco_json.segmentation_to_mask([[1, 2]], 4, 4).any()  # degenerate polygon ignored
