"""``FCOS`` buildable from yacs (``MODEL.META_ARCHITECTURE: "FCOS"`` + ``MODEL.FCOS.*``), as RetinaNet is.

Detectron2 ships FCOS for LazyConfig only; this subclass adds a ``from_config`` and labels training images without
boxes itself (all points background), on which Detectron2 v0.6's ``label_anchors`` crashes; anchor points, matching,
losses and inference are Detectron2's own.
"""
import torch

from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, build_backbone
from detectron2.modeling.meta_arch.fcos import FCOS as Detectron2FCOS
from detectron2.modeling.meta_arch.fcos import FCOSHead
from detectron2.structures import Boxes

from ..compat import FCOS_MATCHED_BOXES_ARE_BOXES
from ..errors import HQODInputError
from .head_norm import count_levels_per_forward, head_norm


class FCOS(Detectron2FCOS):
    """Detectron2's FCOS with its head and parameters read from ``MODEL.FCOS.*``."""

    @configurable
    def __init__(self, **kwargs):
        super().__init__(**kwargs)

    @torch.no_grad()
    def label_anchors(self, anchors, gt_instances):
        """Detectron2's labels and matched boxes per image; for an image without boxes every point is background
        (its matched boxes are zeros, of the kind the installed Detectron2's ``losses`` read)."""
        labels, matched = [], []
        for inst in gt_instances:
            if len(inst) > 0:
                (labels_i,), (matched_i,) = super().label_anchors(anchors, [inst])
            else:
                num_points = sum(len(a) for a in anchors)
                labels_i = torch.full((num_points,), self.num_classes, dtype=torch.long, device=self.device)
                matched_i = torch.zeros((num_points, 4), device=self.device)
                matched_i = Boxes(matched_i) if FCOS_MATCHED_BOXES_ARE_BOXES else matched_i
            labels.append(labels_i)
            matched.append(matched_i)
        return labels, matched

    @classmethod
    def from_config(cls, cfg):
        backbone = build_backbone(cfg)
        shapes = backbone.output_shape()
        in_features = list(cfg.MODEL.FCOS.IN_FEATURES)
        if not in_features or any(f not in shapes for f in in_features):
            raise HQODInputError(f"MODEL.FCOS.IN_FEATURES {in_features} must name backbone outputs {sorted(shapes)}")
        if cfg.MODEL.FCOS.NUM_CONVS < 1:
            raise HQODInputError(f"MODEL.FCOS.NUM_CONVS is {cfg.MODEL.FCOS.NUM_CONVS}; use at least 1")
        feature_shapes = [shapes[f] for f in in_features]
        head = FCOSHead(
            input_shape=feature_shapes,
            conv_dims=[feature_shapes[0].channels] * cfg.MODEL.FCOS.NUM_CONVS,
            num_classes=cfg.MODEL.FCOS.NUM_CLASSES,
            norm=head_norm(cfg.MODEL.FCOS.HEAD_NORM, len(in_features)),
            prior_prob=cfg.MODEL.FCOS.PRIOR_PROB,
        )
        return {
            "backbone": backbone,
            "head": count_levels_per_forward(head),
            "head_in_features": in_features,
            "num_classes": cfg.MODEL.FCOS.NUM_CLASSES,
            "center_sampling_radius": cfg.MODEL.FCOS.CENTER_SAMPLING_RADIUS,
            "focal_loss_alpha": cfg.MODEL.FCOS.FOCAL_LOSS_ALPHA,
            "focal_loss_gamma": cfg.MODEL.FCOS.FOCAL_LOSS_GAMMA,
            "test_score_thresh": cfg.MODEL.FCOS.SCORE_THRESH_TEST,
            "test_topk_candidates": cfg.MODEL.FCOS.TOPK_CANDIDATES_TEST,
            "test_nms_thresh": cfg.MODEL.FCOS.NMS_THRESH_TEST,
            "max_detections_per_image": cfg.TEST.DETECTIONS_PER_IMAGE,
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
        }


if "FCOS" not in META_ARCH_REGISTRY:  # a future Detectron2 may register its own
    META_ARCH_REGISTRY.register(FCOS)
