"""config.data -> datasets: every name, worker processes, prefetch, missing data, COCO JSON."""

import contextlib
import io
import pathlib
import sys

import numpy as np
import pytest

from jaxvision.data import builder, pipeline

ROOT = pathlib.Path(__file__).resolve().parents[2]
FIX = ROOT / "tests" / "fixtures" / "coco_tiny" / "source"


def _config(data_dir, **overrides):
  if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # configs/ is not an installed package
  from configs.common import base

  c = base.apply_smoke(base.base_config())
  c.data.data_dir = str(data_dir)
  c.data.image_size = (64, 64)
  c.data.batch_size = 4
  c.data.eval_batch_size = 6
  with c.unlocked():
    for key, value in overrides.items():
      c.data[key] = value
  return c.data


@pytest.fixture(scope="module")
def tiny_shapes_dir(tmp_path_factory):
  d = tmp_path_factory.mktemp("tfds")
  pipeline.shapes_source("tiny", str(d))  # prepare once
  return d


def _equal(a, b):
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_same_batches_whatever_the_worker_count(tiny_shapes_dir):
  # Starting worker processes takes seconds (spawn + imports), so this test starts them once:
  # training resumed at step 1 with 2 workers must give batches 1..5 of the in-process pipeline.
  data = _config(tiny_shapes_dir, keep_masks=True, mask_stride=4)
  reference = builder.make_split(data, train=True)
  expected = [reference[i] for i in range(1, 6)]  # 16 examples / 4 = 4 batches per epoch
  for workers, prefetch in ((0, 0), (0, 3), (2, 2)):
    data = _config(tiny_shapes_dir, keep_masks=True, mask_stride=4, worker_count=workers,
                   prefetch=prefetch)
    with contextlib.closing(iter(builder.make_loader(data, train=True, start_step=1))) as it:
      got = [next(it) for _ in range(5)]
    for a, b in zip(expected, got):
      _equal(a, b)
  # Evaluation (in process here; with workers in the COCO test): one pass per iter().
  loader = builder.make_loader(_config(tiny_shapes_dir), train=False)
  first, second = list(loader), list(loader)
  assert len(first) == len(second) == 3  # 16 = 6 + 6 + 4
  for a, b in zip(first, second):
    _equal(a, b)
  np.testing.assert_array_equal(first[-1]["example_valid"], [True] * 4 + [False] * 2)


def test_prefetch_to_device_keeps_order_and_bounds_lookahead():
  import jax

  batches = [{"x": np.full((2,), i, np.int32)} for i in range(5)]
  puts = []

  class Source:
    closed = False

    def __iter__(self):
      return self

    def __next__(self):
      if not batches:
        raise StopIteration
      return batches.pop(0)

    def close(self):
      Source.closed = True

  def put(batch):
    puts.append(int(batch["x"][0]))
    return jax.device_put(batch)

  gen = pipeline.prefetch_to_device(Source(), 2, put, with_host=True)
  host, dev = next(gen)
  assert puts == [0, 1]  # the next batch is already on the device
  assert isinstance(dev["x"], jax.Array) and int(dev["x"][0]) == 0 and int(host["x"][0]) == 0
  rest = [int(d["x"][0]) for _, d in gen]
  assert rest == [1, 2, 3, 4] and Source.closed
  # size 0 puts on demand; bad sizes are refused.
  assert [int(d["x"][0]) for d in pipeline.prefetch_to_device(
      [{"x": np.zeros(1) + i} for i in range(3)], 0, jax.device_put)] == [0, 1, 2]
  with pytest.raises(ValueError, match="size"):
    next(pipeline.prefetch_to_device([], -1, jax.device_put))


def test_iterate_plain_indexable_and_bad_options():
  class Indexable:  # e.g. a wrapper with __getitem__ only
    def __getitem__(self, i):
      if i >= 3:
        raise IndexError(i)
      return {"i": i}

  assert [b["i"] for b in pipeline.iterate(Indexable(), prefetch=2)] == [0, 1, 2]
  with pytest.raises(ValueError, match="worker_count"):
    pipeline.iterate(Indexable(), worker_count=-1)
  with pytest.raises(TypeError, match="grain.MapDataset"):
    pipeline.iterate(Indexable(), worker_count=2)


