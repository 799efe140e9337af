"""Box-regression losses: smooth-L1 (Fast R-CNN) and the IoU family (IoU, GIoU, DIoU, CIoU).

* **Smooth-L1** from Girshick, "Fast R-CNN", ICCV 2015 (Eq. 3), with PyTorch's ``beta``
  parameterisation; Faster R-CNN / Mask R-CNN in torchvision use ``beta = 1/9`` for the RPN.
* **GIoU** loss from Rezatofighi et al., "Generalized Intersection over Union: A Metric and a Loss
  for Bounding Box Regression", CVPR 2019 (FCOS regresses boxes with it).
* **DIoU / CIoU** losses from Zheng et al., "Distance-IoU Loss: Faster and Better Learning for
  Bounding Box Regression", AAAI 2020.

The IoU losses compare *paired* boxes (prediction ``i`` with its own target ``i``), xyxy in pixels,
and are built on ``jaxvision.ops.boxes.elementwise_box_iou``. All losses are unreduced: one value per
element (smooth-L1) or per box (IoU family); the caller masks out unmatched anchors and divides by the
number of positives.
"""

from __future__ import annotations

import jax.numpy as jnp

from jaxvision.losses._common import check_number, check_same_shape
from jaxvision.ops import boxes as box_ops
from jaxvision.ops._checks import check_array

__all__ = ["smooth_l1_loss", "iou_loss", "giou_loss", "diou_loss", "ciou_loss"]


def smooth_l1_loss(pred, target, *, beta: float = 1.0):
  r"""Smooth-L1 (Huber-like) loss, unreduced; equal to ``F.smooth_l1_loss(reduction='none')``.

  With :math:`d = |\hat{y} - y|`:

  .. math::
    \mathrm{smooth}_{L_1}(d) = \begin{cases}
      0.5\, d^2 / \beta & d < \beta \\
      d - 0.5\, \beta & \text{otherwise}
    \end{cases}

  quadratic near 0 (so the gradient vanishes smoothly), linear beyond ``beta`` (so outliers do not
  dominate, unlike L2). ``beta = 1`` is Fast R-CNN's Eq. 3; ``beta = 0`` is exactly L1 (PyTorch
  special-cases it the same way; here the quadratic branch is not even built, so no 0/0 reaches the
  gradient); ``beta = 1/9`` is torchvision's ``det_utils.smooth_l1_loss`` for the RPN. It is
  ``optax.huber_loss(pred, target, delta=beta) / beta`` for ``beta > 0``.

  Args:
    pred: float array ``[...]`` (e.g. encoded box deltas ``[A, 4]``).
    target: float array of the same shape.
    beta: the switch point :math:`\beta \ge 0`.

  Returns:
    Loss per element, same shape as ``pred``.

  References:
    Girshick, `Fast R-CNN <https://arxiv.org/abs/1504.08083>`_, 2015
  """
  pred = check_array(pred, "pred", kind="float")
  target = check_array(target, "target", kind="numeric")
  check_same_shape(pred, target, "pred", "target")
  beta = check_number(beta, "beta", low=0.0)
  diff = pred - target.astype(pred.dtype)
  # |diff| written as diff * sign(diff): same value, but the gradient at diff == 0 is sign(0) = 0,
  # PyTorch's L1 subgradient (jnp.abs's derivative at 0 is 1).
  d = diff * jnp.sign(diff)
  if beta == 0.0:
    return d
  return jnp.where(d < beta, 0.5 * d * d / beta, d - 0.5 * beta)


def _check_boxes(pred_boxes, target_boxes):
  pred_boxes = check_array(pred_boxes, "pred_boxes", last_dim=4, kind="float")
  target_boxes = check_array(target_boxes, "target_boxes", last_dim=4, kind="numeric")
  check_same_shape(pred_boxes, target_boxes, "pred_boxes", "target_boxes")
  return pred_boxes, target_boxes.astype(pred_boxes.dtype)


def iou_loss(pred_boxes, target_boxes):
  r"""IoU loss :math:`1 - \mathrm{IoU}(b, b^{gt})` of paired xyxy boxes, unreduced.

  Zero gradient when the boxes do not overlap (the reason for GIoU / DIoU). Degenerate pairs (zero
  union) have IoU 0, i.e. loss 1, with finite (zero) gradients.

  Args:
    pred_boxes: float ``[..., 4]`` xyxy.
    target_boxes: ``[..., 4]`` xyxy, same shape.

  Returns:
    ``[...]`` loss per box pair, in ``[0, 1]``.

  References:
    Yu et al., `UnitBox: An Advanced Object Detection Network <https://arxiv.org/abs/1608.01471>`_,
    2016
  """
  pred_boxes, target_boxes = _check_boxes(pred_boxes, target_boxes)
  return 1.0 - box_ops.elementwise_box_iou(pred_boxes, target_boxes, kind="iou")


