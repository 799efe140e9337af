"""TFDS datasets mapped into the batch contract, with consistent mock examples.

``tfds.testing.mock_data``'s random examples are not self-consistent, so each test builds its own
examples, serializes them with the dataset's real TFDS features and decodes them the way TFDS's
array_record ``data_source`` does (``features.deserialize_example_np`` with the decoders the source
asks for). The expected values are worked out by hand in the comments.
"""

import io
import json
import os

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from jaxvision.data import pipeline, tfds_sources


def png(array) -> io.BytesIO:
  buf = io.BytesIO()
  Image.fromarray(np.asarray(array, np.uint8)).save(buf, "PNG")
  buf.seek(0)
  return buf


class _Deserialized:
  """What ``tfds.data_source`` returns: records decoded from serialized bytes on access."""

  def __init__(self, features, serialized, decoders):
    self.features, self.serialized, self.decoders = features, serialized, decoders

  def __len__(self):
    return len(self.serialized)

  def __getitem__(self, i):
    return self.features.deserialize_example_np(self.serialized[i], decoders=self.decoders)


def mock_source(make_examples, seen=None):
  """``mock_data(as_data_source_fn=...)`` serving ``make_examples(split)`` (a list of dicts)."""

  def as_data_source(self, split, decoders=None, **kwargs):
    del kwargs
    if seen is not None:
      seen.append((self.name, split, decoders))
    features = self.info.features
    return _Deserialized(features, [features.serialize_example(ex) for ex in make_examples(split)],
                         decoders)

  return tfds.testing.mock_data(as_data_source_fn=as_data_source)


# ------------------------------------------------------------------------------------------------
# voc/2007
# ------------------------------------------------------------------------------------------------


def _voc_examples(split):
  del split
  h, w = 40, 60
  image = np.zeros((h, w, 3), np.uint8)
  image[:, :, 0] = 200
  # VOC XML boxes are 1-based inclusive pixel indices; TFDS stores xmin / w, ymin / h, ...
  # box A: xmin 11, ymin 5, xmax 30, ymax 20 (a person, difficult) -> continuous [10, 4, 30, 20]
  # box B: xmin 1, ymin 1, xmax 60, ymax 40 (the whole image, aeroplane) -> [0, 0, 60, 40]
  bbox = np.array([[5 / h, 11 / w, 20 / h, 30 / w], [1 / h, 1 / w, 40 / h, 60 / w]], np.float32)
  objects = {"label": [14, 0], "bbox": bbox, "pose": [4, 0], "is_truncated": [False, True],
             "is_difficult": [True, False]}
  return [
      {"image": png(image), "image/filename": "000005.jpg", "objects": objects,
       "labels": [0, 14], "labels_no_difficult": [0]},
      {"image": png(image[:20]), "image/filename": "000007.jpg",
       "objects": {"label": [], "bbox": np.zeros((0, 4), np.float32), "pose": [],
                   "is_truncated": [], "is_difficult": []}, "labels": [], "labels_no_difficult": []},
  ]


def test_voc_maps_boxes_labels_and_difficult(tmp_path):
  seen = []
  with mock_source(_voc_examples, seen):
    source, decode, info = tfds_sources.open_source("voc/2007", "train", str(tmp_path))
    ex = decode(source[0])
    empty = decode(source[1])
  assert seen[0][1] == "train" and isinstance(seen[0][2]["image"], tfds_sources.EncodedBytes)
  assert info.num_classes == 20 and info.class_names[14] == "person"
  assert ex["image"].shape == (40, 60, 3) and ex["image"].dtype == np.uint8
  assert np.all(ex["image"][..., 0] == 200)
  np.testing.assert_allclose(ex["boxes"], [[10, 4, 30, 20], [0, 0, 60, 40]], atol=1e-4)
  assert ex["boxes"].dtype == np.float32
  np.testing.assert_array_equal(ex["labels"], [15, 1])  # 0-based 14 (person) -> 15
  np.testing.assert_array_equal(ex["difficult"], [True, False])
  np.testing.assert_array_equal(ex["is_crowd"], [False, False])
  assert ex["image_id"] == 0 and empty["image_id"] == 1
  assert empty["boxes"].shape == (0, 4) and empty["labels"].shape == (0,)
  assert empty["image"].shape == (20, 60, 3)


