"""Tests of the built-in shapes dataset: generator determinism and consistency, class statistics,
and the TFDS round trip (prepare into a tmp dir, read with ``tfds.data_source``, no TensorFlow)."""

from __future__ import annotations

import hashlib
import os
import pathlib
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import tensorflow_datasets as tfds

from jaxvision.data import shapes
from jaxvision.data import shapes_gen
from jaxvision.data.shapes_gen import SPEC_V1, example_seed, generate_example

K = len(shapes.SHAPES_CLASSES)
KEYS = ("image", "segmentation", "masks", "boxes", "labels", "is_crowd")


def _split(split: str, n: int | None = None) -> list[dict]:
  n = shapes.SHAPES_SPLITS[split] if n is None else n
  return [generate_example(example_seed(split, i)) for i in range(n)]


@pytest.fixture(scope="module")
def validation():
  return _split("validation")


def _digest(examples) -> str:
  h = hashlib.sha256()
  for ex in examples:
    for k in KEYS:
      a = np.ascontiguousarray(ex[k])
      h.update(f"{k}{a.dtype}{a.shape}".encode())
      h.update(a.tobytes())
  return h.hexdigest()


# ------------------------------------------------------------------------------------------------
# Generator
# ------------------------------------------------------------------------------------------------


def test_same_seed_same_example_and_different_seeds_differ():
  a, b = generate_example(123), generate_example(123)
  for k in KEYS:
    assert a[k].dtype == b[k].dtype
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)
  c = generate_example(124)
  assert not np.array_equal(a["image"], c["image"])
  # Per-split seeds: stable integers, distinct across splits and indices.
  assert example_seed("train", 0) == 2566094413410237671
  seeds = {example_seed(s, i) for s in shapes.SHAPES_SPLITS for i in range(50)}
  assert len(seeds) == 50 * len(shapes.SHAPES_SPLITS)


def test_v1_spec_is_frozen():
  """Any change to what v1.0.0 generates must come with a new dataset version (and digest)."""
  assert SPEC_V1.image_size == (128, 128)
  assert shapes.SHAPES_CLASSES == ("circle", "square", "triangle", "star", "cross")
  assert str(shapes.Shapes.VERSION) == "1.0.0"
  assert _digest(_split("tiny")) == (
      "25cf36901ca15168b5f48187079e143f8d3c76d69f82cf5c50c84af799e3a5b3")


@pytest.mark.parametrize("name", shapes.SHAPES_CLASSES)
def test_outline_areas_match_geometry(name):
  r, a, q = 20.0, SPEC_V1.cross_arm_ratio, SPEC_V1.star_inner_ratio
  half = r / np.hypot(1.0, a)
  expected = {
      "circle": np.pi * r * r,
      "square": 2 * r * r,
      "triangle": 3 * np.sqrt(3) / 4 * r * r,
      "star": 5 * q * r * r * np.sin(np.deg2rad(36)),
      "cross": (8 * a - 4 * a * a) * half * half,
  }[name]
  label = shapes.SHAPES_CLASSES.index(name) + 1
  # pylint: disable-next=protected-access
  shape = shapes_gen._rasterize(label, 64.0, 64.0, r, 0.3, SPEC_V1)
  assert shape.coverage.sum() == pytest.approx(expected, rel=0.01)
  assert shape.mask.sum() == pytest.approx(expected, rel=0.05)


