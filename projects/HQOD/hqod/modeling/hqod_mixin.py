"""The HQOD part shared by the dense detectors: the seam through which a detector hands over its positives, the
weighted TCorr/HIoU losses on them, and harmony logging.

The seam (``HQODInputs``, returned by the detector's ``hqod_inputs``) is all HQOD knows of a detector: its positives,
the logit of each positive's ground-truth class, each positive's decoded predicted box and ground-truth box, and the
divisor of the detector's own box loss. ``HQODLossMixin`` goes before a Detectron2 dense detector in the bases and
overrides only its ``losses(...)`` hook, so it works with Detectron2 v0.6 and current Detectron2, quantized or not.
"""
from dataclasses import dataclass
from typing import Union

import torch
from detectron2.config import configurable
from detectron2.structures import Boxes
from detectron2.utils.events import get_event_storage

from ..losses import harmonious_iou_loss, harmony_quality, tcorr_loss

_IOU_EPS = 1e-6  # as mmdet's bbox_overlaps, which the authors use for u
NORMALIZERS = ("detector", "num_pos")  # MODEL.HQOD.NORMALIZER


@dataclass(frozen=True)
class HQODInputs:
    """What a dense detector hands HQOD for one training step.

    ``pos_mask`` (N, R) marks the positives among the R anchors (or points) of each of the N images: assigned to a
    ground-truth box; ignored and background anchors are not positives. The other tensors hold one row per positive,
    in the order of ``pos_mask.nonzero()``: ``gt_class_logits`` (P,) the logit of its ground-truth class;
    ``pred_boxes`` (P, 4) its predicted box decoded from its own anchor (XYXY, gradient kept); ``gt_boxes`` (P, 4) its
    ground-truth box. ``normalizer`` is the divisor the detector applies to its summed box loss in this step.
    """
    pos_mask: torch.Tensor
    gt_class_logits: torch.Tensor
    pred_boxes: torch.Tensor
    gt_boxes: torch.Tensor
    normalizer: Union[float, torch.Tensor]


def _fp32_or_wider(t: torch.Tensor) -> torch.Tensor:
    """Half-precision (AMP) head outputs are upcast: box areas overflow float16 and p, u feed float32 losses."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


def _aligned_iou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """IoU of row i of boxes1 with row i of boxes2 (XYXY), differentiable; union clamped to eps like mmdet."""
    lt = torch.max(boxes1[:, :2], boxes2[:, :2])
    rb = torch.min(boxes1[:, 2:], boxes2[:, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[:, 0] * wh[:, 1]
    area1 = (boxes1[:, 2] - boxes1[:, 0]) * (boxes1[:, 3] - boxes1[:, 1])
    area2 = (boxes2[:, 2] - boxes2[:, 0]) * (boxes2[:, 3] - boxes2[:, 1])
    return inter / (area1 + area2 - inter).clamp(min=_IOU_EPS)


def dense_hqod_inputs(detector, anchors, pred_logits, gt_labels, pred_anchor_deltas, gt_boxes, normalizer):
    """``HQODInputs`` of a detector that labels anchors as Detectron2's RetinaNet does (a class index, ``num_classes``
    for background, -1 for ignored) and decodes boxes with ``detector.box2box_transform``. Arguments as for
    Detectron2's ``RetinaNet.losses``; ``gt_boxes`` may be per-image Tensors or Boxes (v0.6's FCOS); ``normalizer``
    maps the (N, R) positive mask to the detector's box-loss normaliser of this step."""
    labels = torch.stack(list(gt_labels))  # (N, R)
    pos_mask = (labels >= 0) & (labels != detector.num_classes)
    logits = torch.cat(list(pred_logits), dim=1)[pos_mask]  # (P, K)
    gt_class_logits = logits.gather(1, labels[pos_mask][:, None]).squeeze(1)
    all_anchors = Boxes.cat(anchors).tensor  # (R, 4)
    pos_anchors = all_anchors[None].expand(len(labels), -1, -1)[pos_mask]
    deltas = torch.cat(list(pred_anchor_deltas), dim=1)[pos_mask]
    pred_boxes = detector.box2box_transform.apply_deltas(deltas, pos_anchors)
    gt = torch.stack([b.tensor if isinstance(b, Boxes) else b for b in gt_boxes])[pos_mask]
    return HQODInputs(pos_mask, gt_class_logits, pred_boxes, gt, normalizer(pos_mask))


def num_pos_normalizer(pos_mask: torch.Tensor) -> float:
    """Σ over images of max(positives of the image, 1): the authors' RetinaNet normaliser (mmdet's num_total_pos),
    counted on this worker."""
    return float(pos_mask.sum(dim=1).clamp(min=1).sum())


