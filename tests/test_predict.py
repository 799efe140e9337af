"""Predictor and predict mode: raw images of any size in, results in original coordinates out."""

import json
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _config(data_dir):
  if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
  from configs import unet_shapes

  c = unet_shapes.get_config("smoke")
  c.data.data_dir = data_dir
  return c


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  from jaxvision.train import loop

  tmp = tmp_path_factory.mktemp("predict")
  config = _config(str(tmp / "tfds"))
  loop.train_and_evaluate(config, str(tmp / "run"))
  return config, str(tmp / "run")


@pytest.mark.slow
def test_predictor_matches_the_eval_pipeline_and_maps_back(trained):
  from jaxvision.data import pipeline
  from jaxvision.predict import Predictor
  from jaxvision.train import loop

  config, workdir = trained
  predictor = Predictor.from_workdir(workdir, batch_size=2)
  # A shapes image predicted by the Predictor equals the family's prediction on the eval batch.
  source, _ = pipeline.shapes_source("tiny", config.data.data_dir)
  raw = pipeline.decode_shapes(source[0])["image"]
  out = predictor([raw])[0]
  assert out["segmentation"].shape == raw.shape[:2] and out["segmentation"].dtype == np.int32
  batch = loop.example_batch(config, 1)
  batch.update({k: v[None] for k, v in predictor.preprocess(raw).items()})
  _, family = loop.build_family(config)
  direct = np.asarray(jax.jit(family.predict)(loop.load_variables(config, workdir), batch)
                      ["segmentation"][0])
  np.testing.assert_array_equal(out["segmentation"], direct)  # 128 px in, 128 px out
  # Any size and aspect: a 3-image call with a padded last batch, each back at its own size.
  rng = np.random.default_rng(0)
  images = [rng.integers(0, 255, (h, w, 3), dtype=np.uint8) for h, w in ((60, 200), (300, 90),
                                                                         (128, 128))]
  outs = predictor(images)
  assert [o["segmentation"].shape for o in outs] == [(60, 200), (300, 90), (128, 128)]
  with pytest.raises(ValueError, match=r"image must be \[H, W, 3\]"):
    predictor([np.zeros((4, 4, 3, 2))])


@pytest.mark.slow
def test_predict_mode_writes_overlays_and_json(trained, tmp_path):
  config, workdir = trained
  images = tmp_path / "images"
  images.mkdir()
  rng = np.random.default_rng(1)
  Image.fromarray(rng.integers(0, 255, (90, 140, 3), dtype=np.uint8)).save(images / "a.png")
  Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(images / "b.jpg")
  (images / "broken.png").write_bytes(b"not an image")
  out = tmp_path / "out"
  proc = subprocess.run(
      [sys.executable, str(ROOT / "train.py"), "--config", str(ROOT / "configs/unet_shapes.py:smoke"),
       "--workdir", workdir, "--mode", "predict", "--input", str(images), "--output", str(out),
       f"--config.data.data_dir={config.data.data_dir}"],
      capture_output=True, text=True, cwd=ROOT, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  summary = json.loads(proc.stdout.strip().splitlines()[-1])
  assert summary["images"] == 2 and len(summary["skipped"]) == 1 and "broken.png" in summary["skipped"][0]
  assert Image.open(out / "a.png").size == (140, 90)
  record = json.loads((out / "a.json").read_text())
  assert record["height"] == 90 and sum(record["pixels_per_class"].values()) == 90 * 140
