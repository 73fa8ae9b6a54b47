"""The HQOD part shared by the dense detectors: per-positive (p, u), the weighted TCorr/HIoU losses, harmony logging.

``HQODLossMixin`` goes before a Detectron2 dense detector (RetinaNet, FCOS) in the bases and overrides only its
``losses(...)`` hook, so it works with Detectron2 v0.6 and current Detectron2, quantized or not.
"""
import torch
from detectron2.config import configurable
from detectron2.structures import Boxes
from detectron2.utils.events import get_event_storage

from ..losses import harmonious_iou_loss, harmony_quality, tcorr_loss

_IOU_EPS = 1e-6  # as mmdet's bbox_overlaps, which the authors use for u


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


def _put_harmony_scalars(p: torch.Tensor, u: torch.Tensor) -> None:
    """Log mean ρ and Pearson(p, u) over the positives, when inside an EventStorage and they are defined."""
    try:
        storage = get_event_storage()
    except AssertionError:  # not inside `with EventStorage()`: nothing to log into
        return
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
    step, so schedule hooks may change them) to a Detectron2 dense detector's losses. Values from a config were
    checked by hqod.engine.validation.validate_config; they are not checked again here."""

    @configurable
    def __init__(self, *, tcorr_weight=1.0, hiou_weight=1.0, hiou_alpha=1.5, hiou_gamma=0.8, **kwargs):
        super().__init__(**kwargs)
        self.tcorr_weight = float(tcorr_weight)
        self.hiou_weight = float(hiou_weight)
        self.hiou_alpha = float(hiou_alpha)
        self.hiou_gamma = float(hiou_gamma)

    @classmethod
    def from_config(cls, cfg):
        hqod = cfg.MODEL.HQOD
        return {
            **super().from_config(cfg),
            "tcorr_weight": hqod.TCORR_WEIGHT,
            "hiou_weight": hqod.HIOU_WEIGHT,
            "hiou_alpha": hqod.HIOU_ALPHA,
            "hiou_gamma": hqod.HIOU_GAMMA,
        }

    def losses(self, anchors, pred_logits, gt_labels, pred_anchor_deltas, gt_boxes, *args, **kwargs):
        """The detector's own losses, unchanged, plus the HQOD terms normalised by its EMA ``loss_normalizer``."""
        losses = super().losses(anchors, pred_logits, gt_labels, pred_anchor_deltas, gt_boxes, *args, **kwargs)
        # super().losses() has just updated self.loss_normalizer, the divisor of its box-regression loss.
        losses.update(
            self.hqod_losses(anchors, pred_logits, gt_labels, pred_anchor_deltas, gt_boxes, self.loss_normalizer)
        )
        return losses

    def hqod_losses(self, anchors, pred_logits, gt_labels, pred_anchor_deltas, gt_boxes, normalizer):
        """{"loss_tcorr", "loss_hiou"}: Σ over positives of weight·term ÷ normalizer (exact 0 where a weight is 0).
        Arguments as for the detector's ``losses``; ``gt_boxes`` may be per-image Tensors or Boxes (v0.6 FCOS)."""
        p, u = self._positive_scores_and_ious(anchors, pred_logits, gt_labels, pred_anchor_deltas, gt_boxes)
        _put_harmony_scalars(p, u)
        zero = torch.zeros((), dtype=p.dtype, device=p.device)
        tcorr = tcorr_loss(p, u).sum() * (self.tcorr_weight / normalizer) if self.tcorr_weight else zero
        hiou = (
            harmonious_iou_loss(u, self.hiou_alpha, self.hiou_gamma).sum() * (self.hiou_weight / normalizer)
            if self.hiou_weight
            else zero
        )
        return {"loss_tcorr": tcorr, "loss_hiou": hiou}

    def _positive_scores_and_ious(self, anchors, pred_logits, gt_labels, pred_anchor_deltas, gt_boxes):
        """Per positive: p = sigmoid of its GT-class logit, u = IoU of its decoded predicted box with its GT box."""
        labels = torch.stack(list(gt_labels))  # (N, R)
        pos_mask = (labels >= 0) & (labels != self.num_classes)
        pos_labels = labels[pos_mask]
        logits = torch.cat(list(pred_logits), dim=1)[pos_mask]  # (P, K)
        p = _fp32_or_wider(logits.gather(1, pos_labels[:, None]).squeeze(1)).sigmoid()

        all_anchors = Boxes.cat(anchors).tensor  # (R, 4)
        pos_anchors = all_anchors[None].expand(len(labels), -1, -1)[pos_mask]
        deltas = torch.cat(list(pred_anchor_deltas), dim=1)[pos_mask]
        pred_boxes = self.box2box_transform.apply_deltas(deltas, pos_anchors)
        gt = torch.stack([b.tensor if isinstance(b, Boxes) else b for b in gt_boxes])[pos_mask]
        return p, _aligned_iou(_fp32_or_wider(pred_boxes), _fp32_or_wider(gt))