def test_every_dataset_has_info_without_data(tmp_path):
  from jaxvision.data import tfds_sources

  assert set(builder.TFDS_DATASETS) == set(tfds_sources.DATASETS)
  expected = {"shapes": (5, 6), "oxford_iiit_pet": (1, 2), "voc/2007": (20, 21),
              "voc/2012": (20, 21), "scene_parse150": (100, 101), "cityscapes": (19, 19),
              "lvis": (1203, 1204), "coco/2017": (80, 81)}
  for name, (k, c) in expected.items():
    info = builder.dataset_info(_config(tmp_path, name=name))
    assert (info.num_classes, info.num_seg_classes, info.ignore_label) == (k, c, 255), name
  info = builder.dataset_info(_config(tmp_path, name="oxford_iiit_pet", pet_labels="species"))
  assert info.seg_class_names == ("background", "cat", "dog")
  with pytest.raises(ValueError, match="unknown; available"):
    builder.dataset_info(_config(tmp_path, name="voc2007"))


def test_missing_tfds_dataset_through_the_config(tmp_path):
  with pytest.raises(pipeline.DatasetNotFoundError, match="tfds build scene_parse150"):
    builder.make_split(_config(tmp_path, name="scene_parse150"), train=True)


def _mock_pet():
  """``mock_data`` serving 3 consistent oxford_iiit_pet records (serialized with the real TFDS
  features and decoded like the array_record data source; see test_tfds_sources.py)."""
  import tensorflow_datasets as tfds
  from PIL import Image

  def png(a):
    buf = io.BytesIO()
    Image.fromarray(np.asarray(a, np.uint8)).save(buf, "PNG")
    buf.seek(0)
    return buf

  def examples():
    out = []
    for i, (h, w) in enumerate([(32, 48), (48, 32), (16, 16)]):
      trimap = np.full((h, w), 2, np.uint8)
      trimap[4:12, 4:12] = 1
      trimap[12:14, 4:12] = 3
      out.append({"image": png(np.full((h, w, 3), 10 * i)), "label": i, "species": i % 2,
                  "file_name": f"pet_{i}.jpg", "segmentation_mask": png(trimap),
                  "head_bbox": tfds.features.BBox(5 / h, 5 / w, 12 / h, 12 / w)})
    return out

  class Source:
    def __init__(self, features, decoders):
      self.features, self.decoders = features, decoders
      self.records = [features.serialize_example(ex) for ex in examples()]

    def __len__(self):
      return len(self.records)

    def __getitem__(self, i):
      return self.features.deserialize_example_np(self.records[i], decoders=self.decoders)

  return tfds.testing.mock_data(
      as_data_source_fn=lambda self, split, decoders=None, **kw: Source(self.info.features, decoders))


def test_extra_train_appends_other_splits_with_unique_image_ids(tmp_path):
  data = _config(tmp_path, name="oxford_iiit_pet", train_split="train", eval_split="test",
                 extra_train="oxford_iiit_pet:test")
  with _mock_pet():
    source, decode, info = builder.open_split(data, train=True)
    examples = [decode(source[i]) for i in range(len(source))]
    eval_source, _, _ = builder.open_split(data, train=False)
  assert len(source) == 6 and len(eval_source) == 3  # the evaluation split stays name's own
  assert [ex["image_id"] for ex in examples] == list(range(6))
  assert [tuple(ex["image"].shape[:2]) for ex in examples] == [(32, 48), (48, 32), (16, 16)] * 2
  assert info.class_names == ("pet",)
  with pytest.raises(IndexError):
    source[6]


def test_extra_train_checks_classes_and_entries(tmp_path):
  with pytest.raises(ValueError, match="'voc/2007' has other classes than 'oxford_iiit_pet'"):
    builder.open_split(_config(tmp_path, name="oxford_iiit_pet", extra_train="voc/2007:train"),
                       train=True)
  for bad, match in [("voc/2012", "'name:split'"), ("voc/2012:", "'name:split'"),
                     ("shapes:train", "not a TFDS dataset"), ("nope:train", "not a TFDS dataset")]:
    with pytest.raises(ValueError, match=match):
      builder._extra_train(_config(tmp_path, name="voc/2007", extra_train=bad))