def _check_example(ex, spec=SPEC_V1):
  h, w = spec.image_size
  n = len(ex["labels"])
  assert ex["image"].shape == (h, w, 3) and ex["image"].dtype == np.uint8
  assert ex["segmentation"].shape == (h, w) and ex["segmentation"].dtype == np.uint8
  assert ex["masks"].shape == (n, h, w) and ex["masks"].dtype == np.uint8
  assert ex["boxes"].shape == (n, 4) and ex["boxes"].dtype == np.float32
  assert ex["labels"].dtype == np.int64 and ex["is_crowd"].dtype == np.bool_
  assert 1 <= n <= spec.num_instances[1]
  assert np.all((ex["labels"] >= 1) & (ex["labels"] <= K))
  assert not ex["is_crowd"].any()
  masks = ex["masks"].astype(bool)
  assert set(np.unique(ex["masks"])) <= {0, 1}
  areas = masks.sum(axis=(1, 2))
  assert np.all(areas >= spec.min_visible_area), areas
  assert masks.sum(axis=0).max() <= 1, "masks overlap"
  for mask, box in zip(masks, ex["boxes"]):
    rows, cols = np.nonzero(mask)
    np.testing.assert_array_equal(box, [cols.min(), rows.min(), cols.max() + 1, rows.max() + 1])
  # The semantic map is the label of the (only, hence top-most) visible instance, 0 elsewhere.
  expected = (masks * ex["labels"][:, None, None]).sum(axis=0)
  np.testing.assert_array_equal(ex["segmentation"], expected)


def test_annotations_are_consistent(validation):
  for ex in _split("tiny") + validation[:100]:
    _check_example(ex)


def test_class_statistics(validation):
  tiny_labels = np.concatenate([ex["labels"] for ex in _split("tiny")])
  assert set(tiny_labels) == set(range(1, K + 1)), "every class appears in the tiny split"

  labels = np.concatenate([ex["labels"] for ex in validation])
  counts = np.bincount(labels, minlength=K + 1)[1:]
  assert counts.min() > 0.7 * counts.mean(), counts  # roughly balanced
  num = np.array([len(ex["labels"]) for ex in validation])
  assert num.min() == 1 and num.max() == SPEC_V1.num_instances[1]

  # Occlusion happens: some images have two instances whose boxes intersect.
  def overlaps(boxes):
    lo = np.maximum(boxes[:, None, :2], boxes[None, :, :2])
    hi = np.minimum(boxes[:, None, 2:], boxes[None, :, 2:])
    inter = np.all(hi > lo, axis=-1)
    return inter[~np.eye(len(boxes), dtype=bool)].any()

  assert np.mean([overlaps(ex["boxes"]) for ex in validation]) > 0.1

  # Colour does not give the class: class-mean colours are close to the overall mean, and a
  # nearest-class-mean classifier on an instance's mean colour is near chance (1/K).
  colours = np.concatenate([
      np.stack([ex["image"][m.astype(bool)].mean(axis=0) for m in ex["masks"]])
      for ex in validation
  ])
  overall = colours.mean(axis=0)
  for c in range(1, K + 1):
    assert np.abs(colours[labels == c].mean(axis=0) - overall).max() < 20, c
  half = len(labels) // 2
  means = np.stack([colours[:half][labels[:half] == c].mean(axis=0) for c in range(1, K + 1)])
  pred = np.argmin(((colours[half:, None] - means[None])**2).sum(-1), axis=1) + 1
  assert np.mean(pred == labels[half:]) < 0.32


def test_bad_arguments():
  with pytest.raises(ValueError, match="seed"):
    generate_example(-1)
  with pytest.raises(ValueError, match="splits"):
    shapes.prepare_shapes("/nonexistent", splits=["training"])
  with pytest.raises(ValueError, match="classes"):
    shapes_gen.ShapesSpec(classes=("circle", "blob"))


# ------------------------------------------------------------------------------------------------
# TFDS builder
# ------------------------------------------------------------------------------------------------


def test_builder_is_registered_under_its_own_name():
  assert tfds.builder_cls(shapes.SHAPES_NAME) is shapes.Shapes


def test_prepare_tiny_and_read_back(tmp_path):
  builder = shapes.prepare_shapes(tmp_path, splits="tiny")
  assert set(builder.info.splits) == {"tiny"}
  assert builder.info.metadata["class_names"] == list(shapes.SHAPES_CLASSES)
  assert builder.info.file_format.value == "array_record"
  source = tfds.data_source(shapes.SHAPES_NAME, split="tiny", data_dir=tmp_path, download=False)
  assert len(source) == 16
  for i in range(len(source)):
    got, ref = source[i], generate_example(example_seed("tiny", i))
    assert got["image_id"] == i  # shuffling disabled: record i is example i
    for k in KEYS:
      assert got[k].dtype == ref[k].dtype, k
      np.testing.assert_array_equal(got[k], ref[k], err_msg=k)
  with pytest.raises(Exception, match="train"):
    builder.as_data_source("train")