def test_voc_through_the_pipeline_scales_boxes(tmp_path):
  import functools

  from jaxvision.data import transforms as T

  transform = T.compose(functools.partial(T.resize_keep_aspect, target_hw=(80, 120), max_size=None),
                        functools.partial(T.pad_to_size, target_hw=(80, 120)), T.normalize_image,
                        functools.partial(T.pad_instances, max_boxes=3))
  with mock_source(_voc_examples):
    source, decode, _ = tfds_sources.open_source("voc/2007", "validation", str(tmp_path))
    batch = next(iter(pipeline.make_dataset(source, batch_size=2, decode=decode, transform=transform,
                                            train=False)))
  # Resized by 2 (40x60 -> 80x120): box A -> [20, 8, 60, 40].
  np.testing.assert_allclose(batch["boxes"][0, :2], [[20, 8, 60, 40], [0, 0, 120, 80]], atol=1e-3)
  np.testing.assert_array_equal(batch["box_valid"], [[True, True, False], [False] * 3])
  np.testing.assert_array_equal(batch["difficult"][0], [True, False, False])
  np.testing.assert_array_equal(batch["scale"], [2.0, 2.0])
  np.testing.assert_array_equal(batch["orig_hw"], [[40, 60], [20, 60]])
  np.testing.assert_array_equal(batch["num_skipped_images"], [0, 0])


# ------------------------------------------------------------------------------------------------
# oxford_iiit_pet
# ------------------------------------------------------------------------------------------------


def _trimap(h=30, w=40):
  trimap = np.full((h, w), 2, np.uint8)  # 2 = background
  trimap[5:25, 10:30] = 3  # border
  trimap[7:23, 12:28] = 1  # pet
  return trimap


def _pet_examples(split):
  h, w = 30, 40
  image = np.full((h, w, 3), 90, np.uint8)
  # Head box from the XML (1-based inclusive): xmin 13, ymin 8, xmax 20, ymax 15.
  head = tfds.features.BBox(8 / h, 13 / w, 15 / h, 20 / w)
  if split == "test":  # the test split has no head boxes (TFDS stores zeros)
    head = tfds.features.BBox(0.0, 0.0, 0.0, 0.0)
  return [{"image": png(image), "label": 5, "species": 1, "file_name": "beagle_1.jpg",
           "segmentation_mask": png(_trimap(h, w)), "head_bbox": head}]


@pytest.mark.parametrize("mode,cls", [("pet", 1), ("species", 2), ("breed", 6)])
def test_pet_trimap_and_head_box(tmp_path, mode, cls):
  with mock_source(_pet_examples):
    source, decode, info = tfds_sources.open_source("oxford_iiit_pet", "train", str(tmp_path),
                                                    pet_labels=mode)
    ex = decode(source[0])
  assert info.num_classes == {"pet": 1, "species": 2, "breed": 37}[mode] and info.has_background
  trimap = _trimap()
  seg = ex["segmentation"]
  assert seg.shape == (30, 40) and seg.dtype == np.int32
  np.testing.assert_array_equal(seg[trimap == 2], 0)
  np.testing.assert_array_equal(seg[trimap == 1], cls)
  np.testing.assert_array_equal(seg[trimap == 3], 255)
  np.testing.assert_allclose(ex["boxes"], [[12, 7, 20, 15]], atol=1e-4)
  np.testing.assert_array_equal(ex["labels"], [cls])
  if mode == "breed":
    assert info.class_names[5] == "Bengal"  # TFDS's label 5


def test_pet_test_split_has_no_box(tmp_path):
  with mock_source(_pet_examples):
    source, decode, _ = tfds_sources.open_source("oxford_iiit_pet", "test", str(tmp_path))
    ex = decode(source[0])
  assert ex["boxes"].shape == (0, 4) and ex["labels"].shape == (0,)
  assert (ex["segmentation"] == 1).sum() == 16 * 16


# ------------------------------------------------------------------------------------------------
# scene_parse150
# ------------------------------------------------------------------------------------------------