def giou_loss(pred_boxes, target_boxes):
  r"""Generalized-IoU loss :math:`1 - \mathrm{GIoU}`, unreduced; as torchvision's GIoU loss.

  .. math::
    \mathcal{L}_{GIoU} = 1 - \mathrm{IoU} + \frac{|C \setminus (B \cup B^{gt})|}{|C|}

  with :math:`C` the smallest box enclosing both, so non-overlapping boxes still get a gradient that
  pulls them together. In ``[0, 2]``. Equal to ``torchvision.ops.generalized_box_iou_loss(...,
  reduction='none')`` up to its ``eps = 1e-7`` in the denominators (a relative difference of about
  ``1e-7 / area``); zero-area / degenerate pairs give finite values and gradients (the IoU and
  enclosing terms are 0 where their denominators are 0).

  Args:
    pred_boxes: float ``[..., 4]`` xyxy.
    target_boxes: ``[..., 4]`` xyxy, same shape.

  Returns:
    ``[...]`` loss per box pair.

  References:
    Rezatofighi et al., `Generalized Intersection over Union
    <https://arxiv.org/abs/1902.09630>`_, 2019
  """
  pred_boxes, target_boxes = _check_boxes(pred_boxes, target_boxes)
  return 1.0 - box_ops.elementwise_box_iou(pred_boxes, target_boxes, kind="giou")


def diou_loss(pred_boxes, target_boxes, *, eps: float = 1e-7):
  r"""Distance-IoU loss, unreduced; as ``torchvision.ops.distance_box_iou_loss``.

  .. math::
    \mathcal{L}_{DIoU} = 1 - \mathrm{IoU} + \frac{\rho^2(\mathbf{b}, \mathbf{b}^{gt})}{c^2 + \epsilon}

  with :math:`\rho` the distance between the box centres and :math:`c` the diagonal of the smallest
  enclosing box: it directly minimises the centre distance, converging faster than GIoU.

  Args:
    pred_boxes: float ``[..., 4]`` xyxy.
    target_boxes: ``[..., 4]`` xyxy, same shape.
    eps: added to :math:`c^2` (torchvision's default).

  Returns:
    ``[...]`` loss per box pair.

  References:
    Zheng et al., `Distance-IoU Loss <https://arxiv.org/abs/1911.08287>`_, 2020
  """
  pred_boxes, target_boxes = _check_boxes(pred_boxes, target_boxes)
  eps = check_number(eps, "eps", low=0.0)
  return 1.0 - box_ops.elementwise_box_iou(pred_boxes, target_boxes, kind="diou", eps=eps)


def ciou_loss(pred_boxes, target_boxes, *, eps: float = 1e-7):
  r"""Complete-IoU loss, unreduced; as ``torchvision.ops.complete_box_iou_loss``.

  .. math::
    \mathcal{L}_{CIoU} = \mathcal{L}_{DIoU} + \alpha v, \quad
    v = \frac{4}{\pi^2}\Big(\arctan\frac{w^{gt}}{h^{gt}} - \arctan\frac{w}{h}\Big)^2, \quad
    \alpha = \frac{v}{1 - \mathrm{IoU} + v}

  adding aspect-ratio consistency to DIoU. :math:`\alpha` is a weight without gradient (as in the
  paper and torchvision's ``torch.no_grad()``). The aspect angle is ``atan2(w, h)``, equal to
  torchvision's ``atan(w / h)`` for every box with ``h > 0``; a point box (``w = h = 0``) gets angle 0
  where torchvision gives NaN (see ``jaxvision.ops.boxes``).

  Args:
    pred_boxes: float ``[..., 4]`` xyxy.
    target_boxes: ``[..., 4]`` xyxy, same shape.
    eps: as in ``diou_loss``; also guards :math:`\alpha`'s denominator.

  Returns:
    ``[...]`` loss per box pair.

  References:
    Zheng et al., `Distance-IoU Loss <https://arxiv.org/abs/1911.08287>`_, 2020
  """
  pred_boxes, target_boxes = _check_boxes(pred_boxes, target_boxes)
  eps = check_number(eps, "eps", low=0.0)
  return 1.0 - box_ops.elementwise_box_iou(pred_boxes, target_boxes, kind="ciou", eps=eps)
