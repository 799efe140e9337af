"""Necks: modules that turn a backbone's feature dict into another (FPN: ``P3..P7`` or ``P2..P6``)."""

from __future__ import annotations

from jaxvision.models.necks.fpn import FPN, FPN_EXTRAS, fpn_two_stage, fpn_retinanet

__all__ = ["FPN", "FPN_EXTRAS", "fpn_two_stage", "fpn_retinanet"]
