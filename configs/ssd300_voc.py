"""SSD300 (Liu et al., "SSD: Single Shot MultiBox Detector", ECCV 2016) on PASCAL VOC 07+12.

Command:   python train.py --config configs/ssd300_voc.py --workdir runs/ssd300_voc
Smoke:     python train.py --config configs/ssd300_voc.py:smoke --workdir /tmp/ssd300_smoke
Hardware:  one accelerator (the paper: a Titan X, batch 32). Needs `voc/2007` and `voc/2012` prepared
           as TFDS array_record (see jaxvision.data.tfds_sources: `tfds build voc/2007
           --file_format=array_record`, the same for voc/2012; needs the `tf` extra).
Model:     the paper's SSD300: VGG-16 base (pool5 3x3/1, fc6 3x3 dilation 6 with 1024 channels,
           fc7 1x1, conv4_3 L2-normalized with a learned scale initialised to 20), extras conv8_2,
           conv9_2, conv10_2, conv11_2; 6 source maps 38, 19, 10, 5, 3, 1 with 4, 6, 6, 6, 4, 4 default
           boxes per location (8732 in all), scales 0.1 (conv4_3), 0.2 ... 0.88, Caffe steps;
           matching at IoU 0.5, smooth-L1 on offsets with variances 0.1/0.2, softmax loss with 3:1
           hard negative mining over the number of positives; inference: score > 0.01, class-aware
           NMS at 0.45, top 200 per image. Training data "07+12": VOC 2007 trainval + VOC 2012
           trainval (`data.extra_train`, 16551 images); evaluation on VOC 2007 test with the 11-point
           VOC07 metric. The paper's augmentation: photometric distortion, zoom out (canvas up to 4x,
           `augment.expand`), min-IoU patch sampling (`augment.min_iou_crop`), flips. SGD, momentum
           0.9, weight decay 5e-4, batch 32; the paper states its schedule for VOC 2007 trainval
           only (lr 1e-3 for 40k steps, then 1e-4 and 1e-5 for 10k each): for the 3x larger 07+12
           set this config runs lr 1e-3 to 80k steps, 1e-4 to 100k and 1e-5 to 120k.
           Differences: the base network starts from random weights unless converted ImageNet
           VGG-16 weights are loaded (jaxvision.weights), which the paper uses; images are
           resized keeping their aspect ratio and padded to 300 x 300 (the paper warps them).
Expected:  the paper's number (Table 1, VOC2007 test, SSD300 trained on 07+12 with an
           ImageNet-pretrained VGG-16 and this augmentation): 74.3 mAP. Not measured here.
Smoke:     VOC data is not available offline, so `:smoke` keeps the SSD family with a VGG-16
           base of width 8 and the first two extra layers at 128 px on the shapes tiny split
           (with zoom out and min-IoU crops, without photometric distortion).
"""

from configs.common import base, datasets


def get_config(arg: str | None = None):
  c = datasets.voc0712(base.base_config(), (300, 300), 32)
  c.data.augment.photometric = True
  c.data.augment.expand = 4.0
  c.data.augment.min_iou_crop = True
  c.model.name = "ssd"
  c.model.preset = "ssd300"
  c.model.iou_threshold = 0.5
  c.model.neg_pos_ratio = 3.0
  c.model.hard_negative_mining = True
  c.model.score_threshold = 0.01
  c.model.nms_iou_threshold = 0.45
  c.model.max_detections = 200
  base.sgd_step_schedule(c, learning_rate=1e-3, decay_steps=(80000, 100000),
                         weight_decay=5e-4)
  c.train.steps = 120000
  c.train.log_every = 100
  c.train.eval_every = 10000
  c.train.checkpoint_every = 2000
  c.eval.best_metric = "mAP"
  c.eval.best_mode = "max"
  c.eval.use_07_metric = True
  if arg == "smoke":
    c = base.apply_smoke(c)
    c.data.name = "shapes"
    c.data.image_size = (128, 128)
    c.data.max_boxes = 8
    c.data.extra_train = ""
    c.data.augment.photometric = False
    c.model.vgg_width = 8
    c.model.extra_layers = ((8, 16, 2, 1), (8, 16, 2, 1))
    c.model.aspect_ratios = ((2,), (2, 3), (2, 3), (2, 3))
    c.model.scales = (0.1, 0.2, 0.37, 0.54, 0.71)
    c.model.steps = (8, 16, 32, 64)
    c.model.max_detections = 50
    c.optim.warmup_steps = 0
  elif arg:
    raise ValueError(f"unknown config argument {arg!r}; use configs/ssd300_voc.py or :smoke")
  return c
