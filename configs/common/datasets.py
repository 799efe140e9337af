"""Data blocks of the real (TFDS) segmentation datasets, shared by their configs.

Each sets ``config.data`` for one dataset (name, splits, size, augmentation); the dataset must be
prepared first (``python -c "import tensorflow_datasets as tfds; tfds.builder('<name>').
download_and_prepare(...)"`` or ``tfds build <name> --file_format=array_record``; a missing one
stops with the exact command, see ``jaxvision.data.tfds_sources``).
"""

import ml_collections


def _segmentation_splits(c: ml_collections.ConfigDict, train_split: str, eval_split: str,
                         image_size: tuple[int, int]) -> ml_collections.ConfigDict:
  """Splits, size and the segmentation configs' augmentation (flips, scale jitter 0.5-2)."""
  c.data.train_split = train_split
  c.data.eval_split = eval_split
  c.data.image_size = image_size
  c.data.augment.flip = True
  c.data.augment.scale_jitter = (0.5, 2.0)
  return c


def oxford_iiit_pet(c: ml_collections.ConfigDict, size: int) -> ml_collections.ConfigDict:
  """Oxford-IIIT Pet as 2 classes (background, pet; the trimap's border pixels are ignored):
  3680 trainval images for training, the 3669 test images for evaluation."""
  c.data.name = "oxford_iiit_pet"
  c.data.pet_labels = "pet"
  return _segmentation_splits(c, "train", "test", (size, size))


def scene_parse150(c: ml_collections.ConfigDict, size: int) -> ml_collections.ConfigDict:
  """TFDS ``scene_parse150``: the 100 object categories of the Places Challenge 2017 instance
  annotations plus class 0 "other" (stuff and unlabelled; see ``jaxvision.data.tfds_sources``),
  its train split (20210 images) and its test split (2000, ADE20K's validation images)."""
  c.data.name = "scene_parse150"
  c.data.scene_parse_other = "background"
  return _segmentation_splits(c, "train", "test", (size, size))


def cityscapes(c: ml_collections.ConfigDict, height: int) -> ml_collections.ConfigDict:
  """Cityscapes fine annotations, 19 train ids (no background class; other pixels ignored), 2975
  train and 500 validation images (manual download, see ``jaxvision.data.tfds_sources``), resized
  to ``height x 2 height`` (the 1024 x 2048 images keep their aspect)."""
  c.data.name = "cityscapes"
  return _segmentation_splits(c, "train", "validation", (height, 2 * height))


def voc0712(c: ml_collections.ConfigDict, image_size, batch_size: int) -> ml_collections.ConfigDict:
  """PASCAL VOC "07+12" detection: VOC 2007 trainval + VOC 2012 trainval (``data.extra_train``,
  16551 images) for training, VOC 2007 test for evaluation; flips, up to 48 boxes an image."""
  c.task = "detection"
  c.data.name = "voc/2007"
  c.data.train_split = "train+validation"
  c.data.extra_train = "voc/2012:train+validation"
  c.data.eval_split = "test"
  c.data.image_size = tuple(image_size)
  c.data.batch_size = batch_size
  c.data.eval_batch_size = batch_size
  c.data.max_boxes = 48
  c.data.augment.flip = True
  return c


def coco2017(c: ml_collections.ConfigDict, batch_size: int = 16) -> ml_collections.ConfigDict:
  """TFDS COCO 2017 detection: train / validation, images fitted into 800 x 1344 (the papers'
  shorter side 800, longer at most 1333) and padded, flips, up to 100 boxes an image."""
  c.task = "detection"
  c.data.name = "coco/2017"
  c.data.train_split = "train"
  c.data.eval_split = "validation"
  c.data.image_size = (800, 1344)
  c.data.batch_size = batch_size
  c.data.eval_batch_size = batch_size
  c.data.max_boxes = 100
  c.data.augment.flip = True
  return c
