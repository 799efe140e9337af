"""The sections every experiment has, with defaults; experiments override a few keys.

Sections: ``data`` (jaxvision.data.builder), ``model`` (the family's keys, ``name`` selects it in
jaxvision.models.MODELS), ``optim`` (jaxvision.train.optim), ``train`` (loop lengths and intervals),
``eval``; plus ``task`` and ``parallelism``.
"""

import ml_collections

from jaxvision.data.transforms import IMAGENET_MEAN, IMAGENET_STD


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.task = "segmentation"
  c.parallelism = "shard_map"  # or "pmap": same per-device step, same numbers
  c.init_from = ""  # a torchvision backbone file (.pth/.safetensors) to start the backbone from
  c.init_from_at = "backbone"  # the sub-tree of the model's params that holds the backbone
  c.init_from_prefix = ""  # key prefix inside the file (e.g. "backbone.body." for detection models)
  # A whole torchvision model instead of a backbone: init_from_model names its builder (a key of
  # jaxvision.weights.MODEL_CONVERTERS, e.g. "fasterrcnn_resnet50_fpn"); init_from_skip lists
  # param sub-trees ("a/b" paths) kept from the fresh initialisation, e.g. a predictor whose
  # number of classes differs from the file's.
  c.init_from_model = ""
  c.init_from_skip = ()

  c.data = ml_collections.ConfigDict()
  c.data.name = "shapes"
  c.data.data_dir = ml_collections.config_dict.placeholder(str)  # None: $JAXVISION_DATA_DIR or TFDS's
  c.data.train_split = "train"
  c.data.eval_split = "validation"
  c.data.image_size = (128, 128)
  c.data.batch_size = 16  # global
  c.data.eval_batch_size = 40  # global; the last batch is padded (example_valid)
  c.data.max_boxes = 8
  c.data.mask_stride = 1
  c.data.keep_masks = False
  c.data.mean = IMAGENET_MEAN
  c.data.std = IMAGENET_STD
  c.data.seed = 0
  c.data.worker_count = 0  # grain worker processes building batches (0: in the main process)
  c.data.prefetch = 2  # batches buffered ahead on the host (per worker)
  c.data.device_prefetch = 2  # batches transferred to the devices ahead of the step
  # Host-side region proposals for detectors on external proposals (R-CNN, SPP-net, Fast R-CNN):
  # None, "shapes" (the built-in stand-in) or "selective_search" (scikit-image; ~0.13 s an image).
  c.data.proposals = ml_collections.config_dict.placeholder(str)
  c.data.max_proposals = 1000
  c.data.augment = ml_collections.ConfigDict()
  c.data.augment.flip = True
  c.data.augment.vertical_flip = False  # for data without an "up" (shapes, aerial, microscopy)
  c.data.augment.photometric = False
  c.data.augment.elastic = False
  c.data.augment.expand = 0.0  # SSD's zoom out: the largest canvas ratio (SSD: 4.0); 0 is off
  c.data.augment.min_iou_crop = False  # SSD's min-IoU patch sampling (zoom in)
  c.data.augment.scale_jitter = ml_collections.config_dict.placeholder(tuple)

  c.model = ml_collections.ConfigDict()
  c.model.name = ""

  c.optim = ml_collections.ConfigDict()
  c.optim.name = "adamw"
  c.optim.learning_rate = 1e-3
  c.optim.schedule = "cosine"
  c.optim.warmup_steps = 0
  c.optim.weight_decay = 0.0
  c.optim.weight_decay_mask = "kernels"
  c.optim.grad_clip_norm = 0.0
  c.optim.ema_decay = 0.0  # > 0: evaluate with an exponential moving average of the parameters

  c.train = ml_collections.ConfigDict()
  c.train.steps = 1000
  c.train.seed = 0
  c.train.log_every = 20
  c.train.eval_every = 250
  c.train.checkpoint_every = 250
  c.train.keep_checkpoints = 2

  c.eval = ml_collections.ConfigDict()
  c.eval.best_metric = "mean_iou"
  c.eval.best_mode = "max"
  return c


def proposal_detection_config() -> ml_collections.ConfigDict:
  """``base_config()`` with the block shared by the shapes detectors on external proposals
  (R-CNN, SPP-net, Fast R-CNN): VOC mAP; proposals from the data pipeline (the shapes stand-in,
  ``jaxvision.data.proposals``: 128 gt jitters + 32 random boxes + 770 windows for training, the
  770 windows for evaluation; or ``data.proposals="selective_search"``); N = 2 images a step
  (Fast R-CNN's hierarchical sampling), at most 8 boxes; AdamW 1e-3 after 100 warmup steps with
  clipping at 10; 3000 steps, evaluated every 1000."""
  c = base_config()
  c.task = "detection"
  c.eval.best_metric = "mAP"
  c.eval.metric = "voc"
  c.model.proposals = "batch"
  c.data.proposals = "shapes"
  c.data.max_proposals = 1000
  c.data.batch_size = 2
  c.data.max_boxes = 8
  c.optim.learning_rate = 1e-3
  c.optim.warmup_steps = 100
  c.optim.weight_decay = 1e-4
  c.optim.grad_clip_norm = 10.0
  c.train.steps = 3000
  c.train.log_every = 50
  c.train.eval_every = 1000
  c.train.checkpoint_every = 500
  return c


def sgd_step_schedule(c: ml_collections.ConfigDict, *, learning_rate: float,
                      decay_steps: tuple, weight_decay: float, warmup_steps: int = 500,
                      momentum: float = 0.9, decay_factor: float = 0.1) -> ml_collections.ConfigDict:
  """The papers' solver: SGD with momentum, a linear warm-up, the learning rate multiplied by
  ``decay_factor`` at each step of ``decay_steps`` (absolute steps), L2 weight decay on kernels."""
  c.optim.name = "sgd"
  c.optim.momentum = momentum
  c.optim.learning_rate = learning_rate
  c.optim.schedule = "step"
  c.optim.decay_steps = tuple(decay_steps)
  c.optim.decay_factor = decay_factor
  c.optim.warmup_steps = warmup_steps
  c.optim.weight_decay = weight_decay
  return c


def coco_1x_schedule(c: ml_collections.ConfigDict, *, learning_rate: float) -> ml_collections.ConfigDict:
  """Detectron's "1x" COCO schedule: 90k iterations (of 16 images), ``sgd_step_schedule`` with the
  learning rate x0.1 at 60k and 80k and weight decay 1e-4; COCO box AP every 10k steps picks the
  best checkpoint."""
  sgd_step_schedule(c, learning_rate=learning_rate, decay_steps=(60000, 80000), weight_decay=1e-4)
  c.train.steps = 90000
  c.train.log_every = 100
  c.train.eval_every = 10000
  c.train.checkpoint_every = 2000
  c.eval.metric = "coco"
  c.eval.best_metric = "bbox/AP"
  return c


def apply_smoke(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Shrinks a config for the config test: a few steps on the tiny split, at most 128 px."""
  c.data.train_split = "tiny"
  c.data.eval_split = "tiny"
  c.data.batch_size = 8
  c.data.eval_batch_size = 8
  c.train.steps = 3
  c.train.log_every = 1
  c.train.eval_every = 3
  c.train.checkpoint_every = 2
  return c
