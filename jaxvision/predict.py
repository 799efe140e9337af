"""``Predictor``: a trained family applied to raw images of any size, results in original coordinates.

Example::

  from jaxvision.predict import Predictor

  predictor = Predictor.from_workdir("runs/unet")            # config.json + latest checkpoint
  results = predictor([image_a, image_b])                      # HxWx3 uint8 arrays, any sizes
  results[0]["segmentation"]                                   # [H, W] int32 class ids
  # detection families: results[i]["boxes"] [n, 4] xyxy, "scores" [n], "labels" [n] (1..K),
  # "class_names" [n]; instance segmentation adds "masks" [n, H, W] bool.

Images are prepared exactly like evaluation images (``jaxvision.data.builder.make_transform`` with
``train=False``: resize keeping the aspect ratio to fit ``config.data.image_size``, pad, normalize),
run through ``family.predict`` in one jitted function with a fixed batch size (the last batch is
padded), and mapped back: boxes divided by the resize factor and clipped to the image; label maps
and masks cropped to the real (unpadded) region and resized to the original size (nearest).

``predict_folder`` runs it over a folder of images and writes, per image, an overlay PNG and a JSON
file (``train.py --mode predict``).
"""

from __future__ import annotations

import json
import os
from typing import Any, Mapping, Sequence

import jax
import numpy as np

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")


def _nearest_resize(x: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
  """Nearest-neighbour resize of the two trailing (spatial) axes of ``[..., h, w]``."""
  h, w = x.shape[-2:]
  ys = np.clip(np.floor((np.arange(out_hw[0]) + 0.5) * h / out_hw[0]).astype(np.int64), 0, h - 1)
  xs = np.clip(np.floor((np.arange(out_hw[1]) + 0.5) * w / out_hw[1]).astype(np.int64), 0, w - 1)
  return x[..., ys, :][..., xs]


class Predictor:
  """Runs ``family.predict`` on raw images; see the module docstring.

  Args:
    config: the experiment's ``ml_collections.ConfigDict`` (``config.data`` decides preprocessing).
    variables: ``{"params": ..., "batch_stats": ...}`` of the trained model.
    batch_size: images per jitted call (fixed; the last call is padded).
    score_threshold: detection results keep scores at or above this.
  """

  def __init__(self, config, variables: Mapping[str, Any], *, batch_size: int = 1,
               score_threshold: float = 0.0):
    from jaxvision.data import builder  # noqa: PLC0415
    from jaxvision.train import loop  # noqa: PLC0415

    if batch_size < 1:
      raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    self.config = config
    self.info, self.family = loop.build_family(config)
    self.variables = jax.device_put(variables)
    self.batch_size = int(batch_size)
    self.score_threshold = float(score_threshold)
    self._transform = builder.make_transform(config.data, train=False)
    self._template = loop.example_batch(config, 1)
    self._predict = jax.jit(self.family.predict)

  @classmethod
  def from_workdir(cls, workdir: str, config=None, *, which: str = "latest", **kwargs) -> "Predictor":
    """A predictor from a training run's directory (its ``config.json`` and a checkpoint)."""
    from jaxvision.train import loop  # noqa: PLC0415

    if config is None:
      config = load_config_json(os.path.join(workdir, "config.json"))
    variables = loop.load_variables(config, workdir, which=which)
    return cls(config, variables, **kwargs)

  @property
  def task(self) -> str:
    return self.family.task

  def preprocess(self, image: np.ndarray) -> dict[str, np.ndarray]:
    """One raw ``[H, W, 3]`` image -> one example of the batch contract (no leading axis)."""
    from jaxvision.data import pipeline  # noqa: PLC0415

    image = np.asarray(image)
    if image.ndim == 2:
      image = np.repeat(image[..., None], 3, axis=-1)
    if image.ndim != 3 or image.shape[-1] not in (3, 4):
      raise ValueError(f"image must be [H, W, 3] (or [H, W] grey, [H, W, 4] RGBA), got shape "
                       f"{image.shape}.")
    image = image[..., :3]
    example = pipeline.finalize(self._transform({"image": image}, np.random.default_rng(0)))
    out = {k: v[0] for k, v in self._template.items()}
    out.update({k: v for k, v in example.items() if k in out})
    return out

  def __call__(self, images: Sequence[np.ndarray]) -> list[dict[str, Any]]:
    """Predictions for each image, in its original coordinates (see the module docstring)."""
    examples = [self.preprocess(im) for im in images]
    results = []
    for start in range(0, len(examples), self.batch_size):
      chunk = examples[start:start + self.batch_size]
      pad = self.batch_size - len(chunk)
      batch = {k: np.stack([e[k] for e in chunk] + [chunk[0][k]] * pad) for k in chunk[0]}
      preds = jax.device_get(self._predict(self.variables, batch))
      for i, ex in enumerate(chunk):
        results.append(self._to_original({k: np.asarray(v[i]) for k, v in preds.items()}, ex))
    return results

  def _to_original(self, pred: dict[str, np.ndarray], ex: Mapping[str, np.ndarray]) -> dict:
    oh, ow = (int(v) for v in ex["orig_hw"])
    ih, iw = (int(v) for v in ex["image_hw"])
    scale = float(ex["scale"])
    if self.family.task == "segmentation":
      seg = pred["segmentation"]
      # Valid-convolution models predict a centred crop of the input: place it back on the canvas.
      full_h, full_w = ex["image"].shape[:2]
      canvas = np.full((full_h, full_w), self.info.ignore_label, np.int32)
      top, left = (full_h - seg.shape[0]) // 2, (full_w - seg.shape[1]) // 2
      canvas[top:top + seg.shape[0], left:left + seg.shape[1]] = seg
      return {"segmentation": _nearest_resize(canvas[:ih, :iw], (oh, ow)).astype(np.int32)}
    keep = pred["valid"] & (pred["labels"] > 0) & (pred["scores"] >= self.score_threshold)
    boxes = pred["boxes"][keep].astype(np.float64) / scale
    boxes = np.clip(boxes, 0.0, [ow, oh, ow, oh])
    labels = pred["labels"][keep].astype(np.int32)
    names = [self.info.class_names[int(k) - 1] for k in labels]
    out = {"boxes": boxes.astype(np.float32), "scores": pred["scores"][keep].astype(np.float32),
           "labels": labels, "class_names": names}
    if "masks" in pred:
      masks = pred["masks"][keep]
      if masks.dtype != np.bool_:
        masks = masks > 0.5
      stride = ex["image"].shape[0] / pred["masks"].shape[1]  # masks may be at a coarser stride
      crop = masks[:, :int(np.ceil(ih / stride)), :int(np.ceil(iw / stride))]
      out["masks"] = (_nearest_resize(crop, (oh, ow)) if len(crop)
                      else np.zeros((0, oh, ow), bool))
    return out


def load_config_json(path: str):
  """The ``config.json`` a training run saved, as a ``ConfigDict`` (lists become tuples)."""
  import ml_collections  # noqa: PLC0415

  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} does not exist: pass the experiment config (e.g. "
                            "--config configs/<name>.py) or a workdir written by train.py.")
  with open(path) as f:
    raw = json.load(f)

  def fix(x):
    if isinstance(x, dict):
      return {k: fix(v) for k, v in x.items()}
    if isinstance(x, list):
      return tuple(fix(v) for v in x)
    return x

  return ml_collections.ConfigDict(fix(raw))


