"""``build_mobilenetv2_fpn_backbone``: MobileNetV2 body + FPN P3–P7, the backbone of the MobileNetV2 detectors."""
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY

from .mobilenetv2 import build_mobilenetv2_backbone
from .p3p7_fpn import p3p7_fpn


@BACKBONE_REGISTRY.register()
def build_mobilenetv2_fpn_backbone(cfg, input_shape: ShapeSpec):
    """FPN (``MODEL.FPN.*``) over the MobileNetV2 body (``MODEL.MOBILENETV2.*``); levels p3..p7, strides 8..128."""
    return p3p7_fpn(cfg, build_mobilenetv2_backbone(cfg, input_shape))
