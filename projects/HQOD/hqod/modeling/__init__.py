"""Backbones and meta-architectures; importing registers them with Detectron2."""
from .backbone import mobilenetv2_fpn  # noqa: F401
from . import fcos, meta_arch  # noqa: F401
