"""ATSS (Zhang et al., CVPR 2020) as a Detectron2 dense detector built from ``MODEL.ATSS.*``, its HQOD variant, and
their table entry. Defaults follow the ATSS paper's recipe as in its reference implementation (see hqod/config.py).

- Anchors: one square anchor per location, side ``ANCHOR_SCALE`` x the level's stride; labels from ``atss_match``.
- Head: Detectron2's RetinaNet towers (one anchor), a centerness conv on the box tower, one learnable scale per level
  multiplying the box deltas (encoded with ``Box2BoxTransform(BBOX_REG_WEIGHTS)``).
- Losses: sigmoid focal loss over all anchors and BCE centerness over the positives, both ÷ the number of positives
  (mean over workers, at least 1); GIoU of each positive's decoded box weighted by its centerness target,
  x ``BOX_LOSS_WEIGHT``, ÷ the sum of the centerness targets (mean over workers, at least 1).
- Inference per level: class probabilities above ``SCORE_THRESH_TEST``, the ``TOPK_CANDIDATES_TEST`` best, scored
  probability x centerness; class-wise NMS at ``NMS_THRESH_TEST`` over all levels.
"""
from typing import List

import torch
import torch.distributed as dist
from detectron2.config import configurable
from detectron2.layers import batched_nms, cat
from detectron2.modeling import META_ARCH_REGISTRY, build_backbone
from detectron2.modeling.anchor_generator import DefaultAnchorGenerator
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.modeling.meta_arch.dense_detector import DenseDetector
from detectron2.modeling.meta_arch.retinanet import RetinaNetHead
from detectron2.structures import Boxes, Instances
from detectron2.utils import comm
from detectron2.utils.events import get_event_storage
from fvcore.nn import giou_loss, sigmoid_focal_loss_jit
from torch import nn
from torch.nn import functional as F

from ..errors import HQODInputError
from .atss_assigner import atss_match
from .detectors import DenseDetectorSpec, register_dense_detector
from .head_norm import count_levels_per_forward, head_norm
from .hqod_mixin import HQODLossMixin, dense_hqod_inputs


class ATSSHead(RetinaNetHead):
    """RetinaNet's classification and box towers with one anchor per location, a centerness conv on the box tower
    and a learnable scale per level on the box deltas. Returns (logits, deltas, centerness), one tensor per level."""

    def __init__(self, *, input_shape, conv_dims, **kwargs):
        super().__init__(input_shape=input_shape, conv_dims=conv_dims, num_anchors=1, **kwargs)
        self.ctrness = nn.Conv2d(conv_dims[-1], 1, kernel_size=3, stride=1, padding=1)
        nn.init.normal_(self.ctrness.weight, std=0.01)
        nn.init.constant_(self.ctrness.bias, 0)
        self.scales = nn.Parameter(torch.ones(len(input_shape)))

    def forward(self, features):
        if len(features) != len(self.scales):
            raise ValueError(f"ATSSHead was built for {len(self.scales)} levels, got {len(features)}")
        logits, deltas, ctrness = [], [], []
        for level, feature in enumerate(features):
            logits.append(self.cls_score(self.cls_subnet(feature)))
            box_feature = self.bbox_subnet(feature)
            deltas.append(self.bbox_pred(box_feature) * self.scales[level])
            ctrness.append(self.ctrness(box_feature))
        return logits, deltas, ctrness


def _mean_over_workers(value: torch.Tensor) -> torch.Tensor:
    """``value`` averaged over the processes of the distributed group (itself with one process)."""
    if comm.get_world_size() == 1:
        return value
    value = value.clone()
    dist.all_reduce(value)
    return value / comm.get_world_size()


def centerness_targets(anchors: torch.Tensor, gt_boxes: torch.Tensor) -> torch.Tensor:
    """sqrt(min(l, r)/max(l, r) · min(t, b)/max(t, b)) of each anchor centre's distances l, t, r, b to the sides of
    its box (rows of ``anchors`` and ``gt_boxes`` paired); 1 at the box centre, towards 0 at its border."""
    centers = (anchors[:, :2] + anchors[:, 2:]) / 2
    left_right = torch.stack([centers[:, 0] - gt_boxes[:, 0], gt_boxes[:, 2] - centers[:, 0]], dim=1)
    top_bottom = torch.stack([centers[:, 1] - gt_boxes[:, 1], gt_boxes[:, 3] - centers[:, 1]], dim=1)
    ratio = (left_right.min(dim=1).values / left_right.max(dim=1).values) * (
        top_bottom.min(dim=1).values / top_bottom.max(dim=1).values)
    return ratio.clamp(min=0).sqrt()