def test_tfds_config_batches_follow_the_contract(tmp_path):
  data = _config(tmp_path, name="oxford_iiit_pet", train_split="train", eval_split="test",
                 max_boxes=2)
  data.eval_batch_size = 4
  with _mock_pet():
    batch = builder.make_split(data, train=False)[0]
  expected = {
      "image": ((4, 64, 64, 3), np.float32), "image_hw": ((4, 2), np.int32),
      "orig_hw": ((4, 2), np.int32), "scale": ((4,), np.float32), "image_id": ((4,), np.int32),
      "example_valid": ((4,), np.bool_), "boxes": ((4, 2, 4), np.float32),
      "labels": ((4, 2), np.int32), "box_valid": ((4, 2), np.bool_),
      "is_crowd": ((4, 2), np.bool_), "difficult": ((4, 2), np.bool_),
      "segmentation": ((4, 64, 64), np.int32), "num_dropped_boxes": ((4,), np.int32),
      "num_skipped_images": ((4,), np.int32),
  }
  assert set(batch) == set(expected)
  for key, (shape, dtype) in expected.items():
    assert batch[key].shape == shape and batch[key].dtype == dtype, key
  np.testing.assert_array_equal(batch["example_valid"], [True, True, True, False])
  np.testing.assert_array_equal(batch["orig_hw"][:3], [[32, 48], [48, 32], [16, 16]])
  np.testing.assert_allclose(batch["scale"][:3], [4 / 3, 4 / 3, 4])
  # Head box (1-based XML 5..12) -> [4, 4, 12, 12] continuous, times the scale.
  np.testing.assert_allclose(batch["boxes"][0, 0], np.array([4, 4, 12, 12]) * 4 / 3, rtol=1e-5)
  np.testing.assert_allclose(batch["boxes"][2, 0], np.array([4, 4, 12, 12]) * 4, rtol=1e-5)
  seg = batch["segmentation"][2]  # 16x16 -> 64x64: pet rows 16..48, border rows 48..56
  assert np.all(seg[16:48, 16:48] == 1) and np.all(seg[48:56, 16:48] == 255)
  assert np.all(seg[:16] == 0) and np.all(batch["segmentation"][3] == 255)


def _coco_config(tmp_path, **overrides):
  return _config(tmp_path, name="coco_json", train_annotations=str(FIX / "instances.json"),
                 train_images=str(FIX / "images"), annotations=str(FIX / "instances.json"),
                 images=str(FIX / "images"), keep_masks=True, mask_stride=4, max_boxes=3,
                 **overrides)


def test_coco_json_config_counts_skips_across_workers(tmp_path):
  data = _coco_config(tmp_path, worker_count=2)
  info = builder.dataset_info(data)
  assert info.class_names == ("circle", "square", "triangle") and info.category_ids == (3, 7, 11)
  # Evaluation, one pass with 2 workers: the corrupt image (id 20) is an invalid placeholder and
  # counted in the batch although a worker process decoded it; same batch as in process.
  (batch,) = list(builder.make_loader(data, train=False))
  (in_process,) = list(builder.make_loader(_coco_config(tmp_path), train=False))
  _equal(batch, in_process)
  np.testing.assert_array_equal(batch["image_id"][:4], [5, 9, 12, 20])
  np.testing.assert_array_equal(batch["example_valid"], [True, True, True, False, False, False])
  np.testing.assert_array_equal(batch["num_skipped_images"], [0, 0, 0, 1, 0, 0])
  assert batch["masks"].shape == (6, 3, 16, 16) and batch["masks"][0].any(axis=(1, 2)).all()
  assert batch["image"].shape == (6, 64, 64, 3)
  # Training (in process): 2 epochs of 4; the corrupt image is replaced, once per epoch.
  train = builder.make_split(_coco_config(tmp_path), train=True)
  batches = [train[0], train[1]]
  assert sum(int(b["num_skipped_images"].sum()) for b in batches) == 2
  assert not np.isin(np.concatenate([b["image_id"] for b in batches]), [20]).any()