def read_image(path: str) -> np.ndarray:
  """An image file as ``[H, W, 3]`` uint8 (Pillow)."""
  from PIL import Image  # noqa: PLC0415

  with Image.open(path) as im:
    return np.asarray(im.convert("RGB"))


def predict_folder(predictor: Predictor, input_dir: str, output_dir: str) -> dict[str, Any]:
  """Predicts every image in ``input_dir``; writes ``<name>.png`` overlays and ``<name>.json``.

  Unreadable files are skipped and listed. Returns ``{"images": n, "skipped": [...], "output_dir"}``.
  The JSON holds the label map's class histogram (segmentation) or the detections (boxes in
  original pixels xyxy, scores, labels, class names).
  """
  from jaxvision import viz  # noqa: PLC0415

  if not os.path.isdir(input_dir):
    raise FileNotFoundError(f"--input {input_dir!r} is not a directory of images.")
  os.makedirs(output_dir, exist_ok=True)
  names = sorted(n for n in os.listdir(input_dir) if n.lower().endswith(IMAGE_EXTENSIONS))
  skipped, done = [], 0
  from tqdm.auto import tqdm  # noqa: PLC0415

  for name in tqdm(names, desc="predict", unit="image"):
    try:
      image = read_image(os.path.join(input_dir, name))
    except Exception as e:  # noqa: BLE001 (any unreadable file is skipped and reported)
      skipped.append(f"{name}: {type(e).__name__}: {e}")
      continue
    result = predictor([image])[0]
    stem = os.path.splitext(name)[0]
    record: dict[str, Any] = {"image": name, "height": image.shape[0], "width": image.shape[1]}
    class_names = predictor.info.seg_class_names if predictor.task == "segmentation" else \
        predictor.info.class_names
    if predictor.task == "segmentation":
      seg = result["segmentation"]
      ids, counts = np.unique(seg, return_counts=True)
      record["pixels_per_class"] = {
          (class_names[i] if i < len(class_names) else str(int(i))): int(c)
          for i, c in zip(ids, counts)}
      overlay = viz.overlay_segmentation(image, seg, num_classes=len(class_names))
    else:
      record["detections"] = [
          {"box_xyxy": [round(float(v), 2) for v in b], "score": round(float(s), 4),
           "label": int(l), "class_name": n}
          for b, s, l, n in zip(result["boxes"], result["scores"], result["labels"],
                                result["class_names"])]
      overlay = viz.draw_detections(image, result["boxes"], result["scores"], result["labels"],
                                    class_names=class_names, masks=result.get("masks"))
    viz.save_image(overlay, os.path.join(output_dir, stem + ".png"))
    with open(os.path.join(output_dir, stem + ".json"), "w") as f:
      json.dump(record, f, indent=1)
    done += 1
  return {"images": done, "skipped": skipped, "output_dir": output_dir}