def test_prepare_twice_is_a_noop(tmp_path, monkeypatch):
  shapes.prepare_shapes(tmp_path, splits=["tiny"])
  files = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()}

  def fail(*args, **kwargs):
    raise AssertionError("regenerated")

  monkeypatch.setattr(shapes.Shapes, "_generate_examples", fail)
  start = time.perf_counter()
  builder = shapes.prepare_shapes(tmp_path, splits=["tiny"])
  assert time.perf_counter() - start < 1.0
  assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()} == files
  assert builder.info.splits["tiny"].num_examples == 16


def test_missing_split_is_added_and_env_var_is_the_default_dir(tmp_path, monkeypatch):
  monkeypatch.setitem(shapes.SHAPES_SPLITS, "test", 5)  # keep it fast
  monkeypatch.setenv(shapes.DATA_DIR_ENV, str(tmp_path))
  assert shapes.default_data_dir() == str(tmp_path)
  shapes.prepare_shapes(splits=["tiny"])
  builder = shapes.prepare_shapes(splits=["test"])
  assert {k: v.num_examples for k, v in builder.info.splits.items()} == {"tiny": 16, "test": 5}
  source = tfds.data_source(shapes.SHAPES_NAME, split="test", data_dir=tmp_path, download=False)
  np.testing.assert_array_equal(source[4]["image"],
                                generate_example(example_seed("test", 4))["image"])


def test_tfds_data_source_alone_prepares_offline(tmp_path, monkeypatch):
  """``tfds.data_source(name)`` on a fresh dir prepares every split through our offline config."""
  for split, n in {"train": 3, "validation": 2, "test": 2, "tiny": 1}.items():
    monkeypatch.setitem(shapes.SHAPES_SPLITS, split, n)
  source = tfds.data_source(shapes.SHAPES_NAME, split="validation", data_dir=tmp_path)
  assert len(source) == 2
  np.testing.assert_array_equal(source[1]["masks"],
                                generate_example(example_seed("validation", 1))["masks"])
  assert shapes.prepare_shapes(tmp_path).info.splits["train"].num_examples == 3


def test_prepare_and_read_without_tensorflow(tmp_path):
  """Runs in a fresh interpreter where ``import tensorflow`` fails, even if TF is installed."""
  code = textwrap.dedent(f"""
      import sys

      class HideTensorFlow:  # wraps every finder: TensorFlow looks not installed
        def __init__(self, inner):
          self.inner = inner

        def find_spec(self, name, path=None, target=None):
          if name == "tensorflow" or name.startswith("tensorflow."):
            return None
          return self.inner.find_spec(name, path, target)

        def __getattr__(self, attr):
          return getattr(self.inner, attr)

      sys.meta_path[:] = [HideTensorFlow(f) for f in sys.meta_path]
      import importlib.util
      assert importlib.util.find_spec("tensorflow") is None
      import numpy as np, tensorflow_datasets as tfds
      from jaxvision.data import shapes
      shapes.prepare_shapes({str(tmp_path)!r}, splits="tiny")
      ds = tfds.data_source("jaxvision_shapes", split="tiny", data_dir={str(tmp_path)!r})
      ref = shapes.generate_example(shapes.example_seed("tiny", 7))
      assert all(np.array_equal(ds[7][k], ref[k]) for k in ref)
      assert "tensorflow" not in sys.modules
      print("OK")
  """)
  root = str(pathlib.Path(__file__).resolve().parents[2])
  env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
  result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          timeout=120, check=False)
  assert result.returncode == 0 and "OK" in result.stdout, result.stderr[-3000:]
