"""SPP-net for detection (He, Zhang, Ren and Sun, "Spatial Pyramid Pooling in Deep Convolutional
Networks for Visual Recognition", ECCV 2014, Sec. 4) on the built-in shapes dataset.

Command:   python train.py --config configs/spp_net_shapes.py --workdir runs/spp_net_shapes
Smoke:     python train.py --config configs/spp_net_shapes.py:smoke --workdir /tmp/spp_smoke
Hardware:  a 2-core CPU (no accelerator needed); the shapes dataset is prepared offline on first use.
Model:     jaxvision.models.detection.spp_net: the conv layers run once per image (ResNet-18,
           width 16, BatchNorm, from scratch, C4 at stride 8), each proposal is pooled on the C4
           map by a spatial pyramid of 4x4, 2x2 and 1x1 max-pooled bins (21 C values; the paper's
           (6, 3, 2, 1) on ZF-5 is model.preset="vgg16"), two FC layers of 256, softmax over K + 1
           and class-specific box regression, trained with Fast R-CNN's sampling (2 images x 64
           RoIs, 25% with IoU >= 0.5) and multi-task loss, so SPP-net and
           configs/fast_rcnn_shapes.py differ only in the pooling. Differences from the paper:
           the conv layers train too (model.train_backbone=True; the paper fine-tunes only the
           FC layers of an ImageNet network) and the softmax scores the detections (the paper
           trains SVMs on fc7).
           Proposals: data.proposals="shapes", the selective-search stand-in of
           jaxvision.data.proposals (training: 16 jittered copies of every gt box, 32 random
           boxes and the 770 dense windows of 14-56 px; evaluation: the windows only), because
           selective search in the data pipeline costs about 0.13 s of CPU per 128 x 128 image
           on every pass (about 4.5 min an epoch of 2000 images on one core).
           `--config.data.proposals=selective_search` uses real selective search
           (jaxvision.data.selective_search, ~280 boxes an image, 100% recall at IoU 0.5 on 20
           validation images) for training and evaluation.
Expected:  validation mAP@0.5 0.181 (VOC AP, all-point; 0.121 at step 1000, 0.169 at 2000) after
           3000 steps of 2 images, 6.6 min wall on the shared 2-core CPU (load average 6-9 from
           other jobs), measured 2026-11-21 with
           `python train.py --config configs/spp_net_shapes.py --workdir /tmp/runs/spp`
           (configs/fast_rcnn_shapes.py, the same but RoI pooling 7 x 7: 0.206).
"""

from configs.common import base


def get_config(arg: str | None = None):
  c = base.proposal_detection_config()
  c.model.name = "spp_net"
  c.model.preset = "resnet"
  c.model.axis_name = "data"
  c.model.backbone = {"name": "resnet18", "width": 16, "norm": "batch", "output_stride": 8}
  c.model.roi_heads = {
      "feature": "C4",
      "batch_size_per_image": 64,
      "positive_fraction": 0.25,
      "bg_iou_low": 0.1,
      "smooth_l1_beta": 1.0,
      "detections_per_image": 50,
  }
  c.model.box_head = {"kind": "mlp", "representation_size": 256}
  c.model.bins = (4, 2, 1)
  c.model.train_backbone = True
  c.data.eval_batch_size = 20
  if arg == "smoke":
    c = base.apply_smoke(c)
    c.model.backbone = {"name": "resnet18", "width": 4, "norm": "batch", "output_stride": 8}
    c.model.roi_heads.batch_size_per_image = 16
    c.model.roi_heads.detections_per_image = 20
    c.model.box_head.representation_size = 32
    c.model.bins = (2, 1)
    c.data.max_proposals = 300
  elif arg:
    raise ValueError(f"unknown config argument {arg!r}; use configs/spp_net_shapes.py or :smoke")
  return c