def _scene_annotation(h=24, w=32):
  ann = np.zeros((h, w, 3), np.uint8)
  ann[2:10, 3:13, 0] = 4    # person ...
  ann[2:10, 3:13, 1] = 1    # ... instance 1
  ann[10:20, 20:30, 0] = 9  # car ...
  ann[10:20, 20:30, 1] = 7  # ... instance 7
  ann[20:24, 0:5, 0] = 2    # windowpane pixels without an instance id
  return ann


def _scene_examples(split):
  del split
  return [{"image": png(np.full((24, 32, 3), 30, np.uint8)), "annotation": png(_scene_annotation())}]


@pytest.mark.parametrize("other", ["background", "ignore"])
def test_scene_parse_semantic_map_and_instances(tmp_path, other):
  with mock_source(_scene_examples):
    source, decode, info = tfds_sources.open_source("scene_parse150", "train", str(tmp_path),
                                                    scene_parse_other=other, with_masks=True)
    ex = decode(source[0])
  assert info.num_classes == 100 and info.class_names[3] == "person" and info.num_seg_classes == 101
  ann = _scene_annotation()
  seg = ex["segmentation"]
  np.testing.assert_array_equal(seg[ann[..., 0] > 0], ann[..., 0][ann[..., 0] > 0])
  np.testing.assert_array_equal(seg[ann[..., 0] == 0], 0 if other == "background" else 255)
  # Instances sorted by id (1, 7): tight boxes of the rectangles, labels from the R channel.
  np.testing.assert_array_equal(ex["boxes"], [[3, 2, 13, 10], [20, 10, 30, 20]])
  np.testing.assert_array_equal(ex["labels"], [4, 9])
  np.testing.assert_array_equal(ex["masks"][0], ann[..., 1] == 1)
  np.testing.assert_array_equal(ex["masks"][1], ann[..., 1] == 7)


# ------------------------------------------------------------------------------------------------
# cityscapes, lvis, coco/2017
# ------------------------------------------------------------------------------------------------


def test_cityscapes_train_ids(tmp_path):
  label_ids = np.array([[0, 7, 8, 26], [33, 24, 9, 255], [11, 23, 1, 31]], np.uint8)

  def examples(split):
    del split
    return [{"image_id": "aachen_000000_000019", "image_left": png(np.zeros((3, 4, 3))),
             "segmentation_label": png(label_ids)}]

  with mock_source(examples):
    source, decode, info = tfds_sources.open_source("cityscapes", "validation", str(tmp_path))
    ex = decode(source[0])
  assert info.num_seg_classes == 19 and not info.has_background
  # road 7 -> 0, sidewalk 8 -> 1, car 26 -> 13, bicycle 33 -> 18, person 24 -> 11, building 11 -> 2,
  # sky 23 -> 10, train 31 -> 16; unlabeled 0, parking 9, ego vehicle 1 and 255 -> ignore.
  np.testing.assert_array_equal(ex["segmentation"],
                                [[255, 0, 1, 13], [18, 11, 255, 255], [2, 10, 255, 16]])


def test_lvis_boxes_labels_and_masks(tmp_path):
  mask0 = np.zeros((8, 10), np.uint8)
  mask0[1:4, 2:6] = 255
  mask1 = np.zeros((8, 10), np.uint8)
  mask1[5:8, 0:10] = 255

  def examples(split):
    del split
    return [{"image": png(np.zeros((8, 10, 3))), "image/id": 397133, "neg_category_ids": [3],
             "not_exhaustive_category_ids": [],
             "objects": {"id": [11, 12], "area": [12, 30],
                         "bbox": np.array([[1 / 8, 2 / 10, 4 / 8, 6 / 10], [5 / 8, 0, 1, 1]],
                                          np.float32),
                         "label": [0, 1202], "segmentation": [png(mask0), png(mask1)]}}]

  with mock_source(examples):
    source, decode, info = tfds_sources.open_source("lvis", "validation", str(tmp_path),
                                                    with_masks=True)
    ex = decode(source[0])
  assert info.num_classes == 1203 and info.class_names[0] == "aerosol_can"
  assert info.category_ids[:2] == (1, 2)
  np.testing.assert_allclose(ex["boxes"], [[2, 1, 6, 4], [0, 5, 10, 8]], atol=1e-5)
  np.testing.assert_array_equal(ex["labels"], [1, 1203])
  np.testing.assert_array_equal(ex["masks"], np.stack([mask0 > 0, mask1 > 0]))
  assert ex["image_id"] == 397133 and not ex["is_crowd"].any()