class ATSS(DenseDetector):
    """ATSS on Detectron2's ``DenseDetector``: training returns ``loss_atss_cls``, ``loss_atss_box`` and
    ``loss_atss_ctr``; inference returns Instances like RetinaNet's."""

    @configurable
    def __init__(self, *, backbone, head, head_in_features, anchor_generator, box2box_transform, num_classes,
                 topk=9, focal_loss_alpha=0.25, focal_loss_gamma=2.0, box_loss_weight=2.0, test_score_thresh=0.05,
                 test_topk_candidates=1000, test_nms_thresh=0.6, max_detections_per_image=100, pixel_mean,
                 pixel_std):
        super().__init__(backbone, head, head_in_features, pixel_mean=pixel_mean, pixel_std=pixel_std)
        self.anchor_generator = anchor_generator
        self.box2box_transform = box2box_transform
        self.num_classes = num_classes
        self.topk = topk
        self.focal_loss_alpha = focal_loss_alpha
        self.focal_loss_gamma = focal_loss_gamma
        self.box_loss_weight = box_loss_weight
        self.test_score_thresh = test_score_thresh
        self.test_topk_candidates = test_topk_candidates
        self.test_nms_thresh = test_nms_thresh
        self.max_detections_per_image = max_detections_per_image

    @classmethod
    def from_config(cls, cfg):
        atss = cfg.MODEL.ATSS
        backbone = build_backbone(cfg)
        shapes = backbone.output_shape()
        in_features = list(atss.IN_FEATURES)
        if not in_features or any(f not in shapes for f in in_features):
            raise HQODInputError(f"MODEL.ATSS.IN_FEATURES {in_features} must name backbone outputs {sorted(shapes)}")
        feature_shapes = [shapes[f] for f in in_features]
        strides = [s.stride for s in feature_shapes]
        head = ATSSHead(input_shape=feature_shapes, conv_dims=[feature_shapes[0].channels] * atss.NUM_CONVS,
                        num_classes=atss.NUM_CLASSES, prior_prob=atss.PRIOR_PROB,
                        norm=head_norm(atss.HEAD_NORM, len(in_features)))
        return {
            "backbone": backbone,
            "head": count_levels_per_forward(head),
            "head_in_features": in_features,
            "anchor_generator": DefaultAnchorGenerator(sizes=[[atss.ANCHOR_SCALE * s] for s in strides],
                                                       aspect_ratios=[1.0], strides=strides, offset=0.0),
            "box2box_transform": Box2BoxTransform(weights=tuple(atss.BBOX_REG_WEIGHTS)),
            "num_classes": atss.NUM_CLASSES,
            "topk": atss.TOPK,
            "focal_loss_alpha": atss.FOCAL_LOSS_ALPHA,
            "focal_loss_gamma": atss.FOCAL_LOSS_GAMMA,
            "box_loss_weight": atss.BOX_LOSS_WEIGHT,
            "test_score_thresh": atss.SCORE_THRESH_TEST,
            "test_topk_candidates": atss.TOPK_CANDIDATES_TEST,
            "test_nms_thresh": atss.NMS_THRESH_TEST,
            "max_detections_per_image": cfg.TEST.DETECTIONS_PER_IMAGE,
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
        }

    def forward_training(self, images, features, predictions, gt_instances):
        pred_logits, pred_deltas, pred_centerness = self._transpose_dense_predictions(
            predictions, [self.num_classes, 4, 1])
        anchors = self.anchor_generator(features)
        gt_labels, gt_boxes = self.label_anchors(anchors, gt_instances)
        return self.losses(anchors, pred_logits, gt_labels, pred_deltas, gt_boxes, pred_centerness)

    @torch.no_grad()
    def label_anchors(self, anchors: List[Boxes], gt_instances: List[Instances]):
        """Per image: the class of each anchor's box (``num_classes`` for background; no anchor is ignored) and the
        box itself (zeros for background), by ``atss_match``."""
        per_level = [a.tensor for a in anchors]
        labels, matched_boxes = [], []
        for inst in gt_instances:
            matched = atss_match(per_level, inst.gt_boxes.tensor, self.topk)
            index = matched.clamp(min=0)
            if len(inst) > 0:
                labels_i = inst.gt_classes[index].clone()
                boxes_i = inst.gt_boxes.tensor[index].clone()
            else:
                labels_i = torch.zeros_like(matched)
                boxes_i = torch.zeros((len(matched), 4), device=matched.device)
            labels_i[matched < 0] = self.num_classes
            boxes_i[matched < 0] = 0.0
            labels.append(labels_i)
            matched_boxes.append(boxes_i)
        return labels, matched_boxes

    def box_loss_normalizer(self, anchors, gt_labels, gt_boxes) -> torch.Tensor:
        """The divisor of the summed box loss: the sum of the positives' centerness targets, averaged over workers,
        at least 1 (the reference implementation's)."""
        labels = torch.stack(gt_labels)
        pos_mask = (labels >= 0) & (labels != self.num_classes)
        pos_anchors = Boxes.cat(anchors).tensor[None].expand(len(labels), -1, -1)[pos_mask]
        ctr_sum = centerness_targets(pos_anchors, torch.stack(gt_boxes)[pos_mask]).sum()
        return _mean_over_workers(ctr_sum.detach()).clamp(min=1.0)

    def losses(self, anchors, pred_logits, gt_labels, pred_deltas, gt_boxes, pred_centerness):
        labels = torch.stack(gt_labels)  # (N, R)
        pos_mask = (labels >= 0) & (labels != self.num_classes)
        num_pos = pos_mask.sum()
        get_event_storage().put_scalar("num_pos_anchors", num_pos.item() / len(labels))
        num_pos_avg = _mean_over_workers(num_pos.float()).clamp(min=1.0)

        cls_targets = F.one_hot(labels, num_classes=self.num_classes + 1)[:, :, :-1]
        logits = cat(pred_logits, dim=1)
        loss_cls = sigmoid_focal_loss_jit(logits, cls_targets.to(logits.dtype), alpha=self.focal_loss_alpha,
                                          gamma=self.focal_loss_gamma, reduction="sum")

        pos_anchors = Boxes.cat(anchors).tensor[None].expand(len(labels), -1, -1)[pos_mask]
        pos_gt = torch.stack(gt_boxes)[pos_mask]
        pred_boxes = self.box2box_transform.apply_deltas(cat(pred_deltas, dim=1)[pos_mask], pos_anchors)
        ctr_targets = centerness_targets(pos_anchors, pos_gt)
        loss_box = (giou_loss(pred_boxes, pos_gt, reduction="none") * ctr_targets).sum() * self.box_loss_weight
        loss_ctr = F.binary_cross_entropy_with_logits(cat(pred_centerness, dim=1).squeeze(2)[pos_mask], ctr_targets,
                                                      reduction="sum")
        return {
            "loss_atss_cls": loss_cls / num_pos_avg,
            "loss_atss_box": loss_box / self.box_loss_normalizer(anchors, gt_labels, gt_boxes),
            "loss_atss_ctr": loss_ctr / num_pos_avg,
        }

    def forward_inference(self, images, features, predictions):
        pred_logits, pred_deltas, pred_centerness = self._transpose_dense_predictions(
            predictions, [self.num_classes, 4, 1])
        anchors = self.anchor_generator(features)
        results = []
        for i, image_size in enumerate(images.image_sizes):
            per_level = [self._decode_level(a, logits[i], deltas[i], ctr[i], image_size)
                         for a, logits, deltas, ctr in zip(anchors, pred_logits, pred_deltas, pred_centerness)]
            result = Instances.cat(per_level)
            keep = batched_nms(result.pred_boxes.tensor, result.scores, result.pred_classes, self.test_nms_thresh)
            results.append(result[keep[:self.max_detections_per_image]])
        return results

    def _decode_level(self, anchors: Boxes, logits, deltas, centerness, image_size) -> Instances:
        """One level of one image: the ``test_topk_candidates`` (anchor, class) pairs whose probability exceeds
        ``test_score_thresh``, their decoded boxes, scores probability x centerness and classes."""
        probs = logits.sigmoid().flatten()
        keep = torch.nonzero(probs > self.test_score_thresh).squeeze(1)
        top = probs[keep].topk(min(self.test_topk_candidates, len(keep))).indices
        flat = keep[top]
        anchor_idx, classes = flat // self.num_classes, flat % self.num_classes
        boxes = self.box2box_transform.apply_deltas(deltas[anchor_idx], anchors.tensor[anchor_idx])
        scores = probs[flat] * centerness[anchor_idx, 0].sigmoid()
        return Instances(image_size, pred_boxes=Boxes(boxes), scores=scores, pred_classes=classes)


@META_ARCH_REGISTRY.register()
class HQODATSS(HQODLossMixin, ATSS):
    """ATSS plus ``loss_tcorr`` and ``loss_hiou``; built from ``MODEL.ATSS/HQOD.*``. The detector's normaliser is
    its box loss's, the sum of centerness targets, as in the authors' ATSS code (spec §2.2)."""

    def hqod_inputs(self, anchors, pred_logits, gt_labels, pred_anchor_deltas, gt_boxes, pred_centerness):
        return dense_hqod_inputs(self, anchors, pred_logits, gt_labels, pred_anchor_deltas, gt_boxes,
                                 normalizer=lambda pos_mask: self.box_loss_normalizer(anchors, gt_labels, gt_boxes))


META_ARCH_REGISTRY.register(ATSS)
register_dense_detector(DenseDetectorSpec(
    name="atss", meta_architecture="ATSS", hqod_meta_architecture="HQODATSS", config_node="ATSS",
    head_norm_key="HEAD_NORM", prediction_convs=("head.cls_score", "head.bbox_pred", "head.ctrness")))