def test_coco_json_config_errors(tmp_path):
  with pytest.raises(ValueError, match="config.data.train_annotations"):
    builder.dataset_info(_config(tmp_path, name="coco_json"))
  data = _coco_config(tmp_path, eval_annotations=str(tmp_path / "missing.json"))
  with pytest.raises(pipeline.DatasetNotFoundError, match="missing.json"):
    builder.make_split(data, train=False)


def test_identity_fast_path_changes_nothing(tiny_shapes_dir, monkeypatch):
  """transforms skip resampling at scale 1 and padding to the same size; outputs must not change."""
  from jaxvision.data import transforms as T

  source, _ = pipeline.shapes_source("tiny", str(tiny_shapes_dir))
  data = _config(tiny_shapes_dir, keep_masks=True, image_size=(128, 128))
  # A box sticking out of the image, and a degenerate one: clipped / dropped on both paths.
  ex = {"image": np.zeros((4, 6, 3), np.uint8), "labels": [1, 2],
        "boxes": np.array([[-1, 1, 7, 3], [2, 2, 2, 3]], np.float32)}

  def run(fast):
    monkeypatch.setattr(T, "_IDENTITY_FAST_PATH", fast)
    out = []
    for train in (True, False):
      transform = builder.make_transform(data, train=train)
      for i in range(4):
        out.append(transform(pipeline.decode_shapes(source[i]), np.random.default_rng([0, i])))
    out.append(T.pad_to_size(T.resize_keep_aspect(ex, target_hw=(4, 6)), (4, 6)))
    return out

  fast, slow = run(True), run(False)
  for a, b in zip(fast, slow):
    assert a.keys() == b.keys()
    for k in a:
      np.testing.assert_array_equal(a[k], b[k], err_msg=k)
      assert np.asarray(a[k]).dtype == np.asarray(b[k]).dtype, k
  np.testing.assert_array_equal(fast[-1]["boxes"], [[0, 1, 6, 3]])


def test_ssd_zoom_out_and_min_iou_crop_are_in_the_training_transform(tiny_shapes_dir):
  source, _ = pipeline.shapes_source("tiny", str(tiny_shapes_dir))
  plain = _config(tiny_shapes_dir, image_size=(128, 128), max_boxes=8)
  plain.augment.flip = False
  ssd = _config(tiny_shapes_dir, image_size=(128, 128), max_boxes=8)
  ssd.augment.flip = False
  ssd.augment.expand = 4.0
  ssd.augment.min_iou_crop = True
  areas = {"plain": [], "ssd": []}
  for name, data in (("plain", plain), ("ssd", ssd)):
    transform = builder.make_transform(data, train=True)
    for i in range(16):
      ex = transform(pipeline.decode_shapes(source[i]), np.random.default_rng([1, i]))
      assert ex["image"].shape == (128, 128, 3)
      b = ex["boxes"][ex["box_valid"]]
      assert np.all(b[:, :2] >= 0) and np.all(b[:, 2:] <= 128) and np.all(b[:, 2:] > b[:, :2])
      areas[name].extend((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]))
  # Zoom out shrinks objects (expanded canvases are resized back to 128 px) and zoom in enlarges
  # them: the box areas spread much more than without the two.
  spread = {k: float(np.std(np.log(v))) for k, v in areas.items()}
  print(spread)
  assert spread["ssd"] > 1.2 * spread["plain"]
  assert builder.make_transform(ssd, train=False)  # evaluation ignores them
  with pytest.raises(ValueError, match="augment.expand must be 0"):
    bad = _config(tiny_shapes_dir)
    bad.augment.expand = 0.5
    builder.make_transform(bad, train=True)