def _put_harmony_scalars(p: torch.Tensor, u: torch.Tensor, normalizer) -> None:
    """Log mean ρ, Pearson(p, u) and the normaliser, when inside an EventStorage and they are defined."""
    try:
        storage = get_event_storage()
    except AssertionError:  # not inside `with EventStorage()`: nothing to log into
        return
    storage.put_scalar("hqod/normalizer", float(normalizer))
    if p.numel() == 0:
        return
    with torch.no_grad():
        p, u = p.detach().double(), u.detach().double()
        storage.put_scalar("hqod/rho_mean", harmony_quality(p, u).mean())
        pc, uc = p - p.mean(), u - u.mean()
        denom = (pc.square().sum() * uc.square().sum()).sqrt()
        if denom > 0:
            storage.put_scalar("hqod/pearson_pu", (pc * uc).sum() / denom)


class HQODLossMixin:
    """Adds ``loss_tcorr`` and ``loss_hiou`` (weights read from ``self.tcorr_weight`` / ``self.hiou_weight`` at every
    step, so schedule hooks may change them) to a Detectron2 dense detector's losses. The detector class provides
    ``hqod_inputs(...)`` (the seam above). Values from a config were checked by
    hqod.engine.validation.validate_config; they are not checked again here."""

    @configurable
    def __init__(self, *, tcorr_weight=1.0, hiou_weight=1.0, hiou_alpha=1.5, hiou_gamma=0.8, normalizer="detector",
                 **kwargs):
        super().__init__(**kwargs)
        self.tcorr_weight = float(tcorr_weight)
        self.hiou_weight = float(hiou_weight)
        self.hiou_alpha = float(hiou_alpha)
        self.hiou_gamma = float(hiou_gamma)
        self.hqod_normalizer = normalizer

    @classmethod
    def from_config(cls, cfg):
        hqod = cfg.MODEL.HQOD
        return {
            **super().from_config(cfg),
            "tcorr_weight": hqod.TCORR_WEIGHT,
            "hiou_weight": hqod.HIOU_WEIGHT,
            "hiou_alpha": hqod.HIOU_ALPHA,
            "hiou_gamma": hqod.HIOU_GAMMA,
            "normalizer": hqod.NORMALIZER,
        }

    def hqod_inputs(self, anchors, pred_logits, gt_labels, pred_anchor_deltas, gt_boxes, *extra) -> HQODInputs:
        """The detector's ``HQODInputs`` for this step, from the arguments of its ``losses``; called right after
        the detector's own ``losses`` in the same step."""
        raise NotImplementedError(f"{type(self).__name__} must implement hqod_inputs (see HQODInputs)")

    def losses(self, anchors, pred_logits, gt_labels, pred_anchor_deltas, gt_boxes, *extra):
        """The detector's own losses, unchanged, plus the HQOD terms on the positives it hands over."""
        losses = super().losses(anchors, pred_logits, gt_labels, pred_anchor_deltas, gt_boxes, *extra)
        losses.update(self.hqod_losses(self.hqod_inputs(anchors, pred_logits, gt_labels, pred_anchor_deltas,
                                                        gt_boxes, *extra)))
        return losses

    def hqod_losses(self, inputs: HQODInputs) -> dict:
        """{"loss_tcorr", "loss_hiou"}: Σ over positives of weight·term ÷ the normaliser chosen by
        MODEL.HQOD.NORMALIZER (exact 0 where a weight is 0). p = sigmoid of the ground-truth-class logit, u = IoU of
        the predicted box with the ground-truth box; gradients flow through both."""
        p = _fp32_or_wider(inputs.gt_class_logits).sigmoid()
        u = _aligned_iou(_fp32_or_wider(inputs.pred_boxes), _fp32_or_wider(inputs.gt_boxes))
        normalizer = inputs.normalizer if self.hqod_normalizer == "detector" else num_pos_normalizer(inputs.pos_mask)
        _put_harmony_scalars(p, u, normalizer)
        zero = torch.zeros((), dtype=p.dtype, device=p.device)
        tcorr = tcorr_loss(p, u).sum() * (self.tcorr_weight / normalizer) if self.tcorr_weight else zero
        hiou = (
            harmonious_iou_loss(u, self.hiou_alpha, self.hiou_gamma).sum() * (self.hiou_weight / normalizer)
            if self.hiou_weight
            else zero
        )
        return {"loss_tcorr": tcorr, "loss_hiou": hiou}
