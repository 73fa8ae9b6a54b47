"""The HQOD meta-architectures of Detectron2's RetinaNet and the project's FCOS, and their table entries.

Both detectors are Detectron2's: their ``losses()`` divide the box loss by an EMA (momentum 0.9) of max(number of
positives in the batch, 1), starting at 100 (RetinaNet) or 300 (FCOS). Their ``hqod_inputs`` compute that same
divisor from the positives they hand over (``BoxLossNormalizerEMA``, one update per training step), instead of reading
the value Detectron2's ``losses()`` leaves in ``self.loss_normalizer``; tests check the two agree.
"""
from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.modeling import RetinaNet as Detectron2RetinaNet
from detectron2.modeling.meta_arch.retinanet import RetinaNetHead

from .detectors import DenseDetectorSpec, register_dense_detector
from .fcos import FCOS
from .head_norm import LEVEL_NORMS, count_levels_per_forward, head_norm
from .hqod_mixin import HQODLossMixin, dense_hqod_inputs

EMA_MOMENTUM = 0.9  # Detectron2's DenseDetector._ema_update default, used by RetinaNet and FCOS for loss_normalizer


class BoxLossNormalizerEMA:
    """Adds ``hqod_box_loss_normalizer(pos_mask)``: the EMA of max(positives, 1) from ``normalizer_start``, as
    Detectron2's RetinaNet and FCOS divide their box loss by; call it once per training step."""

    normalizer_start = 100.0

    def hqod_box_loss_normalizer(self, pos_mask) -> float:
        previous = getattr(self, "_hqod_normalizer_ema", self.normalizer_start)
        self._hqod_normalizer_ema = EMA_MOMENTUM * previous + (1 - EMA_MOMENTUM) * max(int(pos_mask.sum()), 1)
        return self._hqod_normalizer_ema


class RetinaNet(Detectron2RetinaNet):
    """Detectron2's RetinaNet whose head also takes the project's per-level norms (``MODEL.RETINANET.NORM``
    "LevelBN" / "LevelSyncBN", hqod.modeling.head_norm). Not registered: the name "RetinaNet" is Detectron2's, whose
    builder cannot make those norms; ``HQODRetinaNet`` is built on this class."""

    @classmethod
    def from_config(cls, cfg):
        norm = cfg.MODEL.RETINANET.NORM
        if norm not in LEVEL_NORMS:
            return super().from_config(cfg)
        cfg = cfg.clone()
        cfg.defrost()
        cfg.MODEL.RETINANET.NORM = ""  # Detectron2's builder makes a head without norms; it is replaced here
        args = super().from_config(cfg)
        shapes = [args["backbone"].output_shape()[f] for f in args["head_in_features"]]
        head = RetinaNetHead(**{**RetinaNetHead.from_config(cfg, shapes), "norm": head_norm(norm, len(shapes))})
        return {**args, "head": count_levels_per_forward(head)}


@META_ARCH_REGISTRY.register()
class HQODRetinaNet(BoxLossNormalizerEMA, HQODLossMixin, RetinaNet):
    """Detectron2's RetinaNet with ``loss_tcorr`` and ``loss_hiou`` added; built from ``MODEL.RETINANET/HQOD.*``."""

    normalizer_start = 100.0  # Detectron2's RetinaNet

    def hqod_inputs(self, anchors, pred_logits, gt_labels, pred_anchor_deltas, gt_boxes):
        return dense_hqod_inputs(self, anchors, pred_logits, gt_labels, pred_anchor_deltas, gt_boxes,
                                 normalizer=self.hqod_box_loss_normalizer)


@META_ARCH_REGISTRY.register()
class HQODFCOS(BoxLossNormalizerEMA, HQODLossMixin, FCOS):
    """The project's yacs-buildable FCOS plus ``loss_tcorr`` and ``loss_hiou``; built from ``MODEL.FCOS/HQOD.*``."""

    normalizer_start = 300.0  # Detectron2's FCOS

    def hqod_inputs(self, anchors, pred_logits, gt_labels, pred_anchor_deltas, gt_boxes, pred_centerness):
        return dense_hqod_inputs(self, anchors, pred_logits, gt_labels, pred_anchor_deltas, gt_boxes,
                                 normalizer=self.hqod_box_loss_normalizer)


register_dense_detector(DenseDetectorSpec(
    name="retinanet", meta_architecture="RetinaNet", hqod_meta_architecture="HQODRetinaNet",
    config_node="RETINANET", head_norm_key="NORM", prediction_convs=("head.cls_score", "head.bbox_pred")))
register_dense_detector(DenseDetectorSpec(
    name="fcos", meta_architecture="FCOS", hqod_meta_architecture="HQODFCOS",
    config_node="FCOS", head_norm_key="HEAD_NORM", prediction_convs=("head.cls_score", "head.bbox_pred",
                                                                      "head.ctrness")))
