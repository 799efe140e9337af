"""HOG + linear SVM: the window descriptor layout against skimage on crops, window boxes, the SVM on
a separable case, detection shapes."""

import numpy as np
import pytest

pytest.importorskip("skimage")

from skimage.feature import hog  # noqa: E402

from jaxvision.models.detection import hog_svm as hs  # noqa: E402

CFG = hs.HogSvmConfig(window=32, cell=8, block=2, orientations=9, scales=(1.0,), steps=200)


def test_window_features_are_the_block_subgrid_hand_worked():
  blocks = np.arange(5 * 6 * 2 * 2 * 3, dtype=np.float32).reshape(5, 6, 2, 2, 3)
  f = hs.window_features(blocks, 3)
  assert f.shape == (3, 4, 3 * 3 * 2 * 2 * 3)
  for y in range(3):
    for x in range(4):
      np.testing.assert_array_equal(f[y, x], blocks[y:y + 3, x:x + 3].ravel())
  assert hs.window_features(blocks, 6).shape[:2] == (0, 1)


def test_window_descriptor_equals_skimage_hog_of_the_crop():
  # Where the gradient at the crop's border pixels is the same in the crop and in the whole image
  # (skimage zeroes it at an image's outer pixels): make the image constant on the two pixel
  # rows/columns either side of each window edge.
  rng = np.random.default_rng(0)
  img = rng.uniform(0, 1, (64, 80, 3))
  y0, x0 = 16, 24  # cell (2, 3)
  for e in (y0, y0 + 31):
    img[e - 1:e + 2, :] = 0.5
  for e in (x0, x0 + 31):
    img[:, e - 1:e + 2] = 0.5
  feats, boxes = hs.image_windows(img, CFG)
  nx = (80 // 8 - 2 + 1) - 3 + 1  # windows per row: 9 blocks - 3 + 1 = 7 (rows: 7 - 3 + 1)
  i = (y0 // 8) * nx + x0 // 8
  np.testing.assert_array_equal(boxes[i], [x0, y0, x0 + 32, y0 + 32])
  crop = img[y0:y0 + 32, x0:x0 + 32]
  ref = hog(crop, orientations=9, pixels_per_cell=(8, 8), cells_per_block=(2, 2),
            block_norm="L2-Hys", channel_axis=-1)
  assert feats.shape == (5 * 7, CFG.feature_dim) and ref.shape == (CFG.feature_dim,)
  np.testing.assert_allclose(feats[i], ref, rtol=1e-5, atol=1e-6)


def test_window_boxes_at_scales_map_back_to_original_pixels():
  cfg = hs.HogSvmConfig(window=16, cell=8, block=2, scales=(1.0, 0.5))
  feats, boxes = hs.image_windows(np.zeros((48, 64, 3)), cfg)
  # Scale 1: 48x64 -> 6x8 cells, 5x7 blocks, windows of 1 block: 5x7 (stride 8, side 16).
  # Scale 0.5: 24x32 -> 3x4 cells, 2x3 blocks: 2x3 windows, side 16 / 0.5 = 32, stride 16.
  assert len(boxes) == 35 + 6 and feats.shape == (41, cfg.feature_dim)
  np.testing.assert_allclose(boxes[:2], [[0, 0, 16, 16], [8, 0, 24, 16]])
  np.testing.assert_allclose(boxes[35:37], [[0, 0, 32, 32], [16, 0, 48, 32]])
  np.testing.assert_allclose(boxes[-1], [32, 16, 64, 48])


def test_svm_separates_a_separable_case():
  rng = np.random.default_rng(0)
  centres = np.asarray([[0, 0], [4, 0], [0, 4]], np.float32)  # background, class 1, class 2
  cls = rng.integers(0, 3, 300)
  x = centres[cls] + rng.uniform(-1, 1, (300, 2)).astype(np.float32)
  y = np.where(cls[:, None] == np.arange(1, 3)[None], 1, -1).astype(np.int8)
  w, b, values = hs.fit_svm(x, y, hs.HogSvmConfig(steps=400, learning_rate=0.05, l2=1e-4))
  s = x @ w + b
  assert values[-1] < 0.1 * values[0]
  np.testing.assert_array_equal(s > 0, y > 0)  # every point on its side of both hyperplanes
  # The margin constraints hold on (nearly) every point: hinge close to zero.
  assert np.mean(np.minimum(s * y, 1.0)) > 0.95


def test_train_and_detect_a_bright_square():
  # Tiny end-to-end run: a filled white square (class 1) or a square of vertical stripes (class 2)
  # on noise, 32 px at a position on the 8 px window grid.
  rng = np.random.default_rng(0)
  imgs, boxes, labels = [], [], []
  for i in range(8):
    img = rng.uniform(0, 0.2, (64, 64, 3))
    x, y = 8 * rng.integers(0, 5, 2)
    img[y:y + 32, x:x + 32] = 1.0
    if i % 2:
      img[y:y + 32, x + 2:x + 32:4] = 0.1
      img[y:y + 32, x + 3:x + 32:4] = 0.1
    boxes.append(np.asarray([[x, y, x + 32, y + 32]], np.float32))
    labels.append(np.asarray([1 + i % 2]))
    imgs.append(img)
  model = hs.train_hog_svm(imgs[:6], boxes[:6], labels[:6], 2, CFG)
  det = hs.detect(model, imgs[6])
  assert det["boxes"].shape == (CFG.detections_per_image, 4) and det["valid"].shape == (50,)
  best = int(np.argmax(np.where(det["valid"], det["scores"], -np.inf)))
  assert det["labels"][best] == 1
  assert hs._iou(det["boxes"][best:best + 1], boxes[6])[0, 0] >= 0.5
  assert hs.evaluate(model, imgs[6:], boxes[6:], labels[6:])["mAP"] > 0.5


def test_bad_input_raises():
  with pytest.raises(ValueError, match="multiple of cell"):
    hs.HogSvmConfig(window=30)
  with pytest.raises(ValueError, match="image must be"):
    hs.hog_blocks(np.zeros((8, 8, 4)), CFG)
  with pytest.raises(ValueError, match="no 32 x 32 window"):
    hs.image_windows(np.zeros((16, 16, 3)), CFG)
  with pytest.raises(ValueError, match="equal length"):
    hs.train_hog_svm([np.zeros((32, 32, 3))], [], [], 2, CFG)