def test_shapes_proposals_join_the_batch(tiny_shapes_dir):
  from jaxvision.data import proposals  # noqa: PLC0415
  from jaxvision.ops import boxes as box_ops  # noqa: PLC0415

  train = builder.make_split(_config(tiny_shapes_dir, proposals="shapes", max_proposals=300),
                             train=True)[0]
  assert train["proposals"].shape == (4, 300, 4) and train["proposals_valid"].shape == (4, 300)
  assert train["proposals"].dtype == np.float32 and train["proposals_valid"].dtype == bool
  for props, valid, gt, gt_valid in zip(train["proposals"], train["proposals_valid"],
                                        train["boxes"], train["box_valid"]):
    props, gt = props[valid], gt[gt_valid]
    assert np.all((props >= 0) & (props <= 64)) and np.all(props[:, 2:] > props[:, :2])
    if len(gt):  # jittered copies of every gt box come first: each box has a proposal at IoU >= 0.5
      iou = np.asarray(box_ops.box_iou(gt, props))
      assert np.all(iou.max(axis=1) >= 0.5), iou.max(axis=1)
  # Evaluation: exactly the dense windows of the 64 x 64 input, never the ground truth.
  val = builder.make_split(_config(tiny_shapes_dir, proposals="shapes", max_proposals=300),
                           train=False)[0]
  windows = proposals.sliding_windows((64, 64))
  for props, valid in zip(val["proposals"], val["proposals_valid"]):
    np.testing.assert_array_equal(props[valid], windows[:300])
  # Without the key there are no proposals; a bad value names the key.
  assert "proposals" not in builder.make_split(_config(tiny_shapes_dir), train=True)[0]
  with pytest.raises(ValueError, match="config.data.proposals"):
    builder.make_transform(_config(tiny_shapes_dir, proposals="edge_boxes"), train=True)


def test_selective_search_proposals_join_the_batch(tiny_shapes_dir):
  """config.data.proposals="selective_search": static [B, P, 4] proposals inside the real image
  (64 x 64 inside a 64 x 80 input), truncated best-first or zero-padded with valid=False."""
  pytest.importorskip("skimage")
  from jaxvision.data import selective_search  # noqa: PLC0415

  def iou(a, b):  # NumPy, [N, 4] x [M, 4]
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=-1)
    area = lambda x: np.prod(x[:, 2:] - x[:, :2], axis=-1)  # noqa: E731
    return inter / (area(a)[:, None] + area(b)[None] - inter)

  config = _config(tiny_shapes_dir, proposals="selective_search", max_proposals=400,
                   image_size=(64, 80), batch_size=2)
  batch = builder.make_split(config, train=True)[0]
  props, valid = batch["proposals"], batch["proposals_valid"]
  assert props.shape == (2, 400, 4) and valid.shape == (2, 400)
  assert props.dtype == np.float32 and valid.dtype == bool
  np.testing.assert_array_equal(batch["image_hw"], [[64, 64]] * 2)
  for p, v, gt, gt_valid in zip(props, valid, batch["boxes"], batch["box_valid"]):
    n = int(v.sum())
    assert 10 < n < 400 and v[:n].all() and not v[n:].any()  # valid first, then padding
    assert np.all(p[n:] == 0)
    p = p[:n]
    assert np.all(p >= 0) and np.all(p[:, 2] <= 64) and np.all(p[:, 3] <= 64)  # not the padding
    assert np.all(p[:, 2:] - p[:, :2] >= 4.0)  # min_box_size
    assert len(np.unique(p, axis=0)) == n
    gt = gt[gt_valid]
    if len(gt):  # selective search finds the shapes (never given the ground truth)
      assert np.all(iou(gt, p).max(axis=1) >= 0.5)
  # The transform on one example equals selective_search on the real image, truncated.
  source, decode, _ = builder.open_split(config, train=False)
  example = decode(source[0])
  few = builder.make_transform(
      _config(tiny_shapes_dir, proposals="selective_search", max_proposals=5, image_size=(64, 80)),
      train=False)(example, np.random.default_rng(3))
  assert few["proposals"].shape == (5, 4) and few["proposals_valid"].all()
  full = selective_search.selective_search(few["image"][:64, :64], np.random.default_rng(3))
  np.testing.assert_array_equal(few["proposals"], full[:5])
