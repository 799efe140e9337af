"""Mask R-CNN R50-FPN (He, Gkioxari, Dollar and Girshick, "Mask R-CNN", ICCV 2017) on COCO 2017
instances, read from the COCO-format JSON + image folder source (polygon and RLE masks).

Command:   python train.py --config configs/mask_rcnn_coco.py --workdir runs/mask_rcnn_coco \
               --config.init_from=/path/to/resnet50-0676ba61.pth \
               --config.data.train_annotations=/data/coco/annotations/instances_train2017.json \
               --config.data.train_images=/data/coco/train2017 \
               --config.data.eval_annotations=/data/coco/annotations/instances_val2017.json \
               --config.data.eval_images=/data/coco/val2017
           (the defaults below point at ~/data/coco/...)
Smoke:     python train.py --config configs/mask_rcnn_coco.py:smoke --workdir /tmp/mrcnn_coco_smoke
Hardware:  accelerators (the paper: 8 GPUs, 2 images each, 16 per batch). Masks are kept at stride 4
           of the 800 x 1344 input (`data.mask_stride = 4`: [100, 200, 336] bool per image) so host
           and device memory stay bounded with up to 100 instances; targets are RoIAligned from them.
Model:     the paper's R50-FPN Mask R-CNN (`model.preset = "fpn"`): ResNet-50 with frozen BatchNorm
           (ImageNet weights through `config.init_from`), FPN P2..P6 256 channels, RPN with one
           anchor size per level (32..512) x 3 ratios, 2000/1000 proposals, 512 RoIs per image at
           1:3 positive:negative, RoIAlign 7x7 + two FC 1024 box head; mask branch: RoIAlign
           (aligned, sampling 2) 14x14 on the positive RoIs, 4 x conv3x3 256, deconv to 28x28,
           80 sigmoid masks, BCE on the gt class only (the mask branch runs B x 128 rows for
           the B images of a device, shared by them: every positive fits; on a slow device
           `--config.model.mask_head.rois_per_image=64` halves that, subsampling and counting
           positives beyond it in `num_mask_rois_dropped`). Inference: 1000 proposals, score
           0.05, NMS 0.5, 100 detections, masks pasted at the boxes and binarized at 0.5.
           Schedule (paper Sec. 3.1 "Training"): SGD momentum 0.9, weight decay 1e-4, batch 16,
           lr 0.02 for 160k iterations divided by 10 at 120k, horizontal flips; 500 warm-up
           steps (Detectron).
           Differences: images fit 800 x 1344 keeping their aspect ratio and are padded (the paper:
           shorter side 800, longer at most 1333); evaluation against masks resampled from the
           batch (use jaxvision.eval.coco with the annotation JSON for numbers to publish).
Expected:  the paper's number (not measured here): 33.6 mask AP on COCO minival for R50-FPN
           (He et al. 2017, Table 2a). Not measured yet with this command (no COCO data or
           accelerator was available when this config was made).
Smoke:     COCO is not available offline, so `:smoke` keeps the Mask R-CNN family with a ResNet-18
           of width 4 and an 8-channel FPN at 128 px on the shapes tiny split.
"""

from configs.common import base

COCO_ROOT = "~/data/coco"


def get_config(arg: str | None = None):
  c = base.base_config()
  c.task = "instance_segmentation"
  c.data.name = "coco_json"
  c.data.train_annotations = f"{COCO_ROOT}/annotations/instances_train2017.json"
  c.data.train_images = f"{COCO_ROOT}/train2017"
  c.data.eval_annotations = f"{COCO_ROOT}/annotations/instances_val2017.json"
  c.data.eval_images = f"{COCO_ROOT}/val2017"
  # COCO 2017's 80 categories (ids 1..90 with gaps), known without reading the JSON
  # (jaxvision.data.builder reads `data.categories`).
  c.data.categories = "coco"
  c.data.image_size = (800, 1344)
  c.data.batch_size = 16
  c.data.eval_batch_size = 16
  c.data.max_boxes = 100
  c.data.keep_masks = True
  c.data.mask_stride = 4
  c.data.augment.flip = True
  c.model.name = "mask_rcnn"
  c.model.preset = "fpn"
  c.model.backbone = {"name": "resnet50", "norm": "frozen"}
  c.model.mask_head = {"pooler": "align", "loss": "sigmoid", "output_size": 14, "num_convs": 4,
                       "conv_features": 256}
  c.init_from_at = "backbone"
  base.sgd_step_schedule(c, learning_rate=0.02, decay_steps=(120000,),
                         weight_decay=1e-4)
  c.train.steps = 160000
  c.train.log_every = 100
  c.train.eval_every = 20000
  c.train.checkpoint_every = 2000
  c.eval.metric = "coco"
  c.eval.best_metric = "segm/AP"
  c.eval.best_mode = "max"
  if arg == "smoke":
    c = base.apply_smoke(c)
    c.data.name = "shapes"
    c.data.image_size = (128, 128)
    c.data.max_boxes = 8
    c.data.mask_stride = 2
    c.model.backbone = {"name": "resnet18", "width": 4, "norm": "batch"}
    c.model.neck = {"features": 8}
    c.model.rpn = {"levels": ("P2", "P3", "P4"), "anchor_sizes": ((16,), (32,), (64,)),
                   "pre_nms_top_n_train": 50, "post_nms_top_n_train": 32,
                   "pre_nms_top_n_test": 50, "post_nms_top_n_test": 32}
    c.model.roi_heads = {"batch_size_per_image": 32, "detections_per_image": 20}
    c.model.box_head = {"kind": "mlp", "representation_size": 32}
    c.model.mask_head.num_convs = 1
    c.model.mask_head.conv_features = 8
    c.optim.warmup_steps = 0
  elif arg:
    raise ValueError(f"unknown config argument {arg!r}; use configs/mask_rcnn_coco.py or :smoke")
  return c
