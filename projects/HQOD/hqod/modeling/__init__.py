"""Backbones and meta-architectures; importing registers them with Detectron2 and the dense detectors with
``hqod.modeling.detectors.DENSE_DETECTORS``."""
from .backbone import mobilenetv2_fpn  # noqa: F401
from . import fcos, meta_arch, atss  # noqa: F401  (table order: RetinaNet, FCOS, ATSS)