def test_coco_decoder_on_a_decoded_record():
  # TFDS's coco code imports TensorFlow, so it cannot be mocked here; the decoder is checked on a
  # record as the data source returns it (image bytes, sequences as lists).
  record = {"image": png(np.zeros((20, 30, 3))).getvalue(), "image/id": 42,
            "image/filename": "000000000042.jpg",
            "objects": {"id": [1, 2], "area": [10, 20], "label": [np.int64(0), np.int64(79)],
                        "bbox": [np.array([0.25, 0.1, 0.75, 0.5], np.float32),
                                 np.array([0.0, 0.0, 1.0, 1.0], np.float32)],
                        "is_crowd": [False, True]}}
  ex = tfds_sources.make_decoder("coco/2017")(record)
  np.testing.assert_allclose(ex["boxes"], [[3, 5, 15, 15], [0, 0, 30, 20]], atol=1e-5)
  np.testing.assert_array_equal(ex["labels"], [1, 80])
  np.testing.assert_array_equal(ex["is_crowd"], [False, True])
  info = tfds_sources.dataset_info("coco/2017")
  assert info.num_classes == 80 and info.category_ids[79] == 90 and info.class_names[79] == "toothbrush"


def test_box_conversion():
  # normalized yxyx of a 10 x 20 image -> xyxy pixels; one_based shifts x1, y1 by -1 (clipped at 0).
  out = tfds_sources.tfds_boxes_to_xyxy([[0.1, 0.25, 0.5, 1.0]], (10, 20))
  np.testing.assert_allclose(out, [[5, 1, 20, 5]], atol=1e-6)
  out = tfds_sources.tfds_boxes_to_xyxy([[0.1, 0.25, 0.5, 1.0], [0, 0, 0.1, 0.1]], (10, 20),
                                        one_based=True)
  np.testing.assert_allclose(out, [[4, 0, 20, 5], [0, 0, 2, 1]], atol=1e-6)
  assert tfds_sources.tfds_boxes_to_xyxy([], (4, 4)).shape == (0, 4)


def test_corrupt_image_is_unreadable_not_a_crash():
  record = {"image": b"\xff\xd8\xff\xe0 not really a jpeg", "image/filename": "000009.jpg",
            "objects": {"label": [], "bbox": [], "is_difficult": []}, "_index": 3}
  with pytest.raises(pipeline.UnreadableExample, match="voc/2007 record 3 \\(000009.jpg\\)") as e:
    tfds_sources.make_decoder("voc/2007")(record)
  assert e.value.placeholder["image_id"] == 3


# ------------------------------------------------------------------------------------------------
# Missing or unusable data
# ------------------------------------------------------------------------------------------------


def test_missing_dataset_says_how_to_get_it(tmp_path):
  with pytest.raises(tfds_sources.DatasetNotFoundError) as e:
    tfds_sources.open_source("voc/2007", "train", str(tmp_path))
  msg = str(e.value)
  assert "'voc/2007'" in msg and str(tmp_path) in msg
  assert f"tfds build voc/2007 --data_dir={tmp_path} --file_format=array_record" in msg
  assert "jaxvision[tf]" in msg and "Traceback" not in msg
  assert isinstance(e.value, FileNotFoundError)


def test_missing_cityscapes_names_the_manual_files(tmp_path):
  with pytest.raises(tfds_sources.DatasetNotFoundError) as e:
    tfds_sources.open_source("cityscapes", "train", str(tmp_path))
  msg = str(e.value)
  manual = os.path.join(str(tmp_path), "downloads", "manual")
  assert "leftImg8bit_trainvaltest.zip" in msg and "gtFine_trainvaltest.zip" in msg
  assert f"--manual_dir={manual}" in msg and "cityscapes/semantic_segmentation" in msg


def test_missing_coco_without_tensorflow(tmp_path):
  with pytest.raises(tfds_sources.DatasetNotFoundError, match="tfds build coco/2017") as e:
    tfds_sources.open_source("coco/2017", "train", str(tmp_path))
  assert "coco_json" in str(e.value)


def _fake_prepared(tmp_path, name, version, info):
  d = tmp_path.joinpath(*name.split("/"), version)
  d.mkdir(parents=True)
  (d / "dataset_info.json").write_text(json.dumps(info))
  return d


