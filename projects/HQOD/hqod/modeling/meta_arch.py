"""The HQOD meta-architectures of Detectron2's RetinaNet and the project's FCOS, and their table entries.

Both detectors are Detectron2's: their ``losses()`` divide the box loss by an EMA of the number of positives
(momentum 0.9) that the same call updates and keeps in ``self.loss_normalizer``; their ``hqod_inputs`` (called
after ``losses()``) hand that value over as the step's box-loss normaliser.
"""
from detectron2.modeling import META_ARCH_REGISTRY, RetinaNet

from .detectors import DenseDetectorSpec, register_dense_detector
from .fcos import FCOS
from .hqod_mixin import HQODLossMixin, dense_hqod_inputs


@META_ARCH_REGISTRY.register()
class HQODRetinaNet(HQODLossMixin, RetinaNet):
    """Detectron2's RetinaNet with ``loss_tcorr`` and ``loss_hiou`` added; built from ``MODEL.RETINANET/HQOD.*``."""

    def hqod_inputs(self, anchors, pred_logits, gt_labels, pred_anchor_deltas, gt_boxes):
        return dense_hqod_inputs(self, anchors, pred_logits, gt_labels, pred_anchor_deltas, gt_boxes,
                                 normalizer=self.loss_normalizer)


@META_ARCH_REGISTRY.register()
class HQODFCOS(HQODLossMixin, FCOS):
    """The project's yacs-buildable FCOS plus ``loss_tcorr`` and ``loss_hiou``; built from ``MODEL.FCOS/HQOD.*``."""

    def hqod_inputs(self, anchors, pred_logits, gt_labels, pred_anchor_deltas, gt_boxes, pred_centerness):
        return dense_hqod_inputs(self, anchors, pred_logits, gt_labels, pred_anchor_deltas, gt_boxes,
                                 normalizer=self.loss_normalizer)


register_dense_detector(DenseDetectorSpec(
    name="retinanet", meta_architecture="RetinaNet", hqod_meta_architecture="HQODRetinaNet",
    config_node="RETINANET", head_norm_key="NORM", prediction_convs=("head.cls_score", "head.bbox_pred")))
register_dense_detector(DenseDetectorSpec(
    name="fcos", meta_architecture="FCOS", hqod_meta_architecture="HQODFCOS",
    config_node="FCOS", head_norm_key="HEAD_NORM", prediction_convs=("head.cls_score", "head.bbox_pred",
                                                                      "head.ctrness")))
