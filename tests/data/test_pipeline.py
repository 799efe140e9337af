"""The grain pipeline: batch contract, determinism, exact resume, sharding, eval padding."""

import functools

import numpy as np
import pytest

from jaxvision.data import pipeline, transforms


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  return pipeline.shapes_source("tiny", data_dir=str(tmp_path_factory.mktemp("tfds")))


def _transform(max_boxes=8):
  return transforms.compose(
      transforms.random_horizontal_flip,
      transforms.normalize_image,
      functools.partial(transforms.pad_instances, max_boxes=max_boxes, mask_stride=4),
  )


def _equal(a, b):
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_batches_follow_the_contract(tiny):
  source, info = tiny
  assert info.num_classes == 5 and info.num_seg_classes == 6
  ds = pipeline.make_dataset(source, batch_size=4, decode=pipeline.decode_shapes,
                             transform=_transform(), train=True, seed=1)
  batch = ds[0]
  expected = {
      "image": ((4, 128, 128, 3), np.float32), "image_hw": ((4, 2), np.int32),
      "orig_hw": ((4, 2), np.int32), "scale": ((4,), np.float32), "image_id": ((4,), np.int32),
      "example_valid": ((4,), np.bool_), "boxes": ((4, 8, 4), np.float32),
      "labels": ((4, 8), np.int32), "box_valid": ((4, 8), np.bool_), "is_crowd": ((4, 8), np.bool_),
      "difficult": ((4, 8), np.bool_), "masks": ((4, 8, 32, 32), np.bool_),
      "segmentation": ((4, 128, 128), np.int32), "num_dropped_boxes": ((4,), np.int32),
  }
  assert set(batch) == set(expected)
  for key, (shape, dtype) in expected.items():
    assert batch[key].shape == shape and batch[key].dtype == dtype, (key, batch[key].shape, batch[key].dtype)
  # Labels of valid boxes are 1..K, padding is 0; every example has at least one shape.
  assert np.all(batch["labels"][batch["box_valid"]] >= 1)
  assert np.all(batch["labels"][~batch["box_valid"]] == 0)
  assert np.all(batch["box_valid"].sum(1) >= 1)


def test_deterministic_and_resumable(tiny):
  source, _ = tiny
  make = functools.partial(pipeline.make_dataset, source, batch_size=4, decode=pipeline.decode_shapes,
                           transform=_transform(), train=True, seed=3)
  first = [make()[i] for i in range(6)]  # 6 batches of 4 = 1.5 epochs of the 16-example split
  again = make()
  for i in range(6):
    _equal(first[i], again[i])
  resumed = make(start_step=4)
  _equal(first[4], resumed[0])
  _equal(first[5], resumed[1])
  # Each epoch is a permutation of the split, and the second epoch's order differs from the first.
  epoch1 = np.concatenate([b["image_id"] for b in first[:4]])
  epoch2 = np.concatenate([b["image_id"] for b in first[4:]] + [make()[i]["image_id"] for i in (6, 7)])
  assert sorted(epoch1) == list(range(16)) and sorted(epoch2) == list(range(16))
  assert not np.array_equal(epoch1, epoch2)
  # Another seed gives another order.
  other = pipeline.make_dataset(source, batch_size=4, decode=pipeline.decode_shapes,
                                transform=_transform(), train=True, seed=4)
  assert not np.array_equal(np.concatenate([other[i]["image_id"] for i in range(4)]), epoch1)


def test_hosts_read_disjoint_shards(tiny):
  source, _ = tiny
  ids = []
  for host in range(2):
    ds = pipeline.make_dataset(source, batch_size=4, decode=pipeline.decode_shapes, train=False,
                               transform=_transform(), shard_index=host, shard_count=2)
    ids.append(np.concatenate([b["image_id"][b["example_valid"]] for b in ds]))
  assert set(ids[0]).isdisjoint(ids[1]) and sorted(np.concatenate(ids)) == list(range(16))


def test_eval_pads_the_last_batch(tiny):
  source, _ = tiny
  ds = pipeline.make_dataset(source, batch_size=6, decode=pipeline.decode_shapes,
                             transform=_transform(), train=False)
  batches = list(ds)
  assert len(batches) == 3  # 16 = 6 + 6 + 4 real examples
  last = batches[-1]
  np.testing.assert_array_equal(last["example_valid"], [True] * 4 + [False] * 2)
  assert np.all(last["segmentation"][4:] == 255) and not last["box_valid"][4:].any()
  np.testing.assert_array_equal(np.concatenate([b["image_id"][b["example_valid"]] for b in batches]),
                                np.arange(16))


def test_bad_arguments(tiny):
  source, _ = tiny
  with pytest.raises(ValueError, match="batch_size"):
    pipeline.make_dataset(source, batch_size=0, train=True)
  with pytest.raises(ValueError, match="shard_index"):
    pipeline.make_dataset(source, batch_size=2, train=True, shard_index=2, shard_count=2)
  with pytest.raises(ValueError, match="fewer than batch_size"):
    pipeline.make_dataset(source, batch_size=32, train=True)


def test_median_frequency_weights(tiny):
  from jaxvision.data import builder

  source, info = tiny
  w = builder.median_frequency_weights(source, info.num_seg_classes)
  # Reference: the definition, written out over the decoded label maps.
  segs = [pipeline.decode_shapes(source[i])["segmentation"] for i in range(len(source))]
  freq = []
  for c in range(info.num_seg_classes):
    with_c = [s for s in segs if (s == c).any()]
    freq.append(sum((s == c).sum() for s in with_c) / sum(s.size for s in with_c))
  np.testing.assert_allclose(w, np.median(freq) / np.array(freq), rtol=1e-12)
  assert w[0] < 0.2 < w[1:].min()  # background dominates the pixels, so it weighs least
