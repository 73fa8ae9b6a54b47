"""FPN with P3–P7 levels on any body, P6/P7 taken from ``MODEL.FPN.TOP_BLOCK_IN_FEATURE`` (P5 as in FCOS, or C5)."""
import math

from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY
from detectron2.modeling.backbone import FPN, build_resnet_backbone
from detectron2.modeling.backbone.fpn import LastLevelP6P7

from ...errors import HQODInputError


def p3p7_fpn(cfg, bottom_up) -> FPN:
    """Detectron2's ``FPN`` over ``MODEL.FPN.IN_FEATURES`` of ``bottom_up`` plus ``LastLevelP6P7``."""
    in_features = list(cfg.MODEL.FPN.IN_FEATURES)
    body_shapes = bottom_up.output_shape()
    if not in_features or any(f not in body_shapes for f in in_features):
        raise HQODInputError(f"MODEL.FPN.IN_FEATURES {in_features} must name features of the backbone body, "
                             f"which has {sorted(body_shapes)}")
    out_channels = cfg.MODEL.FPN.OUT_CHANNELS
    top_input = cfg.MODEL.FPN.TOP_BLOCK_IN_FEATURE
    last_fpn_level = f"p{int(math.log2(body_shapes[in_features[-1]].stride))}"
    if top_input == last_fpn_level:
        in_channels = out_channels
    elif top_input in body_shapes:
        in_channels = body_shapes[top_input].channels
    else:
        raise HQODInputError(f"MODEL.FPN.TOP_BLOCK_IN_FEATURE {top_input!r} is neither the last FPN level "
                             f"{last_fpn_level!r} nor a body feature {sorted(body_shapes)}; use one of them")
    return FPN(bottom_up=bottom_up, in_features=in_features, out_channels=out_channels, norm=cfg.MODEL.FPN.NORM,
               top_block=LastLevelP6P7(in_channels, out_channels, in_feature=top_input),
               fuse_type=cfg.MODEL.FPN.FUSE_TYPE)


@BACKBONE_REGISTRY.register()
def build_resnet_p3p7_fpn_backbone(cfg, input_shape: ShapeSpec):
    """ResNet + ``p3p7_fpn``: Detectron2's RetinaNet backbone, with the P6/P7 input chosen by the config."""
    return p3p7_fpn(cfg, build_resnet_backbone(cfg, input_shape))
