"""Pure, static-shape array ops: jit/vmap/grad-safe, one image at a time (RoI ops take a batch).

The package exports its modules; call the functions through them::

  from jaxvision.ops import boxes, nms, roi
  keep, valid = nms.nms(b, scores, iou_threshold=0.5, max_output_size=100)
  feats = roi.roi_align(fmap, rois, idx, output_size=7, spatial_scale=1 / 16, sampling_ratio=2,
                        aligned=True)

(Modules rather than functions at the package level, because ``nms`` would otherwise name both.)
"""

from jaxvision.ops import anchors
from jaxvision.ops import box_coder
from jaxvision.ops import boxes
from jaxvision.ops import crf
from jaxvision.ops import matching
from jaxvision.ops import nms
from jaxvision.ops import roi
from jaxvision.ops import sampling
from jaxvision.ops import unpool

__all__ = ["anchors", "box_coder", "boxes", "crf", "matching", "nms", "roi", "sampling", "unpool"]
