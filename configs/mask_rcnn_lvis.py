"""Mask R-CNN R50-FPN (He, Gkioxari, Dollar and Girshick, "Mask R-CNN", ICCV 2017) on LVIS v1
(Gupta, Dollar and Girshick, "LVIS: A Dataset for Large Vocabulary Instance Segmentation", CVPR
2019), read through TFDS (`lvis`, instance masks decoded with `data.keep_masks`).

Command:   python train.py --config configs/mask_rcnn_lvis.py --workdir runs/mask_rcnn_lvis \
               --config.init_from=/path/to/resnet50-0676ba61.pth
Smoke:     python train.py --config configs/mask_rcnn_lvis.py:smoke --workdir /tmp/mrcnn_lvis_smoke
Hardware:  accelerators. Needs `lvis` prepared as TFDS array_record (`tfds build lvis`, see
           jaxvision.data.tfds_sources). Masks at stride 4 of the 800 x 1344 input; up to 300
           instances per image (`max_boxes`; larger images keep the 300 largest and count the rest).
Model:     configs/mask_rcnn_coco.py's R50-FPN Mask R-CNN with 1203 classes and the LVIS paper's
           inference settings: score threshold 1e-4 and 300 detections per image. Same 1x-style
           schedule as COCO (SGD 0.02, batch 16; here 90k iterations, /10 at 60k and 80k).
           Differences from the LVIS baselines: no repeat-factor sampling and no federated
           evaluation (pycocotools AP over all categories instead of the LVIS API).
Expected:  not measured yet (no LVIS data or accelerator was available when this config was made);
           this config is not the paper's setting, so no paper number applies.
Smoke:     `:smoke` keeps the family at 128 px on the shapes tiny split (like mask_rcnn_coco).
"""

from configs import mask_rcnn_coco


def get_config(arg: str | None = None):
  c = mask_rcnn_coco.get_config(arg)
  if arg == "smoke":
    return c
  c.data.name = "lvis"
  for key in ("train_annotations", "train_images", "eval_annotations", "eval_images"):
    del c.data[key]
  c.data.max_boxes = 300
  c.data.eval_batch_size = 8
  c.model.roi_heads = {"score_threshold": 1e-4, "detections_per_image": 300}
  c.train.steps = 90000
  c.optim.decay_steps = (60000, 80000)
  return c
