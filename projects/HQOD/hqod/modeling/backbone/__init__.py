"""Backbones registered with Detectron2's ``BACKBONE_REGISTRY`` (MobileNetV2, MobileNetV2-FPN, ResNet-FPN P3–P7),
and the ``hqod://`` weights paths of Detectron2's ``PathManager``."""
from . import imagenet_weights, mobilenetv2, mobilenetv2_fpn, p3p7_fpn  # noqa: F401  (registration side effects)
