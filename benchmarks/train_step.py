"""Training images/s and inference latency: jaxvision families vs torchvision models, side by side.

For each pair, both sides get the same architecture (jaxvision's model is configured from the
torchvision model's state dict by ``jaxvision.weights``' model configs), the same weights
(torchvision's random initialisation, converted), the same batch size, resolution and number of
classes, and the same random inputs/targets (for the detectors, jaxvision gets the normalised tensor
that torchvision's built-in transform feeds its network, so both networks see the same input and
the region-based ones keep the same proposals); the jaxvision train step is
``jit(value_and_grad(family.train_loss))`` plus an SGD update (the loop's step minus data
parallelism), torchvision's is ``loss.backward()`` plus ``optimizer.step()`` on the same optimizer.
Inference is ``jit(family.predict)`` (including post-processing: NMS, fixed detections) vs
``model.eval()(images)``. Timings are interleaved
(``_common.time_interleaved``); results print as one JSON line per (pair, mode) with
``ratio = torchvision_ms / jaxvision_ms`` (> 1: jaxvision faster), versions and device. For the
dense detectors (RetinaNet, FCOS, SSD) the inference line also has ``jaxvision_forward_ms`` (the
network alone, timed in the same interleaved rounds) and ``jaxvision_postprocess_share`` =
(predict - forward) / predict: the share of inference spent decoding, ranking and in NMS.

    python benchmarks/train_step.py --list
    python benchmarks/train_step.py --pairs deeplabv3_resnet50 --batch 2 --size 512
    python benchmarks/train_step.py --pairs all --repeats 5
    python benchmarks/train_step.py --pairs fasterrcnn_resnet50_fpn --modes infer \
        --model_set roi_heads.row_buckets=1          # a jaxvision-side ablation

Needs torch + torchvision in the environment (never a jaxvision dependency). On a GPU machine both
sides run on the GPU (torch on ``cuda``). Results are recorded in benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import pathlib
import sys
import time
from typing import Any, Callable

import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

import _common  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Pair:
  name: str
  task: str  # "segmentation" | "detection" | "instance_segmentation"
  torchvision: str  # torchvision.models(.segmentation|.detection) constructor name
  num_classes: int  # torchvision's num_classes (detection: K + 1, the background included)
  # torchvision's state dict (numpy) -> (jaxvision config.model, jaxvision's number of classes):
  # the converters' model configs, so both sides have the same architecture.
  model_config: Callable[[dict], tuple[dict, int]]
  converter: str  # jaxvision.weights.MODEL_CONVERTERS key: both sides start from the same weights
  frozen_bn: bool = False  # the torch backbone's BatchNorm2d -> FrozenBatchNorm2d (as jaxvision)
  fixed_size: int | None = None  # SSD300 runs at 300 x 300 whatever --size says


def _config(task: str, model: dict[str, Any], size: int, max_boxes: int = 16):
  from configs.common import base  # noqa: PLC0415

  c = base.base_config()
  c.task = task
  c.data.image_size = (size, size)
  c.data.max_boxes = max_boxes
  c.data.keep_masks = task == "instance_segmentation"
  for k, v in model.items():
    c.model[k] = v
  return c


def _segmentation_config(head: str, num_classes: int):
  return lambda sd: ({"name": "deeplab", "backbone": "resnet50", "output_stride": 8, "head": head,
                      "norm": "batch", "aux": False}, num_classes)


def _weights(fn_name: str):
  def model_config(sd):
    from jaxvision import weights  # noqa: PLC0415

    return getattr(weights, fn_name)(sd)

  return model_config


# Segmentation: torchvision's dilated ResNet-50 (output stride 8) with DeepLabV3's ASPP head or an
# FCN head, no auxiliary classifier; BatchNorm trained on both sides. Detection: torchvision's
# architectures and inference settings (the weight converters' model configs), frozen BatchNorm in
# the backbone on both sides (torchvision's default when it starts from ImageNet weights).
PAIRS: dict[str, Pair] = {p.name: p for p in (
    Pair("deeplabv3_resnet50", "segmentation", "deeplabv3_resnet50", 21,
         _segmentation_config("torchvision", 21), "deeplabv3_resnet50"),
    Pair("fcn_resnet50", "segmentation", "fcn_resnet50", 21, _segmentation_config("fcn", 21),
         "fcn_resnet50"),
    Pair("fasterrcnn_resnet50_fpn", "detection", "fasterrcnn_resnet50_fpn", 91,
         _weights("detection_model_config"), "fasterrcnn_resnet50_fpn", frozen_bn=True),
    Pair("retinanet_resnet50_fpn", "detection", "retinanet_resnet50_fpn", 91,
         _weights("retinanet_model_config"), "retinanet_resnet50_fpn", frozen_bn=True),
    Pair("fcos_resnet50_fpn", "detection", "fcos_resnet50_fpn", 91, _weights("fcos_model_config"),
         "fcos_resnet50_fpn", frozen_bn=True),
    Pair("ssd300_vgg16", "detection", "ssd300_vgg16", 91, _weights("ssd_model_config"),
         "ssd300_vgg16", fixed_size=300),
    Pair("maskrcnn_resnet50_fpn", "instance_segmentation", "maskrcnn_resnet50_fpn", 91,
         _weights("detection_model_config"), "maskrcnn_resnet50_fpn", frozen_bn=True),
)}


def _freeze_batchnorm(module) -> None:
  """Replaces every ``BatchNorm2d`` under ``module`` by a ``FrozenBatchNorm2d`` with its values."""
  import torch  # noqa: PLC0415
  from torchvision.ops.misc import FrozenBatchNorm2d  # noqa: PLC0415

  for name, child in module.named_children():
    if isinstance(child, torch.nn.BatchNorm2d):
      frozen = FrozenBatchNorm2d(child.num_features, eps=child.eps)
      with torch.no_grad():
        for key in ("weight", "bias", "running_mean", "running_var"):
          getattr(frozen, key).copy_(getattr(child, key))
      setattr(module, name, frozen)
    else:
      _freeze_batchnorm(child)


def _torch_model(pair: Pair, size: int, device):
  import torchvision  # noqa: PLC0415

  if pair.task == "segmentation":
    ctor = getattr(torchvision.models.segmentation, pair.torchvision)
    model = ctor(weights=None, weights_backbone=None, num_classes=pair.num_classes, aux_loss=False)
  else:
    ctor = getattr(torchvision.models.detection, pair.torchvision)
    # R-CNN/RetinaNet/FCOS resize inputs to min_size..max_size (800..1333 by default): keep --size.
    kw = {} if pair.fixed_size else {"min_size": size, "max_size": size}
    model = ctor(weights=None, weights_backbone=None, num_classes=pair.num_classes, **kw)
    if pair.frozen_bn:
      _freeze_batchnorm(model.backbone)
  return model.to(device)


# Small, so that both sides stay near the common initialisation during the ~8 timed steps and keep
# doing comparable work: at 1e-3 SSD300 reached NaN on both sides (its input is in 0-255 units),
# after which post-processing has nothing to rank and the timings stop meaning much.
LEARNING_RATE = 1e-5

# Train-loss terms of the region-based families that count RoIs per image (reported as is).
COUNT_TERMS = ("num_proposals", "num_fg_rois", "num_mask_rois", "num_mask_rois_dropped")


def _torch_targets(pair: Pair, batch, device):
  import torch  # noqa: PLC0415

  if pair.task == "segmentation":
    return torch.from_numpy(batch["segmentation"]).long().to(device)
  targets = []
  for i in range(batch["image"].shape[0]):
    v = batch["box_valid"][i]
    t = {"boxes": torch.from_numpy(batch["boxes"][i][v]).to(device),
         "labels": torch.from_numpy(batch["labels"][i][v]).long().to(device)}
    if pair.task == "instance_segmentation":
      t["masks"] = torch.from_numpy(batch["masks"][i][v].astype(np.uint8)).to(device)
    targets.append(t)
  return targets


def _random_batch(config, batch_size: int, num_classes: int, rng) -> dict[str, np.ndarray]:
  from jaxvision.train import loop  # noqa: PLC0415

  b = loop.example_batch(config, batch_size)
  h, w = b["image"].shape[1:3]
  b["image"] = rng.normal(size=b["image"].shape).astype(np.float32)
  b["segmentation"] = rng.integers(0, num_classes, (batch_size, h, w)).astype(np.int32)
  m = b["boxes"].shape[1]
  n = m // 2
  xy = rng.uniform(0, min(h, w) * 0.6, (batch_size, m, 2))
  wh = rng.uniform(16, min(h, w) * 0.4, (batch_size, m, 2))
  b["boxes"] = np.concatenate([xy, xy + wh], -1).astype(np.float32)
  b["box_valid"] = np.arange(m)[None].repeat(batch_size, 0) < n
  b["labels"] = np.where(b["box_valid"], rng.integers(1, num_classes + 1, (batch_size, m)), 0
                         ).astype(np.int32)
  if "masks" in b:
    yy, xx = np.mgrid[:b["masks"].shape[2], :b["masks"].shape[3]]
    s = h // b["masks"].shape[2]
    bx = b["boxes"] / s
    b["masks"] = ((xx >= bx[..., 0, None, None]) & (xx < bx[..., 2, None, None]) &
                  (yy >= bx[..., 1, None, None]) & (yy < bx[..., 3, None, None]) &
                  b["box_valid"][..., None, None])
  return b


def _set_model_key(model_cfg: dict, assignment: str) -> None:
  """``"roi_heads.row_buckets=1"`` -> ``model_cfg["roi_heads"]["row_buckets"] = 1`` (JSON value)."""
  import json  # noqa: PLC0415

  key, sep, value = assignment.partition("=")
  if not sep:
    raise ValueError(f"--model_set wants section.key=value, got {assignment!r}")
  *path, last = key.split(".")
  node = model_cfg
  for part in path:
    node = node.setdefault(part, {})
  node[last] = json.loads(value)


def run_pair(pair: Pair, *, batch_size: int, size: int, repeats: int, modes=("train", "infer"),
             model_set: tuple[str, ...] = ()):
  import jax  # noqa: PLC0415
  import optax  # noqa: PLC0415
  import torch  # noqa: PLC0415

  from jaxvision import models, weights  # noqa: PLC0415

  device = "cuda" if torch.cuda.is_available() else "cpu"
  sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
  torch.manual_seed(0)
  size = pair.fixed_size or size
  model = _torch_model(pair, size, device)
  state_dict = {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}
  model_cfg, classes = pair.model_config(state_dict)
  for assignment in model_set:  # jaxvision-side ablations, e.g. roi_heads.row_buckets=1
    _set_model_key(model_cfg, assignment)
  config = _config(pair.task, model_cfg, size)
  family = models.MODELS[model_cfg["name"]](model_cfg, classes)
  rng = np.random.default_rng(0)
  batch = _random_batch(config, batch_size, classes, rng)
  if pair.task != "segmentation":  # what torchvision's detectors expect: RGB in [0, 1]
    batch["image"] = rng.uniform(0.0, 1.0, batch["image"].shape).astype(np.float32)
  images = torch.from_numpy(batch["image"].transpose(0, 3, 1, 2).copy()).to(device)
  if pair.task != "segmentation":
    # torchvision's detectors normalise (and resize) inside the model; jaxvision's data pipeline
    # does it on the host. Give jaxvision the tensor torchvision's network sees, so both run the
    # same network input (and so the same number of proposals in the region-based detectors).
    with torch.no_grad():
      seen = model.eval().transform(list(images))[0].tensors
    if tuple(seen.shape[2:]) != batch["image"].shape[1:3]:
      raise RuntimeError(f"torchvision resized the {batch['image'].shape[1:3]} input to "
                         f"{tuple(seen.shape[2:])}: pick --size so that it does not")
    batch["image"] = seen.cpu().numpy().transpose(0, 2, 3, 1).copy()
  jbatch = jax.device_put(batch)
  # The same weights on both sides (converted from torchvision's random initialisation), so
  # inference post-processes the same kind of scores.
  t0 = time.perf_counter()
  template = jax.eval_shape(family.init_variables, jax.random.PRNGKey(0), jbatch)
  variables = weights.load_into(template, weights.MODEL_CONVERTERS[pair.converter](state_dict),
                                what=f"{pair.torchvision} (random init) into jaxvision")
  init_s = time.perf_counter() - t0
  params = variables["params"]
  rest = {k: v for k, v in variables.items() if k != "params"}
  tx = optax.sgd(LEARNING_RATE, momentum=0.9)
  opt_state = tx.init(params)

  def jstep(params, rest, opt_state, batch, rng):
    def lossf(p):
      loss, terms, mutated = family.train_loss({"params": p, **rest}, batch, rng=rng, step=0)
      return loss, (mutated, {k: terms[k] for k in COUNT_TERMS if k in terms})

    (loss, (mutated, counts)), grads = jax.value_and_grad(lossf, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), {**rest, **mutated}, opt_state, (loss, counts)

  jstep = jax.jit(jstep, donate_argnums=(0, 1, 2))
  key = jax.random.PRNGKey(1)
  state = {"p": params, "r": rest, "o": opt_state}

  def jax_train():
    state["p"], state["r"], state["o"], (loss, counts) = jstep(state["p"], state["r"], state["o"],
                                                               jbatch, key)
    jax.block_until_ready(loss)
    state["counts"], state["loss"] = counts, loss

  jpredict = jax.jit(family.predict)

  def jax_infer():
    jax.block_until_ready(jpredict({"params": state["p"], **state["r"]}, jbatch))

  # Dense detectors (a family with a separate ``postprocess``): the network's forward alone, so
  # that the post-processing (decode, top-k, NMS, fixed detections) shows as a share of predict.
  jforward = None
  if pair.task == "detection" and family.postprocess is not None:
    jforward = jax.jit(lambda v, x: family.module.apply(v, x, train=False))

  def jax_forward():
    jax.block_until_ready(jforward({"params": state["p"], **state["r"]}, jbatch["image"]))

  targets = _torch_targets(pair, batch, device)
  opt = torch.optim.SGD(model.parameters(), lr=LEARNING_RATE, momentum=0.9)
  if hasattr(model, "rpn"):  # the proposals per image torchvision's box head got (cf. jaxvision's)
    model.rpn.register_forward_hook(
        lambda mod, args, out: state.__setitem__("torch_proposals",
                                                 float(np.mean([len(p) for p in out[0]]))))

  def torch_train():
    model.train()
    opt.zero_grad()
    if pair.task == "segmentation":
      out = model(images)["out"]
      loss = torch.nn.functional.cross_entropy(out, targets, ignore_index=255)
    else:
      loss = sum(model(list(images), targets).values())
    loss.backward()
    opt.step()
    sync()
    state["torch_loss"] = loss.detach()

  def torch_infer():
    model.eval()
    with torch.no_grad():
      model(images) if pair.task == "segmentation" else model(list(images))
    sync()

  results = []
  env = _common.environment()
  for mode in modes:
    fns = ({"jaxvision": jax_train, "torchvision": torch_train} if mode == "train"
           else {"jaxvision": jax_infer, "torchvision": torch_infer})
    t0 = time.perf_counter()
    fns["jaxvision"]()
    first_s = time.perf_counter() - t0  # compile + first run
    if mode == "infer" and jforward is not None:
      fns["jaxvision_forward"] = jax_forward
    times = _common.time_interleaved(fns, repeats=repeats, warmup=1)
    jm, tm = times["jaxvision"]["median_ms"], times["torchvision"]["median_ms"]
    post = {}
    if "jaxvision_forward" in times:
      fm = times["jaxvision_forward"]["median_ms"]
      post = {"jaxvision_forward_ms": fm,
              "jaxvision_postprocess_share": round(max(jm - fm, 0.0) / jm, 3)}
    results.append({
        "benchmark": "train_step" if mode == "train" else "inference", "pair": pair.name,
        "torchvision_model": pair.torchvision, "batch": batch_size, "image_hw": [size, size],
        "num_classes": pair.num_classes, "same_initial_weights": True,
        **({"jaxvision_model_set": list(model_set)} if model_set else {}),
        "jaxvision_ms": jm, "torchvision_ms": tm,
        "jaxvision_images_per_s": round(batch_size / jm * 1e3, 3),
        "torchvision_images_per_s": round(batch_size / tm * 1e3, 3),
        "ratio": round(tm / jm, 3), **post, "jaxvision_compile_s": round(first_s, 2),
        "jaxvision_init_s": round(init_s, 2), "repeats": repeats, "torch_device": device,
        # Per image in jaxvision's last step: how much of the fixed-size work was real (e.g. the
        # mask branch always runs on mask_head.rois_per_image slots, torchvision on the positives).
        **({"jaxvision_counts": {k: round(float(v), 2) for k, v in state.get("counts", {}).items()},
            # The last step's losses: both sides must stay finite for the timings to mean much.
            **({"torchvision_num_proposals": state["torch_proposals"]}
               if "torch_proposals" in state else {}),
            "jaxvision_last_loss": round(float(state["loss"]), 4),
            "torchvision_last_loss": round(float(state["torch_loss"]), 4)}
           if mode == "train" else {}), **env})
  return results


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--pairs", default="all", help="comma-separated pair names or 'all'")
  parser.add_argument("--batch", type=int, default=2)
  parser.add_argument("--size", type=int, default=512)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--modes", default="train,infer")
  parser.add_argument("--model_set", action="append", default=[],
                      help="jaxvision config.model override section.key=JSON (repeatable), e.g. "
                           "roi_heads.row_buckets=1")
  parser.add_argument("--list", action="store_true")
  args = parser.parse_args()
  if args.batch < 2:
    parser.error("--batch must be >= 2: torchvision's DeepLab/FCN heads use BatchNorm on 1x1 "
                 "pooled features, which refuses a batch of 1 in training mode")
  if args.list:
    print("\n".join(sorted(PAIRS)))
    return
  names = sorted(PAIRS) if args.pairs == "all" else args.pairs.split(",")
  for name in names:
    if name not in PAIRS:
      parser.error(f"unknown pair {name!r}; --list shows the pairs")
    for result in run_pair(PAIRS[name], batch_size=args.batch, size=args.size,
                           repeats=args.repeats, modes=tuple(args.modes.split(",")),
                           model_set=tuple(args.model_set)):
      _common.emit(result)


if __name__ == "__main__":
  main()