def test_tfrecord_copy_and_unknown_split(tmp_path):
  d = _fake_prepared(tmp_path, "voc/2007", "5.0.0", {"splits": [{"name": "train"}]})
  with pytest.raises(tfds_sources.DatasetNotFoundError, match="convert_format") as e:
    tfds_sources.open_source("voc/2007", "train", str(tmp_path))
  assert str(d) in str(e.value)
  _fake_prepared(tmp_path, "oxford_iiit_pet", "4.0.0",
                 {"fileFormat": "array_record", "splits": [{"name": "train"}, {"name": "test"}]})
  with pytest.raises(ValueError, match=r"available splits: \['train', 'test'\]"):
    tfds_sources.open_source("oxford_iiit_pet", "validation[:10%]", str(tmp_path))


def test_bad_options():
  with pytest.raises(ValueError, match="pet_labels"):
    tfds_sources.make_decoder("oxford_iiit_pet", pet_labels="dogs")
  with pytest.raises(ValueError, match="scene_parse_other"):
    tfds_sources.make_decoder("scene_parse150", scene_parse_other="drop")
  with pytest.raises(ValueError, match="unknown TFDS dataset"):
    tfds_sources.dataset_info("voc/2010")


# ------------------------------------------------------------------------------------------------
# A real prepared copy (array_record files on disk, no mock)
# ------------------------------------------------------------------------------------------------


def _prepare_tiny_voc(data_dir):
  """Prepares 3 examples as TFDS's ``voc/2007`` (its real features and file layout) without TF."""
  from etils import epath
  from tensorflow_datasets.object_detection import voc

  class TinyVoc(voc.Voc, skip_registration=True):
    name = "voc"
    code_path = epath.Path(voc.__file__)

    def _split_generators(self, dl_manager):
      return {"train": self._examples(), "test": self._examples()}

    def _examples(self):
      for i in range(3):
        yield i, {"image": png(np.full((20 + i, 30, 3), 50 * i)), "image/filename": f"{i:06d}.jpg",
                  "objects": {"label": [i], "bbox": np.array([[0.1, 0.2, 0.5, 0.6]], np.float32),
                              "pose": [0], "is_truncated": [False], "is_difficult": [i == 1]},
                  "labels": [i], "labels_no_difficult": [i]}

  builder = TinyVoc(config="2007", data_dir=str(data_dir), file_format="array_record")
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      try_download_gcs=False, compute_stats=tfds.download.ComputeStatsMode.SKIP))
  return data_dir / "voc" / "2007" / "5.0.0"


def test_reads_a_real_prepared_copy_and_an_older_version(tmp_path):
  version_dir = _prepare_tiny_voc(tmp_path / "tfds")
  source, decode, _ = tfds_sources.open_source("voc/2007", "train", str(tmp_path / "tfds"))
  assert len(source) == 3
  examples = sorted((decode(source[i]) for i in range(3)), key=lambda e: e["image"].shape[0])
  for i, ex in enumerate(examples):
    h = 20 + i
    assert ex["image"].shape == (h, 30, 3) and np.all(ex["image"] == 50 * i)
    # [ymin, xmin, ymax, xmax] = [0.1, 0.2, 0.5, 0.6], 1-based: x1 = 0.2 * 30 - 1, y1 = 0.1 * h - 1.
    np.testing.assert_allclose(ex["boxes"], [[5, 0.1 * h - 1, 18, 0.5 * h]], atol=1e-4)
    np.testing.assert_array_equal(ex["labels"], [i + 1])
    np.testing.assert_array_equal(ex["difficult"], [i == 1])
  # A copy prepared by an older TFDS version (4.0.0 on disk, the code builds 5.0.0) still reads.
  old = tmp_path / "old" / "voc" / "2007" / "4.0.0"
  old.parent.mkdir(parents=True)
  version_dir.rename(old)
  info = json.loads((old / "dataset_info.json").read_text())
  info["version"] = "4.0.0"
  (old / "dataset_info.json").write_text(json.dumps(info))
  source, decode, _ = tfds_sources.open_source("voc/2007", "test", str(tmp_path / "old"))
  assert len(source) == 3 and decode(source[0])["boxes"].shape == (1, 4)
